package gateway

import (
	"errors"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/key"
)

func mustKey(tb testing.TB) key.WGPublic {
	k, err := key.NewWGPrivate()
	if err != nil {
		tb.Fatal(err)
	}
	return k.Public()
}

type fakeClock struct{ t atomic.Int64 }

func (c *fakeClock) now() time.Time      { return time.Unix(0, c.t.Load()).UTC() }
func (c *fakeClock) add(d time.Duration) { c.t.Add(int64(d)) }

type closer struct{ closed atomic.Bool }

func (c *closer) Close() error { c.closed.Store(true); return nil }

func TestAuthorize(t *testing.T) {
	clk := &fakeClock{}
	clk.t.Store(time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC).UnixNano())
	tbl := NewGrantTable(clk.now)
	alice := netip.MustParseAddr("100.64.0.1")
	kA := mustKey(t)
	tbl.Upsert(api.GatewayGrant{
		ID: "g-wiki", ClientIP: alice, ClientWGKey: kA, App: "wiki", NotAfter: clk.now().Add(time.Minute),
		Targets: []api.GrantTarget{{Prefix: netip.MustParsePrefix("100.96.0.1/32"), Host: "wiki.corp.internal"}},
		Ports:   []api.PortRange{{Proto: "tcp", First: 443, Last: 443}},
	})
	tbl.Upsert(api.GatewayGrant{
		ID: "g-net", ClientIP: alice, ClientWGKey: kA, App: "lab", NotAfter: clk.now().Add(2 * time.Minute),
		Targets: []api.GrantTarget{{Prefix: netip.MustParsePrefix("198.51.100.0/24")}},
		Ports:   []api.PortRange{{Proto: "tcp", First: 8000, Last: 8010}, {Proto: "udp", First: 53, Last: 53}},
	})
	tests := []struct {
		name     string
		src      string
		dst      string
		proto    string
		want     error
		wantHost string
	}{
		{name: "domain app", src: "100.64.0.1", dst: "100.96.0.1:443", proto: "tcp", wantHost: "wiki.corp.internal"},
		{name: "domain app other port", src: "100.64.0.1", dst: "100.96.0.1:22", proto: "tcp", want: ErrPort},
		{name: "domain app over udp", src: "100.64.0.1", dst: "100.96.0.1:443", proto: "udp", want: ErrPort},
		{name: "cidr app in range", src: "100.64.0.1", dst: "198.51.100.9:8005", proto: "tcp"},
		{name: "cidr app udp", src: "100.64.0.1", dst: "198.51.100.9:53", proto: "udp"},
		{name: "cidr app range end", src: "100.64.0.1", dst: "198.51.100.255:8010", proto: "tcp"},
		{name: "cidr app out of range port", src: "100.64.0.1", dst: "198.51.100.9:8011", proto: "tcp", want: ErrPort},
		{name: "outside every target", src: "100.64.0.1", dst: "198.51.101.1:8005", proto: "tcp", want: ErrDestination},
		{name: "other overlay address", src: "100.64.0.1", dst: "100.96.0.2:443", proto: "tcp", want: ErrDestination},
		{name: "unknown client", src: "100.64.0.2", dst: "100.96.0.1:443", proto: "tcp", want: ErrNoGrant},
		{name: "v4-mapped source", src: "::ffff:100.64.0.1", dst: "100.96.0.1:443", proto: "tcp", wantHost: "wiki.corp.internal"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := tbl.Authorize(netip.MustParseAddr(tt.src), netip.MustParseAddrPort(tt.dst), tt.proto)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if err == nil && a.Host != tt.wantHost {
				t.Fatalf("host = %q, want %q", a.Host, tt.wantHost)
			}
		})
	}
	// Ping: any port, but only granted addresses of the client's own grants.
	for _, r := range []struct {
		src, dst string
		want     bool
	}{
		{"100.64.0.1", "100.96.0.1", true},
		{"100.64.0.1", "198.51.100.77", true},
		{"100.64.0.1", "100.96.0.2", false},
		{"100.64.0.2", "100.96.0.1", false},
	} {
		if got := tbl.Reachable(netip.MustParseAddr(r.src), netip.MustParseAddr(r.dst)); got != r.want {
			t.Errorf("Reachable(%s, %s) = %v, want %v", r.src, r.dst, got, r.want)
		}
	}
	// Expiry on the table's own clock.
	clk.add(time.Minute)
	if tbl.Reachable(alice, netip.MustParseAddr("100.96.0.1")) {
		t.Error("Reachable after NotAfter")
	}
	if _, err := tbl.Authorize(alice, netip.MustParseAddrPort("100.96.0.1:443"), "tcp"); !errors.Is(err, ErrExpired) {
		t.Fatalf("after NotAfter: %v", err)
	}
	if _, err := tbl.Authorize(alice, netip.MustParseAddrPort("198.51.100.1:8000"), "tcp"); err != nil {
		t.Fatalf("longer grant: %v", err)
	}
}

