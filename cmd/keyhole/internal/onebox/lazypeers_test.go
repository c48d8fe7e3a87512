package onebox

import (
	"context"
	"fmt"
	"net/http/httptest"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/internal/key"
	"github.com/keyhole-net/keyhole/internal/wg"
)

// wgPeers returns the client keys the gateway's wireguard-go holds peers
// for (what `wg show` would list).
func (f *fixture) wgPeers(t *testing.T) []key.WGPublic {
	t.Helper()
	reports, err := f.gw.PeerReports()
	if err != nil {
		t.Fatal(err)
	}
	var ks []key.WGPublic
	for _, r := range reports {
		ks = append(ks, r.PublicKey)
	}
	return ks
}

// gatewayMetric reads one sample of the gateway's /metrics, or 0.
func (f *fixture) gatewayMetric(t *testing.T, series string) float64 {
	t.Helper()
	rec := httptest.NewRecorder()
	f.gw.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindStringSubmatch(rec.Body.String())
	if m == nil {
		return 0
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func hasKey(ks []key.WGPublic, k key.WGPublic) bool {
	return slices.ContainsFunc(ks, k.Equal)
}

// TestLazyPeers: the gateway holds no WireGuard peer for a granted client
// until the client's first handshake, which still succeeds on the first
// try; an idle peer goes away (its grant stays) and comes back on the next
// handshake; a key without a grant never gets a peer.
func TestLazyPeers(t *testing.T) {
	f := newFixture(t, fixtureOpts{peerIdle: 500 * time.Millisecond})
	ctx := context.Background()
	const added = `keyhole_gateway_peer_materializations_total{outcome="added"}`

	c := f.login(t, "alice", false)
	if ks := f.wgPeers(t); len(ks) != 0 {
		t.Fatalf("peers before any grant: %v", ks)
	}
	start := time.Now()
	conn, err := c.Dial(ctx, "tcp", "echo.corp.internal", f.echo.Port())
	if err != nil {
		t.Fatalf("first connection through a lazy gateway: %v", err)
	}
	if err := echoOnce(conn, "hello"); err != nil {
		t.Fatal(err)
	}
	first := time.Since(start)
	grants := f.gw.Table().Grants()
	if len(grants) != 1 {
		t.Fatalf("grants %v", grants)
	}
	clientKey := grants[0].ClientWGKey
	if !hasKey(f.wgPeers(t), clientKey) || f.gatewayMetric(t, added) != 1 {
		t.Fatalf("peer not added on the handshake: peers %v, added %v", f.wgPeers(t), f.gatewayMetric(t, added))
	}
	sum := f.gatewayMetric(t, "keyhole_gateway_peer_materialize_seconds_sum")
	t.Logf("first connection (grant, handshake, TCP, echo) in %v; adding the peer delayed the handshake by %v", first.Round(time.Microsecond), time.Duration(sum*float64(time.Second)).Round(time.Microsecond))

	// An open connection keeps the peer, however quiet.
	for end := time.Now().Add(1500 * time.Millisecond); time.Now().Before(end); {
		if !hasKey(f.wgPeers(t), clientKey) {
			t.Fatal("peer removed under an open connection")
		}
		<-time.After(50 * time.Millisecond)
	}
	if err := echoOnce(conn, "still there"); err != nil {
		t.Fatalf("open connection after idle periods: %v", err)
	}
	conn.Close()

	// Idle, no connection: the peer goes, the grant stays.
	eventually(t, 10*time.Second, func() error {
		if hasKey(f.wgPeers(t), clientKey) {
			return fmt.Errorf("peer still configured")
		}
		return nil
	})
	if !f.gw.Table().HasPeer(clientKey) {
		t.Fatal("grant went with the idle peer")
	}

	// The client comes back (same device, same key, a fresh WireGuard
	// session as after a sleep): its handshake adds the peer again.
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	c2, err := f.box.Login(ctx, ClientOptions{User: "alice", Password: password, Dir: c.Dir})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Stop()
	start = time.Now()
	conn, err = c2.Dial(ctx, "tcp", "echo.corp.internal", f.echo.Port())
	if err != nil {
		t.Fatalf("connection after the peer was removed: %v", err)
	}
	defer conn.Close()
	if err := echoOnce(conn, "again"); err != nil {
		t.Fatal(err)
	}
	t.Logf("connection re-adding the peer in %v", time.Since(start).Round(time.Microsecond))
	if !hasKey(f.wgPeers(t), clientKey) || f.gatewayMetric(t, added) != 2 {
		t.Fatalf("peer not added again: peers %v, added %v", f.wgPeers(t), f.gatewayMetric(t, added))
	}

	// A real WireGuard device whose key holds no grant: its initiations
	// (valid mac1, valid static) never make a peer.
	stranger, err := key.NewWGPrivate()
	if err != nil {
		t.Fatal(err)
	}
	sn, err := wg.New(wg.Config{PrivateKey: stranger, Addresses: []netip.Addr{netip.MustParseAddr("100.64.99.99")}})
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	if err := sn.UpsertPeer(wg.Peer{
		PublicKey:  f.gw.WGPublicKey(),
		Endpoint:   netip.AddrPortFrom(Loopback, f.gw.Port()),
		AllowedIPs: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")},
	}); err != nil {
		t.Fatal(err)
	}
	const noGrant = `keyhole_gateway_peer_materializations_total{outcome="no_grant"}`
	before := f.gatewayMetric(t, noGrant)
	dctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if _, err := sn.DialContext(dctx, "tcp", netip.AddrPortFrom(netip.MustParseAddr("100.96.0.1"), 80)); err == nil {
		t.Fatal("a key without a grant got a connection")
	}
	eventually(t, 5*time.Second, func() error {
		if n := f.gatewayMetric(t, noGrant); n <= before {
			return fmt.Errorf("no_grant count %v, want > %v", n, before)
		}
		return nil
	})
	if hasKey(f.wgPeers(t), stranger.Public()) {
		t.Fatal("a key without a grant got a peer")
	}
}

// TestIdleClientLetsPeerGo: a client that is online and holds its grant,
// but has no connection open, sends no keepalives, so the gateway lets its
// WireGuard peer go (and holds under 1 KiB for it instead of ~30 KiB);
// while a connection is open the keepalive is on and the peer stays.
func TestIdleClientLetsPeerGo(t *testing.T) {
	const keepalive, peerIdle = time.Second, 2500 * time.Millisecond // a keepalive well inside the idle time
	f := newFixture(t, fixtureOpts{peerIdle: peerIdle})
	ctx := context.Background()
	c, err := f.box.Login(ctx, ClientOptions{User: "alice", Password: password, Keepalive: keepalive})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	keepaliveOf := func() (time.Duration, bool) {
		st := c.Status()
		if len(st.Peers) != 1 {
			return 0, false
		}
		return time.Duration(st.Peers[0].KeepaliveSeconds) * time.Second, true
	}

	conn, err := c.Dial(ctx, "tcp", "echo.corp.internal", f.echo.Port())
	if err != nil {
		t.Fatal(err)
	}
	if err := echoOnce(conn, "hello"); err != nil {
		t.Fatal(err)
	}
	clientKey := f.gw.Table().Grants()[0].ClientWGKey
	eventually(t, 5*time.Second, func() error {
		if k, ok := keepaliveOf(); !ok || k != keepalive {
			return fmt.Errorf("keepalive %v with a connection open, want %v", k, keepalive)
		}
		return nil
	})
	// Quiet but open: the keepalive keeps the peer past the idle time.
	<-time.After(2 * peerIdle)
	if !hasKey(f.wgPeers(t), clientKey) {
		t.Fatal("peer removed under an open connection")
	}
	if err := echoOnce(conn, "still there"); err != nil {
		t.Fatal(err)
	}
	conn.Close()

	eventually(t, 5*time.Second, func() error {
		if k, ok := keepaliveOf(); !ok || k != 0 {
			return fmt.Errorf("keepalive %v (peer configured: %v) with no connection, want off", k, ok)
		}
		return nil
	})
	eventually(t, 10*time.Second, func() error {
		if hasKey(f.wgPeers(t), clientKey) {
			return fmt.Errorf("the gateway still holds the idle client's peer")
		}
		return nil
	})
	if !f.gw.Table().HasPeer(clientKey) {
		t.Fatal("grant went with the idle peer")
	}
	// The next connection re-adds the peer: TestLazyPeers. (With the
	// default idle time of 3.5 min the client's WireGuard session has
	// expired by then and its next packet is a handshake; with this
	// test's 2.5 s it has not, and the client would wait up to 15 s for
	// WireGuard to notice.)
}
