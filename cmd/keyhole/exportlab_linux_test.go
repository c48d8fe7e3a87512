package main

import (
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/lab"
)

// exportTTL is the exported config's lifetime in TestLabExport (the
// controller runs with the same grant lifetime, so the short TTL is allowed).
const exportTTL = 20 * time.Second

var exportAddrRE = regexp.MustCompile(`ip address add (\S+) dev`)

// TestLabExport: a machine without Keyhole — stock wireguard-go configured
// with wg setconf from `keyhole export --format wg` — behind the home NAT
// reaches exactly the exported app, nothing else even with its AllowedIPs
// widened, and nothing at all once the export's TTL has passed. A stock
// client cannot punch through NAT, so the site forwards the gateway's
// WireGuard port and the export names that forward (--endpoint).
func TestLabExport(t *testing.T) {
	nl := newNATLab(t, natLabOpts{grantLifetime: exportTTL})
	const gwPort = 51820
	if err := nl.ForwardUDP(nl.ctx, lab.Site, gwPort, netip.AddrPortFrom(nl.Addr(lab.Gateway), gwPort)); err != nil {
		t.Fatal(err)
	}
	if _, err := nl.admin.AddApp(nl.ctx, api.AppCreate{Name: "site-lan", Addresses: []netip.Prefix{netip.MustParsePrefix(siteLAN)}, GatewayGroup: "site",
		Ports: []api.PortRange{{Proto: "tcp", First: labAppPort, Last: labAppPort}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := nl.admin.AddPolicy(nl.ctx, api.PolicyRuleCreate{Action: api.Allow, Groups: []string{"eng"}, Apps: []string{"site-lan"}}); err != nil {
		t.Fatal(err)
	}
	nl.startGateway("--port", "51820")
	dir := nl.loginClient()

	conf := filepath.Join(t.TempDir(), "wiki.conf")
	endpoint := netip.AddrPortFrom(nl.Addr(lab.Site), gwPort).String()
	if out, err := nl.runCmd(lab.Client, "", "export", "wiki", "--format", "wg", "--ttl", exportTTL.String(),
		"--endpoint", endpoint, "--output", conf, "--data", dir); err != nil {
		t.Fatalf("keyhole export: %v\n%s", err, out)
	}
	text, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	m := exportAddrRE.FindStringSubmatch(string(text))
	if m == nil {
		t.Fatalf("no address hint in the exported config:\n%s", text)
	}
	addr := netip.MustParsePrefix(m[1])
	deadline := time.Now().Add(exportTTL)

	wg := startStockWG(t, nl.Lab, buildStockWG(t), lab.Client, nl.Prefix()+"x")
	wg.setConf(conf)
	wg.up(addr, 1416)
	routed := wg.routeAllowedIPs()
	if len(routed) != 1 || !routed[0].IsSingleIP() {
		t.Fatalf("exported AllowedIPs = %v, want the wiki's one virtual IP", routed)
	}
	vip := routed[0].Addr()
	curl := func(url string) (string, error) {
		return nl.clientCmd(8*time.Second, "curl", "-sS", "--max-time", "3", url)
	}
	var out string
	waitFor(t, 15*time.Second, func() string {
		out, err = curl("http://" + vip.String() + "/")
		if err != nil || !strings.Contains(out, nl.marker) {
			return "the wiki through stock WireGuard: " + out
		}
		return ""
	})

	// Widen the config: the gateway still serves only the exported app.
	wg.wg("set", "peer", peerKey(t, wg), "allowed-ips", routed[0].String()+","+siteLAN)
	wg.must("ip", "route", "replace", siteLAN, "dev", wg.name)
	if out, err := curl("http://" + nl.Addr(lab.App).String() + "/"); err == nil {
		t.Fatalf("a widened export reached the site LAN:\n%s", out)
	}
	if out, err := curl("http://" + vip.String() + ":7/"); err == nil {
		t.Fatalf("an export reached another port of the app:\n%s", out)
	}
	if out, err := curl("http://" + vip.String() + "/"); err != nil || !strings.Contains(out, nl.marker) {
		t.Fatalf("the wiki after widening: %v\n%s", err, out)
	}

	// Until the grant expires, and not after.
	time.Sleep(time.Until(deadline) + time.Second)
	if out, err := curl("http://" + vip.String() + "/"); err == nil {
		t.Fatalf("the export still works after its TTL:\n%s", out)
	}
}

// clientCmd runs a command in the client namespace.
func (nl *natLab) clientCmd(timeout time.Duration, args ...string) (string, error) {
	tl := &tunLab{natLab: nl}
	return tl.client(timeout, args...)
}

// peerKey returns the (only) peer's public key of a stock interface.
func peerKey(t *testing.T, s *stockWG) string {
	t.Helper()
	f := strings.Fields(s.wg("show", "peers"))
	if len(f) != 1 {
		t.Fatalf("peers of %s: %v", s.name, f)
	}
	return f[0]
}
