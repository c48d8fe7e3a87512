package nat

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/stun/v3"
	"golang.zx2c4.com/wireguard/conn"
)

// Errors returned by [Bind.Reflexive]. A query interrupted by [Bind.Close]
// (which wireguard-go also calls when it rebinds) fails with an error that
// wraps [net.ErrClosed]; callers may retry once the Bind is open again.
var (
	// ErrTooManyTransactions means MaxPending queries are already outstanding.
	ErrTooManyTransactions = errors.New("too many outstanding STUN transactions")
	// ErrNoResponse means every retransmission went unanswered.
	ErrNoResponse = errors.New("no STUN response")
	// ErrRefused means the server answered with a Binding error response.
	ErrRefused = errors.New("STUN binding refused")
)

const (
	// MaxPending bounds the outstanding STUN transactions of one Bind, so
	// that callers cannot grow the table the receive path consults.
	MaxPending = 32

	// Retransmission schedule (RFC 8489 §6.2.1, with a shorter cap): the
	// request is sent up to maxSends times, waiting rtoInitial, then twice
	// as long each time up to rtoMax, before giving up with ErrNoResponse.
	rtoInitial = 250 * time.Millisecond
	rtoMax     = time.Second
	maxSends   = 6
)

// Bind is a [conn.Bind] that lets one UDP socket carry both WireGuard and
// STUN. It wraps another Bind (normally [conn.NewDefaultBind]): the receive
// functions it returns from Open take out of each batch the STUN responses
// that answer a transaction started by [Bind.Reflexive] from the server it
// was sent to, and pass everything else — WireGuard, stray or spoofed STUN,
// junk — to wireguard-go untouched.
//
// Hand the Bind to device.NewDevice and keep the pointer to call Reflexive.
type Bind struct {
	inner conn.Bind

	// npending mirrors len(pending) so the receive path skips the lock
	// entirely while no query is outstanding.
	npending atomic.Int32

	mu      sync.Mutex // guards pending, done
	pending map[[stunTxIDSize]byte]*transaction
	done    chan struct{} // closed by Close; nil while the Bind is not open

	checks   atomic.Pointer[CheckConfig]
	initHook atomic.Pointer[InitiationHook]

	relay    atomic.Pointer[relayState]
	relayRx  chan relayPacket // from the allocation's reader to wireguard-go
	pool     sync.Pool        // of *[maxPacket]byte
	relayMu  sync.Mutex       // guards relayEps
	relayEps map[netip.AddrPort]*RelayEndpoint
}

// transaction is one outstanding Binding request.
type transaction struct {
	server netip.AddrPort  // the only source a response is accepted from
	done   <-chan struct{} // the open period the query belongs to
	resp   chan []byte     // capacity 1; the receive path never blocks on it
}

// NewBind returns a Bind that wraps inner, or [conn.NewDefaultBind] when
// inner is nil. inner must not be used directly afterwards.
func NewBind(inner conn.Bind) *Bind {
	if inner == nil {
		inner = conn.NewDefaultBind()
	}
	return &Bind{
		inner:    inner,
		pending:  make(map[[stunTxIDSize]byte]*transaction),
		relayRx:  make(chan relayPacket, 256),
		pool:     sync.Pool{New: func() any { return new([maxPacket]byte) }},
		relayEps: make(map[netip.AddrPort]*RelayEndpoint),
	}
}

// Open opens the wrapped Bind and returns its receive functions wrapped in
// the STUN filter.
func (b *Bind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	fns, actual, err := b.inner.Open(port)
	if err != nil {
		return nil, 0, err
	}
	done := make(chan struct{})
	b.mu.Lock()
	b.done = done
	b.mu.Unlock()
	wrapped := make([]conn.ReceiveFunc, len(fns), len(fns)+1)
	for i, fn := range fns {
		wrapped[i] = b.receiveFunc(fn)
	}
	return append(wrapped, b.relayReceive(done)), actual, nil
}

// Close fails every outstanding query, releases the relay allocation (it is
// tied to the socket's port) and closes the wrapped Bind.
func (b *Bind) Close() error {
	b.Release()
	b.mu.Lock()
	if b.done != nil {
		close(b.done)
		b.done = nil
	}
	clear(b.pending)
	b.npending.Store(0)
	b.mu.Unlock()
	return b.inner.Close()
}

// SetMark sets the socket mark on the wrapped Bind.
func (b *Bind) SetMark(mark uint32) error { return b.inner.SetMark(mark) }

// Send sends WireGuard packets through the wrapped Bind, or through the
// relay allocation to a [RelayEndpoint].
func (b *Bind) Send(bufs [][]byte, ep conn.Endpoint) error {
	if e, ok := ep.(*RelayEndpoint); ok {
		return b.sendRelay(bufs, e)
	}
	return sendGSO(b.inner, bufs, ep)
}

