package wg

import (
	"net/netip"
	"os"
	"sync"
	"sync/atomic"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/stack/gro"
)

const (
	// outboundQueueLen bounds the packets gVisor has handed us that
	// WireGuard has not read yet. Most are 64 KiB GSO packets, so this is
	// plenty for a multi-MiB TCP window; beyond it we drop, as a full NIC
	// ring would, and TCP backs off.
	outboundQueueLen = 1024

	// gsoMaxSize is the largest packet gVisor's TCP may hand us. gVisor
	// sizes the payload as gsoMaxSize minus a 61-byte allowance for the TCP
	// header; this value keeps header+payload within the IPv4 total-length
	// field even with 40 bytes of TCP options.
	gsoMaxSize = 65535 - header.IPv4MinimumSize

	// scratchSize holds any packet gVisor can produce (gsoMaxSize plus
	// headers), for flattening a GSO packet before cutting it up.
	scratchSize = 1 << 16

	// groBucketSize mirrors the unexported per-bucket capacity of
	// gVisor's gro.GRO.
	groBucketSize = 8
)

// linkEndpoint is the gVisor side of the data plane: a stack.LinkEndpoint
// that queues outbound packets for WireGuard to read and delivers the packets
// WireGuard decrypted into the stack. tunDevice is its wireguard-go side;
// the two are separate types because both interfaces need a Close method.
type linkEndpoint struct {
	mtu atomic.Uint32

	queue     chan *stack.PacketBuffer // outbound, gVisor → WireGuard
	done      chan struct{}            // closed by close
	closeOnce sync.Once
	closed    atomic.Bool
	drops     atomic.Uint64 // outbound packets dropped: queue full, closed, or malformed
	// refuseFrom, when set (Forward mode), is the address refusals of
	// SYNs to martian destinations come from; see martianRST.
	refuseFrom atomic.Pointer[netip.Addr]
	onRefuse   atomic.Pointer[func(src, dst netip.AddrPort)]
	onEcho     atomic.Pointer[func(src, dst netip.Addr) bool] // Forward mode; see echo.go

	mu         sync.RWMutex // guards dispatcher, onClose
	dispatcher stack.NetworkDispatcher
	onClose    func()

	// gros holds *gro.GRO coalescers. wireguard-go calls Write from one
	// goroutine per peer, and a gro.GRO is single-threaded, so each Write
	// borrows one; Write flushes it before returning, so no state is shared.
	gros sync.Pool

	// Read state. wireguard-go calls tun.Device.Read from a single goroutine
	// (RoutineReadFromTUN), so these need no lock.
	scratch    []byte    // flattened GSO packet being segmented
	pending    []byte    // scratch[:n] while segments of it remain to be read
	pendingHdr tcpPacket // layout of pending
	pendingMSS int
	pendingSeg int // next segment of pending to emit
}

var (
	_ stack.LinkEndpoint = (*linkEndpoint)(nil)
	_ stack.GSOEndpoint  = (*linkEndpoint)(nil)
	_ tun.Device         = (*tunDevice)(nil)
)

func newLinkEndpoint(mtu int) *linkEndpoint {
	e := &linkEndpoint{
		queue:   make(chan *stack.PacketBuffer, outboundQueueLen),
		done:    make(chan struct{}),
		scratch: make([]byte, scratchSize),
	}
	e.mtu.Store(uint32(mtu))
	e.gros.New = func() any {
		g := new(gro.GRO)
		g.Init(true)
		return g
	}
	return e
}

// MTU implements stack.LinkEndpoint.
func (e *linkEndpoint) MTU() uint32 { return e.mtu.Load() }

// SetMTU implements stack.LinkEndpoint.
func (e *linkEndpoint) SetMTU(mtu uint32) { e.mtu.Store(mtu) }

// MaxHeaderLength implements stack.LinkEndpoint: WireGuard adds its header in
// its own buffers, not in ours.
func (*linkEndpoint) MaxHeaderLength() uint16 { return 0 }

