package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/turn/v4"

	"github.com/keyhole-net/keyhole/internal/pionlog"
)

// DefaultRealm is the TURN realm when Config.Realm is empty.
const DefaultRealm = "keyhole"

// Allocation limits. Each allocation holds a UDP socket; a leaked client
// credential must not be able to take them all.
const (
	defaultMaxAllocations = 65536
	defaultMaxPerSubject  = 32 // per gateway ID or grant ID
)

// ErrClosed is returned by Serve on a Server that was closed before Serve
// started.
var ErrClosed = errors.New("relay: server closed")

// Config configures a Server.
type Config struct {
	// Listen is the UDP address to serve TURN/STUN on (e.g. 0.0.0.0:3478,
	// 127.0.0.1:0 in tests).
	Listen netip.AddrPort
	// PublicIP is the address put into relayed addresses
	// (XOR-RELAYED-ADDRESS). Required when Listen's address is
	// unspecified; defaults to Listen's address otherwise.
	PublicIP netip.Addr
	// RelayAddress is the local address relay sockets bind to (default:
	// Listen's address). It must be of PublicIP's family. When PublicIP is
	// not an address of this host (a cloud VM behind 1:1 NAT), traffic
	// between two allocations still never leaves the host: the relay
	// delivers it to RelayAddress (loopback when RelayAddress is
	// unspecified) instead.
	RelayAddress netip.Addr
	// Realm is the TURN realm (default [DefaultRealm]). Requests naming
	// another realm are refused.
	Realm string
	// Secret is the shared secret credentials are issued with, at least
	// [MinSecretBytes] long. coturn's static-auth-secret is the same thing.
	Secret []byte
	// Logger receives the relay's own log lines (refusals at Info, with the
	// reason; never a password) and pion's at Debug. Nil discards.
	Logger *slog.Logger
	// Now returns the current time for credential expiry (default
	// time.Now).
	Now func() time.Time
	// Tap, if set, is called with every payload the relay forwards between
	// allocations and peers (tests use it to prove the relay sees only
	// ciphertext). It runs on the packet path and must not retain payload.
	Tap func(from, to netip.AddrPort, payload []byte)
	// ListenUDP opens the relay's sockets (default net.ListenUDP): the
	// listening one in New, and one per allocation later. Tests running
	// the relay inside a network namespace open them there.
	ListenUDP func(network string, laddr *net.UDPAddr) (*net.UDPConn, error)
}

// Stats are the relay's counters since New.
type Stats struct {
	// Allocations is the number of live allocations.
	Allocations int
	// AuthFailures counts requests refused for bad, expired or unknown
	// credentials.
	AuthFailures uint64
	// PeerDenied counts permissions, channel binds and datagrams (in either
	// direction) refused by the role restriction.
	PeerDenied uint64
	// Packets and Bytes count payload forwarded between allocations and
	// peers, in both directions. Each datagram counts once, also when it
	// goes from one allocation to another.
	Packets, Bytes uint64
	// WireGuardData counts the bytes of forwarded payloads that are
	// WireGuard transport-data messages (type 4 and three zero bytes, at
	// least 32 bytes long).
	WireGuardData uint64
}

// Server is a TURN relay (RFC 5766 over UDP, with STUN Binding) that
// authenticates TURN REST API credentials and enforces their role
// restriction. Create it with New, run it with Serve.
type Server struct {
	// Write combining (gso.go): inLoop is set while pion's read loop
	// processes a batch; dirty lists the allocations with queued sends.
	inLoop  atomic.Bool
	dirtyMu sync.Mutex
	dirty   []*relayConn

	log      *slog.Logger
	realm    string
	secret   []byte
	now      func() time.Time
	tap      func(from, to netip.AddrPort, payload []byte)
	conn     *net.UDPConn
	addr     netip.AddrPort
	publicIP netip.Addr
	relayIP  netip.Addr // what relay sockets bind to
	localIP  netip.Addr // where traffic for a live relay address is delivered
	relayNet string     // "udp4" or "udp6"
	listen   func(network string, laddr *net.UDPAddr) (*net.UDPConn, error)
	logLimit logLimiter

	maxAllocations int // tests lower these
	maxPerSubject  int

	authFailures, peerDenied, packets, bytes, wgData atomic.Uint64

	mu        sync.RWMutex                  // guards byPort, byClient, perSub, live, closed, serving
	byPort    map[uint16]*relayConn         // every open relay socket, by relayed port
	byClient  map[netip.AddrPort]*relayConn // allocations, by client transport address
	perSub    map[string]int                // allocations per role/subject
	live      int                           // created and not yet deleted (pion's view)
	liveCond  sync.Cond                     // signalled when live drops; L is &mu
	closed    bool
	serving   bool
	closing   chan struct{} // closed by Close
	serveDone chan struct{} // closed when Serve returns
}

