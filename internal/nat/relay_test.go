package nat

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
)

// channelData encodes a ChannelData message by RFC 8656 §12.4: channel
// number, data length, data, zero padding to a multiple of four bytes.
func channelData(ch uint16, data []byte) []byte {
	b := binary.BigEndian.AppendUint16(nil, ch)
	b = binary.BigEndian.AppendUint16(b, uint16(len(data)))
	b = append(b, data...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// parseChannelData decodes a ChannelData message strictly: the length
// field must account for all of b but the padding, which must be zeros
// and shorter than four bytes.
func parseChannelData(b []byte) (ch uint16, data []byte, err error) {
	if len(b) < 4 {
		return 0, nil, fmt.Errorf("%d bytes: no header", len(b))
	}
	ch, n := binary.BigEndian.Uint16(b), int(binary.BigEndian.Uint16(b[2:]))
	if ch < 0x4000 || ch > 0x7fff {
		return 0, nil, fmt.Errorf("channel %#x out of range", ch)
	}
	if 4+n > len(b) {
		return 0, nil, fmt.Errorf("length %d, only %d bytes of data", n, len(b)-4)
	}
	pad := b[4+n:]
	if len(b)%4 != 0 || len(pad) > 3 || !bytes.Equal(pad, make([]byte, len(pad))) {
		return 0, nil, fmt.Errorf("%d bytes for %d of data: padding %x", len(b), n, pad)
	}
	return ch, b[4 : 4+n], nil
}

// recordingBind wraps a conn.Bind and records what is sent through it.
// Send copies the buffers before passing them on: the standard Bind may
// append to them when it coalesces a GSO run.
type recordingBind struct {
	conn.Bind
	batch int // BatchSize; 0: the wrapped Bind's
	drop  bool

	mu    sync.Mutex // guards sends
	sends []recordedSend
}

type recordedSend struct {
	to   string
	bufs [][]byte
}

func (r *recordingBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	s := recordedSend{to: ep.DstToString()}
	for _, b := range bufs {
		s.bufs = append(s.bufs, bytes.Clone(b))
	}
	r.mu.Lock()
	r.sends = append(r.sends, s)
	r.mu.Unlock()
	if r.drop {
		return nil
	}
	return r.Bind.Send(bufs, ep)
}

func (r *recordingBind) BatchSize() int {
	if r.batch > 0 {
		return r.batch
	}
	return r.Bind.BatchSize()
}

func (r *recordingBind) recorded() []recordedSend {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]recordedSend(nil), r.sends...)
}

// newTestSock returns a sockConn towards server on a Bind whose inner
// Bind only records (nothing is opened or sent).
func newTestSock(t *testing.T, batch int) (*sockConn, *recordingBind) {
	t.Helper()
	inner := &recordingBind{Bind: conn.NewStdNetBind(), batch: batch, drop: true}
	b := NewBind(inner)
	ep, err := inner.ParseEndpoint("127.0.0.1:3478")
	if err != nil {
		t.Fatal(err)
	}
	return &sockConn{b: b, ep: ep, closed: make(chan struct{})}, inner
}

// TestAppendChannelData: our own ChannelData framing is the RFC's (as
// pion frames it too), for every payload length up to 1500 and the
// largest sendRelay frames, on recycled buffers that hold old bytes, and
// isChannelData recognises it.
func TestAppendChannelData(t *testing.T) {
	s, inner := newTestSock(t, 0)
	// Dirty buffers in the pool: padding must be written, not inherited.
	for range 8 {
		d := new([maxPacket]byte)
		for i := range d {
			d[i] = 0xee
		}
		s.b.pool.Put(d)
	}
	var lengths []int
	for n := 0; n <= 1500; n++ {
		lengths = append(lengths, n)
	}
	lengths = append(lengths, 4093, 65000, maxPacket-8)
	for _, ch := range []uint16{0x4000, 0x4001, 0x5a5a, 0x7fff} {
		for _, n := range lengths {
			data := make([]byte, n)
			for i := range data {
				data[i] = byte(i*5 + n + 1)
			}
			s.startBatch()
			s.appendChannelData(ch, data)
			s.mu.Lock()
			got := bytes.Clone(s.batch[0][:s.sizes[0]])
			s.mu.Unlock()
			if err := s.endBatch(); err != nil {
				t.Fatal(err)
			}
			if want := channelData(ch, data); !bytes.Equal(got, want) {
				t.Fatalf("channel %#x, %d bytes: framed as %x…(%d bytes), want %x…(%d bytes)", ch, n, head(got), len(got), head(want), len(want))
			}
			gch, gdata, err := parseChannelData(got)
			if err != nil || gch != ch || !bytes.Equal(gdata, data) {
				t.Fatalf("channel %#x, %d bytes: decodes to channel %#x, %d bytes, %v", ch, n, gch, len(gdata), err)
			}
			if !isChannelData(got) {
				t.Fatalf("channel %#x, %d bytes: isChannelData false", ch, n)
			}
			// What endBatch sent is the frame.
			rec := inner.recorded()
			last := rec[len(rec)-1]
			if len(last.bufs) != 1 || !bytes.Equal(last.bufs[0], got) || last.to != "127.0.0.1:3478" {
				t.Fatalf("endBatch sent %d buffers to %s", len(last.bufs), last.to)
			}
		}
	}
}

