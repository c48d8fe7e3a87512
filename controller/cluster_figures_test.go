package controller

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/controller/cluster"
	"github.com/keyhole-net/keyhole/gateway"
	"github.com/keyhole-net/keyhole/internal/api"
)

// TestClusterFigures measures the control plane of a cluster of three
// controllers on one PostgreSQL (issue 6): the grant issue rate and
// latency through one controller and through all three, and how long a
// revocation made on any controller takes to reach the gateway holding
// the grant, over ten gateways spread across the controllers. It prints
// figures and fails only if something does not work; run it with
//
//	KEYHOLE_BENCH=1 go test -run TestClusterFigures -v ./controller/
//
// (KEYHOLE_TEST_POSTGRES_URL points it at a real, durable server; by
// default it starts a throwaway one with fsync off).
func TestClusterFigures(t *testing.T) {
	if os.Getenv("KEYHOLE_BENCH") == "" {
		t.Skip("a measurement, not a check: set KEYHOLE_BENCH=1")
	}
	const (
		gateways = 10
		apps     = 150
		workers  = 12
		farApps  = 50
	)
	// Production timings (memberlist's LAN defaults, the default re-sync,
	// announce and catalog intervals), not the short ones of the tests:
	// the figure is what a deployment gets.
	envs := newClusterEnvsWith(t, 3, func(cc *ClusterConfig) {
		cc.Timing = cluster.Timing{}
		cc.ResyncInterval, cc.AnnounceInterval, cc.CatalogInterval = 0, 0, 0
	})
	a := envs[0]
	ctx := context.Background()
	a.must(a.admin.AddGatewayGroup(ctx, "site"))
	a.must(a.admin.AddGroup(ctx, "eng"))
	a.must(a.admin.AddUser(ctx, api.UserCreate{Name: "alice", Password: testPassword, Groups: []string{"eng"}}))
	tcp443 := []api.PortRange{{Proto: "tcp", First: 443, Last: 443}}
	for i := range apps {
		a.must(a.admin.AddApp(ctx, api.AppCreate{Name: fmt.Sprintf("app-%d", i), Domains: []string{fmt.Sprintf("app-%d.corp.internal", i)}, Ports: tcp443, GatewayGroup: "site"}))
	}
	a.must(a.admin.AddPolicy(ctx, api.PolicyRuleCreate{Action: api.Allow, Groups: []string{"eng"}, Apps: []string{"*"}}))
	gws := make(map[api.GatewayID]*gateway.Gateway)
	for i := range gateways {
		e := envs[i%len(envs)]
		var others []string
		for _, o := range envs {
			if o != e {
				others = append(others, o.url)
			}
		}
		gw := e.addGatewayWith("site", others)
		gws[gw.ID()] = gw
	}
	for _, gw := range gws {
		for _, e := range envs {
			eventually(t, 10*time.Second, func() error {
				if e.c.hub.connected(gw.ID()) {
					return nil
				}
				if _, ok := e.c.gatewayOwner(gw.ID()); !ok {
					return fmt.Errorf("%s does not know where gateway %s is", e.c.ID(), gw.ID())
				}
				return nil
			})
		}
	}

	var rateOf func(name string, ds []*testDevice, prefix string, apps int)
	// Grant issue rate: workers devices, each walking the apps (every
	// request a fresh grant), through one controller, then spread over
	// three.
	var devs []*testDevice
	for range 2 * workers {
		devs = append(devs, a.login("alice"))
	}
	rate := func(name string, ds []*testDevice) { rateOf(name, ds, "app", apps) }
	rateOf = func(name string, ds []*testDevice, prefix string, apps int) {
		var n atomic.Int64
		lat := make([][]time.Duration, len(ds))
		var wg sync.WaitGroup
		start := time.Now()
		for w, d := range ds {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for k := range apps {
					t0 := time.Now()
					if _, err := d.grant(fmt.Sprintf("%s-%d", prefix, k)); err != nil {
						t.Errorf("%s: grant: %v", name, err)
						return
					}
					lat[w] = append(lat[w], time.Since(t0))
					n.Add(1)
				}
			}()
		}
		wg.Wait()
		took := time.Since(start)
		all := slices.Concat(lat...)
		slices.Sort(all)
		t.Logf("grant issue, %s, %d devices: %.0f grants/s, p50 %v, p99 %v", name, len(ds), float64(n.Load())/took.Seconds(), quantile(all, 0.5), quantile(all, 0.99))
	}
	// KEYHOLE_BENCH_CPUPROFILE=DIR writes a CPU profile of this process
	// (controllers, gateways and load) per phase: DIR/grants-1.pprof and
	// DIR/grants-3.pprof.
	profiled := func(file string, f func()) {
		dir := os.Getenv("KEYHOLE_BENCH_CPUPROFILE")
		if dir == "" {
			f()
			return
		}
		out, err := os.Create(filepath.Join(dir, file))
		if err != nil {
			t.Fatal(err)
		}
		defer out.Close()
		if err := pprof.StartCPUProfile(out); err != nil {
			t.Fatal(err)
		}
		f()
		pprof.StopCPUProfile()
	}
	profiled("grants-1.pprof", func() { rate("1 controller", devs[:workers]) })
	spread := make([]*testDevice, workers)
	for i, d := range devs[workers:] {
		spread[i] = d.via(envs[i%len(envs)])
	}
	profiled("grants-3.pprof", func() { rate("3 controllers", spread) })

	// Relayed: apps of a group whose gateways only the third controller
	// holds, asked of the first, so every push and its ack cross between
	// controllers.
	a.must(a.admin.AddGatewayGroup(ctx, "far"))
	for i := range farApps {
		a.must(a.admin.AddApp(ctx, api.AppCreate{Name: fmt.Sprintf("far-%d", i), Domains: []string{fmt.Sprintf("far-%d.corp.internal", i)}, Ports: tcp443, GatewayGroup: "far"}))
	}
	for range 2 {
		gw := envs[2].addGatewayWith("far", nil)
		gws[gw.ID()] = gw
		waitOwner(t, a, gw, envs[2])
	}
	eventually(t, 10*time.Second, func() error {
		if _, ok := a.c.catalog.Load().apps[fmt.Sprintf("far-%d", farApps-1)]; !ok {
			return fmt.Errorf("catalog of %s lacks the far apps", a.c.ID())
		}
		return nil
	})
	profiled("grants-relayed.pprof", func() { rateOf("relayed to the controller holding the gateway", devs[:workers], "far", farApps) })

	// Revocation propagation: each live grant revoked through a
	// controller in turn, timed until its gateway drops it.
	live, err := a.c.store.LiveGrants(ctx, time.Now(), "", "")
	if err != nil {
		t.Fatal(err)
	}
	if len(live) > 300 {
		live = live[:300]
	}
	var took []time.Duration
	for i, g := range live {
		gw := gws[g.GatewayID]
		start := time.Now()
		if err := envs[i%len(envs)].admin.RevokeGrant(ctx, g.ID); err != nil {
			t.Fatal(err)
		}
		for {
			if _, ok := gw.Table().Lookup(g.ID); !ok {
				break
			}
			if time.Since(start) > 5*time.Second {
				t.Fatalf("grant %s still on gateway %s after 5 s", g.ID, gw.ID())
			}
			time.Sleep(200 * time.Microsecond)
		}
		took = append(took, time.Since(start))
	}
	slices.Sort(took)
	t.Logf("revocation to gateway, 3 controllers, %d gateways, %d grants: p50 %v, p99 %v, max %v", len(gws), len(took), quantile(took, 0.5), quantile(took, 0.99), took[len(took)-1])
}

func quantile(s []time.Duration, q float64) time.Duration {
	if len(s) == 0 {
		return 0
	}
	return s[min(len(s)-1, int(q*float64(len(s))))].Round(10 * time.Microsecond)
}
