package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/internal/api"
)

var (
	fingerprintRE = regexp.MustCompile(`CA fingerprint: (sha256:[0-9a-f]{64})`)
	adminTokenRE  = regexp.MustCompile(`Admin token: +(khadm_\S+)`)
	listeningRE   = regexp.MustCompile(`Listening on +(https://\S+)`)
)

// startController runs keyhole controller and waits until it listens.
func startController(t *testing.T, args ...string) (b *background, url string) {
	t.Helper()
	b = start(t, append([]string{"controller", "--listen", "127.0.0.1:0"}, args...)...)
	waitFor(t, 20*time.Second, func() string {
		if code, done := b.exited(); done {
			t.Fatalf("controller exited %d: %s", code, b.err)
		}
		m := listeningRE.FindStringSubmatch(b.out.String())
		if m == nil {
			return "controller not listening yet: " + b.out.String()
		}
		url = m[1]
		return ""
	})
	return b, url
}

func TestControllerCommand(t *testing.T) {
	isolate(t)
	dir := t.TempDir()
	ctrl, url := startController(t, "--data", dir)
	out := ctrl.out.String()
	fp := fingerprintRE.FindStringSubmatch(out)
	tok := adminTokenRE.FindStringSubmatch(out)
	if fp == nil || tok == nil || !strings.Contains(out, filepath.Join(dir, "admin.token")) {
		t.Fatalf("first start should print the fingerprint, the token and where it is saved:\n%s", out)
	}
	saved, err := os.ReadFile(filepath.Join(dir, "admin.token"))
	if err != nil || strings.TrimSpace(string(saved)) != tok[1] {
		t.Fatalf("admin.token holds %q (%v), printed %q", saved, err, tok[1])
	}
	admin := []string{"--controller", url, "--token", tok[1], "--ca-fingerprint", fp[1]}
	mustRun(t, "", append([]string{"admin", "group", "add", "eng"}, admin...)...)
	if code := ctrl.stop(t); code != 0 {
		t.Fatalf("controller exited %d: %s", code, ctrl.err)
	}

	// A later start prints the same fingerprint and where the token is,
	// never the token again; the data is still there.
	ctrl, url = startController(t, "--data", dir)
	out = ctrl.out.String()
	if m := fingerprintRE.FindStringSubmatch(out); m == nil || m[1] != fp[1] {
		t.Errorf("restart fingerprint: %q", out)
	}
	if strings.Contains(out, tok[1]) || !strings.Contains(out, "in "+filepath.Join(dir, "admin.token")) {
		t.Errorf("restart should say where the token is, not print it:\n%s", out)
	}
	admin = []string{"--controller", url, "--token", tok[1], "--ca-fingerprint", fp[1]}
	groups := decodeJSON[[]api.Group](t, mustRun(t, "", append([]string{"admin", "group", "list", "--json"}, admin...)...))
	if len(groups) != 1 || groups[0].Name != "eng" {
		t.Errorf("groups after restart: %+v", groups)
	}
	if code := ctrl.stop(t); code != 0 {
		t.Errorf("controller exited %d: %s", code, ctrl.err)
	}
}

// On one machine, with default data directories, nothing needs configuring
// but the address when it is not the default port.
func TestZeroConfigOnOneMachine(t *testing.T) {
	isolate(t)
	_, url := startController(t)
	if _, err := os.Stat(filepath.Join(defaultDataDir("controller"), "admin.token")); err != nil {
		t.Fatalf("controller did not use the default data directory: %v", err)
	}
	// admin finds the local controller's token and CA fingerprint.
	mustRun(t, "", "admin", "gateway-group", "add", "site", "--controller", url)
	tok := strings.TrimSpace(mustRun(t, "", "admin", "gateway", "token", "--group", "site", "--controller", url))
	// So does the gateway (fingerprint) on its first start; the token
	// comes from a file, as a Kubernetes secret gives it.
	tokFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokFile, []byte(tok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	gw := start(t, "gateway", "--controller", url, "--token-file", tokFile, "--name", "gw1")
	waitFor(t, 20*time.Second, func() string {
		if code, done := gw.exited(); done {
			t.Fatalf("gateway exited %d: %s", code, gw.err)
		}
		if !strings.Contains(gw.out.String(), "Gateway gw_") {
			return "gateway not up: " + gw.out.String()
		}
		return ""
	})
	// A later start needs neither the token nor --controller: the gateway
	// goes back to the controller it enrolled with, not to the flag's
	// default (this controller is not on the default port).
	if code := gw.stop(t); code != 0 {
		t.Fatalf("gateway exited %d: %s", code, gw.err)
	}
	gw = start(t, "gateway", "--name", "gw1")
	defer gw.stop(t)
	waitFor(t, 20*time.Second, func() string {
		if code, done := gw.exited(); done {
			t.Fatalf("restarted gateway exited %d: %s", code, gw.err)
		}
		gws := decodeJSON[[]api.Gateway](t, mustRun(t, "", "admin", "gateway", "list", "--json", "--controller", url))
		if len(gws) != 1 || !gws[0].Connected {
			return fmt.Sprintf("restarted gateway not connected: %+v\n%s", gws, gw.err)
		}
		return ""
	})
	// Secrets of the local controller are never sent to another one.
	r := keyhole(t, "", "admin", "user", "list", "--controller", "https://keyhole.example:8443")
	if r.code != 1 || !strings.Contains(r.stderr, "no admin token") {
		t.Errorf("remote controller without a token: exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestGatewayCommand(t *testing.T) {
	isolate(t)
	s := newBox(t)
	ctx := t.Context()
	if _, err := s.box.Admin.AddGatewayGroup(ctx, "site"); err != nil {
		t.Fatal(err)
	}
	tok, err := s.box.Admin.GatewayToken(ctx, "site", time.Hour)
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct{ name, flag, want string }{
		{"bad host", "--host=wiki.corp.internal", "want NAME=IP"},
		{"bad endpoint", "--endpoint=gateway.example", "want IP:PORT"},
		{"bad metrics address", "--metrics-listen=9100", "want HOST:PORT"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := keyhole(t, "", "gateway", "--controller", s.box.URL, "--token", tok.Token, "--ca-fingerprint", s.box.Fingerprint, "--data", t.TempDir(), tc.flag)
			if r.code != 1 || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("exit %d, stderr %q; want %q", r.code, r.stderr, tc.want)
			}
		})
	}

	metrics := freePort(t)
	gw := start(t, "gateway", "--controller", s.box.URL, "--token", tok.Token, "--ca-fingerprint", s.box.Fingerprint,
		"--data", t.TempDir(), "--name", "gw1", "--host", "wiki.corp.internal=127.0.0.1", "--metrics-listen", metrics)
	waitFor(t, 20*time.Second, func() string {
		if code, done := gw.exited(); done {
			t.Fatalf("gateway exited %d: %s", code, gw.err)
		}
		gws, err := s.box.Admin.Gateways(ctx)
		if err != nil || len(gws) != 1 || !gws[0].Connected || gws[0].Name != "gw1" {
			return fmt.Sprintf("gateways %+v, %v", gws, err)
		}
		return ""
	})
	resp, err := http.Get("http://" + metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), "keyhole_gateway_control_stream_up 1") {
		t.Errorf("metrics:\n%s", b)
	}
	if code := gw.stop(t); code != 0 {
		t.Errorf("gateway exited %d: %s", code, gw.err)
	}
}

// freePort returns a loopback address nobody listens on right now.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
