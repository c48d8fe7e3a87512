package nat

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/pion/turn/v4"
	"golang.zx2c4.com/wireguard/conn"

	"github.com/keyhole-net/keyhole/internal/pionlog"
)

// RelayConfig says which TURN server to allocate on and with what
// credentials (TURN REST API style, issued by the controller).
type RelayConfig struct {
	Server   netip.AddrPort
	Username string
	Password string
	Realm    string
	Logger   *slog.Logger
}

// ErrNoRelay means a packet was sent to a relayed endpoint while the Bind
// holds no allocation.
var ErrNoRelay = errors.New("no relay allocation")

// relayPrefix marks a relayed endpoint in its string form (UAPI), so the
// path survives a round trip through wireguard-go's configuration protocol.
const relayPrefix = "relay/"

// RelayEndpoint is a peer reached through the Bind's TURN allocation: its
// packets arrive as relayed data and ours leave as ChannelData to the relay.
// Peer is the address the relay sees the peer at.
type RelayEndpoint struct {
	Peer netip.AddrPort
	udp  *net.UDPAddr
}

var _ conn.Endpoint = (*RelayEndpoint)(nil)

func newRelayEndpoint(peer netip.AddrPort) *RelayEndpoint {
	return &RelayEndpoint{Peer: peer, udp: net.UDPAddrFromAddrPort(peer)}
}

// ClearSrc does nothing: the source is the relay allocation.
func (e *RelayEndpoint) ClearSrc() {}

// SrcToString is empty: the source is the relay allocation.
func (e *RelayEndpoint) SrcToString() string { return "" }

// DstToString is "relay/" and the peer address.
func (e *RelayEndpoint) DstToString() string { return relayPrefix + e.Peer.String() }

// DstToBytes is the peer address, for WireGuard's cookie MACs.
func (e *RelayEndpoint) DstToBytes() []byte { b, _ := e.Peer.MarshalBinary(); return b }

// DstIP is the peer's IP.
func (e *RelayEndpoint) DstIP() netip.Addr { return e.Peer.Addr() }

// SrcIP is invalid: the source is the relay allocation.
func (e *RelayEndpoint) SrcIP() netip.Addr { return netip.Addr{} }

// IsRelayed reports whether an endpoint string (as UAPI prints it) names a
// relayed endpoint, and returns the peer address either way.
func IsRelayed(endpoint string) (netip.AddrPort, bool) {
	s, relayed := strings.CutPrefix(endpoint, relayPrefix)
	ap, _ := netip.ParseAddrPort(s)
	return ap, relayed
}

// relayPacket is one datagram the allocation received from a peer, or a
// held handshake initiation handed back by [Initiation.Deliver] (ep set).
type relayPacket struct {
	buf  *[maxPacket]byte
	n    int
	from netip.AddrPort
	ep   conn.Endpoint // nil for relayed packets: the receive path makes one from from
}

// maxPacket is the largest datagram carried through the relay.
const maxPacket = 65535

// relayState is one live allocation.
type relayState struct {
	server  netip.AddrPort
	sock    *sockConn
	sendMu  sync.Mutex // one batch at a time
	client  *turn.Client
	conn    net.PacketConn // the relayed side; nil until allocated
	relayed netip.AddrPort
	done    chan struct{} // closed when released
	stopped chan struct{} // closed when the reader has returned
}

// sockConn is the net.PacketConn the TURN client writes through: our
// WireGuard socket, towards the relay server only. Reads never happen (the
// receive filter hands TURN traffic to the client with HandleInbound).
//
// While a batch is open (sendRelay), ChannelData messages are collected and
// sent together, so a burst of WireGuard packets to the relay costs one
// sendmmsg (or one GSO send) instead of one syscall each. STUN messages are
// never held back: the TURN client may be waiting for their answers.
type sockConn struct {
	b      *Bind
	ep     conn.Endpoint
	closed chan struct{}
	once   sync.Once

	mu       sync.Mutex // guards batching, batch, lastChan
	batching bool
	batch    []*[maxPacket]byte
	sizes    []int
	lastChan uint16 // channel of the last ChannelData batched; 0: none
}

// startBatch opens a batch; endBatch closes it and sends what it holds.
func (s *sockConn) startBatch() {
	s.mu.Lock()
	s.batching, s.lastChan = true, 0
	s.mu.Unlock()
}

// takeChannel returns (and forgets) the channel number of the ChannelData
// message the TURN client batched last.
func (s *sockConn) takeChannel() uint16 {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch := s.lastChan
	s.lastChan = 0
	return ch
}

