package splitdns

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/time/rate"
)

func TestAppAnswer(t *testing.T) {
	var calls atomic.Int64
	var gotName atomic.Value
	s := startServer(t, Config{
		Resolve: func(_ context.Context, name string) (netip.Addr, error) {
			calls.Add(1)
			gotName.Store(name)
			return netip.MustParseAddr("100.80.0.7"), nil
		},
	}, "*.corp.internal")

	for _, network := range []string{"udp", "tcp"} {
		t.Run(network, func(t *testing.T) {
			resp := exchange(t, s.Addr(), network, query("Wiki.Corp.Internal", dns.TypeA))
			if resp.Rcode != dns.RcodeSuccess || !resp.Authoritative || len(resp.Answer) != 1 {
				t.Fatalf("answer: %v", resp)
			}
			a, ok := resp.Answer[0].(*dns.A)
			if !ok || a.A.String() != "100.80.0.7" || a.Hdr.Ttl != 10 || a.Hdr.Name != "Wiki.Corp.Internal." {
				t.Errorf("record %v, want Wiki.Corp.Internal. 10 IN A 100.80.0.7", resp.Answer[0])
			}
			if n, _ := gotName.Load().(string); n != "wiki.corp.internal" {
				t.Errorf("Resolve got %q, want the name lowercase without the dot", n)
			}
		})
	}
	if st := s.Stats(); st.AppAnswers != 2 || st.Queries != 2 {
		t.Errorf("stats %+v, want 2 queries, 2 app answers", st)
	}
}

func TestAppAnswerEDNS(t *testing.T) {
	s := startServer(t, Config{Resolve: fixedResolve("100.80.0.7", nil)}, "wiki.corp.internal")
	m := query("wiki.corp.internal", dns.TypeA)
	m.SetEdns0(4096, false)
	resp := exchange(t, s.Addr(), "udp", m)
	if opt := resp.IsEdns0(); opt == nil || opt.UDPSize() != ednsUDPSize {
		t.Errorf("answer to an EDNS query has OPT %v, want UDP size %d", opt, ednsUDPSize)
	}
}

func TestDenied(t *testing.T) {
	up := startUpstream(t, nil, nil) // an app name must never go upstream
	s := startServer(t, Config{
		Upstreams: []netip.AddrPort{up.addr},
		Resolve: func(context.Context, string) (netip.Addr, error) {
			return netip.Addr{}, fmt.Errorf("%w: not in your groups", ErrDenied)
		},
	}, "*.corp.internal")
	m := query("hr.corp.internal", dns.TypeA)
	m.SetEdns0(1232, false)
	resp := exchange(t, s.Addr(), "udp", m)
	if resp.Rcode != dns.RcodeRefused {
		t.Fatalf("rcode %s, want REFUSED", dns.RcodeToString[resp.Rcode])
	}
	var ede *dns.EDNS0_EDE
	if opt := resp.IsEdns0(); opt != nil {
		for _, o := range opt.Option {
			if e, ok := o.(*dns.EDNS0_EDE); ok {
				ede = e
			}
		}
	}
	if ede == nil || ede.InfoCode != dns.ExtendedErrorCodeProhibited {
		t.Errorf("want an Extended DNS Error 'Prohibited', got %v", ede)
	}
	if st := s.Stats(); st.Refused != 1 {
		t.Errorf("stats %+v, want 1 refused", st)
	}
}

func TestResolveTimeout(t *testing.T) {
	up := startUpstream(t, nil, nil)
	resolveDone := make(chan error, 1)
	s := startServer(t, Config{
		Upstreams:     []netip.AddrPort{up.addr},
		AnswerTimeout: 100 * time.Millisecond,
		Resolve: func(ctx context.Context, _ string) (netip.Addr, error) {
			<-ctx.Done() // a grant round trip that never ends
			resolveDone <- ctx.Err()
			return netip.Addr{}, ctx.Err()
		},
	}, "*.corp.internal")
	start := time.Now()
	resp := exchange(t, s.Addr(), "udp", query("slow.corp.internal", dns.TypeA))
	if resp.Rcode != dns.RcodeServerFailure {
		t.Errorf("rcode %s, want SERVFAIL", dns.RcodeToString[resp.Rcode])
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("SERVFAIL after %v, want about AnswerTimeout (100ms)", d)
	}
	select {
	case err := <-resolveDone:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Resolve's context ended with %v, want its deadline", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("Resolve's context never ended")
	}
}

