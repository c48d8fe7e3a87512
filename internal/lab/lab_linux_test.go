package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// Bounds for the tests' waits. A negative answer ("nothing arrives") is a
// read that times out after quiet.
const (
	patience = 3 * time.Second
	quiet    = 400 * time.Millisecond
)

// newLab builds a lab for a parallel test.
func newLab(t *testing.T, cfg Config) *Lab {
	t.Helper()
	if ok, reason := Enabled(); !ok {
		t.Skip(reason)
	}
	t.Parallel()
	return New(t, cfg)
}

// testContext returns a context cancelled after patience*4 or at cleanup.
func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 4*patience)
	t.Cleanup(cancel)
	return ctx
}

// udpSocket opens a UDP socket in host's namespace on ip (any address if
// invalid) and a free port. It is closed at cleanup, before the lab goes.
func udpSocket(t *testing.T, l *Lab, host string, ip netip.Addr) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	err := l.Run(host, func() (err error) {
		c, err = net.ListenUDP("udp4", &net.UDPAddr{IP: ip.AsSlice()})
		return err
	})
	if err != nil {
		t.Fatalf("udp socket in %s: %v", host, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// udpEcho opens a UDP socket in host's namespace on ip that answers every
// datagram with its source address as seen there, and returns its address.
func udpEcho(t *testing.T, l *Lab, host string, ip netip.Addr) (*net.UDPConn, netip.AddrPort) {
	t.Helper()
	c := udpSocket(t, l, host, ip)
	go func() {
		buf := make([]byte, 1500)
		for {
			_, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			c.WriteToUDPAddrPort([]byte(from.String()), from)
		}
	}()
	return c, netip.AddrPortFrom(ip, uint16(c.LocalAddr().(*net.UDPAddr).Port))
}

// tcpEcho listens in host's namespace on ip and answers every connection
// with its source address as seen there, and returns its address.
func tcpEcho(t *testing.T, l *Lab, host string, ip netip.Addr) netip.AddrPort {
	t.Helper()
	var ln net.Listener
	err := l.Run(host, func() (err error) {
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(ip, 0).String())
		return err
	})
	if err != nil {
		t.Fatalf("listen in %s: %v", host, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte(c.RemoteAddr().String()))
			c.Close()
		}
	}()
	return netip.MustParseAddrPort(ln.Addr().String())
}

// tcpAsk connects from host to dst and returns the source address dst saw.
func tcpAsk(l *Lab, host string, dst netip.AddrPort, wait time.Duration) (netip.AddrPort, error) {
	var seen netip.AddrPort
	err := l.Run(host, func() error {
		c, err := net.DialTimeout("tcp4", dst.String(), wait)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(wait))
		b, err := io.ReadAll(c)
		if err != nil {
			return err
		}
		seen, err = netip.ParseAddrPort(string(b))
		return err
	})
	return seen, err
}

// udpAsk sends from c to an echo at dst, resending every 100ms, and returns
// the source address dst saw, or an error if no answer came within wait.
func udpAsk(c *net.UDPConn, dst netip.AddrPort, wait time.Duration) (netip.AddrPort, error) {
	deadline := time.Now().Add(wait)
	buf := make([]byte, 1500)
	for time.Now().Before(deadline) {
		if _, err := c.WriteToUDPAddrPort([]byte("ask"), dst); err != nil {
			return netip.AddrPort{}, err
		}
		next := time.Now().Add(100 * time.Millisecond)
		if next.After(deadline) {
			next = deadline
		}
		c.SetReadDeadline(next)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				break // resend
			}
			if from == dst {
				return netip.ParseAddrPort(string(buf[:n]))
			}
		}
	}
	return netip.AddrPort{}, fmt.Errorf("no answer from %s within %v", dst, wait)
}

// expectUDP waits up to wait for want from src on c, skipping anything else
// (late echoes), and reports whether it came.
func expectUDP(c *net.UDPConn, src netip.AddrPort, want string, wait time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 1500)
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			return false
		}
		if from == src && string(buf[:n]) == want {
			return true
		}
	}
}

