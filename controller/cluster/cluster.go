// Package cluster joins the controllers that share one database into a
// hashicorp/memberlist cluster: membership (who is up, at which address)
// and fast, signed broadcasts between them, so that a revocation or a
// grant push issued on one controller reaches the gateway whose control
// stream another controller holds; and a direct channel (link.go), one
// persistent HTTP/2 connection in mutual TLS to each peer on the gossip
// port, for requests one controller answers while another waits (a grant
// push and the gateway's ack) and for news that should arrive now.
//
// The database stays the source of truth; gossip is the fast path, and it
// heals: every event is versioned by (origin, epoch, seq) so receivers
// deliver it at most once, a receiver re-gossips what it sees first
// (memberlist does not), and the periodic full-state exchange carries the
// set of live revocations, so a controller that missed a broadcast during a
// partition still learns of it.
//
// Security: UDP gossip is encrypted and authenticated with the shared
// SecretKey (memberlist's keyring); streams (joins, state exchange, the
// direct channel) are additionally mutual TLS, where each side must present a certificate of
// the cluster's CA with the URI SAN keyhole://controller/<id>; a node is
// admitted as a member only at an address where it proved that identity;
// and every event is signed by its origin's certificate key, so holding
// the gossip key alone lets no one join or inject events.
//
// What does not live here: the meaning of events (the controller defines
// its kinds and reads the database on receipt), gateway streams, and the
// CA itself (controller/ca issues the certificates).
package cluster

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

const (
	// DefaultPort is the gossip port (UDP and TCP) when Config.BindPort is 0.
	DefaultPort = 7946

	// AnyPort as Config.BindPort lets the kernel pick a free port (tests).
	AnyPort = -1

	// KindRevoke is the kind of the events Revoked sends: their body is
	// {"ids": [...]} (see Event.RevokedIDs), and they also travel in the
	// full-state exchange until they expire.
	KindRevoke = "revoke"

	// DefaultEventTTL is how long a Broadcast event lives when
	// Config.EventTTL is zero.
	DefaultEventTTL = time.Minute

	// maxEventLifetime caps an event's expiry, and so how long receivers
	// remember it. Grants live minutes; exports at most a day.
	maxEventLifetime = 7 * 24 * time.Hour

	// maxPacketSigBytes is the largest signature that leaves room in a
	// gossip packet for a full event (RSA-2048 just fits; P-256 is 72).
	maxPacketSigBytes = 256

	// maxIDLen bounds one revoked ID.
	maxIDLen = 128

	// Queue bounds. A message dropped from a full inbound queue is lost to
	// this node's handler unless it comes again (re-gossip, or the state
	// exchange for revocations).
	inboundQueue  = 1024
	memberQueue   = 256
	introQueue    = 64
	maxQueued     = 1024 // broadcasts waiting in the transmit queue
	maxPending    = 256  // verified-later events waiting for their origin's certificate
	pendingTTL    = 30 * time.Second
	sweepEvery    = 5 * time.Second // how often expired events are forgotten
	maxRejoinable = 64              // failed members the rejoin loop keeps trying
	rejoinFor     = 24 * time.Hour

	// gossipLabel separates this cluster's gossip from any other memberlist
	// traffic with the same key (it is authenticated data in the AEAD).
	gossipLabel = "keyhole-cluster"

	// delegateVersion is the version of this package's messages.
	delegateVersion = 1
)

// ErrClosed means the cluster was shut down.
var ErrClosed = errors.New("cluster is shut down")

// SecretKey is the cluster's shared gossip key: 16, 24 or 32 bytes, for
// AES-128, -192 or -256. It prints as [redacted] in every format and log.
type SecretKey []byte

// Format implements fmt.Formatter so no verb prints the key.
func (SecretKey) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, "[redacted]") }

// String returns "[redacted]".
func (SecretKey) String() string { return "[redacted]" }

// LogValue implements slog.LogValuer so no log prints the key.
func (SecretKey) LogValue() slog.Value { return slog.StringValue("[redacted]") }

