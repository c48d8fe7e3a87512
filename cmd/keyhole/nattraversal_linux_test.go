package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pion/turn/v4"

	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/lab"
	"github.com/keyhole-net/keyhole/internal/relay"
)

// Issue 3 acceptance: the lab e2e tests. Each builds its own lab.

// TestLabDirect: with endpoint-independent NAT on both sides the client
// fetches the app over a direct path, and the relay carries no WireGuard
// data for it (acceptance 1). The site's firewall accepted no inbound new
// connection, the gateway listens on no TCP port, and a scan from the
// internet finds nothing open on the site router (acceptance 3).
func TestLabDirect(t *testing.T) {
	nl := newNATLab(t, natLabOpts{})
	nl.startGateway()
	dir := nl.loginClient()
	_, addr := nl.connect(dir, lab.AppName+":80", 18080)
	body, err := nl.fetch(addr)
	if err != nil || !strings.Contains(body, nl.marker) {
		t.Fatalf("fetch %s: %q, %v", lab.AppName, body, err)
	}
	if p := nl.path(dir); p != api.PathDirect {
		t.Errorf("path = %q, want direct; status %+v", p, nl.status(dir))
	}
	if st := nl.ctrl.Relay().Stats(); st.WireGuardData != 0 {
		t.Errorf("the relay carried %d bytes of WireGuard data on a direct path", st.WireGuardData)
	}
	waitFor(t, 10*time.Second, func() string {
		gs, err := nl.admin.Gateways(nl.ctx)
		if err != nil || len(gs) == 0 || len(gs[0].Peers) == 0 {
			return fmt.Sprintf("no peer report yet (%v)", err)
		}
		if p := gs[0].Peers[0]; p.Path != api.PathDirect || p.LastHandshake.IsZero() || p.RxBytes == 0 {
			return fmt.Sprintf("gateway reports %+v", p)
		}
		return ""
	})
	nl.checkNoInbound()
}

