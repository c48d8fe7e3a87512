// Package storetest is the conformance suite for store.Store: every
// implementation (sqlite and postgres) runs it from its own tests and
// must pass it unchanged. It pins down what store.go leaves to prose —
// sentinel errors, ordering, renumbering, address allocation, atomicity — so
// callers can rely on one behaviour whichever database is behind the store.
//
// The suite uses only times with microsecond precision (what PostgreSQL
// keeps) and expects them back in UTC. Stores must be opened with Pools().
package storetest

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/controller/store"
	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/key"
)

// Pools returns the address pools every store under test must be opened
// with; the suite checks allocated addresses against them.
func Pools() store.Pools {
	return store.Pools{
		Devices:  netip.MustParsePrefix("100.64.0.0/11"),
		Apps:     netip.MustParsePrefix("100.96.0.0/12"),
		Gateways: netip.MustParsePrefix("100.112.0.0/12"),
	}
}

// t0 is the suite's reference time: microsecond precision, UTC.
var t0 = time.Date(2026, 11, 23, 10, 0, 0, 123456000, time.UTC)

// Run runs the conformance suite. open must return a new, empty store opened
// with Pools() each time it is called; the suite closes it.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s store.Store)
	}{
		{"Groups", testGroups},
		{"Users", testUsers},
		{"UpdateUser", testUpdateUser},
		{"DeleteUser", testDeleteUser},
		{"Apps", testApps},
		{"AppVirtualIPs", testAppVirtualIPs},
		{"WildcardApps", testWildcardApps},
		{"WildcardNames", testWildcardNames},
		{"GatewayGroups", testGatewayGroups},
		{"EnrolTokens", testEnrolTokens},
		{"Gateways", testGateways},
		{"GatewayDraining", testGatewayDraining},
		{"AdminTokens", testAdminTokens},
		{"PolicyInsert", testPolicyInsert},
		{"PolicyDelete", testPolicyDelete},
		{"PolicyConditions", testPolicyConditions},
		{"Devices", testDevices},
		{"DeviceApproval", testDeviceApproval},
		{"DevicePosture", testDevicePosture},
		{"DeleteDevice", testDeleteDevice},
		{"PostureProfiles", testPostureProfiles},
		{"Sessions", testSessions},
		{"SessionMFAAt", testSessionMFAAt},
		{"MFA", testMFA},
		{"RecoveryCodes", testRecoveryCodes},
		{"LoginFailures", testLoginFailures},
		{"CreateGrant", testCreateGrant},
		{"LiveGrants", testLiveGrants},
		{"RenewGrant", testRenewGrant},
		{"GrantFacts", testGrantFacts},
		{"RevokeGrants", testRevokeGrants},
		{"RekeyGrants", testRekeyGrants},
		{"CreateExport", testCreateExport},
		{"Audit", testAudit},
		{"Flows", testFlows},
		{"TimesUTC", testTimesUTC},
		{"AddressesUnique", testAddressesUnique},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := open(t)
			t.Cleanup(func() {
				if err := s.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
			tt.fn(t, s)
		})
	}
}

