package relay

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/turn/v4"
)

// relayGenerator is the Server seen as pion's RelayAddressGenerator: every
// allocation's relay socket is a relayConn that enforces the allocation's
// claims per datagram.
type relayGenerator Server

var _ turn.RelayAddressGenerator = (*relayGenerator)(nil)

// Validate implements turn.RelayAddressGenerator.
func (g *relayGenerator) Validate() error { return nil }

// AllocatePacketConn binds a relay socket. pion always asks for "udp4";
// the socket's family is the relay address's instead.
func (g *relayGenerator) AllocatePacketConn(_ string, requestedPort int) (net.PacketConn, net.Addr, error) {
	s := (*Server)(g)
	if requestedPort < 0 || requestedPort > 0xffff {
		return nil, nil, fmt.Errorf("relay: requested port %d", requestedPort)
	}
	s.mu.RLock()
	full := len(s.byPort) >= s.maxAllocations
	s.mu.RUnlock()
	if full {
		return nil, nil, errors.New("relay: allocation limit reached")
	}
	conn, err := s.listen(s.relayNet, net.UDPAddrFromAddrPort(netip.AddrPortFrom(s.relayIP, uint16(requestedPort))))
	if err != nil {
		return nil, nil, fmt.Errorf("relay: bind relay socket: %w", err)
	}
	growBuffers(conn)
	port := conn.LocalAddr().(*net.UDPAddr).AddrPort().Port()
	rc := &relayConn{s: s, conn: conn, br: newBatchReader(conn), wq: newWriteQueue(conn), relayed: netip.AddrPortFrom(s.publicIP, port)}
	s.mu.Lock()
	if s.byPort[port] != nil {
		s.mu.Unlock()
		conn.Close()
		return nil, nil, fmt.Errorf("relay: port %d already relays", port)
	}
	s.byPort[port] = rc
	s.mu.Unlock()
	return rc, net.UDPAddrFromAddrPort(rc.relayed), nil
}

// AllocateConn implements turn.RelayAddressGenerator; the relay offers UDP
// relaying only.
func (g *relayGenerator) AllocateConn(string, int) (net.Conn, net.Addr, error) {
	return nil, nil, errors.New("relay: TCP relaying is not offered")
}

// relayConn is one allocation's relay socket. pion writes every datagram
// from the client to a peer through WriteTo and reads every datagram from
// peers through ReadFrom; both apply the role rule to the exact address,
// count and tap. Until onAllocationCreated stores the claims, it passes
// nothing (fail closed).
type relayConn struct {
	s       *Server
	conn    *net.UDPConn
	br      *batchReader   // reads conn; used by pion's one reader goroutine
	wq      *writeQueue    // what pion's read loop forwards, until its batch ends
	relayed netip.AddrPort // the public relayed address
	claims  atomic.Pointer[Claims]
	client  netip.AddrPort // guarded by s.mu; set with claims
	closed  atomic.Bool

	closeOnce sync.Once

	// ReadFrom's cache of the last source it returned; pion reads from one
	// goroutine per allocation and does not keep the address.
	lastFrom netip.AddrPort
	lastAddr *net.UDPAddr
}

var _ net.PacketConn = (*relayConn)(nil)

// WriteTo sends p to addr if the claims allow it. A refused datagram is
// dropped and reported as written, so pion keeps the allocation.
func (rc *relayConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	s := rc.s
	to, via, isRelay, ok := s.route(addrPort(addr))
	c := rc.claims.Load()
	if !ok || c == nil || !permitPeer(c, to, isRelay) {
		s.peerDenied.Add(1)
		if s.logLimit.allow() {
			var role Role
			var subject string
			if c != nil {
				role, subject = c.Role, c.Subject
			}
			s.log.Info("dropped datagram to a peer the credential does not allow", "role", role, "subject", subject,
				"relay_addr", rc.relayed, "peer_addr", addrString(addr))
		}
		return len(p), nil
	}
	if s.inLoop.Load() && rc.wq.queue(p, via) {
		s.markDirty(rc)
		s.account(rc.relayed, to, p)
		return len(p), nil
	}
	n, err := rc.conn.WriteToUDPAddrPort(p, via)
	if err != nil {
		return n, err
	}
	s.account(rc.relayed, to, p)
	return n, nil
}

// ReadFrom returns the next datagram from a peer the claims allow; others
// are dropped. A datagram from another allocation on this relay is
// returned as coming from that allocation's relayed address.
func (rc *relayConn) ReadFrom(p []byte) (int, net.Addr, error) {
	s := rc.s
	for {
		n, src, err := rc.br.read(p)
		if err != nil {
			return n, nil, err
		}
		from, isRelay, ok := s.source(netip.AddrPortFrom(src.Addr().Unmap(), src.Port()))
		c := rc.claims.Load()
		if !ok || c == nil || !permitPeer(c, from, isRelay) {
			s.peerDenied.Add(1)
			s.log.Debug("dropped datagram from a peer the credential does not allow", "relay_addr", rc.relayed, "peer_addr", src)
			continue
		}
		if !isRelay {
			// Datagrams between two allocations were counted when
			// the sending one wrote them.
			s.account(from, rc.relayed, p[:n])
		}
		if from != rc.lastFrom || rc.lastAddr == nil {
			rc.lastFrom, rc.lastAddr = from, net.UDPAddrFromAddrPort(from)
		}
		return n, rc.lastAddr, nil
	}
}

