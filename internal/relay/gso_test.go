package relay

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// burstDatagrams returns n datagrams of mixed sizes: runs of one size (some
// ending in a shorter one), single odd sizes, sweeps, and runs of 1500-byte
// datagrams. Each carries its index in its first bytes, and content that
// differs from its neighbours'.
func burstDatagrams(n int) [][]byte {
	rng := rand.New(rand.NewPCG(1, 2))
	sizes := []int{1, 2, 3, 1400, 1400, 1500, 1500, 1500, 7}
	for len(sizes) < n {
		switch rng.IntN(4) {
		case 0: // a run of one size, sometimes with a shorter tail
			size, k := 1+rng.IntN(1400), 2+rng.IntN(39)
			for range k {
				sizes = append(sizes, size)
			}
			if rng.IntN(2) == 0 {
				sizes = append(sizes, 1+rng.IntN(size))
			}
		case 1: // a single odd size
			sizes = append(sizes, 1+rng.IntN(1400))
		case 2: // a run of the largest
			for range 1 + rng.IntN(5) {
				sizes = append(sizes, 1500)
			}
		case 3: // a sweep of growing sizes
			start := 1 + rng.IntN(1300)
			for i := range 8 {
				sizes = append(sizes, start+13*i)
			}
		}
	}
	out := make([][]byte, n)
	for i, size := range sizes[:n] {
		p := make([]byte, size)
		for j := range p {
			p[j] = byte(i*7 + j*3 + 1)
		}
		if size >= 2 {
			binary.BigEndian.PutUint16(p, uint16(i))
		} else {
			p[0] = byte(i)
		}
		out[i] = p
	}
	return out
}

// TestWriteCombiningBurst: a gateway allocation sends a burst of mixed-size
// datagrams as fast as pion's client can to a peer, which receives every
// one exactly as sent and in order; the relay counts each once.
//
// The peer is another allocation on the relay (a client credential for
// the gateway), which is how Keyhole uses the relay: a gateway credential
// may not reach a plain socket on the relay host, so a loopback socket
// cannot be the peer. "stalled read loop" holds the relay's read loop on
// the second datagram until 64 more are waiting, so that the relay reads
// full batches and write combining is certain to coalesce.
func TestWriteCombiningBurst(t *testing.T) {
	for _, tc := range []struct {
		name  string
		stall int
	}{
		{"free running", 0},
		{"stalled read loop", 64},
	} {
		t.Run(tc.name, func(t *testing.T) { testBurst(t, tc.stall) })
	}
}

// burstPair is a gateway allocation and a client allocation for it on r,
// each with a permission for the other, and a passThrough on the
// gateway's relay socket.
type burstPair struct {
	gwRelay, clRelay net.PacketConn
	gwAddr, clAddr   netip.AddrPort
	rc               *relayConn // the gateway's
	rec              *passThrough
}

func newBurstPair(t *testing.T, r *testRelay) *burstPair {
	t.Helper()
	gw, gwRelay, gwAddr := mustAllocate(t, r, gatewayClaims("gw_burst"))
	cl, clRelay, clAddr := mustAllocate(t, r, clientClaims("grt_burst", gwAddr))
	if err := gw.CreatePermission(net.UDPAddrFromAddrPort(clAddr)); err != nil {
		t.Fatal(err)
	}
	if err := cl.CreatePermission(net.UDPAddrFromAddrPort(gwAddr)); err != nil {
		t.Fatal(err)
	}
	// The peer's TURN client reads in its own goroutine; a big buffer
	// keeps the kernel from dropping while it catches up.
	if err := cl.conn.(*net.UDPConn).SetReadBuffer(8 << 20); err != nil {
		t.Fatal(err)
	}
	r.Server.mu.RLock()
	rc := r.byPort[gwAddr.Port()]
	r.Server.mu.RUnlock()
	if rc == nil {
		t.Fatalf("no relay socket for %v", gwAddr)
	}
	rec := &passThrough{}
	rc.wq.mu.Lock()
	rec.inner, rc.wq.pc = rc.wq.pc, rec
	rc.wq.mu.Unlock()
	return &burstPair{gwRelay: gwRelay, clRelay: clRelay, gwAddr: gwAddr, clAddr: clAddr, rc: rc, rec: rec}
}

