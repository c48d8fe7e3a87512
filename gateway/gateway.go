// Package gateway is the app connector: it sits beside private apps, enrols
// once with the controller, holds an outbound control stream for grant
// pushes, and runs WireGuard on a userspace network stack. Each new
// connection from a client is accepted only if a live grant covers
// (client overlay address, app, port); the gateway then dials the real app
// from its own network and splices the two. It opens no inbound port besides
// its one WireGuard UDP socket, forwards no IP packets, and needs no root.
//
// Optionally (Config.TUN, Linux, root) WireGuard runs on a kernel TUN
// device instead: every packet a client sends is checked against the
// grants before the kernel sees it, and the kernel forwards and NATs the
// packets let through (docs/gateway.md, "TUN mode").
package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/apiclient"
	"github.com/keyhole-net/keyhole/internal/key"
	"github.com/keyhole-net/keyhole/internal/nat"
	"github.com/keyhole-net/keyhole/internal/trust"
	"github.com/keyhole-net/keyhole/internal/wg"
)

// Config configures a gateway. DataDir is required; ControllerURL, Token and
// CAFingerprint are needed only for the first (enrolling) start.
type Config struct {
	ControllerURL string
	// ControllerURLs lists the controllers of a cluster (sharing one CA and
	// database). The gateway holds its control stream to one of them and,
	// when that stream drops, reconnects to the next with backoff and
	// jitter. ControllerURL, if set, comes first; later starts remember
	// the list.
	ControllerURLs []string
	Token          string // one-time enrolment token
	CAFingerprint  string
	DataDir        string
	Name           string
	// ListenPort is the WireGuard UDP port; 0 keeps the port chosen on the
	// first start (so clients' endpoints stay valid across restarts).
	ListenPort uint16
	// Endpoints are the addresses clients should send WireGuard to; empty
	// means the loopback and interface addresses with ListenPort.
	Endpoints []netip.AddrPort
	// HostAddrs are the local addresses advertised as host candidates,
	// with the WireGuard port (default: the interfaces' IPv4 addresses,
	// loopback excluded).
	HostAddrs []netip.Addr
	// MTU of the tunnel (0: wg.DefaultMTU, 1416).
	MTU int
	// DialTimeout bounds dialling an app (default 5s).
	DialTimeout time.Duration
	// MaxBackoff caps the reconnect backoff to the controller (default 15s).
	MaxBackoff time.Duration
	// FlowInterval is how often flow records are sent (default 2s).
	FlowInterval time.Duration
	// Hosts are static name → address overrides for the site, consulted
	// before DNS (like /etc/hosts, but for this gateway only).
	Hosts map[string]netip.Addr
	// EagerPeers configures every granted client's WireGuard peer as soon
	// as its grant arrives. By default peers are lazy: added on the
	// client's first handshake initiation and removed after PeerIdle
	// (docs/gateway.md), which saves ~30 KiB per idle client.
	EagerPeers bool
	// PeerIdle is how long a lazily added peer stays with no handshake,
	// no traffic and no open connection (default DefaultPeerIdle, 3.5
	// min). Shorter than WireGuard's session lifetime (180 s), a client
	// still online loses its session without knowing and stalls until it
	// re-handshakes (up to 15 s): only tests should go below it.
	PeerIdle time.Duration
	// TUN runs WireGuard on a kernel TUN device and lets the kernel
	// forward granted packets to the apps (Linux; root or CAP_NET_ADMIN):
	// faster than the userspace stack, at the price of IP forwarding and
	// an nftables table in the gateway's network namespace. Every packet
	// is still checked against the grants.
	TUN bool
	// TUNName is the TUN interface (default DefaultTUNName).
	TUNName string
	// TUNClientRange is routed into the TUN: the client overlay addresses
	// (default 100.64.0.0/10, the whole overlay).
	TUNClientRange netip.Prefix
	// Dialer dials apps; nil uses net.Dialer with the system resolver.
	Dialer Dialer
	Logger *slog.Logger
	Now    func() time.Time
}

// DefaultTUNName is the interface the TUN mode creates when
// Config.TUNName is empty.
const DefaultTUNName = "keyhole-gw0"

// defaultClientRange is the overlay, 100.64.0.0/10: client addresses
// come from it.
func defaultClientRange() netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 64, 0, 0}), 10)
}