// RunReopen checks that data and allocations survive closing and reopening.
// open must return a store on the same database every time it is called
// (the first call may create it); the suite closes each store before it
// opens the next.
func RunReopen(t *testing.T, open func(t *testing.T) store.Store) {
	ctx := context.Background()
	s := open(t)
	seed(t, s)
	dev := mustDevice(t, s, "alice", "laptop")
	gw := mustGateway(t, s, "site-a", "gw1")
	app := mustApp(t, s, store.App{Name: "wiki", Domains: []string{"wiki.corp.internal"}, GatewayGroup: "site-a", Ports: ports(t, "tcp/443")})
	if _, err := s.InsertPolicyRule(ctx, api.PolicyRule{ID: "rule_1", Action: api.Allow, Groups: []string{"eng"}, Apps: []string{"wiki"}, CreatedAt: t0}); err != nil {
		t.Fatal(err)
	}
	corp := mustApp(t, s, store.App{Name: "corp", Domains: []string{"*.corp.internal"}, GatewayGroup: "site-a", Ports: ports(t, "tcp/443")})
	name, _, err := s.AddWildcardName(ctx, store.WildcardName{AppID: corp.ID, Name: "a.corp.internal", CreatedAt: t0}, 10)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	s = open(t)
	if got, err := s.Device(ctx, dev.ID); err != nil || !reflect.DeepEqual(got, dev) {
		t.Fatalf("after reopen Device = %+v, %v; want %+v", got, err, dev)
	}
	if got, err := s.Gateway(ctx, gw.ID); err != nil || !reflect.DeepEqual(got, gw) {
		t.Fatalf("after reopen Gateway = %+v, %v; want %+v", got, err, gw)
	}
	if got, err := s.App(ctx, "wiki"); err != nil || !reflect.DeepEqual(got, app) {
		t.Fatalf("after reopen App = %+v, %v; want %+v", got, err, app)
	}
	if rules, err := s.PolicyRules(ctx); err != nil || len(rules) != 1 || rules[0].ID != "rule_1" {
		t.Fatalf("after reopen PolicyRules = %+v, %v", rules, err)
	}
	if names, err := s.WildcardNames(ctx); err != nil || !reflect.DeepEqual(names, []store.WildcardName{name}) {
		t.Fatalf("after reopen WildcardNames = %+v, %v; want [%+v]", names, err, name)
	}
	// New allocations continue past the old ones; a re-created app keeps
	// its domain's address.
	dev2 := mustDevice(t, s, "alice", "phone")
	gw2 := mustGateway(t, s, "site-a", "gw2")
	if dev2.OverlayIP == dev.OverlayIP || gw2.OverlayIP == gw.OverlayIP {
		t.Fatalf("after reopen addresses re-used: device %v/%v gateway %v/%v", dev.OverlayIP, dev2.OverlayIP, gw.OverlayIP, gw2.OverlayIP)
	}
	if err := s.DeleteApp(ctx, "wiki"); err != nil {
		t.Fatal(err)
	}
	app2 := mustApp(t, s, store.App{Name: "wiki", Domains: []string{"wiki.corp.internal"}, GatewayGroup: "site-a", Ports: ports(t, "tcp/443")})
	if !reflect.DeepEqual(app2.VirtualIPs, app.VirtualIPs) {
		t.Fatalf("re-created app VirtualIPs = %v; want %v", app2.VirtualIPs, app.VirtualIPs)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

// --- fixtures ------------------------------------------------------------

// seed creates groups eng and ops, gateway group site-a and users alice (eng)
// and bob (eng, ops).
func seed(t *testing.T, s store.Store) {
	t.Helper()
	ctx := context.Background()
	for _, g := range []string{"eng", "ops"} {
		mustOK(t, s.CreateGroup(ctx, api.Group{Name: g, CreatedAt: t0}))
	}
	mustOK(t, s.CreateGatewayGroup(ctx, api.GatewayGroup{Name: "site-a", CreatedAt: t0}))
	mustOK(t, s.CreateUser(ctx, user("alice", "eng")))
	mustOK(t, s.CreateUser(ctx, user("bob", "ops", "eng")))
}

func user(name string, groups ...string) store.User {
	return store.User{
		User:         api.User{ID: api.UserID("usr_" + name), Name: name, Groups: groups, CreatedAt: t0},
		PasswordHash: "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA",
	}
}

func mustDevice(t *testing.T, s store.Store, user, name string) store.Device {
	t.Helper()
	d, err := s.CreateDevice(context.Background(), store.Device{
		ID: api.DeviceID("dev_" + user + "_" + name), User: user, Name: name,
		WGPublicKey: wgKey(t), CreatedAt: t0,
	})
	if err != nil {
		t.Fatalf("CreateDevice: %v", err)
	}
	return d
}

func mustGateway(t *testing.T, s store.Store, group, name string) store.Gateway {
	t.Helper()
	g, err := s.CreateGateway(context.Background(), store.Gateway{
		ID: api.GatewayID("gw_" + name), Name: name, Group: group, WGPublicKey: wgKey(t), CreatedAt: t0,
	})
	if err != nil {
		t.Fatalf("CreateGateway: %v", err)
	}
	return g
}

func mustApp(t *testing.T, s store.Store, a store.App) store.App {
	t.Helper()
	if a.ID == "" {
		a.ID = api.AppID("app_" + a.Name)
	}
	if a.CreatedAt.IsZero() {
		a.CreatedAt = t0
	}
	got, err := s.CreateApp(context.Background(), a)
	if err != nil {
		t.Fatalf("CreateApp(%s): %v", a.Name, err)
	}
	return got
}

func wgKey(t *testing.T) key.WGPublic {
	t.Helper()
	k, err := key.NewWGPrivate()
	if err != nil {
		t.Fatal(err)
	}
	return k.Public()
}

func ports(t *testing.T, s string) []api.PortRange {
	t.Helper()
	p, err := api.ParsePortRanges(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func mustOK(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// wantErr fails unless errors.Is(err, target).
func wantErr(t *testing.T, what string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s: err = %v; want %v", what, err, target)
	}
}

func wantEqual[T any](t *testing.T, what string, got, want T) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%s:\n got %+v\nwant %+v", what, got, want)
	}
}

// --- users and groups -------------------------------------------------------

func testGroups(t *testing.T, s store.Store) {
	ctx := context.Background()
	seed(t, s)
	wantErr(t, "duplicate group", s.CreateGroup(ctx, api.Group{Name: "eng"}), store.ErrConflict)
	mustOK(t, s.CreateGroup(ctx, api.Group{Name: "Eng", CreatedAt: t0})) // names are case-sensitive
	got, err := s.Groups(ctx)
	mustOK(t, err)
	wantEqual(t, "Groups", got, []api.Group{
		{Name: "Eng", Members: 0, CreatedAt: t0},
		{Name: "eng", Members: 2, CreatedAt: t0},
		{Name: "ops", Members: 1, CreatedAt: t0},
	})
}

func testUsers(t *testing.T, s store.Store) {
	ctx := context.Background()
	seed(t, s)

	got, err := s.User(ctx, "bob")
	mustOK(t, err)
	want := user("bob", "eng", "ops") // groups come back sorted
	wantEqual(t, "User(bob)", got, want)

	tests := []struct {
		name string
		u    store.User
		want error
	}{
		{"duplicate name", store.User{User: api.User{ID: "usr_other", Name: "alice", CreatedAt: t0}}, store.ErrConflict},
		{"duplicate id", store.User{User: api.User{ID: "usr_alice", Name: "alice2", CreatedAt: t0}}, store.ErrConflict},
		{"missing group", user("carol", "eng", "nope"), store.ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantErr(t, "CreateUser", s.CreateUser(ctx, tt.u), tt.want)
		})
	}
	// A failed create leaves nothing behind, memberships included.
	_, err = s.User(ctx, "carol")
	wantErr(t, "User(carol) after failed create", err, store.ErrNotFound)

	mustOK(t, s.CreateUser(ctx, store.User{User: api.User{ID: "usr_dave", Name: "dave", CreatedAt: t0}}))
	users, err := s.Users(ctx)
	mustOK(t, err)
	var names []string
	for _, u := range users {
		names = append(names, u.Name)
	}
	wantEqual(t, "Users names", names, []string{"alice", "bob", "dave"})
	wantEqual(t, "dave's groups", users[2].Groups, []string(nil))

	_, err = s.User(ctx, "nobody")
	wantErr(t, "User(nobody)", err, store.ErrNotFound)
	_, err = s.User(ctx, "Alice")
	wantErr(t, "User(Alice)", err, store.ErrNotFound)
}

func testUpdateUser(t *testing.T, s store.Store) {
	ctx := context.Background()
	seed(t, s)

	u := user("alice", "ops")
	u.Disabled = true
	u.PasswordHash = ""
	mustOK(t, s.UpdateUser(ctx, u))
	got, err := s.User(ctx, "alice")
	mustOK(t, err)
	wantEqual(t, "updated alice", got, u)

	bad := user("alice", "eng", "nope")
	wantErr(t, "UpdateUser missing group", s.UpdateUser(ctx, bad), store.ErrNotFound)
	got, err = s.User(ctx, "alice")
	mustOK(t, err)
	wantEqual(t, "alice after failed update", got, u)

	wantErr(t, "UpdateUser unknown", s.UpdateUser(ctx, user("nobody")), store.ErrNotFound)

	groups, err := s.Groups(ctx)
	mustOK(t, err)
	wantEqual(t, "members", []int{groups[0].Members, groups[1].Members}, []int{1, 2}) // eng: bob; ops: alice, bob
}

func testDeleteUser(t *testing.T, s store.Store) {
	ctx := context.Background()
	seed(t, s)
	dev := mustDevice(t, s, "alice", "laptop")
	mustOK(t, s.CreateSession(ctx, store.Session{Hash: "h1", DeviceID: dev.ID, User: "alice", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}))

	mustOK(t, s.DeleteUser(ctx, "alice"))
	_, err := s.User(ctx, "alice")
	wantErr(t, "User after delete", err, store.ErrNotFound)
	wantErr(t, "DeleteUser again", s.DeleteUser(ctx, "alice"), store.ErrNotFound)
	// The user's devices and sessions go with it.
	_, err = s.Device(ctx, dev.ID)
	wantErr(t, "Device of deleted user", err, store.ErrNotFound)
	_, err = s.Session(ctx, "h1")
	wantErr(t, "Session of deleted user", err, store.ErrNotFound)

	groups, err := s.Groups(ctx)
	mustOK(t, err)
	wantEqual(t, "eng members", groups[0].Members, 1)
	// The name is free again.
	mustOK(t, s.CreateUser(ctx, user("alice")))
}

// --- apps -------------------------------------------------------------------

func testApps(t *testing.T, s store.Store) {
	ctx := context.Background()
	seed(t, s)
	wiki := mustApp(t, s, store.App{
		Name:         "wiki",
		Domains:      []string{"wiki.corp.internal", "docs.corp.internal"},
		Ports:        ports(t, "tcp/443,tcp/8000-8010"),
		GatewayGroup: "site-a",
	})
	if len(wiki.VirtualIPs) != 2 {
		t.Fatalf("VirtualIPs = %v; want one per domain", wiki.VirtualIPs)
	}
	for d, ip := range wiki.VirtualIPs {
		if !Pools().Apps.Contains(ip) {
			t.Fatalf("VirtualIP of %s = %v, outside %v", d, ip, Pools().Apps)
		}
	}
	if wiki.VirtualIPs["wiki.corp.internal"] == wiki.VirtualIPs["docs.corp.internal"] {
		t.Fatalf("domains share a virtual IP: %v", wiki.VirtualIPs)
	}
	db := mustApp(t, s, store.App{
		Name:         "db",
		Addresses:    []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("10.20.1.5/32")},
		Ports:        ports(t, "tcp/5432"),
		GatewayGroup: "site-a",
	})
	wantEqual(t, "address-only VirtualIPs", len(db.VirtualIPs), 0)

	got, err := s.App(ctx, "wiki")
	mustOK(t, err)
	wantEqual(t, "App(wiki)", got, wiki)
	apps, err := s.Apps(ctx)
	mustOK(t, err)
	wantEqual(t, "Apps", apps, []store.App{db, wiki})

	tests := []struct {
		name string
		app  store.App
		want error
	}{
		{"duplicate name", store.App{ID: "app_x", Name: "wiki", Domains: []string{"x.corp.internal"}, GatewayGroup: "site-a"}, store.ErrConflict},
		{"duplicate id", store.App{ID: wiki.ID, Name: "other", GatewayGroup: "site-a"}, store.ErrConflict},
		{"domain of another app", store.App{ID: "app_y", Name: "y", Domains: []string{"docs.corp.internal"}, GatewayGroup: "site-a"}, store.ErrConflict},
		{"missing gateway group", store.App{ID: "app_z", Name: "z", Domains: []string{"z.corp.internal"}, GatewayGroup: "nope"}, store.ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.app.CreatedAt = t0
			_, err := s.CreateApp(ctx, tt.app)
			wantErr(t, "CreateApp", err, tt.want)
		})
	}
	_, err = s.App(ctx, "nope")
	wantErr(t, "App(nope)", err, store.ErrNotFound)

	mustOK(t, s.DeleteApp(ctx, "db"))
	wantErr(t, "DeleteApp again", s.DeleteApp(ctx, "db"), store.ErrNotFound)
	_, err = s.App(ctx, "db")
	wantErr(t, "App after delete", err, store.ErrNotFound)
}

