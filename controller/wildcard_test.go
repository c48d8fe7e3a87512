package controller

import (
	"context"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/apiclient"
)

// nameTarget is the one target of a grant for name at vip.
func nameTarget(vip netip.Addr, name string) []api.GrantTarget {
	return []api.GrantTarget{{Prefix: netip.PrefixFrom(vip, 32), Host: name}}
}

// vipOf checks that resp is a grant of app for exactly name and returns the
// name's virtual IP.
func vipOf(t *testing.T, resp api.GrantResponse, app, name string) netip.Addr {
	t.Helper()
	g := resp.Grant
	if g.App != app || g.Name != name || len(g.Targets) != 1 || g.Targets[0].Host != name || !g.Targets[0].Prefix.IsSingleIP() {
		t.Fatalf("grant = app %q name %q targets %+v; want app %s, one target for %s", g.App, g.Name, g.Targets, app, name)
	}
	vip := g.Targets[0].Prefix.Addr()
	if !DefaultPools.Apps.Contains(vip) {
		t.Fatalf("virtual IP %v of %s outside the apps pool %v", vip, name, DefaultPools.Apps)
	}
	if want := []netip.Prefix{g.Targets[0].Prefix}; !reflect.DeepEqual(resp.Peer.AllowedIPs, want) {
		t.Fatalf("AllowedIPs = %v; want %v", resp.Peer.AllowedIPs, want)
	}
	return vip
}

