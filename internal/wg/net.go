// Package wg is Keyhole's userspace WireGuard data plane: wireguard-go running
// on a gVisor netstack of our own, with no TUN device, no root and no
// iptables.
//
// A Net is one WireGuard interface plus the TCP/IP stack behind it. Clients
// dial through it (DialContext); a gateway sets Config.Forward so that every
// new TCP connection or UDP flow to any address arrives at its handlers,
// which accept or refuse it; nothing is routed or forwarded by the stack
// itself.
//
// The link between wireguard-go and gVisor (endpoint.go) moves packets in
// batches, lets gVisor's TCP hand over 64 KiB segments that we cut up
// ourselves (gso.go), and coalesces received segments (gVisor's GRO) before
// the stack sees them. That is where the speed over wireguard-go's stock
// tun/netstack comes from.
//
// This package knows nothing about Keyhole's control protocol: callers
// translate what they receive into Config and Peer values.
package wg

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/keyhole-net/keyhole/internal/key"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

const (
	// DefaultMTU is the inner MTU when Config.MTU is zero: 1500 minus the
	// IPv6 (40), UDP (8) and WireGuard (32) overhead, as wg-quick uses,
	// and minus the 4 bytes of TURN ChannelData framing, so that a relayed
	// path over IPv6 does not fragment either (DESIGN.md §6).
	DefaultMTU = 1416

	nicID = 1

	// TCP buffer sizes. The defaults let a single stream fill a fast path
	// without waiting for auto-tuning; the maxima bound memory per
	// connection on a busy gateway.
	tcpRXBufMin = 4 << 10
	tcpRXBufDef = 1 << 20
	tcpRXBufMax = 8 << 20
	tcpTXBufMin = 4 << 10
	tcpTXBufDef = 1 << 20
	tcpTXBufMax = 6 << 20
)

// ErrClosed is returned by methods of a Net after Close.
var ErrClosed = errors.New("wg: net closed")

// Config configures a userspace WireGuard interface on a netstack.
type Config struct {
	// PrivateKey is this node's WireGuard key. It is never logged.
	PrivateKey key.WGPrivate
	// Addresses are the overlay addresses of this node (IPv4, maybe
	// IPv6). The stack routes each address family it has an address for
	// into the tunnel; WireGuard's allowed IPs decide the peer.
	Addresses []netip.Addr
	// MTU is the inner MTU; 0 means DefaultMTU.
	MTU int
	// ListenPort is the UDP port; 0 picks a free one (see Net.Port). The
	// socket listens on all addresses.
	ListenPort uint16
	// Forward makes the stack accept TCP and UDP for any destination
	// address and hand each new flow to the handlers set with
	// SetTCPHandler and SetUDPHandler (the gateway). Without it only
	// Addresses are local (the client).
	Forward bool
	// Logger receives wireguard-go's and this package's logs at debug
	// level; nil discards them.
	Logger *slog.Logger
}

// Peer is one WireGuard peer as UpsertPeer configures it.
type Peer struct {
	PublicKey key.WGPublic
	// Endpoint is the peer's UDP address; the zero value means unknown
	// (a gateway learns clients' endpoints from their handshakes).
	Endpoint netip.AddrPort
	// AllowedIPs replaces the peer's allowed IPs.
	AllowedIPs []netip.Prefix
	// PersistentKeepalive is rounded down to whole seconds; 0 is off.
	PersistentKeepalive time.Duration
}

// PeerStatus is a peer's state as WireGuard reports it (what `wg show`
// prints).
type PeerStatus struct {
	PublicKey key.WGPublic
	Endpoint  netip.AddrPort
	// Relayed says WireGuard reaches the peer through this node's own TURN
	// allocation (Endpoint is then where the relay sees the peer).
	Relayed       bool
	LastHandshake time.Time // zero if never
	RxBytes       uint64
	TxBytes       uint64
	AllowedIPs    []netip.Prefix
	// PersistentKeepalive is the peer's keepalive interval; 0 is off.
	PersistentKeepalive time.Duration
}

// Net is a userspace WireGuard interface and the netstack behind it. Its
// methods are safe for concurrent use.
type Net struct {
	log   *slog.Logger
	stack *stack.Stack
	ep    *linkEndpoint
	*wgDevice

	tcpHandler atomic.Pointer[func(*TCPRequest)]
	udpHandler atomic.Pointer[func(*UDPRequest)]

	// mu guards closed and the UDP flow tables, and orders handlers.Add
	// before Close's handlers.Wait.
	mu          sync.Mutex
	closed      bool
	udpPending  map[stack.TransportEndpointID]*UDPRequest
	udpRejected map[stack.TransportEndpointID]struct{} // flows whose replayed packet gets ICMP
	handlers    sync.WaitGroup                         // running TCP/UDP handler goroutines

	closeOnce sync.Once
}