func TestRemoveClosesConnectionsAndPeers(t *testing.T) {
	clk := &fakeClock{}
	clk.t.Store(time.Now().UnixNano())
	tbl := NewGrantTable(clk.now)
	k := mustKey(t)
	g := func(id api.GrantID, life time.Duration) api.GatewayGrant {
		return api.GatewayGrant{ID: id, ClientIP: netip.MustParseAddr("100.64.0.1"), ClientWGKey: k, NotAfter: clk.now().Add(life),
			Targets: []api.GrantTarget{{Prefix: netip.MustParsePrefix("100.96.0.1/32")}}, Ports: []api.PortRange{{Proto: "tcp", First: 1, Last: 1}}}
	}
	if ch := tbl.Upsert(g("a", time.Minute)); len(ch) != 1 || !ch[0].Add {
		t.Fatalf("first grant should add the peer: %v", ch)
	}
	if ch := tbl.Upsert(g("b", time.Second)); len(ch) != 0 {
		t.Fatalf("second grant of the same client must not touch the peer: %v", ch)
	}
	ca, cb := &closer{}, &closer{}
	if _, ok := tbl.Track("a", ca); !ok {
		t.Fatal("track a")
	}
	if _, ok := tbl.Track("b", cb); !ok {
		t.Fatal("track b")
	}
	clk.add(2 * time.Second)
	removed, ch := tbl.Expire()
	if len(removed) != 1 || removed[0].ID != "b" || !cb.closed.Load() || ca.closed.Load() || len(ch) != 0 {
		t.Fatalf("expire: removed %v, changes %v, closed a=%v b=%v", removed, ch, ca.closed.Load(), cb.closed.Load())
	}
	if _, ok := tbl.Track("b", &closer{}); ok {
		t.Fatal("tracked a connection on an expired grant")
	}
	removed, ch = tbl.Replace(nil)
	if len(removed) != 1 || !ca.closed.Load() || len(ch) != 1 || ch[0].Add {
		t.Fatalf("replace: removed %v, changes %v", removed, ch)
	}
	if tbl.Len() != 0 || tbl.Peers() != 0 || tbl.HasPeer(k) {
		t.Fatal("table not empty")
	}
}

// TestRekeyKeepsConnections: a device that rotates its WireGuard key gets
// its grants re-pushed with the new key; the grants move to the new peer
// (the old one goes once no grant needs it) and keep their connections.
func TestRekeyKeepsConnections(t *testing.T) {
	clk := &fakeClock{}
	clk.t.Store(time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC).UnixNano())
	tbl := NewGrantTable(clk.now)
	ip := netip.MustParseAddr("100.64.0.1")
	oldKey, newKey := mustKey(t), mustKey(t)
	g1 := api.GatewayGrant{ID: "g1", ClientIP: ip, ClientWGKey: oldKey, App: "wiki", NotAfter: clk.now().Add(time.Minute)}
	g2 := api.GatewayGrant{ID: "g2", ClientIP: ip, ClientWGKey: oldKey, App: "git", NotAfter: clk.now().Add(time.Minute)}
	tbl.Upsert(g1)
	tbl.Upsert(g2)
	conn := &closer{}
	if _, ok := tbl.Track("g1", conn); !ok {
		t.Fatal("track failed")
	}

	g1.ClientWGKey = newKey
	changes := tbl.Upsert(g1)
	if len(changes) != 1 || !changes[0].Add || !changes[0].Key.Equal(newKey) {
		t.Fatalf("first rekey changes = %+v; want only adding the new key (g2 still needs the old)", changes)
	}
	g2.ClientWGKey = newKey
	changes = tbl.Upsert(g2)
	if len(changes) != 1 || changes[0].Add || !changes[0].Key.Equal(oldKey) {
		t.Fatalf("second rekey changes = %+v; want only removing the old key", changes)
	}
	if tbl.HasPeer(oldKey) || !tbl.HasPeer(newKey) || tbl.Peers() != 1 {
		t.Errorf("peers after rekey: old %v new %v count %d", tbl.HasPeer(oldKey), tbl.HasPeer(newKey), tbl.Peers())
	}
	if conn.closed.Load() {
		t.Error("rekey closed a connection")
	}
	// The connection is still the grant's: a revocation closes it.
	tbl.Remove("g1")
	if !conn.closed.Load() {
		t.Error("revoking the rekeyed grant left its connection open")
	}
}