// dataPlane is the WireGuard device the gateway runs on, in either mode:
// *wg.Net (userspace stack) or the TUN mode's kernelPlane.
type dataPlane interface {
	Port() uint16
	Bind() *nat.Bind
	UpsertPeer(wg.Peer) error
	RemovePeer(key.WGPublic) error
	Peers() ([]wg.PeerStatus, error)
}

// Dialer dials apps on the site.
type Dialer interface {
	DialContext(ctx context.Context, network, addr string) (net.Conn, error)
}

// hostsDialer resolves names from a static table before DNS.
type hostsDialer struct {
	hosts map[string]netip.Addr
	next  Dialer
}

func (h hostsDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if host, port, err := net.SplitHostPort(addr); err == nil {
		if ip, ok := h.hosts[strings.ToLower(host)]; ok {
			addr = net.JoinHostPort(ip.String(), port)
		}
	}
	return h.next.DialContext(ctx, network, addr)
}

// state is what the gateway keeps in DataDir besides its keys.
type state struct {
	GatewayID     api.GatewayID `json:"gateway_id"`
	Group         string        `json:"group"`
	OverlayIP     netip.Addr    `json:"overlay_ip"`
	ControllerURL string        `json:"controller_url"`
	// ControllerURLs are the other controllers to fail over to.
	ControllerURLs []string `json:"controller_urls,omitempty"`
	ListenPort     uint16   `json:"listen_port"`
}

// Gateway is an app connector. Create with New, run with Run.
type Gateway struct {
	cfg     Config
	log     *slog.Logger
	now     func() time.Time
	table   *GrantTable
	metrics *metrics
	flows   *flowQueue

	// Set up by Run.
	st    state
	creds *trust.Credentials
	wgKey key.WGPrivate
	api   *apiclient.Client
	net   dataPlane
	// TUN mode only: the kernel data plane and the per-packet filter.
	kernel *kernelPlane
	filter *packetFilter

	trav *traversal
	lazy *lazyPeers // nil with EagerPeers
	// runCtx and bg own the short-lived goroutines started from callbacks
	// (punch rounds); Run waits for bg before it returns.
	runCtx context.Context
	bg     sync.WaitGroup

	mu           sync.Mutex // guards connected, peerRemovals
	connected    bool
	peerRemovals map[key.WGPublic]time.Time
	ready        chan struct{} // closed once the WireGuard interface is up
	readyOnce    sync.Once
}

// New checks cfg and returns a gateway ready to Run.
func New(cfg Config) (*Gateway, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("gateway: DataDir is required")
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 15 * time.Second
	}
	if cfg.FlowInterval <= 0 {
		cfg.FlowInterval = 2 * time.Second
	}
	if cfg.Name == "" {
		cfg.Name, _ = os.Hostname()
		if cfg.Name == "" {
			cfg.Name = "gateway"
		}
	}
	if cfg.Dialer == nil {
		cfg.Dialer = &net.Dialer{}
	}
	if len(cfg.Hosts) > 0 {
		cfg.Dialer = hostsDialer{hosts: cfg.Hosts, next: cfg.Dialer}
	}
	if cfg.TUNName == "" {
		cfg.TUNName = DefaultTUNName
	}
	if !cfg.TUNClientRange.IsValid() {
		cfg.TUNClientRange = defaultClientRange()
	}
	if !cfg.TUNClientRange.Addr().Is4() {
		return nil, fmt.Errorf("gateway: TUN client range %v is not IPv4", cfg.TUNClientRange)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	g := &Gateway{
		cfg:     cfg,
		log:     cfg.Logger,
		now:     cfg.Now,
		table:   NewGrantTable(cfg.Now),
		metrics: newMetrics(),
		flows:   newFlowQueue(10000),
		ready:   make(chan struct{}),
		trav:    newTraversal(),

		peerRemovals: make(map[key.WGPublic]time.Time),
	}
	return g, nil
}

