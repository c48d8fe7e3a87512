package controller

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/keyhole-net/keyhole/internal/api"
)

func TestDirectCandidates(t *testing.T) {
	c := func(typ, ap string) api.Candidate {
		return api.Candidate{Type: typ, Addr: netip.MustParseAddrPort(ap)}
	}
	eps := func(aps ...string) []netip.AddrPort {
		var out []netip.AddrPort
		for _, ap := range aps {
			out = append(out, netip.MustParseAddrPort(ap))
		}
		return out
	}
	const host, srflx, relay = api.CandidateHost, api.CandidateSrflx, api.CandidateRelay
	for _, tc := range []struct {
		name      string
		cands     []api.Candidate
		endpoints []netip.AddrPort
		want      []api.Candidate
	}{
		{"nothing", nil, nil, nil},
		{"relay only: none a stock client can use",
			[]api.Candidate{c(relay, "198.51.100.1:3478")}, nil, nil},
		{"behind NAT: the public mapping first",
			[]api.Candidate{c(relay, "198.51.100.1:40000"), c(srflx, "203.0.113.7:51820"), c(host, "198.51.100.5:51820")},
			eps("198.51.100.5:51820"),
			[]api.Candidate{c(srflx, "203.0.113.7:51820"), c(host, "198.51.100.5:51820")}},
		{"public host address, same as the mapping: one candidate, srflx",
			[]api.Candidate{c(host, "203.0.113.7:51820"), c(srflx, "203.0.113.7:51820")}, nil,
			[]api.Candidate{c(srflx, "203.0.113.7:51820")}},
		{"public before carrier NAT (ranked with private) before loopback",
			nil, eps("127.0.0.1:51820", "100.70.0.1:51820", "100.64.0.5:51820", "[2001:db8::7]:51820", "203.0.113.9:51820"),
			[]api.Candidate{c(host, "203.0.113.9:51820"), c(host, "[2001:db8::7]:51820"), c(host, "100.70.0.1:51820"), c(host, "100.64.0.5:51820"), c(host, "127.0.0.1:51820")}},
		{"IPv4 before IPv6 of the same kind",
			[]api.Candidate{c(srflx, "[2001:db8::7]:51820"), c(srflx, "203.0.113.7:51820")}, nil,
			[]api.Candidate{c(srflx, "203.0.113.7:51820"), c(srflx, "[2001:db8::7]:51820")}},
		{"unusable addresses dropped",
			[]api.Candidate{c(host, "0.0.0.0:51820"), c(host, "169.254.1.1:51820"), c(host, "[fe80::1]:51820"), c(host, "224.0.0.1:51820"), c(host, "203.0.113.7:0"), c("bogus", "203.0.113.8:51820")},
			eps("[::ffff:203.0.113.9]:51820"),
			[]api.Candidate{c(host, "203.0.113.9:51820")}},
		{"loopback (a demo on one machine)",
			[]api.Candidate{c(relay, "127.0.0.1:3478"), c(srflx, "127.0.0.1:40000")}, eps("127.0.0.1:40000"),
			[]api.Candidate{c(srflx, "127.0.0.1:40000")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := directCandidates(tc.cands, tc.endpoints)
			if !slices.Equal(got, tc.want) {
				t.Errorf("got  %v\nwant %v", got, tc.want)
			}
		})
	}
}
