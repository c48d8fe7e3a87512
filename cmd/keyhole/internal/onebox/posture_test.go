package onebox

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/client/posture"
	"github.com/keyhole-net/keyhole/internal/api"
)

// TestPostureFlipClosesConnection is issue 5's continuous evaluation end
// to end, with the real client collecting its posture: echo needs posture
// profile "managed" (a marker file with the right hash, and the device's
// own command check "healthy" passing). When the marker goes away during
// an open connection, the client's next collection reports it and the
// connection is closed within one posture interval; when it comes back,
// access returns without user action. A device whose command check fails
// is denied with a reason naming the check.
func TestPostureFlipClosesConnection(t *testing.T) {
	const interval = 300 * time.Millisecond
	f := newFixture(t, fixtureOpts{postureInterval: interval})
	ctx := context.Background()
	marker := filepath.Join(t.TempDir(), "compliant")
	if err := os.WriteFile(marker, []byte("ok"), 0o600); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte("ok"))
	a := f.box.Admin
	noErr(t)(a.AddPostureProfile(ctx, api.PostureProfile{Name: "managed", Checks: []api.PostureCheck{
		{Name: "marker", Kind: api.CheckFile, Path: marker, SHA256: hex.EncodeToString(sum[:])},
		{Name: "healthy", Kind: api.CheckCommand},
	}}))
	rules, err := a.Policies(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rules {
		if err := a.RemovePolicy(ctx, r.ID); err != nil {
			t.Fatal(err)
		}
	}
	noErr(t)(a.AddPolicy(ctx, api.PolicyRuleCreate{Action: api.Allow, Groups: []string{"eng"}, Apps: []string{"echo"}, RuleConditions: api.RuleConditions{Posture: "managed"}}))
	trueCmd, err := exec.LookPath("true")
	if err != nil {
		t.Fatal(err)
	}
	falseCmd, err := exec.LookPath("false")
	if err != nil {
		t.Fatal(err)
	}

	c, err := f.box.Login(ctx, ClientOptions{User: "alice", Password: password, Posture: posture.Config{Commands: map[string][]string{"healthy": {trueCmd}}}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	conn, err := c.Dial(ctx, "tcp", "echo.corp.internal", f.echo.Port())
	if err != nil {
		t.Fatalf("compliant device: %v", err)
	}
	defer conn.Close()
	if err := echoOnce(conn, "hello"); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	if err := os.Remove(marker); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, conn, 3*time.Second)
	took := time.Since(start)
	t.Logf("marker removed: connection closed after %v (posture interval %v)", took, interval)
	if took > interval+time.Second {
		t.Errorf("connection closed %v after the posture changed; want within one interval (%v) and a second", took, interval)
	}
	if _, err := c.Dial(ctx, "tcp", "echo.corp.internal", f.echo.Port()); err == nil || !strings.Contains(err.Error(), "check marker") {
		t.Fatalf("dial without the marker: %v; want a denial naming check marker", err)
	}

	if err := os.WriteFile(marker, []byte("ok"), 0o600); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() error {
		conn, err := c.Dial(ctx, "tcp", "echo.corp.internal", f.echo.Port())
		if err != nil {
			return err
		}
		defer conn.Close()
		return echoOnce(conn, "back")
	})

	bad, err := f.box.Login(ctx, ClientOptions{User: "alice", Password: password, Posture: posture.Config{Commands: map[string][]string{"healthy": {falseCmd}}}})
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Stop()
	if _, err := bad.Dial(ctx, "tcp", "echo.corp.internal", f.echo.Port()); err == nil || !strings.Contains(err.Error(), "check healthy (command healthy) failed on this device") {
		t.Fatalf("device whose command check fails: %v", err)
	}
}

// TestKeyRotationKeepsConnection: the real client rotates its device key
// and WireGuard key while a connection is open; the connection goes on
// through the new key, new grants work, and the keys on disk are the new
// ones (a restarted client uses them).
func TestKeyRotationKeepsConnection(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	ctx := context.Background()
	c := f.login(t, "alice", false)
	defer c.Stop()
	conn, err := c.Dial(ctx, "tcp", "echo.corp.internal", f.echo.Port())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := echoOnce(conn, "before"); err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(filepath.Join(c.Dir, "wg.key"))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := c.RotateKeys(ctx); err != nil {
		t.Fatalf("rotate: %v", err)
	}
	if err := echoOnce(conn, "after"); err != nil {
		t.Fatalf("open connection after rotation: %v", err)
	}
	t.Logf("rotation and the next echo took %v", time.Since(start))
	after, err := os.ReadFile(filepath.Join(c.Dir, "wg.key"))
	if err != nil || string(after) == string(before) {
		t.Fatalf("WireGuard key on disk after rotation: changed %v, %v", string(after) != string(before), err)
	}
	wiki, err := c.Dial(ctx, "tcp", "wiki.corp.internal", f.wiki.Port())
	if err != nil {
		t.Fatalf("new grant after rotation: %v", err)
	}
	wiki.Close()
	c.Stop()
	again, err := f.box.Login(ctx, ClientOptions{Dir: c.Dir})
	if err != nil {
		t.Fatal(err)
	}
	defer again.Stop()
	conn2, err := again.Dial(ctx, "tcp", "echo.corp.internal", f.echo.Port())
	if err != nil {
		t.Fatalf("restarted client with the rotated keys: %v", err)
	}
	defer conn2.Close()
	if err := echoOnce(conn2, "restarted"); err != nil {
		t.Fatal(err)
	}
}
