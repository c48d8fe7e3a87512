package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/keyhole-net/keyhole/client/posture"
	"github.com/keyhole-net/keyhole/client/splitdns"
	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/apiclient"
	"github.com/keyhole-net/keyhole/internal/key"
	"github.com/keyhole-net/keyhole/internal/nat"
	"github.com/keyhole-net/keyhole/internal/trust"
	"github.com/keyhole-net/keyhole/internal/wg"
)

// Config configures a running client.
type Config struct {
	DataDir string
	// NoRenew turns grant renewal off (grants then end at their NotAfter).
	NoRenew bool
	// MTU of the tunnel (0: wg.DefaultMTU, 1416).
	MTU int
	// HostAddrs are the local addresses advertised as host candidates,
	// with the WireGuard port (default: the interfaces' IPv4 addresses,
	// loopback excluded).
	HostAddrs []netip.Addr
	// TUN runs the tunnel on a kernel TUN device (root or CAP_NET_ADMIN)
	// instead of the userspace netstack: every program reaches granted
	// apps, through routes added per grant (see tun.go).
	TUN bool
	// TUNName is the device name in TUN mode (default keyhole0).
	TUNName string
	// IdleRelease is how long a grant held in TUN mode lives on without
	// traffic or lookups before the client gives it back (0: 10 minutes).
	IdleRelease time.Duration
	// Keepalive is the WireGuard persistent keepalive toward a gateway
	// while something uses it (0: 25 s; keepalive.go).
	Keepalive time.Duration
	// NoDNS turns split DNS off in TUN mode: apps are then reached by
	// address (keyhole connect grants and routes them).
	NoDNS bool
	// Posture configures posture collection: the client version reported
	// and the device's own command checks.
	Posture posture.Config
	Logger  *slog.Logger
	Now     func() time.Time
}

// dataPlane is the client's WireGuard interface: a netstack in userspace
// mode (*wg.Net), a kernel TUN device in TUN mode (*wg.TUN).
type dataPlane interface {
	UpsertPeer(wg.Peer) error
	RemovePeer(key.WGPublic) error
	SetPrivateKey(key.WGPrivate) error
	Peers() ([]wg.PeerStatus, error)
	Bind() *nat.Bind
	Port() uint16
	DialContext(ctx context.Context, network string, addr netip.AddrPort) (net.Conn, error)
	Close() error
}

// Client holds the tunnel and the grants of one logged-in device. Create
// with New, then Run; Dial, Forward and ServeSOCKS work while Run runs.
type Client struct {
	cfg  Config
	log  *slog.Logger
	now  func() time.Time
	sess *session
	net  dataPlane
	tun  *wg.TUN // TUN mode only; the same device as net
	sf   singleflight.Group
	// reporter keeps the device's signed posture report.
	reporter *reporter
	// rotateMu orders key rotations; nextRotate is when to retry a failed
	// one (Run's goroutine only).
	rotateMu   sync.Mutex
	nextRotate time.Time

	routesMu      sync.Mutex // orders syncRoutes calls
	evMu          sync.Mutex // guards evCancel, evDone: the event stream in use
	evCancel      context.CancelFunc
	evDone        chan struct{}
	evUp          atomic.Bool // the event stream is open
	lastIdleCheck time.Time   // Run's goroutine only

	mu             sync.Mutex // guards grants, byDest, peers, idle, paths, srflx, ifaddrs, stun, peerBytes, keepalive
	grants         map[api.GrantID]*liveGrant
	byDest         map[string]*liveGrant // request string ("wiki", "wiki.corp.internal") → grant
	peers          map[api.GatewayID]api.Peer
	idle           map[api.GatewayID]time.Time // peers with no grant left, since when
	paths          map[api.GatewayID]*path
	srflx          netip.AddrPort           // our public address, as the STUN server saw it
	ifaddrs        []netip.Addr             // the interfaces' addresses, refreshed with srflx
	stun           netip.AddrPort           // STUN server from the latest grant
	peerBytes      map[api.GatewayID]uint64 // TUN mode: rx+tx of each peer at the last idle check
	keepalive      map[api.GatewayID]bool   // userspace mode: peers with the persistent keepalive on
	renewNow       chan struct{}
	started        chan struct{}
	dns            atomic.Pointer[splitdns.Server] // TUN mode's resolver while it runs
	sysDNS         *sysDNSState                    // set by runDNS before dns
	domainsVersion string                          // guarded by mu
}

