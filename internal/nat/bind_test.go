package nat

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/tuntest"
)

// openTestBind returns a Bind marked open without a socket, for tests that
// drive the receive filter directly.
func openTestBind() *Bind {
	b := NewBind(conn.NewStdNetBind())
	b.done = make(chan struct{})
	return b
}

// response builds a Binding success response for id mapping to mapped.
func response(t testing.TB, id [stunTxIDSize]byte, mapped netip.AddrPort) []byte {
	t.Helper()
	m, err := stun.Build(stun.NewTransactionIDSetter(id), stun.BindingSuccess,
		&stun.XORMappedAddress{IP: mapped.Addr().AsSlice(), Port: int(mapped.Port())})
	if err != nil {
		t.Fatal(err)
	}
	return m.Raw
}

func TestFilter(t *testing.T) {
	server := netip.MustParseAddrPort("127.0.0.1:3478")
	other := netip.MustParseAddrPort("127.0.0.1:3479")
	mapped := netip.MustParseAddrPort("127.0.0.1:51820")

	b := openTestBind()
	id, tx, err := b.register(server)
	if err != nil {
		t.Fatal(err)
	}
	var unknownID [stunTxIDSize]byte
	copy(unknownID[:], "not-our-txid")

	in := []struct {
		name string
		pkt  []byte
		from netip.AddrPort
		keep bool
	}{
		{"wg data", wgPacket(4, 64, 1), server, true},
		{"our response", response(t, id, mapped), server, false},
		{"our id from another port", response(t, id, netip.MustParseAddrPort("127.0.0.1:1")), other, true},
		{"unknown id from server", response(t, unknownID, netip.MustParseAddrPort("127.0.0.1:2")), server, true},
		{"wg data with cookie index", wgPacket(4, 48, stunMagicCookie), server, true},
		{"our response duplicate", response(t, id, mapped), server, false},
		{"wg handshake", wgPacket(1, 148, 9), server, true},
	}
	packets := make([][]byte, len(in))
	sizes := make([]int, len(in))
	eps := make([]conn.Endpoint, len(in))
	recv := b.receiveFunc(func(p [][]byte, s []int, e []conn.Endpoint) (int, error) {
		for i, c := range in {
			s[i] = copy(p[i], c.pkt)
			e[i] = &conn.StdNetEndpoint{AddrPort: c.from}
		}
		return len(in), nil
	})
	for i := range packets {
		packets[i] = make([]byte, 2048)
	}
	n, err := recv(packets, sizes, eps)
	if err != nil {
		t.Fatal(err)
	}
	var want []int
	for i, c := range in {
		if c.keep {
			want = append(want, i)
		}
	}
	if n != len(want) {
		t.Fatalf("got %d packets, want %d", n, len(want))
	}
	for j, i := range want {
		if !bytes.Equal(packets[j][:sizes[j]], in[i].pkt) {
			t.Errorf("packet %d: got %x…, want %q", j, packets[j][:8], in[i].name)
		}
		if got := eps[j].(*conn.StdNetEndpoint).AddrPort; got != in[i].from {
			t.Errorf("packet %d (%s): endpoint %v, want %v", j, in[i].name, got, in[i].from)
		}
	}
	select {
	case raw := <-tx.resp:
		got, err := parseBindingResponse(raw)
		if err != nil || got != mapped {
			t.Fatalf("transaction got %v, %v; want %v", got, err, mapped)
		}
	default:
		t.Fatal("transaction got no response")
	}
}

// TestFilterAllConsumed checks that a batch made only of our STUN responses
// is not returned empty: the filter reads again.
func TestFilterAllConsumed(t *testing.T) {
	server := netip.MustParseAddrPort("[::1]:3478")
	b := openTestBind()
	id, _, err := b.register(server)
	if err != nil {
		t.Fatal(err)
	}
	calls := 0
	recv := b.receiveFunc(func(p [][]byte, s []int, e []conn.Endpoint) (int, error) {
		calls++
		if calls == 1 {
			s[0] = copy(p[0], response(t, id, server))
		} else {
			s[0] = copy(p[0], wgPacket(4, 32, 5))
		}
		e[0] = &conn.StdNetEndpoint{AddrPort: server}
		return 1, nil
	})
	p := [][]byte{make([]byte, 1500)}
	n, err := recv(p, make([]int, 1), make([]conn.Endpoint, 1))
	if err != nil || n != 1 || calls != 2 || Classify(p[0][:32]) != WireGuard {
		t.Fatalf("n=%d err=%v calls=%d", n, err, calls)
	}
}

