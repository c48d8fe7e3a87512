package main

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/internal/lab"
)

// The gateway's TUN mode (keyhole gateway --tun) in the NAT lab, with the
// client in its TUN mode too: the kernel forwards what the gateway's
// packet filter lets through.

// gwExec runs a command in the gateway namespace.
func (tl *tunLab) gwExec(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(tl.ctx, 10*time.Second)
	defer cancel()
	out, err := tl.Exec(ctx, lab.Gateway, args...)
	return string(out), err
}

// gwMust is gwExec that fails the test on error.
func (tl *tunLab) gwMust(t *testing.T, args ...string) string {
	t.Helper()
	out, err := tl.gwExec(args...)
	if err != nil {
		t.Fatalf("gateway namespace: %s: %v", strings.Join(args, " "), err)
	}
	return out
}

// gwTables lists the nftables tables of ours in the gateway namespace.
func (tl *tunLab) gwTables(t *testing.T) []string {
	t.Helper()
	var ours []string
	for line := range strings.Lines(tl.gwMust(t, "nft", "list", "tables")) {
		if strings.Contains(line, "keyhole_gw_") {
			ours = append(ours, strings.TrimSpace(line))
		}
	}
	return ours
}

// checkGatewayClean fails unless the gateway namespace holds no TUN
// device, route or nftables table of a TUN-mode gateway.
func (tl *tunLab) checkGatewayClean(t *testing.T) {
	t.Helper()
	dev := gatewayTUNName(tl.Lab)
	if out, err := tl.gwExec("ip", "link", "show", dev); err == nil {
		t.Fatalf("gateway TUN device left behind:\n%s", out)
	}
	if out := tl.gwMust(t, "ip", "-4", "route", "show", "proto", "107"); strings.TrimSpace(out) != "" {
		t.Fatalf("gateway routes left behind:\n%s", out)
	}
	if ts := tl.gwTables(t); len(ts) != 0 {
		t.Fatalf("nftables tables left behind: %v", ts)
	}
}

// gwFlows counts the conntrack entries in the gateway namespace from
// client to dst.
func (tl *tunLab) gwFlows(t *testing.T, client netip.Addr, dst netip.AddrPort) int {
	t.Helper()
	out, err := tl.gwExec("conntrack", "-L", "-p", "tcp", "-s", client.String(), "-d", dst.Addr().String(), "--dport", fmt.Sprint(dst.Port()))
	if err != nil {
		t.Fatalf("conntrack: %v", err)
	}
	n := 0
	for line := range strings.Lines(out) {
		if strings.HasPrefix(line, "tcp ") {
			n++
		}
	}
	return n
}

// restartGateway starts the lab's gateway again from its data directory
// (no token: it is enrolled) and waits until its control stream is up.
func (tl *tunLab) restartGateway() {
	t := tl.t
	t.Helper()
	args := append([]string{"gateway", "--controller", tl.url, "--data", tl.gwData, "--log-level", "debug"}, tl.gwArgs...)
	p := tl.spawn("gateway", lab.Gateway, "", args...)
	waitFor(t, 20*time.Second, func() string {
		select {
		case <-p.done:
			t.Fatalf("gateway exited: %s", p.log)
		default:
		}
		if !strings.Contains(p.out.String(), "Gateway ") {
			return "gateway not up yet"
		}
		gs, err := tl.admin.Gateways(tl.ctx)
		if err != nil || len(gs) == 0 || !gs[0].Connected {
			return fmt.Sprintf("gateway not connected (%v)", err)
		}
		return ""
	})
	tl.gw = p
}

