package gateway

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/keyhole-net/keyhole/internal/key"
	"github.com/keyhole-net/keyhole/internal/nat"
	"github.com/keyhole-net/keyhole/internal/wg"
	"golang.org/x/time/rate"
)

// Lazy peers (docs/gateway.md). A grant costs an entry in the grant table;
// a wireguard-go peer costs ~30 KiB, most of it queues wireguard-go sizes
// at compile time. So the gateway configures a client's WireGuard peer only
// while the client is active: the first handshake initiation from a client
// with a live grant adds the peer before wireguard-go reads the packet, and
// a peer idle for longer than WireGuard's session lifetime, with no open
// connections, is removed again (its grants stay).

const (
	// DefaultPeerIdle is how long a lazily added peer stays without a
	// handshake, traffic or open connection. It is longer than
	// WireGuard's RejectAfterTime (180 s): by then the client's session
	// has expired, so removing the peer loses nothing — the client's next
	// packet needs a new handshake anyway, which adds the peer again.
	DefaultPeerIdle = 210 * time.Second

	// dhPerSecond and dhBurst bound the X25519 operations spent on
	// initiations (one per initiation that passed mac1, ~0.1 ms on the
	// receive path): at most ~10 % of a core. 10,000 active clients
	// rekeying every two minutes need ~85/s; all of them coming back at
	// once (a gateway restart) are through in ~10 s. Over the budget,
	// initiations go to wireguard-go unexamined: peers already configured
	// still handshake, new ones wait for the client's retry (5 s).
	dhPerSecond = 1000
	dhBurst     = 200
	// maxMaterializing bounds peers being added at once; more initiations
	// from unconfigured clients are dropped (the client retries).
	maxMaterializing = 32
)

// lazyPeers adds and removes the gateway's wireguard-go peers on demand.
type lazyPeers struct {
	table   *GrantTable
	net     dataPlane
	dec     *wg.InitiationDecoder
	log     *slog.Logger
	metrics *metrics
	now     func() time.Time
	idle    time.Duration

	dh      *rate.Limiter // X25519 operations on the receive path
	logRate *rate.Limiter // debug logs about unknown initiators
	work    chan struct{} // semaphore of running materializations
	bg      sync.WaitGroup

	// setMu serialises adding and removing lazy peers, across the UAPI
	// call, so that a peer is added only while a grant needs it. The
	// receive path never takes it (a UAPI call can wait on wireguard-go).
	setMu sync.Mutex

	mu     sync.Mutex // guards active, closed; never held across a UAPI call
	active map[key.WGPublic]*activePeer
	closed bool
}

// activePeer is a configured (materialized) client peer and what the last
// sweep saw of it.
type activePeer struct {
	lastActive    time.Time
	rx            uint64
	lastHandshake time.Time
}

func newLazyPeers(g *Gateway, n dataPlane) *lazyPeers {
	idle := g.cfg.PeerIdle
	if idle <= 0 {
		idle = DefaultPeerIdle
	}
	return &lazyPeers{
		table:   g.table,
		net:     n,
		dec:     wg.NewInitiationDecoder(g.wgKey),
		log:     g.log,
		metrics: g.metrics,
		now:     g.now,
		idle:    idle,
		dh:      rate.NewLimiter(dhPerSecond, dhBurst),
		logRate: rate.NewLimiter(1, 5),
		work:    make(chan struct{}, maxMaterializing),
		active:  make(map[key.WGPublic]*activePeer),
	}
}

// onInitiation is the Bind's initiation hook. It runs on a receive path:
// a keyed hash for every initiation, one DH for those that pass it, and a
// goroutine (bounded) for those whose peer must be added first.
func (l *lazyPeers) onInitiation(in *nat.Initiation) nat.Verdict {
	start := time.Now()
	if err := l.dec.CheckMAC1(in.Packet); err != nil {
		l.debug("handshake initiation dropped", "from", in.From, "err", err)
		return nat.Drop // wireguard-go would drop it too
	}
	if !l.dh.Allow() {
		l.metrics.materialize.WithLabelValues("over_budget").Inc()
		return nat.Pass
	}
	pub, err := l.dec.Static(in.Packet)
	if err != nil {
		l.debug("handshake initiation dropped", "from", in.From, "err", err)
		return nat.Drop
	}
	l.mu.Lock()
	ap, closed := l.active[pub], l.closed
	if ap != nil {
		ap.lastActive = l.now()
	}
	l.mu.Unlock()
	switch {
	case ap != nil:
		return nat.Pass
	case closed:
		return nat.Drop
	}
	if _, ok := l.table.PeerAddr(pub); !ok {
		l.metrics.materialize.WithLabelValues("no_grant").Inc()
		l.debug("handshake initiation from a key without a live grant dropped", "from", in.From, "client_key", pub)
		return nat.Drop
	}
	select {
	case l.work <- struct{}{}:
	default:
		l.metrics.materialize.WithLabelValues("busy").Inc()
		return nat.Drop // the client retries in 5 s
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		<-l.work
		return nat.Drop
	}
	l.bg.Add(1)
	l.mu.Unlock()
	go l.materialize(pub, in, start)
	return nat.Hold
}

