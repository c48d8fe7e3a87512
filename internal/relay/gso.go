package relay

import (
	"net"
	"net/netip"
	"slices"
	"sync"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// Write combining. pion's server forwards one datagram per call from its
// read loop. Under load the loop takes a batch of datagrams per syscall
// (batchReader); the datagrams each allocation forwards during that batch
// are held (writeQueue) and sent when the batch is done, runs of equal
// size to one peer as a single UDP GSO send where the kernel supports it.
// One GSO send crosses the host's network stack (and any NAT on the way)
// as one large packet instead of dozens of small ones.

const (
	// maxGSOSegments and maxGSOBytes are the kernel's limits for one UDP
	// GSO send.
	maxGSOSegments = 64
	maxGSOBytes    = 65507
)

// writeQueue holds one allocation's datagrams until the batch ends.
type writeQueue struct {
	conn *net.UDPConn
	pc   interface {
		WriteBatch([]ipv4.Message, int) (int, error)
	}

	mu     sync.Mutex // guards pkts, bufs, joined, gso
	pkts   []queued
	bufs   [][]byte // spare payload buffers
	joined [][]byte // spare GSO buffers
	gso    bool     // the kernel takes UDP_SEGMENT on this socket
}

type queued struct {
	to  netip.AddrPort
	buf []byte
}

func newWriteQueue(c *net.UDPConn) *writeQueue {
	q := &writeQueue{conn: c, gso: gsoSupported}
	if la, ok := c.LocalAddr().(*net.UDPAddr); ok && la.IP.To4() == nil {
		q.pc = ipv6.NewPacketConn(c)
	} else {
		q.pc = ipv4.NewPacketConn(c)
	}
	return q
}

// markDirty records that rc has datagrams queued.
func (s *Server) markDirty(rc *relayConn) {
	s.dirtyMu.Lock()
	if !slices.Contains(s.dirty, rc) {
		s.dirty = append(s.dirty, rc)
	}
	s.dirtyMu.Unlock()
}

// flushDirty sends everything queued; the read loop calls it before it
// waits for more datagrams.
func (s *Server) flushDirty() {
	s.inLoop.Store(false)
	s.dirtyMu.Lock()
	dirty := s.dirty
	s.dirty = nil
	s.dirtyMu.Unlock()
	for _, rc := range dirty {
		rc.wq.flush()
	}
}

// queue copies p for sending to to at the next flush; false means the
// queue is full and the caller should send p itself.
func (q *writeQueue) queue(p []byte, to netip.AddrPort) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.pkts) >= readBatch || len(p) > maxDatagram {
		return false
	}
	var b []byte
	if n := len(q.bufs); n > 0 {
		b, q.bufs = q.bufs[n-1][:0], q.bufs[:n-1]
	} else {
		b = make([]byte, 0, maxDatagram)
	}
	q.pkts = append(q.pkts, queued{to: to, buf: append(b, p...)})
	return true
}

// flush sends what is queued: runs to one peer of one size (the last may
// be shorter) coalesce into a GSO send.
func (q *writeQueue) flush() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.pkts) == 0 {
		return
	}
	msgs := make([]ipv4.Message, 0, len(q.pkts))
	var used [][]byte // GSO buffers of this flush
	for i := 0; i < len(q.pkts); {
		p := q.pkts[i]
		j := i + 1
		if q.gso {
			size, total := len(p.buf), len(p.buf)
			for j < len(q.pkts) && j-i < maxGSOSegments && q.pkts[j].to == p.to &&
				len(q.pkts[j].buf) <= size && total+len(q.pkts[j].buf) <= maxGSOBytes {
				total += len(q.pkts[j].buf)
				j++
				if len(q.pkts[j-1].buf) < size {
					break // a shorter segment ends the run
				}
			}
		}
		m := ipv4.Message{Addr: net.UDPAddrFromAddrPort(p.to)}
		if j-i == 1 {
			m.Buffers = [][]byte{p.buf}
		} else {
			var joined []byte
			if n := len(q.joined); n > 0 {
				joined, q.joined = q.joined[n-1][:0], q.joined[:n-1]
			} else {
				joined = make([]byte, 0, maxGSOBytes)
			}
			for _, x := range q.pkts[i:j] {
				joined = append(joined, x.buf...)
			}
			used = append(used, joined)
			m.Buffers = [][]byte{joined}
			m.OOB = gsoControl(len(p.buf))
		}
		msgs = append(msgs, m)
		i = j
	}
	if err := q.writeAll(msgs); err != nil && q.gso && gsoUnsupported(err) {
		// The socket does not do GSO after all: resend one by one.
		q.gso = false
		msgs = msgs[:0]
		for _, p := range q.pkts {
			msgs = append(msgs, ipv4.Message{Addr: net.UDPAddrFromAddrPort(p.to), Buffers: [][]byte{p.buf}})
		}
		_ = q.writeAll(msgs)
	}
	for _, p := range q.pkts {
		q.bufs = append(q.bufs, p.buf)
	}
	q.joined = append(q.joined, used...)
	clear(q.pkts)
	q.pkts = q.pkts[:0]
}

// writeAll sends msgs with sendmmsg until all are sent or one fails; a
// datagram that cannot be sent is dropped, as the network would.
func (q *writeQueue) writeAll(msgs []ipv4.Message) error {
	for len(msgs) > 0 {
		n, err := q.pc.WriteBatch(msgs, 0)
		if err != nil {
			if n <= 0 {
				return err
			}
		}
		if n <= 0 {
			n = 1
		}
		msgs = msgs[n:]
	}
	return nil
}