func TestWildcardGrants(t *testing.T) {
	e := newTestEnv(t, Config{}, 0)
	gw := e.setupCorp()
	alice := e.login("alice")
	ctx := context.Background()

	ga := alice.mustGrant("a.corp.internal")
	vipA := vipOf(t, ga, "corp", "a.corp.internal")
	gb := alice.mustGrant("B.Corp.Internal.") // case and the root dot do not matter
	vipB := vipOf(t, gb, "corp", "b.corp.internal")
	if vipA == vipB || ga.Grant.ID == gb.Grant.ID {
		t.Fatalf("a and b share grant %s/%s or address %v/%v", ga.Grant.ID, gb.Grant.ID, vipA, vipB)
	}
	deep := alice.mustGrant("x.a.corp.internal")
	vipDeep := vipOf(t, deep, "corp", "x.a.corp.internal")

	// The gateway holds each name's grant with the name to dial.
	eventually(t, 5*time.Second, func() error {
		g, ok := gw.Table().Lookup(ga.Grant.ID)
		if !ok || !reflect.DeepEqual(g.Targets, nameTarget(vipA, "a.corp.internal")) {
			return fmt.Errorf("gateway grant %s = %+v, %v", ga.Grant.ID, g.Targets, ok)
		}
		return nil
	})

	// Asking again, by name or by its virtual IP, extends the same grant.
	again := alice.mustGrant("a.corp.internal")
	byVIP := alice.mustGrant(vipA.String())
	for _, r := range []api.GrantResponse{again, byVIP} {
		if r.Grant.ID != ga.Grant.ID || vipOf(t, r, "corp", "a.corp.internal") != vipA {
			t.Fatalf("re-grant = %s %+v; want %s at %v", r.Grant.ID, r.Grant.Targets, ga.Grant.ID, vipA)
		}
	}
	// Renewal keeps the targets.
	var renewed api.GrantResponse
	if err := alice.api.Do(ctx, "POST", "/v1/grants/"+string(gb.Grant.ID)+"/renew", nil, &renewed); err != nil {
		t.Fatal(err)
	}
	if renewed.Grant.Name != "b.corp.internal" || !reflect.DeepEqual(renewed.Grant.Targets, nameTarget(vipB, "b.corp.internal")) {
		t.Fatalf("renewed grant = %q %+v", renewed.Grant.Name, renewed.Grant.Targets)
	}

	// The exact domain of another app wins over the wildcard; the wildcard
	// does not cover its own suffix.
	wiki := alice.mustGrant("wiki.corp.internal")
	if wiki.Grant.App != "wiki" || wiki.Grant.Name != "" {
		t.Fatalf("wiki.corp.internal granted as app %q name %q; want app wiki", wiki.Grant.App, wiki.Grant.Name)
	}
	_, err := alice.grant("corp.internal")
	wantCode(t, "corp.internal", err, api.CodeNotFound)
	// The app by name has nothing to grant but names.
	_, err = alice.grant("corp")
	wantCode(t, "app name of a wildcard-only app", err, api.CodeBadRequest)

	for _, bad := range []string{
		"a..corp.internal", "-a.corp.internal", "a-.corp.internal", "a_b.corp.internal", "a b.corp.internal",
		strings.Repeat("x", 64) + ".corp.internal", strings.Repeat("abcdefghi.", 25) + "corp.internal",
		"*.corp.internal", "ä.corp.internal",
	} {
		_, err := alice.grant(bad)
		wantCode(t, "grant "+bad, err, api.CodeBadRequest)
	}

	// A user the policy does not allow adds no name.
	bob := e.login("bob")
	_, err = bob.grant("z.corp.internal")
	wantCode(t, "bob", err, api.CodeDenied)
	names, err := e.c.store.WildcardNames(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if n.Name == "z.corp.internal" {
			t.Fatal("a denied request added a name")
		}
	}

	// Names and their addresses survive a restart.
	e.restart()
	e.waitGateway(gw)
	if got := vipOf(t, alice.mustGrant("b.corp.internal"), "corp", "b.corp.internal"); got != vipB {
		t.Fatalf("after restart b.corp.internal at %v; want %v", got, vipB)
	}
	if r := alice.mustGrant(vipDeep.String()); r.Grant.Name != "x.a.corp.internal" {
		t.Fatalf("after restart %v resolves to %q", vipDeep, r.Grant.Name)
	}
	vipC := vipOf(t, alice.mustGrant("c.corp.internal"), "corp", "c.corp.internal")
	if vipC == vipA || vipC == vipB || vipC == vipDeep {
		t.Fatalf("c.corp.internal re-uses an address: %v", vipC)
	}

	// A new app with a longer wildcard, or an exact domain, takes names
	// from corp: their grants are revoked, and the names keep their
	// addresses under the new app.
	tcp443 := []api.PortRange{{Proto: "tcp", First: 443, Last: 443}}
	e.must(e.admin.AddApp(ctx, api.AppCreate{Name: "team-a", Domains: []string{"*.a.corp.internal"}, Ports: tcp443, GatewayGroup: "site"}))
	e.must(e.admin.AddApp(ctx, api.AppCreate{Name: "b", Domains: []string{"b.corp.internal"}, Ports: tcp443, GatewayGroup: "site"}))
	live, err := e.admin.Grants(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range live {
		if g.App == "corp" && (g.Name == "x.a.corp.internal" || g.Name == "b.corp.internal") {
			t.Fatalf("grant %s for %s still live after another app claimed the name", g.ID, g.Name)
		}
	}
	if r := alice.mustGrant("x.a.corp.internal"); vipOf(t, r, "team-a", "x.a.corp.internal") != vipDeep {
		t.Fatalf("x.a.corp.internal moved address under team-a: %+v", r.Grant.Targets)
	}
	if r := alice.mustGrant("b.corp.internal"); r.Grant.App != "b" || r.Grant.Name != "" ||
		!reflect.DeepEqual(r.Grant.Targets, nameTarget(vipB, "b.corp.internal")) {
		t.Fatalf("b.corp.internal as an exact domain = %+v", r.Grant)
	}
	// a.corp.internal itself stays corp's: *.a.corp.internal does not cover it.
	if r := alice.mustGrant("a.corp.internal"); r.Grant.App != "corp" || r.Grant.ID != ga.Grant.ID {
		t.Fatalf("a.corp.internal = app %s grant %s; want corp %s", r.Grant.App, r.Grant.ID, ga.Grant.ID)
	}

	// The audit trail names who added each name.
	evs, err := e.admin.Audit(ctx, apiclient.AuditFilter{Type: "app.name.add"})
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 5 {
		t.Fatalf("app.name.add events = %d; want 5 (a, b, x.a, c under corp; x.a under team-a): %+v", len(evs), evs)
	}
	for _, ev := range evs {
		if ev.User != "alice" || ev.DeviceID != alice.id || !strings.Contains(ev.Reason, "corp.internal") {
			t.Fatalf("app.name.add event %+v does not name alice's device and the name", ev)
		}
	}
}

func TestWildcardApps(t *testing.T) {
	e := newTestEnv(t, Config{}, 0)
	ctx := context.Background()
	e.must(e.admin.AddGatewayGroup(ctx, "site"))
	tcp443 := []api.PortRange{{Proto: "tcp", First: 443, Last: 443}}
	app, err := e.admin.AddApp(ctx, api.AppCreate{Name: "corp", Domains: []string{"*.corp.internal", "intranet.corp.internal"}, Ports: tcp443, GatewayGroup: "site"})
	if err != nil {
		t.Fatal(err)
	}
	if len(app.VirtualIPs) != 1 || !app.VirtualIPs["intranet.corp.internal"].IsValid() {
		t.Fatalf("VirtualIPs = %v; want the exact domain's only", app.VirtualIPs)
	}
	tests := []struct {
		name    string
		domains []string
		code    string
	}{
		{"same wildcard", []string{"*.corp.internal"}, api.CodeConflict},
		{"one label", []string{"*.internal"}, api.CodeBadRequest},
		{"star inside", []string{"a.*.corp.internal"}, api.CodeBadRequest},
		{"two stars", []string{"*.*.corp.internal"}, api.CodeBadRequest},
		{"bare star", []string{"*"}, api.CodeBadRequest},
		{"upper case", []string{"*.Corp.internal"}, api.CodeBadRequest},
		{"bad label", []string{"*.corp_x.internal"}, api.CodeBadRequest},
		{"twice", []string{"*.x.internal", "*.x.internal"}, api.CodeBadRequest},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.admin.AddApp(ctx, api.AppCreate{Name: fmt.Sprintf("app%d", i), Domains: tt.domains, Ports: tcp443, GatewayGroup: "site"})
			wantCode(t, "AddApp", err, tt.code)
		})
	}
	// A longer wildcard, and exact names under one, are apps of their own.
	e.must(e.admin.AddApp(ctx, api.AppCreate{Name: "dev", Domains: []string{"*.dev.corp.internal", "wiki.corp.internal"}, Ports: tcp443, GatewayGroup: "site"}))
}