// Close closes the socket and forgets the allocation. It is idempotent.
func (rc *relayConn) Close() error {
	var err error
	rc.closeOnce.Do(func() {
		rc.closed.Store(true)
		s := rc.s
		s.mu.Lock()
		if s.byPort[rc.relayed.Port()] == rc {
			delete(s.byPort, rc.relayed.Port())
		}
		if c := rc.claims.Load(); c != nil {
			if s.byClient[rc.client] == rc {
				delete(s.byClient, rc.client)
			}
			key := subjectKey(*c)
			if s.perSub[key]--; s.perSub[key] <= 0 {
				delete(s.perSub, key)
			}
		}
		s.mu.Unlock()
		err = rc.conn.Close()
	})
	return err
}

func (rc *relayConn) isClosed() bool { return rc.closed.Load() }

// LocalAddr returns the socket's bound address (not the public one).
func (rc *relayConn) LocalAddr() net.Addr { return rc.conn.LocalAddr() }

// SetDeadline implements net.PacketConn.
func (rc *relayConn) SetDeadline(t time.Time) error { return rc.conn.SetDeadline(t) }

// SetReadDeadline implements net.PacketConn.
func (rc *relayConn) SetReadDeadline(t time.Time) error { return rc.conn.SetReadDeadline(t) }

// SetWriteDeadline implements net.PacketConn.
func (rc *relayConn) SetWriteDeadline(t time.Time) error { return rc.conn.SetWriteDeadline(t) }

// onHost reports whether ip is an address of the relay host: traffic to or
// from one must be between two live allocations.
func (s *Server) onHost(ip netip.Addr) bool {
	return ip == s.publicIP || ip == s.localIP || ip == s.relayIP || ip.IsLoopback() || ip.IsUnspecified()
}

// liveRelay returns whether port is a live relay socket.
func (s *Server) liveRelay(port uint16) bool {
	s.mu.RLock()
	rc := s.byPort[port]
	s.mu.RUnlock()
	return rc != nil && !rc.isClosed()
}

// route resolves a destination: to is the address the rules judge (a
// relayed address in its public form), via the one to send to (another
// allocation is reached on the host, never through the public IP, which a
// host behind 1:1 NAT may not be able to reach). ok is false for an
// address on the relay host that is not a live allocation.
func (s *Server) route(dst netip.AddrPort) (to, via netip.AddrPort, isRelay, ok bool) {
	if !dst.IsValid() {
		return dst, dst, false, false
	}
	if !s.onHost(dst.Addr()) {
		return dst, dst, false, true
	}
	if !s.liveRelay(dst.Port()) {
		return dst, dst, false, false
	}
	return netip.AddrPortFrom(s.publicIP, dst.Port()), netip.AddrPortFrom(s.localIP, dst.Port()), true, true
}

// source resolves the source of a received datagram the same way: from is
// the public relayed address for another allocation on this host. ok is
// false for any other source on the host.
func (s *Server) source(src netip.AddrPort) (from netip.AddrPort, isRelay, ok bool) {
	if !s.onHost(src.Addr()) {
		return src, false, true
	}
	if !s.liveRelay(src.Port()) {
		return src, false, false
	}
	return netip.AddrPortFrom(s.publicIP, src.Port()), true, true
}

// account counts and taps one forwarded datagram.
func (s *Server) account(from, to netip.AddrPort, p []byte) {
	s.packets.Add(1)
	s.bytes.Add(uint64(len(p)))
	if isWireGuardData(p) {
		s.wgData.Add(uint64(len(p)))
	}
	if s.tap != nil {
		s.tap(from, to, p)
	}
}

// isWireGuardData reports whether p looks like a WireGuard transport-data
// message: type 4, three reserved zero bytes, and at least the header and
// the authentication tag (16 + 16 bytes).
func isWireGuardData(p []byte) bool {
	return len(p) >= 32 && p[0] == 4 && p[1] == 0 && p[2] == 0 && p[3] == 0
}

// listenConn is the TURN socket as pion sees it. It records the error that
// ended pion's read loop: after that pion accepts no new allocations and
// closes the existing ones.
type listenConn struct {
	*net.UDPConn
	s        *Server
	br       *batchReader
	once     sync.Once
	readDone chan struct{}
	err      error // set before readDone is closed
}

// ReadFrom implements net.PacketConn.
func (l *listenConn) ReadFrom(p []byte) (int, net.Addr, error) {
	n, from, err := l.br.read(p)
	if err != nil {
		l.once.Do(func() {
			l.err = err
			close(l.readDone)
		})
		return n, nil, err
	}
	l.s.inLoop.Store(true)
	return n, net.UDPAddrFromAddrPort(from), nil
}
