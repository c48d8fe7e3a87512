package controller

import (
	"errors"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/controller/store"
	"github.com/keyhole-net/keyhole/internal/api"
)

func TestValidHostName(t *testing.T) {
	long63 := strings.Repeat("a", 63)
	tests := []struct {
		name string
		ok   bool
	}{
		{"a", true},
		{"wiki.corp.internal", true},
		{"x-1.a.corp.internal", true},
		{"1.2.3.4.example", true},
		{long63 + ".corp", true},
		{strings.Repeat("a.", 126) + "a", true}, // 253 characters
		{strings.Repeat("a.", 126) + "ab", false},
		{strings.Repeat("a", 64) + ".corp", false},
		{"", false},
		{".", false},
		{"a..b", false},
		{".a", false},
		{"a.", false},
		{"-a.b", false},
		{"a-.b", false},
		{"a_b.c", false},
		{"A.b", false},
		{"*.b.c", false},
		{"ä.b", false},
		{"a b.c", false},
	}
	for _, tt := range tests {
		if got := validHostName(tt.name); got != tt.ok {
			t.Errorf("validHostName(%q) = %v; want %v", tt.name, got, tt.ok)
		}
	}
}

func TestCheckDomain(t *testing.T) {
	for _, ok := range []string{"wiki.corp.internal", "a.b", "*.corp.internal", "*.a.b"} {
		if err := checkDomain(ok); err != nil {
			t.Errorf("checkDomain(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"internal", "*.internal", "*", "*.", "**.a.b", "*.*.a.b", "a.*.b", "Wiki.corp", "*a.b.c", "wiki.corp.internal."} {
		if err := checkDomain(bad); err == nil {
			t.Errorf("checkDomain(%q) accepted", bad)
		}
	}
}

// dnsOracle is an independent statement of the same rule as validHostName.
var dnsOracle = regexp.MustCompile(`^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// FuzzHostName checks validHostName against a regular expression of the
// same rule, and that whatever it accepts resolves without surprises.
func FuzzHostName(f *testing.F) {
	for _, s := range []string{"a.corp.internal", "x.a.corp.internal", "corp.internal", "-a.b", "a..b", strings.Repeat("a", 64), "A.b", "a.b.", "*.corp.internal", "\xff.b"} {
		f.Add(s)
	}
	cat := testCatalog(f)
	f.Fuzz(func(t *testing.T, name string) {
		got := validHostName(name)
		if want := len(name) <= 253 && dnsOracle.MatchString(name); got != want {
			t.Fatalf("validHostName(%q) = %v; the oracle says %v", name, got, want)
		}
		m, ok, err := cat.resolveDest(name, func(netip.Addr) (string, bool) { return "", false })
		if err != nil {
			var ae *apiError
			if !errors.As(err, &ae) || ae.status != 400 {
				t.Fatalf("resolveDest(%q) error %v is not a 400", name, err)
			}
			return
		}
		if ok && m.name != "" && (!validHostName(m.name) || !strings.HasSuffix(m.name, ".corp.internal")) {
			t.Fatalf("resolveDest(%q) = name %q", name, m.name)
		}
	})
}

// testCatalog holds apps corp (*.corp.internal and exact
// intranet.corp.internal), team (*.team.corp.internal), wiki
// (wiki.corp.internal) and db (198.51.100.0/24).
func testCatalog(tb testing.TB) *catalog {
	tb.Helper()
	apps := []store.App{
		{ID: "app_corp", Name: "corp", Domains: []string{"*.corp.internal", "intranet.corp.internal"},
			VirtualIPs: map[string]netip.Addr{"intranet.corp.internal": netip.MustParseAddr("100.96.0.1")}},
		{ID: "app_team", Name: "team", Domains: []string{"*.team.corp.internal"}},
		{ID: "app_wiki", Name: "wiki", Domains: []string{"wiki.corp.internal"},
			VirtualIPs: map[string]netip.Addr{"wiki.corp.internal": netip.MustParseAddr("100.96.0.2")}},
		{ID: "app_db", Name: "db", Addresses: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}},
	}
	cat, err := buildCatalog(apps, nil, nil)
	if err != nil {
		tb.Fatal(err)
	}
	return cat
}

func TestResolveDest(t *testing.T) {
	cat := testCatalog(t)
	vipNames := map[netip.Addr]string{
		netip.MustParseAddr("100.96.0.9"):  "a.corp.internal",
		netip.MustParseAddr("100.96.0.10"): "gone.elsewhere.internal", // its app was removed
	}
	vipName := func(ip netip.Addr) (string, bool) { n, ok := vipNames[ip]; return n, ok }
	tests := []struct {
		dest     string
		app      string // "" for no match
		name     string
		badInput bool
	}{
		{dest: "corp", app: "corp"},
		{dest: "wiki.corp.internal", app: "wiki"},
		{dest: "WIKI.corp.internal.", app: "wiki"},
		{dest: "intranet.corp.internal", app: "corp"},
		{dest: "a.corp.internal", app: "corp", name: "a.corp.internal"},
		{dest: "x.a.corp.internal", app: "corp", name: "x.a.corp.internal"},
		{dest: "x.wiki.corp.internal", app: "corp", name: "x.wiki.corp.internal"},
		{dest: "x.team.corp.internal", app: "team", name: "x.team.corp.internal"},
		{dest: "y.x.team.corp.internal", app: "team", name: "y.x.team.corp.internal"},
		{dest: "team.corp.internal", app: "corp", name: "team.corp.internal"},
		{dest: "corp.internal"},
		{dest: "internal"},
		{dest: "other.internal"},
		{dest: "100.96.0.2", app: "wiki"},
		{dest: "100.96.0.9", app: "corp", name: "a.corp.internal"},
		{dest: "::ffff:100.96.0.9", app: "corp", name: "a.corp.internal"},
		{dest: "100.96.0.10"},
		{dest: "100.96.0.11"},
		{dest: "198.51.100.20", app: "db"},
		{dest: "a_b.corp.internal", badInput: true},
		{dest: "a..corp.internal", badInput: true},
		{dest: "*.corp.internal", badInput: true},
	}
	for _, tt := range tests {
		m, ok, err := cat.resolveDest(tt.dest, vipName)
		switch {
		case tt.badInput:
			if err == nil {
				t.Errorf("resolveDest(%q) = %v, %v; want a 400", tt.dest, m.app.Name, ok)
			}
		case err != nil:
			t.Errorf("resolveDest(%q): %v", tt.dest, err)
		case tt.app == "" && ok:
			t.Errorf("resolveDest(%q) = app %s; want no match", tt.dest, m.app.Name)
		case tt.app != "" && (!ok || m.app.Name != tt.app || m.name != tt.name):
			t.Errorf("resolveDest(%q) = app %q name %q (%v); want app %q name %q", tt.dest, m.app.Name, m.name, ok, tt.app, tt.name)
		}
	}
	// Exports grant whole apps: the wildcard's app, without the name.
	if app, ok := cat.resolve("a.corp.internal"); !ok || app.Name != "corp" {
		t.Errorf("resolve(a.corp.internal) = %q, %v", app.Name, ok)
	}
}

func TestStillMatches(t *testing.T) {
	cat := testCatalog(t)
	grant := func(app api.AppID, name string) store.Grant {
		return store.Grant{Grant: api.Grant{Name: name}, AppID: app}
	}
	tests := []struct {
		g    store.Grant
		lost bool
	}{
		{grant("app_wiki", ""), false},
		{grant("app_corp", "a.corp.internal"), false},
		{grant("app_corp", "x.team.corp.internal"), true}, // a longer wildcard has it
		{grant("app_corp", "wiki.corp.internal"), true},   // an exact domain has it
		{grant("app_corp", "a.other.internal"), true},     // nobody serves it
	}
	for _, tt := range tests {
		if why := cat.stillMatches(tt.g); (why != "") != tt.lost {
			t.Errorf("stillMatches(%s %q) = %q; want lost %v", tt.g.AppID, tt.g.Name, why, tt.lost)
		}
	}
}

func TestDeviceDomainsVersion(t *testing.T) {
	a := []store.App{
		{Name: "b", Domains: []string{"b.x.y"}, Addresses: []netip.Prefix{netip.MustParsePrefix("198.51.100.1/24")}},
		{Name: "a", Domains: []string{"*.x.y"}},
	}
	b := []store.App{a[1], a[0]}
	da, db := deviceDomains(a), deviceDomains(b)
	if da.Version != db.Version || da.Prefixes[0] != netip.MustParsePrefix("198.51.100.0/24") {
		t.Fatalf("order-dependent or unmasked: %+v vs %+v", da, db)
	}
	// Moving a name from the domains to an address list is a change.
	c := deviceDomains([]store.App{{Domains: []string{"198.51.100.0/24"}}})
	d := deviceDomains([]store.App{{Addresses: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}}})
	if c.Version == d.Version {
		t.Fatal("domains and prefixes hash alike")
	}
	if e := deviceDomains(nil); e.Domains == nil || e.Prefixes == nil {
		t.Fatalf("empty lists must be [] on the wire, not null: %+v", e)
	}
}

func TestNameLimiter(t *testing.T) {
	t0 := time.Date(2026, 11, 23, 9, 0, 0, 0, time.UTC)
	l := newNameLimiter(3, 10*time.Second)
	steps := []struct {
		dev  api.DeviceID
		at   time.Duration
		ok   bool
		wait time.Duration
	}{
		{"d1", 0, true, 0},
		{"d1", 0, true, 0},
		{"d1", 0, true, 0},
		{"d1", 0, false, 10 * time.Second},
		{"d2", 0, true, 0}, // another device has its own bucket
		{"d1", 4 * time.Second, false, 6 * time.Second},
		{"d1", 10 * time.Second, true, 0},
		{"d1", 10 * time.Second, false, 10 * time.Second},
		{"d1", 5 * time.Second, false, 10 * time.Second}, // the clock went back: nothing refills
		{"d1", time.Hour, true, 0},                       // full again, never more than the burst
		{"d1", time.Hour, true, 0},
		{"d1", time.Hour, true, 0},
		{"d1", time.Hour, false, 10 * time.Second},
	}
	for i, s := range steps {
		ok, wait := l.allow(s.dev, t0.Add(s.at))
		if ok != s.ok || wait != s.wait {
			t.Fatalf("step %d (%s at %v) = %v, %v; want %v, %v", i, s.dev, s.at, ok, wait, s.ok, s.wait)
		}
	}
	// Pruning forgets only full buckets.
	l.mu.Lock()
	l.pruneLocked(t0.Add(time.Hour))
	_, d1 := l.buckets["d1"]
	_, d2 := l.buckets["d2"]
	l.mu.Unlock()
	if !d1 || d2 {
		t.Fatalf("after prune d1 kept %v (want true), d2 kept %v (want false)", d1, d2)
	}
}