// MarshalJSON keeps the key out of JSON dumps of a configuration.
func (SecretKey) MarshalJSON() ([]byte, error) { return []byte(`"[redacted]"`), nil }

// Timing holds memberlist's protocol intervals. A zero field takes
// memberlist's LAN default (DefaultLANConfig); LoopbackTiming returns
// short ones for tests on one machine.
type Timing struct {
	// ProbeInterval is how often a random member is probed (1s).
	ProbeInterval time.Duration
	// ProbeTimeout is how long a probe waits for its ack (500ms).
	ProbeTimeout time.Duration
	// SuspicionMult scales how long a suspect stays suspect (4).
	SuspicionMult int
	// GossipInterval is how often queued broadcasts are sent (200ms).
	GossipInterval time.Duration
	// PushPullInterval is how often a full-state exchange with a random
	// member runs (30s): the bound on healing a missed revocation.
	PushPullInterval time.Duration
	// StreamTimeout bounds a stream's dial, handshake and exchange (10s).
	StreamTimeout time.Duration
	// RejoinInterval is how often the seeds (when alone) and failed
	// members are joined again (30s), so a partition heals even after
	// memberlist has given up on the other side.
	RejoinInterval time.Duration
	// ReorderWait is how long an event that arrives ahead of an earlier
	// one from the same origin is held back, waiting for it, after the
	// origin's last new event (250ms; never more than 8 × ReorderWait).
	ReorderWait time.Duration
}

// LoopbackTiming returns intervals for clusters on one machine (tests):
// failures are found within a second or two and state is exchanged every
// 300ms.
func LoopbackTiming() Timing {
	return Timing{
		ProbeInterval:    200 * time.Millisecond,
		ProbeTimeout:     100 * time.Millisecond,
		SuspicionMult:    2,
		GossipInterval:   20 * time.Millisecond,
		PushPullInterval: 300 * time.Millisecond,
		StreamTimeout:    2 * time.Second,
		RejoinInterval:   200 * time.Millisecond,
		ReorderWait:      100 * time.Millisecond,
	}
}

// Config configures a Cluster.
type Config struct {
	// NodeName is this controller's ID (see ValidNodeName); it must be the
	// ID in Certificate's keyhole://controller/<id> URI SAN.
	NodeName string
	// BindAddr is the IP to listen on for gossip, UDP and TCP
	// (default "0.0.0.0").
	BindAddr string
	// BindPort is the gossip port: 0 means DefaultPort, AnyPort a free one.
	BindPort int
	// AdvertiseAddr is the IP other controllers reach this one at. Empty:
	// the bound address, or a private address of this host when bound to
	// all interfaces.
	AdvertiseAddr string
	// AdvertisePort is the port to advertise with AdvertiseAddr (default:
	// the bound port).
	AdvertisePort int
	// Join lists other controllers to join: "host:port" or, to check the
	// controller's ID too, "id/host:port". Joining is retried in the
	// background while this node is alone.
	Join []string
	// SecretKey is the shared gossip key; required.
	SecretKey SecretKey
	// Certificate is this controller's TLS certificate chain and key; the
	// leaf must chain to CAs and name NodeName. controller/ca's server
	// certificate, issued with ca.Config.ID set, is one.
	Certificate tls.Certificate
	// CAs holds the CA certificates peers' certificates must chain to.
	CAs *x509.CertPool
	// Handler receives other controllers' events, each at most once, one
	// at a time, and per origin in sequence order, except that an event
	// later than Timing.ReorderWait (or learned later from the state
	// exchange) is delivered when it comes. It runs on a goroutine owned
	// by the Cluster: while it runs, further events wait in a bounded
	// queue, so work that waits on a gateway belongs on the controller's
	// own goroutines. ctx ends when the cluster shuts down. Events of this
	// run of this node are not delivered; those of its earlier runs (before
	// a restart) are, like any other's. Nil: events are relayed only.
	Handler func(ctx context.Context, ev Event)
	// OnMember is told of joins, leaves, failures and updates of other
	// members, in order, on its own goroutine.
	OnMember func(MemberEvent)
	// Link serves requests other controllers send over the direct channel
	// (Cluster.Call); LinkPeer names the caller. It must return when the
	// request's context ends. Nil: this node refuses the direct channel.
	Link http.Handler
	// EventTTL is how long a Broadcast event is spread and remembered
	// (DefaultEventTTL when zero).
	EventTTL time.Duration
	// Timing tunes memberlist; zero fields take LAN defaults.
	Timing Timing
	// Logger receives the cluster's logs; memberlist's own go to it at
	// debug level. Nil discards.
	Logger *slog.Logger

	// skipOwnCertCheck lets tests start an outsider whose certificate is
	// not a controller identity of the CA it is given.
	skipOwnCertCheck bool
}

