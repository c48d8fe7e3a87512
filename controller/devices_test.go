package controller

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/internal/api"
)

func (d *testDevice) domains() api.DeviceDomains {
	d.t.Helper()
	var dd api.DeviceDomains
	if err := d.api.Do(context.Background(), "GET", "/v1/device/domains", nil, &dd); err != nil {
		d.t.Fatal(err)
	}
	return dd
}

func TestDeviceDomains(t *testing.T) {
	e := newTestEnv(t, Config{}, 0)
	e.setupCorp()
	ctx := context.Background()
	tcp := []api.PortRange{{Proto: "tcp", First: 22, Last: 22}}
	e.must(e.admin.AddApp(ctx, api.AppCreate{Name: "db", GatewayGroup: "site", Ports: tcp, Addresses: []netip.Prefix{
		netip.MustParsePrefix("198.51.100.7/24"), netip.MustParsePrefix("192.0.2.10/32"),
	}}))
	e.must(e.admin.AddApp(ctx, api.AppCreate{Name: "db2", GatewayGroup: "site", Ports: tcp, Addresses: []netip.Prefix{
		netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("2001:db8::/64"),
	}}))
	// Bob may reach nothing and still gets the whole list.
	bob := e.login("bob")
	dd := bob.domains()
	want := api.DeviceDomains{
		Domains: []string{"*.corp.internal", "wiki.corp.internal"},
		Prefixes: []netip.Prefix{
			netip.MustParsePrefix("192.0.2.10/32"), netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("2001:db8::/64"),
		},
		Version: dd.Version,
	}
	if !reflect.DeepEqual(dd, want) || len(dd.Version) != 32 {
		t.Fatalf("domains = %+v; want %+v with a 32-digit version", dd, want)
	}

	// The version is the ETag.
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("GET", "/v1/device/domains", nil)
	req.Header.Set("If-None-Match", `"`+dd.Version+`"`)
	if err := e.c.handleDeviceDomains(rec, req, deviceCaller{}); err != nil || rec.Code != http.StatusNotModified || rec.Body.Len() != 0 {
		t.Fatalf("If-None-Match with the version: status %d, body %q, err %v; want 304", rec.Code, rec.Body, err)
	}

	// Adding a domain changes the version; removing it brings the old one
	// back (the version is a hash of the lists, not a counter).
	e.must(e.admin.AddApp(ctx, api.AppCreate{Name: "git", GatewayGroup: "site", Ports: tcp, Domains: []string{"git.corp.internal"}}))
	dd2 := bob.domains()
	if dd2.Version == dd.Version || !reflect.DeepEqual(dd2.Domains, []string{"*.corp.internal", "git.corp.internal", "wiki.corp.internal"}) {
		t.Fatalf("after adding git: %+v (before: %s)", dd2, dd.Version)
	}
	if err := e.admin.RemoveApp(ctx, "git"); err != nil {
		t.Fatal(err)
	}
	if dd3 := bob.domains(); !reflect.DeepEqual(dd3, dd) {
		t.Fatalf("after removing git: %+v; want %+v", dd3, dd)
	}
	// A new policy rule is no new domain.
	e.must(e.admin.AddPolicy(ctx, api.PolicyRuleCreate{Action: api.Deny, Users: []string{"bob"}, Apps: []string{"db"}}))
	if got := bob.domains().Version; got != dd.Version {
		t.Fatalf("version changed with the policy: %s → %s", dd.Version, got)
	}

	// Admins and anonymous callers cannot read it.
	if err := e.admin.Client().Do(ctx, "GET", "/v1/device/domains", nil, nil); err == nil {
		t.Fatal("admin token read /v1/device/domains")
	}
}