// ParseEndpoint parses an endpoint of the wrapped Bind, or a relayed one
// ("relay/ADDR:PORT", as [RelayEndpoint.DstToString] prints it).
func (b *Bind) ParseEndpoint(s string) (conn.Endpoint, error) {
	if ap, relayed := IsRelayed(s); relayed {
		if !ap.IsValid() {
			return nil, fmt.Errorf("invalid relayed endpoint %q", s)
		}
		return b.relayEndpoint(netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())), nil
	}
	return b.inner.ParseEndpoint(s)
}

// BatchSize is the wrapped Bind's batch size.
func (b *Bind) BatchSize() int { return b.inner.BatchSize() }

// Reflexive asks the STUN server for the address it sees this Bind's socket
// as coming from — the server-reflexive address — by sending a Binding
// request from the WireGuard socket itself. It retransmits with exponential
// backoff (250 ms, 500 ms, 1 s, …) until a response, ctx is done, the Bind
// is closed, or the retransmissions are exhausted ([ErrNoResponse]).
//
// Only a response carrying this query's random transaction ID and coming
// from server is accepted; anything else goes to WireGuard, which drops it.
func (b *Bind) Reflexive(ctx context.Context, server netip.AddrPort) (netip.AddrPort, error) {
	var mapped netip.AddrPort
	err := b.transact(ctx, server, reflexiveSchedule, func(id [stunTxIDSize]byte) ([]byte, error) {
		req, err := stun.Build(stun.NewTransactionIDSetter(id), stun.BindingRequest)
		if err != nil {
			return nil, err
		}
		return req.Raw, nil
	}, func(raw []byte) error {
		var err error
		mapped, err = parseBindingResponse(raw)
		return err
	})
	return mapped, err
}

// schedule is a retransmission schedule: the first wait, its cap and the
// number of sends before giving up.
type schedule struct {
	rto, max time.Duration
	sends    int
}

// reflexiveSchedule follows RFC 8489 §6.2.1, with a shorter cap.
var reflexiveSchedule = schedule{rto: rtoInitial, max: rtoMax, sends: maxSends}

// transact runs one STUN transaction with server: build makes the request
// for the transaction ID, accept judges each response from server carrying
// that ID. A response accept rejects with errMalformed is ignored (the
// transaction keeps waiting); any other error ends it.
func (b *Bind) transact(ctx context.Context, server netip.AddrPort, sch schedule, build func([stunTxIDSize]byte) ([]byte, error), accept func([]byte) error) error {
	server = netip.AddrPortFrom(server.Addr().Unmap(), server.Port())
	if !server.IsValid() || server.Port() == 0 {
		return fmt.Errorf("stun %s: invalid address", server)
	}
	ep, err := b.inner.ParseEndpoint(server.String())
	if err != nil {
		return fmt.Errorf("stun %s: %w", server, err)
	}
	id, t, err := b.register(server)
	if err != nil {
		return fmt.Errorf("stun %s: %w", server, err)
	}
	defer b.unregister(id)
	req, err := build(id)
	if err != nil {
		return fmt.Errorf("stun %s: build request: %w", server, err)
	}
	bufs := [][]byte{req}

	timer := time.NewTimer(sch.rto)
	defer timer.Stop()
	rto := sch.rto
	for sends := 1; ; sends++ {
		if err := b.inner.Send(bufs, ep); err != nil {
			select {
			case <-t.done:
				return fmt.Errorf("stun %s: %w", server, net.ErrClosed)
			default:
			}
			return fmt.Errorf("stun %s: send: %w", server, err)
		}
		timer.Reset(rto)
	wait:
		for {
			select {
			case <-ctx.Done():
				return fmt.Errorf("stun %s: %w", server, ctx.Err())
			case <-t.done:
				return fmt.Errorf("stun %s: %w", server, net.ErrClosed)
			case raw := <-t.resp:
				err := accept(raw)
				if errors.Is(err, errMalformed) {
					continue // keep waiting for a well-formed answer
				}
				if err != nil {
					return fmt.Errorf("stun %s: %w", server, err)
				}
				return nil
			case <-timer.C:
				break wait
			}
		}
		if sends == sch.sends {
			return fmt.Errorf("stun %s: %w after %d requests", server, ErrNoResponse, sends)
		}
		rto = min(2*rto, sch.max)
	}
}

// register records a new transaction with a fresh random ID.
func (b *Bind) register(server netip.AddrPort) ([stunTxIDSize]byte, *transaction, error) {
	var id [stunTxIDSize]byte
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.done == nil {
		return id, nil, net.ErrClosed
	}
	if len(b.pending) >= MaxPending {
		return id, nil, ErrTooManyTransactions
	}
	for {
		rand.Read(id[:]) // never fails (crypto/rand, Go 1.24+)
		if _, dup := b.pending[id]; !dup {
			break
		}
	}
	t := &transaction{server: server, done: b.done, resp: make(chan []byte, 1)}
	b.pending[id] = t
	b.npending.Store(int32(len(b.pending)))
	return id, t, nil
}

func (b *Bind) unregister(id [stunTxIDSize]byte) {
	b.mu.Lock()
	delete(b.pending, id)
	b.npending.Store(int32(len(b.pending)))
	b.mu.Unlock()
}

