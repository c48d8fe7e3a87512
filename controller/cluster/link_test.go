package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/internal/trust"
)

// echoLink is a Config.Link handler that answers "<caller>:<body>", and
// refuses the path /refuse with 403.
type echoLink struct{ calls atomic.Int64 }

func (e *echoLink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	e.calls.Add(1)
	peer, ok := LinkPeer(r.Context())
	if !ok {
		http.Error(w, "no peer", http.StatusForbidden)
		return
	}
	if r.URL.Path == "/refuse" {
		http.Error(w, "refused by the handler", http.StatusForbidden)
		return
	}
	b, _ := io.ReadAll(r.Body)
	fmt.Fprintf(w, "%s:%s", peer, b)
}

func withLink(h http.Handler) nodeOpt { return func(c *Config) { c.Link = h } }

// TestLinkCall: a request over the direct channel reaches the peer's
// handler, which learns who called; many calls share one connection; a
// refusal by the handler is not a channel failure.
func TestLinkCall(t *testing.T) {
	ca := newTestCA(t)
	h := &echoLink{}
	a := startNode(t, ca, "ctl-a", withLink(&echoLink{}))
	b := startNode(t, ca, "ctl-b", withLink(h), withJoin(a.Addr().String()))
	waitMembers(t, []*node{a, b}, "ctl-a", "ctl-b")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := a.Call(ctx, "ctl-b", "/echo", []byte(fmt.Sprintf(`{"n":%d}`, i)))
			if err == nil && string(got) != fmt.Sprintf(`ctl-a:{"n":%d}`, i) {
				err = fmt.Errorf("answer %q", got)
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := h.calls.Load(); n != 50 {
		t.Fatalf("handler called %d times, want 50", n)
	}
	if conns := b.tr.linkConns.Load(); conns != 1 {
		t.Fatalf("%d direct-channel connections from A to B, want 1 (persistent, multiplexed)", conns)
	}

	_, err := a.Call(ctx, "ctl-b", "/refuse", []byte(`{}`))
	if err == nil || errors.Is(err, ErrLink) || !strings.Contains(err.Error(), "refused by the handler") {
		t.Fatalf("refused call: %v; want the handler's refusal, not a channel failure", err)
	}
	if _, err := a.Call(ctx, "ctl-x", "/echo", nil); !errors.Is(err, ErrLink) {
		t.Fatalf("call to a non-member: %v; want ErrLink", err)
	}
}

// TestLinkRefusesWrongCertificate: the direct channel takes only
// controllers of the cluster's CA, and a caller talks only to the
// controller it meant.
func TestLinkRefusesWrongCertificate(t *testing.T) {
	ca := newTestCA(t)
	otherCA := newTestCA(t)
	h := &echoLink{}
	b := startNode(t, ca, "ctl-b", withLink(h))
	for _, tc := range []struct {
		name string
		cert tls.Certificate
	}{
		{"certificate from another CA", otherCA.issue(t, trust.KindController, "ctl-a")},
		{"gateway certificate of the CA", ca.issue(t, trust.KindGateway, "ctl-a")},
		{"device certificate of the CA", ca.issue(t, trust.KindDevice, "ctl-a")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := &http.Transport{Protocols: h2Only(), DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				d := tls.Dialer{Config: &tls.Config{
					Certificates: []tls.Certificate{tc.cert}, NextProtos: []string{linkProto},
					InsecureSkipVerify: true, // the test is the server's check of the client
				}}
				c, err := d.DialContext(ctx, "tcp", b.Addr().String())
				if err != nil {
					return nil, err
				}
				return &linkConn{Conn: c}, nil
			}}
			defer tr.CloseIdleConnections()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://ctl-b/echo", strings.NewReader("{}"))
			resp, err := tr.RoundTrip(req)
			if err == nil {
				resp.Body.Close()
				t.Fatalf("request with a %s answered %s", tc.name, resp.Status)
			}
		})
	}
	if n := h.calls.Load(); n != 0 {
		t.Fatalf("handler reached %d times by callers with wrong certificates", n)
	}

	// A node that answers at B's address with another controller's
	// certificate is not B: the caller refuses it.
	impostor := startNode(t, ca, "ctl-b", withLink(h), withCert(ca.issue(t, trust.KindController, "ctl-c")), outsider())
	a := startNode(t, ca, "ctl-a", withLink(&echoLink{}))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := a.tr.dialLink(ctx, "ctl-b", impostor.Addr().String()); err == nil || !errors.Is(err, ErrLink) {
		t.Fatalf("dial of an impostor: %v; want refused", err)
	}
	if n := h.calls.Load(); n != 0 {
		t.Fatalf("impostor's handler reached %d times", n)
	}
}

// TestLinkDeadPeer: a call to a member that stopped fails at once with
// ErrLink (the caller falls back), and a node without a Link handler
// refuses the direct channel.
func TestLinkDeadPeer(t *testing.T) {
	ca := newTestCA(t)
	nodes := []*node{startNode(t, ca, "ctl-a", withLink(&echoLink{}))}
	nodes = append(nodes, startNode(t, ca, "ctl-b", withLink(&echoLink{}), withJoin(nodes[0].Addr().String())))
	nodes = append(nodes, startNode(t, ca, "ctl-c", withJoin(nodes[0].Addr().String())))
	waitMembers(t, nodes, "ctl-a", "ctl-b", "ctl-c")
	a, b := nodes[0], nodes[1]
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := a.Call(ctx, "ctl-b", "/echo", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Call(ctx, "ctl-c", "/echo", nil); !errors.Is(err, ErrLink) {
		t.Fatalf("call to a node without a Link handler: %v; want ErrLink", err)
	}
	if err := b.Shutdown(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := a.Call(ctx, "ctl-b", "/echo", nil)
	if !errors.Is(err, ErrLink) {
		t.Fatalf("call to a stopped peer: %v; want ErrLink", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("call to a stopped peer took %v to fail", took)
	}
}