func TestResolveErrors(t *testing.T) {
	tests := []struct {
		name  string
		addr  netip.Addr
		err   error
		rcode int
	}{
		{"other error", netip.Addr{}, errors.New("controller unreachable"), dns.RcodeServerFailure},
		{"IPv6 address", netip.MustParseAddr("fd00::1"), nil, dns.RcodeServerFailure},
		{"IPv4-mapped address", netip.MustParseAddr("::ffff:100.80.0.9"), nil, dns.RcodeSuccess},
		{"wrapped denial", netip.Addr{}, fmt.Errorf("grant: %w", ErrDenied), dns.RcodeRefused},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := startServer(t, Config{
				Resolve: func(context.Context, string) (netip.Addr, error) { return tt.addr, tt.err },
			}, "*.corp.internal")
			resp := exchange(t, s.Addr(), "udp", query("x.corp.internal", dns.TypeA))
			if resp.Rcode != tt.rcode {
				t.Errorf("rcode %s, want %s", dns.RcodeToString[resp.Rcode], dns.RcodeToString[tt.rcode])
			}
		})
	}
}

func TestNoDataForOtherTypes(t *testing.T) {
	var calls atomic.Int64
	up := startUpstream(t, nil, nil)
	s := startServer(t, Config{
		Upstreams: []netip.AddrPort{up.addr},
		Resolve: func(context.Context, string) (netip.Addr, error) {
			calls.Add(1)
			return netip.MustParseAddr("100.80.0.7"), nil
		},
	}, "*.corp.internal")
	for _, qtype := range []uint16{dns.TypeAAAA, dns.TypeHTTPS, dns.TypeSVCB, dns.TypeMX, dns.TypeTXT, dns.TypeANY} {
		t.Run(dns.TypeToString[qtype], func(t *testing.T) {
			start := time.Now()
			resp := exchange(t, s.Addr(), "udp", query("wiki.corp.internal", qtype))
			if resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 0 {
				t.Errorf("answer %v, want NOERROR with no records", resp)
			}
			if d := time.Since(start); d > 500*time.Millisecond {
				t.Errorf("NODATA took %v", d)
			}
		})
	}
	if calls.Load() != 0 {
		t.Errorf("Resolve called %d times for non-A queries", calls.Load())
	}
	if st := s.Stats(); st.NoData != 6 {
		t.Errorf("stats %+v, want 6 NODATA", st)
	}
}

func TestForward(t *testing.T) {
	up := startUpstream(t, answerA("192.0.2.1"), answerA("192.0.2.2"))
	s := startServer(t, Config{
		Upstreams: []netip.AddrPort{up.addr},
		Resolve: func(context.Context, string) (netip.Addr, error) {
			t.Error("Resolve called for a name that is not an app")
			return netip.Addr{}, nil
		},
	}, "*.corp.internal")

	tests := []struct {
		name    string
		network string
		qname   string
		want    string
	}{
		{"udp", "udp", "example.com", "192.0.2.1"},
		{"tcp goes over tcp", "tcp", "example.com", "192.0.2.2"},
		{"apex of a wildcard", "udp", "corp.internal", "192.0.2.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := query(tt.qname, dns.TypeA)
			m.SetEdns0(1232, false)
			sent, _ := m.Pack()
			resp := exchange(t, s.Addr(), tt.network, m)
			if len(resp.Answer) != 1 || resp.Answer[0].(*dns.A).A.String() != tt.want {
				t.Fatalf("answer %v, want A %s", resp.Answer, tt.want)
			}
			// The upstream got the query unchanged but for the ID.
			got := up.last.Load()
			gotBytes, _ := got.Pack()
			if !bytes.Equal(gotBytes[2:], sent[2:]) {
				t.Errorf("upstream got %v, want %v", got, m)
			}
		})
	}
	if st := s.Stats(); st.Forwarded != 3 {
		t.Errorf("stats %+v, want 3 forwarded", st)
	}
}