// liveGrant is a grant the client holds, with its use count: renewal runs
// only while something uses the grant.
type liveGrant struct {
	resp  api.GrantResponse
	uses  int
	conns map[*usedConn]struct{} // tunnel connections made under this grant
	// held: the agent keeps the grant (TUN mode) until it is idle since
	// active.
	held   bool
	active time.Time
	// checked is when the grant was last checked with the controller
	// before a use while the event stream was down (revalidate).
	checked time.Time
}

// ErrDenied wraps a policy denial; its text is the controller's reason.
var ErrDenied = errors.New("access denied")

// New loads the login from cfg.DataDir and brings up the userspace tunnel.
func New(cfg Config) (*Client, error) {
	if cfg.DataDir == "" {
		cfg.DataDir = DefaultDataDir()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s, err := loadSession(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	if cfg.IdleRelease <= 0 {
		cfg.IdleRelease = defaultIdleRelease
	}
	if cfg.Keepalive <= 0 {
		cfg.Keepalive = defaultKeepalive
	}
	var (
		dp  dataPlane
		tun *wg.TUN
	)
	if cfg.TUN {
		tun, err = wg.NewTUN(wg.TUNConfig{
			Name:       cfg.TUNName,
			PrivateKey: s.wgKey,
			Address:    s.profile.OverlayIP,
			MTU:        cfg.MTU,
			Logger:     cfg.Logger.With("component", "wireguard"),
		})
		dp = tun
	} else {
		dp, err = wg.New(wg.Config{
			PrivateKey: s.wgKey,
			Addresses:  []netip.Addr{s.profile.OverlayIP},
			MTU:        cfg.MTU,
			Logger:     cfg.Logger.With("component", "wireguard"),
		})
	}
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	c := &Client{
		cfg: cfg, log: cfg.Logger, now: cfg.Now, sess: s, net: dp, tun: tun,
		grants:    make(map[api.GrantID]*liveGrant),
		byDest:    make(map[string]*liveGrant),
		peers:     make(map[api.GatewayID]api.Peer),
		idle:      make(map[api.GatewayID]time.Time),
		paths:     make(map[api.GatewayID]*path),
		peerBytes: make(map[api.GatewayID]uint64),
		keepalive: make(map[api.GatewayID]bool),
		renewNow:  make(chan struct{}, 1),
		started:   make(chan struct{}),
		reporter:  newReporter(cfg.Posture),
	}
	c.ifaddrs = c.hostAddrs()
	return c, nil
}

// Started is closed once Run has brought everything up (in TUN mode: the
// device and split DNS).
func (c *Client) Started() <-chan struct{} { return c.started }

// Profile returns the login this client runs as.
func (c *Client) Profile() Profile { return *c.sess.profile }

// Run renews grants in use, follows the device's event stream, serves split
// DNS in TUN mode and keeps a status file for keyhole status, until ctx is
// done; then it releases its grants and closes the tunnel (removing the TUN
// device, its routes and the DNS settings). It fails early if split DNS
// cannot be set up; Started is closed once everything is up.
func (c *Client) Run(ctx context.Context) error {
	defer c.net.Close()
	c.net.Bind().SetChecks(c.checkConfig())
	bgCtx, stopBG := context.WithCancel(ctx)
	var bg sync.WaitGroup
	defer func() { stopBG(); bg.Wait() }()
	bg.Add(3)
	go func() { defer bg.Done(); c.pathLoop(bgCtx) }()
	go func() { defer bg.Done(); c.eventLoop(bgCtx) }()
	go func() { defer bg.Done(); c.postureLoop(bgCtx) }()
	if c.tun != nil && !c.cfg.NoDNS {
		ready := make(chan error, 1)
		bg.Add(1)
		go func() {
			defer bg.Done()
			if err := c.runDNS(bgCtx, ready); err != nil && bgCtx.Err() == nil {
				c.log.Error("split DNS stopped", "err", err)
			}
		}()
		if err := <-ready; err != nil {
			return fmt.Errorf("split DNS: %w", err)
		}
	}
	close(c.started)
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	lastStatus := time.Time{}
	for {
		select {
		case <-ctx.Done():
			stopBG()
			bg.Wait()
			c.releaseAll()
			_ = os.Remove(filepath.Join(c.cfg.DataDir, fileStatus))
			return nil
		case <-t.C:
		case <-c.renewNow:
		}
		c.renewDue(ctx)
		c.maybeRotate(ctx)
		c.releaseIdle(ctx)
		c.reapIdlePeers()
		c.tuneKeepalives()
		if time.Since(lastStatus) > 2*time.Second {
			c.writeStatus()
			lastStatus = time.Now()
		}
	}
}

// Grant returns a live grant for dest (an app name, domain or address),
// requesting one from the controller if needed. proto/port say what the
// caller wants to reach (port 0: anything the app serves).
func (c *Client) Grant(ctx context.Context, dest, proto string, port uint16) (api.GrantResponse, error) {
	c.mu.Lock()
	if lg := c.byDest[dest]; lg != nil && c.now().Before(lg.resp.Grant.NotAfter) && (port == 0 || api.PortsContain(lg.resp.Grant.Ports, proto, port)) {
		resp := lg.resp
		lg.active = c.now()
		c.mu.Unlock()
		if c.evUp.Load() {
			return resp, nil
		}
		// Without the event stream a move or revocation may have gone
		// unheard: check with the controller first.
		if resp, ok := c.revalidate(ctx, resp); ok {
			return resp, nil
		}
	} else {
		c.mu.Unlock()
	}
	v, err, _ := c.sf.Do(dest+"/"+proto+"/"+strconv.Itoa(int(port)), func() (any, error) {
		c.mu.Lock()
		known := c.srflx.IsValid()
		c.mu.Unlock()
		if !known {
			c.learnReflexive(ctx)
		}
		var resp api.GrantResponse
		req := api.GrantRequest{App: dest, Proto: proto, Port: port, Candidates: apiCandidates(c.candidates()), Posture: c.posture(ctx)}
		err := c.sess.api.Do(ctx, "POST", "/v1/grants", req, &resp)
		if c.failover(err) {
			err = c.sess.api.Do(ctx, "POST", "/v1/grants", req, &resp)
		}
		if apiclient.IsCode(err, api.CodePostureRefused) {
			// A report the loop replaced meanwhile is older than the
			// controller's latest: collect a new one and try once more.
			req.Posture, _ = c.collectPosture(ctx, true)
			err = c.sess.api.Do(ctx, "POST", "/v1/grants", req, &resp)
		}
		if err != nil {
			var ae *api.Error
			if errors.As(err, &ae) && ae.Code == api.CodeDenied {
				return nil, fmt.Errorf("%w: %s", ErrDenied, ae.Message)
			}
			return nil, fmt.Errorf("grant for %s: %w", dest, err)
		}
		if err := c.install(resp); err != nil {
			return nil, err
		}
		if err := c.connectPeer(ctx, resp.Peer.GatewayID); err != nil {
			return nil, fmt.Errorf("grant for %s: %w", dest, err)
		}
		c.mu.Lock()
		lg := c.grants[resp.Grant.ID]
		c.byDest[dest] = lg
		c.byDest[resp.Grant.App] = lg
		c.mu.Unlock()
		c.hold(resp.Grant.ID)
		c.syncRoutes()
		c.log.Info("grant received", "grant_id", resp.Grant.ID, "app", resp.Grant.App, "gateway_id", resp.Peer.GatewayID, "not_after", resp.Grant.NotAfter)
		return resp, nil
	})
	if err != nil {
		return api.GrantResponse{}, err
	}
	return v.(api.GrantResponse), nil
}

// install records a grant (new or renewed) and configures the gateway's
// peer with the union of AllowedIPs of all live grants through it.
func (c *Client) install(resp api.GrantResponse) error {
	if len(resp.Peer.Endpoints) == 0 && len(resp.Peer.Candidates) == 0 {
		return fmt.Errorf("grant %s: gateway %s has no address", resp.Grant.ID, resp.Peer.GatewayID)
	}
	c.mu.Lock()
	if resp.STUN.IsValid() {
		c.stun = resp.STUN
	}
	lg := c.grants[resp.Grant.ID]
	if lg == nil {
		lg = &liveGrant{conns: make(map[*usedConn]struct{})}
		c.grants[resp.Grant.ID] = lg
	}
	lg.resp = resp
	c.peers[resp.Peer.GatewayID] = resp.Peer
	delete(c.idle, resp.Peer.GatewayID)
	if c.paths[resp.Peer.GatewayID] == nil {
		// No path yet: connectPeer configures the peer once it has one.
		// A peer without an endpoint would try its first handshake now,
		// fail, and hold the next one back for 5 s.
		c.mu.Unlock()
		return nil
	}
	peer := c.peerLocked(resp.Peer.GatewayID)
	c.mu.Unlock()
	return c.net.UpsertPeer(peer)
}

// peerLocked builds the WireGuard peer for gateway gw from the live grants.
func (c *Client) peerLocked(gw api.GatewayID) wg.Peer {
	p := c.peers[gw]
	var allowed []netip.Prefix
	for _, lg := range c.grants {
		if lg.resp.Peer.GatewayID == gw {
			for _, t := range lg.resp.Grant.Targets {
				if !slices.Contains(allowed, t.Prefix) {
					allowed = append(allowed, t.Prefix)
				}
			}
		}
	}
	var ep netip.AddrPort // zero: keep what WireGuard has
	if pa := c.paths[gw]; pa != nil {
		ep = pa.cand.Addr
	}
	return wg.Peer{
		PublicKey:           p.PublicKey,
		Endpoint:            ep,
		AllowedIPs:          allowed,
		PersistentKeepalive: c.keepaliveLocked(gw),
	}
}

// drop forgets a grant and narrows (or removes) its gateway's peer.
func (c *Client) drop(id api.GrantID, why string) {
	c.mu.Lock()
	lg := c.grants[id]
	if lg == nil {
		c.mu.Unlock()
		return
	}
	delete(c.grants, id)
	for d, x := range c.byDest {
		if x == lg {
			delete(c.byDest, d)
		}
	}
	gw := lg.resp.Peer.GatewayID
	peer := c.peerLocked(gw)
	conns := lg.conns
	lg.conns = nil
	c.mu.Unlock()
	// Close what ran under the grant here, not only at the gateway: once
	// the peer narrows, the gateway's FIN could no longer reach us.
	for uc := range conns {
		uc.Conn.Close()
	}
	c.log.Info("grant dropped", "grant_id", id, "app", lg.resp.Grant.App, "reason", why)
	// A peer left without grants keeps its session (with no allowed IPs,
	// so it carries nothing) for peerIdle: a new grant through the same
	// gateway soon after reuses it instead of a fresh handshake, which
	// WireGuard would drop as a flood and retry only after 5 s.
	if len(peer.AllowedIPs) == 0 {
		c.mu.Lock()
		c.idle[gw] = c.now()
		c.mu.Unlock()
	}
	err := c.net.UpsertPeer(peer)
	if err != nil {
		c.log.Warn("updating peer after drop", "gateway_id", gw, "err", err)
	}
	c.syncRoutes()
}

// peerIdle is how long a gateway peer without grants is kept.
const peerIdle = 30 * time.Second

// reapIdlePeers removes gateway peers that have had no grant for peerIdle.
func (c *Client) reapIdlePeers() {
	now := c.now()
	var gone []api.Peer
	c.mu.Lock()
	for gw, since := range c.idle {
		if now.Sub(since) >= peerIdle {
			gone = append(gone, c.peers[gw])
			delete(c.idle, gw)
			delete(c.peers, gw)
			delete(c.paths, gw)
			delete(c.keepalive, gw)
		}
	}
	c.mu.Unlock()
	for _, p := range gone {
		if err := c.net.RemovePeer(p.PublicKey); err != nil {
			c.log.Warn("removing idle peer", "gateway_id", p.GatewayID, "err", err)
		}
	}
}

// acquire marks a grant in use (renewals continue) until release is called.
func (c *Client) acquire(id api.GrantID) (release func()) {
	c.mu.Lock()
	if lg := c.grants[id]; lg != nil {
		lg.uses++
	}
	c.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			c.mu.Lock()
			if lg := c.grants[id]; lg != nil {
				lg.uses--
			}
			c.mu.Unlock()
		})
	}
}

