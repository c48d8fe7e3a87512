package nat

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/curve25519"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
)

// batchTUN is a TUN device whose reads return a whole batch the test
// queued at once, so that wireguard-go sends it with one Bind.Send
// (tuntest's ChannelTUN hands out one packet per read).
type batchTUN struct {
	out    chan [][]byte // batches for the device to send
	in     chan []byte   // packets the device delivered
	events chan tun.Event
	closed chan struct{}
	once   sync.Once
}

var _ tun.Device = (*batchTUN)(nil)

func newBatchTUN() *batchTUN {
	t := &batchTUN{
		out:    make(chan [][]byte, 64),
		in:     make(chan []byte, 4096),
		events: make(chan tun.Event, 1),
		closed: make(chan struct{}),
	}
	t.events <- tun.EventUp
	return t
}

func (t *batchTUN) File() *os.File { return nil }

func (t *batchTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	select {
	case <-t.closed:
		return 0, os.ErrClosed
	case batch := <-t.out:
		if len(batch) > len(bufs) {
			panic(fmt.Sprintf("batch of %d, device reads %d", len(batch), len(bufs)))
		}
		for i, p := range batch {
			sizes[i] = copy(bufs[i][offset:], p)
		}
		return len(batch), nil
	}
}

func (t *batchTUN) Write(bufs [][]byte, offset int) (int, error) {
	for i, b := range bufs {
		select {
		case <-t.closed:
			return i, os.ErrClosed
		case t.in <- bytes.Clone(b[offset:]):
		}
	}
	return len(bufs), nil
}

func (t *batchTUN) MTU() (int, error)        { return 1420, nil }
func (t *batchTUN) Name() (string, error)    { return "batchtun", nil }
func (t *batchTUN) Events() <-chan tun.Event { return t.events }
func (t *batchTUN) BatchSize() int           { return conn.IdealBatchSize }

func (t *batchTUN) Close() error {
	t.once.Do(func() {
		close(t.closed)
		close(t.events)
	})
	return nil
}

// startDevice is newNode for any TUN and inner Bind; the node's tun field
// is left nil.
func startDevice(t *testing.T, tdev tun.Device, inner conn.Bind) *node {
	t.Helper()
	n := &node{bind: NewBind(inner)}
	rand.Read(n.priv[:])
	pub, err := curve25519.X25519(n.priv[:], curve25519.Basepoint)
	if err != nil {
		t.Fatal(err)
	}
	copy(n.pub[:], pub)
	n.dev = device.NewDevice(tdev, n.bind, device.NewLogger(device.LogLevelError, t.Name()+": "))
	t.Cleanup(n.dev.Close)
	if err := n.dev.IpcSet("private_key=" + hex.EncodeToString(n.priv[:]) + "\nlisten_port=0\n"); err != nil {
		t.Fatal(err)
	}
	if err := n.dev.Up(); err != nil {
		t.Fatal(err)
	}
	cfg, err := n.dev.IpcGet()
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(cfg) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "listen_port="); ok {
			p, err := strconv.ParseUint(v, 10, 16)
			if err != nil {
				t.Fatal(err)
			}
			n.port = uint16(p)
		}
	}
	if n.port == 0 {
		t.Fatalf("no listen port in %q", cfg)
	}
	return n
}

