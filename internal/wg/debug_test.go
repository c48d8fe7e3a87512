package wg

import (
	"context"
	"fmt"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestDebugEcho(t *testing.T) {
	p := newPair(t)
	echoTCP(t, p.gateway)
	p.gateway.ep.Attach(&checkDispatcher{t: t, inner: p.gateway.ep.dispatcher})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := p.client.DialContext(ctx, "tcp", appAddr)
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 1<<20)
	go func() { c.Write(data); c.(interface{ CloseWrite() error }).CloseWrite() }()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := io.Copy(io.Discard, c)
	t.Log(n, err)
	for _, n := range []*Net{p.client, p.gateway} {
		st := n.stack.Stats()
		t.Logf("drops %d ip %s", n.ep.drops.Load(), dump(st.IP))
		t.Logf("tcp %s", dump(st.TCP))
	}
}

func dump(v any) string {
	var b strings.Builder
	rv := reflect.ValueOf(v)
	if rv.Kind() == reflect.Pointer {
		rv = rv.Elem()
	}
	for i := 0; i < rv.NumField(); i++ {
		f := rv.Field(i)
		if m := f.MethodByName("Value"); m.IsValid() {
			if x := m.Call(nil)[0].Uint(); x != 0 {
				fmt.Fprintf(&b, "%s=%d ", rv.Type().Field(i).Name, x)
			}
		}
	}
	return b.String()
}
