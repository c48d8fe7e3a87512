package wg

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestDebugPair(t *testing.T) {
	l := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ck, gk := mustKey(t), mustKey(t)
	gw, _ := New(Config{PrivateKey: gk, Addresses: []netip.Addr{gatewayAddr}, Forward: true, Logger: l.With("n", "gw")})
	defer gw.Close()
	cl, _ := New(Config{PrivateKey: ck, Addresses: []netip.Addr{clientAddr}, Logger: l.With("n", "cl")})
	defer cl.Close()
	gw.UpsertPeer(Peer{PublicKey: ck.Public(), AllowedIPs: []netip.Prefix{netip.PrefixFrom(clientAddr, 32)}})
	cl.UpsertPeer(Peer{PublicKey: gk.Public(), Endpoint: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), gw.Port()), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, err := cl.DialContext(ctx, "tcp", appAddr)
	t.Log(err, cl.ep.drops.Load(), gw.ep.drops.Load())
	for _, n := range []*Net{cl, gw} {
		st := n.stack.Stats()
		t.Logf("ip sent %d rcvd %d invalidDst %d, tcp segsent %d segrcv %d, malformed %d, fwdmax %d, csum %d",
			st.IP.PacketsSent.Value(), st.IP.PacketsReceived.Value(), st.IP.InvalidDestinationAddressesReceived.Value(),
			st.TCP.SegmentsSent.Value(), st.TCP.ValidSegmentsReceived.Value(), st.IP.MalformedPacketsReceived.Value(), st.TCP.ForwardMaxInFlightDrop.Value(), st.TCP.ChecksumErrors.Value())
		t.Logf("ip %+v", dump(st.IP))
		t.Logf("tcp %+v", dump(st.TCP))
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
