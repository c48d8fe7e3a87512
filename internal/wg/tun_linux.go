package wg

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"

	"github.com/keyhole-net/keyhole/internal/key"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"
)

// DefaultTUNName is the interface TUN mode creates when TUNConfig.Name is
// empty.
const DefaultTUNName = "keyhole0"

// routeProtocol marks the routes a TUN adds (`ip route` shows "proto 107"),
// so that they are told apart from anybody else's.
const routeProtocol netlink.RouteProtocol = 107

// TUNConfig configures a WireGuard interface on a kernel TUN device.
type TUNConfig struct {
	// Name is the interface name; empty means DefaultTUNName.
	Name string
	// PrivateKey is this node's WireGuard key. It is never logged.
	PrivateKey key.WGPrivate
	// Address is the node's overlay IPv4 address, assigned as a /32: only
	// the routes SetRoutes adds lead into the device.
	Address netip.Addr
	// MTU is the inner MTU; 0 means DefaultMTU.
	MTU int
	// ListenPort is the UDP port; 0 picks a free one.
	ListenPort uint16
	// Logger receives wireguard-go's logs at debug level; nil discards
	// them.
	Logger *slog.Logger
	// Filter, if set, sees every packet WireGuard decrypted before it
	// reaches the kernel, and drops those it refuses (the gateway's grant
	// check). Nil lets every packet through, as the client's TUN does.
	Filter PacketFilter
}

// TUN is a WireGuard interface on a kernel TUN device: the client's TUN
// mode. The kernel's own TCP/IP stack carries the traffic, so every program
// on the machine reaches the addresses routed into the device. It needs
// CAP_NET_ADMIN.
//
// The device serves wireguard-go's UAPI socket (/var/run/wireguard/NAME.sock),
// so `wg show` and wgctrl see it like any WireGuard interface. A TUN created
// by a process that dies goes away with its routes: the kernel deletes a
// non-persistent TUN device when its last file descriptor closes.
type TUN struct {
	*wgDevice
	log  *slog.Logger
	name string
	addr netip.Addr
	nl   *netlink.Handle // opened in the namespace the device lives in
	link netlink.Link
	uapi net.Listener

	mu     sync.Mutex // guards routes, conns, closed
	routes map[netip.Prefix]struct{}
	conns  map[net.Conn]struct{} // open UAPI connections
	closed bool

	serving sync.WaitGroup // the UAPI accept loop and its connections
}

// NewTUN creates the device, assigns the overlay address, brings the link
// up and starts WireGuard and the UAPI socket. No route leads into the device
// until SetRoutes adds one.
func NewTUN(cfg TUNConfig) (*TUN, error) {
	if cfg.PrivateKey.IsZero() {
		return nil, errors.New("wg: new tun: private key is zero")
	}
	if !cfg.Address.Is4() {
		return nil, fmt.Errorf("wg: new tun: overlay address %v is not IPv4", cfg.Address)
	}
	name := cfg.Name
	if name == "" {
		name = DefaultTUNName
	}
	mtu := cfg.MTU
	if mtu == 0 {
		mtu = DefaultMTU
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	nl, err := netlink.NewHandle()
	if err != nil {
		return nil, fmt.Errorf("wg: new tun: open netlink: %w", err)
	}
	tdev, err := tun.CreateTUN(name, mtu)
	if err != nil {
		nl.Close()
		return nil, fmt.Errorf("wg: new tun: create %s (needs root or CAP_NET_ADMIN): %w", name, err)
	}
	if real, err := tdev.Name(); err == nil {
		name = real
	}
	t := &TUN{log: log, name: name, addr: cfg.Address, nl: nl, routes: make(map[netip.Prefix]struct{}), conns: make(map[net.Conn]struct{})}
	if cfg.Filter != nil {
		tdev = &filteredDevice{Device: tdev, filter: cfg.Filter}
	}
	d, err := startDevice(tdev, cfg.PrivateKey, cfg.ListenPort, log)
	if err != nil {
		nl.Close()
		return nil, fmt.Errorf("wg: new tun %s: %w", name, err)
	}
	t.wgDevice = d
	if err := t.setup(); err != nil {
		t.Close()
		return nil, fmt.Errorf("wg: new tun %s: %w", name, err)
	}
	log.Debug("tun up", "interface", name, "address", cfg.Address, "listen_port", d.port, "mtu", mtu)
	return t, nil
}

// setup assigns the address, brings the link up and opens the UAPI socket.
func (t *TUN) setup() error {
	link, err := t.nl.LinkByName(t.name)
	if err != nil {
		return fmt.Errorf("find link: %w", err)
	}
	t.link = link
	// IPv6 stays off the device: the overlay is IPv4, and router
	// solicitations and the like would only be dropped by WireGuard.
	_ = os.WriteFile("/proc/sys/net/ipv6/conf/"+t.name+"/disable_ipv6", []byte("1"), 0o644)
	a := &netlink.Addr{IPNet: prefixNet(netip.PrefixFrom(t.addr, 32))}
	if err := t.nl.AddrReplace(link, a); err != nil {
		return fmt.Errorf("assign %s: %w", t.addr, err)
	}
	if err := t.nl.LinkSetUp(link); err != nil {
		return fmt.Errorf("set link up: %w", err)
	}
	f, err := ipc.UAPIOpen(t.name)
	if err != nil {
		return fmt.Errorf("open UAPI socket: %w", err)
	}
	l, err := ipc.UAPIListen(t.name, f)
	if err != nil {
		f.Close()
		return fmt.Errorf("listen on UAPI socket: %w", err)
	}
	t.uapi = l
	t.serving.Add(1)
	go t.serveUAPI(l)
	return nil
}

// serveUAPI answers `wg` and wgctrl on the UAPI socket until it closes.
func (t *TUN) serveUAPI(l net.Listener) {
	defer t.serving.Done()
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		t.mu.Lock()
		if t.closed {
			t.mu.Unlock()
			c.Close()
			return
		}
		t.conns[c] = struct{}{}
		t.serving.Add(1)
		t.mu.Unlock()
		go func() {
			defer t.serving.Done()
			t.dev.IpcHandle(c) // closes c
			t.mu.Lock()
			delete(t.conns, c)
			t.mu.Unlock()
		}()
	}
}