// testAppVirtualIPs: a domain's virtual IP is stable across deleting and
// re-creating its app, and never given to another domain.
func testAppVirtualIPs(t *testing.T, s store.Store) {
	ctx := context.Background()
	seed(t, s)
	a := mustApp(t, s, store.App{Name: "a", Domains: []string{"a.corp.internal", "a2.corp.internal"}, GatewayGroup: "site-a", Ports: ports(t, "tcp/80")})
	mustOK(t, s.DeleteApp(ctx, "a"))
	b := mustApp(t, s, store.App{Name: "b", Domains: []string{"b.corp.internal"}, GatewayGroup: "site-a", Ports: ports(t, "tcp/80")})
	for _, ip := range a.VirtualIPs {
		if ip == b.VirtualIPs["b.corp.internal"] {
			t.Fatalf("virtual IP %v of deleted app re-used for b", ip)
		}
	}
	// The domain moves to a new app and keeps its address.
	c := mustApp(t, s, store.App{Name: "c", Domains: []string{"a.corp.internal"}, GatewayGroup: "site-a", Ports: ports(t, "tcp/80")})
	wantEqual(t, "re-claimed domain VIP", c.VirtualIPs["a.corp.internal"], a.VirtualIPs["a.corp.internal"])
}

// testWildcardApps: a wildcard pattern is a domain of one app, with no
// virtual IP of its own.
func testWildcardApps(t *testing.T, s store.Store) {
	ctx := context.Background()
	seed(t, s)
	corp := mustApp(t, s, store.App{Name: "corp", Domains: []string{"*.corp.internal", "intranet.corp.internal"}, GatewayGroup: "site-a", Ports: ports(t, "tcp/443")})
	wantEqual(t, "Domains", corp.Domains, []string{"*.corp.internal", "intranet.corp.internal"})
	if _, ok := corp.VirtualIPs["*.corp.internal"]; ok || len(corp.VirtualIPs) != 1 {
		t.Fatalf("VirtualIPs = %v; want one, for the exact domain only", corp.VirtualIPs)
	}
	_, err := s.CreateApp(ctx, store.App{Name: "corp2", Domains: []string{"*.corp.internal"}, GatewayGroup: "site-a", Ports: ports(t, "tcp/443")})
	wantErr(t, "pattern of another app", err, store.ErrConflict)
	// A longer pattern, and an exact name under the pattern, are other domains.
	mustApp(t, s, store.App{Name: "dev", Domains: []string{"*.dev.corp.internal", "wiki.corp.internal"}, GatewayGroup: "site-a", Ports: ports(t, "tcp/443")})
	got, err := s.App(ctx, "corp")
	mustOK(t, err)
	wantEqual(t, "App(corp)", got, corp)
}

// testWildcardNames: each name under a wildcard app gets a virtual IP of its
// own, kept for good; names are capped per app and go with their app.
func testWildcardNames(t *testing.T, s store.Store) {
	ctx := context.Background()
	seed(t, s)
	corp := mustApp(t, s, store.App{Name: "corp", Domains: []string{"*.corp.internal"}, GatewayGroup: "site-a", Ports: ports(t, "tcp/443")})
	other := mustApp(t, s, store.App{Name: "other", Domains: []string{"*.other.internal"}, GatewayGroup: "site-a", Ports: ports(t, "tcp/443")})
	add := func(app api.AppID, name string, limit int) (store.WildcardName, bool, error) {
		t.Helper()
		return s.AddWildcardName(ctx, store.WildcardName{AppID: app, Name: name, CreatedAt: t0}, limit)
	}
	a, added, err := add(corp.ID, "a.corp.internal", 2)
	mustOK(t, err)
	wantEqual(t, "first add", added, true)
	if !Pools().Apps.Contains(a.VirtualIP) {
		t.Fatalf("VirtualIP %v outside %v", a.VirtualIP, Pools().Apps)
	}
	again, added, err := add(corp.ID, "a.corp.internal", 2)
	mustOK(t, err)
	wantEqual(t, "second add added", added, false)
	wantEqual(t, "second add", again, a)
	b, _, err := add(corp.ID, "b.corp.internal", 2)
	mustOK(t, err)
	if b.VirtualIP == a.VirtualIP {
		t.Fatalf("two names share %v", a.VirtualIP)
	}
	_, _, err = add(corp.ID, "c.corp.internal", 2)
	wantErr(t, "past the limit", err, store.ErrLimit)
	// The cap is per app, and a known name is no new name.
	_, _, err = add(corp.ID, "a.corp.internal", 2)
	mustOK(t, err)
	o, _, err := add(other.ID, "x.other.internal", 2)
	mustOK(t, err)
	_, _, err = add("app_nope", "x.nope.internal", 2)
	wantErr(t, "unknown app", err, store.ErrNotFound)

	names, err := s.WildcardNames(ctx)
	mustOK(t, err)
	want := []store.WildcardName{a, b, o}
	slices.SortFunc(want, func(x, y store.WildcardName) int {
		return strings.Compare(string(x.AppID)+" "+x.Name, string(y.AppID)+" "+y.Name)
	})
	wantEqual(t, "WildcardNames", names, want)

	// Deleting the app drops its names but not their addresses: a new app
	// serving the same name gets the same address, and the cap starts over.
	mustOK(t, s.DeleteApp(ctx, "corp"))
	corp2 := mustApp(t, s, store.App{Name: "corp2", Domains: []string{"*.corp.internal"}, GatewayGroup: "site-a", Ports: ports(t, "tcp/443")})
	b2, added, err := add(corp2.ID, "b.corp.internal", 1)
	mustOK(t, err)
	wantEqual(t, "re-added after delete", added, true)
	wantEqual(t, "VIP after re-create", b2.VirtualIP, b.VirtualIP)
	names, err = s.WildcardNames(ctx)
	mustOK(t, err)
	wantEqual(t, "WildcardNames after delete", len(names), 2)
	// A name's address is the name's, exact domain or not.
	exact := mustApp(t, s, store.App{Name: "a", Domains: []string{"a.corp.internal"}, GatewayGroup: "site-a", Ports: ports(t, "tcp/443")})
	wantEqual(t, "exact domain VIP of a former wildcard name", exact.VirtualIPs["a.corp.internal"], a.VirtualIP)
}