// String describes the configuration without its secrets.
func (cfg Config) String() string {
	return fmt.Sprintf("cluster.Config{NodeName:%s Bind:%s Advertise:%s Join:%v SecretKey:[redacted]}",
		cfg.NodeName, net.JoinHostPort(cfg.BindAddr, strconv.Itoa(cfg.BindPort)), cfg.AdvertiseAddr, cfg.Join)
}

// GoString describes the configuration without its secrets.
func (cfg Config) GoString() string { return cfg.String() }

// MemberChange says what happened to a member.
type MemberChange int

// Member changes.
const (
	MemberJoin   MemberChange = iota // became alive
	MemberLeave                      // left gracefully
	MemberFail                       // stopped answering: declared dead
	MemberUpdate                     // changed address or metadata
)

// String returns "join", "leave", "fail" or "update".
func (m MemberChange) String() string {
	switch m {
	case MemberJoin:
		return "join"
	case MemberLeave:
		return "leave"
	case MemberFail:
		return "fail"
	case MemberUpdate:
		return "update"
	}
	return "change(" + strconv.Itoa(int(m)) + ")"
}

// Member is a controller in the cluster.
type Member struct {
	// Name is the controller's ID.
	Name string
	// Addr is its gossip address.
	Addr netip.AddrPort
}

// MemberEvent is a change in membership, given to Config.OnMember.
type MemberEvent struct {
	// Change is what happened.
	Change MemberChange
	// Member is whom it happened to.
	Member Member
}

// Cluster is this controller's membership in the cluster. New starts it;
// Close (or Leave and Shutdown) stops it.
type Cluster struct {
	cfg    Config
	log    *slog.Logger
	ml     *memberlist.Memberlist
	tr     *tlsTransport
	peers  *peerRegistry
	queue  *memberlist.TransmitLimitedQueue
	revs   *revocationSet
	signer crypto.Signer
	epoch  uint64

	// link is the direct channel's client side (link.go); linkMu guards
	// linkPeers, its state per peer.
	link      *http.Transport
	linkMu    sync.Mutex
	linkPeers map[string]*linkPeerState

	seqMu sync.Mutex // guards seq
	seq   uint64

	inbound chan inbound            // network → event worker
	members chan MemberEvent        // memberlist → member worker
	intro   chan memberlist.Address // alive delegate → connector

	// failedMu guards failed: members that failed (not left), which the
	// connector keeps trying to join.
	failedMu sync.Mutex
	failed   map[string]rejoinable

	ctx    context.Context // ends at Shutdown; handlers get it
	cancel context.CancelFunc
	wg     sync.WaitGroup // the workers and the connector

	// tellMu guards tellClosed and orders tellWG.Add before the Wait of
	// Shutdown; tellWG counts Tell's calls in flight.
	tellMu     sync.Mutex
	tellClosed bool
	tellWG     sync.WaitGroup

	// lifeMu serialises Leave and Shutdown, which memberlist requires
	// (Leave after Shutdown panics there).
	lifeMu   sync.Mutex
	closed   atomic.Bool // set once, under lifeMu
	leaving  atomic.Bool // advertised in our metadata, so peers tell a leave from a failure
	stopOnce sync.Once
	stopErr  error

	// membersMu guards table: the live members, this one included, as
	// memberlist's callbacks report them. (memberlist's own Members hands
	// out nodes it goes on changing without a lock.)
	membersMu sync.Mutex
	table     map[string]Member

	stats stats
}