// sent returns what the gateway's relay socket sent so far, and whether
// it still uses GSO.
func (b *burstPair) sent() (passThrough, bool) {
	b.rc.wq.mu.Lock()
	defer b.rc.wq.mu.Unlock()
	return *b.rec, b.rc.wq.gso
}

// stallLoop holds the relay's read loop at the next datagram it queues
// (markDirty) until release is called, so that what is sent meanwhile
// waits in the socket and is read in full batches.
func stallLoop(t *testing.T, r *testRelay) (release func()) {
	r.dirtyMu.Lock()
	var once sync.Once
	release = func() { once.Do(r.dirtyMu.Unlock) }
	t.Cleanup(release)
	return release
}

func testBurst(t *testing.T, stall int) {
	const n = 500
	r := startRelay(t, Config{})
	pair := newBurstPair(t, r)
	gwRelay, clRelay, gwAddr, clAddr := pair.gwRelay, pair.clRelay, pair.gwAddr, pair.clAddr

	burst := burstDatagrams(n)
	var sum uint64
	for _, p := range burst {
		sum += uint64(len(p))
	}
	received := make(chan []byte, n)
	readDone := make(chan error, 1)
	clRelay.SetReadDeadline(time.Now().Add(20 * time.Second))
	go func() {
		buf := make([]byte, 4096)
		for range n {
			k, from, err := clRelay.ReadFrom(buf)
			if err != nil {
				readDone <- err
				return
			}
			if got := addrPort(from); got != gwAddr {
				readDone <- fmt.Errorf("datagram from %v, want %v", got, gwAddr)
				return
			}
			received <- bytes.Clone(buf[:k])
		}
		readDone <- nil
	}()

	send := func(i int) {
		t.Helper()
		if _, err := gwRelay.WriteTo(burst[i], net.UDPAddrFromAddrPort(clAddr)); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	// The first datagram makes pion's client open the permission (a
	// transaction with the relay) before the burst.
	send(0)
	var got [][]byte
	select {
	case p := <-received:
		got = append(got, p)
	case err := <-readDone:
		t.Fatalf("first datagram: %v", err)
	}
	if stall > 0 {
		release := stallLoop(t, r)
		defer release()
		for i := 1; i < n; i++ {
			send(i)
			if i == 1+stall {
				release()
			}
		}
	} else {
		for i := 1; i < n; i++ {
			send(i)
		}
	}
	readErr := <-readDone
	for len(received) > 0 {
		got = append(got, <-received)
	}
	if d := compareBurst(got, burst); d != "" || readErr != nil {
		t.Fatalf("peer received %d of %d datagrams (read: %v): %s", len(got), n, readErr, d)
	}

	want := Stats{Allocations: 2, Packets: n, Bytes: sum}
	if st := r.Stats(); st != want {
		t.Errorf("stats %+v, want %+v", st, want)
	}
	tap := r.tapped()
	if len(tap) != n {
		t.Fatalf("tap saw %d datagrams, want %d", len(tap), n)
	}
	for i, tp := range tap {
		if tp.from != gwAddr || tp.to != clAddr || tp.payload != string(burst[i]) {
			t.Fatalf("tap %d: %v -> %v, %d bytes; want datagram %d (%d bytes) %v -> %v", i, tp.from, tp.to, len(tp.payload), i, len(burst[i]), gwAddr, clAddr)
		}
	}
	sent, gso := pair.sent()
	t.Logf("relay sent %d datagrams in %d messages, %d of them GSO; errors %v", sent.datagrams, sent.messages, sent.gsoMessages, sent.errs)
	if sent.datagrams != n {
		t.Errorf("relay socket sent %d datagrams, want each of the %d once", sent.datagrams, n)
	}
	if stall > 0 && gsoSupported && gso && sent.gsoMessages == 0 {
		t.Error("full batches were read, yet no GSO send was made")
	}
}

// TestWriteCombiningEmptyDatagrams: pion forwards an empty ChannelData
// as an empty datagram. Empty datagrams in a batch, alone or after a
// run, each reach the peer.
func TestWriteCombiningEmptyDatagrams(t *testing.T) {
	r := startRelay(t, Config{})
	pair := newBurstPair(t, r)
	to := net.UDPAddrFromAddrPort(pair.clAddr)
	read := func() string {
		t.Helper()
		pair.clRelay.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 2048)
		n, _, err := pair.clRelay.ReadFrom(buf)
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		return string(buf[:n])
	}
	if _, err := pair.gwRelay.WriteTo([]byte("warm up"), to); err != nil {
		t.Fatal(err)
	}
	if got := read(); got != "warm up" {
		t.Fatalf("got %q", got)
	}
	want := []string{"x", "", "", "", "", "yy", "yy", "", "end"}
	release := stallLoop(t, r)
	for _, p := range want {
		if _, err := pair.gwRelay.WriteTo([]byte(p), to); err != nil {
			t.Fatal(err)
		}
	}
	release()
	var got []string
	for len(got) == 0 || got[len(got)-1] != "end" {
		got = append(got, read())
	}
	if fmt.Sprintf("%q", got) != fmt.Sprintf("%q", want) {
		t.Errorf("peer got %q, want %q", got, want)
	}
	if sent, _ := pair.sent(); sent.datagrams != 1+len(want) {
		t.Errorf("relay socket sent %d datagrams, want %d", sent.datagrams, 1+len(want))
	}
}