// appendChannelData batches data for channel ch, framed as the TURN client
// would frame it (RFC 8656 §12.4, padded to four bytes).
func (s *sockConn) appendChannelData(ch uint16, data []byte) {
	b := s.b.pool.Get().(*[maxPacket]byte)
	n := 4 + len(data)
	b[0], b[1], b[2], b[3] = byte(ch>>8), byte(ch), byte(len(data)>>8), byte(len(data))
	copy(b[4:], data)
	for n%4 != 0 {
		b[n] = 0
		n++
	}
	s.mu.Lock()
	s.batch, s.sizes = append(s.batch, b), append(s.sizes, n)
	s.mu.Unlock()
}

func (s *sockConn) endBatch() error {
	s.mu.Lock()
	batch, sizes := s.batch, s.sizes
	s.batch, s.sizes, s.batching = nil, nil, false
	s.mu.Unlock()
	// Send in chunks the inner Bind takes at once. Each message sits in a
	// full-size buffer: the inner Bind coalesces same-size datagrams into
	// one UDP GSO send by appending to the first buffer of a run.
	chunk := max(s.b.inner.BatchSize(), 1)
	bufs := make([][]byte, 0, min(chunk, len(batch)))
	var err error
	for i := 0; i < len(batch); i += chunk {
		j := min(i+chunk, len(batch))
		bufs = bufs[:0]
		for k := i; k < j; k++ {
			bufs = append(bufs, batch[k][:sizes[k]])
		}
		if e := sendGSO(s.b.inner, bufs, s.ep); e != nil && err == nil {
			err = e
		}
	}
	for _, b := range batch {
		s.b.pool.Put(b)
	}
	return err
}

func (s *sockConn) ReadFrom([]byte) (int, net.Addr, error) {
	<-s.closed
	return 0, nil, net.ErrClosed
}

func (s *sockConn) WriteTo(p []byte, _ net.Addr) (int, error) {
	if isChannelData(p) && len(p) <= maxPacket {
		s.mu.Lock()
		if s.batching {
			b := s.b.pool.Get().(*[maxPacket]byte)
			s.batch, s.sizes = append(s.batch, b), append(s.sizes, copy(b[:], p))
			s.lastChan = uint16(p[0])<<8 | uint16(p[1])
			s.mu.Unlock()
			return len(p), nil
		}
		s.mu.Unlock()
	}
	if err := s.b.inner.Send([][]byte{p}, s.ep); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (s *sockConn) Close() error                     { s.once.Do(func() { close(s.closed) }); return nil }
func (s *sockConn) LocalAddr() net.Addr              { return &net.UDPAddr{} }
func (s *sockConn) SetDeadline(time.Time) error      { return nil }
func (s *sockConn) SetReadDeadline(time.Time) error  { return nil }
func (s *sockConn) SetWriteDeadline(time.Time) error { return nil }

// Allocate makes a TURN allocation on cfg.Server from the WireGuard socket
// and returns its relayed address. Peers that send to that address (and
// whose IP was allowed with [Bind.Permit]) reach wireguard-go as
// [RelayEndpoint]s, and WireGuard's answers to them go back through the
// relay. An earlier allocation is released first. The Bind must be open.
func (b *Bind) Allocate(ctx context.Context, cfg RelayConfig) (netip.AddrPort, error) {
	b.Release()
	server := netip.AddrPortFrom(cfg.Server.Addr().Unmap(), cfg.Server.Port())
	if !server.IsValid() || server.Port() == 0 {
		return netip.AddrPort{}, fmt.Errorf("relay %s: invalid address", server)
	}
	ep, err := b.inner.ParseEndpoint(server.String())
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("relay %s: %w", server, err)
	}
	b.mu.Lock()
	open := b.done != nil
	b.mu.Unlock()
	if !open {
		return netip.AddrPort{}, fmt.Errorf("relay %s: %w", server, net.ErrClosed)
	}
	sock := &sockConn{b: b, ep: ep, closed: make(chan struct{})}
	client, err := turn.NewClient(&turn.ClientConfig{
		STUNServerAddr: server.String(),
		TURNServerAddr: server.String(),
		Username:       cfg.Username,
		Password:       cfg.Password,
		Realm:          cfg.Realm,
		Software:       "keyhole",
		Conn:           sock,
		LoggerFactory:  pionlog.Factory(cfg.Logger),
	})
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("relay %s: %w", server, err)
	}
	rs := &relayState{server: server, sock: sock, client: client, done: make(chan struct{}), stopped: make(chan struct{})}
	// Publish before allocating: the answers arrive on the receive path.
	b.relay.Store(rs)

	type result struct {
		pc  net.PacketConn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		pc, err := client.Allocate()
		ch <- result{pc, err}
	}()
	var r result
	select {
	case r = <-ch:
	case <-ctx.Done():
		client.Close() // fails the outstanding transaction
		r = <-ch
		if r.err == nil {
			r.pc.Close()
		}
		r.err = ctx.Err()
	}
	if r.err != nil {
		b.relay.CompareAndSwap(rs, nil)
		client.Close()
		sock.Close()
		close(rs.stopped)
		return netip.AddrPort{}, fmt.Errorf("relay %s: allocate: %w", server, r.err)
	}
	ua, _ := r.pc.LocalAddr().(*net.UDPAddr)
	if ua == nil {
		r.pc.Close()
		b.relay.CompareAndSwap(rs, nil)
		close(rs.stopped)
		return netip.AddrPort{}, fmt.Errorf("relay %s: allocation without a UDP address", server)
	}
	ap := ua.AddrPort()
	rs.conn, rs.relayed = r.pc, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	go func() {
		defer close(rs.stopped)
		defer sock.Close()
		b.readRelay(rs)
	}()
	return rs.relayed, nil
}

