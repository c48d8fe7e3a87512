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
	// maxGSOSegments is the kernel's limit of segments in one UDP GSO
	// send. maxGSOBytes keeps the whole frame (Ethernet, IPv6 and UDP
	// headers included) within the 64 KiB the kernel offloads; a bigger
	// one (UDP allows 65,507 bytes) is segmented in software on our own
	// CPU and then crosses every hop packet by packet.
	maxGSOSegments = 64
	maxGSOBytes    = 1<<16 - 14 - 40 - 8
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

// flush sends what is queued: runs to one peer of one non-zero size (the
// last may be shorter) coalesce into a GSO send. A send the kernel refuses
// is retried datagram by datagram; a datagram that still cannot be sent is
// dropped, as the network would drop it. Nothing is sent twice.
func (q *writeQueue) flush() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.pkts) == 0 {
		return
	}
	type span struct{ from, to int } // the datagrams of one message
	msgs := make([]ipv4.Message, 0, len(q.pkts))
	spans := make([]span, 0, len(q.pkts))
	var used [][]byte // GSO buffers of this flush
	for i := 0; i < len(q.pkts); {
		p := q.pkts[i]
		j := i + 1
		if q.gso && len(p.buf) > 0 {
			size, total := len(p.buf), len(p.buf)
			for j < len(q.pkts) && j-i < maxGSOSegments && q.pkts[j].to == p.to &&
				len(q.pkts[j].buf) > 0 && len(q.pkts[j].buf) <= size && total+len(q.pkts[j].buf) <= maxGSOBytes {
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
		spans = append(spans, span{i, j})
		i = j
	}
	for k := 0; k < len(msgs); {
		n, err := q.pc.WriteBatch(msgs[k:], 0)
		if n > 0 {
			k += n
			continue
		}
		if err == nil {
			k++ // nothing sent and no reason given: drop it rather than spin
			continue
		}
		// msgs[k] failed. A GSO message is resent datagram by datagram
		// (and GSO turned off if the socket cannot do it at all); a
		// single datagram is dropped.
		if sp := spans[k]; sp.to-sp.from > 1 {
			if gsoUnsupported(err) {
				q.gso = false
			}
			for _, p := range q.pkts[sp.from:sp.to] {
				_, _ = q.pc.WriteBatch([]ipv4.Message{{Addr: net.UDPAddrFromAddrPort(p.to), Buffers: [][]byte{p.buf}}}, 0)
			}
		}
		k++
	}
	for _, p := range q.pkts {
		q.bufs = append(q.bufs, p.buf)
	}
	q.joined = append(q.joined, used...)
	clear(q.pkts)
	q.pkts = q.pkts[:0]
}
