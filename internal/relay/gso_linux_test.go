package relay

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// udpSegmentSize decodes the UDP_SEGMENT size from a message's control
// data itself, rather than trusting gsoControl; 0 means no GSO.
func udpSegmentSize(oob []byte) (int, error) {
	if len(oob) == 0 {
		return 0, nil
	}
	cms, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return 0, err
	}
	size := 0
	for _, cm := range cms {
		if cm.Header.Level != unix.SOL_UDP || cm.Header.Type != unix.UDP_SEGMENT || len(cm.Data) != 2 {
			return 0, fmt.Errorf("unexpected control message level %d type %d, %d bytes", cm.Header.Level, cm.Header.Type, len(cm.Data))
		}
		size = int(binary.NativeEndian.Uint16(cm.Data))
	}
	return size, nil
}

// sentMsg is a snapshot of one message handed to WriteBatch.
type sentMsg struct {
	to      netip.AddrPort
	payload []byte
	seg     int // UDP_SEGMENT size, 0 without
	nbufs   int
	oobLen  int
}

// datagrams returns what the kernel makes of m: with a segment size, the
// payload cut every seg bytes if it is longer than seg (the last piece may
// be shorter); otherwise, and also for seg 0, one datagram.
func (m sentMsg) datagrams() [][]byte {
	if m.seg == 0 || len(m.payload) <= m.seg {
		return [][]byte{m.payload}
	}
	var out [][]byte
	for p := m.payload; len(p) > 0; {
		n := min(m.seg, len(p))
		out = append(out, p[:n])
		p = p[n:]
	}
	return out
}

// fakeBatchConn is the writeQueue's socket, recording every WriteBatch.
// fail, if set, fails single messages the way sendmmsg does: it stops at
// the first message that fails, returning the count sent before it, or
// the error if that was the first.
type fakeBatchConn struct {
	t       testing.TB
	fail    func(m sentMsg) error
	perCall int // if set, the most messages one call sends
	calls   [][]sentMsg
	sent    []int // messages sent, per call
}

func (f *fakeBatchConn) WriteBatch(ms []ipv4.Message, flags int) (int, error) {
	if flags != 0 {
		f.t.Errorf("WriteBatch flags %#x", flags)
	}
	snap := make([]sentMsg, len(ms))
	for i, m := range ms {
		var p []byte
		for _, b := range m.Buffers {
			p = append(p, b...)
		}
		seg, err := udpSegmentSize(m.OOB)
		if err != nil {
			f.t.Errorf("message %d: %v", i, err)
		}
		snap[i] = sentMsg{to: addrPort(m.Addr), payload: p, seg: seg, nbufs: len(m.Buffers), oobLen: len(m.OOB)}
	}
	f.calls = append(f.calls, snap)
	n := len(snap)
	var err error
	if f.fail != nil {
		for i, m := range snap {
			if e := f.fail(m); e != nil {
				n = i
				if i == 0 {
					err = e
				}
				break
			}
		}
	}
	if f.perCall > 0 && n > f.perCall {
		n = f.perCall
	}
	f.sent = append(f.sent, n)
	return n, err
}

// delivered lists the datagrams the recorded calls put on the network.
func (f *fakeBatchConn) delivered() []dgram {
	var out []dgram
	for i, call := range f.calls {
		for _, m := range call[:f.sent[i]] {
			for _, p := range m.datagrams() {
				out = append(out, dgram{m.to, p})
			}
		}
	}
	return out
}

// messages lists the sent messages in order.
func (f *fakeBatchConn) messages() []sentMsg {
	var out []sentMsg
	for i, call := range f.calls {
		out = append(out, call[:f.sent[i]]...)
	}
	return out
}

// dgram is one datagram to one destination.
type dgram struct {
	to netip.AddrPort
	p  []byte
}

func (d dgram) String() string { return fmt.Sprintf("%v:%dB", d.to, len(d.p)) }

var (
	peerA  = netip.MustParseAddrPort("203.0.113.1:4000")
	peerA2 = netip.MustParseAddrPort("203.0.113.1:4001")
	peerB  = netip.MustParseAddrPort("198.51.100.7:51820")
	peerV6 = netip.MustParseAddrPort("[2001:db8::1]:4000")
)

