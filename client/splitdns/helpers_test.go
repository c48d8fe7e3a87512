package splitdns

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

var loopback = netip.MustParseAddrPort("127.0.0.1:0")

// startServer runs a server on loopback until the test ends; the test
// fails if Run does not return promptly then.
func startServer(t testing.TB, cfg Config, domains ...string) *Server {
	t.Helper()
	cfg.Listen = loopback
	if cfg.Resolve == nil {
		cfg.Resolve = func(context.Context, string) (netip.Addr, error) {
			return netip.Addr{}, errors.New("no Resolve in this test")
		}
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.SetDomains(domains)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("Run did not return 5s after its context ended")
		}
	})
	return s
}

// exchange sends m to addr over network ("udp" or "tcp").
func exchange(t testing.TB, addr netip.AddrPort, network string, m *dns.Msg) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: network, Timeout: 5 * time.Second}
	resp, _, err := c.Exchange(m, addr.String())
	if err != nil {
		t.Fatalf("%s query %s: %v", network, m.Question[0].String(), err)
	}
	if resp.Id != m.Id {
		t.Fatalf("answer ID %d, want the query's %d", resp.Id, m.Id)
	}
	return resp
}

func query(name string, qtype uint16) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	return m
}

func packQuery(t testing.TB, name string, qtype uint16) []byte {
	t.Helper()
	b, err := query(name, qtype).Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// upstream is a real DNS server on loopback, UDP and TCP on one port.
type upstream struct {
	addr       netip.AddrPort
	udpQueries atomic.Int64
	tcpQueries atomic.Int64
	last       atomic.Pointer[dns.Msg] // the latest query, as received
}

// startUpstream serves udp and tcp (either may be nil: that transport
// then fails the test if used) until the test ends.
func startUpstream(t testing.TB, udp, tcp dns.HandlerFunc) *upstream {
	t.Helper()
	u := &upstream{}
	uc, tl, err := listen(loopback)
	if err != nil {
		t.Fatal(err)
	}
	u.addr = uc.LocalAddr().(*net.UDPAddr).AddrPort()
	wrap := func(h dns.HandlerFunc, n *atomic.Int64, network string) dns.HandlerFunc {
		return func(w dns.ResponseWriter, r *dns.Msg) {
			n.Add(1)
			u.last.Store(r.Copy())
			if h == nil {
				t.Errorf("upstream got a query over %s: %v", network, r.Question)
				return
			}
			h(w, r)
		}
	}
	servers := []*dns.Server{
		{PacketConn: uc, Handler: wrap(udp, &u.udpQueries, "udp")},
		{Listener: tl, Handler: wrap(tcp, &u.tcpQueries, "tcp")},
	}
	for _, srv := range servers {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go func() { _ = srv.ActivateAndServe() }()
		<-started
		t.Cleanup(func() { _ = srv.Shutdown() })
	}
	return u
}

// answerA answers every query with the given A records.
func answerA(ips ...string) dns.HandlerFunc {
	return func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.RecursionAvailable = true
		for _, ip := range ips {
			m.Answer = append(m.Answer, &dns.A{
				Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300},
				A:   net.ParseIP(ip),
			})
		}
		_ = w.WriteMsg(m)
	}
}

// fixedResolve answers every name with addr and counts calls.
func fixedResolve(addr string, calls *atomic.Int64) func(context.Context, string) (netip.Addr, error) {
	a := netip.MustParseAddr(addr)
	return func(context.Context, string) (netip.Addr, error) {
		if calls != nil {
			calls.Add(1)
		}
		return a, nil
	}
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