// renewDue drops expired grants and (unless NoRenew) renews grants in use
// whose RenewAfter has passed.
func (c *Client) renewDue(ctx context.Context) {
	now := c.now()
	var due, expired []api.GrantID
	c.mu.Lock()
	for id, lg := range c.grants {
		switch {
		case !now.Before(lg.resp.Grant.NotAfter):
			expired = append(expired, id)
		case !c.cfg.NoRenew && (lg.uses > 0 || lg.held) && !now.Before(lg.resp.RenewAfter):
			due = append(due, id)
		}
	}
	c.mu.Unlock()
	for _, id := range expired {
		c.drop(id, "expired")
	}
	for _, id := range due {
		var resp api.GrantResponse
		dests, held := c.destsOf(id)
		err := c.sess.api.Do(ctx, "POST", "/v1/grants/"+string(id)+"/renew", api.GrantRenewal{Posture: c.posture(ctx)}, &resp)
		var ae *api.Error
		switch {
		case err == nil:
			if err := c.renewed(ctx, id, dests, held, resp); err != nil {
				c.log.Warn("installing renewed grant", "grant_id", id, "err", err)
			}
			c.log.Debug("grant renewed", "grant_id", id, "not_after", resp.Grant.NotAfter)
		case errors.As(err, &ae) && (ae.Code == api.CodeDenied || ae.Code == api.CodeExpired || ae.Code == api.CodeNotFound || ae.Code == api.CodeForbidden):
			c.log.Warn("grant not renewed; access ends", "grant_id", id, "reason", ae.Message)
			c.drop(id, ae.Message)
		default:
			// Controller unreachable: keep the grant until NotAfter and
			// retry, through the next controller if there is one.
			c.log.Warn("grant renewal failed; retrying", "grant_id", id, "err", err)
			c.failover(err)
		}
	}
}