// run returns n datagrams of size bytes to to, each with distinct content.
func run(to netip.AddrPort, size, n int) []dgram {
	out := make([]dgram, n)
	for i := range out {
		p := make([]byte, size)
		for j := range p {
			p[j] = byte(i*31 + j + size)
		}
		if size >= 2 {
			binary.BigEndian.PutUint16(p, uint16(i))
		}
		out[i] = dgram{to, p}
	}
	return out
}

func concat(runs ...[]dgram) []dgram { return slices.Concat(runs...) }

// fill queues ds on q; beyond what queue takes (readBatch datagrams) it
// appends to q.pkts directly, to reach the GSO limits.
func fill(q *writeQueue, ds []dgram) {
	for _, d := range ds {
		if !q.queue(d.p, d.to) {
			q.pkts = append(q.pkts, queued{to: d.to, buf: bytes.Clone(d.p)})
		}
	}
}

// sameDatagrams reports how got differs from want, "" if not at all.
func sameDatagrams(got, want []dgram) string {
	if len(got) != len(want) {
		return fmt.Sprintf("%d datagrams delivered, want %d:\n got %v\nwant %v", len(got), len(want), got, want)
	}
	for i := range got {
		if got[i].to != want[i].to || !bytes.Equal(got[i].p, want[i].p) {
			return fmt.Sprintf("datagram %d is %v %x…, want %v %x…", i, got[i], head(got[i].p), want[i], head(want[i].p))
		}
	}
	return ""
}

// TestFlushGrouping checks how a flush groups datagrams into messages:
// runs of one size to one destination become one GSO message (the last
// segment may be shorter and then ends the run), within the kernel's
// segment and byte limits, and every datagram leaves exactly once, in
// order.
func TestFlushGrouping(t *testing.T) {
	for _, tc := range []struct {
		name   string
		in     []dgram
		groups []int // datagrams per message, in order
	}{
		{"single", run(peerA, 100, 1), []int{1}},
		{"equal run", run(peerA, 100, 5), []int{5}},
		{"run of one-byte datagrams", run(peerA, 1, 32), []int{32}},
		{"shorter datagram ends the run", concat(run(peerA, 100, 2), run(peerA, 60, 1), run(peerA, 100, 2)), []int{3, 2}},
		{"two shorter datagrams", concat(run(peerA, 100, 1), run(peerA, 60, 2)), []int{2, 1}},
		{"longer datagram starts a run", concat(run(peerA, 60, 1), run(peerA, 100, 2)), []int{1, 2}},
		{"mixed sizes", concat(run(peerA, 7, 1), run(peerA, 1400, 3), run(peerA, 1399, 1), run(peerA, 13, 1), run(peerA, 1500, 2)), []int{1, 4, 1, 2}},
		{"destination change ends the run", concat(run(peerA, 100, 3), run(peerB, 100, 3)), []int{3, 3}},
		{"port change ends the run", concat(run(peerA, 100, 2), run(peerA2, 100, 2)), []int{2, 2}},
		{"alternating destinations", concat(run(peerA, 100, 1), run(peerB, 100, 1), run(peerA, 100, 1), run(peerB, 100, 1)), []int{1, 1, 1, 1}},
		{"shorter datagram to another destination", concat(run(peerA, 100, 2), run(peerB, 60, 1)), []int{2, 1}},
		{"IPv6 destination", run(peerV6, 1280, 4), []int{4}},
		{"full batch of maxDatagram hits the byte limit", run(peerA, maxDatagram, readBatch), []int{31, 1}},
		{"full batch just under the byte limit", run(peerA, 2046, readBatch), []int{32}},
		{"64-segment limit", run(peerA, 100, 130), []int{64, 64, 2}},
		{"64 segments of 1024 exceed the byte limit", run(peerA, 1024, 64), []int{63, 1}},
		{"byte limit reached exactly", concat(run(peerA, 1024, 63), run(peerA, maxGSOBytes-63*1024, 1)), []int{64}},
		{"byte limit exceeded by one", concat(run(peerA, 1024, 63), run(peerA, maxGSOBytes-63*1024+1, 1)), []int{63, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeBatchConn{t: t}
			q := &writeQueue{pc: f, gso: true}
			// Twice: the second flush runs on recycled buffers.
			for round := range 2 {
				f.calls, f.sent = nil, nil
				fill(q, tc.in)
				q.flush()
				if len(q.pkts) != 0 {
					t.Fatalf("round %d: %d datagrams still queued", round, len(q.pkts))
				}
				if len(f.calls) != 1 {
					t.Fatalf("round %d: %d WriteBatch calls, want 1", round, len(f.calls))
				}
				msgs := f.messages()
				var groups []int
				i := 0
				for k, m := range msgs {
					n := len(m.datagrams())
					groups = append(groups, n)
					first := tc.in[min(i, len(tc.in)-1)]
					switch {
					case m.nbufs != 1:
						t.Errorf("round %d message %d: %d buffers, want 1", round, k, m.nbufs)
					case n == 1 && m.oobLen != 0:
						t.Errorf("round %d message %d: one datagram with %d bytes of control data", round, k, m.oobLen)
					case n > 1 && m.seg != len(first.p):
						t.Errorf("round %d message %d: UDP_SEGMENT %d, want the run's size %d", round, k, m.seg, len(first.p))
					case n > maxGSOSegments || len(m.payload) > maxGSOBytes:
						t.Errorf("round %d message %d: %d segments, %d bytes: over the kernel's limits", round, k, n, len(m.payload))
					}
					i += n
				}
				if !slices.Equal(groups, tc.groups) {
					t.Errorf("round %d: messages of %v datagrams, want %v", round, groups, tc.groups)
				}
				if d := sameDatagrams(f.delivered(), tc.in); d != "" {
					t.Errorf("round %d: %s", round, d)
				}
			}
		})
	}
}