func TestWildcardNameCap(t *testing.T) {
	e := newTestEnv(t, Config{MaxWildcardNames: 3}, 0)
	e.setupCorp()
	alice := e.login("alice")
	for _, n := range []string{"a", "b", "c"} {
		alice.mustGrant(n + ".corp.internal")
	}
	_, err := alice.grant("d.corp.internal")
	wantCode(t, "fourth name", err, api.CodeLimitReached)
	// Known names still work.
	alice.mustGrant("a.corp.internal")
}

func TestWildcardNameRateLimit(t *testing.T) {
	// A stopped clock: no token comes back while the test runs, however
	// slowly (-race).
	frozen := time.Now()
	e := newTestEnv(t, Config{Now: func() time.Time { return frozen }}, 0)
	e.setupCorp()
	alice := e.login("alice")
	for i := range newNameBurst {
		alice.mustGrant(fmt.Sprintf("host%d.corp.internal", i))
	}
	_, err := alice.grant("one-more.corp.internal")
	wantCode(t, "past the burst", err, api.CodeRateLimited)
	// Names that exist cost nothing, for this device and others.
	alice.mustGrant("host1.corp.internal")
	alice2 := e.login("alice")
	alice2.mustGrant("host2.corp.internal")
	alice2.mustGrant("one-more.corp.internal")
}