// LinkAddress implements stack.LinkEndpoint; an L3 tunnel has none.
func (*linkEndpoint) LinkAddress() tcpip.LinkAddress { return "" }

// SetLinkAddress implements stack.LinkEndpoint.
func (*linkEndpoint) SetLinkAddress(tcpip.LinkAddress) {}

// Capabilities implements stack.LinkEndpoint. We claim RX checksum offload:
// WireGuard authenticated every byte of each received packet with the peer's
// key, so corruption in transit is impossible and a bad checksum could only be
// the peer's own doing. It also matters for GRO, which grows the IPv4 total
// length of coalesced packets without redoing the header checksum. We claim
// no TX offload: GSO packets get their checksums in segmentTCP, and gVisor
// checksums everything else itself.
func (*linkEndpoint) Capabilities() stack.LinkEndpointCapabilities {
	return stack.CapabilityRXChecksumOffload
}

// GSOMaxSize implements stack.GSOEndpoint.
func (*linkEndpoint) GSOMaxSize() uint32 { return gsoMaxSize }

// SupportedGSO implements stack.GSOEndpoint. "Host" GSO means gVisor hands
// us large TCP packets and leaves segmentation to the link, which is us.
func (*linkEndpoint) SupportedGSO() stack.SupportedGSO { return stack.HostGSOSupported }

// Attach implements stack.LinkEndpoint.
func (e *linkEndpoint) Attach(d stack.NetworkDispatcher) {
	e.mu.Lock()
	e.dispatcher = d
	e.mu.Unlock()
}

// IsAttached implements stack.LinkEndpoint.
func (e *linkEndpoint) IsAttached() bool {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.dispatcher != nil
}

// Wait implements stack.LinkEndpoint; the endpoint starts no goroutines.
func (*linkEndpoint) Wait() {}

// ARPHardwareType implements stack.LinkEndpoint.
func (*linkEndpoint) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareNone }

// AddHeader implements stack.LinkEndpoint; there is no link header.
func (*linkEndpoint) AddHeader(*stack.PacketBuffer) {}

// ParseHeader implements stack.LinkEndpoint; there is no link header.
func (*linkEndpoint) ParseHeader(*stack.PacketBuffer) bool { return true }

// SetOnCloseAction implements stack.LinkEndpoint.
func (e *linkEndpoint) SetOnCloseAction(f func()) {
	e.mu.Lock()
	e.onClose = f
	e.mu.Unlock()
}

// Close implements stack.LinkEndpoint. The stack calls it when the NIC is
// removed.
func (e *linkEndpoint) Close() {
	e.mu.Lock()
	f := e.onClose
	e.onClose = nil
	e.mu.Unlock()
	if f != nil {
		f()
	}
	e.close()
}

// close stops the queue: Read returns os.ErrClosed and queued packets are
// released. Safe to call more than once and from either side.
func (e *linkEndpoint) close() {
	e.closeOnce.Do(func() {
		e.closed.Store(true)
		close(e.done)
	})
	for {
		select {
		case pkt := <-e.queue:
			pkt.DecRef()
		default:
			return
		}
	}
}

// WritePackets implements stack.LinkWriter: it queues the packets for
// WireGuard's reader. It never blocks; a full queue drops, like a NIC ring.
func (e *linkEndpoint) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	n := 0
	for _, pkt := range pkts.AsSlice() {
		if e.closed.Load() {
			if n == 0 {
				return 0, &tcpip.ErrClosedForSend{}
			}
			break
		}
		select {
		case e.queue <- pkt.IncRef():
			n++
		default:
			pkt.DecRef()
			e.drops.Add(1)
			if n == 0 {
				return 0, &tcpip.ErrNoBufferSpace{}
			}
			return n, nil
		}
	}
	return n, nil
}

