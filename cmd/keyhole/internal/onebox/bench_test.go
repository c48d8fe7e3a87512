package onebox

import (
	"context"
	"strings"
	"testing"
	"time"
)

// newBenchClient starts a benchmark system and a logged-in client; both
// stop when the benchmark ends.
func newBenchClient(b *testing.B) (*Bench, *Client) {
	b.Helper()
	ctx := context.Background()
	bench, err := NewBench(ctx, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(bench.Close)
	c, err := bench.Client(ctx)
	if err != nil {
		b.Fatal(err)
	}
	return bench, c
}

// BenchmarkTunnelTCP compares one TCP stream through the whole product
// (client netstack → WireGuard → gateway netstack → splice → app) with the
// stock wireguard-go tun/netstack ↔ tun/netstack reference, in one run.
// Report: Mbit/s for each, and the ratio ("x-stock").
func BenchmarkTunnelTCP(b *testing.B) {
	ctx := context.Background()
	bench, c := newBenchClient(b)
	const size = 256 << 20
	var stock, ours Throughput
	for range b.N {
		s, err := StockThroughput(ctx, size)
		if err != nil {
			b.Fatal(err)
		}
		o, err := bench.TunnelThroughput(ctx, c, size)
		if err != nil {
			b.Fatal(err)
		}
		stock.Bytes, stock.Duration = stock.Bytes+s.Bytes, stock.Duration+s.Duration
		ours.Bytes, ours.Duration = ours.Bytes+o.Bytes, ours.Duration+o.Duration
	}
	b.ReportMetric(stock.Mbps(), "stock-Mbit/s")
	b.ReportMetric(ours.Mbps(), "keyhole-Mbit/s")
	b.ReportMetric(ours.Mbps()/stock.Mbps(), "x-stock")
}

// BenchmarkFirstByte measures grant request → first byte through the
// tunnel over fresh grants.
func BenchmarkFirstByte(b *testing.B) {
	ctx := context.Background()
	bench, c := newBenchClient(b)
	b.ResetTimer()
	lat, err := bench.FirstByte(ctx, c, b.N)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(lat.Quantile(0.5).Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat.Quantile(0.99).Microseconds())/1000, "p99-ms")
}

// BenchmarkGrantIssue measures fresh grants per second over HTTPS with
// 10,000 devices and 1,000 apps in SQLite; every grant is pushed to the
// gateway and acknowledged.
func BenchmarkGrantIssue(b *testing.B) {
	ctx := context.Background()
	bench, err := NewBench(ctx, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer bench.Close()
	t0 := time.Now()
	if err := bench.SeedStore(ctx, 10000, 1000); err != nil {
		b.Fatal(err)
	}
	b.Logf("seeded 10,000 devices and 1,000 apps in %v", time.Since(t0))
	b.ResetTimer()
	r, err := bench.IssueGrants(ctx, 16, max(b.N, 2000), 1000)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(r.PerSecond(), "grants/s")
	b.ReportMetric(float64(r.Latencies.Quantile(0.99).Microseconds())/1000, "p99-ms")
}

func TestBenchHarnessSmoke(t *testing.T) {
	ctx := context.Background()
	bench, err := NewBench(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer bench.Close()
	c, err := bench.Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if tp, err := bench.TunnelThroughput(ctx, c, 4<<20); err != nil || tp.Bytes != 4<<20 {
		t.Fatalf("throughput: %v %v", tp, err)
	}
	if tp, err := StockThroughput(ctx, 4<<20); err != nil || tp.Bytes != 4<<20 {
		t.Fatalf("stock: %v %v", tp, err)
	}
	var many []*Client
	for range 3 {
		o, err := bench.Client(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer o.Stop()
		many = append(many, o)
	}
	if tp, err := bench.ParallelThroughput(ctx, many, 1<<20); err != nil || tp.Bytes != 3<<20 {
		t.Fatalf("parallel: %v %v", tp, err)
	}
	if lat, err := bench.FirstByte(ctx, c, 3); err != nil || len(lat) != 3 {
		t.Fatalf("first byte: %v %v", lat, err)
	}
	if err := bench.SeedStore(ctx, 20, 10); err != nil {
		t.Fatal(err)
	}
	r, err := bench.IssueGrants(ctx, 2, 10, 10)
	if err != nil || r.Grants != 10 {
		t.Fatalf("grants: %+v %v", r, err)
	}
	grants, _ := bench.Box.Admin.Grants(ctx)
	fresh := 0
	for _, g := range grants {
		if strings.HasPrefix(g.App, "app-") {
			fresh++
		}
	}
	if fresh != 10 {
		t.Fatalf("%d live grants for seeded apps, want 10 fresh ones", fresh)
	}
}

// BenchmarkIdlePeerMemory reports the gateway's heap per idle client peer
// (issue 6 target: under 20 KiB for 10,000 clients) and per active one
// (1,000 of them, with a wireguard-go peer), and the CPU they cost idle
// and under a churn of 1,000 grants a second.
func BenchmarkIdlePeerMemory(b *testing.B) {
	for range b.N {
		f, err := PeerMemoryChurn(10000, 1000, time.Second, 3*time.Second)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(f.BytesPerPeer, "B/idle-peer")
		b.ReportMetric(f.BytesPerActivePeer, "B/active-peer")
		b.ReportMetric(f.IdleCPU*100, "%cpu-idle")
		b.ReportMetric(f.ChurnCPU*100, "%cpu-churn")
		b.ReportMetric(f.ChurnRate, "churn/s")
		b.ReportMetric(f.GrantRate, "grants/s")
		b.ReportMetric(f.AddRate, "peers/s")
	}
}

// TestPeerMemorySmoke keeps the measurement working (small, fast). It
// takes enough idle peers (about 3 MiB of them) that heap freed meanwhile
// by earlier tests' goroutines winding down cannot hide them.
func TestPeerMemorySmoke(t *testing.T) {
	f, err := PeerMemoryChurn(5000, 20, 10*time.Millisecond, 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if f.BytesPerPeer <= 0 || f.BytesPerActivePeer <= 0 || f.AddRate <= 0 || f.GrantRate <= 0 || f.ChurnRate <= 0 {
		t.Fatalf("figures %+v", f)
	}
}
