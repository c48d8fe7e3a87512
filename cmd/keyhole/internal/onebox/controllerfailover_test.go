package onebox

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/keyhole-net/keyhole/client"
)

// TestClientControllerFallback: a client whose controller does not
// answer moves to the next one it was given (keyhole login
// --controller-fallback) and gets its grant there, without user action.
func TestClientControllerFallback(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	ctx := context.Background()
	c := f.login(t, "alice", false)
	c.Stop()

	// The first controller of the profile is gone (a port nobody
	// listens on); the real one is the fallback.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "https://" + l.Addr().String()
	l.Close()
	p, err := client.LoadProfile(c.Dir)
	if err != nil {
		t.Fatal(err)
	}
	p.ControllerURL, p.ControllerFallbacks = dead, []string{f.box.URL}
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(c.Dir, "profile.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}

	again, err := f.box.Login(ctx, ClientOptions{Dir: c.Dir})
	if err != nil {
		t.Fatal(err)
	}
	defer again.Stop()
	conn, err := again.Dial(ctx, "tcp", "echo.corp.internal", f.echo.Port())
	if err != nil {
		t.Fatalf("dial with the first controller down: %v", err)
	}
	defer conn.Close()
	if err := echoOnce(conn, "through the fallback"); err != nil {
		t.Fatal(err)
	}
}
