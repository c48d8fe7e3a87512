package main

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/client"
)

// TestAgentRefusesOtherUsers: even with the socket's file mode opened up
// by mistake, the agent answers no other user (peer credentials). Needs
// root to run the other user's process.
func TestAgentRefusesOtherUsers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to act as another user")
	}
	isolate(t)
	s := newSystem(t)
	base, err := os.MkdirTemp("", "kh-agent-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	dir := filepath.Join(base, "data")
	mustRun(t, testPassword+"\n", "login", "--controller", s.box.URL, "--ca-fingerprint", s.box.Fingerprint, "--user", "alice", "--password-stdin", "--data", dir)
	start(t, "up", "--socks5", "127.0.0.1:0", "--data", dir)
	sock := client.ControlPath(dir)
	waitFor(t, 10*time.Second, func() string {
		if _, err := client.Control(context.Background(), dir, client.ControlRequest{Op: client.OpStatus}); err != nil {
			return err.Error()
		}
		return ""
	})
	// The mistake: everyone may reach the socket.
	for _, p := range []string{base, dir} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(sock, 0o666); err != nil {
		t.Fatal(err)
	}
	// Another user's process: a copy of this binary they may execute.
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(base, "dial")
	src, err := os.Open(exe)
	if err != nil {
		t.Fatal(err)
	}
	dst, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	src.Close()
	dst.Close()
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), envDial+"="+sock)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("as nobody: %v: %s", err, out)
	}
	if !strings.Contains(string(out), "permission denied") || strings.Contains(string(out), `"status"`) {
		t.Fatalf("the agent answered another user: %s", out)
	}
}
