package gateway

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/key"
	"github.com/keyhole-net/keyhole/internal/wg"
)

var lazyApp = netip.MustParseAddrPort("100.96.0.1:80")

// lazyRig is a gateway data plane with lazy peers (a wg.Net in forward mode
// whose TCP handler echoes) and a grant table, without a controller.
type lazyRig struct {
	table *GrantTable
	net   *wg.Net
	lazy  *lazyPeers
	pub   key.WGPublic
}

func newLazyRig(t *testing.T, idle time.Duration) *lazyRig {
	t.Helper()
	priv, err := key.NewWGPrivate()
	if err != nil {
		t.Fatal(err)
	}
	n, err := wg.New(wg.Config{PrivateKey: priv, Addresses: []netip.Addr{netip.MustParseAddr("100.112.0.1")}, Forward: true})
	if err != nil {
		t.Fatal(err)
	}
	var handlers sync.WaitGroup
	t.Cleanup(func() { n.Close(); handlers.Wait() })
	n.SetTCPHandler(func(r *wg.TCPRequest) {
		c, err := r.Accept()
		if err != nil {
			return
		}
		handlers.Go(func() { defer c.Close(); _, _ = io.Copy(c, c) })
	})
	g := &Gateway{
		cfg: Config{PeerIdle: idle}, log: slog.New(slog.DiscardHandler), now: time.Now,
		table: NewGrantTable(time.Now), metrics: newMetrics(), wgKey: priv,
	}
	l := newLazyPeers(g, n)
	n.Bind().SetInitiationHook(l.onInitiation)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); l.run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return &lazyRig{table: g.table, net: n, lazy: l, pub: priv.Public()}
}

// client starts a real WireGuard client device with key k towards the rig.
func (r *lazyRig) client(t *testing.T, k key.WGPrivate, ip netip.Addr) *wg.Net {
	t.Helper()
	c, err := wg.New(wg.Config{PrivateKey: k, Addresses: []netip.Addr{ip}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.UpsertPeer(wg.Peer{
		PublicKey:  r.pub,
		Endpoint:   netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), r.net.Port()),
		AllowedIPs: []netip.Prefix{netip.PrefixFrom(lazyApp.Addr(), 32)},
	}); err != nil {
		t.Fatal(err)
	}
	return c
}

func (r *lazyRig) grant(id api.GrantID, k key.WGPublic, ip netip.Addr) {
	r.table.Upsert(api.GatewayGrant{
		ID: id, ClientIP: ip, ClientWGKey: k, App: "echo", NotAfter: time.Now().Add(time.Hour),
		Targets: []api.GrantTarget{{Prefix: netip.PrefixFrom(lazyApp.Addr(), 32)}},
		Ports:   []api.PortRange{{Proto: "tcp", First: 80, Last: 80}},
	})
}

func (r *lazyRig) configured(t *testing.T, k key.WGPublic) bool {
	t.Helper()
	peers, err := r.net.Peers()
	if err != nil {
		t.Fatal(err)
	}
	return slices.ContainsFunc(peers, func(p wg.PeerStatus) bool { return p.PublicKey.Equal(k) })
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		<-time.After(10 * time.Millisecond)
	}
}

func echo(t *testing.T, c *wg.Net, timeout time.Duration) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	conn, err := c.DialContext(ctx, "tcp", lazyApp)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(conn, "ping"); err != nil {
		return err
	}
	buf := make([]byte, 4)
	_, err = io.ReadFull(conn, buf)
	return err
}

func TestLazyPeerLifecycle(t *testing.T) {
	r := newLazyRig(t, 300*time.Millisecond)
	ck, err := key.NewWGPrivate()
	if err != nil {
		t.Fatal(err)
	}
	ip := netip.MustParseAddr("100.64.0.2")
	r.grant("g1", ck.Public(), ip)
	if r.configured(t, ck.Public()) {
		t.Fatal("peer configured before any handshake")
	}
	c := r.client(t, ck, ip)
	// wireguard-go retries a lost initiation only after 5 s: under four
	// seconds (slack for -race on a busy machine) means the first one made
	// it.
	start := time.Now()
	if err := echo(t, c, 4*time.Second); err != nil {
		t.Fatalf("first connection: %v", err)
	}
	t.Logf("first connection in %v", time.Since(start))
	if !r.configured(t, ck.Public()) {
		t.Fatal("peer not configured after the handshake")
	}

	waitUntil(t, "the idle peer is removed", func() bool { return !r.configured(t, ck.Public()) && !r.lazy.has(ck.Public()) })
	if !r.table.HasPeer(ck.Public()) {
		t.Fatal("grant removed with the idle peer")
	}

	// A fresh session (the client restarted) adds the peer again.
	c.Close()
	c = r.client(t, ck, ip)
	if err := echo(t, c, 4*time.Second); err != nil {
		t.Fatalf("connection after the peer was removed: %v", err)
	}

	// Revoked: removing the grant leaves the configured peer to the
	// gateway's grace period, but no new session can add it back.
	r.table.Remove("g1")
	if err := r.lazy.remove(ck.Public(), func() bool { return !r.table.HasPeer(ck.Public()) }); err != nil {
		t.Fatal(err)
	}
	c.Close()
	c = r.client(t, ck, ip)
	if err := echo(t, c, 700*time.Millisecond); err == nil {
		t.Fatal("connection without a grant")
	}
	if r.configured(t, ck.Public()) {
		t.Fatal("peer configured for a revoked key")
	}
}

// TestLazyPeerExpiredGrant: a grant past its NotAfter but not yet swept
// from the table does not configure a peer (fail closed).
func TestLazyPeerExpiredGrant(t *testing.T) {
	r := newLazyRig(t, time.Minute)
	ck, err := key.NewWGPrivate()
	if err != nil {
		t.Fatal(err)
	}
	ip := netip.MustParseAddr("100.64.0.3")
	r.table.Upsert(api.GatewayGrant{
		ID: "old", ClientIP: ip, ClientWGKey: ck.Public(), App: "echo", NotAfter: time.Now().Add(-time.Second),
		Targets: []api.GrantTarget{{Prefix: netip.PrefixFrom(lazyApp.Addr(), 32)}},
		Ports:   []api.PortRange{{Proto: "tcp", First: 80, Last: 80}},
	})
	c := r.client(t, ck, ip)
	if err := echo(t, c, 500*time.Millisecond); err == nil {
		t.Fatal("connection under an expired grant")
	}
	if r.configured(t, ck.Public()) {
		t.Fatal("peer configured for an expired grant")
	}
}

// TestLazyPeersConcurrentClients brings many clients up at once, racing
// the idle sweep and revocations (run with -race).
func TestLazyPeersConcurrentClients(t *testing.T) {
	// The idle time is short enough for sweeps to run during the test and
	// long enough for a handshake under -race on a small machine.
	r := newLazyRig(t, time.Second)
	const n = 8
	var wgr sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		ck, err := key.NewWGPrivate()
		if err != nil {
			t.Fatal(err)
		}
		ip := netip.AddrFrom4([4]byte{100, 64, 1, byte(i + 1)})
		id := api.GrantID("g" + string(rune('a'+i)))
		r.grant(id, ck.Public(), ip)
		c := r.client(t, ck, ip)
		wgr.Go(func() {
			if err := echo(t, c, 8*time.Second); err != nil {
				errs <- err
			}
			r.table.Remove(id)
		})
	}
	wgr.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("client: %v", err)
	}
}