func TestForwardTruncatedRetriesTCP(t *testing.T) {
	truncated := func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Truncated = true
		_ = w.WriteMsg(m)
	}
	many := make([]string, 40) // 40 A records: about 650 bytes, over 512
	for i := range many {
		many[i] = fmt.Sprintf("192.0.2.%d", i+1)
	}
	up := startUpstream(t, truncated, answerA(many...))
	s := startServer(t, Config{Upstreams: []netip.AddrPort{up.addr}})

	t.Run("fits the client", func(t *testing.T) {
		m := query("big.example.com", dns.TypeA)
		m.SetEdns0(4096, false)
		resp := exchange(t, s.Addr(), "udp", m)
		if resp.Truncated || len(resp.Answer) != 40 {
			t.Errorf("answer TC=%v with %d records, want all 40 fetched over TCP", resp.Truncated, len(resp.Answer))
		}
	})
	t.Run("too large for the client", func(t *testing.T) {
		resp := exchange(t, s.Addr(), "udp", query("big.example.com", dns.TypeA)) // no EDNS: 512 bytes
		if !resp.Truncated || len(resp.Answer) == 0 || len(resp.Answer) >= 40 {
			t.Errorf("answer TC=%v with %d records, want part of them and TC set", resp.Truncated, len(resp.Answer))
		}
	})
	if up.tcpQueries.Load() != 2 {
		t.Errorf("upstream got %d TCP queries, want 2", up.tcpQueries.Load())
	}
}

func TestForwardTruncatedNoTCP(t *testing.T) {
	// An upstream without TCP: the truncated answer goes to the client,
	// which may retry over TCP itself, rather than a SERVFAIL.
	pc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(loopback))
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Truncated = true
		_ = w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go func() { _ = srv.ActivateAndServe() }()
	<-started
	t.Cleanup(func() { _ = srv.Shutdown() })

	s := startServer(t, Config{Upstreams: []netip.AddrPort{pc.LocalAddr().(*net.UDPAddr).AddrPort()}})
	resp := exchange(t, s.Addr(), "udp", query("big.example.com", dns.TypeA))
	if resp.Rcode != dns.RcodeSuccess || !resp.Truncated {
		t.Errorf("answer rcode %s TC=%v, want the upstream's truncated answer", dns.RcodeToString[resp.Rcode], resp.Truncated)
	}
}

func TestForwardNextUpstream(t *testing.T) {
	// A port with nothing behind it: the kernel answers port unreachable.
	dead, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(loopback))
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.LocalAddr().(*net.UDPAddr).AddrPort()
	dead.Close()
	failing := startUpstream(t, func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetRcode(r, dns.RcodeServerFailure)
		_ = w.WriteMsg(m)
	}, nil)
	good := startUpstream(t, answerA("192.0.2.9"), nil)

	s := startServer(t, Config{Upstreams: []netip.AddrPort{deadAddr, failing.addr, good.addr}})
	resp := exchange(t, s.Addr(), "udp", query("example.com", dns.TypeA))
	if len(resp.Answer) != 1 {
		t.Fatalf("answer %v, want the third upstream's", resp)
	}

	// Only upstreams that fail: the SERVFAIL comes through.
	s = startServer(t, Config{Upstreams: []netip.AddrPort{deadAddr, failing.addr}})
	resp = exchange(t, s.Addr(), "udp", query("example.com", dns.TypeA))
	if resp.Rcode != dns.RcodeServerFailure {
		t.Errorf("rcode %s, want SERVFAIL", dns.RcodeToString[resp.Rcode])
	}
}

func TestForwardUnreachable(t *testing.T) {
	// An upstream that never answers: SERVFAIL within the budget.
	silent, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(loopback))
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	s := startServer(t, Config{Upstreams: []netip.AddrPort{silent.LocalAddr().(*net.UDPAddr).AddrPort()}})
	start := time.Now()
	resp := exchange(t, s.Addr(), "udp", query("example.com", dns.TypeA))
	if resp.Rcode != dns.RcodeServerFailure {
		t.Errorf("rcode %s, want SERVFAIL", dns.RcodeToString[resp.Rcode])
	}
	if d := time.Since(start); d < forwardBudget-100*time.Millisecond || d > forwardBudget+time.Second {
		t.Errorf("SERVFAIL after %v, want after the budget of %v", d, forwardBudget)
	}
}

