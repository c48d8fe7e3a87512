package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/controller/store"
	"github.com/keyhole-net/keyhole/gateway"
	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/apiclient"
	"github.com/keyhole-net/keyhole/internal/trust"
)

func TestChooseGateway(t *testing.T) {
	gw := func(id string, load int, draining bool) candidate {
		return candidate{gw: store.Gateway{ID: api.GatewayID(id)}, load: load, draining: draining, local: load != loadUnknown}
	}
	first := func(int) int { return 0 }
	last := func(n int) int { return n - 1 }
	tests := []struct {
		name    string
		cands   []candidate
		exclude api.GatewayID
		intn    func(int) int
		want    api.GatewayID // "" for none
	}{
		{"none", nil, "", first, ""},
		{"one", []candidate{gw("a", 5, false)}, "", first, "a"},
		{"fewest grants", []candidate{gw("a", 5, false), gw("b", 2, false), gw("c", 3, false)}, "", first, "b"},
		{"draining never", []candidate{gw("a", 9, false), gw("b", 0, true)}, "", first, "a"},
		{"only draining", []candidate{gw("a", 0, true)}, "", first, ""},
		{"excluded never", []candidate{gw("a", 0, false), gw("b", 4, false)}, "a", first, "b"},
		{"only excluded", []candidate{gw("a", 0, false)}, "a", first, ""},
		{"tie first", []candidate{gw("a", 1, false), gw("b", 1, false), gw("c", 2, false)}, "", first, "a"},
		{"tie last", []candidate{gw("a", 1, false), gw("b", 1, false), gw("c", 2, false)}, "", last, "b"},
		{"local before remote", []candidate{gw("a", 3, false), gw("r", loadUnknown, false), gw("b", 1, false)}, "", last, "b"},
		{"local before remote (other draw)", []candidate{gw("r", loadUnknown, false), gw("a", 3, false), gw("b", 1, false)}, "", first, "b"},
		{"remote when no local is usable", []candidate{gw("a", 0, true), gw("r", loadUnknown, false)}, "", first, "r"},
		{"remote when the local is excluded", []candidate{gw("a", 0, false), gw("r", loadUnknown, false)}, "a", first, "r"},
		{"only unknown", []candidate{gw("r", loadUnknown, false)}, "", first, "r"},
		{"remotes tie", []candidate{gw("r", loadUnknown, false), gw("s", loadUnknown, false)}, "", last, "s"},
		{"unknown draining", []candidate{gw("r", loadUnknown, true), gw("a", 7, false)}, "", first, "a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := chooseGateway(tt.cands, tt.exclude, tt.intn)
			if tt.want == "" {
				if ok {
					t.Fatalf("chose %s; want none", got.gw.ID)
				}
				return
			}
			if !ok || got.gw.ID != tt.want {
				t.Fatalf("chose %q (ok %v); want %s", got.gw.ID, ok, tt.want)
			}
		})
	}
}

func TestGrantLoadCounts(t *testing.T) {
	l := newGrantLoad()
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	gg := func(id string, end time.Duration) api.GatewayGrant {
		return api.GatewayGrant{ID: api.GrantID(id), NotAfter: now.Add(end)}
	}
	l.note("gw1", api.StreamEvent{Type: api.EventSync, Grants: []api.GatewayGrant{gg("a", time.Minute), gg("b", time.Minute)}})
	l.note("gw1", api.StreamEvent{Type: api.EventGrant, Grants: []api.GatewayGrant{gg("c", time.Second)}})
	l.note("gw1", api.StreamEvent{Type: api.EventGrant, Grants: []api.GatewayGrant{gg("a", time.Hour)}}) // a renewal
	l.note("gw1", api.StreamEvent{Type: api.EventRevoke, GrantIDs: []api.GrantID{"b"}})
	l.note("gw2", api.StreamEvent{Type: api.EventPing})
	if n := l.count("gw1", now); n != 2 {
		t.Fatalf("gw1 count %d; want 2 (a, c)", n)
	}
	if n := l.count("gw1", now.Add(2*time.Second)); n != 1 {
		t.Fatalf("gw1 count after c expired %d; want 1", n)
	}
	l.note("gw1", api.StreamEvent{Type: api.EventSync})
	if n := l.count("gw1", now); n != 0 {
		t.Fatalf("gw1 count after an empty sync %d; want 0", n)
	}
	if n := l.count("gw2", now); n != 0 {
		t.Fatalf("gw2 count %d; want 0", n)
	}
}

