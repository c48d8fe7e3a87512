package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-sockaddr"
	"github.com/hashicorp/memberlist"
)

const (
	// alpnProto names the gossip protocol in the TLS handshake, so a gossip
	// stream can never be confused with the HTTPS API on another port.
	alpnProto = "keyhole-cluster/1"

	// maxPacketBytes is the largest UDP datagram read. memberlist sends at
	// most UDPBufferSize (1400) bytes; the rest is slack for its framing.
	maxPacketBytes = 64 * 1024

	// maxHandshakes bounds inbound TLS handshakes in progress, so a flood
	// of half-open connections cannot pile up goroutines.
	maxHandshakes = 64
)

// transportConfig is what the transport needs from Config.
type transportConfig struct {
	bindAddr         string
	bindPort         int
	cert             tls.Certificate
	roots            *x509.CertPool
	handshakeTimeout time.Duration
	log              *slog.Logger
	peers            *peerRegistry
	now              func() time.Time
	// link serves the direct channel (Config.Link); nil refuses it.
	link http.Handler
}

// tlsTransport is a memberlist.NodeAwareTransport: packets are plain UDP
// (memberlist encrypts and authenticates them with the gossip keyring),
// streams are TCP wrapped in mutual TLS, where each side must present a
// controller certificate of the cluster's CA. Every stream that reaches
// memberlist has passed that check.
type tlsTransport struct {
	cfg transportConfig
	udp *net.UDPConn
	tcp *net.TCPListener

	packetCh chan *memberlist.Packet
	streamCh chan net.Conn

	// ctx ends when the owner aborts dials or shuts the transport down.
	ctx        context.Context
	cancel     context.CancelFunc
	handshakes chan struct{} // semaphore, capacity maxHandshakes
	wg         sync.WaitGroup
	closeOnce  sync.Once

	// linkSrv serves direct-channel connections (link.go), which
	// serveStream hands it through linkLn; linkConns counts those open.
	linkSrv   *http.Server
	linkLn    *linkListener
	linkConns atomic.Int64

	// mu guards blocked: the test hook that cuts this node off from some
	// peers (a partition), by name and by gossip address.
	mu      sync.Mutex
	blocked map[string]bool
}

var _ memberlist.NodeAwareTransport = (*tlsTransport)(nil)

