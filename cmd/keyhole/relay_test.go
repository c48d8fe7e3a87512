package main

import (
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pion/stun/v3"
)

var relayListeningRE = regexp.MustCompile(`Relay listening on udp://(\S+) \(public IP (\S+)\)`)

// startRelay runs keyhole relay and waits until it listens; it returns the
// UDP address.
func startRelay(t *testing.T, args ...string) (*background, string) {
	t.Helper()
	b := start(t, append([]string{"relay", "--listen", "127.0.0.1:0"}, args...)...)
	var addr string
	waitFor(t, 20*time.Second, func() string {
		if code, done := b.exited(); done {
			t.Fatalf("relay exited %d: %s", code, b.err)
		}
		m := relayListeningRE.FindStringSubmatch(b.out.String())
		if m == nil {
			return "relay not listening yet: " + b.out.String()
		}
		if m[2] != "127.0.0.1" {
			t.Errorf("public IP %s, want the listen address", m[2])
		}
		addr = m[1]
		return ""
	})
	return b, addr
}

func TestRelayCommand(t *testing.T) {
	isolate(t)
	secretFile := filepath.Join(t.TempDir(), "relay", "relay.secret")
	b, addr := startRelay(t, "--secret-file", secretFile)
	if out := b.out.String(); !strings.Contains(out, "created in "+secretFile) {
		t.Errorf("first start should say where the secret was created:\n%s", out)
	}
	fi, err := os.Stat(secretFile)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("secret file mode %v, want 0600", fi.Mode().Perm())
	}
	secret, _ := os.ReadFile(secretFile)
	if !regexp.MustCompile(`^[0-9a-f]{64}\n$`).Match(secret) {
		t.Errorf("secret file holds %q, want 32 hex-encoded bytes", secret)
	}

	// It answers STUN Binding requests.
	conn, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	req := stun.MustBuild(stun.TransactionID, stun.BindingRequest)
	if _, err := conn.Write(req.Raw); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 1500)
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	var res stun.Message
	var mapped stun.XORMappedAddress
	if err := stun.Decode(buf[:n], &res); err != nil || res.Type != stun.BindingSuccess || mapped.GetFrom(&res) != nil ||
		mapped.String() != conn.LocalAddr().String() {
		t.Errorf("binding response %v (%v), mapped %v, want success with %v", res, err, mapped, conn.LocalAddr())
	}
	if code := b.stop(t); code != 0 {
		t.Fatalf("relay exited %d: %s", code, b.err)
	}

	// A later start keeps the secret.
	b, _ = startRelay(t, "--secret-file", secretFile)
	if again, _ := os.ReadFile(secretFile); string(again) != string(secret) {
		t.Errorf("secret changed on restart")
	}
	if out := b.out.String(); strings.Contains(out, "created") {
		t.Errorf("restart should not create a secret:\n%s", out)
	}
}

func TestRelayCommandNeedsPublicIP(t *testing.T) {
	isolate(t)
	r := keyhole(t, "", "relay", "--listen", "0.0.0.0:0", "--secret-file", filepath.Join(t.TempDir(), "s"))
	if r.code != 1 || !strings.Contains(r.stderr, "--public-ip") {
		t.Errorf("wildcard listen without --public-ip: exit %d, stderr %q", r.code, r.stderr)
	}
	short := filepath.Join(t.TempDir(), "short")
	os.WriteFile(short, []byte("too short\n"), 0o600)
	r = keyhole(t, "", "relay", "--listen", "127.0.0.1:0", "--secret-file", short)
	if r.code != 1 || !strings.Contains(r.stderr, "at least 16") {
		t.Errorf("short secret: exit %d, stderr %q", r.code, r.stderr)
	}
}