// --- gateways ---------------------------------------------------------------

func testGatewayGroups(t *testing.T, s store.Store) {
	ctx := context.Background()
	seed(t, s)
	wantErr(t, "duplicate", s.CreateGatewayGroup(ctx, api.GatewayGroup{Name: "site-a"}), store.ErrConflict)
	mustOK(t, s.CreateGatewayGroup(ctx, api.GatewayGroup{Name: "site-b", CreatedAt: t0}))
	mustGateway(t, s, "site-a", "gw1")
	mustGateway(t, s, "site-a", "gw2")
	got, err := s.GatewayGroups(ctx)
	mustOK(t, err)
	wantEqual(t, "GatewayGroups", got, []api.GatewayGroup{
		{Name: "site-a", Gateways: 2, CreatedAt: t0},
		{Name: "site-b", Gateways: 0, CreatedAt: t0},
	})
}

func testEnrolTokens(t *testing.T, s store.Store) {
	ctx := context.Background()
	seed(t, s)
	tok := store.EnrolToken{Hash: "aa01", Group: "site-a", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}
	mustOK(t, s.CreateEnrolToken(ctx, tok))
	mustOK(t, s.CreateEnrolToken(ctx, store.EnrolToken{Hash: "aa02", Group: "site-a", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}))
	mustOK(t, s.CreateEnrolToken(ctx, store.EnrolToken{Hash: "aa03", Group: "site-a", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}))
	wantErr(t, "duplicate hash", s.CreateEnrolToken(ctx, tok), store.ErrConflict)
	wantErr(t, "missing group", s.CreateEnrolToken(ctx, store.EnrolToken{Hash: "bb", Group: "nope", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}), store.ErrNotFound)

	got, err := s.ConsumeEnrolToken(ctx, "aa01", t0.Add(time.Minute))
	mustOK(t, err)
	wantEqual(t, "consumed token", got, tok)

	tests := []struct {
		name string
		hash string
		now  time.Time
		want error
	}{
		{"used", "aa01", t0.Add(2 * time.Minute), store.ErrTokenUsed},
		{"used and expired", "aa01", t0.Add(2 * time.Hour), store.ErrTokenUsed},
		{"expired", "aa02", t0.Add(2 * time.Hour), store.ErrExpired},
		{"expires at ExpiresAt", "aa03", t0.Add(time.Hour), store.ErrExpired},
		{"unknown", "ffff", t0, store.ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.ConsumeEnrolToken(ctx, tt.hash, tt.now)
			wantErr(t, "ConsumeEnrolToken", err, tt.want)
		})
	}
	// A token refused as expired was not consumed by the attempt.
	_, err = s.ConsumeEnrolToken(ctx, "aa03", t0.Add(time.Hour-time.Microsecond))
	mustOK(t, err)
}

func testGateways(t *testing.T, s store.Store) {
	ctx := context.Background()
	seed(t, s)
	g1 := mustGateway(t, s, "site-a", "gw1")
	g2 := mustGateway(t, s, "site-a", "gw2")
	for _, g := range []store.Gateway{g1, g2} {
		if !Pools().Gateways.Contains(g.OverlayIP) {
			t.Fatalf("gateway %s OverlayIP %v outside %v", g.ID, g.OverlayIP, Pools().Gateways)
		}
	}
	if g1.OverlayIP == g2.OverlayIP {
		t.Fatalf("gateways share %v", g1.OverlayIP)
	}
	got, err := s.Gateway(ctx, g1.ID)
	mustOK(t, err)
	wantEqual(t, "Gateway", got, g1)

	_, err = s.CreateGateway(ctx, store.Gateway{ID: "gw_x", Name: "x", Group: "nope", CreatedAt: t0})
	wantErr(t, "CreateGateway missing group", err, store.ErrNotFound)
	_, err = s.CreateGateway(ctx, store.Gateway{ID: g1.ID, Name: "again", Group: "site-a", CreatedAt: t0})
	wantErr(t, "CreateGateway duplicate id", err, store.ErrConflict)
	_, err = s.Gateway(ctx, "gw_nope")
	wantErr(t, "Gateway unknown", err, store.ErrNotFound)

	k := wgKey(t)
	eps := []netip.AddrPort{netip.MustParseAddrPort("203.0.113.7:51820"), netip.MustParseAddrPort("[2001:db8::1]:51820")}
	seen := t0.Add(time.Minute)
	mustOK(t, s.UpdateGatewayStatus(ctx, g1.ID, k, eps, seen))
	g1.WGPublicKey, g1.Endpoints, g1.LastSeen = k, eps, seen
	all, err := s.Gateways(ctx)
	mustOK(t, err)
	wantEqual(t, "Gateways", all, []store.Gateway{g1, g2})
	wantErr(t, "UpdateGatewayStatus unknown", s.UpdateGatewayStatus(ctx, "gw_nope", k, eps, seen), store.ErrNotFound)
}