func TestDeviceEvents(t *testing.T) {
	e := newTestEnv(t, Config{}, 100*time.Millisecond)
	e.setupCorp()
	ctx := context.Background()
	alice, other := e.login("alice"), e.login("alice")
	events, otherEvents := alice.events(), other.events()
	hello := events.next(t, 2*time.Second)
	if hello.Type != api.DeviceEventHello || hello.Version != alice.domains().Version {
		t.Fatalf("first event = %+v; want hello with the domains version", hello)
	}
	if ev := otherEvents.next(t, 2*time.Second); ev.Type != api.DeviceEventHello {
		t.Fatalf("other device's first event = %+v", ev)
	}
	// Pings keep coming.
	for range 2 {
		if ev, err := events.nextOrEnd(2*time.Second, false); err != nil || ev.Type != api.DeviceEventPing {
			t.Fatalf("want a ping: %+v, %v", ev, err)
		}
	}

	// An admin's revocation reaches the device within a second, and only it.
	g := alice.mustGrant("wiki.corp.internal")
	start := time.Now()
	if err := e.admin.RevokeGrant(ctx, g.Grant.ID); err != nil {
		t.Fatal(err)
	}
	ev := events.next(t, time.Second)
	if ev.Type != api.DeviceEventGrantRevoked || ev.GrantID != g.Grant.ID || ev.Reason == "" {
		t.Fatalf("event after revoke = %+v; want grant.revoked for %s", ev, g.Grant.ID)
	}
	t.Logf("revocation reached the device stream in %v", time.Since(start))

	// A new app changes the domain list for everyone.
	e.must(e.admin.AddApp(ctx, api.AppCreate{Name: "git", GatewayGroup: "site", Ports: []api.PortRange{{Proto: "tcp", First: 22, Last: 22}}, Domains: []string{"git.corp.internal"}}))
	want := alice.domains().Version
	for _, s := range []*eventStream{events, otherEvents} {
		if ev := s.next(t, time.Second); ev.Type != api.DeviceEventDomainsChanged || ev.Version != want {
			t.Fatalf("event after app add = %+v; want domains.changed %s", ev, want)
		}
	}
	// The other device saw nothing of alice's grant.
	if ev, err := otherEvents.nextOrEnd(300*time.Millisecond, true); err == nil {
		t.Fatalf("other device got %+v", ev)
	}

	// Logout: the device's revocations, then the end of its streams.
	g1, g2 := other.mustGrant("a.corp.internal"), other.mustGrant("wiki.corp.internal")
	if err := other.api.Do(ctx, "POST", "/v1/logout", nil, nil); err != nil {
		t.Fatal(err)
	}
	got := map[api.GrantID]bool{}
	for _, ev := range otherEvents.waitEnd(t, 2*time.Second) {
		if ev.Type == api.DeviceEventGrantRevoked {
			got[ev.GrantID] = true
		}
	}
	if !got[g1.Grant.ID] || !got[g2.Grant.ID] {
		t.Fatalf("logout revocations on the stream: %v; want %s and %s", got, g1.Grant.ID, g2.Grant.ID)
	}

	// Disabling the device revokes its grants and ends its streams.
	g3 := alice.mustGrant("b.corp.internal")
	yes := true
	e.must(e.admin.UpdateDevice(ctx, alice.id, api.DeviceUpdate{Disabled: &yes}))
	evs := events.waitEnd(t, 2*time.Second)
	if len(evs) == 0 || evs[0].GrantID != g3.Grant.ID {
		t.Fatalf("events before the end after disabling: %+v; want grant.revoked %s", evs, g3.Grant.ID)
	}
	if _, err := alice.api.Stream(ctx, "/v1/device/events"); err == nil {
		t.Fatal("a disabled device opened an event stream")
	}
}

func TestDeviceEventsStreamLimitAndShutdown(t *testing.T) {
	e := newTestEnv(t, Config{}, 0)
	e.setupCorp()
	alice := e.login("alice")
	var streams []*eventStream
	for range maxDeviceStreams + 1 {
		s := alice.events()
		if ev := s.next(t, 2*time.Second); ev.Type != api.DeviceEventHello {
			t.Fatalf("first event %+v", ev)
		}
		streams = append(streams, s)
	}
	// The oldest made room for the newest.
	streams[0].waitEnd(t, 2*time.Second)
	if n := len(e.c.devices.matching(func(*deviceStream) bool { return true })); n != maxDeviceStreams {
		t.Fatalf("%d streams open; want %d", n, maxDeviceStreams)
	}
	// Shutdown closes the rest.
	start := time.Now()
	e.stop()
	for _, s := range streams[1:] {
		s.waitEnd(t, 5*time.Second)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("streams took %v to close on shutdown", d)
	}
}

// TestDeviceHubSlowReader: a stream whose writer does not keep up is closed;
// publishing never waits for it.
func TestDeviceHubSlowReader(t *testing.T) {
	h := newDeviceHub(newMetrics())
	slow, err := h.open("dev_1", "alice")
	if err != nil {
		t.Fatal(err)
	}
	other, err := h.open("dev_2", "bob")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for i := range maxQueuedDeviceEvents + 1 {
		h.publish("dev_1", api.DeviceEvent{Type: api.DeviceEventGrantRevoked, GrantID: api.GrantID(rune('a' + i%26))})
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("publishing to a stuck stream took %v", d)
	}
	select {
	case <-slow.out.done:
	default:
		t.Fatal("the stuck stream is still open")
	}
	if n := len(slow.out.drain()); n != maxQueuedDeviceEvents {
		t.Fatalf("%d events queued for the last write; want %d", n, maxQueuedDeviceEvents)
	}
	select {
	case <-other.out.done:
		t.Fatal("another device's stream was closed")
	default:
	}
	// Once the hub is closed nothing opens.
	h.closeAll()
	if _, err := h.open("dev_3", "carol"); err == nil {
		t.Fatal("open after closeAll")
	}
	select {
	case <-other.out.done:
	default:
		t.Fatal("closeAll left a stream open")
	}
}