// ipv4UDP returns an IPv4/UDP packet of size bytes from src to dst whose
// payload starts with seq.
func ipv4UDP(src, dst netip.Addr, seq uint32, size int) []byte {
	p := make([]byte, size)
	p[0], p[8], p[9] = 0x45, 64, 17
	binary.BigEndian.PutUint16(p[2:], uint16(size))
	copy(p[12:16], src.AsSlice())
	copy(p[16:20], dst.AsSlice())
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(p[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	binary.BigEndian.PutUint16(p[10:], ^uint16(sum))
	binary.BigEndian.PutUint16(p[20:], 40000)
	binary.BigEndian.PutUint16(p[22:], 9)
	binary.BigEndian.PutUint16(p[24:], uint16(size-20))
	binary.BigEndian.PutUint32(p[28:], seq)
	for i := 32; i < size; i++ {
		p[i] = byte(seq) + byte(i)
	}
	return p
}

// TestRelayedThroughput pushes 2000 packets in batches of up to 64
// through the relayed WireGuard path: the gateway's device sends each
// batch with one Bind.Send to a relayed endpoint, so sendRelay frames all
// but the first packet itself and hands the batch to the socket at once.
// Every packet must arrive once, intact and in order, and every datagram
// the Bind sent to the TURN server must be well-formed ChannelData.
func TestRelayedThroughput(t *testing.T) {
	const total = 2000
	server := startTURN(t, 8<<20) // a burst waiting in its socket must not be dropped
	gwTUN := newBatchTUN()
	gwInner := &recordingBind{Bind: conn.NewStdNetBind()}
	gw := startDevice(t, gwTUN, gwInner)
	cl := newNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	relayed, err := gw.bind.Allocate(ctx, RelayConfig{Server: server, Username: "gw", Password: "secret", Realm: "keyhole"})
	if err != nil {
		t.Fatalf("allocate: %v", err)
	}
	if err := gw.bind.Permit(ctx, netip.MustParseAddr("127.0.0.1")); err != nil {
		t.Fatalf("permit: %v", err)
	}
	gwIP, clIP := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	if err := cl.dev.IpcSet(fmt.Sprintf("public_key=%s\nendpoint=%s\nallowed_ip=%s/32\n", hex.EncodeToString(gw.pub[:]), relayed, gwIP)); err != nil {
		t.Fatal(err)
	}
	if err := gw.dev.IpcSet(fmt.Sprintf("public_key=%s\nallowed_ip=%s/32\n", hex.EncodeToString(cl.pub[:]), clIP)); err != nil {
		t.Fatal(err)
	}
	// The client's packet makes the handshake; the gateway answers to its
	// relayed endpoint.
	hello := ipv4UDP(clIP, gwIP, 0xffffffff, 64)
	cl.tun.Outbound <- hello
	select {
	case p := <-gwTUN.in:
		if !bytes.Equal(p, hello) {
			t.Fatalf("gateway got %x, want the client's packet", p)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("client's packet not delivered through the relay")
	}
	gwTUN.out <- [][]byte{ipv4UDP(gwIP, clIP, 0xffffffff, 64)}
	expect(t, cl, ipv4UDP(gwIP, clIP, 0xffffffff, 64))

	var want [][]byte
	var batches [][][]byte
	for seq := 0; seq < total; {
		n := min([]int{1, 7, 64, 33, 64, 2, 17}[len(batches)%7], total-seq)
		var batch [][]byte
		for range n {
			size := 60 + (seq*37)%1361 // 60..1420
			if seq%5 != 0 {
				size = 1420 // runs of full-size packets
			}
			p := ipv4UDP(gwIP, clIP, uint32(seq), size)
			batch = append(batch, p)
			want = append(want, p)
			seq++
		}
		batches = append(batches, batch)
	}

	// At most window packets are in flight, so that no queue on the way
	// (the TURN server's socket, pion's read queue) can overflow.
	const window = 128
	start := time.Now()
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	var got [][]byte
	sent := 0
	for len(got) < total {
		if len(batches) > 0 && sent+len(batches[0]) <= len(got)+window {
			gwTUN.out <- batches[0]
			sent += len(batches[0])
			batches = batches[1:]
			continue
		}
		select {
		case p := <-cl.tun.Inbound:
			got = append(got, p)
		case <-deadline.C:
			t.Fatalf("after 30s: %d of %d packets arrived", len(got), total)
		}
	}
	elapsed := time.Since(start)
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("packet %d: got seq %d (%d bytes), want seq %d (%d bytes)", i,
				binary.BigEndian.Uint32(got[i][28:]), len(got[i]), i, len(want[i]))
		}
	}
	t.Logf("%d packets through the relay in %v (%.0f packets/s)", total, elapsed, total/elapsed.Seconds())

	// What the gateway's Bind sent to the TURN server: ChannelData on one
	// channel, in batches.
	maxBatch, frames, indications := 0, 0, 0
	channels := map[uint16]int{}
	for _, s := range gwInner.recorded() {
		if s.to != server.String() {
			continue
		}
		data := 0
		for _, b := range s.bufs {
			if isSTUN(b) {
				if stunType(b) == 0x0016 { // Send indication: data before the channel is bound
					indications++
				}
				continue
			}
			ch, _, err := parseChannelData(b)
			if err != nil {
				t.Fatalf("datagram to the TURN server: %v", err)
			}
			channels[ch]++
			data++
		}
		frames += data
		maxBatch = max(maxBatch, data)
	}
	t.Logf("to the TURN server: %d ChannelData messages, %d Send indications, up to %d ChannelData per send", frames, indications, maxBatch)
	if len(channels) != 1 {
		t.Errorf("ChannelData on channels %v, want one", channels)
	}
	if frames+indications < total {
		t.Errorf("%d data messages to the server, want at least %d", frames+indications, total)
	}
	if maxBatch < 2 {
		t.Errorf("largest batch to the server had %d ChannelData messages; sendRelay never batched", maxBatch)
	}
}

// expect waits for p on n's TUN.
func expect(t *testing.T, n *node, p []byte) {
	t.Helper()
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	for {
		select {
		case got := <-n.tun.Inbound:
			if bytes.Equal(got, p) {
				return
			}
		case <-timeout.C:
			t.Fatal("packet not delivered")
		}
	}
}