// stoppableGateway enrols and runs a gateway of group, waits for its
// stream, and returns it with a func that stops it (as a crash would end
// its stream) and waits; the test's end stops it if the test did not.
func (e *testEnv) stoppableGateway(group string) (*gateway.Gateway, func()) {
	t := e.t
	t.Helper()
	ctx := context.Background()
	tok, err := e.admin.GatewayToken(ctx, group, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	gw, err := gateway.New(gateway.Config{
		ControllerURL: e.url, CAFingerprint: e.fp, Token: tok.Token, DataDir: t.TempDir(), Name: "gw",
		MaxBackoff: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	gctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- gw.Run(gctx) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("gateway Run: %v", err)
		}
	}
	t.Cleanup(stop)
	e.waitGateway(gw)
	return gw, stop
}

// gatewayCounts counts live grants per gateway in the store.
func (e *testEnv) gatewayCounts() map[api.GatewayID]int {
	e.t.Helper()
	live, err := e.c.store.LiveGrants(context.Background(), e.c.now(), "", "")
	if err != nil {
		e.t.Fatal(err)
	}
	n := make(map[api.GatewayID]int)
	for _, g := range live {
		n[g.GatewayID]++
	}
	return n
}

// TestGrantsSpreadByLoad issues 20 grants (names under a wildcard app, so
// each is a grant of its own) in a group of two gateways: the least
// loaded gateway takes each, so they split evenly.
func TestGrantsSpreadByLoad(t *testing.T) {
	e := newTestEnv(t, Config{}, 0)
	gw1 := e.setupCorp()
	gw2 := e.addGateway("site")
	d := e.login("alice")
	for i := range 20 {
		d.mustGrant(fmt.Sprintf("h%d.corp.internal", i))
	}
	n := e.gatewayCounts()
	t.Logf("grants per gateway: %s %d, %s %d", gw1.ID(), n[gw1.ID()], gw2.ID(), n[gw2.ID()])
	for _, id := range []api.GatewayID{gw1.ID(), gw2.ID()} {
		if n[id] < 8 || n[id] > 12 {
			t.Fatalf("gateway %s holds %d of 20 grants; want about 10 (%v)", id, n[id], n)
		}
	}
	if got := gw1.Table().Len() + gw2.Table().Len(); got != 20 {
		t.Fatalf("gateways hold %d grants; want 20", got)
	}
}

// patchRaw sends PATCH /v1/gateways/{id} with body as the admin.
func (e *testEnv) patchRaw(id api.GatewayID, body string) (int, api.Error) {
	e.t.Helper()
	tok, err := os.ReadFile(filepath.Join(e.cfg.DataDir, "admin.token"))
	if err != nil {
		e.t.Fatal(err)
	}
	tlsCfg, err := trust.PinnedConfig(e.fp, "127.0.0.1", nil)
	if err != nil {
		e.t.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg}, Timeout: 10 * time.Second}
	defer hc.CloseIdleConnections()
	req, err := http.NewRequest("PATCH", e.url+"/v1/gateways/"+string(id), strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	resp, err := hc.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var ae api.Error
	_ = json.NewDecoder(resp.Body).Decode(&ae)
	return resp.StatusCode, ae
}

func TestDrainGateway(t *testing.T) {
	e := newTestEnv(t, Config{}, 0)
	gw1 := e.setupCorp()
	gw2 := e.addGateway("site")
	ctx := context.Background()
	a := e.admin
	d := e.login("alice")

	// A grant through gw1 before the drain (gw2 drained meanwhile).
	drain, undrain := true, false
	e.must(a.UpdateGateway(ctx, gw2.ID(), api.GatewayUpdate{Draining: &drain}))
	old := d.mustGrant("wiki")
	if old.Peer.GatewayID != gw1.ID() {
		t.Fatalf("grant through %s with gw2 draining; want %s", old.Peer.GatewayID, gw1.ID())
	}
	e.must(a.UpdateGateway(ctx, gw2.ID(), api.GatewayUpdate{Draining: &undrain}))

	g, err := a.UpdateGateway(ctx, gw1.ID(), api.GatewayUpdate{Draining: &drain})
	if err != nil {
		t.Fatal(err)
	}
	if !g.Draining || !g.Connected {
		t.Fatalf("drained gateway %+v; want draining and connected", g)
	}
	// No new grants through a draining gateway.
	for i := range 6 {
		if r := d.mustGrant(fmt.Sprintf("n%d.corp.internal", i)); r.Peer.GatewayID != gw2.ID() {
			t.Fatalf("new grant through draining gateway %s", r.Peer.GatewayID)
		}
	}
	// Its grant still works until it renews; the renewal moves it.
	if gw1.Table().Len() != 1 {
		t.Fatalf("draining gateway holds %d grants; want its 1", gw1.Table().Len())
	}
	var moved api.GrantResponse
	if err := d.api.Do(ctx, "POST", "/v1/grants/"+string(old.Grant.ID)+"/renew", nil, &moved); err != nil {
		t.Fatal(err)
	}
	if moved.Grant.ID == old.Grant.ID || moved.Peer.GatewayID != gw2.ID() || moved.Grant.GatewayID != gw2.ID() {
		t.Fatalf("renewal on a draining gateway answered grant %s through %s; want a new grant through %s", moved.Grant.ID, moved.Peer.GatewayID, gw2.ID())
	}
	if info, _ := e.c.hub.info(gw2.ID()); moved.Peer.PublicKey != info.WGPublicKey {
		t.Fatal("moved grant's peer is not gw2's key")
	}
	err = d.api.Do(ctx, "POST", "/v1/grants/"+string(old.Grant.ID)+"/renew", nil, nil)
	wantCode(t, "renew the moved grant", err, api.CodeExpired)
	eventually(t, 2*time.Second, func() error {
		if n := gw1.Table().Len(); n != 0 {
			return fmt.Errorf("draining gateway still holds %d grants", n)
		}
		return nil
	})

	// Listed as draining; it stays so across a controller restart.
	e.restart()
	e.waitGateway(gw1)
	e.waitGateway(gw2)
	gs, err := a.Gateways(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range gs {
		if g.Draining != (g.ID == gw1.ID()) {
			t.Fatalf("after restart gateway %s draining %v", g.ID, g.Draining)
		}
	}
	if r := d.mustGrant("after-restart.corp.internal"); r.Peer.GatewayID != gw2.ID() {
		t.Fatalf("grant after restart through draining gateway %s", r.Peer.GatewayID)
	}
	e.must(a.UpdateGateway(ctx, gw1.ID(), api.GatewayUpdate{Draining: &undrain}))
	if r := d.mustGrant("undrained.corp.internal"); r.Peer.GatewayID != gw1.ID() {
		// gw1 holds none, gw2 several: the least loaded takes it.
		t.Fatalf("grant after undrain through %s; want the idle %s", r.Peer.GatewayID, gw1.ID())
	}
	audit, err := a.Audit(ctx, apiclient.AuditFilter{Type: "admin.gateway."})
	if err != nil {
		t.Fatal(err)
	}
	if len(audit) < 4 {
		t.Fatalf("audit has %d admin.gateway events; want drain and undrain twice", len(audit))
	}
}

func TestDrainBadInput(t *testing.T) {
	e := newTestEnv(t, Config{}, 0)
	gw := e.setupCorp()
	tests := []struct {
		name   string
		id     api.GatewayID
		body   string
		status int
		code   string
	}{
		{"unknown gateway", "gw_nope", `{"draining": true}`, http.StatusNotFound, api.CodeNotFound},
		{"malformed body", gw.ID(), `{"draining": tru`, http.StatusBadRequest, api.CodeBadRequest},
		{"wrong type", gw.ID(), `{"draining": "yes"}`, http.StatusBadRequest, api.CodeBadRequest},
		{"unknown field", gw.ID(), `{"drain": true}`, http.StatusBadRequest, api.CodeBadRequest},
		{"nothing to change", gw.ID(), `{}`, http.StatusBadRequest, api.CodeBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, ae := e.patchRaw(tt.id, tt.body)
			if status != tt.status || ae.Code != tt.code || ae.Message == "" {
				t.Fatalf("got %d %+v; want %d %s with a message", status, ae, tt.status, tt.code)
			}
		})
	}
	gs, err := e.admin.Gateways(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if gs[0].Draining {
		t.Fatal("bad input drained the gateway")
	}
}

// TestFailover stops the gateway of a live grant: after the grace the
// controller re-issues the grant through the other gateway of the group,
// tells the device (grant.moved, then grant.revoked for the old one), and
// answers renewals of the old grant with a clear error.
func TestFailover(t *testing.T) {
	e := newTestEnv(t, Config{GatewayGrace: 300 * time.Millisecond}, 0)
	e.setupCorp()
	gwA, stopA := e.stoppableGateway("site")
	gwB, stopB := e.stoppableGateway("site")
	ctx := context.Background()
	d := e.login("alice")
	// The setupCorp gateway must not take the moved grant: drain it.
	drain := true
	for _, g := range e.mustGateways() {
		if g.ID != gwA.ID() && g.ID != gwB.ID() {
			e.must(e.admin.UpdateGateway(ctx, g.ID, api.GatewayUpdate{Draining: &drain}))
		}
	}
	e.must(e.admin.UpdateGateway(ctx, gwB.ID(), api.GatewayUpdate{Draining: &drain}))
	old := d.mustGrant("wiki")
	if old.Peer.GatewayID != gwA.ID() {
		t.Fatalf("grant through %s; want %s", old.Peer.GatewayID, gwA.ID())
	}
	undrain := false
	e.must(e.admin.UpdateGateway(ctx, gwB.ID(), api.GatewayUpdate{Draining: &undrain}))
	evs := d.events()
	if ev := evs.next(t, 2*time.Second); ev.Type != api.DeviceEventHello {
		t.Fatalf("first event %+v", ev)
	}

	start := time.Now()
	stopA()
	ev := evs.next(t, 5*time.Second)
	took := time.Since(start)
	if ev.Type != api.DeviceEventGrantMoved || ev.GrantID != old.Grant.ID || ev.NewGrantID == "" {
		t.Fatalf("event %+v; want grant.moved of %s", ev, old.Grant.ID)
	}
	t.Logf("grant.moved %v after the gateway stopped (grace 300ms)", took.Round(time.Millisecond))
	if ev := evs.next(t, 2*time.Second); ev.Type != api.DeviceEventGrantRevoked || ev.GrantID != old.Grant.ID {
		t.Fatalf("event %+v; want grant.revoked of %s", ev, old.Grant.ID)
	}
	if gwB.Table().Len() != 1 {
		t.Fatalf("gateway B holds %d grants; want the moved one", gwB.Table().Len())
	}
	var moved api.GrantResponse
	if err := d.api.Do(ctx, "POST", "/v1/grants/"+string(ev.NewGrantID)+"/renew", nil, &moved); err != nil {
		t.Fatal(err)
	}
	if moved.Grant.ID != ev.NewGrantID || moved.Peer.GatewayID != gwB.ID() || moved.Grant.App != "wiki" {
		t.Fatalf("moved grant %+v through %s", moved.Grant, moved.Peer.GatewayID)
	}
	err := d.api.Do(ctx, "POST", "/v1/grants/"+string(old.Grant.ID)+"/renew", nil, nil)
	wantCode(t, "renew the old grant", err, api.CodeExpired)
	// A new request for the app gets the moved grant, not another one.
	if again := d.mustGrant("wiki"); again.Grant.ID != moved.Grant.ID {
		t.Fatalf("new request got grant %s; want the moved %s", again.Grant.ID, moved.Grant.ID)
	}

	// With no other gateway left, a renewal says why it cannot be served.
	stopB()
	eventually(t, 5*time.Second, func() error {
		if e.c.hub.connected(gwB.ID()) {
			return fmt.Errorf("stream of stopped gateway still open")
		}
		return nil
	})
	err = d.api.Do(ctx, "POST", "/v1/grants/"+string(moved.Grant.ID)+"/renew", nil, nil)
	wantCode(t, "renew with every gateway gone", err, api.CodeUnavailable)
}

// TestGatewayBackWithinGrace: a gateway whose stream ends and that
// reconnects within the grace keeps its grants; nothing moves.
func TestGatewayBackWithinGrace(t *testing.T) {
	const grace = time.Second
	e := newTestEnv(t, Config{GatewayGrace: grace}, 0)
	gw1 := e.setupCorp()
	e.addGateway("site")
	d := e.login("alice")
	ctx := context.Background()
	drain, undrain := true, false
	var other api.GatewayID
	for _, g := range e.mustGateways() {
		if g.ID != gw1.ID() {
			other = g.ID
		}
	}
	e.must(e.admin.UpdateGateway(ctx, other, api.GatewayUpdate{Draining: &drain}))
	g := d.mustGrant("wiki")
	e.must(e.admin.UpdateGateway(ctx, other, api.GatewayUpdate{Draining: &undrain}))
	// The controller drops gw1's stream; gw1 reconnects after its 200 ms
	// backoff, well within the grace.
	cut := time.Now()
	e.c.hub.remove(e.c.hub.get(gw1.ID()))
	eventually(t, 5*time.Second, func() error {
		if !e.c.hub.connected(gw1.ID()) {
			return fmt.Errorf("gateway not back")
		}
		return nil
	})
	t.Logf("gateway back %v after its stream was cut", time.Since(cut).Round(time.Millisecond))
	// Nothing to poll for: wait out the grace, then the grant must be
	// where it was.
	<-time.After(time.Until(cut.Add(grace + 500*time.Millisecond)))
	live, err := e.c.store.LiveGrants(ctx, e.c.now(), "", d.id)
	if err != nil {
		t.Fatal(err)
	}
	if len(live) != 1 || live[0].ID != g.Grant.ID || live[0].GatewayID != gw1.ID() {
		t.Fatalf("live grants %+v; want only %s through %s", live, g.Grant.ID, gw1.ID())
	}
}

func (e *testEnv) mustGateways() []api.Gateway {
	e.t.Helper()
	gs, err := e.admin.Gateways(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	return gs
}