// checkNoInbound is acceptance 3.
func (nl *natLab) checkNoInbound() {
	t := nl.t
	t.Helper()
	ctx, cancel := context.WithTimeout(nl.ctx, 30*time.Second)
	defer cancel()
	c, err := nl.Counters(ctx, lab.Site)
	if err != nil {
		t.Fatal(err)
	}
	if c.AcceptedNew != 0 {
		t.Errorf("the site firewall accepted %d inbound new connections", c.AcceptedNew)
	}
	out, err := nl.Exec(ctx, lab.Gateway, "ss", "-Htln")
	if err != nil {
		t.Fatalf("ss: %v", err)
	}
	if s := strings.TrimSpace(string(out)); s != "" {
		t.Errorf("TCP listeners on the gateway host: %s", s)
	}
	// Scan the site router from the internet: TCP on well-known ports and
	// the WireGuard/STUN ports in use, and UDP probes on the same.
	gs, err := nl.admin.Gateways(nl.ctx)
	if err != nil || len(gs) == 0 {
		t.Fatalf("gateways: %v", err)
	}
	ports := []uint16{22, 80, 443, 3478, 8443, 51820}
	for _, cand := range gs[0].Candidates {
		if cand.Addr.Addr() == nl.Addr(lab.Site) {
			ports = append(ports, cand.Addr.Port())
		}
	}
	site := nl.Addr(lab.Site)
	var wg sync.WaitGroup
	for _, p := range ports {
		ap := netip.AddrPortFrom(site, p)
		wg.Add(1)
		go func() {
			defer wg.Done()
			dctx, cancel := context.WithTimeout(ctx, time.Second) // dropped SYNs get no answer
			defer cancel()
			if c, err := nsDial(nl.Lab, lab.Internet)(dctx, "tcp", ap.String()); err == nil {
				c.Close()
				t.Errorf("TCP %v is open from the internet", ap)
			}
		}()
	}
	wg.Wait()
	var pc *net.UDPConn
	if err := nl.Run(lab.Internet, func() error {
		var err error
		pc, err = net.ListenUDP("udp4", &net.UDPAddr{IP: nl.Addr(lab.Internet).AsSlice()})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	probe := make([]byte, 148) // the size of a WireGuard handshake initiation
	probe[0] = 1
	for _, p := range ports {
		_, _ = pc.WriteToUDPAddrPort(probe, netip.AddrPortFrom(site, p))
	}
	_ = pc.SetReadDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 1500)
	if n, from, err := pc.ReadFromUDPAddrPort(buf); err == nil {
		t.Errorf("UDP probe answered by %v (%d bytes)", from, n)
	}
	after, err := nl.Counters(ctx, lab.Site)
	if err != nil {
		t.Fatal(err)
	}
	if after.AcceptedNew != 0 || after.DroppedNew <= c.DroppedNew {
		t.Errorf("site firewall after the scan: %+v (before %+v): want probes dropped, none accepted", after, c)
	}
}

// TestLabRelayed: with symmetric NAT on both sides, and again with the
// client's UDP blocked except to the relay, the client reaches the app
// through the relay, which forwards WireGuard ciphertext only: the page
// never appears in what it forwards (acceptance 2).
func TestLabRelayed(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  lab.Config
		tun  bool // the gateway in its TUN mode
	}{
		{"symmetric NAT both sides", lab.Config{Home: lab.NAT{Mode: lab.Symmetric}, Site: lab.NAT{Mode: lab.Symmetric}}, false},
		{"client UDP only to the relay", lab.Config{Home: lab.NAT{Mode: lab.Symmetric, BlockUDPExceptTo: netip.MustParseAddr("203.0.113.10")}, Site: lab.NAT{Mode: lab.Symmetric}}, false},
		{"symmetric NAT both sides, TUN gateway", lab.Config{Home: lab.NAT{Mode: lab.Symmetric}, Site: lab.NAT{Mode: lab.Symmetric}}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nl := newNATLab(t, natLabOpts{lab: tc.cfg})
			if tc.tun {
				nl.startGateway("--tun", "--tun-name", gatewayTUNName(nl.Lab))
			} else {
				nl.startGateway()
			}
			dir := nl.loginClient()
			_, addr := nl.connect(dir, lab.AppName+":80", 18080)
			for range 3 {
				body, err := nl.fetch(addr)
				if err != nil || !strings.Contains(body, nl.marker) {
					t.Fatalf("fetch %s: %q, %v", lab.AppName, body, err)
				}
			}
			if p := nl.path(dir); p != api.PathRelayed {
				t.Errorf("path = %q, want relayed", p)
			}
			st := nl.ctrl.Relay().Stats()
			if st.WireGuardData == 0 {
				t.Errorf("relay stats %+v: no WireGuard data on a relayed path", st)
			}
			if n := nl.sawMarker.Load(); n != 0 {
				t.Errorf("the page body appeared in %d payloads the relay forwarded", n)
			}
			if tc.cfg.Home.BlockUDPExceptTo.IsValid() {
				c, err := nl.Counters(nl.ctx, lab.Home)
				if err != nil {
					t.Fatal(err)
				}
				if c.BlockedUDP == 0 {
					t.Error("the home firewall blocked no UDP: the direct path was never tried")
				}
			}
		})
	}
}

// TestLabUpgrade: a path that started relayed becomes direct once both
// NATs turn endpoint-independent, and a TCP stream open across the switch
// keeps working (acceptance 4).
func TestLabUpgrade(t *testing.T) {
	nl := newNATLab(t, natLabOpts{lab: lab.Config{Home: lab.NAT{Mode: lab.Symmetric}, Site: lab.NAT{Mode: lab.Symmetric}}})
	nl.startGateway()
	dir := nl.loginClient()
	_, addr := nl.connect(dir, lab.AppName+":7", 18007)
	s := nl.openStream(addr)
	nl.waitPath(dir, api.PathRelayed, 10*time.Second)
	for _, r := range []string{lab.Home, lab.Site} {
		if err := nl.SetNAT(nl.ctx, r, lab.NAT{Mode: lab.EndpointIndependent}); err != nil {
			t.Fatal(err)
		}
	}
	nl.waitPath(dir, api.PathDirect, 45*time.Second)
	for i := range 5 {
		if err := s.echo(fmt.Sprintf("after upgrade %d", i), 30*time.Second); err != nil {
			t.Fatalf("the stream opened before the upgrade: %v", err)
		}
	}
}