// receiveFunc wraps fn so that STUN responses to our transactions never
// reach wireguard-go. It reads again when a whole batch was consumed, so it
// keeps the ReceiveFunc promise of at least one packet per successful call.
func (b *Bind) receiveFunc(fn conn.ReceiveFunc) conn.ReceiveFunc {
	return func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		for {
			n, err := fn(packets, sizes, eps)
			if n > 0 {
				n = b.filter(packets, sizes, eps, n)
			}
			if n > 0 || err != nil {
				return n, err
			}
		}
	}
}

// filter removes the packets that are not for WireGuard from the first n
// elements of the batch — STUN responses to our transactions, connectivity
// checks, and TURN traffic from the relay server — compacting the batch in
// place, and returns the new count.
func (b *Bind) filter(packets [][]byte, sizes []int, eps []conn.Endpoint, n int) int {
	w := 0
	for r := range n {
		if sizes[r] > 0 && b.intercept(packets[r][:sizes[r]], eps[r]) {
			continue
		}
		if w != r {
			// Copy bytes rather than swap slices: wireguard-go reads
			// packet i from its own buffer array by index, not from
			// the slice header in packets[i].
			sizes[w] = copy(packets[w], packets[r][:sizes[r]])
			eps[w] = eps[r]
		}
		w++
	}
	return w
}

// intercept reports whether pkt was taken out of WireGuard's way. The usual
// WireGuard data packet costs two byte comparisons.
func (b *Bind) intercept(pkt []byte, ep conn.Endpoint) bool {
	if pkt[0] == wgTransport || ep == nil {
		return false
	}
	if isInitiation(pkt) {
		return !b.judgeInitiation(pkt, ep, false)
	}
	if isSTUN(pkt) {
		if stunType(pkt) == stunBindingRequest {
			return b.answer(pkt, endpointAddr(ep), false, b.replyDirect(ep))
		}
		if b.npending.Load() != 0 && b.consume(pkt, ep) {
			return true
		}
		return b.fromRelay(pkt, endpointAddr(ep))
	}
	return isChannelData(pkt) && b.fromRelay(pkt, endpointAddr(ep))
}

// consume hands pkt to its transaction and reports true if pkt is a Binding
// response to an outstanding transaction that came from that transaction's
// server. Everything else is left for WireGuard.
func (b *Bind) consume(pkt []byte, ep conn.Endpoint) bool {
	if !isSTUN(pkt) {
		return false
	}
	if typ := stunType(pkt); typ != stunBindingSuccess && typ != stunBindingError {
		return false
	}
	var id [stunTxIDSize]byte
	copy(id[:], pkt[stunTxIDOffset:stunHeaderSize])
	b.mu.Lock()
	t := b.pending[id]
	b.mu.Unlock()
	if t == nil || ep == nil || endpointAddr(ep) != t.server {
		return false
	}
	select {
	case t.resp <- append([]byte(nil), pkt...): // once per answered query, not per packet
	default: // a duplicate of an answer not yet read: drop it
	}
	return true
}

// endpointAddr returns the remote address of a received packet, unmapped.
func endpointAddr(ep conn.Endpoint) netip.AddrPort {
	var ap netip.AddrPort
	if e, ok := ep.(*conn.StdNetEndpoint); ok {
		ap = e.AddrPort
	} else {
		ap, _ = netip.ParseAddrPort(ep.DstToString())
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// errMalformed marks a response that matched a transaction but could not
// be decoded; the query keeps waiting for another.
var errMalformed = errors.New("malformed STUN response")

// parseBindingResponse extracts the XOR-MAPPED-ADDRESS of a Binding success
// response, or returns ErrRefused for an error response.
func parseBindingResponse(raw []byte) (netip.AddrPort, error) {
	var m stun.Message
	if err := stun.Decode(raw, &m); err != nil {
		return netip.AddrPort{}, fmt.Errorf("%w: %w", errMalformed, err)
	}
	switch m.Type {
	case stun.BindingSuccess:
		var xa stun.XORMappedAddress
		if err := xa.GetFrom(&m); err != nil {
			return netip.AddrPort{}, fmt.Errorf("%w: %w", errMalformed, err)
		}
		ip, ok := netip.AddrFromSlice(xa.IP)
		if !ok || xa.Port <= 0 || xa.Port > 0xffff {
			return netip.AddrPort{}, fmt.Errorf("%w: bad XOR-MAPPED-ADDRESS", errMalformed)
		}
		return netip.AddrPortFrom(ip.Unmap(), uint16(xa.Port)), nil
	case stun.BindingError:
		var ec stun.ErrorCodeAttribute
		if err := ec.GetFrom(&m); err != nil {
			return netip.AddrPort{}, ErrRefused
		}
		return netip.AddrPort{}, fmt.Errorf("%w: %d %s", ErrRefused, ec.Code, ec.Reason)
	default:
		return netip.AddrPort{}, errMalformed
	}
}