func head(p []byte) []byte { return p[:min(len(p), 8)] }

// TestEndBatchChunks: a batch leaves in chunks of the inner Bind's batch
// size, in order, and STUN messages are never held back.
func TestEndBatchChunks(t *testing.T) {
	s, inner := newTestSock(t, 16)
	s.startBatch()
	var want [][]byte
	for i := range 40 {
		data := []byte(fmt.Sprintf("datagram %d", i))
		want = append(want, channelData(0x4000, data))
		if i%2 == 0 {
			s.appendChannelData(0x4000, data)
		} else if _, err := s.WriteTo(channelData(0x4000, data), nil); err != nil {
			t.Fatal(err)
		}
	}
	if got := s.takeChannel(); got != 0x4000 {
		t.Errorf("takeChannel = %#x after pion's ChannelData, want 0x4000", got)
	}
	if got := s.takeChannel(); got != 0 {
		t.Errorf("second takeChannel = %#x, want 0", got)
	}
	stunMsg := stunPacket(stunBindingRequest, 4)
	if _, err := s.WriteTo(stunMsg, nil); err != nil {
		t.Fatal(err)
	}
	if rec := inner.recorded(); len(rec) != 1 || !bytes.Equal(rec[0].bufs[0], stunMsg) {
		t.Fatalf("a STUN message during a batch: %d sends, want it sent at once", len(rec))
	}
	if err := s.endBatch(); err != nil {
		t.Fatal(err)
	}
	rec := inner.recorded()[1:]
	var sizes []int
	var got [][]byte
	for _, r := range rec {
		sizes = append(sizes, len(r.bufs))
		got = append(got, r.bufs...)
	}
	if fmt.Sprint(sizes) != "[16 16 8]" {
		t.Errorf("sent in chunks of %v, want [16 16 8]", sizes)
	}
	if len(got) != len(want) {
		t.Fatalf("sent %d frames, want %d", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("frame %d is %q, want %q", i, got[i], want[i])
		}
	}
	// Outside a batch ChannelData goes at once too.
	if _, err := s.WriteTo(channelData(0x4001, []byte("now")), nil); err != nil {
		t.Fatal(err)
	}
	if n := len(inner.recorded()); n != len(rec)+2 {
		t.Errorf("ChannelData outside a batch was held back")
	}
}

// TestParseRelayEndpoint: relayed endpoints round-trip through their UAPI
// string; anything else is the inner Bind's.
func TestParseRelayEndpoint(t *testing.T) {
	b := NewBind(conn.NewStdNetBind())
	for _, tc := range []struct {
		in, out string
		peer    netip.AddrPort
	}{
		{"relay/203.0.113.10:5000", "relay/203.0.113.10:5000", netip.MustParseAddrPort("203.0.113.10:5000")},
		{"relay/[2001:db8::1]:51820", "relay/[2001:db8::1]:51820", netip.MustParseAddrPort("[2001:db8::1]:51820")},
		{"relay/[::ffff:198.51.100.7]:3478", "relay/198.51.100.7:3478", netip.MustParseAddrPort("198.51.100.7:3478")},
	} {
		ep, err := b.ParseEndpoint(tc.in)
		if err != nil {
			t.Errorf("ParseEndpoint(%q): %v", tc.in, err)
			continue
		}
		re, ok := ep.(*RelayEndpoint)
		if !ok {
			t.Errorf("ParseEndpoint(%q) = %T, want *RelayEndpoint", tc.in, ep)
			continue
		}
		if got := re.DstToString(); got != tc.out {
			t.Errorf("ParseEndpoint(%q).DstToString() = %q, want %q", tc.in, got, tc.out)
		}
		if re.Peer != tc.peer || re.DstIP() != tc.peer.Addr() || re.SrcIP().IsValid() || re.SrcToString() != "" {
			t.Errorf("ParseEndpoint(%q): peer %v, DstIP %v, SrcIP %v", tc.in, re.Peer, re.DstIP(), re.SrcIP())
		}
		if want, _ := tc.peer.MarshalBinary(); !bytes.Equal(re.DstToBytes(), want) {
			t.Errorf("ParseEndpoint(%q).DstToBytes() = %x, want %x", tc.in, re.DstToBytes(), want)
		}
		// The string parses back to the same (cached) endpoint.
		again, err := b.ParseEndpoint(re.DstToString())
		if err != nil || again != ep {
			t.Errorf("ParseEndpoint(%q) again: %v, %v; want the same endpoint", re.DstToString(), again, err)
		}
		if ap, relayed := IsRelayed(re.DstToString()); !relayed || ap != tc.peer {
			t.Errorf("IsRelayed(%q) = %v, %v", re.DstToString(), ap, relayed)
		}
	}
	for _, bad := range []string{"relay/x", "relay/", "relay/203.0.113.10", "relay/203.0.113.10:99999", "relay/relay/203.0.113.10:5000"} {
		if ep, err := b.ParseEndpoint(bad); err == nil {
			t.Errorf("ParseEndpoint(%q) = %v, want an error", bad, ep)
		}
	}
	ep, err := b.ParseEndpoint("203.0.113.10:5000")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := ep.(*conn.StdNetEndpoint); !ok || ep.DstToString() != "203.0.113.10:5000" {
		t.Errorf("plain address parsed to %T %q, want the inner Bind's endpoint", ep, ep.DstToString())
	}
	if ap, relayed := IsRelayed("203.0.113.10:5000"); relayed || ap != netip.MustParseAddrPort("203.0.113.10:5000") {
		t.Errorf("IsRelayed(plain) = %v, %v", ap, relayed)
	}
	if _, err := b.ParseEndpoint("not an address"); err == nil {
		t.Error("ParseEndpoint of junk succeeded")
	}
}