// stats are counters for tests and debugging.
type stats struct {
	delivered atomic.Int64 // events given to the handler
	viaState  atomic.Int64 // of those, learned from a full-state exchange
	dropped   atomic.Int64 // malformed, forged, expired or unverifiable
	held      atomic.Int64 // held back for order
	pending   atomic.Int64 // waiting for their origin's certificate
}

// inbound is work for the event worker: one gossip message, or the events
// of one full-state exchange.
type inbound struct {
	msgs     [][]byte
	viaState bool
}

type rejoinable struct {
	addr  string
	since time.Time
}

// New validates cfg, binds the gossip port and starts the cluster: it is
// a member (of a cluster of one) when New returns, and joins cfg.Join in
// the background.
func New(cfg Config) (*Cluster, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	signer, ok := cfg.Certificate.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("cluster: certificate key %T cannot sign", cfg.Certificate.PrivateKey)
	}
	if _, ok := sigAlgorithm(signer.Public()); !ok {
		return nil, fmt.Errorf("cluster: certificate key type %T is not supported", signer.Public())
	}
	// Every event carries a signature and must fit one gossip packet.
	if sig, err := sign(signer, nil); err != nil {
		return nil, fmt.Errorf("cluster: certificate key cannot sign: %w", err)
	} else if len(sig) > maxPacketSigBytes {
		return nil, fmt.Errorf("cluster: certificate key makes %d-byte signatures; gossip packets fit %d (use ECDSA P-256)", len(sig), maxPacketSigBytes)
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("component", "cluster", "node", cfg.NodeName)
	t := cfg.Timing.withDefaults()

	ctx, cancel := context.WithCancel(context.Background())
	c := &Cluster{
		cfg:     cfg,
		log:     logger,
		peers:   newPeerRegistry(),
		revs:    newRevocationSet(),
		signer:  signer,
		epoch:   uint64(time.Now().UnixNano()),
		inbound: make(chan inbound, inboundQueue),
		members: make(chan MemberEvent, memberQueue),
		intro:   make(chan memberlist.Address, introQueue),
		failed:  make(map[string]rejoinable),
		table:   make(map[string]Member),
		ctx:     ctx,
		cancel:  cancel,
	}
	port := cfg.BindPort
	switch port {
	case 0:
		port = DefaultPort
	case AnyPort:
		port = 0
	}
	tr, err := newTLSTransport(transportConfig{
		bindAddr:         cfg.BindAddr,
		bindPort:         port,
		cert:             cfg.Certificate,
		roots:            cfg.CAs,
		handshakeTimeout: t.StreamTimeout,
		log:              logger,
		peers:            c.peers,
		now:              time.Now,
		link:             cfg.Link,
	})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("cluster: %w", err)
	}
	c.tr = tr
	c.link = c.newLinkClient()
	c.linkPeers = make(map[string]*linkPeerState)
	// Our own certificate verifies the events of our earlier runs.
	leaf, _ := x509.ParseCertificate(cfg.Certificate.Certificate[0])
	c.peers.learn(cfg.NodeName, leaf, "")

	mc := memberlist.DefaultLANConfig()
	mc.Name = cfg.NodeName
	mc.Transport = tr
	mc.Label = gossipLabel
	mc.SecretKey = slices.Clone([]byte(cfg.SecretKey))
	mc.GossipVerifyIncoming, mc.GossipVerifyOutgoing = true, true
	mc.BindAddr = cfg.BindAddr
	mc.BindPort = DefaultPort // the port memberlist assumes for join addresses without one
	if cfg.BindPort > 0 {
		mc.BindPort = cfg.BindPort
	}
	mc.AdvertiseAddr, mc.AdvertisePort = cfg.AdvertiseAddr, cfg.AdvertisePort
	mc.ProbeInterval, mc.ProbeTimeout = t.ProbeInterval, t.ProbeTimeout
	mc.SuspicionMult = t.SuspicionMult
	mc.GossipInterval = t.GossipInterval
	mc.PushPullInterval, mc.GossipToTheDeadTime = t.PushPullInterval, t.PushPullInterval
	mc.TCPTimeout = t.StreamTimeout
	// A controller restarted at a new address may take its name back once
	// the old one is dead; only the holder of its certificate can (see
	// NotifyAlive).
	mc.DeadNodeReclaimTime = t.PushPullInterval
	mc.DelegateProtocolVersion, mc.DelegateProtocolMin, mc.DelegateProtocolMax = delegateVersion, delegateVersion, delegateVersion
	d := &delegate{c: c}
	mc.Delegate, mc.Events, mc.Alive = d, d, d
	mc.Logger = log.New(&logWriter{log: c.log}, "", 0)

	c.queue = &memberlist.TransmitLimitedQueue{RetransmitMult: 2 * mc.RetransmitMult, NumNodes: c.numMembers}
	ml, err := memberlist.Create(mc)
	if err != nil {
		tr.Shutdown()
		cancel()
		return nil, fmt.Errorf("cluster: start memberlist: %w", err)
	}
	c.ml = ml

	c.wg.Add(3)
	go c.eventWorker(t.ReorderWait)
	go c.memberWorker()
	go c.connector(t.RejoinInterval)
	c.log.Info("cluster started", "addr", tr.addr().String(), "join", cfg.Join)
	return c, nil
}

