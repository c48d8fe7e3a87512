package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/skip2/go-qrcode"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/netstack"

	"github.com/keyhole-net/keyhole/cmd/keyhole/internal/onebox"
	"github.com/keyhole-net/keyhole/internal/api"
)

// wgConf is a parsed wg-quick or wg(8) config: each key of [Interface]
// and of the one [Peer], by name, with comments dropped.
type wgConf struct {
	iface, peer map[string]string
}

func parseWGConf(t *testing.T, text string) wgConf {
	t.Helper()
	c := wgConf{iface: map[string]string{}, peer: map[string]string{}}
	var cur map[string]string
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		line = strings.TrimSpace(line)
		switch {
		case line == "":
		case line == "[Interface]":
			cur = c.iface
		case line == "[Peer]":
			cur = c.peer
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || cur == nil {
				t.Fatalf("config line %q: want KEY = VALUE inside a section\n%s", line, text)
			}
			cur[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	return c
}

// hexKey turns a base64 wg(8) key into the lowercase hex UAPI wants.
func hexKey(t *testing.T, b64 string) string {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(b) != 32 {
		t.Fatalf("key %q: not a base64 WireGuard key", b64)
	}
	return hex.EncodeToString(b)
}

// stockClient is stock wireguard-go on the stock netstack, configured
// from a wg-quick file through UAPI as any WireGuard client would be.
type stockClient struct {
	dev    *device.Device
	net    *netstack.Net
	peerPK string // hex
}

func startStockClient(t *testing.T, c wgConf) *stockClient {
	t.Helper()
	addr, err := netip.ParsePrefix(c.iface["Address"])
	if err != nil {
		t.Fatalf("Address: %v", err)
	}
	mtu, err := strconv.Atoi(c.iface["MTU"])
	if err != nil {
		t.Fatalf("MTU: %v", err)
	}
	tdev, tnet, err := netstack.CreateNetTUN([]netip.Addr{addr.Addr()}, nil, mtu)
	if err != nil {
		t.Fatal(err)
	}
	dev := device.NewDevice(tdev, conn.NewDefaultBind(), device.NewLogger(device.LogLevelSilent, ""))
	t.Cleanup(dev.Close)
	s := &stockClient{dev: dev, net: tnet, peerPK: hexKey(t, c.peer["PublicKey"])}
	var uapi strings.Builder
	fmt.Fprintf(&uapi, "private_key=%s\nreplace_peers=true\npublic_key=%s\nendpoint=%s\npersistent_keepalive_interval=%s\nreplace_allowed_ips=true\n",
		hexKey(t, c.iface["PrivateKey"]), s.peerPK, c.peer["Endpoint"], c.peer["PersistentKeepalive"])
	for _, p := range strings.Split(c.peer["AllowedIPs"], ",") {
		fmt.Fprintf(&uapi, "allowed_ip=%s\n", strings.TrimSpace(p))
	}
	if err := dev.IpcSet(uapi.String()); err != nil {
		t.Fatalf("IpcSet: %v", err)
	}
	if err := dev.Up(); err != nil {
		t.Fatal(err)
	}
	return s
}

// get fetches http://ap/ through the tunnel, on a new connection.
func (s *stockClient) get(ap netip.AddrPort) (string, error) {
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: s.net.DialContext, DisableKeepAlives: true}}
	resp, err := hc.Get("http://" + ap.String() + "/")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// dial opens a TCP connection through the tunnel.
func (s *stockClient) dial(ap netip.AddrPort) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c, err := s.net.DialContextTCPAddrPort(ctx, ap)
	if err == nil {
		c.Close()
	}
	return err
}