// New validates cfg and binds the UDP socket, so Addr works before Serve.
func New(cfg Config) (*Server, error) {
	if !cfg.Listen.IsValid() {
		return nil, errors.New("relay: no listen address")
	}
	if len(cfg.Secret) < MinSecretBytes {
		return nil, fmt.Errorf("relay: secret is %d bytes, want at least %d", len(cfg.Secret), MinSecretBytes)
	}
	listenIP := cfg.Listen.Addr().Unmap()
	relayIP := cfg.RelayAddress.Unmap()
	if !relayIP.IsValid() {
		relayIP = listenIP
	}
	publicIP := cfg.PublicIP.Unmap()
	if !publicIP.IsValid() {
		if listenIP.IsUnspecified() {
			return nil, fmt.Errorf("relay: listening on %s needs a public IP for relayed addresses", cfg.Listen)
		}
		publicIP = listenIP
	}
	if publicIP.IsUnspecified() || publicIP.IsMulticast() || publicIP.Zone() != "" {
		return nil, fmt.Errorf("relay: public IP %s is not a unicast address", publicIP)
	}
	if publicIP.Is4() != relayIP.Is4() {
		return nil, fmt.Errorf("relay: public IP %s and relay address %s are of different families", publicIP, relayIP)
	}
	s := &Server{
		log:            cfg.Logger,
		realm:          cfg.Realm,
		secret:         append([]byte(nil), cfg.Secret...),
		now:            cfg.Now,
		tap:            cfg.Tap,
		publicIP:       publicIP,
		relayIP:        relayIP,
		localIP:        relayIP,
		relayNet:       "udp6",
		maxAllocations: defaultMaxAllocations,
		maxPerSubject:  defaultMaxPerSubject,
		byPort:         make(map[uint16]*relayConn),
		byClient:       make(map[netip.AddrPort]*relayConn),
		perSub:         make(map[string]int),
		closing:        make(chan struct{}),
		serveDone:      make(chan struct{}),
	}
	s.liveCond.L = &s.mu
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.realm == "" {
		s.realm = DefaultRealm
	}
	if s.now == nil {
		s.now = time.Now
	}
	if relayIP.Is4() {
		s.relayNet = "udp4"
	}
	if relayIP.IsUnspecified() {
		s.localIP = netip.IPv6Loopback()
		if relayIP.Is4() {
			s.localIP = netip.AddrFrom4([4]byte{127, 0, 0, 1})
		}
	}
	network := "udp6"
	if listenIP.Is4() {
		network = "udp4"
	}
	s.listen = cfg.ListenUDP
	if s.listen == nil {
		s.listen = net.ListenUDP
	}
	conn, err := s.listen(network, net.UDPAddrFromAddrPort(netip.AddrPortFrom(listenIP, cfg.Listen.Port())))
	if err != nil {
		return nil, fmt.Errorf("relay: %w", err)
	}
	growBuffers(conn)
	s.conn = conn
	ua, _ := conn.LocalAddr().(*net.UDPAddr)
	s.addr = netip.AddrPortFrom(ua.AddrPort().Addr().Unmap(), ua.AddrPort().Port())
	return s, nil
}

// Addr returns the UDP address the relay serves on.
func (s *Server) Addr() netip.AddrPort { return s.addr }

// PublicIP returns the address the relay puts into relayed addresses.
func (s *Server) PublicIP() netip.Addr { return s.publicIP }

// Stats returns the relay's counters.
func (s *Server) Stats() Stats {
	s.mu.RLock()
	n := len(s.byClient)
	s.mu.RUnlock()
	return Stats{
		Allocations:   n,
		AuthFailures:  s.authFailures.Load(),
		PeerDenied:    s.peerDenied.Load(),
		Packets:       s.packets.Load(),
		Bytes:         s.bytes.Load(),
		WireGuardData: s.wgData.Load(),
	}
}