func TestNoUpstreams(t *testing.T) {
	s := startServer(t, Config{}, "*.corp.internal")
	resp := exchange(t, s.Addr(), "udp", query("example.com", dns.TypeA))
	if resp.Rcode != dns.RcodeRefused {
		t.Errorf("rcode %s, want REFUSED", dns.RcodeToString[resp.Rcode])
	}
}

func TestOwnAddressNotUpstream(t *testing.T) {
	s, err := New(Config{
		Listen:  loopback,
		Resolve: fixedResolve("100.80.0.1", nil),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s2, err := New(Config{
		Listen:    s.Addr(), // taken: New fails
		Resolve:   fixedResolve("100.80.0.1", nil),
		Upstreams: []netip.AddrPort{s.Addr()},
	})
	if err == nil {
		s2.Close()
		t.Fatal("New on a taken port succeeded")
	}
	s.Close()
	s3, err := New(Config{
		Listen:    s.Addr(),
		Resolve:   fixedResolve("100.80.0.1", nil),
		Upstreams: []netip.AddrPort{s.Addr(), netip.MustParseAddrPort("127.0.0.1:5353")},
	})
	if err != nil {
		t.Skipf("port %v taken again meanwhile: %v", s.Addr(), err)
	}
	defer s3.Close()
	if len(s3.upstreams) != 1 || s3.upstreams[0].Port() != 5353 {
		t.Errorf("upstreams %v, want our own address dropped", s3.upstreams)
	}
}

func TestNotApp(t *testing.T) {
	var calls atomic.Int64
	up := startUpstream(t, answerA("192.0.2.5"), nil)
	s := startServer(t, Config{
		Upstreams: []netip.AddrPort{up.addr},
		Resolve: func(context.Context, string) (netip.Addr, error) {
			calls.Add(1)
			return netip.Addr{}, fmt.Errorf("app printer: %w", ErrNotApp)
		},
	}, "*.corp.internal")
	for range 2 {
		resp := exchange(t, s.Addr(), "udp", query("printer.corp.internal", dns.TypeA))
		if len(resp.Answer) != 1 {
			t.Fatalf("answer %v, want the upstream's", resp)
		}
	}
	// Now known not to be an app: AAAA goes upstream too.
	exchange(t, s.Addr(), "udp", query("printer.corp.internal", dns.TypeAAAA))
	if calls.Load() != 1 || up.udpQueries.Load() != 3 {
		t.Errorf("Resolve called %d times, upstream asked %d times; want 1 and 3", calls.Load(), up.udpQueries.Load())
	}
	s.SetDomains([]string{"*.corp.internal"}) // forgets what Resolve said
	exchange(t, s.Addr(), "udp", query("printer.corp.internal", dns.TypeA))
	if calls.Load() != 2 {
		t.Errorf("Resolve called %d times after SetDomains, want 2", calls.Load())
	}
}

func TestRateLimitPerSource(t *testing.T) {
	var calls atomic.Int64
	s, err := New(Config{
		Listen:    loopback,
		Resolve:   fixedResolve("100.80.0.1", &calls),
		RateLimit: rate.Every(time.Hour), // no refill during the test
		Burst:     3,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.SetDomains([]string{"*.corp.internal"})
	ctx := context.Background()
	a, b := netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3")
	rcode := func(src netip.Addr, qtype uint16) int {
		var m dns.Msg
		if err := m.Unpack(s.handle(ctx, packQuery(t, "wiki.corp.internal", qtype), src, false)); err != nil {
			t.Fatal(err)
		}
		return m.Rcode
	}
	for i := range 3 {
		if rc := rcode(a, dns.TypeA); rc != dns.RcodeSuccess {
			t.Fatalf("lookup %d from a: %s, want NOERROR", i, dns.RcodeToString[rc])
		}
	}
	for range 100 { // a flood
		if rc := rcode(a, dns.TypeA); rc != dns.RcodeRefused {
			t.Fatalf("lookup over the limit: %s, want REFUSED", dns.RcodeToString[rc])
		}
	}
	if rc := rcode(a, dns.TypeAAAA); rc != dns.RcodeSuccess {
		t.Errorf("AAAA over the A limit: %s, want NOERROR (it costs no lookup)", dns.RcodeToString[rc])
	}
	if rc := rcode(b, dns.TypeA); rc != dns.RcodeSuccess {
		t.Errorf("lookup from another source: %s, want NOERROR", dns.RcodeToString[rc])
	}
	if calls.Load() != 4 {
		t.Errorf("Resolve called %d times, want 4 (3 from a, 1 from b)", calls.Load())
	}
	if st := s.Stats(); st.RateLimited != 100 || st.Refused != 100 {
		t.Errorf("stats %+v, want 100 rate-limited and refused", st)
	}
}

func TestRateLimitEndToEnd(t *testing.T) {
	var calls atomic.Int64
	s := startServer(t, Config{
		Resolve:   fixedResolve("100.80.0.1", &calls),
		RateLimit: rate.Every(time.Hour),
		Burst:     2,
	}, "*.corp.internal")
	var refused int
	for range 5 {
		if resp := exchange(t, s.Addr(), "udp", query("wiki.corp.internal", dns.TypeA)); resp.Rcode == dns.RcodeRefused {
			refused++
		}
	}
	if refused != 3 || calls.Load() != 2 {
		t.Errorf("%d refused and %d Resolve calls, want 3 and 2", refused, calls.Load())
	}
}

func TestSourceLimitsBounded(t *testing.T) {
	l := newSourceLimits(1, 1, 100)
	now := time.Now()
	for i := range 10000 {
		src := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		if !l.allow(src, now) {
			t.Fatalf("first lookup from %v refused", src)
		}
	}
	if n := l.sources.len(); n != 100 {
		t.Errorf("%d limiters kept, want the bound of 100", n)
	}
	if len(l.sources.m) != 100 {
		t.Errorf("map holds %d, list %d", len(l.sources.m), l.sources.len())
	}
}

func TestSingleflight(t *testing.T) {
	var calls atomic.Int64
	release := make(chan struct{})
	s := startServer(t, Config{
		AnswerTimeout: 5 * time.Second,
		Resolve: func(ctx context.Context, _ string) (netip.Addr, error) {
			calls.Add(1)
			select {
			case <-release:
			case <-ctx.Done():
				return netip.Addr{}, ctx.Err()
			}
			return netip.MustParseAddr("100.80.0.3"), nil
		},
	}, "*.corp.internal")

	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			network := []string{"udp", "tcp"}[i%2]
			c := &dns.Client{Net: network, Timeout: 5 * time.Second}
			resp, _, err := c.Exchange(query("app.corp.internal", dns.TypeA), s.Addr().String())
			if err == nil && (len(resp.Answer) != 1 || resp.Answer[0].(*dns.A).A.String() != "100.80.0.3") {
				err = fmt.Errorf("answer %v", resp)
			}
			errs <- err
		})
	}
	eventually(t, "the first Resolve call", func() bool { return calls.Load() > 0 })
	eventually(t, "all queries to arrive", func() bool { return s.Stats().Queries == n })
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if calls.Load() != 1 {
		t.Errorf("Resolve called %d times for %d concurrent queries, want 1", calls.Load(), n)
	}
	// A later query calls Resolve again: nothing is cached here.
	exchange(t, s.Addr(), "udp", query("app.corp.internal", dns.TypeA))
	if calls.Load() != 2 {
		t.Errorf("Resolve called %d times, want 2", calls.Load())
	}
}

// rawQuery builds a query by hand, for the shapes miekg/dns will not pack.
func rawQuery(id, flags, qdcount uint16, name []byte, qtype uint16) []byte {
	b := binary.BigEndian.AppendUint16(nil, id)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, qdcount)
	b = append(b, 0, 0, 0, 0, 0, 0)
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, qtype)
	return binary.BigEndian.AppendUint16(b, dns.ClassINET)
}

