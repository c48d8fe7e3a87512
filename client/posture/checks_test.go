package posture

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyhole-net/keyhole/internal/api"
)

// sha256 of "test".
const testSHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

func TestFileCheck(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "edr.conf")
	if err := os.WriteFile(file, []byte("test"), 0o644); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big")
	f, err := os.Create(big)
	if err != nil {
		t.Fatal(err)
	}
	// Sparse: no disk used, and never read.
	if err := f.Truncate(maxHashBytes + 1); err != nil {
		t.Fatal(err)
	}
	f.Close()
	link := filepath.Join(dir, "link")
	if err := os.Symlink(file, link); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		path   string
		sha    string
		want   api.Fact
		detail string
	}{
		{"exists", file, "", api.Yes, "exists"},
		{"hash matches", file, testSHA, api.Yes, "sha256 matches"},
		{"hash in capitals", file, strings.ToUpper(testSHA), api.Yes, "sha256 matches"},
		{"hash mismatch", file, strings.Repeat("12", 32), api.No, "sha256 is 9f86d081884c…, want 121212121212…"},
		{"through a symbolic link", link, testSHA, api.Yes, "sha256 matches"},
		{"missing", filepath.Join(dir, "nope"), "", api.No, "missing"},
		{"missing with hash", filepath.Join(dir, "nope"), testSHA, api.No, "missing"},
		{"below a file", filepath.Join(file, "x"), "", api.No, "missing"},
		{"directory", dir, "", api.No, "not a regular file (a directory)"},
		{"too large to hash", big, testSHA, api.Unknown, "larger than the 256 MiB"},
		{"too large but no hash asked", big, "", api.Yes, "exists"},
		{"relative path", "edr.conf", "", api.Unknown, "is not absolute"},
		{"bad hash in check", file, "abc", api.Unknown, "not 64 hex digits"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, detail := fileCheck(context.Background(), tt.path, tt.sha)
			if got != tt.want {
				t.Errorf("fileCheck() = %s (%s), want %s", got, detail, tt.want)
			}
			contains(t, "detail", detail, tt.detail)
		})
	}
}

func TestFileCheckUnreadable(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root reads any file")
	}
	file := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(file, []byte("test"), 0o000); err != nil {
		t.Fatal(err)
	}
	got, detail := fileCheck(context.Background(), file, testSHA)
	if got != api.Unknown {
		t.Errorf("fileCheck() = %s (%s), want unknown", got, detail)
	}
	contains(t, "detail", detail, "permission denied")
}

func TestFileCheckCancelled(t *testing.T) {
	file := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(file, []byte("test"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if got, detail := fileCheck(ctx, file, testSHA); got != api.Unknown {
		t.Errorf("fileCheck() = %s (%s), want unknown", got, detail)
	}
}

func TestRunChecksOrderAndDuplicates(t *testing.T) {
	dir := t.TempDir()
	c := newCollector(Config{})
	checks := []api.PostureCheck{
		{Name: "b", Kind: api.CheckFile, Path: dir},
		{Name: "a", Kind: api.CheckFile, Path: filepath.Join(dir, "none")},
		{Name: "b", Kind: api.CheckFile, Path: "/ignored"},
		{Name: "c", Kind: "registry"},
		{Name: "d", Kind: api.CheckCommand},
	}
	got := c.runChecks(context.Background(), checks)
	want := []api.CheckResult{
		{Name: "b", Pass: api.No},
		{Name: "a", Pass: api.No},
		{Name: "c", Pass: api.Unknown},
		{Name: "d", Pass: api.Unknown},
	}
	if len(got) != len(want) {
		t.Fatalf("runChecks() = %+v, want %d results", got, len(want))
	}
	for i := range want {
		if got[i].Name != want[i].Name || got[i].Pass != want[i].Pass {
			t.Errorf("result %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	contains(t, "unknown kind", got[2].Detail, `unknown kind of check "registry"`)
	contains(t, "undefined command", got[3].Detail, "not defined in this device's configuration (posture.commands)")

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, r := range c.runChecks(ctx, checks) {
		if r.Pass != api.Unknown {
			t.Errorf("cancelled: %+v, want unknown", r)
		}
	}
}

// contains fails the test unless s contains want.
func contains(t *testing.T, what, s, want string) {
	t.Helper()
	if !strings.Contains(s, want) {
		t.Errorf("%s = %q, want it to contain %q", what, s, want)
	}
}