// releaseAll tells the controller this client no longer needs its grants,
// several at a time, within a few seconds (grants not released in time end
// at their expiry, as for a client that died).
func (c *Client) releaseAll() {
	c.mu.Lock()
	ids := make([]api.GrantID, 0, len(c.grants))
	for id := range c.grants {
		ids = append(ids, id)
	}
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for _, id := range ids {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := c.sess.api.Do(ctx, "DELETE", "/v1/grants/"+string(id), nil, nil); err != nil {
				c.log.Debug("releasing grant", "grant_id", id, "err", err)
			}
		}()
	}
	wg.Wait()
}

// Release gives up the grant that covers dest, at the controller and
// locally; connections made under it close.
func (c *Client) Release(ctx context.Context, dest string) error {
	c.mu.Lock()
	lg := c.byDest[dest]
	c.mu.Unlock()
	if lg == nil {
		return fmt.Errorf("release %s: no grant held", dest)
	}
	id := lg.resp.Grant.ID
	err := c.sess.api.Do(ctx, "DELETE", "/v1/grants/"+string(id), nil, nil)
	c.drop(id, "released")
	if err != nil {
		return fmt.Errorf("release %s: %w", dest, err)
	}
	return nil
}

// dialAddr picks the tunnel address for dest under grant resp: the virtual
// IP of a domain, the address itself, or the app's only address.
func dialAddr(resp api.GrantResponse, dest string) (netip.Addr, error) {
	if ip, err := netip.ParseAddr(dest); err == nil {
		ip = ip.Unmap()
		for _, t := range resp.Grant.Targets {
			if t.Prefix.Contains(ip) {
				return ip, nil
			}
		}
		return netip.Addr{}, fmt.Errorf("%s is not inside app %s", dest, resp.Grant.App)
	}
	for _, t := range resp.Grant.Targets {
		if t.Host != "" && t.Host == dest {
			return t.Prefix.Addr(), nil
		}
	}
	for _, t := range resp.Grant.Targets {
		if t.Host != "" || t.Prefix.IsSingleIP() {
			return t.Prefix.Addr(), nil
		}
	}
	return netip.Addr{}, fmt.Errorf("app %s covers whole prefixes; name an address inside it (e.g. %s)", resp.Grant.App, resp.Grant.Targets[0].Prefix.Addr())
}