// appVIPs maps each app to the virtual IP of its first domain.
func (s *system) appVIPs(t *testing.T) map[string]netip.Addr {
	t.Helper()
	apps, err := s.box.Admin.Apps(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	vip := map[string]netip.Addr{}
	for _, a := range apps {
		vip[a.Name] = a.VirtualIPs[a.Domains[0]]
	}
	return vip
}

// wikiAddr is where the wiki answers inside the overlay.
func (s *system) wikiAddr(t *testing.T) netip.AddrPort {
	return netip.AddrPortFrom(s.appVIPs(t)["wiki"], s.wiki.Port())
}

var wroteRE = regexp.MustCompile(`Wrote a wg-quick config for wiki to (\S+) \(grant (grt_\w+) until`)

// TestExportToStockWireGuard runs keyhole export against a real controller
// and gateway and brings the config up in stock wireguard-go on the stock
// netstack (no Keyhole code on the client side): the app answers through
// it, nothing else does, and revocation and expiry end it.
func TestExportToStockWireGuard(t *testing.T) {
	isolate(t)
	// Grants (and so the shortest export) last 4s on this controller.
	const lifetime = 4 * time.Second
	s := newSystem(t, func(c *onebox.Config) { c.GrantLifetime = lifetime })
	ctx := context.Background()
	payroll, err := onebox.StartWebApp("payroll")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(payroll.Close)
	mustOK := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	// alice may use payroll too: only the export's scope keeps it out.
	mustOK(s.box.Admin.AddApp(ctx, api.AppCreate{Name: "payroll", Domains: []string{"payroll.corp.internal"}, GatewayGroup: "site",
		Ports: []api.PortRange{{Proto: "tcp", First: payroll.Port(), Last: payroll.Port()}}}))
	mustOK(s.box.Admin.AddPolicy(ctx, api.PolicyRuleCreate{Action: api.Allow, Users: []string{"alice"}, Apps: []string{"payroll"}}))
	vip := s.appVIPs(t)
	wiki := s.wikiAddr(t)

	dir := t.TempDir()
	mustRun(t, testPassword+"\n", "login", "--controller", s.box.URL, "--ca-fingerprint", s.box.Fingerprint, "--user", "alice", "--password-stdin", "--data", dir)
	out := filepath.Join(t.TempDir(), "wiki.conf")
	m := wroteRE.FindStringSubmatch(mustRun(t, "", "export", "wiki", "--data", dir, "--output", out))
	if m == nil || m[1] != out {
		t.Fatalf("export did not say where it wrote")
	}
	grantID := m[2]
	st, err := os.Stat(out)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("config file: %v, %v; want mode 0600", st, err)
	}
	text, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	cfg := parseWGConf(t, string(text))
	t.Logf("exported config (private key elided):\n%s", strings.ReplaceAll(string(text), cfg.iface["PrivateKey"], "…"))
	if got, want := cfg.peer["AllowedIPs"], netip.PrefixFrom(vip["wiki"], 32).String(); got != want {
		t.Fatalf("AllowedIPs = %q; want only the wiki's %s", got, want)
	}
	if _, ok := cfg.iface["DNS"]; ok || cfg.iface["MTU"] != "1416" || cfg.peer["PersistentKeepalive"] != "25" {
		t.Errorf("interface %v, peer %v: want MTU 1416, keepalive 25, no DNS", cfg.iface, cfg.peer)
	}
	if !strings.Contains(string(text), grantID) || !strings.Contains(string(text), vip["wiki"].String()+" wiki.corp.internal") {
		t.Errorf("config lacks the grant to revoke or the hosts line:\n%s", text)
	}

	t.Run("refuses to overwrite", func(t *testing.T) {
		before, err := s.box.Admin.Grants(ctx)
		if err != nil {
			t.Fatal(err)
		}
		r := keyhole(t, "", "export", "wiki", "--data", dir, "--output", out)
		if r.code != 1 || !strings.Contains(r.stderr, "--force") {
			t.Fatalf("export over an existing file: exit %d, stderr %q", r.code, r.stderr)
		}
		after, _ := s.box.Admin.Grants(ctx)
		if len(after) != len(before) {
			t.Fatalf("a refused export left a grant behind: %d grants, then %d", len(before), len(after))
		}
	})

	if list := mustRun(t, "", append([]string{"admin", "grant", "list"}, s.adminFlags()...)...); !regexp.MustCompile(grantID + `\s+alice\s+dev_\w+ \(export\)\s+wiki`).MatchString(list) {
		t.Errorf("admin grant list does not show the export as one:\n%s", list)
	}

	c := startStockClient(t, cfg)
	t.Run("reaches the app", func(t *testing.T) {
		var body string
		waitFor(t, 5*time.Second, func() string {
			if body, err = c.get(wiki); err != nil {
				return "GET wiki: " + err.Error()
			}
			return ""
		})
		if !strings.Contains(body, "Hello from the private app wiki") {
			t.Fatalf("wiki answered %q", body)
		}
	})
	t.Run("reaches nothing else", func(t *testing.T) {
		gws, err := s.box.Admin.Gateways(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// Route the whole overlay into the tunnel, as a tampered config
		// would: the gateway's grant table alone must refuse.
		if err := c.dev.IpcSet("public_key=" + c.peerPK + "\nallowed_ip=100.64.0.0/10\n"); err != nil {
			t.Fatal(err)
		}
		for _, dst := range []netip.AddrPort{
			netip.AddrPortFrom(vip["payroll"], payroll.Port()), // another app alice may use
			netip.AddrPortFrom(gws[0].OverlayIP, 22),           // the gateway itself
			netip.AddrPortFrom(vip["wiki"], payroll.Port()),    // the app on another port
		} {
			if err := c.dial(dst); err == nil {
				t.Errorf("reached %v through the export", dst)
			}
		}
		if _, err := c.get(wiki); err != nil {
			t.Errorf("wiki after the refusals: %v", err)
		}
	})
	t.Run("revocation ends it within a second", func(t *testing.T) {
		mustRun(t, "", append([]string{"admin", "grant", "revoke", grantID}, s.adminFlags()...)...)
		start := time.Now()
		waitFor(t, time.Second, func() string {
			if _, err := c.get(wiki); err == nil {
				return "wiki still answers after the revocation"
			}
			return ""
		})
		t.Logf("unreachable %v after the revocation returned", time.Since(start).Round(time.Millisecond))
	})
	t.Run("expiry ends it", func(t *testing.T) {
		out := mustRun(t, "", "export", "wiki", "--data", dir, "--ttl", lifetime.String())
		short := startStockClient(t, parseWGConf(t, out))
		waitFor(t, lifetime, func() string {
			if _, err := short.get(wiki); err != nil {
				return "GET wiki before expiry: " + err.Error()
			}
			return ""
		})
		waitFor(t, lifetime+2*time.Second, func() string {
			if _, err := short.get(wiki); err == nil {
				return "wiki still answers past the export's TTL"
			}
			return ""
		})
	})
}

// TestExportFormats checks the wg(8) and QR outputs and the CLI's
// refusals, against a real controller.
func TestExportFormats(t *testing.T) {
	isolate(t)
	s := newSystem(t)
	dir := t.TempDir()
	mustRun(t, testPassword+"\n", "login", "--controller", s.box.URL, "--ca-fingerprint", s.box.Fingerprint, "--user", "alice", "--password-stdin", "--data", dir)

	t.Run("wg for wg setconf", func(t *testing.T) {
		out := mustRun(t, "", "export", "wiki", "--data", dir, "--format", "wg", "--ttl", "15m")
		c := parseWGConf(t, out)
		for _, k := range []string{"Address", "DNS", "MTU", "Table", "PreUp", "PostUp", "SaveConfig"} {
			if _, ok := c.iface[k]; ok {
				t.Errorf("wg output has the wg-quick key %s", k)
			}
		}
		if c.iface["PrivateKey"] == "" || c.peer["Endpoint"] == "" || c.peer["AllowedIPs"] == "" || !strings.Contains(out, "ip address add 100.") {
			t.Errorf("wg output incomplete:\n%s", out)
		}
	})
	t.Run("qr", func(t *testing.T) {
		out := mustRun(t, "", "export", "wiki", "--data", dir, "--format", "qr")
		if !strings.Contains(out, "Keyhole export: app wiki for alice") || !strings.Contains(out, "▀") {
			t.Errorf("qr output:\n%s", out)
		}
		png := filepath.Join(t.TempDir(), "wiki.png")
		mustRun(t, "", "export", "wiki", "--data", dir, "--format", "qr", "--output", png)
		b, err := os.ReadFile(png)
		st, _ := os.Stat(png)
		if err != nil || !strings.HasPrefix(string(b), "\x89PNG") || st.Mode().Perm() != 0o600 {
			t.Errorf("qr --output: %v, mode %v; want a PNG with mode 0600", err, st.Mode())
		}
	})
	t.Run("force replaces", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "wiki.conf")
		if err := os.WriteFile(out, []byte("old"), 0o644); err != nil {
			t.Fatal(err)
		}
		mustRun(t, "", "export", "wiki", "--data", dir, "--output", out, "--force")
		b, _ := os.ReadFile(out)
		st, _ := os.Stat(out)
		if !strings.Contains(string(b), "[Peer]") || st.Mode().Perm() != 0o600 {
			t.Errorf("after --force: mode %v\n%s", st.Mode(), b)
		}
	})
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown format", []string{"--format", "png"}, "want wg-quick, wg or qr"},
		{"ttl too long", []string{"--ttl", "48h"}, "ttl 48h0m0s"},
		{"bad endpoint", []string{"--endpoint", "gateway.example"}, "HOST:PORT"},
		{"not logged in", []string{"--data", t.TempDir()}, "keyhole login"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"export", "wiki", "--data", dir}, tc.args...)
			r := keyhole(t, "", args...)
			if r.code != 1 || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("exit %d, stderr %q; want %q", r.code, r.stderr, tc.want)
			}
		})
	}
	t.Run("endpoint override", func(t *testing.T) {
		c := parseWGConf(t, mustRun(t, "", "export", "wiki", "--data", dir, "--endpoint", "gw.example.net:51820"))
		if c.peer["Endpoint"] != "gw.example.net:51820" {
			t.Errorf("Endpoint = %q", c.peer["Endpoint"])
		}
	})
}

