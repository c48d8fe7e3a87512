package main

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/internal/oidctest"
)

var (
	deviceCodeRE = regexp.MustCompile(`open (\S+) and enter the code (\S+)`)
	signInURLRE  = regexp.MustCompile(`Sign in with your browser:\n  (\S+)`)
)

// TestLoginOIDC runs keyhole controller against a real OpenID provider and
// keyhole login --oidc in both modes, the test playing the user's browser.
func TestLoginOIDC(t *testing.T) {
	isolate(t)
	op := oidctest.NewOP(t, oidctest.ClientID)
	secret := filepath.Join(t.TempDir(), "oidc.secret")
	if err := os.WriteFile(secret, []byte(oidctest.ClientSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctrl, url := startController(t, "--data", t.TempDir(), "--relay-listen", "127.0.0.1:0",
		"--oidc-issuer", op.Issuer, "--oidc-client-id", oidctest.ClientID, "--oidc-client-secret-file", secret,
		"--oidc-scopes", "openid,profile,email,groups")
	fp := fingerprintRE.FindStringSubmatch(ctrl.out.String())[1]

	t.Run("device flow", func(t *testing.T) {
		login := start(t, "login", "--oidc", "--controller", url, "--ca-fingerprint", fp, "--data", t.TempDir())
		var m []string
		waitFor(t, 20*time.Second, func() string {
			// The code, the QR code, then this line.
			if !strings.Contains(login.err.String(), "Waiting for approval") {
				return "no code shown yet: " + login.err.String()
			}
			m = deviceCodeRE.FindStringSubmatch(login.err.String())
			return ""
		})
		if !strings.Contains(login.err.String(), "▀") {
			t.Errorf("no QR code shown:\n%s", login.err)
		}
		oidctest.ApproveDevice(t, m[1], m[2], "alice")
		waitExit(t, login, 30*time.Second)
		if !strings.Contains(login.out.String(), "Logged in as alice") {
			t.Fatalf("login output:\n%s\n%s", login.out, login.err)
		}
	})

	t.Run("browser flow", func(t *testing.T) {
		login := start(t, "login", "--oidc", "--browser", "--no-open", "--controller", url, "--ca-fingerprint", fp, "--data", t.TempDir())
		var m []string
		waitFor(t, 20*time.Second, func() string {
			if m = signInURLRE.FindStringSubmatch(login.err.String()); m == nil {
				return "no sign-in URL yet: " + login.err.String()
			}
			return ""
		})
		cb := oidctest.BrowserLogin(t, m[1], "bob")
		// The browser follows the IdP's redirect to the CLI's listener.
		resp, err := http.Get(cb.String())
		if err != nil {
			t.Fatal(err)
		}
		page, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(page), "Signed in") {
			t.Errorf("callback page: %s", page)
		}
		waitExit(t, login, 30*time.Second)
		if !strings.Contains(login.out.String(), "Logged in as bob") {
			t.Fatalf("login output:\n%s\n%s", login.out, login.err)
		}
	})
}

// waitExit waits for b to exit 0.
func waitExit(t *testing.T, b *background, timeout time.Duration) {
	t.Helper()
	waitFor(t, timeout, func() string {
		code, done := b.exited()
		if !done {
			return "still running: " + b.err.String()
		}
		if code != 0 {
			t.Fatalf("exited %d:\n%s\n%s", code, b.out, b.err)
		}
		return ""
	})
}
