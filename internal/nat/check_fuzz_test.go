package nat

import (
	"bytes"
	"fmt"
	"net/netip"
	"testing"

	"github.com/pion/stun/v3"
)

var (
	fuzzKey   = []byte("0123456789abcdef")
	fuzzUser  = "grt_fuzz"
	fuzzFrom  = netip.MustParseAddrPort("198.51.100.20:40000")
	fuzzLocal = []Candidate{
		{Kind: Host, Addr: netip.MustParseAddrPort("192.0.2.10:51820")},
		{Kind: ServerReflexive, Addr: netip.MustParseAddrPort("[2001:db8::7]:4000")},
		{Kind: Relayed, Addr: netip.MustParseAddrPort("203.0.113.10:50000")},
	}
)

// checkRequest builds a connectivity check as Bind.Check does.
func checkRequest(tb testing.TB, user string, key []byte, extra ...stun.Setter) []byte {
	tb.Helper()
	setters := []stun.Setter{stun.TransactionID, stun.BindingRequest, stun.NewUsername(user)}
	setters = append(setters, extra...)
	setters = append(setters, stun.NewShortTermIntegrity(string(key)), stun.Fingerprint)
	m, err := stun.Build(setters...)
	if err != nil {
		tb.Fatal(err)
	}
	return m.Raw
}

// FuzzAnswer feeds arbitrary datagrams to the connectivity-check answerer
// and to the candidates decoder. Neither may panic; the answerer must not
// touch the datagram (it is wireguard-go's buffer), must take exactly the
// Binding requests out of WireGuard's way, and may answer only a request
// authenticated with the user's key, with an answer that is itself
// authenticated and carries the requester's address.
func FuzzAnswer(f *testing.F) {
	valid := checkRequest(f, fuzzUser, fuzzKey, candidatesSetter(fuzzLocal))
	f.Add(valid)
	f.Add(checkRequest(f, fuzzUser, fuzzKey))
	f.Add(checkRequest(f, fuzzUser, fuzzKey, rawAttr{1, 4, 0, 1, 192, 0, 2, 1, 9, 16, 0, 1}))
	f.Add(checkRequest(f, fuzzUser, []byte("fedcba9876543210"), candidatesSetter(fuzzLocal)))
	f.Add(checkRequest(f, "grt_other", fuzzKey))
	f.Add(valid[:len(valid)-5])
	f.Add(valid[:stunHeaderSize])
	f.Add(stun.MustBuild(stun.TransactionID, stun.BindingRequest).Raw)
	f.Add(stun.MustBuild(stun.TransactionID, stun.BindingSuccess, stun.NewUsername(fuzzUser)).Raw)
	f.Add(wgPacket(4, 64, stunMagicCookie))
	f.Add([]byte("\x00\x01\x00\x04\x21\x12\xa4\x42junkjunkjunk\xff\xff\x00\x00"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, pkt []byte) {
		b := openTestBind()
		var replies [][]byte
		var checks []string
		b.SetChecks(&CheckConfig{
			Key: func(u string) ([]byte, bool) {
				if u == fuzzUser {
					return fuzzKey, true
				}
				return nil, false
			},
			Local: func() []Candidate { return fuzzLocal },
			OnCheck: func(u string, from netip.AddrPort, relayed bool, remote []Candidate) {
				checks = append(checks, u)
				if from != fuzzFrom || !relayed {
					t.Errorf("OnCheck from %v relayed %v", from, relayed)
				}
				validCandidates(t, remote)
			},
		})
		orig := bytes.Clone(pkt)
		took := b.answer(pkt, fuzzFrom, true, func(p []byte) { replies = append(replies, bytes.Clone(p)) })
		if !bytes.Equal(pkt, orig) {
			t.Fatal("answer modified the datagram")
		}
		if isRequest := isSTUN(pkt) && stunType(pkt) == stunBindingRequest; took != isRequest {
			t.Fatalf("answer took the datagram: %v; it is a Binding request: %v", took, isRequest)
		}
		switch len(replies) {
		case 0:
			if len(checks) != 0 {
				t.Fatal("OnCheck without an answer")
			}
		case 1:
			checkAnswered(t, pkt, replies[0])
			if len(checks) != 1 || checks[0] != fuzzUser {
				t.Fatalf("OnCheck calls %q", checks)
			}
		default:
			t.Fatalf("%d answers to one datagram", len(replies))
		}

		// The candidates decoder, on the datagram as a message and on
		// its bytes as the attribute's value.
		var m stun.Message
		if err := stun.Decode(bytes.Clone(pkt), &m); err == nil {
			validCandidates(t, candidatesOf(&m))
		}
		if len(pkt) <= 1024 {
			am, err := buildMessage(rawAttr(pkt))
			if err != nil {
				t.Fatal(err)
			}
			validCandidates(t, candidatesOf(am))
		}
	})
}

// checkAnswered verifies that req authenticates as fuzzUser and that
// answer is a proper answer to it.
func checkAnswered(t *testing.T, req, answer []byte) {
	t.Helper()
	integrity := stun.NewShortTermIntegrity(string(fuzzKey))
	var rm stun.Message
	if err := stun.Decode(bytes.Clone(req), &rm); err != nil {
		t.Fatalf("answered a request pion cannot decode: %v", err)
	}
	var user stun.Username
	if err := user.GetFrom(&rm); err != nil || user.String() != fuzzUser {
		t.Fatalf("answered a request for user %q (%v)", user, err)
	}
	if err := integrity.Check(&rm); err != nil {
		t.Fatalf("answered a request that fails integrity: %v", err)
	}
	var am stun.Message
	if err := stun.Decode(bytes.Clone(answer), &am); err != nil {
		t.Fatalf("answer does not decode: %v", err)
	}
	if am.Type != stun.BindingSuccess || am.TransactionID != rm.TransactionID {
		t.Fatalf("answer is %v for %x, want a success for %x", am.Type, am.TransactionID, rm.TransactionID)
	}
	if err := integrity.Check(&am); err != nil {
		t.Fatalf("answer fails integrity: %v", err)
	}
	if err := stun.Fingerprint.Check(&am); err != nil {
		t.Fatalf("answer fails fingerprint: %v", err)
	}
	var xa stun.XORMappedAddress
	if err := xa.GetFrom(&am); err != nil {
		t.Fatal(err)
	}
	if ip, _ := netip.AddrFromSlice(xa.IP); netip.AddrPortFrom(ip.Unmap(), uint16(xa.Port)) != fuzzFrom {
		t.Fatalf("answer maps to %v, want %v", xa, fuzzFrom)
	}
	if got := candidatesOf(&am); fmt.Sprint(got) != fmt.Sprint(fuzzLocal) {
		t.Fatalf("answer advertises %v, want %v", got, fuzzLocal)
	}
}

// validCandidates checks what candidatesOf promises: at most
// MaxCandidates, each of a known kind with a usable unicast address.
func validCandidates(t *testing.T, cs []Candidate) {
	t.Helper()
	if len(cs) > MaxCandidates {
		t.Fatalf("%d candidates, more than %d", len(cs), MaxCandidates)
	}
	for _, c := range cs {
		a := c.Addr.Addr()
		if c.Kind < Host || c.Kind > Relayed || c.Addr.Port() == 0 || !a.IsValid() || a.IsUnspecified() || a.IsMulticast() || a.Is4In6() {
			t.Fatalf("candidate %v %v", c.Kind, c.Addr)
		}
	}
}