// wireName encodes labels as DNS wire labels, whatever their length.
func wireName(labels ...string) []byte {
	var b []byte
	for _, l := range labels {
		b = append(b, byte(len(l)))
		b = append(b, l...)
	}
	return append(b, 0)
}

func TestMalformed(t *testing.T) {
	s, err := New(Config{Listen: loopback, Resolve: fixedResolve("100.80.0.1", nil)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.SetDomains([]string{"*.corp.internal"})
	const rd = 1 << 8
	long := strings.Repeat("a", 63)
	tests := []struct {
		name  string
		pkt   []byte
		rcode int // -1: dropped
	}{
		{"empty", nil, -1},
		{"short header", []byte{1, 2, 3}, -1},
		{"header only", rawQuery(7, rd, 0, nil, 0)[:12], dns.RcodeFormatError},
		{"count says none, one present", rawQuery(7, rd, 0, wireName("a"), dns.TypeA), dns.RcodeFormatError},
		{"two questions", append(rawQuery(7, rd, 2, wireName("a", "b"), dns.TypeA), wireName("c")[0:]...), dns.RcodeFormatError},
		{"count says two, one present", rawQuery(7, rd, 2, wireName("a", "b"), dns.TypeA), dns.RcodeFormatError},
		{"cut in the question", rawQuery(7, rd, 1, wireName("wiki", "corp", "internal"), dns.TypeA)[:20], dns.RcodeFormatError},
		{"label of 64", rawQuery(7, rd, 1, wireName(long+"a", "corp", "internal"), dns.TypeA), dns.RcodeFormatError},
		{"name over 255", rawQuery(7, rd, 1, wireName(long, long, long, long, "corp", "internal"), dns.TypeA), dns.RcodeFormatError},
		{"pointer loop", rawQuery(7, rd, 1, []byte{0xc0, 12}, dns.TypeA), dns.RcodeFormatError},
		{"a response", rawQuery(7, 1<<15, 1, wireName("wiki", "corp", "internal"), dns.TypeA), -1},
		{"a broken response", rawQuery(7, 1<<15, 1, nil, 0)[:14], -1},
		{"opcode update", rawQuery(7, 5<<11, 1, wireName("corp", "internal"), dns.TypeSOA), dns.RcodeNotImplemented},
		{"opcode notify", rawQuery(7, 4<<11, 1, wireName("corp", "internal"), dns.TypeSOA), dns.RcodeNotImplemented},
		{"good app query", rawQuery(7, rd, 1, wireName("wiki", "corp", "internal"), dns.TypeA), dns.RcodeSuccess},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := s.handle(context.Background(), tt.pkt, netip.MustParseAddr("127.0.0.1"), false)
			if tt.rcode < 0 {
				if out != nil {
					t.Errorf("answered %x, want dropped", out)
				}
				return
			}
			var m dns.Msg
			if err := m.Unpack(out); err != nil {
				t.Fatalf("answer does not unpack: %v", err)
			}
			if m.Id != 7 || !m.Response || m.Rcode != tt.rcode {
				t.Errorf("answer id %d QR=%v rcode %s; want id 7, QR, %s", m.Id, m.Response, dns.RcodeToString[m.Rcode], dns.RcodeToString[tt.rcode])
			}
		})
	}
}