func TestReflexiveTooMany(t *testing.T) {
	b := openTestBind()
	for range MaxPending {
		if _, _, err := b.register(netip.MustParseAddrPort("127.0.0.1:3478")); err != nil {
			t.Fatal(err)
		}
	}
	_, err := b.Reflexive(t.Context(), netip.MustParseAddrPort("127.0.0.1:3478"))
	if !errors.Is(err, ErrTooManyTransactions) {
		t.Fatalf("err = %v, want ErrTooManyTransactions", err)
	}
}

// BenchmarkFilter measures the receive filter on a full batch of WireGuard
// data packets while a STUN query is outstanding (the slow case: without
// one the filter is skipped).
func BenchmarkFilter(bb *testing.B) {
	b := openTestBind()
	if _, _, err := b.register(netip.MustParseAddrPort("127.0.0.1:3478")); err != nil {
		bb.Fatal(err)
	}
	const batch = conn.IdealBatchSize
	packets := make([][]byte, batch)
	sizes := make([]int, batch)
	eps := make([]conn.Endpoint, batch)
	ep := &conn.StdNetEndpoint{AddrPort: netip.MustParseAddrPort("127.0.0.1:51820")}
	for i := range packets {
		packets[i] = wgPacket(4, 1420, uint32(i))
		// Every 8th packet collides with the cookie: the worst case,
		// which reaches the STUN checks.
		if i%8 == 0 {
			binary.BigEndian.PutUint32(packets[i][4:8], stunMagicCookie)
		}
		sizes[i] = len(packets[i])
		eps[i] = ep
	}
	bb.ReportAllocs()
	bb.ResetTimer()
	for bb.Loop() {
		if n := b.filter(packets, sizes, eps, batch); n != batch {
			bb.Fatalf("filter kept %d of %d", n, batch)
		}
	}
	bb.ReportMetric(float64(bb.Elapsed().Nanoseconds())/float64(bb.N*batch), "ns/packet")
}

// node is a wireguard-go device on a Bind, with a channel TUN.
type node struct {
	tun  *tuntest.ChannelTUN
	bind *Bind
	dev  *device.Device
	port uint16
	pub  [32]byte
	priv [32]byte
}

func newNode(t *testing.T) *node {
	t.Helper()
	tn := tuntest.NewChannelTUN()
	n := startDevice(t, tn.TUN(), conn.NewStdNetBind())
	n.tun = tn
	return n
}

// peer makes n and m peers over loopback. The tunnel addresses
// (192.0.2.0/24, RFC 5737) exist only inside the channel TUNs; no socket
// uses them.
func (n *node) peer(t *testing.T, m *node, tunnelAddr string) {
	t.Helper()
	cfg := fmt.Sprintf("public_key=%s\nendpoint=127.0.0.1:%d\nallowed_ip=%s/32\n",
		hex.EncodeToString(m.pub[:]), m.port, tunnelAddr)
	if err := n.dev.IpcSet(cfg); err != nil {
		t.Fatal(err)
	}
}

// ping sends an ICMP packet from a to b through the tunnel and waits for it.
func ping(t *testing.T, a, b *node, src, dst netip.Addr) {
	t.Helper()
	msg := tuntest.Ping(dst, src)
	a.tun.Outbound <- msg
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	for {
		select {
		case got := <-b.tun.Inbound:
			if bytes.Equal(got, msg) {
				return
			}
		case <-timeout.C:
			t.Fatalf("ping %v -> %v: not delivered", src, dst)
		}
	}
}

// fakeSTUN is a STUN "server" the test scripts: it reports each request it
// reads, and answers only when told to.
type fakeSTUN struct {
	pc   *net.UDPConn
	reqs chan [stunTxIDSize]byte
}

func newFakeSTUN(t *testing.T) *fakeSTUN {
	t.Helper()
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeSTUN{pc: pc, reqs: make(chan [stunTxIDSize]byte, 16)}
	done := make(chan struct{})
	t.Cleanup(func() { pc.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			n, err := pc.Read(buf)
			if err != nil {
				return
			}
			if Classify(buf[:n]) == STUN && stunType(buf[:n]) == stunBindingRequest {
				var id [stunTxIDSize]byte
				copy(id[:], buf[stunTxIDOffset:stunHeaderSize])
				f.reqs <- id
			}
		}
	}()
	return f
}

func (f *fakeSTUN) addr() netip.AddrPort { return f.pc.LocalAddr().(*net.UDPAddr).AddrPort() }

