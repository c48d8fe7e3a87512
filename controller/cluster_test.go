package controller

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/controller/cluster"
	"github.com/keyhole-net/keyhole/gateway"
	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/apiclient"
	"github.com/keyhole-net/keyhole/internal/key"
	"github.com/keyhole-net/keyhole/internal/pgtest"
)

// newClusterEnvs starts n controllers on one PostgreSQL database, sharing
// one CA directory and gossip key, each joining those started before it,
// and waits until every one sees all n members.
func newClusterEnvs(t *testing.T, n int) []*testEnv {
	t.Helper()
	return newClusterEnvsWith(t, n, nil)
}

// newClusterEnvsWith is newClusterEnvs with each controller's cluster
// configuration changed by tune (nil: the short timings for tests).
func newClusterEnvsWith(t *testing.T, n int, tune func(*ClusterConfig)) []*testEnv {
	t.Helper()
	url := pgtest.Start(t).NewDatabase(t)
	caDir := t.TempDir()
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	var envs []*testEnv
	var joins []string
	for i := range n {
		cfg := Config{
			ID: fmt.Sprintf("ctl-%c", 'a'+i), StoreURL: url, CADir: caDir,
			Cluster: &ClusterConfig{
				BindAddr: "127.0.0.1", BindPort: cluster.AnyPort, Join: joins,
				SecretKey: key, Timing: cluster.LoopbackTiming(),
				ResyncInterval: 300 * time.Millisecond, AnnounceInterval: 500 * time.Millisecond,
				CatalogInterval: 500 * time.Millisecond,
			},
		}
		if tune != nil {
			tune(cfg.Cluster)
		}
		e := startTestEnv(t, cfg, 0)
		eventually(t, 5*time.Second, func() error {
			if e.c.ClusterAddr() == "" {
				return errors.New("gossip not bound yet")
			}
			return nil
		})
		joins = append(joins, e.c.ClusterAddr())
		envs = append(envs, e)
	}
	tok, err := os.ReadFile(filepath.Join(envs[0].cfg.DataDir, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range envs {
		if e.fp != envs[0].fp {
			t.Fatalf("controller %s has CA %s; want the shared %s", e.c.ID(), e.fp, envs[0].fp)
		}
		if e.admin, err = apiclient.NewAdmin(e.url, e.fp, strings.TrimSpace(string(tok))); err != nil {
			t.Fatal(err)
		}
	}
	waitMembers(t, n, envs...)
	return envs
}

// waitMembers waits until each of envs sees n live members.
func waitMembers(t *testing.T, n int, envs ...*testEnv) {
	t.Helper()
	eventually(t, 10*time.Second, func() error {
		for _, e := range envs {
			cl := e.c.cluster.Load()
			if cl == nil {
				return fmt.Errorf("%s: no cluster running", e.c.ID())
			}
			if got := len(cl.Members()); got != n {
				return fmt.Errorf("%s sees %d members, want %d", e.c.ID(), got, n)
			}
		}
		return nil
	})
}

// waitOwner waits until e sees gw's stream held by the controller owner
// (itself or another).
func waitOwner(t *testing.T, e *testEnv, gw *gateway.Gateway, owner *testEnv) {
	t.Helper()
	eventually(t, 10*time.Second, func() error {
		if e == owner {
			if !e.c.hub.connected(gw.ID()) {
				return fmt.Errorf("%s does not hold the gateway's stream", e.c.ID())
			}
			return nil
		}
		if got, ok := e.c.gatewayOwner(gw.ID()); !ok || got != owner.c.ID() {
			return fmt.Errorf("%s sees the gateway at %q (known %v), want %s", e.c.ID(), got, ok, owner.c.ID())
		}
		return nil
	})
}

// via returns d talking to the controller of e (same device key, same
// session): any controller of a cluster serves any client.
func (d *testDevice) via(e *testEnv) *testDevice {
	d.t.Helper()
	c, err := apiclient.New(apiclient.Config{URL: e.url, Credentials: d.creds, Bearer: d.session})
	if err != nil {
		d.t.Fatal(err)
	}
	d.t.Cleanup(c.CloseIdle)
	dd := *d
	dd.api = c
	return &dd
}

// waitDropped waits until gw no longer holds grant id and returns how long
// that took from start.
func waitDropped(t *testing.T, gw *gateway.Gateway, id api.GrantID, start time.Time, within time.Duration) time.Duration {
	t.Helper()
	eventually(t, within, func() error {
		if _, ok := gw.Table().Lookup(id); ok {
			return fmt.Errorf("gateway still holds grant %s", id)
		}
		return nil
	})
	return time.Since(start)
}

// TestCluster: three controllers on one database. A grant issued on A
// goes through the gateway held by B; a revocation on C closes it within
// a second; a revocation made while B's gossip is down reaches the gateway
// through B's re-sync with the store; with the gateway's controller gone,
// the gateway fails over and grants, renewals and admin calls go on
// through the others; the stopped controller rejoins.
func TestCluster(t *testing.T) {
	envs := newClusterEnvs(t, 3)
	a, b, c := envs[0], envs[1], envs[2]
	ctx := context.Background()

	var h api.Health
	pinned, err := apiclient.New(apiclient.Config{URL: b.url, Fingerprint: b.fp})
	if err != nil {
		t.Fatal(err)
	}
	if err := pinned.Do(ctx, "GET", "/v1/health", nil, &h); err != nil || h.ControllerID != "ctl-b" {
		t.Fatalf("health of B: %+v, %v; want controller_id ctl-b", h, err)
	}
	cs, err := pinned.ConnectionState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if uris := cs.PeerCertificates[0].URIs; len(uris) != 1 || uris[0].String() != "keyhole://controller/ctl-b" {
		t.Fatalf("B's server certificate URIs %v; want keyhole://controller/ctl-b", uris)
	}

	// Admin setup on A; the gateway enrols with and streams to B.
	adm := a.admin
	a.seedWiki(ctx)
	gw := b.addGatewayWith("site", []string{c.url, a.url})
	waitOwner(t, a, gw, b)
	waitOwner(t, c, gw, b)

	// A drain made on A reaches B, which holds the gateway's stream (its
	// picker must stop choosing it), and C's view; and so does the undrain.
	draining := func(e *testEnv) bool {
		for _, cand := range e.c.hub.candidates("site", e.c.now()) {
			if cand.gw.ID == gw.ID() {
				return cand.draining
			}
		}
		return false
	}
	for _, want := range []bool{true, false} {
		if _, err := adm.UpdateGateway(ctx, gw.ID(), api.GatewayUpdate{Draining: &want}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 3*time.Second, func() error {
			for _, e := range envs {
				if draining(e) != want {
					return fmt.Errorf("%s sees the gateway draining %v, want %v", e.c.ID(), !want, want)
				}
			}
			return nil
		})
	}

	// A grant issued on A, through the gateway held by B.
	d := a.login("alice")
	events := d.events()
	g := d.mustGrant("wiki.corp.internal")
	if g.Grant.GatewayID != gw.ID() {
		t.Fatalf("grant through %s, want %s", g.Grant.GatewayID, gw.ID())
	}
	if _, ok := gw.Table().Lookup(g.Grant.ID); !ok {
		t.Fatal("gateway does not hold the grant issued on another controller")
	}

	// Revoked on C: the gateway (on B) drops it within a second, and the
	// device's event stream (on A) tells of it.
	start := time.Now()
	c.must(nil, c.admin.RevokeGrant(ctx, g.Grant.ID))
	took := waitDropped(t, gw, g.Grant.ID, start, time.Second)
	t.Logf("revocation on C closed the grant on the gateway held by B in %v", took)
	for {
		ev := events.next(t, 3*time.Second)
		if ev.Type == api.DeviceEventGrantRevoked {
			if ev.GrantID != g.Grant.ID {
				t.Fatalf("revoked event for %s, want %s", ev.GrantID, g.Grant.ID)
			}
			break
		}
	}

	// An export (stock WireGuard client) made on A, through the gateway on B.
	wk, err := key.NewWGPrivate()
	if err != nil {
		t.Fatal(err)
	}
	var exp api.ExportResponse
	if err := d.api.Do(ctx, "POST", "/v1/exports", api.ExportRequest{App: "wiki", PublicKey: wk.Public(), TTL: api.Duration(time.Hour)}, &exp); err != nil {
		t.Fatalf("export through A: %v", err)
	}
	if _, ok := gw.Table().Lookup(exp.Grant.ID); !ok {
		t.Fatal("gateway does not hold the export made on another controller")
	}

	// A catalog change on C reaches A's catalog.
	c.must(c.admin.AddApp(ctx, api.AppCreate{Name: "docs", Domains: []string{"docs.corp.internal"}, Ports: []api.PortRange{{Proto: "tcp", First: 443, Last: 443}}, GatewayGroup: "site"}))
	eventually(t, 3*time.Second, func() error {
		if _, ok := a.c.catalog.Load().apps["docs"]; !ok {
			return errors.New("A's catalog lacks the app added on C")
		}
		return nil
	})
	d.mustGrant("docs.corp.internal")

	// Partition: B's gossip stops. A revocation on A then reaches the
	// gateway only through B's re-sync with the store.
	g2 := d.mustGrant("wiki.corp.internal")
	if err := b.c.cluster.Load().Shutdown(); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	a.must(nil, a.admin.RevokeGrant(ctx, g2.Grant.ID))
	took = waitDropped(t, gw, g2.Grant.ID, start, 3*time.Second)
	t.Logf("revocation during the partition reached the gateway through the store re-sync in %v", took)

	// B stops: the gateway fails over to C, and grants, renewals and admin
	// calls go on through A and C.
	b.stop()
	eventually(t, 10*time.Second, func() error {
		if !gw.Connected() || !c.c.hub.connected(gw.ID()) {
			return errors.New("gateway not yet on C")
		}
		return nil
	})
	waitOwner(t, a, gw, c)
	g3 := d.mustGrant("wiki.corp.internal")
	if _, ok := gw.Table().Lookup(g3.Grant.ID); !ok {
		t.Fatal("gateway (now on C) does not hold the grant issued on A")
	}
	var renewed api.GrantResponse
	if err := d.api.Do(ctx, "POST", "/v1/grants/"+string(g3.Grant.ID)+"/renew", nil, &renewed); err != nil {
		t.Fatalf("renew through A: %v", err)
	}
	// The gateway got the renewal from the store (microseconds in
	// PostgreSQL), through C.
	if gg, ok := gw.Table().Lookup(g3.Grant.ID); !ok || gg.NotAfter.Sub(renewed.Grant.NotAfter).Abs() >= time.Microsecond || !gg.NotAfter.After(g3.Grant.NotAfter) {
		t.Fatalf("gateway holds not_after %v (%v) after the renewal; want %v", gg.NotAfter, ok, renewed.Grant.NotAfter)
	}
	if gs, err := c.admin.Grants(ctx); err != nil || len(gs) == 0 {
		t.Fatalf("admin grant list on C: %d grants, %v", len(gs), err)
	}

	// B comes back (the partition heals): it rejoins, learns where the
	// gateway is, and serves the device too.
	b.start()
	waitMembers(t, 3, a, b, c)
	waitOwner(t, b, gw, c)
	g4 := d.via(b).mustGrant("wiki.corp.internal")
	if _, ok := gw.Table().Lookup(g4.Grant.ID); !ok {
		t.Fatal("gateway (on C) does not hold the grant issued on the rejoined B")
	}
	start = time.Now()
	b.must(nil, b.admin.RevokeGrant(ctx, g4.Grant.ID))
	t.Logf("revocation on the rejoined B reached the gateway on C in %v", waitDropped(t, gw, g4.Grant.ID, start, time.Second))
}

// TestParseClusterKey: raw and base64 keys of the three AES sizes, and
// nothing else.
func TestParseClusterKey(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     int
	}{
		{"raw 16", "0123456789abcdef", 16},
		{"raw 32 with newline", "0123456789abcdef0123456789abcde!\n", 32},
		{"base64 32", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n", 32},
		{"base64 24", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3", 24},
		{"short", "abc", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, err := ParseClusterKey([]byte(tc.in))
			if tc.want == 0 {
				if err == nil {
					t.Fatalf("got a %d-byte key; want an error", len(k))
				}
				return
			}
			if err != nil || len(k) != tc.want {
				t.Fatalf("got %d bytes, %v; want %d", len(k), err, tc.want)
			}
		})
	}
}

// TestClusterNeedsKey: a cluster without a gossip key does not start.
func TestClusterNeedsKey(t *testing.T) {
	_, err := New(context.Background(), Config{DataDir: t.TempDir(), Cluster: &ClusterConfig{}})
	if err == nil || !strings.Contains(err.Error(), "gossip key") {
		t.Fatalf("New without a key: %v", err)
	}
}

// seedWiki sets up, through e's admin API, what the cluster tests share:
// gateway group "site", alice in group eng, the wiki app on tcp/443 and a
// rule allowing eng every app.
func (e *testEnv) seedWiki(ctx context.Context) {
	adm := e.admin
	e.must(adm.AddGatewayGroup(ctx, "site"))
	e.must(adm.AddGroup(ctx, "eng"))
	e.must(adm.AddUser(ctx, api.UserCreate{Name: "alice", Password: testPassword, Groups: []string{"eng"}}))
	tcp443 := []api.PortRange{{Proto: "tcp", First: 443, Last: 443}}
	e.must(adm.AddApp(ctx, api.AppCreate{Name: "wiki", Domains: []string{"wiki.corp.internal"}, Ports: tcp443, GatewayGroup: "site"}))
	e.must(adm.AddPolicy(ctx, api.PolicyRuleCreate{Action: api.Allow, Groups: []string{"eng"}, Apps: []string{"*"}}))
}