// newTLSTransport binds the TCP and UDP sockets (one port for both) and
// starts the listeners.
func newTLSTransport(cfg transportConfig) (*tlsTransport, error) {
	ip := net.ParseIP(cfg.bindAddr)
	if ip == nil {
		return nil, fmt.Errorf("cluster bind address %q: not an IP address", cfg.bindAddr)
	}
	var (
		tcp *net.TCPListener
		udp *net.UDPConn
		err error
	)
	// With port 0 the kernel picks the TCP port; the same UDP port may be
	// taken by someone else, so try a few times.
	for range 10 {
		tcp, err = net.ListenTCP("tcp", &net.TCPAddr{IP: ip, Port: cfg.bindPort})
		if err != nil {
			return nil, fmt.Errorf("cluster listen tcp %s: %w", net.JoinHostPort(cfg.bindAddr, fmt.Sprint(cfg.bindPort)), err)
		}
		port := tcp.Addr().(*net.TCPAddr).Port
		udp, err = net.ListenUDP("udp", &net.UDPAddr{IP: ip, Port: port})
		if err == nil {
			break
		}
		tcp.Close()
		if cfg.bindPort != 0 {
			return nil, fmt.Errorf("cluster listen udp %s: %w", net.JoinHostPort(cfg.bindAddr, fmt.Sprint(port)), err)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("cluster listen udp: %w", err)
	}
	// A larger receive buffer absorbs gossip bursts; the kernel may cap it.
	_ = udp.SetReadBuffer(2 << 20)

	ctx, cancel := context.WithCancel(context.Background())
	t := &tlsTransport{
		cfg:        cfg,
		udp:        udp,
		tcp:        tcp,
		packetCh:   make(chan *memberlist.Packet),
		streamCh:   make(chan net.Conn),
		ctx:        ctx,
		cancel:     cancel,
		handshakes: make(chan struct{}, maxHandshakes),
		blocked:    make(map[string]bool),
	}
	t.linkSrv, t.linkLn = t.newLinkServer()
	t.wg.Add(3)
	go t.readPackets()
	go t.acceptStreams()
	go func() {
		defer t.wg.Done()
		_ = t.linkSrv.Serve(t.linkLn) // returns at Close
	}()
	return t, nil
}

// addr returns the bound address (the port is real even when 0 was asked).
func (t *tlsTransport) addr() netip.AddrPort {
	return t.tcp.Addr().(*net.TCPAddr).AddrPort()
}

// FinalAdvertiseAddr implements memberlist.Transport.
func (t *tlsTransport) FinalAdvertiseAddr(ip string, port int) (net.IP, int, error) {
	if ip != "" {
		a := net.ParseIP(ip)
		if a == nil {
			return nil, 0, fmt.Errorf("cluster advertise address %q: not an IP address", ip)
		}
		if a4 := a.To4(); a4 != nil {
			a = a4
		}
		if port == 0 {
			port = int(t.addr().Port())
		}
		return a, port, nil
	}
	bound := t.addr()
	if bound.Addr().IsUnspecified() {
		// Bound to every interface: advertise a private address, as
		// memberlist's own transport does.
		priv, err := sockaddr.GetPrivateIP()
		if err != nil {
			return nil, 0, fmt.Errorf("cluster advertise address: %w", err)
		}
		if priv == "" {
			return nil, 0, errors.New("cluster advertise address: no private IP address found; set AdvertiseAddr")
		}
		a := net.ParseIP(priv)
		if a == nil {
			return nil, 0, fmt.Errorf("cluster advertise address %q: not an IP address", priv)
		}
		return a, int(bound.Port()), nil
	}
	return net.IP(bound.Addr().Unmap().AsSlice()), int(bound.Port()), nil
}

// WriteTo implements memberlist.Transport.
func (t *tlsTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	return t.WriteToAddress(b, memberlist.Address{Addr: addr})
}

// WriteToAddress implements memberlist.NodeAwareTransport.
func (t *tlsTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	if t.isBlocked(a.Name, a.Addr) {
		// A partition loses packets silently.
		return time.Now(), nil
	}
	ua, err := resolveUDP(a.Addr)
	if err != nil {
		return time.Time{}, fmt.Errorf("cluster send to %s: %w", a.Addr, err)
	}
	if _, err := t.udp.WriteToUDPAddrPort(b, ua); err != nil {
		return time.Time{}, fmt.Errorf("cluster send to %s: %w", a.Addr, err)
	}
	return time.Now(), nil
}

func resolveUDP(addr string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(addr); err == nil {
		return ap, nil
	}
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return netip.AddrPort{}, err
	}
	return ua.AddrPort(), nil
}

// PacketCh implements memberlist.Transport.
func (t *tlsTransport) PacketCh() <-chan *memberlist.Packet { return t.packetCh }

// DialTimeout implements memberlist.Transport.
func (t *tlsTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return t.DialAddressTimeout(memberlist.Address{Addr: addr}, timeout)
}

// DialAddressTimeout implements memberlist.NodeAwareTransport: a TCP
// connection wrapped in mutual TLS. The peer must present a controller
// certificate of the cluster's CA, naming a.Name when memberlist knows
// which node it expects.
func (t *tlsTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	if t.isBlocked(a.Name, a.Addr) {
		return nil, fmt.Errorf("cluster dial %s: unreachable (partitioned by test)", a.String())
	}
	ctx, cancel := context.WithTimeout(t.ctx, timeout)
	defer cancel()
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", a.Addr)
	if err != nil {
		return nil, fmt.Errorf("cluster dial %s: %w", a.String(), err)
	}
	conf := t.tlsConfig(alpnProto)
	conf.InsecureSkipVerify = true // verified below, against our CA and identity rules
	conf.VerifyConnection = func(cs tls.ConnectionState) error {
		id, leaf, err := t.verify(cs, alpnProto, a.Name)
		if err != nil {
			return err
		}
		t.cfg.peers.learn(id, leaf, a.Addr)
		return nil
	}
	conn := tls.Client(raw, conf)
	if err := conn.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("cluster dial %s: tls: %w", a.String(), err)
	}
	return conn, nil
}

// StreamCh implements memberlist.Transport.
func (t *tlsTransport) StreamCh() <-chan net.Conn { return t.streamCh }

// abort cancels dials in progress and stops handing new work to
// memberlist; Shutdown still closes the sockets.
func (t *tlsTransport) abort() { t.cancel() }

// Shutdown implements memberlist.Transport: it closes the sockets and
// waits for every goroutine of the transport to return.
func (t *tlsTransport) Shutdown() error {
	t.closeOnce.Do(func() {
		t.cancel()
		t.tcp.Close()
		t.udp.Close()
		t.linkSrv.Close() // its listener and every connection
	})
	t.wg.Wait()
	return nil
}