// read fills bufs with outbound packets for wireguard-go; see tunDevice.Read.
func (e *linkEndpoint) read(bufs [][]byte, sizes []int, offset int) (int, error) {
	n := 0
	for n < len(bufs) {
		if e.pending != nil {
			k, err := segmentTCP(e.pending, e.pendingHdr, e.pendingMSS, e.pendingSeg, bufs[n:], sizes[n:], offset)
			n += k
			e.pendingSeg += k
			if err != nil || e.pendingSeg >= e.pendingHdr.segments(e.pending, e.pendingMSS) {
				if err != nil {
					e.drops.Add(1)
				}
				e.pending = nil
				continue
			}
			break // bufs are full; the rest goes out on the next read
		}

		var pkt *stack.PacketBuffer
		if n == 0 {
			select {
			case pkt = <-e.queue:
			case <-e.done:
				return 0, os.ErrClosed
			}
		} else {
			select {
			case pkt = <-e.queue:
			default:
				return n, nil
			}
		}
		n += e.emit(pkt, bufs[n], &sizes[n], offset)
		pkt.DecRef()
	}
	return n, nil
}

// emit writes pkt to buf[offset:] and returns 1, or, for a GSO packet too
// big for one MTU, flattens it into the scratch buffer and leaves it pending
// for read to segment, returning 0. Malformed packets are dropped (0).
func (e *linkEndpoint) emit(pkt *stack.PacketBuffer, buf []byte, size *int, offset int) int {
	gso := pkt.GSOOptions
	dst := buf[offset:]
	if gso.Type == stack.GSONone || !gso.NeedsCsum {
		n, ok := flatten(pkt, dst)
		if !ok {
			e.drops.Add(1)
			return 0
		}
		*size = n
		return 1
	}

	// A TCP packet with a partial checksum, maybe longer than the MSS.
	// (The MSS is zero until the handshake has set it.)
	if mss := int(gso.MSS); mss == 0 || pkt.Data().Size() <= mss {
		n, ok := flatten(pkt, dst)
		if !ok {
			e.drops.Add(1)
			return 0
		}
		p, err := parseTCP(dst[:n])
		if err != nil {
			e.drops.Add(1)
			return 0
		}
		setTCPChecksum(dst[:n], p)
		*size = n
		return 1
	}
	n, ok := flatten(pkt, e.scratch)
	if !ok {
		e.drops.Add(1)
		return 0
	}
	p, err := parseTCP(e.scratch[:n])
	if err != nil {
		e.drops.Add(1)
		return 0
	}
	e.pending, e.pendingHdr, e.pendingMSS, e.pendingSeg = e.scratch[:n], p, int(gso.MSS), 0
	return 0
}

// flatten copies the whole of pkt (headers and payload) to dst without
// allocating. It reports false if dst is too small.
func flatten(pkt *stack.PacketBuffer, dst []byte) (int, bool) {
	size := pkt.Size()
	if size > len(dst) {
		return 0, false
	}
	views, off := pkt.AsViewList()
	n := 0
	for v := views.Front(); v != nil && n < size; v = v.Next() {
		b := v.AsSlice()
		if off >= len(b) {
			off -= len(b)
			continue
		}
		b = b[off:]
		off = 0
		n += copy(dst[n:size], b)
	}
	return n, n == size
}