func testAdminTokens(t *testing.T, s store.Store) {
	ctx := context.Background()
	tok := store.AdminToken{ID: "tok_1", Hash: "cafe", Scope: "admin", CreatedAt: t0}
	mustOK(t, s.CreateAdminToken(ctx, tok))
	got, err := s.AdminTokenByHash(ctx, "cafe")
	mustOK(t, err)
	wantEqual(t, "AdminTokenByHash", got, tok)
	revoked := store.AdminToken{ID: "tok_2", Hash: "beef", Scope: "admin", CreatedAt: t0, RevokedAt: t0.Add(time.Hour)}
	mustOK(t, s.CreateAdminToken(ctx, revoked))
	got, err = s.AdminTokenByHash(ctx, "beef")
	mustOK(t, err)
	wantEqual(t, "revoked token", got, revoked)

	wantErr(t, "duplicate id", s.CreateAdminToken(ctx, store.AdminToken{ID: "tok_1", Hash: "other", Scope: "admin", CreatedAt: t0}), store.ErrConflict)
	wantErr(t, "duplicate hash", s.CreateAdminToken(ctx, store.AdminToken{ID: "tok_3", Hash: "cafe", Scope: "admin", CreatedAt: t0}), store.ErrConflict)
	_, err = s.AdminTokenByHash(ctx, "nope")
	wantErr(t, "unknown hash", err, store.ErrNotFound)
}

// --- policy -----------------------------------------------------------------

func ruleIDs(t *testing.T, s store.Store) []api.RuleID {
	t.Helper()
	rules, err := s.PolicyRules(context.Background())
	mustOK(t, err)
	var ids []api.RuleID
	for i, r := range rules {
		if r.Position != i+1 {
			t.Fatalf("rule %s at position %d; want dense positions, %d", r.ID, r.Position, i+1)
		}
		ids = append(ids, r.ID)
	}
	return ids
}

func testPolicyInsert(t *testing.T, s store.Store) {
	ctx := context.Background()
	tests := []struct {
		id      api.RuleID
		pos     int
		wantPos int
		want    []api.RuleID
	}{
		{"r1", 0, 1, []api.RuleID{"r1"}},                                     // append to empty
		{"r2", 0, 2, []api.RuleID{"r1", "r2"}},                               // append
		{"r3", 1, 1, []api.RuleID{"r3", "r1", "r2"}},                         // insert at the top
		{"r4", 2, 2, []api.RuleID{"r3", "r4", "r1", "r2"}},                   // middle
		{"r5", 9, 5, []api.RuleID{"r3", "r4", "r1", "r2", "r5"}},             // past the end appends
		{"r6", 5, 5, []api.RuleID{"r3", "r4", "r1", "r2", "r6", "r5"}},       // before the last
		{"r7", 7, 7, []api.RuleID{"r3", "r4", "r1", "r2", "r6", "r5", "r7"}}, // exactly one past the end
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s@%d", tt.id, tt.pos), func(t *testing.T) {
			r := api.PolicyRule{ID: tt.id, Position: tt.pos, Action: api.Allow, Groups: []string{"eng"}, Apps: []string{"*"}, Description: "rule " + string(tt.id), CreatedAt: t0}
			got, err := s.InsertPolicyRule(ctx, r)
			mustOK(t, err)
			r.Position = tt.wantPos
			wantEqual(t, "stored rule", got, r)
			wantEqual(t, "order", ruleIDs(t, s), tt.want)
		})
	}
	_, err := s.InsertPolicyRule(ctx, api.PolicyRule{ID: "r1", Action: api.Deny, Apps: []string{"*"}, CreatedAt: t0})
	wantErr(t, "duplicate rule id", err, store.ErrConflict)
	_, err = s.InsertPolicyRule(ctx, api.PolicyRule{ID: "neg", Position: -1, Action: api.Deny, Apps: []string{"*"}, CreatedAt: t0})
	if err == nil {
		t.Fatal("negative position accepted")
	}
	wantEqual(t, "order after failed inserts", len(ruleIDs(t, s)), 7)

	rules, err := s.PolicyRules(ctx)
	mustOK(t, err)
	wantEqual(t, "round trip", rules[0], api.PolicyRule{ID: "r3", Position: 1, Action: api.Allow, Groups: []string{"eng"}, Apps: []string{"*"}, Description: "rule r3", CreatedAt: t0})
}

func testPolicyDelete(t *testing.T, s store.Store) {
	ctx := context.Background()
	for _, id := range []api.RuleID{"a", "b", "c", "d"} {
		_, err := s.InsertPolicyRule(ctx, api.PolicyRule{ID: id, Action: api.Deny, Users: []string{"alice"}, Apps: []string{"wiki"}, CreatedAt: t0})
		mustOK(t, err)
	}
	tests := []struct {
		del  api.RuleID
		want []api.RuleID
	}{
		{"b", []api.RuleID{"a", "c", "d"}}, // middle
		{"a", []api.RuleID{"c", "d"}},      // first
		{"d", []api.RuleID{"c"}},           // last
		{"c", nil},
	}
	for _, tt := range tests {
		mustOK(t, s.DeletePolicyRule(ctx, tt.del))
		wantEqual(t, "after deleting "+string(tt.del), ruleIDs(t, s), tt.want)
	}
	wantErr(t, "delete unknown", s.DeletePolicyRule(ctx, "a"), store.ErrNotFound)
}

// --- devices and sessions --------------------------------------------------------

func testDevices(t *testing.T, s store.Store) {
	ctx := context.Background()
	seed(t, s)
	d1 := mustDevice(t, s, "alice", "laptop")
	d2 := mustDevice(t, s, "bob", "laptop")
	if !Pools().Devices.Contains(d1.OverlayIP) || d1.OverlayIP == d2.OverlayIP {
		t.Fatalf("device addresses %v, %v: want distinct, inside %v", d1.OverlayIP, d2.OverlayIP, Pools().Devices)
	}
	got, err := s.Device(ctx, d1.ID)
	mustOK(t, err)
	wantEqual(t, "Device", got, d1)

	_, err = s.CreateDevice(ctx, store.Device{ID: "dev_x", User: "nobody", Name: "x", CreatedAt: t0})
	wantErr(t, "CreateDevice unknown user", err, store.ErrNotFound)
	_, err = s.CreateDevice(ctx, store.Device{ID: d1.ID, User: "alice", Name: "again", CreatedAt: t0})
	wantErr(t, "CreateDevice duplicate id", err, store.ErrConflict)
	_, err = s.Device(ctx, "dev_nope")
	wantErr(t, "Device unknown", err, store.ErrNotFound)

	d1.Name, d1.WGPublicKey, d1.Disabled, d1.LastSeen = "new name", wgKey(t), true, t0.Add(time.Hour)
	upd := d1
	upd.OverlayIP = netip.MustParseAddr("100.64.99.99") // not updatable
	upd.User = "bob"                                    // not updatable
	mustOK(t, s.UpdateDevice(ctx, upd))
	all, err := s.Devices(ctx)
	mustOK(t, err)
	wantEqual(t, "Devices", all, []store.Device{d1, d2})
	wantErr(t, "UpdateDevice unknown", s.UpdateDevice(ctx, store.Device{ID: "dev_nope"}), store.ErrNotFound)
}