// TestLabRebind: the site NAT gives the gateway a new public port under an
// open stream; the gateway re-learns its reflexive address and the stream
// survives (acceptance 5).
func TestLabRebind(t *testing.T) {
	nl := newNATLab(t, natLabOpts{})
	gw := nl.startGateway()
	dir := nl.loginClient()
	_, addr := nl.connect(dir, lab.AppName+":7", 18007)
	s := nl.openStream(addr)
	nl.waitPath(dir, api.PathDirect, 10*time.Second)
	before := nl.srflx()
	// Symmetric mapping with the conntrack table flushed: every flow of
	// the gateway gets a new random public port.
	if err := nl.SetNAT(nl.ctx, lab.Site, lab.NAT{Mode: lab.Symmetric}); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if err := s.echo(fmt.Sprintf("after rebind %d", i), 45*time.Second); err != nil {
			t.Fatalf("stream after the rebind: %v", err)
		}
	}
	waitFor(t, 30*time.Second, func() string {
		if now := nl.srflx(); now == before || !now.IsValid() {
			return fmt.Sprintf("gateway's reflexive address still %v", now)
		}
		return ""
	})
	if !strings.Contains(gw.log.String(), "public address changed") {
		t.Error("the gateway did not log its rebinding")
	}
}

// srflx returns the gateway's advertised reflexive address.
func (nl *natLab) srflx() netip.AddrPort {
	gs, err := nl.admin.Gateways(nl.ctx)
	if err != nil || len(gs) == 0 {
		return netip.AddrPort{}
	}
	for _, c := range gs[0].Candidates {
		if c.Type == api.CandidateSrflx {
			return c.Addr
		}
	}
	return netip.AddrPort{}
}

