package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/client"
)

// TestAgentControlSocket: keyhole up serves a control socket (owner only)
// that status, connect, down and logout use; a second agent for the same
// data directory is refused; down stops the agent and removes the socket.
func TestAgentControlSocket(t *testing.T) {
	s, dir := loggedIn(t, "alice")
	up := start(t, "up", "--socks5", "127.0.0.1:0", "--data", dir)
	sock := client.ControlPath(dir)
	waitFor(t, 10*time.Second, func() string {
		if code, done := up.exited(); done {
			t.Fatalf("up exited %d: %s", code, up.err)
		}
		if _, err := os.Stat(sock); err != nil {
			return "no control socket yet"
		}
		return ""
	})
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("control socket mode: %v %v", fi.Mode(), err)
	}

	var rep statusReport
	if err := json.Unmarshal([]byte(mustRun(t, "", "status", "--json", "--data", dir)), &rep); err != nil {
		t.Fatal(err)
	}
	if !rep.Running || !rep.Agent || rep.Client == nil || rep.Client.PID != os.Getpid() {
		t.Fatalf("status through the agent: %+v", rep)
	}

	if r := keyhole(t, "", "up", "--socks5", "127.0.0.1:0", "--data", dir); r.code == 0 || !strings.Contains(r.stderr, "already running") {
		t.Fatalf("second agent: exit %d, %s", r.code, r.stderr)
	}

	out := mustRun(t, "", "connect", fmt.Sprintf("wiki:%d", s.wiki.Port()), "--listen", "127.0.0.1:0", "--data", dir)
	m := regexp.MustCompile(`Forwarding (127\.0\.0\.1:\d+) → .* through the running agent`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("connect through the agent printed %q", out)
	}
	hc := &http.Client{Timeout: 5 * time.Second}
	resp, err := hc.Get("http://" + m[1] + "/")
	if err != nil {
		t.Fatalf("through the agent's forward: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), "wiki") {
		t.Errorf("through the agent's forward: %q", b)
	}

	// Garbage on the socket gets an error, not a crash.
	ctx := context.Background()
	if _, err := client.Control(ctx, dir, client.ControlRequest{Op: "reboot"}); err == nil || !strings.Contains(err.Error(), "unknown operation") {
		t.Errorf("unknown op: %v", err)
	}
	if _, err := client.Control(ctx, dir, client.ControlRequest{Op: client.OpConnect, Target: "wiki:99999"}); err == nil {
		t.Error("connect with a bad port succeeded")
	}

	if out := mustRun(t, "", "down", "--data", dir); !strings.Contains(out, "Agent stopped") {
		t.Errorf("down printed %q", out)
	}
	waitFor(t, 10*time.Second, func() string {
		if _, done := up.exited(); !done {
			return "up still running after down"
		}
		return ""
	})
	if code, _ := up.exited(); code != 0 {
		t.Errorf("up exited %d after down: %s", code, up.err)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("control socket left behind: %v", err)
	}
	if r := keyhole(t, "", "down", "--data", dir); r.code == 0 || !strings.Contains(r.stderr, "no keyhole agent") {
		t.Errorf("down without an agent: exit %d, %s", r.code, r.stderr)
	}
}

// TestAgentStaleSocket: a socket left by an agent that died (SIGKILL) does
// not stop the next one.
func TestAgentStaleSocket(t *testing.T) {
	_, dir := loggedIn(t, "alice")
	if err := os.WriteFile(client.ControlPath(dir), nil, 0o600); err != nil { // not even a socket
		t.Fatal(err)
	}
	up := start(t, "up", "--socks5", "127.0.0.1:0", "--data", dir)
	waitFor(t, 10*time.Second, func() string {
		if code, done := up.exited(); done {
			t.Fatalf("up exited %d: %s", code, up.err)
		}
		if _, err := client.Control(context.Background(), dir, client.ControlRequest{Op: client.OpStatus}); err != nil {
			return "agent not answering: " + err.Error()
		}
		return ""
	})
}

// loggedIn starts a system and logs user in to a fresh data directory.
func loggedIn(t *testing.T, user string) (*system, string) {
	t.Helper()
	isolate(t)
	s := newSystem(t)
	dir := t.TempDir()
	mustRun(t, testPassword+"\n", "login", "--controller", s.box.URL, "--ca-fingerprint", s.box.Fingerprint, "--user", user, "--password-stdin", "--data", dir)
	return s, dir
}