func testSessions(t *testing.T, s store.Store) {
	ctx := context.Background()
	seed(t, s)
	d := mustDevice(t, s, "alice", "laptop")
	ss := store.Session{Hash: "s1", DeviceID: d.ID, User: "alice", CreatedAt: t0, ExpiresAt: t0.Add(12 * time.Hour)}
	mustOK(t, s.CreateSession(ctx, ss))
	mustOK(t, s.CreateSession(ctx, store.Session{Hash: "s2", DeviceID: d.ID, User: "alice", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}))
	wantErr(t, "duplicate hash", s.CreateSession(ctx, ss), store.ErrConflict)
	wantErr(t, "unknown device", s.CreateSession(ctx, store.Session{Hash: "s3", DeviceID: "dev_nope", User: "alice", CreatedAt: t0, ExpiresAt: t0}), store.ErrNotFound)

	got, err := s.Session(ctx, "s1")
	mustOK(t, err)
	wantEqual(t, "Session", got, ss)
	_, err = s.Session(ctx, "nope")
	wantErr(t, "Session unknown", err, store.ErrNotFound)

	// DeviceSession: the same session, device and user as the three
	// reads alone.
	ds, err := s.DeviceSession(ctx, "s1")
	mustOK(t, err)
	wantEqual(t, "DeviceSession session", ds.Session, ss)
	mustOK(t, ds.DeviceErr)
	mustOK(t, ds.UserErr)
	wantDev, err := s.Device(ctx, d.ID)
	mustOK(t, err)
	wantEqual(t, "DeviceSession device", ds.Device, wantDev)
	wantUser, err := s.User(ctx, "alice")
	mustOK(t, err)
	wantEqual(t, "DeviceSession user", ds.User, wantUser)
	_, err = s.DeviceSession(ctx, "nope")
	wantErr(t, "DeviceSession unknown", err, store.ErrNotFound)

	mustOK(t, s.DeleteSessions(ctx, d.ID))
	for _, h := range []string{"s1", "s2"} {
		_, err = s.Session(ctx, h)
		wantErr(t, "Session after DeleteSessions", err, store.ErrNotFound)
	}
	mustOK(t, s.DeleteSessions(ctx, d.ID)) // none left: still fine
}

// --- grants -----------------------------------------------------------------

// grantFixture is a grant through gw for dev, live until notAfter.
func grantFixture(t *testing.T, id api.GrantID, dev store.Device, gw api.GatewayID, notAfter time.Time) store.Grant {
	return store.Grant{
		Grant: api.Grant{
			ID: id, DeviceID: dev.ID, User: dev.User, App: "wiki", GatewayID: gw, ClientIP: dev.OverlayIP,
			Targets: []api.GrantTarget{
				{Prefix: netip.MustParsePrefix("100.96.0.1/32"), Host: "wiki.corp.internal"},
				{Prefix: netip.MustParsePrefix("198.51.100.0/24")},
			},
			Ports:     ports(t, "tcp/443,udp/53"),
			Rule:      "rule_1",
			CreatedAt: t0,
			NotAfter:  notAfter,
		},
		AppID:       "app_wiki",
		ClientWGKey: dev.WGPublicKey,
	}
}

func allowEvent(id api.GrantID) api.AuditEvent {
	return api.AuditEvent{Time: t0, Type: "grant.allow", Actor: "user:alice", User: "alice", App: "wiki", GrantID: id, Rule: "rule_1", Source: "192.0.2.10:4321"}
}

func testCreateGrant(t *testing.T, s store.Store) {
	ctx := context.Background()
	seed(t, s)
	dev := mustDevice(t, s, "alice", "laptop")
	g := grantFixture(t, "grt_1", dev, "gw_1", t0.Add(10*time.Minute))
	mustOK(t, s.CreateGrant(ctx, g, allowEvent(g.ID)))
	got, err := s.Grant(ctx, g.ID)
	mustOK(t, err)
	wantEqual(t, "Grant", got, g)

	// A duplicate fails and, being one transaction, adds no audit event.
	wantErr(t, "duplicate grant", s.CreateGrant(ctx, g, allowEvent(g.ID)), store.ErrConflict)
	evs, err := s.Audit(ctx, store.AuditQuery{Type: "grant.allow"})
	mustOK(t, err)
	if len(evs) != 1 || evs[0].GrantID != g.ID || evs[0].ID == 0 {
		t.Fatalf("audit after CreateGrant = %+v; want one grant.allow event for %s", evs, g.ID)
	}
	ev := allowEvent(g.ID)
	ev.ID = evs[0].ID
	wantEqual(t, "audit event", evs[0], ev)

	_, err = s.Grant(ctx, "grt_nope")
	wantErr(t, "Grant unknown", err, store.ErrNotFound)

	// A grant for one name under a wildcard keeps its name.
	named := grantFixture(t, "grt_named", dev, "gw_1", t0.Add(10*time.Minute))
	named.Name = "a.corp.internal"
	named.Targets = []api.GrantTarget{{Prefix: netip.MustParsePrefix("100.96.0.9/32"), Host: "a.corp.internal"}}
	mustOK(t, s.CreateGrant(ctx, named, allowEvent(named.ID)))
	live, err := s.LiveGrantsFor(ctx, t0, dev.ID, named.AppID)
	mustOK(t, err)
	wantEqual(t, "LiveGrantsFor", live, []store.Grant{g, named})
	mustOK(t, s.RenewGrant(ctx, named.ID, t0.Add(20*time.Minute), store.GrantFacts{}, allowEvent(named.ID)))
	named.NotAfter = t0.Add(20 * time.Minute)
	got, err = s.Grant(ctx, named.ID)
	mustOK(t, err)
	wantEqual(t, "renewed named Grant", got, named)
}

func testLiveGrants(t *testing.T, s store.Store) {
	ctx := context.Background()
	seed(t, s)
	a := mustDevice(t, s, "alice", "laptop")
	b := mustDevice(t, s, "bob", "laptop")
	now := t0.Add(5 * time.Minute)
	fixtures := []store.Grant{
		grantFixture(t, "g1", a, "gw_x", now.Add(time.Minute)),      // live
		grantFixture(t, "g2", a, "gw_x", now.Add(-time.Minute)),     // expired
		grantFixture(t, "g3", a, "gw_x", now.Add(time.Minute)),      // revoked below
		grantFixture(t, "g4", b, "gw_x", now.Add(time.Hour)),        // live
		grantFixture(t, "g5", a, "gw_y", now.Add(time.Minute)),      // live
		grantFixture(t, "g6", b, "gw_y", now),                       // expires exactly now: not live
		grantFixture(t, "g7", b, "gw_y", now.Add(time.Microsecond)), // live, just
	}
	for i, g := range fixtures {
		g.CreatedAt = t0.Add(time.Duration(i) * time.Second) // LiveGrants is oldest first
		fixtures[i] = g
		mustOK(t, s.CreateGrant(ctx, g, allowEvent(g.ID)))
	}
	_, err := s.RevokeGrants(ctx, []api.GrantID{"g3"}, "test", now, api.AuditEvent{Type: "grant.revoke"})
	mustOK(t, err)

	tests := []struct {
		name    string
		gateway api.GatewayID
		device  api.DeviceID
		want    []api.GrantID
	}{
		{"all", "", "", []api.GrantID{"g1", "g4", "g5", "g7"}},
		{"gateway x", "gw_x", "", []api.GrantID{"g1", "g4"}},
		{"gateway y", "gw_y", "", []api.GrantID{"g5", "g7"}},
		{"device a", "", a.ID, []api.GrantID{"g1", "g5"}},
		{"device b on y", "gw_y", b.ID, []api.GrantID{"g7"}},
		{"unknown gateway", "gw_z", "", nil},
		{"unknown device", "", "dev_z", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.LiveGrants(ctx, now, tt.gateway, tt.device)
			mustOK(t, err)
			var ids []api.GrantID
			for _, g := range got {
				ids = append(ids, g.ID)
			}
			wantEqual(t, "LiveGrants", ids, tt.want)
		})
	}
	got, err := s.LiveGrants(ctx, now, "gw_x", a.ID)
	mustOK(t, err)
	wantEqual(t, "LiveGrants full row", got, []store.Grant{fixtures[0]})
	for _, tt := range []struct {
		name   string
		device api.DeviceID
		app    api.AppID
		want   []api.GrantID
	}{
		{"device a, wiki", a.ID, "app_wiki", []api.GrantID{"g1", "g5"}},
		{"device a, other app", a.ID, "app_other", nil},
		{"unknown device", "dev_z", "app_wiki", nil},
	} {
		got, err := s.LiveGrantsFor(ctx, now, tt.device, tt.app)
		mustOK(t, err)
		var ids []api.GrantID
		for _, g := range got {
			ids = append(ids, g.ID)
		}
		wantEqual(t, "LiveGrantsFor "+tt.name, ids, tt.want)
	}
}