// Name returns the interface name.
func (t *TUN) Name() string { return t.name }

// Address returns the overlay address assigned to the device.
func (t *TUN) Address() netip.Addr { return t.addr }

// SetRoutes makes exactly prefixes lead into the device: it adds the routes
// missing and deletes those no longer wanted, and returns what it removed.
// Routes carry the overlay address as preferred source.
func (t *TUN) SetRoutes(prefixes []netip.Prefix) (removed []netip.Prefix, err error) {
	want := make(map[netip.Prefix]struct{}, len(prefixes))
	for _, p := range prefixes {
		if !p.IsValid() || !p.Addr().Is4() {
			return nil, fmt.Errorf("wg: set routes: %v is not an IPv4 prefix", p)
		}
		want[p.Masked()] = struct{}{}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, ErrClosed
	}
	var errs []error
	for p := range want {
		if _, ok := t.routes[p]; ok {
			continue
		}
		if err := t.nl.RouteReplace(t.route(p)); err != nil {
			errs = append(errs, fmt.Errorf("add route %s dev %s: %w", p, t.name, err))
			continue
		}
		t.routes[p] = struct{}{}
	}
	for p := range t.routes {
		if _, ok := want[p]; ok {
			continue
		}
		if err := t.delRoute(p); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, p)
	}
	slices.SortFunc(removed, netip.Prefix.Compare)
	return removed, errors.Join(errs...)
}

// Routes returns the prefixes routed into the device.
func (t *TUN) Routes() []netip.Prefix {
	t.mu.Lock()
	defer t.mu.Unlock()
	ps := make([]netip.Prefix, 0, len(t.routes))
	for p := range t.routes {
		ps = append(ps, p)
	}
	slices.SortFunc(ps, netip.Prefix.Compare)
	return ps
}

func (t *TUN) route(p netip.Prefix) *netlink.Route {
	return &netlink.Route{
		LinkIndex: t.link.Attrs().Index,
		Dst:       prefixNet(p),
		Src:       net.IP(t.addr.AsSlice()),
		Scope:     netlink.SCOPE_LINK,
		Protocol:  routeProtocol,
	}
}

// delRoute deletes one route; t.mu is held. A route already gone (the link
// went down, someone deleted it) counts as deleted.
func (t *TUN) delRoute(p netip.Prefix) error {
	err := t.nl.RouteDel(t.route(p))
	if err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete route %s dev %s: %w", p, t.name, err)
	}
	delete(t.routes, p)
	return nil
}

// DialContext connects to addr with the kernel's stack, as any program on
// the machine would: it goes through the device once a route leads there.
func (t *TUN) DialContext(ctx context.Context, network string, addr netip.AddrPort) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, network, addr.String())
}

// KillConnections aborts every local TCP connection to an address inside
// prefixes (the kernel's SOCK_DESTROY, as `ss -K` does): the programs using
// them see ECONNABORTED at once instead of waiting for a timeout. It returns
// how many it aborted.
func (t *TUN) KillConnections(prefixes []netip.Prefix) (int, error) {
	if len(prefixes) == 0 {
		return 0, nil
	}
	socks, err := t.nl.SocketDiagTCP(unix.AF_INET)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return 0, fmt.Errorf("wg: list TCP sockets: %w", err)
	}
	n := 0
	var errs []error
	for _, s := range socks {
		if s.State == tcpListen {
			continue
		}
		dst, ok := netip.AddrFromSlice(s.ID.Destination)
		if !ok || !slices.ContainsFunc(prefixes, func(p netip.Prefix) bool { return p.Contains(dst.Unmap()) }) {
			continue
		}
		local := &net.TCPAddr{IP: s.ID.Source, Port: int(s.ID.SourcePort)}
		remote := &net.TCPAddr{IP: s.ID.Destination, Port: int(s.ID.DestinationPort)}
		if err := t.nl.SocketDestroy(local, remote); err != nil {
			errs = append(errs, fmt.Errorf("abort %s→%s: %w", local, remote, err))
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

// tcpListen is TCP_LISTEN in the kernel's socket states.
const tcpListen = 10

// Close deletes the routes, stops WireGuard and removes the device and its
// UAPI socket. It is safe to call more than once.
func (t *TUN) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	var errs []error
	if t.link != nil {
		for p := range t.routes {
			if err := t.delRoute(p); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for c := range t.conns {
		c.Close() // a `wg` that hangs on must not hold Close up
	}
	t.mu.Unlock()
	if t.uapi != nil {
		t.uapi.Close() // also removes the socket file
	}
	t.dev.Close() // closes the TUN file: the kernel deletes the interface
	t.serving.Wait()
	t.nl.Close()
	return errors.Join(errs...)
}

// prefixNet converts a prefix for netlink.
func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