// Dial opens a connection to dest:port ("tcp" or "udp") through the tunnel,
// requesting a grant first if needed. The grant is renewed while the
// connection is open.
func (c *Client) Dial(ctx context.Context, network, dest string, port uint16) (net.Conn, error) {
	conn, err := c.dial(ctx, network, dest, port)
	if err != nil && network == "tcp" && isRefused(err) {
		// The gateway refused under a grant we hold: it may have been
		// revoked or replaced while we cached it. Forget it and ask the
		// controller once more; it decides afresh (and may deny).
		c.mu.Lock()
		lg := c.byDest[dest]
		c.mu.Unlock()
		if lg != nil {
			c.drop(lg.resp.Grant.ID, "gateway refused a connection under it")
			return c.dial(ctx, network, dest, port)
		}
	}
	return conn, err
}

func (c *Client) dial(ctx context.Context, network, dest string, port uint16) (net.Conn, error) {
	resp, err := c.Grant(ctx, dest, network, port)
	if err != nil {
		return nil, err
	}
	if port == 0 {
		return nil, fmt.Errorf("dial %s: no port given", dest)
	}
	if !api.PortsContain(resp.Grant.Ports, network, port) {
		return nil, fmt.Errorf("%w: app %s does not serve %s/%d (it serves %s)", ErrDenied, resp.Grant.App, network, port, api.FormatPortRanges(resp.Grant.Ports))
	}
	ip, err := dialAddr(resp, dest)
	if err != nil {
		return nil, err
	}
	release := c.acquire(resp.Grant.ID)
	conn, err := c.net.DialContext(ctx, network, netip.AddrPortFrom(ip, port))
	if err != nil {
		release()
		return nil, fmt.Errorf("dial %s (%s) through gateway %s: %w", dest, ip, resp.Peer.GatewayID, err)
	}
	uc := &usedConn{Conn: conn}
	c.mu.Lock()
	lg := c.grants[resp.Grant.ID]
	if lg == nil || lg.conns == nil {
		c.mu.Unlock()
		release()
		conn.Close()
		return nil, fmt.Errorf("dial %s: grant %s ended", dest, resp.Grant.ID)
	}
	lg.conns[uc] = struct{}{}
	c.mu.Unlock()
	uc.release = func() {
		release()
		c.mu.Lock()
		if lg.conns != nil {
			delete(lg.conns, uc)
		}
		c.mu.Unlock()
	}
	return uc, nil
}

