package client

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/key"
)

func testExport(t *testing.T) *WireGuardConfig {
	t.Helper()
	priv, err := key.ParseWGPrivate("YEocP0e0ch7RJ3lSn1GlnDmxIuAa6HGxSeaQ0z4nOXE=")
	if err != nil {
		t.Fatal(err)
	}
	gwKey, err := key.ParseWGPublic("WGY1dcJMKWmqNv0Zhm1Q8C5+C0wnz14OyORD9LC1diM=")
	if err != nil {
		t.Fatal(err)
	}
	return &WireGuardConfig{
		User:       "alice",
		PrivateKey: priv,
		Endpoint:   "203.0.113.7:51820",
		MTU:        1416,
		Export: api.ExportResponse{
			Grant: api.Grant{
				ID: "grt_x", App: "wiki", Export: true,
				NotAfter: time.Date(2026, 11, 23, 11, 0, 0, 0, time.UTC),
				Targets: []api.GrantTarget{
					{Prefix: netip.MustParsePrefix("100.96.0.5/32"), Host: "wiki.corp.internal"},
					{Prefix: netip.MustParsePrefix("198.51.100.0/24")},
				},
			},
			Peer: api.Peer{
				PublicKey:  gwKey,
				AllowedIPs: []netip.Prefix{netip.MustParsePrefix("100.96.0.5/32"), netip.MustParsePrefix("198.51.100.0/24")},
				Endpoints:  []netip.AddrPort{netip.MustParseAddrPort("203.0.113.7:51820"), netip.MustParseAddrPort("198.51.100.5:51820")},
				Candidates: []api.Candidate{
					{Type: api.CandidateSrflx, Addr: netip.MustParseAddrPort("203.0.113.7:51820")},
					{Type: api.CandidateHost, Addr: netip.MustParseAddrPort("198.51.100.5:51820")},
				},
			},
			Address: netip.MustParseAddr("100.64.0.9"),
		},
	}
}

func TestExportRender(t *testing.T) {
	c := testExport(t)
	const header = `# Keyhole export: app wiki for alice, grant grt_x, valid until 2026-11-23T11:00:00Z; revoke with: keyhole admin grant revoke grt_x
# This file holds a private key: whoever has it reaches wiki until then.
`
	const peer = `[Peer]
PublicKey = WGY1dcJMKWmqNv0Zhm1Q8C5+C0wnz14OyORD9LC1diM=
AllowedIPs = 100.96.0.5/32, 198.51.100.0/24
Endpoint = 203.0.113.7:51820
# Other gateway addresses, if this one is not reachable from the client: 198.51.100.5:51820 (host)
PersistentKeepalive = 25
`
	for _, tc := range []struct {
		name string
		got  string
		want string
	}{
		{"wg-quick", c.WGQuick(), header + `[Interface]
PrivateKey = YEocP0e0ch7RJ3lSn1GlnDmxIuAa6HGxSeaQ0z4nOXE=
Address = 100.64.0.9/32
MTU = 1416
# DNS: none; the app's names are not in public DNS. Add to the hosts file:
#   100.96.0.5 wiki.corp.internal

` + peer},
		{"wg", c.WG(), header + `# For wg setconf: set the interface address, MTU and routes yourself, e.g.
#   ip address add 100.64.0.9/32 dev wg0
#   ip link set wg0 mtu 1416 up
#   ip route add 100.96.0.5/32 dev wg0
#   ip route add 198.51.100.0/24 dev wg0
[Interface]
PrivateKey = YEocP0e0ch7RJ3lSn1GlnDmxIuAa6HGxSeaQ0z4nOXE=
# DNS: none; the app's names are not in public DNS. Add to the hosts file:
#   100.96.0.5 wiki.corp.internal

` + peer},
		{"qr payload", c.QRPayload(), `[Interface]
PrivateKey = YEocP0e0ch7RJ3lSn1GlnDmxIuAa6HGxSeaQ0z4nOXE=
Address = 100.64.0.9/32
MTU = 1416

[Peer]
PublicKey = WGY1dcJMKWmqNv0Zhm1Q8C5+C0wnz14OyORD9LC1diM=
AllowedIPs = 100.96.0.5/32, 198.51.100.0/24
Endpoint = 203.0.113.7:51820
PersistentKeepalive = 25
`},
	} {
		if tc.got != tc.want {
			t.Errorf("%s:\n%s\nwant:\n%s", tc.name, tc.got, tc.want)
		}
	}
	if strings.Contains(c.String(), c.PrivateKey.Base64Secret()) {
		t.Error("String reveals the private key")
	}
}

func TestCheckEndpoint(t *testing.T) {
	for _, tc := range []struct {
		ep string
		ok bool
	}{
		{"203.0.113.7:51820", true},
		{"[2001:db8::1]:51820", true},
		{"gw.example.net:51820", true},
		{"gw.example.net", false},
		{"2001:db8::1:51820", false},
		{":51820", false},
		{"gw:0", false},
		{"gw:65536", false},
		{"gw:http", false},
	} {
		if err := checkEndpoint(tc.ep); (err == nil) != tc.ok {
			t.Errorf("checkEndpoint(%q) = %v; want ok %v", tc.ep, err, tc.ok)
		}
	}
}
