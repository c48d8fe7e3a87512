package main

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun/netstack"
)

var ipAddressRE = regexp.MustCompile(`ip address add (\S+)/\d+ dev`)

// TestExportWithWGSetconf feeds keyhole export --format wg to the real
// wg(8) from wireguard-tools, which configures stock wireguard-go (on the
// stock netstack, no TUN) through its UAPI socket, as on any Linux host
// running the userspace implementation; the app then answers through it.
// It needs root (the socket lives in /var/run/wireguard) and the wg tool.
func TestExportWithWGSetconf(t *testing.T) {
	wgTool, err := exec.LookPath("wg")
	if err != nil || os.Geteuid() != 0 {
		t.Skip("needs root and wg(8) (apt-get install wireguard-tools)")
	}
	isolate(t)
	s := newSystem(t)
	dir := t.TempDir()
	mustRun(t, testPassword+"\n", "login", "--controller", s.box.URL, "--ca-fingerprint", s.box.Fingerprint, "--user", "alice", "--password-stdin", "--data", dir)
	conf := filepath.Join(t.TempDir(), "wiki-wg.conf")
	mustRun(t, "", "export", "wiki", "--data", dir, "--format", "wg", "--output", conf)
	text, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	m := ipAddressRE.FindSubmatch(text)
	if m == nil {
		t.Fatalf("no address hint in:\n%s", text)
	}
	addr := netip.MustParseAddr(string(m[1]))

	tdev, tnet, err := netstack.CreateNetTUN([]netip.Addr{addr}, nil, 1416)
	if err != nil {
		t.Fatal(err)
	}
	dev := device.NewDevice(tdev, conn.NewDefaultBind(), device.NewLogger(device.LogLevelSilent, ""))
	t.Cleanup(dev.Close)
	iface := fmt.Sprintf("khexp%d", os.Getpid()%1000000)
	f, err := ipc.UAPIOpen(iface)
	if err != nil {
		t.Fatal(err)
	}
	l, err := ipc.UAPIListen(iface, f)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			dev.IpcHandle(c)
		}
	}()
	t.Cleanup(func() { l.Close(); <-done })
	if err := dev.Up(); err != nil {
		t.Fatal(err)
	}

	if out, err := exec.Command(wgTool, "setconf", iface, conf).CombinedOutput(); err != nil {
		t.Fatalf("wg setconf: %v\n%s", err, out)
	}
	s2 := &stockClient{dev: dev, net: tnet}
	wiki := s.wikiAddr(t)
	waitFor(t, 5*time.Second, func() string {
		body, err := s2.get(wiki)
		if err != nil || !strings.Contains(body, "Hello from the private app wiki") {
			return fmt.Sprintf("GET wiki: %q, %v", body, err)
		}
		return ""
	})
	out, err := exec.Command(wgTool, "show", iface, "latest-handshakes").CombinedOutput()
	if err != nil || strings.HasSuffix(strings.TrimSpace(string(out)), "\t0") {
		t.Errorf("wg show %s latest-handshakes: %v\n%s", iface, err, out)
	}

	// Why --format wg exists: wg(8) refuses wg-quick's own keys.
	quick := filepath.Join(t.TempDir(), "wiki.conf")
	mustRun(t, "", "export", "wiki", "--data", dir, "--output", quick)
	if out, err := exec.Command(wgTool, "setconf", iface, quick).CombinedOutput(); err == nil {
		t.Errorf("wg setconf took a wg-quick file (Address, MTU):\n%s", out)
	}
}