// usedConn releases its grant use on Close.
type usedConn struct {
	net.Conn
	release func()
	once    sync.Once
}

func (u *usedConn) Close() error {
	u.once.Do(u.release)
	return u.Conn.Close()
}

// CloseWrite half-closes when the tunnel connection supports it.
func (u *usedConn) CloseWrite() error {
	if cw, ok := u.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// --- status ---------------------------------------------------------------

const fileStatus = "status.json"

// Status is what a running client reports in its data directory for
// keyhole status.
type Status struct {
	PID       int          `json:"pid"`
	Updated   time.Time    `json:"updated"`
	User      string       `json:"user"`
	DeviceID  api.DeviceID `json:"device_id"`
	OverlayIP netip.Addr   `json:"overlay_ip"`
	// Interface and Routes describe the TUN device (TUN mode only): the
	// prefixes routed into it are exactly the live grants' targets.
	Interface string         `json:"interface,omitempty"`
	Routes    []netip.Prefix `json:"routes,omitempty"`
	// DNS is the split resolver's address (TUN mode with DNS).
	DNS    netip.AddrPort `json:"dns,omitzero"`
	Grants []api.Grant    `json:"grants"`
	Peers  []PeerStatus   `json:"peers"`
}

// PeerStatus is one gateway peer as WireGuard sees it.
type PeerStatus struct {
	GatewayID api.GatewayID `json:"gateway_id"`
	PublicKey string        `json:"public_key"`
	// Path is api.PathDirect or api.PathRelayed (through the relay).
	Path          string         `json:"path,omitempty"`
	Endpoint      string         `json:"endpoint"`
	AllowedIPs    []netip.Prefix `json:"allowed_ips"`
	LastHandshake time.Time      `json:"last_handshake,omitzero"`
	RxBytes       uint64         `json:"rx_bytes"`
	TxBytes       uint64         `json:"tx_bytes"`
	// KeepaliveSeconds is the persistent keepalive; 0 is off (keepalive.go).
	KeepaliveSeconds int `json:"keepalive_seconds"`
}

// Status returns the client's current state.
func (c *Client) Status() Status {
	st := Status{PID: os.Getpid(), Updated: time.Now().UTC(), User: c.sess.profile.User, DeviceID: c.sess.profile.DeviceID, OverlayIP: c.sess.profile.OverlayIP}
	if c.tun != nil {
		st.Interface, st.Routes = c.tun.Name(), c.tun.Routes()
	}
	st.DNS = c.dnsAddr()
	c.mu.Lock()
	for _, lg := range c.grants {
		st.Grants = append(st.Grants, lg.resp.Grant)
	}
	gwByKey := make(map[string]api.GatewayID)
	pathOf := make(map[api.GatewayID]string)
	for id, p := range c.peers {
		gwByKey[p.PublicKey.String()] = id
		if pa := c.paths[id]; pa != nil {
			pathOf[id] = pa.name()
		}
	}
	c.mu.Unlock()
	if ps, err := c.net.Peers(); err == nil {
		for _, p := range ps {
			gw := gwByKey[p.PublicKey.String()]
			st.Peers = append(st.Peers, PeerStatus{
				GatewayID: gw, PublicKey: p.PublicKey.String(), Path: pathOf[gw], Endpoint: p.Endpoint.String(),
				AllowedIPs: p.AllowedIPs, LastHandshake: p.LastHandshake, RxBytes: p.RxBytes, TxBytes: p.TxBytes,
				KeepaliveSeconds: int(p.PersistentKeepalive / time.Second),
			})
		}
	}
	return st
}

func (c *Client) writeStatus() {
	b, err := json.MarshalIndent(c.Status(), "", "  ")
	if err == nil {
		err = trust.WriteSecret(filepath.Join(c.cfg.DataDir, fileStatus), b)
	}
	if err != nil {
		c.log.Debug("writing status", "err", err)
	}
}

// ReadStatus returns the status a running client wrote in dir, if that
// client is still alive.
func ReadStatus(dir string) (*Status, error) {
	b, err := os.ReadFile(filepath.Join(dir, fileStatus))
	if err != nil {
		return nil, err
	}
	var st Status
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, err
	}
	if time.Since(st.Updated) > 10*time.Second {
		return nil, errors.New("status is stale (no client running)")
	}
	return &st, nil
}