// New creates the stack and the WireGuard device, brings the device up and
// returns once it is ready: the UDP port is bound and dials may start (they
// succeed once a peer is configured).
func New(cfg Config) (*Net, error) {
	if cfg.PrivateKey.IsZero() {
		return nil, errors.New("wg: new: private key is zero")
	}
	mtu := cfg.MTU
	if mtu == 0 {
		mtu = DefaultMTU
	}
	if mtu < 576 || mtu > 65535 {
		return nil, fmt.Errorf("wg: new: MTU %d out of range [576, 65535]", mtu)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}

	n := &Net{
		log:         log,
		udpPending:  make(map[stack.TransportEndpointID]*UDPRequest),
		udpRejected: make(map[stack.TransportEndpointID]struct{}),
	}
	if err := n.newStack(cfg, mtu); err != nil {
		return nil, fmt.Errorf("wg: new: %w", err)
	}

	d, err := startDevice(newTUNDevice(n.ep), cfg.PrivateKey, cfg.ListenPort, log)
	if err != nil {
		n.stack.Destroy()
		return nil, fmt.Errorf("wg: new: %w", err)
	}
	n.wgDevice = d
	log.Debug("wireguard up", "listen_port", d.port, "mtu", mtu, "forward", cfg.Forward)
	return n, nil
}

// newStack builds the gVisor stack and its NIC on a new link endpoint.
func (n *Net) newStack(cfg Config, mtu int) error {
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4, icmp.NewProtocol6},
		// With promiscuous mode, HandleLocal would make every source
		// address look like our own and drop all inbound traffic as
		// martian; a gateway never talks to itself anyway.
		HandleLocal: !cfg.Forward,
	})
	n.stack = s
	fail := func(what string, err tcpip.Error) error {
		s.Destroy()
		return fmt.Errorf("%s: %s", what, err)
	}

	tcpOpts := []tcpip.SettableTransportProtocolOption{
		// SACK and RACK are gVisor's defaults today; say so explicitly
		// because throughput under loss depends on them.
		ptr(tcpip.TCPSACKEnabled(true)),
		ptr(tcpip.TCPRACKLossDetection),
		ptr(tcpip.TCPModerateReceiveBufferOption(true)),
		&tcpip.TCPReceiveBufferSizeRangeOption{Min: tcpRXBufMin, Default: tcpRXBufDef, Max: tcpRXBufMax},
		&tcpip.TCPSendBufferSizeRangeOption{Min: tcpTXBufMin, Default: tcpTXBufDef, Max: tcpTXBufMax},
	}
	for _, opt := range tcpOpts {
		if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, opt); err != nil {
			return fail(fmt.Sprintf("set TCP option %T", opt), err)
		}
	}

	n.ep = newLinkEndpoint(mtu)
	if err := s.CreateNIC(nicID, n.ep); err != nil {
		return fail("create NIC", err)
	}
	var has4, has6 bool
	for _, a := range cfg.Addresses {
		if !a.IsValid() {
			s.Destroy()
			return errors.New("invalid address in Addresses")
		}
		a = a.Unmap()
		proto := ipv4.ProtocolNumber
		if a.Is6() {
			proto = ipv6.ProtocolNumber
			has6 = true
		} else {
			has4 = true
		}
		pa := tcpip.ProtocolAddress{Protocol: proto, AddressWithPrefix: tcpip.AddrFromSlice(a.AsSlice()).WithPrefix()}
		if err := s.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); err != nil {
			return fail(fmt.Sprintf("add address %s", a), err)
		}
	}
	if cfg.Forward {
		// Promiscuous: accept packets to any address as local.
		// Spoofing: reply from those addresses. IP forwarding stays
		// off, so nothing is routed; TCP and UDP go to the handlers,
		// and the stack itself answers only ICMP echo.
		if err := s.SetPromiscuousMode(nicID, true); err != nil {
			return fail("set promiscuous mode", err)
		}
		if err := s.SetSpoofing(nicID, true); err != nil {
			return fail("set spoofing", err)
		}
		has4, has6 = true, true
		from := netip.IPv4Unspecified()
		for _, a := range cfg.Addresses {
			if a.Is4() {
				from = a
				break
			}
		}
		n.ep.refuseFrom.Store(&from)
		n.startForwarders()
	}
	var routes []tcpip.Route
	if has4 {
		routes = append(routes, tcpip.Route{Destination: header.IPv4EmptySubnet, NIC: nicID})
	}
	if has6 {
		routes = append(routes, tcpip.Route{Destination: header.IPv6EmptySubnet, NIC: nicID})
	}
	s.SetRouteTable(routes)
	return nil
}

func ptr[T any](v T) *T { return &v }