// counters reads router's counters or fails t.
func counters(t *testing.T, ctx context.Context, l *Lab, router string) Counters {
	t.Helper()
	c, err := l.Counters(ctx, router)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestClientReachesInternetThroughHomeNAT proves the home NAT: TCP and UDP
// from the client reach the internet host, which sees the home router's WAN
// address.
func TestClientReachesInternetThroughHomeNAT(t *testing.T) {
	l := newLab(t, Config{})
	dst := tcpEcho(t, l, Internet, l.Addr(Internet))
	seen, err := tcpAsk(l, Client, dst, patience)
	if err != nil {
		t.Fatalf("tcp client → internet: %v", err)
	}
	if seen.Addr() != l.Addr(Home) {
		t.Errorf("tcp: internet saw %v, want the home WAN address %v", seen, l.Addr(Home))
	}

	_, udst := udpEcho(t, l, Internet, l.Addr(Internet))
	c := udpSocket(t, l, Client, netip.Addr{})
	seen, err = udpAsk(c, udst, patience)
	if err != nil {
		t.Fatalf("udp client → internet: %v", err)
	}
	if seen.Addr() != l.Addr(Home) {
		t.Errorf("udp: internet saw %v, want the home WAN address %v", seen, l.Addr(Home))
	}
}

// TestNoInboundConnections proves the site firewall: nothing from the
// internet reaches the gateway or the site router, even with a route to the
// site LAN, and the firewall counts the drops. A hole opened on purpose
// proves the accepted-new counter counts.
func TestNoInboundConnections(t *testing.T) {
	l := newLab(t, Config{})
	ctx := testContext(t)
	gwTCP := tcpEcho(t, l, Gateway, l.Addr(Gateway))
	_, gwUDP := udpEcho(t, l, Gateway, l.Addr(Gateway))
	siteTCP := tcpEcho(t, l, Site, l.Addr(Site))
	_, siteUDP := udpEcho(t, l, Site, l.Addr(Site))
	inet := udpSocket(t, l, Internet, l.Addr(Internet))

	if _, err := tcpAsk(l, Internet, gwTCP, quiet); err == nil {
		t.Errorf("internet reached the gateway's LAN address %v without a route", gwTCP)
	}
	before := counters(t, ctx, l, Site)
	// A neighbour on the WAN segment can route the site LAN to the router;
	// the firewall must still stop it.
	if _, err := l.Exec(ctx, Internet, "ip", "route", "add", "198.51.100.0/24", "via", l.Addr(Site).String()); err != nil {
		t.Fatal(err)
	}
	for _, dst := range []netip.AddrPort{gwTCP, siteTCP} {
		if seen, err := tcpAsk(l, Internet, dst, quiet); err == nil {
			t.Errorf("inbound TCP to %v was accepted (seen as %v)", dst, seen)
		}
	}
	for _, dst := range []netip.AddrPort{gwUDP, siteUDP} {
		if seen, err := udpAsk(inet, dst, quiet); err == nil {
			t.Errorf("inbound UDP to %v was answered (seen as %v)", dst, seen)
		}
	}
	after := counters(t, ctx, l, Site)
	if after.AcceptedNew != 0 {
		t.Errorf("site accepted %d new inbound connections, want 0", after.AcceptedNew)
	}
	if got := after.DroppedNew - before.DroppedNew; got < 4 {
		t.Errorf("site firewall dropped %d new inbound packets, want at least 4 (2 TCP, 2 UDP)", got)
	}

	// Control: open the router's TCP port; the counter must see it.
	if _, err := l.Exec(ctx, Site, "iptables", "-I", "KH-WAN-IN", "1", "-p", "tcp",
		"-d", siteTCP.Addr().String(), "--dport", fmt.Sprint(siteTCP.Port()), "-j", "ACCEPT"); err != nil {
		t.Fatal(err)
	}
	if _, err := tcpAsk(l, Internet, siteTCP, patience); err != nil {
		t.Fatalf("opened port %v: %v", siteTCP, err)
	}
	if c := counters(t, ctx, l, Site); c.AcceptedNew != 1 {
		t.Errorf("after one connection through an opened port, AcceptedNew = %d, want 1", c.AcceptedNew)
	}
}

// TestUDPMappings proves the NAT modes a hole-punching path depends on.
func TestUDPMappings(t *testing.T) {
	l := newLab(t, Config{})
	ctx := testContext(t)
	a, aAddr := udpEcho(t, l, Internet, l.Addr(Internet))
	_, bAddr := udpEcho(t, l, Internet, l.Addr(Internet2))
	c, cAddr := udpEcho(t, l, Internet, l.Addr(Internet))

	t.Run("EndpointIndependent", func(t *testing.T) {
		g := udpSocket(t, l, Gateway, netip.Addr{})
		seenA, err := udpAsk(g, aAddr, patience)
		if err != nil {
			t.Fatal(err)
		}
		seenB, err := udpAsk(g, bAddr, patience)
		if err != nil {
			t.Fatal(err)
		}
		if seenA != seenB || seenA.Addr() != l.Addr(Site) {
			t.Fatalf("mapping seen by %v is %v, by %v is %v; want one mapping on %v", aAddr, seenA, bAddr, seenB, l.Addr(Site))
		}
		// A peer the gateway sent to can send in: hole punching works.
		if _, err := a.WriteToUDPAddrPort([]byte("punch"), seenA); err != nil {
			t.Fatal(err)
		}
		if !expectUDP(g, aAddr, "punch", patience) {
			t.Errorf("%v → mapped %v did not reach the gateway", aAddr, seenA)
		}
		// One it did not send to cannot (address-and-port-dependent filter).
		before := counters(t, ctx, l, Site)
		if _, err := c.WriteToUDPAddrPort([]byte("stranger"), seenA); err != nil {
			t.Fatal(err)
		}
		if expectUDP(g, cAddr, "stranger", quiet) {
			t.Errorf("%v reached the gateway through %v without being sent to", cAddr, seenA)
		}
		if after := counters(t, ctx, l, Site); after.DroppedNew <= before.DroppedNew || after.AcceptedNew != 0 {
			t.Errorf("counters before %+v after %+v: want one more drop, nothing accepted", before, after)
		}
	})

	t.Run("Symmetric", func(t *testing.T) {
		if err := l.SetNAT(ctx, Site, NAT{Mode: Symmetric}); err != nil {
			t.Fatal(err)
		}
		g := udpSocket(t, l, Gateway, netip.Addr{})
		ports := map[uint16]bool{}
		var seenA netip.AddrPort
		// Three destinations: random ports collide for all three with
		// probability ~2^-32, for two with ~2^-16.
		for _, dst := range []netip.AddrPort{aAddr, bAddr, cAddr} {
			seen, err := udpAsk(g, dst, patience)
			if err != nil {
				t.Fatal(err)
			}
			if seen.Addr() != l.Addr(Site) {
				t.Errorf("%v saw %v, want the site WAN address", dst, seen)
			}
			if dst == aAddr {
				seenA = seen
			}
			ports[seen.Port()] = true
		}
		if len(ports) < 2 {
			t.Errorf("symmetric NAT gave every destination the same port %v", ports)
		}
		if _, err := a.WriteToUDPAddrPort([]byte("reply"), seenA); err != nil {
			t.Fatal(err)
		}
		if !expectUDP(g, aAddr, "reply", patience) {
			t.Errorf("reply from %v to its mapping %v did not reach the gateway", aAddr, seenA)
		}
	})

	t.Run("BlockUDPExceptTo", func(t *testing.T) {
		if err := l.SetNAT(ctx, Home, NAT{BlockUDPExceptTo: l.Addr(Internet)}); err != nil {
			t.Fatal(err)
		}
		cl := udpSocket(t, l, Client, netip.Addr{})
		if _, err := udpAsk(cl, aAddr, patience); err != nil {
			t.Errorf("UDP to the allowed %v: %v", aAddr, err)
		}
		if seen, err := udpAsk(cl, bAddr, quiet); err == nil {
			t.Errorf("UDP to %v got through (seen as %v)", bAddr, seen)
		}
		if got := counters(t, ctx, l, Home).BlockedUDP; got == 0 {
			t.Errorf("BlockedUDP = 0 after UDP to %v", bAddr)
		}
		tcp := tcpEcho(t, l, Internet, l.Addr(Internet2))
		if _, err := tcpAsk(l, Client, tcp, patience); err != nil {
			t.Errorf("TCP to %v must still work: %v", tcp, err)
		}
	})
}

// TestAppNameOnlyInSite proves the hosts files: AppName resolves in the
// site namespaces through "ip netns exec" and nowhere else. Only files are
// consulted, so no DNS query leaves for the host's resolver.
//
// In-process code in Run does not see these files (they are bind mounts of
// "ip netns exec"); components take names from their own config instead.
func TestAppNameOnlyInSite(t *testing.T) {
	l := newLab(t, Config{})
	ctx := testContext(t)
	for _, h := range namespaces {
		out, err := l.Exec(ctx, h, "getent", "-s", "files", "hosts", AppName)
		inSite := h == Gateway || h == App
		switch {
		case inSite && err != nil:
			t.Errorf("%s: %s does not resolve: %v", h, AppName, err)
		case inSite && !strings.Contains(string(out), l.Addr(App).String()):
			t.Errorf("%s: %s resolves to %q, want %v", h, AppName, out, l.Addr(App))
		case !inSite && err == nil:
			t.Errorf("%s: %s resolves to %q, want no answer", h, AppName, out)
		}
	}
}

// helperEnv selects TestHelperBrokenLab's failure mode.
const helperEnv = "KEYHOLE_LAB_HELPER"

// TestHelperBrokenLab is run by TestTeardownOnFailure in a child process; it
// builds a lab and then fails or panics.
func TestHelperBrokenLab(t *testing.T) {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		t.Skip("helper for TestTeardownOnFailure")
	}
	l := New(t, Config{})
	fmt.Printf("lab prefix: %s\n", l.Prefix())
	switch mode {
	case "fail":
		t.Run("fails", func(t *testing.T) { t.Fatal("simulated failure") })
	case "panic":
		l.Run(Client, func() error { panic("simulated panic") })
	}
}