func TestLabTUNGateway(t *testing.T) {
	tl := newTUNLabWith(t, tunLabOpts{gatewayTUN: true})
	dev := gatewayTUNName(tl.Lab)
	agent := tl.startAgent()
	wikiURL := "http://" + lab.AppName + "/"

	var wikiVIP netip.Addr
	t.Run("KernelForwards", func(t *testing.T) {
		if out := tl.gwMust(t, "ip", "-4", "route", "show", "dev", dev); !strings.Contains(out, "100.64.0.0/10") {
			t.Fatalf("client overlay not routed into %s:\n%s", dev, out)
		}
		if ts := tl.gwTables(t); len(ts) != 1 {
			t.Fatalf("nftables tables of ours: %v, want one", ts)
		}
		if out := tl.gwMust(t, "sysctl", "-n", "net.ipv4.ip_forward"); strings.TrimSpace(out) != "1" {
			t.Fatalf("ip_forward = %q", out)
		}
		out, err := tl.curl(wikiURL)
		if err != nil || !strings.Contains(out, tl.marker) {
			t.Fatalf("curl %s: %v\n%s", wikiURL, err, out)
		}
		wikiVIP = tl.vip(lab.AppName)
		m := tl.gwMust(t, "nft", "list", "map", "ip", "keyhole_gw_"+strings.ReplaceAll(dev, "-", "_"), "app_addrs")
		if want := wikiVIP.String() + " : " + tl.Addr(lab.App).String(); !strings.Contains(m, want) {
			t.Fatalf("DNAT map lacks %q:\n%s", want, m)
		}
		if out := tl.gwMust(t, "wg", "show", dev); !strings.Contains(out, "latest handshake") {
			t.Fatalf("wg show %s:\n%s", dev, out)
		}
	})

	t.Run("UDPAndPing", func(t *testing.T) {
		tl.udpEcho(t, tl.vip(udpAppName))
		if out, err := tl.client(10*time.Second, "ping", "-c", "1", "-W", "3", wikiVIP.String()); err != nil {
			t.Fatalf("ping %s: %v\n%s", wikiVIP, err, out)
		}
		// A CIDR app: forwarded with its real address, no DNAT.
		out, err := tl.runCmd(lab.Client, "", "connect", "site-lan", "--data", tl.dataDir)
		if err != nil || !strings.Contains(out, "routed") {
			t.Fatalf("keyhole connect site-lan: %v\n%s", err, out)
		}
		if out, err := tl.curl("http://" + tl.Addr(lab.App).String() + "/"); err != nil || !strings.Contains(out, tl.marker) {
			t.Fatalf("curl through the CIDR app: %v\n%s", err, out)
		}
	})

	t.Run("Refused", func(t *testing.T) {
		// The wiki's grant covers tcp/80 and tcp/7 only; the client routes
		// the whole virtual address into its tunnel, so the gateway's
		// filter is what stops the rest.
		if out, err := tl.client(5*time.Second, "curl", "-sS", "--max-time", "2", fmt.Sprintf("http://%s:8080/", wikiVIP)); err == nil {
			t.Fatalf("an ungranted port answered:\n%s", out)
		}
		c, err := nsDial(tl.Lab, lab.Client)(tl.ctx, "udp", netip.AddrPortFrom(wikiVIP, udpAppPort).String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, _ = c.Write([]byte("not granted"))
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		if n, err := c.Read(make([]byte, 64)); err == nil {
			t.Fatalf("UDP to an ungranted port got %d bytes back", n)
		}
		waitFor(t, 5*time.Second, func() string {
			if l := tl.gw.log.String(); !strings.Contains(l, "packet refused") || !strings.Contains(l, `"reason":"port"`) {
				return "no refusal logged by the gateway"
			}
			return ""
		})
	})

	t.Run("Flows", func(t *testing.T) {
		id := tl.liveGrant(t, "wiki")
		waitFor(t, 10*time.Second, func() string {
			fs, err := tl.admin.Flows(tl.ctx, id, 50)
			if err != nil {
				return err.Error()
			}
			for _, f := range fs {
				if f.Proto == "tcp" && f.Destination == lab.AppName+":80" {
					return ""
				}
			}
			return fmt.Sprintf("no flow record to %s:80 among %+v", lab.AppName, fs)
		})
	})

	t.Run("Revocation", func(t *testing.T) {
		echo := netip.AddrPortFrom(wikiVIP, labEchoPort)
		conn := tl.openEcho(t, echo)
		defer conn.Close()
		client := tl.overlayIP(t)
		if n := tl.gwFlows(t, client, echo); n != 1 {
			t.Fatalf("%d conntrack entries for the open connection, want 1", n)
		}
		start, killed, _ := tl.revokeAndWait(t, "wiki", conn)
		var gone time.Duration
		waitFor(t, 3*time.Second, func() string {
			if n := tl.gwFlows(t, client, echo); n != 0 {
				return fmt.Sprintf("%d conntrack entries left for the revoked flow", n)
			}
			gone = time.Since(start)
			return ""
		})
		if !strings.Contains(tl.gw.log.String(), "revoked flows removed from conntrack") {
			t.Fatal("the gateway did not delete the revoked flow's conntrack entry")
		}
		t.Logf("revocation: client connection ended after %v, gateway's conntrack entry gone after %v", killed.Round(time.Millisecond), gone.Round(time.Millisecond))
		if killed > time.Second || gone > time.Second+200*time.Millisecond {
			t.Fatalf("revocation took %v (connection) and %v (conntrack); want within 1 s", killed, gone)
		}
		// A new grant (the next lookup) opens the way again.
		if out, err := tl.curl(wikiURL); err != nil || !strings.Contains(out, tl.marker) {
			t.Fatalf("curl after a new grant: %v\n%s", err, out)
		}
	})

	t.Run("ExitAndCrash", func(t *testing.T) {
		reachable := func(what string) {
			t.Helper()
			waitFor(t, 45*time.Second, func() string {
				out, err := tl.client(5*time.Second, "curl", "-sS", "--max-time", "2", wikiURL)
				if err != nil || !strings.Contains(out, tl.marker) {
					return fmt.Sprintf("wiki not reachable %s: %v %s", what, err, out)
				}
				return ""
			})
		}
		tl.gw.stop()
		if code := tl.gw.cmd.ProcessState.ExitCode(); code != 0 {
			t.Fatalf("gateway exited with %d:\n%s", code, tl.gw.log)
		}
		tl.checkGatewayClean(t)

		tl.restartGateway()
		reachable("after a restart")
		_ = tl.gw.cmd.Process.Signal(syscall.SIGKILL)
		<-tl.gw.done
		waitFor(t, 5*time.Second, func() string {
			if _, err := tl.gwExec("ip", "link", "show", dev); err == nil {
				return "TUN device still there after SIGKILL"
			}
			return ""
		})
		// The table outlives a crash; the next start replaces it.
		tl.restartGateway()
		if ts := tl.gwTables(t); len(ts) != 1 {
			t.Fatalf("nftables tables after a crash and a restart: %v, want one", ts)
		}
		reachable("after a crash and a restart")
		tl.gw.stop()
		tl.checkGatewayClean(t)

		if out, err := tl.runCmd(lab.Client, "", "down", "--data", tl.dataDir); err != nil {
			t.Fatalf("keyhole down: %v\n%s", err, out)
		}
		<-agent.done
		tl.checkClean(t)
	})
}