// check validates cfg and fills in defaults.
func (cfg *Config) check() error {
	if !ValidNodeName(cfg.NodeName) {
		return fmt.Errorf("cluster: node name %q: want 1-%d letters, digits, '.', '_' or '-'", cfg.NodeName, maxNodeNameLen)
	}
	if cfg.BindAddr == "" {
		cfg.BindAddr = "0.0.0.0"
	}
	if cfg.BindPort < AnyPort || cfg.BindPort > 65535 {
		return fmt.Errorf("cluster: bind port %d out of range", cfg.BindPort)
	}
	if cfg.AdvertisePort < 0 || cfg.AdvertisePort > 65535 {
		return fmt.Errorf("cluster: advertise port %d out of range", cfg.AdvertisePort)
	}
	switch len(cfg.SecretKey) {
	case 16, 24, 32:
	default:
		return fmt.Errorf("cluster: secret key is %d bytes; want 16, 24 or 32", len(cfg.SecretKey))
	}
	if cfg.CAs == nil {
		return errors.New("cluster: no CA pool to check peers' certificates against")
	}
	if len(cfg.Certificate.Certificate) == 0 || cfg.Certificate.PrivateKey == nil {
		return errors.New("cluster: no certificate")
	}
	chain := make([]*x509.Certificate, 0, len(cfg.Certificate.Certificate))
	for _, der := range cfg.Certificate.Certificate {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return fmt.Errorf("cluster: certificate: %w", err)
		}
		chain = append(chain, c)
	}
	if _, _, err := verifyController(chain, cfg.CAs, cfg.NodeName, time.Now()); err != nil && !cfg.skipOwnCertCheck {
		return fmt.Errorf("cluster: own certificate: %w", err)
	}
	if cfg.EventTTL < 0 || cfg.EventTTL > maxEventLifetime {
		return fmt.Errorf("cluster: event TTL %s out of range (0 to %s)", cfg.EventTTL, maxEventLifetime)
	}
	if cfg.EventTTL == 0 {
		cfg.EventTTL = DefaultEventTTL
	}
	return nil
}

func (t Timing) withDefaults() Timing {
	def := memberlist.DefaultLANConfig()
	orDur := func(v, d time.Duration) time.Duration {
		if v > 0 {
			return v
		}
		return d
	}
	t.ProbeInterval = orDur(t.ProbeInterval, def.ProbeInterval)
	t.ProbeTimeout = orDur(t.ProbeTimeout, def.ProbeTimeout)
	t.GossipInterval = orDur(t.GossipInterval, def.GossipInterval)
	t.PushPullInterval = orDur(t.PushPullInterval, def.PushPullInterval)
	t.StreamTimeout = orDur(t.StreamTimeout, def.TCPTimeout)
	t.RejoinInterval = orDur(t.RejoinInterval, 30*time.Second)
	t.ReorderWait = orDur(t.ReorderWait, 250*time.Millisecond)
	if t.SuspicionMult <= 0 {
		t.SuspicionMult = def.SuspicionMult
	}
	return t
}

