//go:build unix

package posture

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/internal/api"
)

func TestCommandCheck(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "grandchild.pid")
	// Long enough that the commands meant to finish do so on a loaded
	// machine under -race; "sleeps" and "forks" wait it out.
	c := newCollector(Config{
		CommandTimeout: 2 * time.Second,
		Commands: map[string][]string{
			"true":      {"true"},
			"false":     {"false"},
			"says why":  {"sh", "-c", "echo; echo 'edr agent is stopped' >&2; exit 3"},
			"chatty":    {"sh", "-c", "yes | head -c 1000000; exit 0"},
			"sleeps":    {"sleep", "30"},
			"missing":   {"/nonexistent/edr-check"},
			"empty":     {},
			"no shell":  {"echo", "$HOME", "|", "false"},
			"has stdin": {"sh", "-c", "read line; exit 1"},
			// The grandchild holds the output pipe open; killing the
			// process group must end it too.
			"forks": {"sh", "-c", "sleep 30 & echo $! > " + pidFile + "; wait"},
		},
	})
	tests := []struct {
		name   string
		want   api.Fact
		detail string
	}{
		{"true", api.Yes, "exit status 0"},
		{"false", api.No, "exit status 1"},
		{"says why", api.No, "exit status 3: edr agent is stopped"},
		{"chatty", api.Yes, "exit status 0: y"},
		{"sleeps", api.Unknown, "timed out after 2s"},
		{"forks", api.Unknown, "timed out after 2s"},
		{"missing", api.Unknown, "cannot run: "},
		{"empty", api.Unknown, "cannot run: empty command"},
		{"no shell", api.Yes, "exit status 0: $HOME | false"},
		{"has stdin", api.No, "exit status 1"},
		{"undefined", api.Unknown, "not defined in this device's configuration (posture.commands)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			got, detail := c.commandCheck(context.Background(), tt.name)
			if got != tt.want {
				t.Errorf("commandCheck(%q) = %s (%s), want %s", tt.name, got, detail, tt.want)
			}
			contains(t, "detail", detail, tt.detail)
			// The timeout, plus the wait for pipes, plus slack.
			if took := time.Since(start); took > 5*time.Second {
				t.Errorf("took %v", took)
			}
		})
	}
	// The grandchild of "forks" was killed with its group.
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	proc := "/proc/" + strings.TrimSpace(string(b))
	deadline := time.Now().Add(5 * time.Second)
	for {
		stat, err := os.ReadFile(proc + "/stat")
		// Gone, or a zombie waiting for its reaper.
		if err != nil || strings.Contains(string(stat), ") Z ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("grandchild %s still running: %s", proc, stat)
		}
		time.Sleep(10 * time.Millisecond) // polling with a deadline
	}
}

func TestCommandCheckCancelled(t *testing.T) {
	c := newCollector(Config{Commands: map[string][]string{"sleeps": {"sleep", "30"}}})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	got, detail := c.commandCheck(ctx, "sleeps")
	if got != api.Unknown {
		t.Errorf("commandCheck() = %s (%s), want unknown", got, detail)
	}
	contains(t, "detail", detail, "not finished: context deadline exceeded")
}

func TestRunToolOutputCap(t *testing.T) {
	c := newCollector(Config{})
	_, err := c.runTool(context.Background(), tool{argv: []string{"sh", "-c", "head -c 5000000 /dev/zero"}})
	if err == nil || !strings.Contains(err.Error(), "output longer than") {
		t.Errorf("runTool() error = %v, want the output cap", err)
	}
	out, err := c.runTool(context.Background(), tool{argv: []string{"sh", "-c", "echo out; echo err >&2"}})
	if err != nil || string(out) != "out\n" {
		t.Errorf("runTool() = %q, %v", out, err)
	}
	_, err = c.runTool(context.Background(), tool{argv: []string{"sh", "-c", "echo bad flag >&2; exit 2"}})
	if err == nil || err.Error() != "sh: exit status 2: bad flag" {
		t.Errorf("runTool() error = %v", err)
	}
}

func TestRunToolAsUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("only root runs a program as another user")
	}
	const nobody = 65534
	c := newCollector(Config{})
	out, err := c.runTool(context.Background(), tool{argv: []string{"id", "-u"}, asUser: true, uid: nobody, gid: nobody})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(out)); got != "65534" {
		t.Errorf("id -u = %q, want 65534", got)
	}
}