// TestFlushWithoutGSO: with gso off every datagram is its own message.
func TestFlushWithoutGSO(t *testing.T) {
	f := &fakeBatchConn{t: t}
	q := &writeQueue{pc: f}
	in := concat(run(peerA, 100, 5), run(peerB, 1400, 3))
	fill(q, in)
	q.flush()
	for k, m := range f.messages() {
		if m.oobLen != 0 || m.nbufs != 1 {
			t.Errorf("message %d: %d bytes of control data, %d buffers", k, m.oobLen, m.nbufs)
		}
	}
	if got := len(f.messages()); got != len(in) {
		t.Errorf("%d messages, want %d", got, len(in))
	}
	if d := sameDatagrams(f.delivered(), in); d != "" {
		t.Error(d)
	}
}

// TestGSOControl checks the control message's bytes on their own.
func TestGSOControl(t *testing.T) {
	for _, size := range []int{1, 100, 1472, maxDatagram, 0xffff} {
		b := gsoControl(size)
		if len(b) != unix.CmsgSpace(2) {
			t.Errorf("size %d: %d bytes of control data, want %d", size, len(b), unix.CmsgSpace(2))
		}
		got, err := udpSegmentSize(b)
		if err != nil || got != size {
			t.Errorf("size %d: decodes to %d, %v", size, got, err)
		}
	}
}

// opError is what x/net's WriteBatch returns for a failed sendmmsg.
func opError(errno syscall.Errno) error {
	return &net.OpError{Op: "write", Net: "udp", Err: os.NewSyscallError("sendmmsg", errno)}
}

// gsoFails fails GSO messages with errno, as a socket that cannot do GSO.
func gsoFails(errno syscall.Errno) func(sentMsg) error {
	return func(m sentMsg) error {
		if m.oobLen != 0 {
			return opError(errno)
		}
		return nil
	}
}