func testRenewGrant(t *testing.T, s store.Store) {
	ctx := context.Background()
	seed(t, s)
	dev := mustDevice(t, s, "alice", "laptop")
	g := grantFixture(t, "grt_1", dev, "gw_1", t0.Add(10*time.Minute))
	mustOK(t, s.CreateGrant(ctx, g, allowEvent(g.ID)))
	mustOK(t, s.CreateGrant(ctx, grantFixture(t, "grt_2", dev, "gw_1", t0.Add(10*time.Minute)), allowEvent("grt_2")))

	renewAt := t0.Add(7 * time.Minute)
	renew := func(id api.GrantID, at time.Time) error {
		return s.RenewGrant(ctx, id, at.Add(10*time.Minute), store.GrantFacts{}, api.AuditEvent{Time: at, Type: "grant.renew", Actor: "user:alice", GrantID: id})
	}
	mustOK(t, renew(g.ID, renewAt))
	got, err := s.Grant(ctx, g.ID)
	mustOK(t, err)
	wantEqual(t, "renewed NotAfter", got.NotAfter, renewAt.Add(10*time.Minute))
	evs, err := s.Audit(ctx, store.AuditQuery{Type: "grant.renew"})
	mustOK(t, err)
	if len(evs) != 1 || evs[0].GrantID != g.ID || !evs[0].Time.Equal(renewAt) {
		t.Fatalf("renew events = %+v", evs)
	}

	_, err = s.RevokeGrants(ctx, []api.GrantID{"grt_2"}, "admin", renewAt, api.AuditEvent{Type: "grant.revoke"})
	mustOK(t, err)
	tests := []struct {
		name string
		id   api.GrantID
		at   time.Time
		want error
	}{
		{"revoked", "grt_2", renewAt, store.ErrNotFound},
		{"unknown", "grt_nope", renewAt, store.ErrNotFound},
		// An expired grant is not live: ErrNotFound like the others, and
		// also ErrExpired to say why.
		{"expired", g.ID, renewAt.Add(time.Hour), store.ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantErr(t, "RenewGrant", renew(tt.id, tt.at), tt.want)
		})
	}
	wantErr(t, "RenewGrant expired", renew(g.ID, renewAt.Add(time.Hour)), store.ErrExpired)
	evs, err = s.Audit(ctx, store.AuditQuery{Type: "grant.renew"})
	mustOK(t, err)
	wantEqual(t, "renew events after failures", len(evs), 1)
}

func testRevokeGrants(t *testing.T, s store.Store) {
	ctx := context.Background()
	seed(t, s)
	a := mustDevice(t, s, "alice", "laptop")
	b := mustDevice(t, s, "bob", "laptop")
	g1 := grantFixture(t, "g1", a, "gw_x", t0.Add(10*time.Minute))
	g2 := grantFixture(t, "g2", b, "gw_x", t0.Add(10*time.Minute))
	g3 := grantFixture(t, "g3", a, "gw_y", t0.Add(10*time.Minute))
	for _, g := range []store.Grant{g1, g2, g3} {
		mustOK(t, s.CreateGrant(ctx, g, allowEvent(g.ID)))
	}
	now := t0.Add(time.Minute)
	ev := api.AuditEvent{Type: "grant.revoke", Actor: "admin:tok_1"}

	got, err := s.RevokeGrants(ctx, []api.GrantID{"g1", "g2", "nope", "g1"}, "user disabled", now, ev)
	mustOK(t, err)
	want := []store.Grant{g1, g2}
	for i := range want {
		want[i].RevokedAt, want[i].RevokeReason = now, "user disabled"
	}
	wantEqual(t, "first revoke", got, want)
	stored, err := s.Grant(ctx, "g1")
	mustOK(t, err)
	wantEqual(t, "stored revoked grant", stored, want[0])

	// Idempotent: only g3 is newly revoked; g1 keeps its first revocation.
	got, err = s.RevokeGrants(ctx, []api.GrantID{"g1", "g3"}, "again", now.Add(time.Minute), ev)
	mustOK(t, err)
	if len(got) != 1 || got[0].ID != "g3" {
		t.Fatalf("second revoke = %+v; want only g3", got)
	}
	stored, err = s.Grant(ctx, "g1")
	mustOK(t, err)
	wantEqual(t, "g1 after second revoke", stored, want[0])

	got, err = s.RevokeGrants(ctx, nil, "nothing", now, ev)
	mustOK(t, err)
	wantEqual(t, "revoke none", len(got), 0)

	// One audit event per revoked grant, naming it.
	evs, err := s.Audit(ctx, store.AuditQuery{Type: "grant.revoke"})
	mustOK(t, err)
	var named []string
	for _, e := range evs {
		named = append(named, fmt.Sprintf("%s/%s/%s", e.GrantID, e.User, e.Reason))
	}
	slices.Sort(named)
	wantEqual(t, "revoke events", named, []string{"g1/alice/user disabled", "g2/bob/user disabled", "g3/alice/again"})

	live, err := s.LiveGrants(ctx, now, "", "")
	mustOK(t, err)
	wantEqual(t, "live after revoke", len(live), 0)
}

// --- audit and flows -----------------------------------------------------------