// Addr returns the address the gossip sockets are bound to.
func (c *Cluster) Addr() netip.AddrPort { return c.tr.addr() }

// Members returns the live members (alive or suspect), this node
// included, sorted by name.
func (c *Cluster) Members() []Member {
	c.membersMu.Lock()
	out := slices.Collect(maps.Values(c.table))
	c.membersMu.Unlock()
	slices.SortFunc(out, func(a, b Member) int { return strings.Compare(a.Name, b.Name) })
	return out
}

func (c *Cluster) numMembers() int {
	c.membersMu.Lock()
	defer c.membersMu.Unlock()
	return max(len(c.table), 1)
}

func toMember(n *memberlist.Node) Member {
	a, _ := netip.AddrFromSlice(n.Addr)
	return Member{Name: n.Name, Addr: netip.AddrPortFrom(a.Unmap(), n.Port)}
}

// Join joins the controllers at addrs ("host:port" or "id/host:port") and
// returns how many it reached.
func (c *Cluster) Join(addrs []string) (int, error) {
	n, err := c.ml.Join(addrs)
	if err != nil {
		return n, fmt.Errorf("cluster join %v: %w", addrs, err)
	}
	return n, nil
}

// Broadcast sends an event of the given kind to every other controller.
// body must be JSON of at most MaxBodyBytes; kind 1-32 of [a-z0-9._-], not
// KindRevoke (use Revoked). Delivery is best effort and fast (well under a
// second on a LAN): a receiver that was unreachable throughout may miss it,
// so the receiver must treat the database as the truth and the event as a
// hint to act now.
func (c *Cluster) Broadcast(kind string, body json.RawMessage) (Event, error) {
	if kind == KindRevoke {
		return Event{}, fmt.Errorf("broadcast: use Revoked for %q events", KindRevoke)
	}
	if !validKind(kind) {
		return Event{}, fmt.Errorf("broadcast: invalid kind %q", kind)
	}
	if len(body) > MaxBodyBytes {
		return Event{}, fmt.Errorf("broadcast %s: %w (%d bytes, limit %d)", kind, ErrTooLarge, len(body), MaxBodyBytes)
	}
	if !json.Valid(body) {
		return Event{}, fmt.Errorf("broadcast %s: body is not JSON", kind)
	}
	ev, _, err := c.send(kind, body, time.Now().Add(c.cfg.EventTTL))
	return ev, err
}

// Revoked tells the cluster that this controller revoked ids (grant IDs),
// which matter until until (the latest not_after among them; at most a
// week ahead is kept). Other controllers get KindRevoke events at once
// through gossip, and any that miss them learn them from the full-state
// exchange until until. ids are split over several events when they do not
// fit in one.
func (c *Cluster) Revoked(ids []string, until time.Time) ([]Event, error) {
	now := time.Now()
	if !until.After(now) {
		return nil, nil // expired already: nothing left to revoke
	}
	if limit := now.Add(maxEventLifetime); until.After(limit) {
		until = limit
	}
	for _, id := range ids {
		if id == "" || len(id) > maxIDLen {
			return nil, fmt.Errorf("revoked: ID %q: want 1-%d bytes", id, maxIDLen)
		}
	}
	var out []Event
	for len(ids) > 0 {
		n := revocationFit(ids)
		body, err := json.Marshal(revocationBody{IDs: ids[:n]})
		if err != nil {
			return out, fmt.Errorf("revoked: %w", err)
		}
		ev, raw, err := c.send(KindRevoke, body, until)
		if err != nil {
			return out, err
		}
		c.revs.add(ev.key(), raw, ev.Expires, now)
		out = append(out, ev)
		ids = ids[n:]
	}
	return out, nil
}

