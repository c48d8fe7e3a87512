package relay

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"golang.org/x/net/ipv4"
)

// scriptedDatagram is one datagram a scriptedReader hands out.
type scriptedDatagram struct {
	addr  net.Addr
	p     []byte
	n     int // reported length if not 0 (a datagram longer than the buffer)
	flags int
}

// scriptedReader is the batchReader's socket, handing out scripted batches
// and then net.ErrClosed. It logs "read" for every ReadBatch.
type scriptedReader struct {
	batches [][]scriptedDatagram
	log     *[]string
}

func (s *scriptedReader) ReadBatch(ms []ipv4.Message, _ int) (int, error) {
	*s.log = append(*s.log, "read")
	if len(s.batches) == 0 {
		return 0, net.ErrClosed
	}
	b := s.batches[0]
	s.batches = s.batches[1:]
	for i, d := range b {
		n := copy(ms[i].Buffers[0], d.p)
		if d.n != 0 {
			n = d.n
		}
		ms[i].N, ms[i].Addr, ms[i].Flags = n, d.addr, d.flags
	}
	return len(b), nil
}

// TestBatchReaderScripted: read hands out a batch's datagrams one by one,
// skips what is not a whole UDP datagram, unmaps IPv4-mapped sources, and
// runs idle only before a read that may block.
func TestBatchReaderScripted(t *testing.T) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var log []string
	r := newBatchReader(c)
	r.idle = func() { log = append(log, "idle") }
	udp := func(s string) *net.UDPAddr { return net.UDPAddrFromAddrPort(netip.MustParseAddrPort(s)) }
	full := bytes.Repeat([]byte{0xab}, maxDatagram)
	r.pc = &scriptedReader{log: &log, batches: [][]scriptedDatagram{
		{
			{addr: &net.UDPAddr{IP: net.IPv4(192, 0, 2, 1).To4(), Port: 1000}, p: []byte("v4")},
			{addr: nil, p: []byte("no address")},
			{addr: &net.IPAddr{IP: net.IPv4(192, 0, 2, 2)}, p: []byte("not UDP")},
			{addr: &net.UDPAddr{IP: net.ParseIP("::ffff:198.51.100.2"), Port: 2000}, p: []byte("mapped")},
			{addr: udp("192.0.2.3:3"), p: []byte("longer than the buffer"), n: maxDatagram + 1},
			{addr: udp("192.0.2.4:4"), p: []byte("truncated"), flags: msgTrunc},
			{addr: udp("[2001:db8::5]:3000"), p: []byte("v6")},
		},
		{{addr: udp("203.0.113.9:9"), p: full}},
		{{addr: udp("192.0.2.4:4"), p: []byte("only truncated"), flags: msgTrunc}},
	}}
	want := []struct {
		p    []byte
		from string
	}{
		{[]byte("v4"), "192.0.2.1:1000"},
		{[]byte("mapped"), "198.51.100.2:2000"},
		{[]byte("v6"), "[2001:db8::5]:3000"},
		{full, "203.0.113.9:9"},
	}
	buf := make([]byte, maxDatagram)
	for i, w := range want {
		n, from, err := r.read(buf)
		if err != nil {
			t.Fatalf("read %d: %v", i, err)
		}
		log = append(log, "datagram")
		if !bytes.Equal(buf[:n], w.p) || from.String() != w.from {
			t.Errorf("read %d: %q from %v, want %q from %s", i, head(buf[:n]), from, head(w.p), w.from)
		}
		if from.Addr().Is4In6() {
			t.Errorf("read %d: source %v is still mapped", i, from)
		}
	}
	if _, _, err := r.read(buf); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read at the end: %v, want the socket's error", err)
	}
	wantLog := []string{
		"idle", "read", "datagram", "datagram", "datagram",
		"idle", "read", "datagram",
		"idle", "read", // a batch of nothing usable: read again
		"idle", "read",
	}
	if !slices.Equal(log, wantLog) {
		t.Errorf("events %v\nwant   %v", log, wantLog)
	}
}

