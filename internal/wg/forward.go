package wg

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// maxInFlight bounds connection requests (TCP SYNs, new UDP flows) waiting
// for a handler's decision. Beyond it new ones are dropped; TCP clients
// retransmit their SYN.
const maxInFlight = 1024

// ErrRequestDone is returned by Accept on a request that was already
// accepted or rejected.
var ErrRequestDone = errors.New("wg: request already accepted or rejected")

// SetTCPHandler sets the function called, in its own goroutine, for each new
// inbound TCP connection (SYN) in Forward mode. The handler must call Accept
// or Reject before it returns; if it calls neither, the connection is
// rejected. A nil handler rejects everything. Handlers should return once
// their connections fail: Close waits for them.
func (n *Net) SetTCPHandler(h func(*TCPRequest)) {
	if h == nil {
		n.tcpHandler.Store(nil)
		return
	}
	n.tcpHandler.Store(&h)
}

// SetUDPHandler sets the function called, in its own goroutine, for each new
// inbound UDP flow (source and destination address and port) in Forward
// mode, with the same rules as SetTCPHandler. Packets of the flow that
// arrive while the handler decides are dropped.
func (n *Net) SetUDPHandler(h func(*UDPRequest)) {
	if h == nil {
		n.udpHandler.Store(nil)
		return
	}
	n.udpHandler.Store(&h)
}

func (n *Net) startForwarders() {
	fwd := tcp.NewForwarder(n.stack, tcpRXBufDef, maxInFlight, n.handleTCP)
	n.stack.SetTransportProtocolHandler(tcp.ProtocolNumber, fwd.HandlePacket)
	n.stack.SetTransportProtocolHandler(udp.ProtocolNumber, n.handleUDPPacket)
}

// startHandler registers a handler goroutine with Close, or reports false if
// the Net is closing.
func (n *Net) startHandler() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return false
	}
	n.handlers.Add(1)
	return true
}

// TCPRequest is an inbound TCP connection waiting for a decision: the SYN
// has arrived and nothing has been answered yet.
type TCPRequest struct {
	Src, Dst netip.AddrPort // the client and the address it dialed

	mu sync.Mutex            // guards fr
	fr *tcp.ForwarderRequest // nil once decided
}

// handleTCP runs in the goroutine gVisor's forwarder starts for each SYN.
func (n *Net) handleTCP(fr *tcp.ForwarderRequest) {
	id := fr.ID()
	r := &TCPRequest{
		Src: addrPort(id.RemoteAddress, id.RemotePort),
		Dst: addrPort(id.LocalAddress, id.LocalPort),
		fr:  fr,
	}
	if !n.startHandler() {
		r.Reject()
		return
	}
	defer n.handlers.Done()
	if h := n.tcpHandler.Load(); h != nil {
		(*h)(r)
	}
	r.Reject() // no-op unless the handler decided nothing
}

// Accept completes the handshake and returns the connection; its LocalAddr
// is Dst and its RemoteAddr is Src. It blocks until the client acknowledges
// the SYN-ACK or the handshake fails.
func (r *TCPRequest) Accept() (net.Conn, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fr := r.fr
	if fr == nil {
		return nil, ErrRequestDone
	}
	r.fr = nil
	var wq waiter.Queue
	ep, err := fr.CreateEndpoint(&wq)
	// The handshake either succeeded or already answered the client;
	// either way the SYN is no longer in flight and needs no RST.
	fr.Complete(false)
	if err != nil {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Source: net.TCPAddrFromAddrPort(r.Dst),
			Addr: net.TCPAddrFromAddrPort(r.Src), Err: os.NewSyscallError("accept", errnoOf(err))}
	}
	return gonet.NewTCPConn(&wq, ep), nil
}

// Reject answers the SYN with a RST at once, so the client sees "connection
// refused". It does nothing after Accept or a previous Reject.
func (r *TCPRequest) Reject() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fr != nil {
		r.fr.Complete(true)
		r.fr = nil
	}
}

// UDPRequest is the first packet of an inbound UDP flow waiting for a
// decision.
type UDPRequest struct {
	Src, Dst netip.AddrPort // the client and the address it sent to

	n  *Net
	id stack.TransportEndpointID

	mu  sync.Mutex          // guards pkt
	pkt *stack.PacketBuffer // the first packet; nil once decided
}