// fakeRelayedConn stands in for pion's relayed connection in sendRelay: it
// frames each datagram on the peer's channel and writes it through the
// sockConn, as pion's client does once the channel is bound. afterWrite,
// if set, runs after each write: what another goroutine does meanwhile.
type fakeRelayedConn struct {
	sock       *sockConn
	channels   map[netip.AddrPort]uint16
	afterWrite func()
}

func (f *fakeRelayedConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	ua, _ := addr.(*net.UDPAddr)
	ch, ok := f.channels[ua.AddrPort()]
	if !ok {
		return 0, fmt.Errorf("no channel for %v", addr)
	}
	if _, err := f.sock.WriteTo(channelData(ch, p), nil); err != nil {
		return 0, err
	}
	if after := f.afterWrite; after != nil {
		f.afterWrite = nil
		after()
	}
	return len(p), nil
}

func (f *fakeRelayedConn) ReadFrom([]byte) (int, net.Addr, error) { return 0, nil, net.ErrClosed }
func (f *fakeRelayedConn) Close() error                           { return nil }
func (f *fakeRelayedConn) LocalAddr() net.Addr                    { return &net.UDPAddr{} }
func (f *fakeRelayedConn) SetDeadline(time.Time) error            { return nil }
func (f *fakeRelayedConn) SetReadDeadline(time.Time) error        { return nil }
func (f *fakeRelayedConn) SetWriteDeadline(time.Time) error       { return nil }

// TestSendRelayConcurrentAnswer: while sendRelay sends a batch to peer A,
// the allocation's reader answers a connectivity check from peer B
// through the same TURN client (readRelay does not take sendMu). Its
// ChannelData passes through the sockConn between the first datagram of
// the batch and sendRelay's takeChannel. The rest of A's batch must still
// go on A's channel, not on the channel of whoever wrote last.
func TestSendRelayConcurrentAnswer(t *testing.T) {
	s, inner := newTestSock(t, 0)
	b := s.b
	peerA := netip.MustParseAddrPort("203.0.113.10:51820")
	peerB := netip.MustParseAddrPort("198.51.100.20:40000")
	const chA, chB = 0x4000, 0x4001
	fake := &fakeRelayedConn{sock: s, channels: map[netip.AddrPort]uint16{peerA: chA, peerB: chB}}
	answer := []byte("check answer to B")
	fake.afterWrite = func() {
		if _, err := fake.WriteTo(answer, net.UDPAddrFromAddrPort(peerB)); err != nil {
			t.Error(err)
		}
	}
	b.relay.Store(&relayState{
		server: netip.MustParseAddrPort("127.0.0.1:3478"), sock: s, conn: fake,
		relayed: netip.MustParseAddrPort("192.0.2.1:50000"), done: make(chan struct{}), stopped: make(chan struct{}),
	})
	var bufs [][]byte
	for i := range 8 {
		bufs = append(bufs, []byte(fmt.Sprintf("wireguard packet %d for A", i)))
	}
	if err := b.Send(bufs, b.relayEndpoint(peerA)); err != nil {
		t.Fatal(err)
	}
	var toA, toB [][]byte
	for _, r := range inner.recorded() {
		for _, f := range r.bufs {
			ch, data, err := parseChannelData(f)
			if err != nil {
				t.Fatal(err)
			}
			switch ch {
			case chA:
				toA = append(toA, data)
			case chB:
				toB = append(toB, data)
			}
		}
	}
	if len(toB) != 1 || !bytes.Equal(toB[0], answer) {
		var s []string
		for _, p := range toB {
			s = append(s, string(p))
		}
		t.Errorf("channel of B carried %q, want only the check answer", s)
	}
	if len(toA) != len(bufs) {
		t.Errorf("channel of A carried %d of the %d packets for A", len(toA), len(bufs))
	}
}

// TestSendRelayNoAllocation: without an allocation sendRelay fails with
// ErrNoRelay.
func TestSendRelayNoAllocation(t *testing.T) {
	b := openTestBind()
	err := b.Send([][]byte{make([]byte, 32)}, b.relayEndpoint(netip.MustParseAddrPort("203.0.113.10:5000")))
	if !errors.Is(err, ErrNoRelay) {
		t.Fatalf("Send = %v, want ErrNoRelay", err)
	}
}