// Run enrols if needed, brings up WireGuard and serves until ctx is done.
// It returns only after every goroutine it started has stopped.
func (g *Gateway) Run(ctx context.Context) error {
	if err := g.setup(ctx); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var loops []func(context.Context)
	if g.cfg.TUN {
		k, err := g.startKernel()
		if err != nil {
			return fmt.Errorf("gateway: %w", err)
		}
		defer func() {
			if err := k.Close(); err != nil {
				g.log.Warn("tun mode cleanup", "err", err)
			}
		}()
		g.net, g.kernel = k, k
		loops = append(loops, g.kernelLoop, g.flowStartLoop)
	} else {
		n, err := wg.New(wg.Config{
			PrivateKey: g.wgKey,
			Addresses:  []netip.Addr{g.st.OverlayIP},
			MTU:        g.cfg.MTU,
			ListenPort: g.st.ListenPort,
			Forward:    true,
			Logger:     g.log.With("component", "wireguard"),
		})
		if err != nil {
			return fmt.Errorf("gateway: %w", err)
		}
		defer n.Close()
		g.net = n
		n.SetTCPHandler(func(r *wg.TCPRequest) { g.handleTCP(ctx, r) })
		n.SetUDPHandler(func(r *wg.UDPRequest) { g.handleUDP(ctx, r) })
		n.SetEchoHandler(g.table.Reachable)
		n.SetRefuseHook(func(src, dst netip.AddrPort) { g.refuse("tcp", src, dst, ErrDestination) })
	}
	n := g.net
	if g.st.ListenPort == 0 {
		g.st.ListenPort = n.Port()
		if err := g.saveState(); err != nil {
			return err
		}
	}
	g.runCtx = ctx
	n.Bind().SetChecks(g.checkConfig(ctx, &g.bg))
	loops = append(loops, g.controlLoop, g.expiryLoop, g.flowLoop, g.certLoop, g.pathLoop, g.peerReportLoop)
	if !g.cfg.EagerPeers {
		g.lazy = newLazyPeers(g, n)
		n.Bind().SetInitiationHook(g.lazy.onInitiation)
		loops = append(loops, g.lazy.run)
	}
	defer g.bg.Wait()
	g.log.Info("gateway up", "gateway_id", g.st.GatewayID, "group", g.st.Group, "wireguard_port", n.Port(), "overlay_ip", g.st.OverlayIP, "tun", g.cfg.TUN)
	g.readyOnce.Do(func() { close(g.ready) })

	var wgr sync.WaitGroup
	for _, loop := range loops {
		wgr.Add(1)
		go func() {
			defer wgr.Done()
			loop(ctx)
		}()
	}
	<-ctx.Done()
	wgr.Wait()
	// Closing access on shutdown: the userspace stack (or the TUN and its
	// nftables table) goes away with n.
	g.table.Replace(nil)
	return nil
}

// Ready is closed once the WireGuard interface is up.
func (g *Gateway) Ready() <-chan struct{} { return g.ready }

// ID returns the gateway's ID (after enrolment).
func (g *Gateway) ID() api.GatewayID { return g.st.GatewayID }

// Table returns the grant table (for status and tests).
func (g *Gateway) Table() *GrantTable { return g.table }

// WGPublicKey returns the gateway's WireGuard public key once Ready.
func (g *Gateway) WGPublicKey() key.WGPublic { return g.wgKey.Public() }

// Port returns the WireGuard UDP port once Ready.
func (g *Gateway) Port() uint16 { return g.net.Port() }

func (g *Gateway) statePath() string { return filepath.Join(g.cfg.DataDir, stateFile) }

func (g *Gateway) saveState() error {
	b, err := json.MarshalIndent(g.st, "", "  ")
	if err != nil {
		return err
	}
	return trust.WriteSecret(g.statePath(), b)
}

// Enrolled reports whether dataDir holds an enrolled gateway's identity:
// a start from it needs no token, and goes back to the controllers it
// remembers unless Config names others.
func Enrolled(dataDir string) bool {
	_, err := os.Stat(filepath.Join(dataDir, stateFile))
	return err == nil
}

// stateFile is the gateway's identity and remembered settings in DataDir.
const stateFile = "gateway.json"

