package nat

import (
	"bytes"
	"net/netip"
	"testing"

	"golang.zx2c4.com/wireguard/conn"
)

// TestInitiationHook drives the receive filter with handshake initiations
// the hook passes, drops and holds, then delivers the held one through the
// Bind's second receive path with its original endpoint.
func TestInitiationHook(t *testing.T) {
	b := openTestBind()
	from := netip.MustParseAddrPort("127.0.0.1:40000")
	pass, drop, hold := wgPacket(1, 148, 1), wgPacket(1, 148, 2), wgPacket(1, 148, 3)
	data := wgPacket(4, 64, 7)
	response := wgPacket(2, 92, 8) // not an initiation: the hook never sees it
	var held *Initiation
	seen := 0
	b.SetInitiationHook(func(in *Initiation) Verdict {
		seen++
		if in.From != from || in.Relayed {
			t.Errorf("hook saw from %v relayed %v", in.From, in.Relayed)
		}
		switch {
		case bytes.Equal(in.Packet, pass):
			return Pass
		case bytes.Equal(in.Packet, hold):
			held = in
			return Hold
		default:
			return Drop
		}
	})
	in := [][]byte{data, pass, drop, hold, response}
	ep := &conn.StdNetEndpoint{AddrPort: from}
	recv := b.receiveFunc(func(p [][]byte, s []int, e []conn.Endpoint) (int, error) {
		for i, pkt := range in {
			s[i] = copy(p[i], pkt)
			e[i] = ep
		}
		return len(in), nil
	})
	packets := make([][]byte, len(in))
	for i := range packets {
		packets[i] = make([]byte, 2048)
	}
	sizes := make([]int, len(in))
	eps := make([]conn.Endpoint, len(in))
	n, err := recv(packets, sizes, eps)
	if err != nil {
		t.Fatal(err)
	}
	want := [][]byte{data, pass, response}
	if n != len(want) || seen != 3 {
		t.Fatalf("got %d packets (hook saw %d), want %d (3)", n, seen, len(want))
	}
	for i, w := range want {
		if !bytes.Equal(packets[i][:sizes[i]], w) {
			t.Errorf("packet %d: %x…", i, packets[i][:8])
		}
	}
	if held == nil {
		t.Fatal("nothing held")
	}
	// The batch buffer is reused by the next read; the held copy is not.
	for i := range packets {
		clear(packets[i])
	}
	if !held.Deliver() {
		t.Fatal("Deliver refused")
	}
	if held.Deliver() {
		t.Fatal("second Deliver accepted")
	}
	n, err = b.relayReceive(b.done)(packets, sizes, eps)
	if err != nil || n != 1 || !bytes.Equal(packets[0][:sizes[0]], hold) || eps[0] != conn.Endpoint(ep) {
		t.Fatalf("delivered: n=%d err=%v pkt %x… ep %v", n, err, packets[0][:8], eps[0])
	}

	// Without a hook nothing is judged.
	b.SetInitiationHook(nil)
	seen = 0
	if n, _ := recv(packets, sizes, eps); n != len(in) || seen != 0 {
		t.Fatalf("without hook: %d packets, hook called %d times", n, seen)
	}
}

// TestInitiationDeliverAfterClose drops a held packet whose Bind closed.
func TestInitiationDeliverAfterClose(t *testing.T) {
	b := openTestBind()
	var held *Initiation
	b.SetInitiationHook(func(in *Initiation) Verdict { held = in; return Hold })
	if b.judgeInitiation(wgPacket(1, 148, 1), &conn.StdNetEndpoint{}, false) {
		t.Fatal("held packet stayed in the batch")
	}
	close(b.done)
	b.done = nil
	if held.Deliver() {
		t.Fatal("delivered into a closed Bind")
	}
}

// TestInitiationHookRelayed: initiations that arrive through the relay
// allocation meet the hook too, as relayed, from the peer's address; a
// held one comes back with its relay endpoint.
func TestInitiationHookRelayed(t *testing.T) {
	b := openTestBind()
	peer := netip.MustParseAddrPort("198.51.100.7:5000")
	drop, hold, data := wgPacket(1, 148, 1), wgPacket(1, 148, 2), wgPacket(4, 64, 3)
	var held *Initiation
	b.SetInitiationHook(func(in *Initiation) Verdict {
		if in.From != peer || !in.Relayed {
			t.Errorf("hook saw from %v relayed %v", in.From, in.Relayed)
		}
		if bytes.Equal(in.Packet, hold) {
			held = in
			return Hold
		}
		return Drop
	})
	push := func(pkt []byte) {
		buf := b.pool.Get().(*[maxPacket]byte)
		b.relayRx <- relayPacket{buf: buf, n: copy(buf[:], pkt), from: peer}
	}
	push(drop)
	push(hold)
	push(data)
	recv := b.relayReceive(b.done)
	packets := [][]byte{make([]byte, 2048), make([]byte, 2048)}
	sizes := make([]int, 2)
	eps := make([]conn.Endpoint, 2)
	n, err := recv(packets, sizes, eps)
	if err != nil || n != 1 || !bytes.Equal(packets[0][:sizes[0]], data) {
		t.Fatalf("n=%d err=%v first %x…", n, err, packets[0][:8])
	}
	if held == nil || !held.Deliver() {
		t.Fatal("relayed initiation not held or not delivered")
	}
	n, err = recv(packets, sizes, eps)
	re, ok := eps[0].(*RelayEndpoint)
	if err != nil || n != 1 || !bytes.Equal(packets[0][:sizes[0]], hold) || !ok || re.Peer != peer {
		t.Fatalf("delivered: n=%d err=%v ep %v", n, err, eps[0])
	}
}