// TestLabRelayRefuses: the relay allocates only with valid, unexpired
// credentials, and a client cannot use it to reach anything but a gateway
// that let it in (acceptance 6).
func TestLabRelayRefuses(t *testing.T) {
	nl := newNATLab(t, natLabOpts{})
	nl.startGateway()
	secret := nl.relaySecret()

	allocate := func(user, pass string) error {
		var pc net.PacketConn
		if err := nl.Run(lab.Client, func() error {
			var err error
			pc, err = net.ListenPacket("udp4", "0.0.0.0:0")
			return err
		}); err != nil {
			return err
		}
		defer pc.Close()
		c, err := turn.NewClient(&turn.ClientConfig{
			STUNServerAddr: nl.relayAddr.String(), TURNServerAddr: nl.relayAddr.String(),
			Username: user, Password: pass, Realm: "keyhole", Conn: pc,
		})
		if err != nil {
			return err
		}
		defer c.Close()
		if err := c.Listen(); err != nil {
			return err
		}
		a, err := c.Allocate()
		if err == nil {
			a.Close()
		}
		return err
	}
	good := relay.Claims{Expires: time.Now().Add(time.Hour), Role: relay.RoleGateway, Subject: "gw_test"}
	expired := good
	expired.Expires = time.Now().Add(-time.Minute)
	u, p := issue(t, secret, good)
	eu, ep := issue(t, secret, expired)
	for _, tc := range []struct {
		name, user, pass string
	}{
		{"no credentials", "", ""},
		{"wrong password", u, "not-the-password"},
		{"expired", eu, ep},
		{"forged role", strings.Replace(u, ":gw/", ":xx/", 1), p},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := nl.ctrl.Relay().Stats().Allocations
			if err := allocate(tc.user, tc.pass); err == nil {
				t.Fatal("allocation succeeded")
			}
			if after := nl.ctrl.Relay().Stats().Allocations; after != before {
				t.Fatalf("allocations %d → %d", before, after)
			}
		})
	}
	if err := allocate(u, p); err != nil {
		t.Fatalf("valid credentials refused: %v", err)
	}

	// The gateway let the client's public address in only for its own
	// allocation: an allocation that did not (another gateway's) never
	// sees the client's packets.
	var other net.PacketConn
	if err := nl.Run(lab.Internet, func() error {
		var err error
		other, err = net.ListenPacket("udp4", nl.Addr(lab.Internet2).String()+":0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	oc, err := turn.NewClient(&turn.ClientConfig{STUNServerAddr: nl.relayAddr.String(), TURNServerAddr: nl.relayAddr.String(),
		Username: u, Password: p, Realm: "keyhole", Conn: other})
	if err != nil {
		t.Fatal(err)
	}
	defer oc.Close()
	if err := oc.Listen(); err != nil {
		t.Fatal(err)
	}
	alloc, err := oc.Allocate()
	if err != nil {
		t.Fatal(err)
	}
	defer alloc.Close()
	var pc *net.UDPConn
	if err := nl.Run(lab.Client, func() error {
		var err error
		pc, err = net.ListenUDP("udp4", &net.UDPAddr{})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	to := alloc.LocalAddr().(*net.UDPAddr).AddrPort()
	for range 5 {
		_, _ = pc.WriteToUDPAddrPort([]byte("let me in"), to)
	}
	_ = alloc.SetReadDeadline(time.Now().Add(time.Second))
	if n, from, err := alloc.ReadFrom(make([]byte, 1500)); err == nil {
		t.Errorf("an allocation that never permitted the client got %d bytes from %v", n, from)
	}
}

func issue(t *testing.T, secret []byte, c relay.Claims) (string, string) {
	t.Helper()
	u, p, err := relay.Issue(secret, c)
	if err != nil {
		t.Fatal(err)
	}
	return u, p
}

// relaySecret reads the controller's relay secret from its data dir.
func (nl *natLab) relaySecret() []byte {
	nl.t.Helper()
	b, err := os.ReadFile(filepath.Join(nl.dataDir, "relay.secret"))
	if err != nil {
		nl.t.Fatal(err)
	}
	return []byte(strings.TrimSpace(string(b)))
}

// TestLabCoturn: coturn from Debian as the relay, with symmetric NATs so
// that the path must be relayed (acceptance 7).
func TestLabCoturn(t *testing.T) {
	nl := newNATLab(t, natLabOpts{coturn: true, lab: lab.Config{Home: lab.NAT{Mode: lab.Symmetric}, Site: lab.NAT{Mode: lab.Symmetric}}})
	nl.startGateway()
	dir := nl.loginClient()
	_, addr := nl.connect(dir, lab.AppName+":80", 18080)
	body, err := nl.fetch(addr)
	if err != nil || !strings.Contains(body, nl.marker) {
		t.Fatalf("fetch through coturn: %q, %v", body, err)
	}
	if p := nl.path(dir); p != api.PathRelayed {
		t.Errorf("path = %q, want relayed", p)
	}
	if nl.ctrl.Relay() != nil {
		t.Error("the embedded relay runs although coturn was configured")
	}
}

// TestLabRelayRestart: the controller and its embedded relay restart under
// a relayed stream (an upgrade, say). The relay has forgotten every
// allocation; the gateway notices with its self-check, allocates again and
// advertises the new relayed address, the client re-selects its path, and
// the stream carries on.
func TestLabRelayRestart(t *testing.T) {
	nl := newNATLab(t, natLabOpts{lab: lab.Config{Home: lab.NAT{Mode: lab.Symmetric}, Site: lab.NAT{Mode: lab.Symmetric}}})
	gw := nl.startGateway()
	dir := nl.loginClient()
	_, addr := nl.connect(dir, lab.AppName+":7", 18007)
	s := nl.openStream(addr)
	nl.waitPath(dir, api.PathRelayed, 10*time.Second)
	before := nl.relayCandidate()
	nl.stopController()
	nl.startController()
	for i := range 3 {
		if err := s.echo(fmt.Sprintf("after restart %d", i), 60*time.Second); err != nil {
			t.Fatalf("stream after the relay restarted: %v", err)
		}
	}
	if now := nl.relayCandidate(); now == before {
		t.Errorf("relay candidate still %v: the gateway did not allocate again", now)
	}
	if !strings.Contains(gw.log.String(), "relay allocation stopped answering") {
		t.Error("the gateway did not log the lost allocation")
	}
}

// relayCandidate returns the gateway's advertised relayed address.
func (nl *natLab) relayCandidate() netip.AddrPort {
	gs, err := nl.admin.Gateways(nl.ctx)
	if err != nil || len(gs) == 0 {
		return netip.AddrPort{}
	}
	for _, c := range gs[0].Candidates {
		if c.Type == api.CandidateRelay {
			return c.Addr
		}
	}
	return netip.AddrPort{}
}
