package splitdns

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

// FuzzHandle feeds raw packets to the query handler: whatever comes in,
// it must not panic or hang, and what it sends back must be a well-formed
// response to the sender's ID. Seeds are in testdata/fuzz/FuzzHandle and
// below.
func FuzzHandle(f *testing.F) {
	seed := func(name string, qtype uint16, edns bool) []byte {
		m := query(name, qtype)
		if edns {
			m.SetEdns0(1232, true)
		}
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	f.Add(seed("wiki.corp.internal", dns.TypeA, false), false)
	f.Add(seed("x.y.corp.internal", dns.TypeA, true), true)
	f.Add(seed("denied.corp.internal", dns.TypeA, true), false)
	f.Add(seed("notapp.corp.internal", dns.TypeA, false), false)
	f.Add(seed("fail.corp.internal", dns.TypeA, false), false)
	f.Add(seed("wiki.corp.internal", dns.TypeAAAA, false), false)
	f.Add(seed("wiki.corp.internal", dns.TypeHTTPS, true), false)
	f.Add(seed("example.com", dns.TypeA, false), false)
	f.Add(seed("corp.internal", dns.TypeSOA, false), true)
	f.Add(rawQuery(1, 0, 2, wireName("a", "b"), dns.TypeA), false)
	f.Add(rawQuery(1, 1<<15, 1, wireName("a", "b"), dns.TypeA), false)
	f.Add(rawQuery(1, 5<<11, 1, wireName("corp", "internal"), dns.TypeSOA), false)
	f.Add(rawQuery(1, 0, 1, []byte{0xc0, 12}, dns.TypeA), false)
	f.Add(rawQuery(1, 0, 1, wireName(strings.Repeat("a", 63), "corp", "internal"), dns.TypeA), false)
	f.Add([]byte{}, false)
	f.Add([]byte{0, 1, 0, 0}, true)

	s, err := New(Config{
		Listen: loopback,
		Resolve: func(_ context.Context, name string) (netip.Addr, error) {
			switch {
			case strings.HasPrefix(name, "denied."):
				return netip.Addr{}, ErrDenied
			case strings.HasPrefix(name, "notapp."):
				return netip.Addr{}, ErrNotApp
			case strings.HasPrefix(name, "fail."):
				return netip.Addr{}, fmt.Errorf("no grant")
			}
			return netip.MustParseAddr("100.80.0.1"), nil
		},
		// No upstreams: names that are not apps get REFUSED, and the
		// fuzzer sends nothing off the machine.
	})
	if err != nil {
		f.Fatal(err)
	}
	defer s.Close()
	s.SetDomains([]string{"*.corp.internal", "intranet", "git.example.com"})
	src := netip.MustParseAddr("127.0.0.1")

	f.Fuzz(func(t *testing.T, pkt []byte, tcp bool) {
		if len(pkt) > maxQueryBytes {
			return // the read loops drop these before handle
		}
		out := s.handle(context.Background(), pkt, src, tcp)
		if out == nil {
			return
		}
		var m dns.Msg
		if err := m.Unpack(out); err != nil {
			t.Fatalf("answer does not unpack: %v\nanswer %x", err, out)
		}
		if !m.Response {
			t.Fatalf("answer without QR: %v", &m)
		}
		if id := binary.BigEndian.Uint16(pkt); m.Id != id {
			t.Fatalf("answer ID %d, query ID %d", m.Id, id)
		}
		if !tcp && len(out) > dns.MinMsgSize && len(out) > udpSizeOf(pkt) {
			t.Fatalf("UDP answer of %d bytes, more than the client takes", len(out))
		}
	})
}

func udpSizeOf(pkt []byte) int {
	var m dns.Msg
	if m.Unpack(pkt) != nil {
		return dns.MinMsgSize
	}
	return udpSize(&m)
}