func (f *fakeSTUN) nextRequest(t *testing.T) [stunTxIDSize]byte {
	t.Helper()
	select {
	case id := <-f.reqs:
		return id
	case <-time.After(10 * time.Second):
		t.Fatal("no STUN request")
		return [stunTxIDSize]byte{}
	}
}

// TestSharedSocket runs WireGuard between two devices while both learn
// their reflexive address over the same sockets, from a real STUN server
// (pion's, as the relay runs it) and from a scripted one that also sends
// spoofed responses.
func TestSharedSocket(t *testing.T) {
	srvAddr := startTURN(t, 0)

	a, b := newNode(t), newNode(t)
	addrA, addrB := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	a.peer(t, b, addrB.String())
	b.peer(t, a, addrA.String())

	ping(t, a, b, addrA, addrB) // handshake and data

	for _, n := range []*node{a, b} {
		got, err := n.bind.Reflexive(t.Context(), srvAddr)
		if err != nil {
			t.Fatal(err)
		}
		if want := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), n.port); got != want {
			t.Errorf("Reflexive = %v, want %v (the socket's own address)", got, want)
		}
	}
	ping(t, b, a, addrB, addrA)

	// Spoofing: the scripted server learns the transaction ID, then a
	// response with that ID arrives from another port, and one with a
	// wrong ID from the server's port, both claiming a bogus address.
	// Reflexive must wait for the genuine answer, and WireGuard must keep
	// working (it gets and drops the spoofed datagrams).
	fake := newFakeSTUN(t)
	spoofer, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer spoofer.Close()
	bogus := netip.MustParseAddrPort("127.0.0.1:9")
	genuine := netip.MustParseAddrPort("127.0.0.1:4242")
	bAddr := net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), b.port))
	type result struct {
		addr netip.AddrPort
		err  error
	}
	res := make(chan result, 1)
	go func() {
		addr, err := b.bind.Reflexive(t.Context(), fake.addr())
		res <- result{addr, err}
	}()
	id := fake.nextRequest(t)
	wrongID := id
	wrongID[0] ^= 0xff
	if _, err := spoofer.WriteToUDP(response(t, id, bogus), bAddr); err != nil {
		t.Fatal(err)
	}
	if _, err := fake.pc.WriteToUDP(response(t, wrongID, bogus), bAddr); err != nil {
		t.Fatal(err)
	}
	// A data packet whose receiver index is the magic cookie, from the
	// server's port: not STUN, so WireGuard gets it (and drops it).
	if _, err := fake.pc.WriteToUDP(wgPacket(4, 64, stunMagicCookie), bAddr); err != nil {
		t.Fatal(err)
	}
	// Prove the spoofed datagrams were processed before the genuine answer:
	// a tunnel round trip through b's socket after they were sent.
	ping(t, a, b, addrA, addrB)
	select {
	case r := <-res:
		t.Fatalf("Reflexive returned early: %v, %v", r.addr, r.err)
	default:
	}
	// The retransmission (same ID) is answered genuinely.
	if _, err := fake.pc.WriteToUDP(response(t, id, genuine), bAddr); err != nil {
		t.Fatal(err)
	}
	r := <-res
	if r.err != nil || r.addr != genuine {
		t.Fatalf("Reflexive = %v, %v; want %v", r.addr, r.err, genuine)
	}
	ping(t, b, a, addrB, addrA)
}

func TestCloseUnblocksReflexive(t *testing.T) {
	b := NewBind(conn.NewStdNetBind())
	if _, err := b.Reflexive(t.Context(), netip.MustParseAddrPort("127.0.0.1:3478")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Reflexive before Open: %v, want net.ErrClosed", err)
	}
	fns, _, err := b.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	fake := newFakeSTUN(t) // reads requests, never answers
	errc := make(chan error, 1)
	go func() {
		_, err := b.Reflexive(t.Context(), fake.addr())
		errc <- err
	}()
	fake.nextRequest(t)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Reflexive after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not unblock Reflexive")
	}
	for _, fn := range fns {
		if _, err := fn(make([][]byte, 1), make([]int, 1), make([]conn.Endpoint, 1)); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("receive after Close: %v, want net.ErrClosed", err)
		}
	}
	// wireguard-go reopens on rebind; the Bind must work again.
	if _, _, err := b.Open(0); err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	if _, err := b.Reflexive(ctx, fake.addr()); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Reflexive with unanswered server: %v, want deadline exceeded", err)
	}
}