// materialize adds the peer for pub if a live grant still needs it, then
// hands the held initiation to wireguard-go.
func (l *lazyPeers) materialize(pub key.WGPublic, in *nat.Initiation, start time.Time) {
	defer l.bg.Done()
	defer func() { <-l.work }()
	added, err := l.add(pub)
	if err != nil {
		l.log.Warn("adding client peer", "client_key", pub, "err", err)
		return
	}
	if !added {
		l.metrics.materialize.WithLabelValues("no_grant").Inc()
		return // revoked meanwhile: the initiation goes nowhere
	}
	in.Deliver()
	took := time.Since(start)
	l.metrics.materialize.WithLabelValues("added").Inc()
	l.metrics.materializeSeconds.Observe(took.Seconds())
	l.log.Debug("client peer added on handshake", "client_key", pub, "from", in.From, "relayed", in.Relayed, "took", took)
}

// add configures the peer pub if a live grant needs it. It reports whether
// the peer is configured.
func (l *lazyPeers) add(pub key.WGPublic) (bool, error) {
	l.setMu.Lock()
	defer l.setMu.Unlock()
	ip, ok := l.table.PeerAddr(pub)
	if !ok {
		return false, nil
	}
	l.mu.Lock()
	_, have := l.active[pub]
	l.mu.Unlock()
	if have {
		return true, nil
	}
	if err := l.net.UpsertPeer(wg.Peer{PublicKey: pub, AllowedIPs: []netip.Prefix{netip.PrefixFrom(ip, ip.BitLen())}}); err != nil {
		return false, fmt.Errorf("lazy peer: %w", err)
	}
	l.mu.Lock()
	l.active[pub] = &activePeer{lastActive: l.now()}
	n := len(l.active)
	l.mu.Unlock()
	l.metrics.peers.Set(float64(n))
	return true, nil
}

// update applies a grant's peer change to a configured peer (its allowed
// IP); an unconfigured peer stays so until its client handshakes.
func (l *lazyPeers) update(pub key.WGPublic, ip netip.Addr) error {
	l.setMu.Lock()
	defer l.setMu.Unlock()
	l.mu.Lock()
	_, have := l.active[pub]
	l.mu.Unlock()
	if !have {
		return nil
	}
	if err := l.net.UpsertPeer(wg.Peer{PublicKey: pub, AllowedIPs: []netip.Prefix{netip.PrefixFrom(ip, ip.BitLen())}}); err != nil {
		return fmt.Errorf("lazy peer: %w", err)
	}
	return nil
}

// remove takes the peer out of wireguard-go if it is configured and
// still(k) holds, checked under setMu so that no concurrent add slips in
// between. The peer's grants are not touched.
func (l *lazyPeers) remove(k key.WGPublic, still func() bool) error {
	l.setMu.Lock()
	defer l.setMu.Unlock()
	l.mu.Lock()
	_, have := l.active[k]
	l.mu.Unlock()
	if !have || !still() {
		return nil
	}
	if err := l.net.RemovePeer(k); err != nil {
		return fmt.Errorf("lazy peer: %w", err)
	}
	l.mu.Lock()
	delete(l.active, k)
	n := len(l.active)
	l.mu.Unlock()
	l.metrics.peers.Set(float64(n))
	return nil
}

// has reports whether peer k is configured in wireguard-go.
func (l *lazyPeers) has(k key.WGPublic) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.active[k] != nil
}

// run removes idle peers until ctx ends, then waits for running
// materializations.
func (l *lazyPeers) run(ctx context.Context) {
	every := min(max(l.idle/4, 10*time.Millisecond), 30*time.Second)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			l.mu.Lock()
			l.closed = true
			l.mu.Unlock()
			l.bg.Wait()
			return
		case <-t.C:
		}
		l.sweep()
	}
}

// sweep notes which configured peers saw a handshake or received bytes
// since the last sweep, and removes those idle for l.idle with no open
// connection.
func (l *lazyPeers) sweep() {
	l.mu.Lock()
	empty := len(l.active) == 0
	l.mu.Unlock()
	if empty {
		return
	}
	peers, err := l.net.Peers()
	if err != nil {
		l.log.Debug("reading peers for the idle sweep", "err", err)
		return
	}
	now := l.now()
	var idle []key.WGPublic
	l.mu.Lock()
	for _, p := range peers {
		ap := l.active[p.PublicKey]
		if ap == nil {
			continue
		}
		if p.RxBytes != ap.rx || p.LastHandshake.After(ap.lastHandshake) {
			ap.rx, ap.lastHandshake, ap.lastActive = p.RxBytes, p.LastHandshake, now
		}
		if now.Sub(ap.lastActive) >= l.idle {
			idle = append(idle, p.PublicKey)
		}
	}
	l.mu.Unlock()
	for _, k := range idle {
		err := l.remove(k, func() bool {
			l.mu.Lock()
			ap := l.active[k]
			quiet := ap != nil && now.Sub(ap.lastActive) >= l.idle
			l.mu.Unlock()
			return quiet && l.table.OpenConns(k) == 0
		})
		if err != nil {
			l.log.Warn("removing idle client peer", "client_key", k, "err", err)
			continue
		}
		if !l.has(k) {
			l.log.Debug("idle client peer removed; its grants stay", "client_key", k, "idle", l.idle)
		}
	}
}

// debug logs at debug level, at most a few lines a second: initiations
// are untrusted input anyone can send.
func (l *lazyPeers) debug(msg string, args ...any) {
	if l.logRate.Allow() {
		l.log.Debug(msg, args...)
	}
}

// reapLazyPeer removes peer k, whose grace period after its last grant has
// passed, unless a grant needs it again.
func (g *Gateway) reapLazyPeer(k key.WGPublic) {
	if err := g.lazy.remove(k, func() bool { return !g.table.HasPeer(k) }); err != nil {
		g.log.Warn("removing peer", "err", err)
	}
}