// compareBurst says how got differs from want: missing, duplicated or
// reordered datagrams; "" if it does not.
func compareBurst(got, want [][]byte) string {
	index := make(map[string]int, len(want))
	for i, p := range want {
		index[string(p)] = i
	}
	seen := make(map[int]int)
	var unknown, reordered int
	last := -1
	for _, p := range got {
		i, ok := index[string(p)]
		if !ok {
			unknown++
			continue
		}
		seen[i]++
		if i < last {
			reordered++
		}
		last = i
	}
	var missing, dups []int
	for i := range want {
		switch c := seen[i]; {
		case c == 0:
			missing = append(missing, i)
		case c > 1:
			dups = append(dups, i)
		}
	}
	if len(missing) == 0 && len(dups) == 0 && unknown == 0 && reordered == 0 {
		return ""
	}
	return fmt.Sprintf("%d missing %v, %d duplicated %v, %d unknown (altered), %d out of order",
		len(missing), head10(missing), len(dups), head10(dups), unknown, reordered)
}

func head10(s []int) []int { return s[:min(len(s), 10)] }

// TestGatewayToHostSocketRefused is the reason TestWriteCombiningBurst's
// peer is an allocation: a gateway's datagram to a plain socket on the
// relay host is refused, even at the relay's own IP.
func TestGatewayToHostSocketRefused(t *testing.T) {
	r := startRelay(t, Config{})
	gw, gwRelay, _ := mustAllocate(t, r, gatewayClaims("gw_host"))
	peer, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	to := peer.LocalAddr().(*net.UDPAddr)
	if err := gw.CreatePermission(to); err != nil {
		t.Fatalf("permission for the relay's own IP: %v", err)
	}
	before := r.Stats().PeerDenied
	if _, err := gwRelay.WriteTo([]byte("hello"), to); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() string {
		if st := r.Stats(); st.PeerDenied <= before || st.Packets != 0 {
			return fmt.Sprintf("stats %+v: want the datagram to %v refused", st, netip.MustParseAddrPort(to.String()))
		}
		return ""
	})
}
