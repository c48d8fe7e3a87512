package nat

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/pion/turn/v4"
)

func loopback(port uint16) netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
}

// TestChecks: an authenticated check is answered with the mapped address and
// the answerer's candidates; wrong keys and unknown users get silence.
func TestChecks(t *testing.T) {
	a, b := newNode(t), newNode(t)
	key := []byte("0123456789abcdef")
	aCands := []Candidate{{Kind: ServerReflexive, Addr: netip.MustParseAddrPort("203.0.113.3:4000")}, {Kind: Relayed, Addr: netip.MustParseAddrPort("203.0.113.10:50000")}}
	bCands := []Candidate{{Kind: Host, Addr: netip.MustParseAddrPort("192.0.2.10:1234")}}
	var got atomic.Pointer[[]Candidate]
	a.bind.SetChecks(&CheckConfig{
		Key: func(u string) ([]byte, bool) {
			if u == "grt_1" {
				return key, true
			}
			return nil, false
		},
		Local: func() []Candidate { return aCands },
		OnCheck: func(u string, from netip.AddrPort, relayed bool, remote []Candidate) {
			if u == "grt_1" && from == loopback(b.port) && !relayed {
				got.Store(&remote)
			}
		},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := b.bind.Check(ctx, loopback(a.port), "grt_1", key, bCands)
	if err != nil {
		t.Fatalf("check: %v", err)
	}
	if res.Mapped != loopback(b.port) {
		t.Errorf("mapped = %v, want %v", res.Mapped, loopback(b.port))
	}
	if fmt.Sprint(res.Remote) != fmt.Sprint(aCands) {
		t.Errorf("remote candidates = %v, want %v", res.Remote, aCands)
	}
	// OnCheck runs after the answer is sent: the answer may arrive first.
	for deadline := time.Now().Add(2 * time.Second); got.Load() == nil && time.Now().Before(deadline); {
		<-time.After(5 * time.Millisecond)
	}
	if r := got.Load(); r == nil || fmt.Sprint(*r) != fmt.Sprint(bCands) {
		t.Errorf("OnCheck saw %v, want %v", r, bCands)
	}

	for _, tc := range []struct {
		name, user string
		key        []byte
	}{
		{"wrong key", "grt_1", []byte("fedcba9876543210")},
		{"unknown user", "grt_2", key},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
			defer cancel()
			if _, err := b.bind.Check(ctx, loopback(a.port), tc.user, tc.key, nil); !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("check = %v, want no answer", err)
			}
		})
	}
	// WireGuard still works on the same sockets.
	a.peer(t, b, "192.0.2.2")
	b.peer(t, a, "192.0.2.1")
	ping(t, b, a, netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("192.0.2.1"))
}

// TestCandidatesAttribute round-trips candidates and survives junk.
func TestCandidatesAttribute(t *testing.T) {
	in := []Candidate{
		{Kind: Host, Addr: netip.MustParseAddrPort("192.0.2.10:1")},
		{Kind: ServerReflexive, Addr: netip.MustParseAddrPort("[2001:db8::1]:65535")},
		{Kind: Relayed, Addr: netip.MustParseAddrPort("203.0.113.10:3478")},
	}
	m, err := buildMessage(candidatesSetter(in))
	if err != nil {
		t.Fatal(err)
	}
	if out := candidatesOf(m); fmt.Sprint(out) != fmt.Sprint(in) {
		t.Fatalf("got %v, want %v", out, in)
	}
	for _, junk := range [][]byte{{}, {1}, {1, 4, 0, 1, 1, 2}, {9, 4, 0, 1, 1, 2, 3, 4}, {1, 5, 0, 1, 1, 2, 3, 4, 5}, {1, 4, 0, 0, 1, 2, 3, 4}} {
		m, err := buildMessage(rawAttr(junk))
		if err != nil {
			t.Fatal(err)
		}
		if out := candidatesOf(m); len(out) != 0 {
			t.Errorf("junk %x gave %v", junk, out)
		}
	}
}