// Relayed returns the relayed address of the live allocation, if any.
func (b *Bind) Relayed() (netip.AddrPort, bool) {
	rs := b.relay.Load()
	if rs == nil || rs.conn == nil {
		return netip.AddrPort{}, false
	}
	return rs.relayed, true
}

// Permit asks the relay to let packets from peers in (TURN permissions are
// per IP address and last 5 minutes; call again to refresh). It gives up
// when ctx ends; the request itself may retransmit a little longer in the
// background (some relays never answer a request for an allocation they
// lost), until the TURN client gives up or the allocation is released.
func (b *Bind) Permit(ctx context.Context, peers ...netip.Addr) error {
	rs := b.relay.Load()
	if rs == nil || rs.conn == nil {
		return ErrNoRelay
	}
	addrs := make([]net.Addr, 0, len(peers))
	for _, p := range peers {
		if p.IsValid() {
			addrs = append(addrs, &net.UDPAddr{IP: p.Unmap().AsSlice()})
		}
	}
	if len(addrs) == 0 {
		return nil
	}
	done := make(chan error, 1)
	go func() {
		var err error
		for range 2 { // a stale nonce fails the first try; pion then has the new one
			if err = rs.client.CreatePermission(addrs...); err == nil {
				break
			}
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("relay %s: permission: %w", rs.server, err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("relay %s: permission: %w", rs.server, ctx.Err())
	case <-rs.done:
		return fmt.Errorf("relay %s: permission: %w", rs.server, net.ErrClosed)
	}
}

// Release gives the allocation back (best effort) and stops its reader.
func (b *Bind) Release() {
	rs := b.relay.Swap(nil)
	if rs == nil {
		return
	}
	close(rs.done)
	if rs.conn != nil {
		rs.conn.Close() // sends a zero-lifetime Refresh without waiting
	}
	rs.client.Close()
	<-rs.stopped
}

// readRelay moves what the allocation receives into wireguard-go's relay
// receive function, answering connectivity checks on the way.
func (b *Bind) readRelay(rs *relayState) {
	for {
		buf := b.pool.Get().(*[maxPacket]byte)
		n, from, err := rs.conn.ReadFrom(buf[:])
		if err != nil {
			b.pool.Put(buf)
			return
		}
		ua, _ := from.(*net.UDPAddr)
		if ua == nil || n == 0 {
			b.pool.Put(buf)
			continue
		}
		ap := ua.AddrPort()
		peer := netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		// The answer takes sendMu: inside a sendRelay batch it would be
		// the last ChannelData the batch learns its peer's channel from.
		if b.answer(buf[:n], peer, true, func(p []byte) {
			rs.sendMu.Lock()
			defer rs.sendMu.Unlock()
			_, _ = rs.conn.WriteTo(p, ua)
		}) {
			b.pool.Put(buf)
			continue
		}
		select {
		case b.relayRx <- relayPacket{buf: buf, n: n, from: peer}:
		case <-rs.done:
			b.pool.Put(buf)
			return
		}
	}
}

// relayReceive is the ReceiveFunc for relayed packets of one open period.
func (b *Bind) relayReceive(done <-chan struct{}) conn.ReceiveFunc {
	return func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		var p relayPacket
		select {
		case p = <-b.relayRx:
		case <-done:
			return 0, net.ErrClosed
		}
		n := 0
		var last *RelayEndpoint // a batch usually comes from one peer
		for {
			var ep conn.Endpoint = p.ep
			if ep == nil {
				if last == nil || last.Peer != p.from {
					last = b.relayEndpoint(p.from)
				}
				ep = last
			}
			// A delivered (held) initiation was judged already; a relayed
			// one meets the hook here.
			if p.ep != nil || b.judgeInitiation(p.buf[:p.n], ep, true) {
				sizes[n] = copy(packets[n], p.buf[:p.n])
				eps[n] = ep
				n++
			}
			b.pool.Put(p.buf)
			if n == len(packets) {
				return n, nil
			}
			if n == 0 {
				// Everything so far was held or dropped: wait for more,
				// since a ReceiveFunc returns at least one packet.
				select {
				case p = <-b.relayRx:
					continue
				case <-done:
					return 0, net.ErrClosed
				}
			}
			select {
			case p = <-b.relayRx:
			default:
				return n, nil
			}
		}
	}
}

// relayEndpoint returns the (cached) endpoint for a relayed peer.
func (b *Bind) relayEndpoint(peer netip.AddrPort) *RelayEndpoint {
	b.relayMu.Lock()
	defer b.relayMu.Unlock()
	if e := b.relayEps[peer]; e != nil {
		return e
	}
	if len(b.relayEps) >= 4096 {
		clear(b.relayEps)
	}
	e := newRelayEndpoint(peer)
	b.relayEps[peer] = e
	return e
}

// channelLookup is what pion's relayed connection offers to map a channel
// number back to its peer.
type channelLookup interface {
	FindAddrByChannelNumber(chNum uint16) (net.Addr, bool)
}

// peerChannel returns ch if the TURN client has it bound to e's peer, else
// 0. The last ChannelData the socket saw may belong to another peer: a
// write from another goroutine can slip in between.
func (rs *relayState) peerChannel(ch uint16, e *RelayEndpoint) uint16 {
	if ch == 0 {
		return 0
	}
	cl, ok := rs.conn.(channelLookup)
	if !ok {
		return 0
	}
	a, ok := cl.FindAddrByChannelNumber(ch)
	ua, _ := a.(*net.UDPAddr)
	if !ok || ua == nil {
		return 0
	}
	ap := ua.AddrPort()
	if netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()) != e.Peer {
		return 0
	}
	return ch
}