// TestFlushGSOFallback: when the socket refuses a GSO send, every datagram
// still leaves exactly once and in order, one per message. An error
// gsoUnsupported recognises turns GSO off for this socket for good; any
// other (EMSGSIZE: a segment over the path MTU) leaves it on.
func TestFlushGSOFallback(t *testing.T) {
	in := concat(run(peerA, 100, 3), run(peerB, 50, 1), run(peerA, 100, 2))
	for _, tc := range []struct {
		errno      syscall.Errno
		recognised bool
	}{
		{unix.EIO, true},
		{unix.EINVAL, true},
		{unix.ENOPROTOOPT, true},
		{unix.EOPNOTSUPP, true},
		{unix.EMSGSIZE, false},
		{unix.EPERM, false},
	} {
		t.Run(tc.errno.Error(), func(t *testing.T) {
			if got := gsoUnsupported(opError(tc.errno)); got != tc.recognised {
				t.Fatalf("gsoUnsupported(%v) = %v, want %v", tc.errno, got, tc.recognised)
			}
			f := &fakeBatchConn{t: t, fail: gsoFails(tc.errno)}
			q := &writeQueue{pc: f, gso: true}
			fill(q, in)
			q.flush()
			if len(f.calls) == 0 || f.calls[0][0].oobLen == 0 {
				t.Fatal("the flush did not try GSO first")
			}
			if d := sameDatagrams(f.delivered(), in); d != "" {
				t.Error(d)
			}
			if q.gso != !tc.recognised {
				t.Errorf("gso = %v after %v, want %v", q.gso, tc.errno, !tc.recognised)
			}
			// The next flush tries GSO again only if it was not refused
			// for good.
			f.calls, f.sent = nil, nil
			fill(q, run(peerA, 100, 4))
			q.flush()
			tried := false
			for _, call := range f.calls {
				for _, m := range call {
					tried = tried || m.oobLen != 0
				}
			}
			if tried != !tc.recognised {
				t.Errorf("next flush tried GSO: %v, want %v", tried, !tc.recognised)
			}
			if d := sameDatagrams(f.delivered(), run(peerA, 100, 4)); d != "" {
				t.Errorf("next flush: %s", d)
			}
		})
	}
}

// TestFlushPartialSend: sendmmsg may send fewer messages than asked; the
// flush goes on with the rest.
func TestFlushPartialSend(t *testing.T) {
	in := concat(run(peerA, 100, 3), run(peerB, 50, 1), run(peerA, 1400, 2), run(peerB, 7, 1))
	t.Run("one message per call", func(t *testing.T) {
		f := &fakeBatchConn{t: t, perCall: 1}
		q := &writeQueue{pc: f, gso: true}
		fill(q, in)
		q.flush()
		if len(f.calls) != 4 {
			t.Errorf("%d WriteBatch calls, want 4 (one per message)", len(f.calls))
		}
		for i := 1; i < len(f.calls); i++ {
			if len(f.calls[i]) != len(f.calls[i-1])-1 {
				t.Errorf("call %d has %d messages after %d", i, len(f.calls[i]), len(f.calls[i-1]))
			}
		}
		if d := sameDatagrams(f.delivered(), in); d != "" {
			t.Error(d)
		}
	})
	t.Run("zero without error", func(t *testing.T) {
		// A WriteBatch reporting nothing sent and no error must not
		// make the flush spin: it gives up on one message, goes on.
		f := &fakeBatchConn{t: t}
		q := &writeQueue{pc: zeroFirst{f}, gso: true}
		fill(q, in)
		q.flush()
		if len(f.calls) != 2 {
			t.Fatalf("%d calls, want 2", len(f.calls))
		}
	})
}

// zeroFirst answers the first WriteBatch with 0, nil.
type zeroFirst struct{ f *fakeBatchConn }

func (z zeroFirst) WriteBatch(ms []ipv4.Message, flags int) (int, error) {
	n, err := z.f.WriteBatch(ms, flags)
	if len(z.f.calls) == 1 {
		z.f.sent[0] = 0
		return 0, nil
	}
	return n, err
}

// TestFlushFallbackAfterPartialSend: sendmmsg sends the messages before
// the first GSO one and returns their count (the kernel drops the error
// of the failing one); the next call fails with the GSO error. The
// fallback must not send again what already left: every datagram leaves
// exactly once.
func TestFlushFallbackAfterPartialSend(t *testing.T) {
	in := concat(run(peerB, 50, 1), run(peerA, 100, 3))
	f := &fakeBatchConn{t: t, fail: gsoFails(unix.EIO)}
	q := &writeQueue{pc: f, gso: true}
	fill(q, in)
	q.flush()
	if q.gso {
		t.Error("GSO still on")
	}
	if d := sameDatagrams(f.delivered(), in); d != "" {
		t.Errorf("datagrams sent before the GSO error are sent again: %s", d)
	}
}