func TestTCPLimits(t *testing.T) {
	s := startServer(t, Config{Resolve: fixedResolve("100.80.0.1", nil)}, "*.corp.internal")
	dial := func() net.Conn {
		c, err := net.Dial("tcp", s.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	closed := func(c net.Conn) bool {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := c.Read(make([]byte, 1))
		return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)
	}

	t.Run("oversized message", func(t *testing.T) {
		c := dial()
		if _, err := c.Write([]byte{0xff, 0xff}); err != nil { // 65535 bytes announced
			t.Fatal(err)
		}
		if !closed(c) {
			t.Error("connection still open after an oversized length")
		}
	})
	t.Run("empty message", func(t *testing.T) {
		c := dial()
		if _, err := c.Write([]byte{0, 0}); err != nil {
			t.Fatal(err)
		}
		if !closed(c) {
			t.Error("connection still open after an empty message")
		}
	})
	t.Run("pipelined", func(t *testing.T) {
		c := dial()
		dc := &dns.Conn{Conn: c}
		for i, qtype := range []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeA} {
			m := query(fmt.Sprintf("app%d.corp.internal", i), qtype)
			if err := dc.WriteMsg(m); err != nil {
				t.Fatal(err)
			}
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		for range 3 {
			if _, err := dc.ReadMsg(); err != nil {
				t.Fatal(err)
			}
		}
	})
}

func TestTCPIdleAndConnLimit(t *testing.T) {
	s, err := New(Config{Listen: loopback, Resolve: fixedResolve("100.80.0.1", nil)})
	if err != nil {
		t.Fatal(err)
	}
	s.tcpIdle = time.Second
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Run(ctx) }()
	defer func() { cancel(); <-done }()

	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range maxTCPConns {
		c, err := net.Dial("tcp", s.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	eventually(t, "all connections to be served", func() bool { return len(s.tcpConns) == maxTCPConns })
	extra, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	_ = extra.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := extra.Read(make([]byte, 1)); !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("connection over the limit: read %v, want it closed", err)
	}
	if s.Stats().Dropped == 0 {
		t.Error("the connection over the limit was not counted as dropped")
	}
	// Idle connections are closed after tcpIdle, which frees the slots.
	start := time.Now()
	_ = conns[0].SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := conns[0].Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("idle connection: read %v, want EOF", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("idle connection closed after %v, want about 1s", d)
	}
	eventually(t, "slots freed", func() bool { return len(s.tcpConns) == 0 })
}

func TestRunStops(t *testing.T) {
	entered := make(chan struct{})
	var once sync.Once
	s, err := New(Config{
		Listen:        loopback,
		AnswerTimeout: time.Minute,
		Resolve: func(ctx context.Context, _ string) (netip.Addr, error) {
			once.Do(func() { close(entered) })
			<-ctx.Done()
			return netip.Addr{}, ctx.Err()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	s.SetDomains([]string{"*.corp.internal"})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Run(ctx) }()

	// A query stuck in Resolve and an idle TCP connection.
	c := &dns.Client{Net: "udp", Timeout: 5 * time.Second}
	go func() { _, _, _ = c.Exchange(query("stuck.corp.internal", dns.TypeA), s.Addr().String()) }()
	tc, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	<-entered
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	if err := s.Run(context.Background()); err == nil {
		t.Error("second Run succeeded")
	}
	if _, err := net.Dial("tcp", s.Addr().String()); err == nil {
		t.Error("TCP socket still open after Run returned")
	}
}

func TestSetDomainsConcurrent(t *testing.T) {
	up := startUpstream(t, answerA("192.0.2.1"), nil)
	s := startServer(t, Config{
		Upstreams: []netip.AddrPort{up.addr},
		Resolve:   fixedResolve("100.80.0.1", nil),
		RateLimit: rate.Inf,
	})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ctx.Err() == nil; i++ {
			s.SetDomains([]string{"*.corp.internal", fmt.Sprintf("app%d.example.com", i)})
			s.SetDomains(nil)
		}
	})
	for range 50 {
		resp := exchange(t, s.Addr(), "udp", query("wiki.corp.internal", dns.TypeA))
		if resp.Rcode != dns.RcodeSuccess {
			t.Errorf("rcode %s", dns.RcodeToString[resp.Rcode])
		}
	}
	cancel()
	wg.Wait()
}

func TestNewErrors(t *testing.T) {
	if _, err := New(Config{Listen: loopback}); err == nil {
		t.Error("New without Resolve succeeded")
	}
	if _, err := New(Config{Resolve: fixedResolve("100.80.0.1", nil)}); err == nil {
		t.Error("New without a listen address succeeded")
	}
	taken, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(loopback))
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	at := taken.LocalAddr().(*net.UDPAddr).AddrPort()
	_, err = New(Config{Listen: at, Resolve: fixedResolve("100.80.0.1", nil)})
	if err == nil || !strings.Contains(err.Error(), at.String()) {
		t.Errorf("New on a taken port: %v, want an error naming the address", err)
	}
}