// TestRelayedWireGuard: a node holding a TURN allocation is reached by a
// peer that sends plain UDP to the relayed address; WireGuard runs both
// ways through the relay, the answering node sees a relayed endpoint, and
// connectivity checks work through the relay too.
func TestRelayedWireGuard(t *testing.T) {
	server := startTURN(t, 0)
	gw, cl := newNode(t), newNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	relayed, err := gw.bind.Allocate(ctx, RelayConfig{Server: server, Username: "gw", Password: "secret", Realm: "keyhole"})
	if err != nil {
		t.Fatalf("allocate: %v", err)
	}
	if got, ok := gw.bind.Relayed(); !ok || got != relayed {
		t.Fatalf("Relayed() = %v %v, want %v", got, ok, relayed)
	}
	if err := gw.bind.Permit(ctx, netip.MustParseAddr("127.0.0.1")); err != nil {
		t.Fatalf("permit: %v", err)
	}
	key := []byte("0123456789abcdef")
	gw.bind.SetChecks(&CheckConfig{Key: func(string) ([]byte, bool) { return key, true }})
	res, err := cl.bind.Check(ctx, relayed, "grt_1", key, nil)
	if err != nil {
		t.Fatalf("check through the relay: %v", err)
	}
	if res.Mapped != loopback(cl.port) {
		t.Errorf("mapped = %v, want %v", res.Mapped, loopback(cl.port))
	}

	// The client knows the gateway only by its relayed address; the
	// gateway learns the client's endpoint from the handshake.
	if err := cl.dev.IpcSet(fmt.Sprintf("public_key=%s\nendpoint=%s\nallowed_ip=192.0.2.1/32\n", hex.EncodeToString(gw.pub[:]), relayed)); err != nil {
		t.Fatal(err)
	}
	if err := gw.dev.IpcSet(fmt.Sprintf("public_key=%s\nallowed_ip=192.0.2.2/32\n", hex.EncodeToString(cl.pub[:]))); err != nil {
		t.Fatal(err)
	}
	ping(t, cl, gw, netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("192.0.2.1"))
	ping(t, gw, cl, netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"))
	uapi, err := gw.dev.IpcGet()
	if err != nil {
		t.Fatal(err)
	}
	want := "endpoint=relay/" + loopback(cl.port).String()
	if !strings.Contains(uapi, want) {
		t.Errorf("gateway UAPI has no %q:\n%s", want, uapi)
	}

	gw.bind.Release()
	if _, ok := gw.bind.Relayed(); ok {
		t.Error("Relayed() after Release")
	}
	if err := gw.bind.Send([][]byte{make([]byte, 32)}, newRelayEndpoint(loopback(cl.port))); !errors.Is(err, ErrNoRelay) {
		t.Errorf("send after release = %v, want ErrNoRelay", err)
	}
}

// TestAllocateRefused: bad credentials fail the allocation, with no hang.
func TestAllocateRefused(t *testing.T) {
	server := startTURN(t, 0)
	n := newNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := n.bind.Allocate(ctx, RelayConfig{Server: server, Username: "gw", Password: "wrong", Realm: "keyhole"}); err == nil {
		t.Fatal("allocation with a wrong password succeeded")
	}
	if _, ok := n.bind.Relayed(); ok {
		t.Fatal("Relayed() after a failed allocation")
	}
}

// startTURN runs a pion TURN server on loopback with user "gw"/"secret";
// readBuffer, if not zero, sizes its socket's receive buffer.
func startTURN(t *testing.T, readBuffer int) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	if readBuffer > 0 {
		if err := pc.SetReadBuffer(readBuffer); err != nil {
			t.Fatal(err)
		}
	}
	key := turn.GenerateAuthKey("gw", "keyhole", "secret")
	s, err := turn.NewServer(turn.ServerConfig{
		Realm: "keyhole",
		AuthHandler: func(u, _ string, _ net.Addr) ([]byte, bool) {
			return key, u == "gw"
		},
		PacketConnConfigs: []turn.PacketConnConfig{{
			PacketConn: pc,
			RelayAddressGenerator: &turn.RelayAddressGeneratorStatic{
				RelayAddress: net.IPv4(127, 0, 0, 1), Address: "127.0.0.1",
			},
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

func buildMessage(setters ...stun.Setter) (*stun.Message, error) {
	m, err := stun.Build(append([]stun.Setter{stun.TransactionID, stun.BindingRequest}, setters...)...)
	if err != nil {
		return nil, err
	}
	var d stun.Message
	return &d, stun.Decode(m.Raw, &d)
}

// rawAttr adds attrCandidates with arbitrary bytes.
type rawAttr []byte

func (r rawAttr) AddTo(m *stun.Message) error { m.Add(attrCandidates, r); return nil }