// TestBatchReaderTruncated sends datagrams larger than maxDatagram to a
// real socket: read drops them and hands out the ones around them whole.
func TestBatchReaderTruncated(t *testing.T) {
	for _, tc := range []struct{ network, ip string }{{"udp4", "127.0.0.1"}, {"udp6", "::1"}} {
		t.Run(tc.network, func(t *testing.T) {
			recv, err := net.ListenUDP(tc.network, &net.UDPAddr{IP: net.ParseIP(tc.ip)})
			if err != nil {
				t.Skipf("no %s loopback: %v", tc.network, err)
			}
			defer recv.Close()
			if err := recv.SetReadBuffer(4 << 20); err != nil {
				t.Fatal(err)
			}
			send, err := net.ListenUDP(tc.network, &net.UDPAddr{IP: net.ParseIP(tc.ip)})
			if err != nil {
				t.Fatal(err)
			}
			defer send.Close()
			to := recv.LocalAddr().(*net.UDPAddr).AddrPort()
			from := send.LocalAddr().(*net.UDPAddr).AddrPort()
			r := newBatchReader(recv)

			var want [][]byte
			for i, size := range []int{10, maxDatagram + 1, maxDatagram, 9000, 1, 65000, maxDatagram * 2, 20} {
				p := bytes.Repeat([]byte{byte(i + 1)}, size)
				if _, err := send.WriteToUDPAddrPort(p, to); err != nil {
					t.Fatalf("send %d bytes: %v", size, err)
				}
				if size <= maxDatagram {
					want = append(want, p)
				}
			}
			recv.SetReadDeadline(time.Now().Add(10 * time.Second))
			buf := make([]byte, 65536)
			for i, w := range want {
				n, src, err := r.read(buf)
				if err != nil {
					t.Fatalf("read %d: %v", i, err)
				}
				if !bytes.Equal(buf[:n], w) || src != from {
					t.Fatalf("read %d: %d bytes of %#x from %v, want %d bytes of %#x from %v", i, n, buf[0], src, len(w), w[0], from)
				}
			}
		})
	}
}

// head is the start of p, for messages.
func head(p []byte) []byte { return p[:min(len(p), 8)] }

// discardBatch sends everything.
type discardBatch struct{ msgs *int }

func (d discardBatch) WriteBatch(ms []ipv4.Message, _ int) (int, error) {
	*d.msgs += len(ms)
	return len(ms), nil
}

// TestWriteQueueQueue: queue copies the datagram, takes at most readBatch
// datagrams per flush and none over maxDatagram.
func TestWriteQueueQueue(t *testing.T) {
	to := netip.MustParseAddrPort("192.0.2.10:51820")
	var sent int
	q := &writeQueue{pc: discardBatch{&sent}}
	if q.queue(make([]byte, maxDatagram+1), to) {
		t.Error("queued a datagram over maxDatagram")
	}
	if !q.queue(make([]byte, maxDatagram), to) {
		t.Error("refused a datagram of maxDatagram bytes")
	}
	for i := 1; i < readBatch; i++ {
		if !q.queue([]byte{byte(i)}, to) {
			t.Fatalf("refused datagram %d of %d", i+1, readBatch)
		}
	}
	if q.queue([]byte{0}, to) {
		t.Errorf("queued a datagram beyond readBatch (%d)", readBatch)
	}
	if len(q.pkts) != readBatch {
		t.Fatalf("%d queued, want %d", len(q.pkts), readBatch)
	}
	q.flush()
	if len(q.pkts) != 0 || sent == 0 {
		t.Fatalf("after flush: %d queued, %d messages sent", len(q.pkts), sent)
	}
	// The queue takes a copy: the caller's buffer is pion's, reused for the
	// next datagram.
	p := []byte("hello")
	if !q.queue(p, to) {
		t.Fatal("refused after flush")
	}
	copy(p, "jello")
	if got := string(q.pkts[0].buf); got != "hello" {
		t.Errorf("queued %q, want the datagram as it was when queued", got)
	}
	q.flush()
	// An empty flush sends nothing.
	sent = 0
	q.flush()
	if sent != 0 {
		t.Errorf("empty flush sent %d messages", sent)
	}
}

// passThrough wraps a writeQueue's socket and counts what it sent.
type passThrough struct {
	inner interface {
		WriteBatch([]ipv4.Message, int) (int, error)
	}
	messages, gsoMessages, datagrams int // guarded by the writeQueue's mu
	errs                             []error
}

func (p *passThrough) WriteBatch(ms []ipv4.Message, flags int) (int, error) {
	n, err := p.inner.WriteBatch(ms, flags)
	if err != nil {
		p.errs = append(p.errs, err)
	}
	for _, m := range ms[:max(n, 0)] {
		l := 0
		for _, b := range m.Buffers {
			l += len(b)
		}
		segs := 1
		if size, err := udpSegmentSize(m.OOB); err != nil {
			p.errs = append(p.errs, fmt.Errorf("control data: %w", err))
		} else if size > 0 && l > size {
			segs = (l + size - 1) / size
		}
		p.messages++
		p.datagrams += segs
		if segs > 1 {
			p.gsoMessages++
		}
	}
	return n, err
}
