package relay

import (
	"net"
	"net/netip"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

const (
	// readBatch is how many datagrams one recvmmsg takes.
	readBatch = 32
	// maxDatagram bounds a relayed datagram; larger ones are dropped
	// (pion's server reads at most 1600 bytes anyway).
	maxDatagram = 2048
)

// batchReader reads a UDP socket a batch at a time (recvmmsg) and hands the
// datagrams out one by one, so that a busy relay pays one syscall per batch
// instead of one per packet. Like the socket reads it replaces, it is used
// from one goroutine only.
type batchReader struct {
	pc interface {
		ReadBatch([]ipv4.Message, int) (int, error)
	}
	msgs    []ipv4.Message
	n, next int
	// idle, if set, runs before each read that may block: the batch
	// handed out so far has been processed.
	idle func()
}

func newBatchReader(c *net.UDPConn) *batchReader {
	r := &batchReader{msgs: make([]ipv4.Message, readBatch)}
	for i := range r.msgs {
		r.msgs[i].Buffers = [][]byte{make([]byte, maxDatagram)}
	}
	if la, ok := c.LocalAddr().(*net.UDPAddr); ok && la.IP.To4() == nil {
		r.pc = ipv6.NewPacketConn(c)
	} else {
		r.pc = ipv4.NewPacketConn(c)
	}
	return r
}

// read returns the next datagram, copied into p, and its source.
func (r *batchReader) read(p []byte) (int, netip.AddrPort, error) {
	for {
		for r.next >= r.n {
			if r.idle != nil {
				r.idle()
			}
			n, err := r.pc.ReadBatch(r.msgs, 0)
			if err != nil {
				return 0, netip.AddrPort{}, err
			}
			r.n, r.next = n, 0
		}
		m := &r.msgs[r.next]
		r.next++
		ua, _ := m.Addr.(*net.UDPAddr)
		if ua == nil || m.N > maxDatagram || m.Flags&msgTrunc != 0 {
			continue // not UDP, or cut short: drop it
		}
		ap := ua.AddrPort()
		return copy(p, m.Buffers[0][:m.N]), netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
	}
}