// setup loads the gateway's identity from DataDir, or enrols with the
// one-time token on the first start.
func (g *Gateway) setup(ctx context.Context) error {
	b, err := os.ReadFile(g.statePath())
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return g.enrol(ctx)
	case err != nil:
		return fmt.Errorf("gateway: %w", err)
	}
	if err := json.Unmarshal(b, &g.st); err != nil {
		return fmt.Errorf("gateway: %s: %w", g.statePath(), err)
	}
	if g.cfg.ListenPort != 0 {
		g.st.ListenPort = g.cfg.ListenPort
	}
	if g.creds, err = trust.LoadCredentials(g.cfg.DataDir); err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	kb, err := os.ReadFile(filepath.Join(g.cfg.DataDir, "wg.key"))
	if err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	if g.wgKey, err = key.ParseWGPrivate(strings.TrimSpace(string(kb))); err != nil {
		return fmt.Errorf("gateway: wg.key: %w", err)
	}
	url, fallbacks := g.st.ControllerURL, g.st.ControllerURLs
	if p, f := g.cfg.controllers(); p != "" {
		url, fallbacks = p, f
	}
	if g.cfg.CAFingerprint != "" {
		fp, err := trust.ParseFingerprint(g.cfg.CAFingerprint)
		if err != nil {
			return fmt.Errorf("gateway: %w", err)
		}
		if fp != g.creds.Fingerprint() {
			return fmt.Errorf("gateway: --ca-fingerprint %s differs from the CA this gateway enrolled with (%s); use a fresh --data directory to enrol with another controller", fp, g.creds.Fingerprint())
		}
	}
	g.api, err = apiclient.New(apiclient.Config{URL: url, FallbackURLs: fallbacks, Credentials: g.creds})
	if err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	g.log.Info("gateway identity loaded", "gateway_id", g.st.GatewayID, "data", g.cfg.DataDir)
	return nil
}

func (g *Gateway) enrol(ctx context.Context) error {
	primary, fallbacks := g.cfg.controllers()
	if primary == "" || g.cfg.Token == "" || g.cfg.CAFingerprint == "" {
		return errors.New("gateway: not enrolled yet; give --controller, --token and --ca-fingerprint (keyhole admin gateway token --group G prints a token)")
	}
	pinned, err := apiclient.New(apiclient.Config{URL: primary, Fingerprint: g.cfg.CAFingerprint})
	if err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	cs, err := pinned.ConnectionState(ctx)
	if err != nil {
		return fmt.Errorf("gateway: enrol: %w", err)
	}
	caCert, err := trust.CAFromChain(cs, g.cfg.CAFingerprint)
	if err != nil {
		return fmt.Errorf("gateway: enrol: %w", err)
	}
	k, err := trust.NewKey()
	if err != nil {
		return err
	}
	csr, err := trust.NewCSR(k, g.cfg.Name)
	if err != nil {
		return err
	}
	if g.wgKey, err = key.NewWGPrivate(); err != nil {
		return err
	}
	var resp api.EnrolResponse
	err = pinned.Do(ctx, "POST", "/v1/gateway/enrol", api.EnrolRequest{
		Token: g.cfg.Token, Name: g.cfg.Name, CSR: csr, WGPublicKey: g.wgKey.Public(),
	}, &resp)
	if err != nil {
		return fmt.Errorf("gateway: enrol: %w", err)
	}
	cert, err := trust.ParseCertPEM(resp.Certificate)
	if err != nil {
		return fmt.Errorf("gateway: enrol: %w", err)
	}
	g.creds = &trust.Credentials{Key: k, Cert: cert, CA: caCert}
	if err := g.creds.Save(g.cfg.DataDir); err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	if err := trust.WriteSecret(filepath.Join(g.cfg.DataDir, "wg.key"), []byte(g.wgKey.Base64Secret()+"\n")); err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	g.st = state{GatewayID: resp.GatewayID, Group: resp.Group, OverlayIP: resp.OverlayIP, ControllerURL: primary, ControllerURLs: fallbacks, ListenPort: g.cfg.ListenPort}
	if err := g.saveState(); err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	g.api, err = apiclient.New(apiclient.Config{URL: primary, FallbackURLs: fallbacks, Credentials: g.creds})
	if err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	g.log.Info("gateway enrolled", "gateway_id", resp.GatewayID, "group", resp.Group)
	return nil
}

// controllers returns the controller to try first and the others to fail
// over to: ControllerURL (or the first of ControllerURLs), then the rest
// of ControllerURLs, without repeats.
func (cfg Config) controllers() (primary string, fallbacks []string) {
	primary = cfg.ControllerURL
	for _, u := range cfg.ControllerURLs {
		switch {
		case primary == "":
			primary = u
		case u != primary && !slices.Contains(fallbacks, u):
			fallbacks = append(fallbacks, u)
		}
	}
	return primary, fallbacks
}