// write delivers packets decrypted by WireGuard into the stack, coalescing
// TCP segments of the same flow (GRO) so the stack handles one large segment
// instead of dozens of small ones.
func (e *linkEndpoint) write(bufs [][]byte, offset int) (int, error) {
	e.mu.RLock()
	d := e.dispatcher
	e.mu.RUnlock()
	if d == nil || e.closed.Load() {
		return 0, os.ErrClosed
	}
	g := e.gros.Get().(*gro.GRO)
	g.Dispatcher = d
	for _, buf := range bufs {
		if len(buf) <= offset {
			continue
		}
		packet := buf[offset:]
		if from := e.refuseFrom.Load(); from != nil {
			if rst := martianRST(packet, *from); rst != nil {
				e.queueReply(rst)
				if h := e.onRefuse.Load(); h != nil {
					(*h)(flowOf(packet))
				}
				continue
			}
			if src, dst, ok := echoRequest4(packet); ok {
				if h := e.onEcho.Load(); h != nil && (*h)(src, dst) {
					e.queueReply(echoReply4(packet))
				}
				continue
			}
		}
		var proto tcpip.NetworkProtocolNumber
		switch packet[0] >> 4 {
		case 4:
			proto = header.IPv4ProtocolNumber
		case 6:
			proto = header.IPv6ProtocolNumber
		default:
			// Not IP. wireguard-go already checked the source
			// address against the peer's allowed IPs, so this
			// cannot happen; drop rather than fail the batch.
			continue
		}
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(packet)})
		pkt.NetworkProtocolNumber = proto
		// See Capabilities: GRO reads this flag before the NIC sets it.
		pkt.RXChecksumValidated = true
		g.Enqueue(pkt)
		pkt.DecRef()
	}
	// gro.GRO.Flush in this gVisor version delivers only the oldest
	// packet of each bucket: removing an entry clears the list links its
	// loop follows. A bucket holds at most groBucketSize (8) packets, so
	// flushing that often empties it, and must, since this GRO goes back
	// to a pool.
	for range groBucketSize {
		g.Flush()
	}
	g.Dispatcher = nil
	e.gros.Put(g)
	return len(bufs), nil
}

// inject delivers one raw IP packet into the stack as if WireGuard had
// received it. It is used to replay a UDP packet so the stack answers it with
// ICMP port unreachable.
func (e *linkEndpoint) inject(packet []byte) {
	e.mu.RLock()
	d := e.dispatcher
	e.mu.RUnlock()
	if d == nil || len(packet) == 0 || e.closed.Load() {
		return
	}
	var proto tcpip.NetworkProtocolNumber
	switch packet[0] >> 4 {
	case 4:
		proto = header.IPv4ProtocolNumber
	case 6:
		proto = header.IPv6ProtocolNumber
	default:
		return
	}
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(packet)})
	pkt.NetworkProtocolNumber = proto
	pkt.RXChecksumValidated = true
	d.DeliverNetworkPacket(proto, pkt)
	pkt.DecRef()
}

// tunDevice is the wireguard-go side of linkEndpoint: tun.Device.
type tunDevice struct {
	ep        *linkEndpoint
	events    chan tun.Event
	closeOnce sync.Once
}

func newTUNDevice(ep *linkEndpoint) *tunDevice {
	t := &tunDevice{ep: ep, events: make(chan tun.Event, 1)}
	t.events <- tun.EventUp
	return t
}

// File implements tun.Device; there is no file descriptor.
func (*tunDevice) File() *os.File { return nil }

// Read implements tun.Device. It blocks for the first packet, then takes
// whatever else is queued without blocking, cutting GSO packets into
// MTU-sized segments, until bufs are full.
func (t *tunDevice) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	return t.ep.read(bufs, sizes, offset)
}

// Write implements tun.Device.
func (t *tunDevice) Write(bufs [][]byte, offset int) (int, error) {
	return t.ep.write(bufs, offset)
}

// MTU implements tun.Device.
func (t *tunDevice) MTU() (int, error) { return int(t.ep.MTU()), nil }

// Name implements tun.Device.
func (*tunDevice) Name() (string, error) { return "keyhole", nil }

// Events implements tun.Device.
func (t *tunDevice) Events() <-chan tun.Event { return t.events }

// BatchSize implements tun.Device. Matching the UDP bind's batch lets one
// Read fill a whole sendmmsg/UDP GSO batch.
func (*tunDevice) BatchSize() int { return conn.IdealBatchSize }

// Close implements tun.Device. wireguard-go calls it from Device.Close.
func (t *tunDevice) Close() error {
	t.closeOnce.Do(func() {
		t.ep.close()
		close(t.events)
	})
	return nil
}