// DialContext connects to addr through the tunnel from this node's own
// address. network is "tcp", "tcp4", "tcp6", "udp", "udp4" or "udp6"; the
// address family comes from addr. Errors unwrap to syscall errnos
// (ECONNREFUSED for a refused connection, ETIMEDOUT, EHOSTUNREACH, …), as
// with the net package.
func (n *Net) DialContext(ctx context.Context, network string, addr netip.AddrPort) (net.Conn, error) {
	n.mu.Lock()
	closed := n.closed
	n.mu.Unlock()
	if closed {
		return nil, &net.OpError{Op: "dial", Net: network, Err: ErrClosed}
	}
	addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
	fa, proto := fullAddr(addr)
	switch network {
	case "tcp", "tcp4", "tcp6":
		return n.dialTCP(ctx, network, fa, proto, addr)
	case "udp", "udp4", "udp6":
		var wq waiter.Queue
		ep, err := n.stack.NewEndpoint(udp.ProtocolNumber, proto, &wq)
		if err != nil {
			return nil, dialError(network, addr, err)
		}
		if err := ep.Connect(fa); err != nil {
			ep.Close()
			return nil, dialError(network, addr, err)
		}
		return gonet.NewUDPConn(&wq, ep), nil
	default:
		return nil, &net.OpError{Op: "dial", Net: network, Err: net.UnknownNetworkError(network)}
	}
}

func (n *Net) dialTCP(ctx context.Context, network string, fa tcpip.FullAddress, proto tcpip.NetworkProtocolNumber, addr netip.AddrPort) (net.Conn, error) {
	var wq waiter.Queue
	ep, err := n.stack.NewEndpoint(tcp.ProtocolNumber, proto, &wq)
	if err != nil {
		return nil, dialError(network, addr, err)
	}
	// Register before Connect: the handshake may finish before we wait.
	entry, notify := waiter.NewChannelEntry(waiter.WritableEvents)
	wq.EventRegister(&entry)
	defer wq.EventUnregister(&entry)

	err = ep.Connect(fa)
	if _, ok := err.(*tcpip.ErrConnectStarted); ok {
		select {
		case <-ctx.Done():
			ep.Close()
			return nil, &net.OpError{Op: "dial", Net: network, Addr: net.TCPAddrFromAddrPort(addr), Err: ctx.Err()}
		case <-notify:
		}
		err = ep.LastError()
	}
	if err != nil {
		ep.Close()
		return nil, dialError(network, addr, err)
	}
	return gonet.NewTCPConn(&wq, ep), nil
}

func fullAddr(ap netip.AddrPort) (tcpip.FullAddress, tcpip.NetworkProtocolNumber) {
	proto := ipv4.ProtocolNumber
	if ap.Addr().Is6() {
		proto = ipv6.ProtocolNumber
	}
	return tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFromSlice(ap.Addr().AsSlice()), Port: ap.Port()}, proto
}

func addrPort(a tcpip.Address, port uint16) netip.AddrPort {
	ip, _ := netip.AddrFromSlice(a.AsSlice())
	return netip.AddrPortFrom(ip, port)
}

// dialError turns a gVisor error into the *net.OpError the net package would
// return, so callers can test errors.Is(err, syscall.ECONNREFUSED).
func dialError(network string, addr netip.AddrPort, err tcpip.Error) error {
	var a net.Addr
	if strings.HasPrefix(network, "udp") {
		a = net.UDPAddrFromAddrPort(addr)
	} else {
		a = net.TCPAddrFromAddrPort(addr)
	}
	return &net.OpError{Op: "dial", Net: network, Addr: a, Err: os.NewSyscallError("connect", errnoOf(err))}
}

// errnoOf maps the gVisor errors a dial can produce to errnos; anything else
// keeps gVisor's text.
func errnoOf(err tcpip.Error) error {
	switch err.(type) {
	case *tcpip.ErrConnectionRefused:
		return syscall.ECONNREFUSED
	case *tcpip.ErrConnectionReset:
		return syscall.ECONNRESET
	case *tcpip.ErrConnectionAborted, *tcpip.ErrAborted:
		return syscall.ECONNABORTED
	case *tcpip.ErrTimeout:
		return syscall.ETIMEDOUT
	case *tcpip.ErrHostUnreachable:
		return syscall.EHOSTUNREACH
	case *tcpip.ErrNetworkUnreachable:
		return syscall.ENETUNREACH
	case *tcpip.ErrAddressFamilyNotSupported:
		return syscall.EAFNOSUPPORT
	case *tcpip.ErrNoPortAvailable:
		return syscall.EADDRNOTAVAIL
	default:
		return errors.New(err.String())
	}
}

// Close shuts the device and the stack down, closing every connection, and
// returns when all goroutines of the Net have stopped, including running
// TCP/UDP handlers (which return once their connections fail).
func (n *Net) Close() error {
	n.closeOnce.Do(func() {
		n.mu.Lock()
		n.closed = true
		for id, r := range n.udpPending {
			delete(n.udpPending, id)
			r.release()
		}
		n.mu.Unlock()
		if n.wgDevice != nil {
			n.dev.Close() // closes the tun side and the UDP socket; waits for its goroutines
		}
		n.stack.Destroy() // aborts endpoints, waits for TCP workers, removes the NIC
		n.handlers.Wait()
		n.log.Debug("wireguard closed")
	})
	return nil
}
