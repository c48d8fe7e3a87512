package gateway

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/internal/api"
)

// Relays see packets only from public addresses: host candidates (a LAN
// behind the client's NAT) and relayed ones are never permitted.
func TestPublicCandidates(t *testing.T) {
	in := []api.Candidate{
		{Type: api.CandidateHost, Addr: netip.MustParseAddrPort("192.0.2.10:4000")},
		{Type: api.CandidateSrflx, Addr: netip.MustParseAddrPort("203.0.113.2:4000")},
		{Type: api.CandidateRelay, Addr: netip.MustParseAddrPort("203.0.113.10:50000")},
		{Type: api.CandidateSrflx, Addr: netip.MustParseAddrPort("203.0.113.7:9")},
	}
	want := []netip.AddrPort{netip.MustParseAddrPort("203.0.113.2:4000"), netip.MustParseAddrPort("203.0.113.7:9")}
	if got := publicCandidates(in); !slices.Equal(got, want) {
		t.Fatalf("publicCandidates = %v, want %v", got, want)
	}
	if got := publicCandidates(nil); len(got) != 0 {
		t.Fatalf("publicCandidates(nil) = %v", got)
	}
}

// A renewal pushed without candidates keeps those the grant came with, and
// Lookup ignores expired grants (their check key must stop working).
func TestGrantTableKeepsCandidates(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	tbl := NewGrantTable(func() time.Time { return now })
	g := api.GatewayGrant{
		ID: "grt_1", ClientIP: netip.MustParseAddr("100.64.0.1"), ClientWGKey: mustKey(t), App: "wiki", NotAfter: now.Add(time.Minute),
		Targets: []api.GrantTarget{{Prefix: netip.MustParsePrefix("100.96.0.1/32")}},
		Ports:   []api.PortRange{{Proto: "tcp", First: 80, Last: 80}},
	}
	g.ClientCandidates = []api.Candidate{{Type: api.CandidateSrflx, Addr: netip.MustParseAddrPort("203.0.113.2:4000")}}
	g.CheckKey = []byte("0123456789abcdef")
	tbl.Upsert(g)
	renewed := g
	renewed.ClientCandidates = nil
	renewed.NotAfter = now.Add(2 * time.Minute)
	tbl.Upsert(renewed)
	got, ok := tbl.Lookup("grt_1")
	if !ok || len(got.ClientCandidates) != 1 || !got.NotAfter.Equal(renewed.NotAfter) {
		t.Fatalf("after renewal: %+v %v", got, ok)
	}
	now = now.Add(3 * time.Minute)
	if _, ok := tbl.Lookup("grt_1"); ok {
		t.Fatal("Lookup returned an expired grant")
	}
}