// Serve runs the relay until ctx is done or Close is called, then closes
// every allocation and the socket, waits for the relay's goroutines and
// returns nil. It returns an error if the socket fails first. Serve may be
// called once.
func (s *Server) Serve(ctx context.Context) error {
	s.mu.Lock()
	switch {
	case s.closed:
		s.mu.Unlock()
		return ErrClosed
	case s.serving:
		s.mu.Unlock()
		return errors.New("relay: Serve called twice")
	}
	s.serving = true
	s.mu.Unlock()
	defer close(s.serveDone)

	lc := &listenConn{UDPConn: s.conn, s: s, br: newBatchReader(s.conn), readDone: make(chan struct{})}
	lc.br.idle = s.flushDirty
	ts, err := turn.NewServer(turn.ServerConfig{
		PacketConnConfigs: []turn.PacketConnConfig{{
			PacketConn:            lc,
			RelayAddressGenerator: (*relayGenerator)(s),
			PermissionHandler:     s.permit,
		}},
		LoggerFactory: pionlog.Factory(s.log),
		Realm:         s.realm,
		AuthHandler:   s.authenticate,
		QuotaHandler:  s.quota,
		EventHandler: turn.EventHandler{
			OnAuth:              s.onAuth,
			OnAllocationCreated: s.onAllocationCreated,
			OnAllocationDeleted: s.onAllocationDeleted,
		},
	})
	if err != nil {
		s.conn.Close()
		return fmt.Errorf("relay: %w", err)
	}
	var serveErr error
	select {
	case <-ctx.Done():
	case <-s.closing:
	case <-lc.readDone:
		serveErr = fmt.Errorf("relay: read: %w", lc.err)
	}
	// Closing the socket ends pion's read loop, which then closes every
	// allocation; each allocation's own goroutine deletes it on its way
	// out. Wait for both so no goroutine of ours outlives Serve.
	ts.Close()
	<-lc.readDone
	s.mu.Lock()
	for s.live > 0 {
		s.liveCond.Wait()
	}
	s.mu.Unlock()
	return serveErr
}

// Close stops the relay: it makes a running Serve return (and waits for it)
// or releases the socket of a Server that never served. Close is
// idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	first := !s.closed
	if first {
		s.closed = true
		close(s.closing)
	}
	serving := s.serving
	s.mu.Unlock()
	if serving {
		<-s.serveDone
		return nil
	}
	if first {
		return s.conn.Close()
	}
	return nil
}

// authenticate is pion's AuthHandler: it returns the long-term credential
// key for a well-formed, unexpired username of ours in our realm. pion then
// checks the request's MESSAGE-INTEGRITY against it, which is where a
// password that is not the username's HMAC is caught (see onAuth).
func (s *Server) authenticate(username, realm string, src net.Addr) ([]byte, bool) {
	if realm != s.realm {
		s.refuseAuth("wrong realm", username, src)
		return nil, false
	}
	c, err := ParseUsername(username)
	if err != nil {
		s.refuseAuth(err.Error(), username, src)
		return nil, false
	}
	if !s.now().Before(c.Expires) {
		s.refuseAuth("expired", username, src)
		return nil, false
	}
	return turn.GenerateAuthKey(username, realm, password64(s.secret, username)), true
}

// onAuth counts requests whose MESSAGE-INTEGRITY did not match the key
// authenticate returned: the password is not the username's HMAC under our
// secret.
func (s *Server) onAuth(src, _ net.Addr, _, username, _, method string, verdict bool) {
	if !verdict {
		s.refuseAuth("bad password (message integrity) for "+method, username, src)
	}
}

func (s *Server) refuseAuth(reason, username string, src net.Addr) {
	s.authFailures.Add(1)
	if s.logLimit.allow() {
		s.log.Info("refused credential", "reason", reason, "username", truncate(username, 96), "client_addr", addrString(src))
	}
}

// quota is pion's QuotaHandler, called for an authenticated Allocate.
func (s *Server) quota(username, _ string, src net.Addr) bool {
	c, err := ParseUsername(username)
	if err != nil {
		return false
	}
	s.mu.RLock()
	total, sub := len(s.byPort), s.perSub[subjectKey(c)]
	s.mu.RUnlock()
	if total < s.maxAllocations && sub < s.maxPerSubject {
		return true
	}
	if s.logLimit.allow() {
		s.log.Warn("refused allocation: quota reached", "role", c.Role, "subject", c.Subject, "client_addr", addrString(src),
			"allocations", total, "subject_allocations", sub)
	}
	return false
}