// TestFlushOneBadDestination: a destination the socket refuses (no route,
// a firewall) loses its datagram, as the network would lose it; the
// datagrams to other peers queued after it in the same flush must still
// go out, as they would have without write combining.
func TestFlushOneBadDestination(t *testing.T) {
	in := concat(run(peerA, 100, 3), run(peerB, 50, 1), run(peerV6, 80, 2), run(peerA, 60, 1))
	f := &fakeBatchConn{t: t, fail: func(m sentMsg) error {
		if m.to == peerB {
			return opError(unix.ENETUNREACH)
		}
		return nil
	}}
	q := &writeQueue{pc: f, gso: true}
	fill(q, in)
	q.flush()
	var want []dgram
	for _, d := range in {
		if d.to != peerB {
			want = append(want, d)
		}
	}
	if d := sameDatagrams(f.delivered(), want); d != "" {
		t.Errorf("after a refused destination: %s", d)
	}
}

// TestFlushEmptyDatagrams: a zero-length datagram is a valid UDP datagram
// (pion forwards an empty ChannelData as one). A segment size of 0 asks
// the kernel for no segmentation, so an empty datagram must never be part
// of a GSO message: joined, empty datagrams would leave as one, and an
// empty one after a run would vanish into the run's last segment.
func TestFlushEmptyDatagrams(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []dgram
	}{
		{"three empty", run(peerA, 0, 3)},
		{"empty after a datagram", concat(run(peerA, 100, 1), run(peerA, 0, 1))},
		{"empty after a run", concat(run(peerA, 100, 2), run(peerA, 0, 1))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeBatchConn{t: t}
			q := &writeQueue{pc: f, gso: true}
			fill(q, tc.in)
			q.flush()
			if d := sameDatagrams(f.delivered(), tc.in); d != "" {
				t.Error(d)
			}
		})
	}
}

// kernelPair is a sending socket with a writeQueue and a receiver, on
// loopback.
type kernelPair struct {
	send *net.UDPConn
	recv *net.UDPConn
	q    *writeQueue
	to   netip.AddrPort
}

func newKernelPair(t *testing.T, network, ip string) *kernelPair {
	t.Helper()
	la := &net.UDPAddr{IP: net.ParseIP(ip)}
	recv, err := net.ListenUDP(network, la)
	if err != nil {
		t.Skipf("no %s loopback: %v", network, err)
	}
	t.Cleanup(func() { recv.Close() })
	send, err := net.ListenUDP(network, la)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { send.Close() })
	if err := recv.SetReadBuffer(8 << 20); err != nil {
		t.Fatal(err)
	}
	return &kernelPair{send: send, recv: recv, q: newWriteQueue(send), to: recv.LocalAddr().(*net.UDPAddr).AddrPort()}
}

// roundTrip flushes ds through the kernel and returns what arrived before
// a marker datagram sent after them (loopback keeps order, so anything
// missing by then was not sent).
func (k *kernelPair) roundTrip(t *testing.T, ds []dgram) []dgram {
	t.Helper()
	fill(k.q, ds)
	k.q.flush()
	marker := []byte("end of flush marker, longer than any datagram of the test ... ")
	marker = append(marker, make([]byte, maxDatagram+100-len(marker))...)
	if _, err := k.send.WriteToUDPAddrPort(marker, k.to); err != nil {
		t.Fatal(err)
	}
	k.recv.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 4*maxDatagram)
	var got []dgram
	for {
		n, _, err := k.recv.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("after %d datagrams: %v", len(got), err)
		}
		if bytes.Equal(buf[:n], marker) {
			return got
		}
		got = append(got, dgram{k.to, bytes.Clone(buf[:n])})
	}
}

// TestFlushKernel sends flushes through real loopback sockets: what the
// kernel delivers is exactly what was queued, whether it took the GSO
// sends or made the queue fall back.
func TestFlushKernel(t *testing.T) {
	for _, tc := range []struct{ network, ip string }{{"udp4", "127.0.0.1"}, {"udp6", "::1"}} {
		t.Run(tc.network, func(t *testing.T) {
			k := newKernelPair(t, tc.network, tc.ip)
			rec := &passThrough{inner: k.q.pc}
			k.q.pc = rec
			to := k.to
			batches := [][]dgram{
				run(to, 1400, readBatch),
				concat(run(to, 1200, 10), run(to, 1199, 1), run(to, 1, 5), run(to, 1500, 16)),
				run(to, maxDatagram, readBatch),
				run(to, 2047, readBatch),
			}
			for size := 1; size <= maxDatagram; size += 97 {
				batches = append(batches, concat(run(to, size, 3), run(to, size/2+1, 1), run(to, size, 1)))
			}
			for i, b := range batches {
				if d := sameDatagrams(k.roundTrip(t, b), b); d != "" {
					t.Fatalf("batch %d: %s\nsocket errors: %v", i, d, rec.errs)
				}
			}
			if !k.q.gso {
				t.Logf("this kernel refused UDP GSO on %s; the queue fell back to plain sends", tc.network)
			} else if rec.gsoMessages == 0 {
				t.Error("no GSO message was sent")
			}
		})
	}
}