// TestTeardownOnFailure proves that a lab whose test fails or panics midway
// leaves no namespace behind.
func TestTeardownOnFailure(t *testing.T) {
	if ok, reason := Enabled(); !ok {
		t.Skip(reason)
	}
	t.Parallel()
	prefixRE := regexp.MustCompile(`lab prefix: (kh[0-9a-f]+)`)
	for _, mode := range []string{"fail", "panic"} {
		t.Run(mode, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestHelperBrokenLab$", "-test.count=1", "-test.v")
			cmd.Env = append(os.Environ(), helperEnv+"="+mode)
			out, err := cmd.CombinedOutput()
			var exit *exec.ExitError
			if !errors.As(err, &exit) {
				t.Fatalf("child should fail with an exit status, got %v:\n%s", err, out)
			}
			m := prefixRE.FindSubmatch(out)
			if m == nil {
				t.Fatalf("child built no lab:\n%s", out)
			}
			if !strings.Contains(string(out), "simulated "+mode) {
				t.Errorf("child did not fail the simulated way:\n%s", out)
			}
			left, err := Leftovers(ctx, string(m[1]))
			if err != nil {
				t.Fatal(err)
			}
			if len(left) > 0 {
				t.Errorf("namespaces left by a %sed lab: %v\n%s", mode, left, out)
			}
		})
	}
}
