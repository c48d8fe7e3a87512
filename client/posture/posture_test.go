package posture

import (
	"context"
	"encoding/json"
	"path/filepath"
	"reflect"
	"runtime"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/internal/api"
)

// TestCollectHere runs the real collection on this machine: whatever it
// finds, every fact is valid and explained, and the report survives JSON.
func TestCollectHere(t *testing.T) {
	dir := t.TempDir()
	checks := []api.PostureCheck{
		{Name: "dir", Kind: api.CheckFile, Path: dir},
		{Name: "self", Kind: api.CheckFile, Path: filepath.Join(dir, "none")},
		{Name: "cmd", Kind: api.CheckCommand},
		{Name: "dir", Kind: api.CheckProcess, Process: "x"},
	}
	before := time.Now()
	p := Collect(context.Background(), Config{Version: "0.6.0"}, checks)
	after := time.Now()
	t.Logf("%+v", p)

	if p.OS != runtime.GOOS {
		t.Errorf("OS = %q, want %q", p.OS, runtime.GOOS)
	}
	if p.OSVersion == "" || p.Kernel == "" || p.ClientVersion != "0.6.0" {
		t.Errorf("OSVersion %q, Kernel %q, ClientVersion %q", p.OSVersion, p.Kernel, p.ClientVersion)
	}
	if p.CollectedAt.Before(before.UTC().Truncate(time.Second)) || p.CollectedAt.After(after) || p.CollectedAt.Location() != time.UTC {
		t.Errorf("CollectedAt = %v, want in [%v, %v] in UTC", p.CollectedAt, before, after)
	}
	if p.DeviceID != "" {
		t.Errorf("DeviceID = %q, want it left to the caller", p.DeviceID)
	}
	for name, f := range map[string]api.Fact{keyDiskEncryption: p.DiskEncryption, keyFirewall: p.Firewall, keyScreenLock: p.ScreenLock} {
		if !f.Valid() {
			t.Errorf("%s = %q, not a valid fact", name, f)
		}
		if p.Details[name] == "" {
			t.Errorf("%s = %s with no detail", name, f)
		}
	}
	if len(p.Checks) != 3 || p.Checks[0].Name != "dir" || p.Checks[1].Name != "self" || p.Checks[2].Name != "cmd" {
		t.Fatalf("Checks = %+v, want dir, self, cmd", p.Checks)
	}
	for _, r := range p.Checks {
		if !r.Pass.Valid() || r.Detail == "" {
			t.Errorf("check %+v: want a valid result with a detail", r)
		}
	}
	if p.Checks[0].Pass != api.No || p.Checks[1].Pass != api.No || p.Checks[2].Pass != api.Unknown {
		t.Errorf("Checks = %+v, want no, no, unknown", p.Checks)
	}

	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	var back api.Posture
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, p) {
		t.Errorf("JSON round trip changed the report:\n%+v\n%+v", back, p)
	}

	// Collected again, nothing has changed.
	if again := Collect(context.Background(), Config{Version: "0.6.0"}, checks); Changed(p, again) {
		t.Errorf("Changed() between two collections:\n%+v\n%+v", p, again)
	}
}

func TestCollectWithoutVersion(t *testing.T) {
	p := Collect(context.Background(), Config{}, nil)
	if p.ClientVersion != "unknown" || p.Details[keyClientVersion] == "" {
		t.Errorf("ClientVersion = %q (%q), want unknown with a detail", p.ClientVersion, p.Details[keyClientVersion])
	}
	if p.Checks != nil {
		t.Errorf("Checks = %+v, want none", p.Checks)
	}
}

func TestChanged(t *testing.T) {
	base := func() api.Posture {
		return api.Posture{
			DeviceID: "dev-1", OS: "linux", OSVersion: "Debian", Kernel: "6.12", ClientVersion: "0.6.0",
			DiskEncryption: api.Yes, Firewall: api.No, ScreenLock: api.Unknown,
			Details: map[string]string{"firewall": "nftables: no chain"},
			Checks:  []api.CheckResult{{Name: "a", Pass: api.Yes, Detail: "pid 1"}, {Name: "b", Pass: api.No}},
		}
	}
	tests := []struct {
		name   string
		change func(p *api.Posture)
		want   bool
	}{
		{"same", func(p *api.Posture) {}, false},
		{"collected later", func(p *api.Posture) { p.CollectedAt = p.CollectedAt.Add(1) }, false},
		{"other details", func(p *api.Posture) { p.Details = map[string]string{"x": "y"} }, false},
		{"other check detail", func(p *api.Posture) { p.Checks[0].Detail = "pid 2" }, false},
		{"checks reordered", func(p *api.Posture) { p.Checks[0], p.Checks[1] = p.Checks[1], p.Checks[0] }, false},
		{"device", func(p *api.Posture) { p.DeviceID = "dev-2" }, true},
		{"os version", func(p *api.Posture) { p.OSVersion = "Debian 13" }, true},
		{"kernel", func(p *api.Posture) { p.Kernel = "6.13" }, true},
		{"client", func(p *api.Posture) { p.ClientVersion = "0.7.0" }, true},
		{"disk", func(p *api.Posture) { p.DiskEncryption = api.Unknown }, true},
		{"firewall", func(p *api.Posture) { p.Firewall = api.Yes }, true},
		{"screen lock", func(p *api.Posture) { p.ScreenLock = api.No }, true},
		{"check result", func(p *api.Posture) { p.Checks[1].Pass = api.Yes }, true},
		{"check added", func(p *api.Posture) { p.Checks = append(p.Checks, api.CheckResult{Name: "c", Pass: api.Yes}) }, true},
		{"check removed", func(p *api.Posture) { p.Checks = p.Checks[:1] }, true},
		{"check renamed", func(p *api.Posture) { p.Checks[1].Name = "c" }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := base(), base()
			tt.change(&b)
			if got := Changed(a, b); got != tt.want {
				t.Errorf("Changed(a, b) = %v, want %v", got, tt.want)
			}
			if got := Changed(b, a); got != tt.want {
				t.Errorf("Changed(b, a) = %v, want %v", got, tt.want)
			}
		})
	}
}