// TestFlushKernelEmptyDatagrams is TestFlushEmptyDatagrams through the
// kernel.
func TestFlushKernelEmptyDatagrams(t *testing.T) {
	k := newKernelPair(t, "udp4", "127.0.0.1")
	for _, in := range [][]dgram{
		run(k.to, 0, 3),
		concat(run(k.to, 100, 2), run(k.to, 0, 1)),
	} {
		if d := sameDatagrams(k.roundTrip(t, in), in); d != "" {
			t.Errorf("%v: %s", in, d)
		}
	}
}

// TestFlushKernelPathMTU sends runs of 1452-byte datagrams (WireGuard
// data at Keyhole's default tunnel MTU of 1420) through a loopback whose
// MTU is 1460, as on a cloud VM with a 1460-byte MTU. Sent one by one, the
// kernel fragments each datagram and all arrive. As one GSO message the
// kernel refuses them (EMSGSIZE here: a segment larger than the MTU), so
// the queue must fall back to sending them one by one. It needs root (a network namespace of its own) and is skipped
// otherwise.
func TestFlushKernelPathMTU(t *testing.T) {
	for _, tc := range []struct{ network, ip string }{{"udp4", "127.0.0.1"}, {"udp6", "::1"}} {
		for _, gso := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s gso=%v", tc.network, gso), func(t *testing.T) {
				k := newNetnsPair(t, 1460, tc.network, tc.ip)
				k.q.gso = gso
				rec := &passThrough{inner: k.q.pc}
				k.q.pc = rec
				in := concat(run(k.to, 1452, 8), run(k.to, 100, 1))
				if d := sameDatagrams(k.roundTrip(t, in), in); d != "" {
					t.Errorf("%s\nsocket errors: %v", d, rec.errs)
				}
			})
		}
	}
}

// newNetnsPair is newKernelPair in a new network namespace whose loopback
// has the given MTU. The sockets stay in that namespace; the thread that
// made them ends with its goroutine.
func newNetnsPair(t *testing.T, mtu int, network, ip string) *kernelPair {
	t.Helper()
	type result struct {
		send, recv *net.UDPConn
		skip, err  error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			ch <- result{skip: fmt.Errorf("new network namespace: %w", err)}
			return
		}
		if err := setLoopback(mtu); err != nil {
			ch <- result{err: err}
			return
		}
		la := &net.UDPAddr{IP: net.ParseIP(ip)}
		recv, err := net.ListenUDP(network, la)
		if err != nil {
			ch <- result{skip: err}
			return
		}
		send, err := net.ListenUDP(network, la)
		if err != nil {
			recv.Close()
			ch <- result{err: err}
			return
		}
		ch <- result{send: send, recv: recv}
	}()
	r := <-ch
	switch {
	case r.skip != nil:
		t.Skipf("needs root: %v", r.skip)
	case r.err != nil:
		t.Fatal(r.err)
	}
	t.Cleanup(func() { r.send.Close(); r.recv.Close() })
	if err := r.recv.SetReadBuffer(8 << 20); err != nil {
		t.Fatal(err)
	}
	return &kernelPair{send: r.send, recv: r.recv, q: newWriteQueue(r.send), to: r.recv.LocalAddr().(*net.UDPAddr).AddrPort()}
}

// setLoopback brings this namespace's loopback up with the given MTU.
func setLoopback(mtu int) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	ifr.SetUint32(uint32(mtu))
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFMTU, ifr); err != nil {
		return fmt.Errorf("set lo MTU: %w", err)
	}
	ifr.SetUint16(unix.IFF_UP | unix.IFF_LOOPBACK | unix.IFF_RUNNING)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bring lo up: %w", err)
	}
	return nil
}
