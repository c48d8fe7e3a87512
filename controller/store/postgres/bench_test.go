package postgres

import (
	"context"
	"fmt"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/controller/store"
	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/key"
	"github.com/keyhole-net/keyhole/internal/pgtest"
)

// The benchmarks are the SQLite store's (controller/store/sqlite/
// bench_test.go) with the same data, so that the figures compare. Against
// pgtest's server (fsync off) they measure the store and the protocol, not
// the disk; point KEYHOLE_TEST_POSTGRES_URL at a real server for figures
// with durable commits.

// seedBench creates nApps apps (one domain each) on two gateways and
// nDevices devices spread over 100 users, and returns the devices.
func seedBench(tb testing.TB, s *Store, nDevices, nApps int) []store.Device {
	tb.Helper()
	ctx := context.Background()
	must := func(err error) {
		tb.Helper()
		if err != nil {
			tb.Fatal(err)
		}
	}
	must(s.CreateGroup(ctx, api.Group{Name: "eng"}))
	must(s.CreateGatewayGroup(ctx, api.GatewayGroup{Name: "site-a"}))
	for i := range 2 {
		_, err := s.CreateGateway(ctx, store.Gateway{ID: api.GatewayID(fmt.Sprint("gw_", i)), Name: fmt.Sprint("gw", i), Group: "site-a"})
		must(err)
	}
	ports, err := api.ParsePortRanges("tcp/443")
	must(err)
	for i := range nApps {
		_, err := s.CreateApp(ctx, store.App{Name: fmt.Sprint("app", i), Domains: []string{fmt.Sprintf("app%d.corp.internal", i)}, Ports: ports, GatewayGroup: "site-a"})
		must(err)
	}
	users := min(100, nDevices)
	for i := range users {
		must(s.CreateUser(ctx, store.User{User: api.User{Name: fmt.Sprint("user", i), Groups: []string{"eng"}}}))
	}
	priv, err := key.NewWGPrivate()
	must(err)
	pub := priv.Public() // one key for all: deriving 10,000 would dominate seeding
	devs := make([]store.Device, nDevices)
	for i := range devs {
		devs[i], err = s.CreateDevice(ctx, store.Device{User: fmt.Sprint("user", i%users), Name: fmt.Sprint("laptop", i), WGPublicKey: pub})
		must(err)
	}
	return devs
}

// benchGrant is a grant as the controller issues it: one domain target,
// ten minutes.
func benchGrant(id api.GrantID, dev store.Device, now time.Time) store.Grant {
	return store.Grant{
		Grant: api.Grant{
			ID: id, DeviceID: dev.ID, User: dev.User, App: "app7", GatewayID: "gw_1", ClientIP: dev.OverlayIP,
			Targets:   []api.GrantTarget{{Prefix: netip.MustParsePrefix("100.96.0.8/32"), Host: "app7.corp.internal"}},
			Ports:     []api.PortRange{{Proto: "tcp", First: 443, Last: 443}},
			Rule:      "rule_1",
			CreatedAt: now,
			NotAfter:  now.Add(10 * time.Minute),
		},
		AppID:       "app_7",
		ClientWGKey: dev.WGPublicKey,
	}
}

func benchEvent(g store.Grant) api.AuditEvent {
	return api.AuditEvent{Time: g.CreatedAt, Type: "grant.allow", Actor: "user:" + g.User, User: g.User,
		DeviceID: g.DeviceID, App: g.App, GatewayID: g.GatewayID, GrantID: g.ID, Rule: g.Rule, Source: "192.0.2.10:50000"}
}

// openBench opens a new database seeded with 10,000 devices and 1,000 apps.
func openBench(b *testing.B) (*Store, []store.Device) {
	b.Helper()
	srv := pgtest.Start(b)
	s := openTest(b, srv.NewDatabase(b))
	b.Cleanup(func() { s.Close() })
	return s, seedBench(b, s, 10_000, 1_000)
}

// BenchmarkCreateGrant measures the grant write path (grant + audit event in
// one statement) one call at a time.
//
//	go test -run '^$' -bench CreateGrant -benchtime 20000x ./controller/store/postgres/
func BenchmarkCreateGrant(b *testing.B) {
	s, devs := openBench(b)
	ctx := context.Background()
	now := time.Now().UTC()
	i := 0
	start := time.Now()
	for b.Loop() {
		g := benchGrant(api.GrantID(fmt.Sprint("grt_", i)), devs[i%len(devs)], now)
		if err := s.CreateGrant(ctx, g, benchEvent(g)); err != nil {
			b.Fatal(err)
		}
		i++
	}
	b.ReportMetric(float64(i)/time.Since(start).Seconds(), "grants/s")
}

// BenchmarkCreateGrantParallel is CreateGrant from many goroutines, as the
// API server calls it; each grant is also read back (LiveGrants for the
// device) as the issuing path does.
func BenchmarkCreateGrantParallel(b *testing.B) {
	s, devs := openBench(b)
	ctx := context.Background()
	now := time.Now().UTC()
	var n atomic.Int64
	b.SetParallelism(4) // 4 × GOMAXPROCS goroutines, like concurrent HTTP handlers
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			dev := devs[int(i)%len(devs)]
			g := benchGrant(api.GrantID(fmt.Sprint("grt_", i)), dev, now)
			if err := s.CreateGrant(ctx, g, benchEvent(g)); err != nil {
				b.Error(err)
				return
			}
			if _, err := s.LiveGrants(ctx, now, "", dev.ID); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(n.Load())/time.Since(start).Seconds(), "grants/s")
}

// BenchmarkLiveGrantsGateway measures the gateway sync query with 10,000
// live grants spread over two gateways.
func BenchmarkLiveGrantsGateway(b *testing.B) {
	s, devs := openBench(b)
	ctx := context.Background()
	now := time.Now().UTC()
	for i := range 10_000 {
		g := benchGrant(api.GrantID(fmt.Sprint("grt_", i)), devs[i], now)
		g.GatewayID = api.GatewayID(fmt.Sprint("gw_", i%2))
		if err := s.CreateGrant(ctx, g, benchEvent(g)); err != nil {
			b.Fatal(err)
		}
	}
	for b.Loop() {
		gs, err := s.LiveGrants(ctx, now, "gw_1", "")
		if err != nil || len(gs) != 5_000 {
			b.Fatalf("LiveGrants = %d, %v", len(gs), err)
		}
	}
}