func (t *tlsTransport) tlsConfig(protos ...string) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{t.cfg.cert},
		NextProtos:   protos,
	}
}

// verify checks that the peer speaks one of protos and is a controller
// of the cluster's CA (named want, unless want is empty).
func (t *tlsTransport) verify(cs tls.ConnectionState, protos string, want string) (string, *x509.Certificate, error) {
	if cs.NegotiatedProtocol == "" || !strings.Contains(","+protos+",", ","+cs.NegotiatedProtocol+",") {
		return "", nil, fmt.Errorf("peer does not speak %s", protos)
	}
	return verifyController(cs.PeerCertificates, t.cfg.roots, want, t.cfg.now())
}

func (t *tlsTransport) readPackets() {
	defer t.wg.Done()
	buf := make([]byte, maxPacketBytes)
	for {
		n, from, err := t.udp.ReadFromUDPAddrPort(buf)
		ts := time.Now()
		if err != nil {
			if t.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			t.cfg.log.Debug("cluster: read packet", "err", err)
			continue
		}
		if n < 1 || t.isBlocked("", from.String()) {
			continue
		}
		p := &memberlist.Packet{
			Buf:       append([]byte(nil), buf[:n]...),
			From:      net.UDPAddrFromAddrPort(from),
			Timestamp: ts,
		}
		select {
		case t.packetCh <- p:
		case <-t.ctx.Done():
			return
		}
	}
}

func (t *tlsTransport) acceptStreams() {
	defer t.wg.Done()
	var delay time.Duration
	for {
		raw, err := t.tcp.AcceptTCP()
		if err != nil {
			if t.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: back off, as
			// net/http does, rather than spin.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			t.cfg.log.Debug("cluster: accept stream", "err", err, "retry_in", delay)
			select {
			case <-time.After(delay):
			case <-t.ctx.Done():
				return
			}
			continue
		}
		delay = 0
		select {
		case t.handshakes <- struct{}{}:
		default:
			t.cfg.log.Debug("cluster: too many handshakes in progress; dropping stream", "remote", raw.RemoteAddr().String())
			raw.Close()
			continue
		}
		t.wg.Add(1)
		go func() {
			defer t.wg.Done()
			conn, peer := t.serveStream(raw)
			<-t.handshakes
			if conn != nil {
				t.serveLink(conn, peer)
			}
		}()
	}
}

// serveStream runs the server side of the TLS handshake and, once the
// peer proved it is a controller, hands a gossip stream to memberlist, or
// returns a direct-channel connection (and the peer's ID) for serveLink.
func (t *tlsTransport) serveStream(raw *net.TCPConn) (link *tls.Conn, linkPeer string) {
	protos := []string{alpnProto}
	if t.cfg.link != nil {
		protos = append(protos, linkProto)
	}
	conf := t.tlsConfig(protos...)
	conf.ClientAuth = tls.RequireAnyClientCert // verified below, against our CA and identity rules
	var peer string
	conf.VerifyConnection = func(cs tls.ConnectionState) error {
		id, leaf, err := t.verify(cs, strings.Join(protos, ","), "")
		if err != nil {
			return err
		}
		peer = id
		t.cfg.peers.learn(id, leaf, "")
		return nil
	}
	conn := tls.Server(raw, conf)
	ctx, cancel := context.WithTimeout(t.ctx, t.cfg.handshakeTimeout)
	err := conn.HandshakeContext(ctx)
	cancel()
	if err != nil {
		t.cfg.log.Debug("cluster: rejected stream", "remote", raw.RemoteAddr().String(), "err", err)
		raw.Close()
		return nil, ""
	}
	if t.isBlocked(peer, "") {
		conn.Close()
		return nil, ""
	}
	if conn.ConnectionState().NegotiatedProtocol == linkProto {
		return conn, peer
	}
	select {
	case t.streamCh <- conn:
	case <-t.ctx.Done():
		conn.Close()
	}
	return nil, ""
}

// partition is a test hook: it makes this node drop every packet to or
// from the given peers (name → gossip address) and refuse streams with
// them, as a network partition would. nil heals.
func (t *tlsTransport) partition(peers map[string]string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.blocked = make(map[string]bool)
	for name, addr := range peers {
		t.blocked["name:"+name] = true
		t.blocked["addr:"+addr] = true
	}
}

func (t *tlsTransport) isBlocked(name, addr string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.blocked) == 0 {
		return false
	}
	return (name != "" && t.blocked["name:"+name]) || (addr != "" && t.blocked["addr:"+addr])
}
