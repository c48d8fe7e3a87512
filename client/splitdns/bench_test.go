package splitdns

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/time/rate"
)

// BenchmarkAppCached measures an app answer end to end over UDP on
// loopback, with a Resolve that answers at once (a name with a live grant).
func BenchmarkAppCached(b *testing.B) {
	s := startServer(b, Config{Resolve: fixedResolve("100.80.0.1", nil), RateLimit: rate.Inf}, "*.corp.internal")
	benchLatency(b, s.Addr(), "wiki.corp.internal")
}

// BenchmarkForwarded measures a name that is not an app, through the
// server to an upstream on loopback and back.
func BenchmarkForwarded(b *testing.B) {
	up := startUpstream(b, answerA("192.0.2.1"), nil)
	s := startServer(b, Config{Upstreams: []netip.AddrPort{up.addr}}, "*.corp.internal")
	benchLatency(b, s.Addr(), "example.com")
}

// BenchmarkUpstreamDirect is the baseline for BenchmarkForwarded: the same
// upstream asked directly. The difference is what forwarding costs.
func BenchmarkUpstreamDirect(b *testing.B) {
	up := startUpstream(b, answerA("192.0.2.1"), nil)
	benchLatency(b, up.addr, "example.com")
}

// BenchmarkAppCachedParallel is app answers from many clients at once:
// throughput rather than latency.
func BenchmarkAppCachedParallel(b *testing.B) {
	s := startServer(b, Config{Resolve: fixedResolve("100.80.0.1", nil), RateLimit: rate.Inf}, "*.corp.internal")
	pkt := packQuery(b, "wiki.corp.internal", dns.TypeA)
	b.RunParallel(func(pb *testing.PB) {
		c, err := net.Dial("udp", s.Addr().String())
		if err != nil {
			b.Error(err)
			return
		}
		defer c.Close()
		q := slices.Clone(pkt)
		buf := make([]byte, 1500)
		for pb.Next() {
			if _, err := roundTrip(c, q, buf); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkHandleAppCached is the handler alone, without sockets: the
// parse, match, answer and pack of one app query.
func BenchmarkHandleAppCached(b *testing.B) {
	s, err := New(Config{Listen: loopback, Resolve: fixedResolve("100.80.0.1", nil), RateLimit: rate.Inf})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	s.SetDomains([]string{"*.corp.internal"})
	pkt := packQuery(b, "wiki.corp.internal", dns.TypeA)
	src := netip.MustParseAddr("127.0.0.1")
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if s.handle(ctx, pkt, src, false) == nil {
			b.Fatal("no answer")
		}
	}
}

// benchLatency sends b.N queries for name to addr over UDP, one at a time,
// and reports the median and 99th percentile round trip.
func benchLatency(b *testing.B, addr netip.AddrPort, name string) {
	c, err := net.Dial("udp", addr.String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	q := packQuery(b, name, dns.TypeA)
	buf := make([]byte, 1500)
	rtts := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		binary.BigEndian.PutUint16(q, uint16(i))
		rtt, err := roundTrip(c, q, buf)
		if err != nil {
			b.Fatal(err)
		}
		rtts = append(rtts, rtt)
	}
	b.StopTimer()
	reportLatency(b, rtts)
}

// roundTrip sends q on c and waits for the answer with q's ID.
func roundTrip(c net.Conn, q, buf []byte) (time.Duration, error) {
	start := time.Now()
	if err := c.SetDeadline(start.Add(5 * time.Second)); err != nil {
		return 0, err
	}
	if _, err := c.Write(q); err != nil {
		return 0, err
	}
	for {
		n, err := c.Read(buf)
		if err != nil {
			return 0, err
		}
		if n >= 2 && binary.BigEndian.Uint16(buf) == binary.BigEndian.Uint16(q) {
			return time.Since(start), nil
		}
	}
}

// reportLatency reports the median and 99th percentile of rtts in µs.
func reportLatency(b *testing.B, rtts []time.Duration) {
	if len(rtts) == 0 {
		return
	}
	slices.Sort(rtts)
	pct := func(p float64) float64 {
		i := min(int(float64(len(rtts))*p), len(rtts)-1)
		return float64(rtts[i]) / float64(time.Microsecond)
	}
	b.ReportMetric(pct(0.50), "p50-µs")
	b.ReportMetric(pct(0.99), "p99-µs")
}
