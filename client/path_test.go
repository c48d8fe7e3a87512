package client

import (
	"net/netip"
	"testing"

	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/nat"
)

func TestChooser(t *testing.T) {
	host := nat.Candidate{Kind: nat.Host, Addr: netip.MustParseAddrPort("198.51.100.10:51820")}
	srflx := nat.Candidate{Kind: nat.ServerReflexive, Addr: netip.MustParseAddrPort("203.0.113.3:51820")}
	relay := nat.Candidate{Kind: nat.Relayed, Addr: netip.MustParseAddrPort("203.0.113.10:50000")}
	relay2 := nat.Candidate{Kind: nat.Relayed, Addr: netip.MustParseAddrPort("203.0.113.11:50000")}
	none := nat.Candidate{}
	for _, tc := range []struct {
		name       string
		directOnly bool
		answers    []nat.Candidate // successful checks, in order
		decidedAt  int             // index of the answer that decides at once; -1: none does
		want       nat.Candidate   // the choice (at once, or after grace/timeout)
	}{
		{"direct first", false, []nat.Candidate{srflx}, 0, srflx},
		{"host first", false, []nat.Candidate{host, srflx}, 0, host},
		{"relay then direct within grace", false, []nat.Candidate{relay, srflx}, 1, srflx},
		{"relay only", false, []nat.Candidate{relay}, -1, relay},
		{"first relay kept", false, []nat.Candidate{relay, relay2}, -1, relay},
		{"nothing answers", false, nil, -1, none},
		{"upgrade ignores the relay", true, []nat.Candidate{relay}, -1, none},
		{"upgrade takes direct", true, []nat.Candidate{relay, srflx}, 1, srflx},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ch := chooser{directOnly: tc.directOnly}
			decided := -1
			var got nat.Candidate
			for i, a := range tc.answers {
				if c, done := ch.answered(a); done {
					decided, got = i, c
					break
				}
			}
			if decided != tc.decidedAt {
				t.Fatalf("decided at answer %d, want %d", decided, tc.decidedAt)
			}
			if decided < 0 {
				var ok bool
				got, ok = ch.best()
				if ok != (tc.want != none) {
					t.Fatalf("best() ok = %v", ok)
				}
				if ch.waiting() != (tc.want.Kind == nat.Relayed) {
					t.Fatalf("waiting() = %v", ch.waiting())
				}
			}
			if got != tc.want {
				t.Fatalf("chose %v, want %v", got, tc.want)
			}
		})
	}
}

func TestCandidateConversion(t *testing.T) {
	in := []api.Candidate{
		{Type: api.CandidateRelay, Addr: netip.MustParseAddrPort("203.0.113.10:50000")},
		{Type: api.CandidateSrflx, Addr: netip.MustParseAddrPort("203.0.113.3:4000")},
		{Type: api.CandidateHost, Addr: netip.MustParseAddrPort("198.51.100.10:4000")},
		{Type: "prflx", Addr: netip.MustParseAddrPort("203.0.113.9:1")},
	}
	got := natCandidates(in)
	if len(got) != 3 || got[0].Kind != nat.Relayed || got[1].Kind != nat.ServerReflexive || got[2].Kind != nat.Host {
		t.Fatalf("natCandidates = %v", got)
	}
	back := apiCandidates(got)
	for i := range back {
		if back[i] != in[i] {
			t.Fatalf("round trip %d: %v, want %v", i, back[i], in[i])
		}
	}
	if p := (path{cand: got[0]}); p.name() != api.PathRelayed {
		t.Errorf("relayed path named %q", p.name())
	}
	if p := (path{cand: got[1]}); p.name() != api.PathDirect {
		t.Errorf("direct path named %q", p.name())
	}
}
