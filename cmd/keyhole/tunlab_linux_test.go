package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/lab"
)

// The TUN lab tests (issue 4) run `keyhole up --tun` in the client
// namespace and reach the site with ordinary programs there: curl, dig,
// ping, kernel sockets. The client namespace's /etc/resolv.conf points at a
// public resolver in the internet namespace that knows one public name.

const (
	tunName       = "keyhole0"
	publicName    = "public.example.test"
	udpAppName    = "echo.corp.internal"
	udpAppPort    = 5300
	deniedAppName = "secret.corp.internal"
	siteLAN       = "198.51.100.0/24"
)

// tunLab is a NAT lab with the apps of issue 4: wiki (exact domain), corp
// (*.corp.internal), site-lan (a CIDR), echo (UDP) for alice, and secret,
// which policy denies her.
type tunLab struct {
	*natLab
	resolvConf string // the client namespace's resolv.conf before any agent ran
	dataDir    string // alice's client data directory
	gw         *proc  // the gateway
	gwData     string // the gateway's data directory
	gwArgs     []string
}

// tunLabOpts shape a TUN lab.
type tunLabOpts struct {
	// gatewayTUN runs the gateway in its TUN mode (keyhole gateway --tun)
	// on interface gatewayTUNName(lab).
	gatewayTUN bool
}

// gatewayTUNName is the TUN interface of a TUN-mode gateway in lab l:
// wireguard-go's UAPI socket is per host, not per namespace.
func gatewayTUNName(l *lab.Lab) string { return l.Prefix() + "-gw" }

func newTUNLab(t *testing.T) *tunLab {
	t.Helper()
	return newTUNLabWith(t, tunLabOpts{})
}

func newTUNLabWith(t *testing.T, o tunLabOpts) *tunLab {
	t.Helper()
	var hosts = map[string]netip.Addr{}
	nl := newNATLab(t, natLabOpts{lab: lab.Config{Hosts: hosts}})
	app := nl.Addr(lab.App)
	for _, n := range []string{lab.AppName, "a.corp.internal", "b.corp.internal", udpAppName, deniedAppName} {
		hosts[n] = app
	}
	// The names TestLabTUNFigures times its first lookups with: the site
	// knows them, as it would the real apps behind a wildcard.
	for i := range dnsGrantNames {
		hosts[fmt.Sprintf("n%d.corp.internal", i+1)] = app
	}
	// The hosts map is read when the lab is built, before we could know
	// the app's address; write it again now that we do.
	if err := nl.WriteEtc(lab.Gateway, "hosts", hostsFile(hosts)); err != nil {
		t.Fatal(err)
	}
	ctx, a := nl.ctx, nl.admin
	steps := []func() error{
		func() error {
			_, err := a.AddApp(ctx, api.AppCreate{Name: "corp", Domains: []string{"*.corp.internal"}, GatewayGroup: "site",
				Ports: []api.PortRange{{Proto: "tcp", First: labAppPort, Last: labAppPort}}})
			return err
		},
		func() error {
			_, err := a.AddApp(ctx, api.AppCreate{Name: "site-lan", Addresses: []netip.Prefix{netip.MustParsePrefix(siteLAN)}, GatewayGroup: "site",
				Ports: []api.PortRange{{Proto: "tcp", First: labAppPort, Last: labAppPort}}})
			return err
		},
		func() error {
			_, err := a.AddApp(ctx, api.AppCreate{Name: "echo", Domains: []string{udpAppName}, GatewayGroup: "site",
				Ports: []api.PortRange{{Proto: "udp", First: udpAppPort, Last: udpAppPort}}})
			return err
		},
		func() error {
			_, err := a.AddApp(ctx, api.AppCreate{Name: "secret", Domains: []string{deniedAppName}, GatewayGroup: "site",
				Ports: []api.PortRange{{Proto: "tcp", First: labAppPort, Last: labAppPort}}})
			return err
		},
		func() error {
			_, err := a.AddPolicy(ctx, api.PolicyRuleCreate{Action: api.Allow, Groups: []string{"eng"}, Apps: []string{"corp", "site-lan", "echo"}})
			return err
		},
	}
	for _, s := range steps {
		if err := s(); err != nil {
			t.Fatalf("tun lab apps: %v", err)
		}
	}
	nl.startUDPEcho()
	nl.startPublicDNS()
	tl := &tunLab{natLab: nl, resolvConf: fmt.Sprintf("nameserver %s\noptions timeout:2 attempts:1\n", nl.Addr(lab.Internet))}
	if err := nl.WriteEtc(lab.Client, "resolv.conf", []byte(tl.resolvConf)); err != nil {
		t.Fatal(err)
	}
	tl.gwData = t.TempDir()
	if o.gatewayTUN {
		tl.gwArgs = []string{"--tun", "--tun-name", gatewayTUNName(nl.Lab)}
	}
	tl.gw = nl.startGatewayData(tl.gwData, tl.gwArgs...)
	tl.dataDir = nl.loginClient()
	return tl
}