// sendRelay sends bufs to a relayed peer.
func (b *Bind) sendRelay(bufs [][]byte, e *RelayEndpoint) error {
	rs := b.relay.Load()
	if rs == nil || rs.conn == nil {
		return ErrNoRelay
	}
	rs.sendMu.Lock()
	defer rs.sendMu.Unlock()
	rs.sock.startBatch()
	var werr error
	var ch uint16 // the peer's channel, once the TURN client used one
	for _, buf := range bufs {
		if ch != 0 && len(buf)+8 <= maxPacket {
			// Frame the rest of the batch ourselves: the TURN client
			// allocates per message, and it has just shown which
			// channel the peer is bound to (it keeps the binding and
			// the permission fresh from the first message of every
			// batch).
			rs.sock.appendChannelData(ch, buf)
			continue
		}
		if _, err := rs.conn.WriteTo(buf, e.udp); err != nil {
			werr = fmt.Errorf("relay %s: send to %s: %w", rs.server, e.Peer, err)
			break
		}
		ch = rs.peerChannel(rs.sock.takeChannel(), e)
	}
	if err := rs.sock.endBatch(); err != nil && werr == nil {
		werr = fmt.Errorf("relay %s: send to %s: %w", rs.server, e.Peer, err)
	}
	return werr
}

// fromRelay hands pkt to the TURN client if it is TURN traffic from the
// relay server, and reports whether it did.
func (b *Bind) fromRelay(pkt []byte, from netip.AddrPort) bool {
	rs := b.relay.Load()
	if rs == nil || from != rs.server || !(isSTUN(pkt) || isChannelData(pkt)) {
		return false
	}
	_, _ = rs.client.HandleInbound(pkt, net.UDPAddrFromAddrPort(from)) // malformed: dropped
	return true
}

// isChannelData reports whether b is a TURN ChannelData message (RFC 8656
// §12.4): a channel number 0x4000–0x7FFF and a length that fits. Its first
// byte (0x40–0x7F) can never start a WireGuard or STUN message.
func isChannelData(b []byte) bool {
	if len(b) < 4 || b[0] < 0x40 || b[0] > 0x7f {
		return false
	}
	n := int(b[2])<<8 | int(b[3])
	return n <= len(b)-4
}