func subjectKey(c Claims) string { return string(c.Role) + "/" + c.Subject }

// onAllocationCreated binds the allocation's relay socket to the claims of
// the credential that created it. Until then the socket passes nothing.
func (s *Server) onAllocationCreated(src, _ net.Addr, _, username, _ string, relayAddr net.Addr, _ int) {
	client := addrPort(src)
	relayed := addrPort(relayAddr)
	c, err := ParseUsername(username)
	s.mu.Lock()
	s.live++
	rc := s.byPort[relayed.Port()]
	if err == nil && rc != nil && !rc.isClosed() {
		rc.client = client
		rc.claims.Store(&c)
		s.byClient[client] = rc
		s.perSub[subjectKey(c)]++
	}
	s.mu.Unlock()
	if err != nil || rc == nil {
		// Cannot happen with pion v4.1.4 (the username passed
		// authenticate, the socket is ours); the socket stays closed.
		s.log.Warn("allocation without claims; it will pass nothing", "client_addr", client, "relay_addr", relayed)
		return
	}
	s.log.Info("allocation created", "role", c.Role, "subject", c.Subject, "client_addr", client, "relay_addr", relayed)
}

// onAllocationDeleted is called once per created allocation, after pion
// closed its relay socket (which dropped it from our maps).
func (s *Server) onAllocationDeleted(src, _ net.Addr, _, username, _ string) {
	s.mu.Lock()
	s.live--
	s.liveCond.Broadcast()
	s.mu.Unlock()
	c, _ := ParseUsername(username)
	s.log.Debug("allocation deleted", "role", c.Role, "subject", c.Subject, "client_addr", addrString(src))
}

// permit is pion's PermissionHandler for CreatePermission and ChannelBind:
// the role rule at IP level. The exact-address rule is applied per datagram
// by relayConn.
func (s *Server) permit(client net.Addr, peerIP net.IP) bool {
	ip, _ := netip.AddrFromSlice(peerIP)
	ip = ip.Unmap()
	s.mu.RLock()
	rc := s.byClient[addrPort(client)]
	s.mu.RUnlock()
	var c *Claims
	if rc != nil {
		c = rc.claims.Load()
	}
	if c != nil && permitIP(c, ip, s.publicIP) {
		return true
	}
	s.peerDenied.Add(1)
	if s.logLimit.allow() {
		var role Role
		var subject string
		if c != nil {
			role, subject = c.Role, c.Subject
		}
		s.log.Info("refused permission", "role", role, "subject", subject, "client_addr", addrString(client), "peer_ip", ip)
	}
	return false
}

// permitIP is the IP-level role rule. A gateway may open permissions to
// clients anywhere on the internet (they send plain UDP to its relayed
// address) and to other allocations here, but not to the relay host's other
// addresses nor to special ones; a client only to its peer's IP.
func permitIP(c *Claims, ip, publicIP netip.Addr) bool {
	switch c.Role {
	case RoleGateway:
		return ip == publicIP || (ip.IsValid() && !ip.IsLoopback() && !ip.IsUnspecified() && !ip.IsMulticast() &&
			!ip.IsLinkLocalUnicast() && !ip.IsLinkLocalMulticast() && !ip.IsInterfaceLocalMulticast())
	case RoleClient:
		return ip == c.Peer.Addr()
	}
	return false
}

// permitPeer is the datagram-level role rule for a datagram between an
// allocation holding c and peer. isRelay says whether peer is a live
// allocation on this relay.
func permitPeer(c *Claims, peer netip.AddrPort, isRelay bool) bool {
	switch c.Role {
	case RoleGateway:
		// Addresses on the relay host that are not allocations never
		// get here (route and source refuse them).
		return isRelay || permitIP(c, peer.Addr(), netip.Addr{})
	case RoleClient:
		return peer == c.Peer
	}
	return false
}

// addrPort converts a pion address; anything but UDP is the zero value.
func addrPort(a net.Addr) netip.AddrPort {
	ua, ok := a.(*net.UDPAddr)
	if !ok || ua == nil {
		return netip.AddrPort{}
	}
	ap := ua.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