func hostsFile(hosts map[string]netip.Addr) []byte {
	var b strings.Builder
	b.WriteString("127.0.0.1\tlocalhost\n")
	names := make([]string, 0, len(hosts))
	for n := range hosts {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		fmt.Fprintf(&b, "%s\t%s\n", hosts[n], n)
	}
	return []byte(b.String())
}

// startUDPEcho serves UDP echo on the app host.
func (nl *natLab) startUDPEcho() {
	t := nl.t
	var pc net.PacketConn
	if err := nl.Run(lab.App, func() error {
		var err error
		pc, err = net.ListenPacket("udp", netip.AddrPortFrom(nl.Addr(lab.App), udpAppPort).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(buf[:n], from)
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })
}

// startPublicDNS serves publicName in the internet namespace: the resolver
// the client used before Keyhole.
func (nl *natLab) startPublicDNS() {
	t := nl.t
	var pc net.PacketConn
	if err := nl.Run(lab.Internet, func() error {
		var err error
		pc, err = net.ListenPacket("udp", netip.AddrPortFrom(nl.Addr(lab.Internet), 53).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	pub := nl.Addr(lab.Internet)
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		if len(q.Question) == 1 && strings.EqualFold(q.Question[0].Name, publicName+".") && q.Question[0].Qtype == dns.TypeA {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: pub.AsSlice()})
		} else if len(q.Question) == 1 && !strings.EqualFold(q.Question[0].Name, publicName+".") {
			m.Rcode = dns.RcodeNameError
		}
		_ = w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go func() { _ = srv.ActivateAndServe() }()
	<-started
	t.Cleanup(func() { _ = srv.Shutdown() })
}

// startAgent runs `keyhole up --tun` for alice and waits until it is up.
func (tl *tunLab) startAgent(extra ...string) *proc {
	t := tl.t
	t.Helper()
	args := append([]string{"up", "--tun", "--data", tl.dataDir, "--log-level", "debug"}, extra...)
	p := tl.spawn("agent", lab.Client, "", args...)
	waitFor(t, 20*time.Second, func() string {
		select {
		case <-p.done:
			t.Fatalf("agent exited: %s%s", p.out, p.log)
		default:
		}
		if !strings.Contains(p.out.String(), "Split DNS on") {
			return "agent not up yet"
		}
		return ""
	})
	return p
}

// client runs a command in the client namespace (with its resolv.conf).
func (tl *tunLab) client(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(tl.ctx, timeout)
	defer cancel()
	out, err := tl.Exec(ctx, lab.Client, args...)
	return string(out), err
}

// tunRoutes lists the routes into the TUN device (none if it is gone).
func (tl *tunLab) tunRoutes() []string {
	out, err := tl.client(5*time.Second, "ip", "-4", "route", "show", "dev", tunName)
	if err != nil {
		return nil
	}
	var rs []string
	for line := range strings.Lines(out) {
		if f := strings.Fields(line); len(f) > 0 {
			rs = append(rs, f[0])
		}
	}
	slices.Sort(rs)
	return rs
}

var (
	digStatus = regexp.MustCompile(`status: ([A-Z]+)`)
	digA      = regexp.MustCompile(`(?m)^\S+\s+\d+\s+IN\s+A\s+(\S+)$`)
)

// dig asks the client namespace's resolver for name's A record and returns
// the status, the addresses and how long it took.
func (tl *tunLab) dig(name string) (status string, addrs []netip.Addr, took time.Duration) {
	t := tl.t
	t.Helper()
	start := time.Now()
	out, err := tl.client(10*time.Second, "dig", "+time=5", "+tries=1", "A", name)
	took = time.Since(start)
	if err != nil {
		t.Fatalf("dig %s: %v\n%s", name, err, out)
	}
	m := digStatus.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("dig %s: no status in\n%s", name, out)
	}
	for _, a := range digA.FindAllStringSubmatch(out, -1) {
		addrs = append(addrs, netip.MustParseAddr(a[1]))
	}
	return m[1], addrs, took
}

func (tl *tunLab) vip(name string) netip.Addr {
	t := tl.t
	t.Helper()
	st, addrs, _ := tl.dig(name)
	if st != "NOERROR" || len(addrs) != 1 || !netip.MustParsePrefix("100.64.0.0/10").Contains(addrs[0]) {
		t.Fatalf("%s: status %s, addresses %v; want one overlay virtual IP", name, st, addrs)
	}
	return addrs[0]
}

func (tl *tunLab) curl(url string) (string, error) {
	return tl.client(20*time.Second, "curl", "-sS", "--max-time", "10", url)
}

func TestLabTUN(t *testing.T) {
	tl := newTUNLab(t)
	agent := tl.startAgent()

	var wikiVIP netip.Addr
	t.Run("AppByName", func(t *testing.T) {
		if rs := tl.tunRoutes(); len(rs) != 0 {
			t.Fatalf("routes before any grant: %v", rs)
		}
		out, err := tl.curl("http://" + lab.AppName + "/")
		if err != nil || !strings.Contains(out, tl.marker) {
			t.Fatalf("curl http://%s/: %v\n%s", lab.AppName, err, out)
		}
		wikiVIP = tl.vip(lab.AppName)
		if rs := tl.tunRoutes(); !slices.Equal(rs, []string{wikiVIP.String()}) {
			t.Fatalf("routes = %v, want only the wiki's virtual IP %s", rs, wikiVIP)
		}
		if out, err := tl.client(5*time.Second, "wg", "show", tunName); err != nil || !strings.Contains(out, "latest handshake") {
			t.Fatalf("wg show %s: %v\n%s", tunName, err, out)
		}
		out, err = tl.runCmd(lab.Client, "", "status", "--data", tl.dataDir)
		if err != nil || !strings.Contains(out, "TUN "+tunName) || !strings.Contains(out, wikiVIP.String()) {
			t.Fatalf("keyhole status: %v\n%s", err, out)
		}
	})

	t.Run("EverythingElseAsBefore", func(t *testing.T) {
		st, addrs, _ := tl.dig(publicName)
		if st != "NOERROR" || len(addrs) != 1 || addrs[0] != tl.Addr(lab.Internet) {
			t.Fatalf("public name: %s %v; want the public resolver's answer", st, addrs)
		}
		out, err := tl.client(5*time.Second, "ip", "route", "get", tl.Addr(lab.Internet).String())
		if err != nil || strings.Contains(out, tunName) {
			t.Fatalf("route to a public address goes through the tunnel: %v\n%s", err, out)
		}
		out, err = tl.client(20*time.Second, "curl", "-sS", "-k", "--max-time", "10", "https://"+tl.Addr(lab.Internet).String()+":8443/v1/health")
		if err != nil {
			t.Fatalf("non-app address: %v\n%s", err, out)
		}
		st, addrs, took := tl.dig(deniedAppName)
		if st != "REFUSED" || len(addrs) != 0 {
			t.Fatalf("denied app name: %s %v; want REFUSED", st, addrs)
		}
		if took > 2*time.Second {
			t.Fatalf("refusal took %v; want an answer well before a resolver timeout", took)
		}
		t.Logf("refusal for %s in %v", deniedAppName, took.Round(time.Millisecond))
	})

	t.Run("WildcardCIDRUDPPing", func(t *testing.T) {
		va, vb := tl.vip("a.corp.internal"), tl.vip("b.corp.internal")
		if va == vb {
			t.Fatalf("a and b share virtual IP %s", va)
		}
		for _, n := range []string{"a.corp.internal", "b.corp.internal"} {
			if out, err := tl.curl("http://" + n + "/"); err != nil || !strings.Contains(out, tl.marker) {
				t.Fatalf("curl %s: %v\n%s", n, err, out)
			}
		}
		// CIDR app: no name to look up, so keyhole connect routes it.
		if _, err := tl.client(3*time.Second, "curl", "-sS", "--max-time", "2", "http://198.51.100.20/"); err == nil {
			t.Fatal("site LAN reachable before its grant")
		}
		out, err := tl.runCmd(lab.Client, "", "connect", "site-lan", "--data", tl.dataDir)
		if err != nil || !strings.Contains(out, "routed") {
			t.Fatalf("keyhole connect site-lan: %v\n%s", err, out)
		}
		if out, err := tl.curl("http://198.51.100.20/"); err != nil || !strings.Contains(out, tl.marker) {
			t.Fatalf("curl through the CIDR app: %v\n%s", err, out)
		}
		// UDP app.
		ev := tl.vip(udpAppName)
		tl.udpEcho(t, ev)
		// ICMP echo to a granted address is answered by the gateway.
		if out, err := tl.client(10*time.Second, "ping", "-c", "1", "-W", "3", wikiVIP.String()); err != nil {
			t.Fatalf("ping %s: %v\n%s", wikiVIP, err, out)
		}
		want := []string{siteLAN, va.String(), vb.String(), ev.String(), wikiVIP.String()}
		slices.Sort(want)
		if rs := tl.tunRoutes(); !slices.Equal(rs, want) {
			t.Fatalf("routes = %v, want exactly the granted %v", rs, want)
		}
	})

	t.Run("BadInput", func(t *testing.T) {
		before := tl.grantCount(t)
		resolver := netip.AddrPortFrom(tl.overlayIP(t), 53).String()
		c, err := nsDial(tl.Lab, lab.Client)(tl.ctx, "udp", resolver)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		junk := make([]byte, 512)
		for i := range 300 { // malformed packets of every length
			_, _ = rand.Read(junk)
			_, _ = c.Write(junk[:i%len(junk)])
		}
		long := strings.Repeat("a", 63) + "." + strings.Repeat("b", 63) + "." + strings.Repeat("c", 63) + "." + strings.Repeat("d", 50) + ".corp.internal"
		_, _ = c.Write(rawQuery(long)) // over 253 characters
		for i := range 2000 {          // a flood of app lookups
			var r [4]byte
			_, _ = rand.Read(r[:])
			_, _ = c.Write(dnsQuery(fmt.Sprintf("flood-%d-%s.corp.internal", i, hex.EncodeToString(r[:]))))
		}
		time.Sleep(2 * time.Second)
		after := tl.grantCount(t)
		if after-before > 100 {
			t.Fatalf("a lookup flood made %d grants; the resolver must rate-limit", after-before)
		}
		t.Logf("2000 flooded lookups made %d grants", after-before)
		// Still answering, and still right.
		if got := tl.vip(lab.AppName); got != wikiVIP {
			t.Fatalf("after bad input the wiki resolves to %s, want %s", got, wikiVIP)
		}
	})

	t.Run("Roaming", func(t *testing.T) {
		// The laptop moves: a new address behind the home NAT, so a new
		// NAT mapping the gateway's NAT has never let in.
		steps := [][]string{
			{"ip", "addr", "flush", "dev", "eth0"},
			{"ip", "addr", "add", "192.0.2.77/24", "dev", "eth0"},
			{"ip", "route", "add", "default", "via", "192.0.2.1"},
		}
		start := time.Now()
		for _, s := range steps {
			if out, err := tl.client(5*time.Second, s...); err != nil {
				t.Fatalf("%v: %v\n%s", s, err, out)
			}
		}
		var last string
		waitFor(t, 60*time.Second, func() string {
			out, err := tl.client(5*time.Second, "curl", "-sS", "--max-time", "2", "http://"+lab.AppName+"/")
			if err != nil || !strings.Contains(out, tl.marker) {
				last = fmt.Sprint(err, out)
				return "wiki not reachable after the move: " + last
			}
			return ""
		})
		t.Logf("roaming: the wiki answered again %v after the client's address changed", time.Since(start).Round(time.Millisecond))
	})

	t.Run("Revocation", func(t *testing.T) {
		conn := tl.openEcho(t, netip.AddrPortFrom(wikiVIP, labEchoPort))
		defer conn.Close()
		start, killed, err := tl.revokeAndWait(t, "wiki", conn)
		var gone time.Duration
		waitFor(t, 3*time.Second, func() string {
			if slices.Contains(tl.tunRoutes(), wikiVIP.String()) {
				return "wiki route still there"
			}
			gone = time.Since(start)
			return ""
		})
		t.Logf("revocation: connection ended after %v (%v), route gone after %v", killed.Round(time.Millisecond), err, gone.Round(time.Millisecond))
		if killed > time.Second || gone > time.Second+200*time.Millisecond {
			t.Fatalf("revocation took %v (connection) and %v (route); want within 1 s", killed, gone)
		}
	})

	t.Run("DownAndCrash", func(t *testing.T) {
		if out, err := tl.runCmd(lab.Client, "", "down", "--data", tl.dataDir); err != nil {
			t.Fatalf("keyhole down: %v\n%s", err, out)
		}
		<-agent.done
		tl.checkClean(t)

		// SIGKILL leaves the DNS setting behind (the device and its routes
		// die with the process); the next start repairs it.
		p := tl.startAgent()
		if got := tl.vip(lab.AppName); got != wikiVIP {
			t.Fatalf("after restart the wiki resolves to %s, want %s (stable)", got, wikiVIP)
		}
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.done
		waitFor(t, 5*time.Second, func() string {
			if _, err := tl.client(5*time.Second, "ip", "link", "show", tunName); err == nil {
				return "TUN device still there after SIGKILL"
			}
			return ""
		})
		p = tl.startAgent()
		if out, err := tl.runCmd(lab.Client, "", "down", "--data", tl.dataDir); err != nil {
			t.Fatalf("keyhole down: %v\n%s", err, out)
		}
		<-p.done
		tl.checkClean(t)
	})

	t.Run("IdleRelease", func(t *testing.T) {
		p := tl.startAgent("--idle-release", "2s")
		if out, err := tl.curl("http://" + lab.AppName + "/"); err != nil || !strings.Contains(out, tl.marker) {
			t.Fatalf("curl: %v\n%s", err, out)
		}
		if len(tl.tunRoutes()) != 1 {
			t.Fatalf("routes after the lookup: %v", tl.tunRoutes())
		}
		id := tl.liveGrant(t, "wiki")
		// Keepalives do not count as use: the grant goes back, and its
		// route with it.
		waitFor(t, 20*time.Second, func() string {
			if rs := tl.tunRoutes(); len(rs) != 0 {
				return fmt.Sprintf("routes still %v", rs)
			}
			if tl.liveGrant(t, "wiki") == id {
				return fmt.Sprintf("grant %s still live at the controller", id)
			}
			return ""
		})
		// And the next lookup asks again.
		if out, err := tl.curl("http://" + lab.AppName + "/"); err != nil || !strings.Contains(out, tl.marker) {
			t.Fatalf("curl after the idle release: %v\n%s", err, out)
		}
		if out, err := tl.runCmd(lab.Client, "", "down", "--data", tl.dataDir); err != nil {
			t.Fatalf("keyhole down: %v\n%s", err, out)
		}
		<-p.done
		tl.checkClean(t)
	})
}

// checkClean fails unless the client namespace is as before any agent: no
// TUN device, no route of ours, the original resolv.conf.
func (tl *tunLab) checkClean(t *testing.T) {
	t.Helper()
	if out, err := tl.client(5*time.Second, "ip", "link", "show", tunName); err == nil {
		t.Fatalf("TUN device left behind:\n%s", out)
	}
	if out, _ := tl.client(5*time.Second, "ip", "-4", "route", "show", "proto", "107"); strings.TrimSpace(out) != "" {
		t.Fatalf("routes left behind:\n%s", out)
	}
	b, err := tl.ReadEtc(lab.Client, "resolv.conf")
	if err != nil || string(b) != tl.resolvConf {
		t.Fatalf("resolv.conf not restored (%v):\n%s", err, b)
	}
}

// liveGrant returns the ID of a live grant of app ("" if none).
func (tl *tunLab) liveGrant(t *testing.T, app string) api.GrantID {
	t.Helper()
	gs, err := tl.admin.Grants(tl.ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range gs {
		if g.App == app {
			return g.ID
		}
	}
	return ""
}

func (tl *tunLab) grantCount(t *testing.T) int {
	t.Helper()
	gs, err := tl.admin.Grants(tl.ctx)
	if err != nil {
		t.Fatal(err)
	}
	return len(gs)
}

func (tl *tunLab) overlayIP(t *testing.T) netip.Addr {
	t.Helper()
	ds, err := tl.admin.Devices(tl.ctx)
	if err != nil || len(ds) == 0 {
		t.Fatalf("devices: %v %v", ds, err)
	}
	return ds[0].OverlayIP
}

// dnsQuery packs an A query for name.
func dnsQuery(name string) []byte {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	b, _ := m.Pack()
	return b
}

// rawQuery packs an A query for name by hand, so that names the dns
// package would refuse to pack (too long) still go out.
func rawQuery(name string) []byte {
	b := []byte{0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0}
	for _, l := range strings.Split(name, ".") {
		b = append(b, byte(len(l)))
		b = append(b, l...)
	}
	return append(b, 0, 0, 1, 0, 1)
}

// udpEcho sends datagrams from the client namespace to the lab's UDP app
// at its virtual address vip until one comes back (at most 10 tries: the
// first may race the handshake), and fails t if none does.
func (tl *tunLab) udpEcho(t *testing.T, vip netip.Addr) {
	t.Helper()
	c, err := nsDial(tl.Lab, lab.Client)(tl.ctx, "udp", netip.AddrPortFrom(vip, udpAppPort).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got := make([]byte, 64)
	for range 10 {
		if _, err := c.Write([]byte("ping-udp")); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		if n, err := c.Read(got); err == nil && string(got[:n]) == "ping-udp" {
			return
		}
	}
	t.Fatalf("no UDP echo from the UDP app at %s", vip)
}

// openEcho connects from the client namespace to the lab's echo service
// at addr and checks one round trip; the caller closes the connection.
func (tl *tunLab) openEcho(t *testing.T, addr netip.AddrPort) net.Conn {
	t.Helper()
	conn, err := nsDial(tl.Lab, lab.Client)(tl.ctx, "tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2)
	_, err = conn.Write([]byte("hi"))
	if err == nil {
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = io.ReadFull(conn, buf)
		_ = conn.SetReadDeadline(time.Time{})
	}
	if err != nil {
		conn.Close()
		t.Fatalf("echo through %s: %v", addr, err)
	}
	return conn
}

// revokeAndWait revokes app's live grant and waits (up to 3 s) for conn,
// open under it, to stop carrying data: it returns when the revocation
// started, how long conn took to end, and the error conn ended with.
func (tl *tunLab) revokeAndWait(t *testing.T, app string, conn net.Conn) (start time.Time, killed time.Duration, err error) {
	t.Helper()
	id := tl.liveGrant(t, app)
	if id == "" {
		t.Fatalf("no live %s grant to revoke", app)
	}
	start = time.Now()
	if err := tl.admin.RevokeGrant(tl.ctx, id); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	_, err = conn.Read(make([]byte, 2))
	killed = time.Since(start)
	if err == nil {
		t.Fatal("connection still carries data after revocation")
	}
	return start, killed, err
}