// revocationFit returns how many of ids (at least one) fit in one
// revocation body.
func revocationFit(ids []string) int {
	size := len(`{"ids":[]}`)
	for i, id := range ids {
		b, _ := json.Marshal(id)
		size += len(b) + 1
		if size > MaxBodyBytes && i > 0 {
			return i
		}
	}
	return len(ids)
}

// send encodes, signs and queues an event of this node.
func (c *Cluster) send(kind string, body json.RawMessage, expires time.Time) (Event, []byte, error) {
	if c.closed.Load() {
		return Event{}, nil, ErrClosed
	}
	c.seqMu.Lock()
	c.seq++
	ev := Event{Origin: c.cfg.NodeName, Epoch: c.epoch, Seq: c.seq, Kind: kind, Body: body, Expires: time.UnixMilli(expires.UnixMilli()).UTC()}
	c.seqMu.Unlock()
	raw, err := encodeEvent(ev, c.signer)
	if err != nil {
		return Event{}, nil, fmt.Errorf("broadcast %s: %w", kind, err)
	}
	c.enqueue(raw)
	return ev, raw, nil
}

// enqueue puts a message on the transmit queue, keeping the queue bounded.
func (c *Cluster) enqueue(raw []byte) {
	c.queue.QueueBroadcast(&broadcast{msg: raw})
	if c.queue.NumQueued() > maxQueued {
		c.queue.Prune(maxQueued)
	}
}

// Leave tells the other members that this one is leaving (they see
// MemberLeave, not MemberFail), waiting up to timeout for that to spread.
// The node still gossips until Shutdown.
func (c *Cluster) Leave(timeout time.Duration) error {
	c.lifeMu.Lock()
	defer c.lifeMu.Unlock()
	if c.closed.Load() {
		return ErrClosed
	}
	deadline := time.Now().Add(timeout)
	if c.leaving.CompareAndSwap(false, true) {
		// Re-advertise with the "leaving" mark first, so the others can
		// tell this leave from a failure.
		if err := c.ml.UpdateNode(timeout / 2); err != nil {
			c.log.Debug("cluster: leave mark not spread in time", "err", err)
		}
	}
	if err := c.ml.Leave(max(time.Until(deadline), 0)); err != nil {
		return fmt.Errorf("cluster leave: %w", err)
	}
	return nil
}

// Shutdown stops the cluster without telling anyone (the others see a
// failure, unless Leave came first): it stops the workers, waiting for a
// running Handler or OnMember to return (so neither may call it), and
// closes the sockets. It is safe to call more than once.
func (c *Cluster) Shutdown() error {
	c.lifeMu.Lock()
	c.closed.Store(true)
	c.lifeMu.Unlock()
	c.stopOnce.Do(func() {
		c.tr.abort()
		c.cancel()
		c.tellMu.Lock()
		c.tellClosed = true
		c.tellMu.Unlock()
		c.tellWG.Wait()
		c.link.CloseIdleConnections()
		c.wg.Wait()
		if err := c.ml.Shutdown(); err != nil {
			c.stopErr = fmt.Errorf("cluster shutdown: %w", err)
		}
		c.log.Info("cluster stopped")
	})
	return c.stopErr
}

// Close leaves the cluster gracefully (waiting up to a second for the
// news to spread) and shuts down.
func (c *Cluster) Close() error {
	lerr := c.Leave(time.Second)
	if errors.Is(lerr, ErrClosed) {
		lerr = nil
	}
	return errors.Join(lerr, c.Shutdown())
}

// broadcast is one event on memberlist's transmit queue.
type broadcast struct{ msg []byte }

func (b *broadcast) Invalidates(memberlist.Broadcast) bool { return false }
func (b *broadcast) Message() []byte                       { return b.msg }
func (b *broadcast) Finished()                             {}
func (b *broadcast) UniqueBroadcast()                      {}

var _ memberlist.UniqueBroadcast = (*broadcast)(nil)