func testAudit(t *testing.T, s store.Store) {
	ctx := context.Background()
	at := func(m int) time.Time { return t0.Add(time.Duration(m) * time.Minute) }
	evs := []api.AuditEvent{
		{Time: at(0), Type: "login", Actor: "user:alice", User: "alice", DeviceID: "dev_a", Source: "192.0.2.1:1000"},
		{Time: at(1), Type: "grant.allow", Actor: "user:alice", User: "alice", DeviceID: "dev_a", App: "wiki", GatewayID: "gw_1", GrantID: "g1", Rule: "rule_1"},
		{Time: at(2), Type: "grant.deny", Actor: "user:bob", User: "bob", DeviceID: "dev_b", App: "wiki", Reason: "posture: disk not encrypted"},
		{Time: at(3), Type: "grantx", Actor: "user:bob", User: "bob"},
		{Time: at(4), Type: "grants.other", Actor: "user:bob", User: "bob"},
		{Time: at(5), Type: "admin.user.add", Actor: "admin:tok_1", User: "carol"},
		{Time: at(6), Type: "grant.revoke", Actor: "admin:tok_1", User: "alice", DeviceID: "dev_a", App: "db", GrantID: "g2"},
		{Time: at(6), Type: "grant.revoke", Actor: "admin:tok_1", User: "alice", DeviceID: "dev_a", App: "wiki", GrantID: "g1"}, // same time: higher ID is newer
	}
	mustOK(t, s.AppendAudit(ctx, evs...))
	for i := range evs {
		if evs[i].ID == 0 || (i > 0 && evs[i].ID <= evs[i-1].ID) {
			t.Fatalf("AppendAudit IDs = %d at %d; want increasing, non-zero", evs[i].ID, i)
		}
	}
	mustOK(t, s.AppendAudit(ctx)) // nothing to append

	idx := func(is ...int) []api.AuditEvent {
		var out []api.AuditEvent
		for _, i := range is {
			out = append(out, evs[i])
		}
		return out
	}
	tests := []struct {
		name string
		q    store.AuditQuery
		want []api.AuditEvent
	}{
		{"all newest first", store.AuditQuery{}, idx(7, 6, 5, 4, 3, 2, 1, 0)},
		{"limit", store.AuditQuery{Limit: 3}, idx(7, 6, 5)},
		{"exact type", store.AuditQuery{Type: "grant.deny"}, idx(2)},
		{"type prefix", store.AuditQuery{Type: "grant."}, idx(7, 6, 2, 1)},
		{"type prefix is not a string prefix", store.AuditQuery{Type: "grant"}, nil},
		{"user", store.AuditQuery{User: "bob"}, idx(4, 3, 2)},
		{"device", store.AuditQuery{DeviceID: "dev_a"}, idx(7, 6, 1, 0)},
		{"app", store.AuditQuery{App: "wiki"}, idx(7, 2, 1)},
		{"since is inclusive", store.AuditQuery{Since: at(5)}, idx(7, 6, 5)},
		{"combined", store.AuditQuery{Type: "grant.", User: "alice", App: "wiki", Since: at(2), Limit: 10}, idx(7)},
		{"no match", store.AuditQuery{User: "nobody"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.Audit(ctx, tt.q)
			mustOK(t, err)
			wantEqual(t, "Audit", got, tt.want)
		})
	}

	t.Run("default limit", func(t *testing.T) {
		many := make([]api.AuditEvent, 120)
		for i := range many {
			many[i] = api.AuditEvent{Time: at(10 + i), Type: "bulk", Actor: "test"}
		}
		mustOK(t, s.AppendAudit(ctx, many...))
		got, err := s.Audit(ctx, store.AuditQuery{Type: "bulk"})
		mustOK(t, err)
		if len(got) != 100 || got[0].ID != many[119].ID || got[99].ID != many[20].ID {
			t.Fatalf("default limit: got %d events from %d to %d", len(got), got[0].ID, got[len(got)-1].ID)
		}
	})
}

func testFlows(t *testing.T, s store.Store) {
	ctx := context.Background()
	rec := func(grant api.GrantID, start int, up uint64) api.FlowRecord {
		return api.FlowRecord{
			GrantID: grant, GatewayID: "gw_1", DeviceID: "dev_a", ClientIP: netip.MustParseAddr("100.64.0.1"),
			App: "wiki", Proto: "tcp", Destination: "wiki.corp.internal:443", BytesUp: up, BytesDown: 2 * up,
			Start: t0.Add(time.Duration(start) * time.Second), End: t0.Add(time.Duration(start+30) * time.Second),
		}
	}
	r1, r2, r3 := rec("g1", 0, 100), rec("g1", 10, 1<<63+5), rec("g2", 5, 7)
	r3.Error, r3.Proto = "reset by peer", "udp"
	mustOK(t, s.AppendFlows(ctx, r1, r2, r3))
	mustOK(t, s.AppendFlows(ctx))

	tests := []struct {
		name  string
		grant api.GrantID
		limit int
		want  []api.FlowRecord
	}{
		{"one grant newest first", "g1", 0, []api.FlowRecord{r2, r1}},
		{"limit", "g1", 1, []api.FlowRecord{r2}},
		{"other grant", "g2", 10, []api.FlowRecord{r3}},
		{"all grants", "", 0, []api.FlowRecord{r2, r3, r1}},
		{"unknown grant", "g9", 0, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.Flows(ctx, tt.grant, tt.limit)
			mustOK(t, err)
			wantEqual(t, "Flows", got, tt.want)
		})
	}
}

// testTimesUTC: times given in any zone come back as the same instant in
// UTC, to the microsecond.
func testTimesUTC(t *testing.T, s store.Store) {
	ctx := context.Background()
	zone := time.FixedZone("UTC+5:30", 5*3600+1800)
	local := time.Date(2027, 2, 3, 4, 5, 6, 789012000, zone)
	mustOK(t, s.CreateGroup(ctx, api.Group{Name: "g", CreatedAt: local}))
	groups, err := s.Groups(ctx)
	mustOK(t, err)
	got := groups[0].CreatedAt
	if !got.Equal(local) || got.Location() != time.UTC {
		t.Fatalf("CreatedAt = %v (%v); want %v in UTC", got, got.Location(), local.UTC())
	}
	wantEqual(t, "CreatedAt", got, local.UTC())

	ev := api.AuditEvent{Time: local, Type: "t"}
	mustOK(t, s.AppendAudit(ctx, ev))
	evs, err := s.Audit(ctx, store.AuditQuery{Since: local})
	mustOK(t, err)
	if len(evs) != 1 || evs[0].Time != local.UTC() {
		t.Fatalf("audit time = %+v; want %v", evs, local.UTC())
	}
}

// testAddressesUnique creates enough devices, gateways and domains to catch
// a repeated address.
func testAddressesUnique(t *testing.T, s store.Store) {
	seed(t, s)
	seen := map[netip.Addr]string{}
	note := func(ip netip.Addr, owner string) {
		t.Helper()
		if prev, ok := seen[ip]; ok {
			t.Fatalf("%v given to %s and %s", ip, prev, owner)
		}
		seen[ip] = owner
	}
	for i := range 50 {
		d := mustDevice(t, s, "alice", fmt.Sprint("d", i))
		note(d.OverlayIP, string(d.ID))
		g := mustGateway(t, s, "site-a", fmt.Sprint("g", i))
		note(g.OverlayIP, string(g.ID))
	}
	for i := range 20 {
		a := mustApp(t, s, store.App{Name: fmt.Sprint("app", i), Domains: []string{fmt.Sprintf("a%d.corp.internal", i), fmt.Sprintf("b%d.corp.internal", i)}, GatewayGroup: "site-a", Ports: ports(t, "tcp/443")})
		for d, ip := range a.VirtualIPs {
			note(ip, d)
		}
	}
}