// handleUDPPacket is the stack's handler for UDP packets that match no
// endpoint. It runs on the packet path, so it only records the flow and
// starts the user's handler in a goroutine. Returning false makes the stack
// answer with ICMP port unreachable.
func (n *Net) handleUDPPacket(id stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.udpRejected[id]; ok {
		// Our own replay of a rejected flow's packet (see Reject).
		delete(n.udpRejected, id)
		return false
	}
	if n.closed {
		return true
	}
	if _, ok := n.udpPending[id]; ok || len(n.udpPending) >= maxInFlight {
		return true // drop: a decision is pending, or too many are
	}
	r := &UDPRequest{
		Src: addrPort(id.RemoteAddress, id.RemotePort),
		Dst: addrPort(id.LocalAddress, id.LocalPort),
		n:   n,
		id:  id,
		pkt: pkt.Clone(),
	}
	n.udpPending[id] = r
	n.handlers.Add(1)
	go n.runUDPHandler(r)
	return true
}

func (n *Net) runUDPHandler(r *UDPRequest) {
	defer n.handlers.Done()
	if h := n.udpHandler.Load(); h != nil {
		(*h)(r)
	}
	r.Reject() // no-op unless the handler decided nothing
}

// take marks the request decided and returns its packet, or nil if it was
// decided before.
func (r *UDPRequest) take() *stack.PacketBuffer {
	r.mu.Lock()
	defer r.mu.Unlock()
	pkt := r.pkt
	r.pkt = nil
	return pkt
}

// release drops the request's packet without answering; Close uses it.
func (r *UDPRequest) release() {
	if pkt := r.take(); pkt != nil {
		pkt.DecRef()
	}
}

// Accept creates the flow's socket and returns it as a connected net.Conn
// (a *gonet.UDPConn, which is also a net.PacketConn): Read returns datagrams
// from Src, Write sends to Src from Dst. The first packet of the flow is the
// first one Read returns.
func (r *UDPRequest) Accept() (net.Conn, error) {
	pkt := r.take()
	if pkt == nil {
		return nil, ErrRequestDone
	}
	defer pkt.DecRef()

	var (
		wq  waiter.Queue
		ep  tcpip.Endpoint
		err tcpip.Error = &tcpip.ErrInvalidEndpointState{}
	)
	// gVisor's UDP forwarder builds the connected endpoint from the
	// flow's first packet and delivers that packet to it; it runs the
	// callback synchronously.
	udp.NewForwarder(r.n.stack, func(fr *udp.ForwarderRequest) {
		ep, err = fr.CreateEndpoint(&wq)
	}).HandlePacket(r.id, pkt)

	// From now on the flow's packets reach the endpoint, not the handler.
	r.n.mu.Lock()
	delete(r.n.udpPending, r.id)
	r.n.mu.Unlock()

	if err != nil {
		return nil, fmt.Errorf("wg: accept udp %v -> %v: %s", r.Src, r.Dst, err)
	}
	return gonet.NewUDPConn(&wq, ep), nil
}

// Reject drops the flow and answers its first packet with ICMP port
// unreachable. Later packets of the flow start a new request.
func (r *UDPRequest) Reject() {
	pkt := r.take()
	if pkt == nil {
		return
	}
	defer pkt.DecRef()
	n := r.n
	n.mu.Lock()
	delete(n.udpPending, r.id)
	closed := n.closed
	if !closed {
		n.udpRejected[r.id] = struct{}{}
	}
	n.mu.Unlock()
	if closed {
		return
	}
	// Replay the packet into the stack with the flow marked rejected:
	// handleUDPPacket then declines it and gVisor sends the ICMP error,
	// with its usual rate limiting. Delivery is synchronous, so the mark
	// is gone when inject returns; delete it anyway in case the packet
	// was dropped before reaching UDP.
	buf := pkt.ToBuffer()
	n.ep.inject(buf.Flatten())
	buf.Release()
	n.mu.Lock()
	delete(n.udpRejected, r.id)
	n.mu.Unlock()
}