// TestWriteQR reads the half blocks back and compares them with the code.
func TestWriteQR(t *testing.T) {
	const text = "[Interface]\nPrivateKey = x\n"
	var b strings.Builder
	if err := writeQR(&b, text); err != nil {
		t.Fatal(err)
	}
	q, err := qrcode.New(text, qrcode.Low)
	if err != nil {
		t.Fatal(err)
	}
	q.DisableBorder = true
	want := q.Bitmap()
	n := len(want) + 2*qrQuietZone
	var got [][]bool
	for _, line := range strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n") {
		line = strings.TrimSuffix(strings.TrimPrefix(line, "\x1b[30;47m"), "\x1b[0m")
		top, bottom := make([]bool, 0, n), make([]bool, 0, n)
		for _, r := range line {
			top = append(top, r == '█' || r == '▀')
			bottom = append(bottom, r == '█' || r == '▄')
		}
		if len(top) != n {
			t.Fatalf("line of %d modules; want %d", len(top), n)
		}
		got = append(got, top, bottom)
	}
	got = got[:n] // an odd count leaves a last half line of margin
	for y := range n {
		for x := range n {
			wy, wx := y-qrQuietZone, x-qrQuietZone
			dark := wy >= 0 && wy < len(want) && wx >= 0 && wx < len(want) && want[wy][wx]
			if got[y][x] != dark {
				t.Fatalf("module (%d,%d) is %v; want %v", x, y, got[y][x], dark)
			}
		}
	}
}

// TestWriteSecretFile pins the file handling: mode 0600, no overwrite
// without force, an atomic replace with it.
func TestWriteSecretFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "x.conf")
	if err := writeSecretFile(path, []byte("one"), false); err != nil {
		t.Fatal(err)
	}
	if err := writeSecretFile(path, []byte("two"), false); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("second write without force: %v", err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := writeSecretFile(path, []byte("three"), true); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	st, _ := os.Stat(path)
	entries, _ := os.ReadDir(dir)
	if string(b) != "three" || st.Mode().Perm() != 0o600 || len(entries) != 1 {
		t.Fatalf("after force: %q, mode %v, %d files", b, st.Mode(), len(entries))
	}
}
