package posture

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/keyhole-net/keyhole/internal/api"
)

// fakeProcesses fills the fake /proc with processes: pid → comm and
// executable path ("" for a kernel thread, which has none).
func (r *fakeRoot) fakeProcesses(procs map[int][2]string) {
	for pid, p := range procs {
		dir := fmt.Sprintf("/proc/%d", pid)
		r.write(dir+"/comm", p[0]+"\n")
		if p[1] != "" {
			r.symlink(dir+"/exe", p[1])
		}
	}
	r.write("/proc/self/mountinfo", "1 0 8:2 / / rw - ext4 /dev/sda2 rw\n")
}

func TestProcessCheck(t *testing.T) {
	procs := map[int][2]string{
		1:    {"systemd", "/usr/lib/systemd/systemd"},
		2:    {"kthreadd", ""},
		812:  {"falcon-sensor", "/opt/CrowdStrike/falcon-sensor"},
		900:  {"python3", "/usr/bin/python3.12"},
		1001: {"crowdstrike-age", "/opt/cs/crowdstrike-agentd"},     // comm cut to 15 bytes
		1002: {"osqueryd-wrappe", ""},                               // cut, executable unreadable
		1003: {"edr", "/usr/sbin/edr-daemon (deleted)"},             // replaced on disk
		1004: {"renamed", "/usr/bin/sentinel-agent"},                // comm changed by the process
		1005: {"averyveryverylo", "/usr/bin/averyveryverylongname"}, // exactly cut
	}
	tests := []struct {
		process string
		want    api.Fact
		detail  string
	}{
		{"systemd", api.Yes, "pid 1 runs systemd"},
		{"falcon-sensor", api.Yes, "pid 812"},
		{"kthreadd", api.Yes, "pid 2 is named kthreadd"},
		{"python3.12", api.Yes, "pid 900 runs python3.12"},
		{"crowdstrike-agentd", api.Yes, "pid 1001 runs crowdstrike-agentd"},
		{"edr-daemon", api.Yes, "pid 1003"},
		{"sentinel-agent", api.Yes, "pid 1004"},
		{"osqueryd-wrapper", api.Unknown, "pid 1002 is named osqueryd-wrappe, which osqueryd-wrapper is cut to, and its executable cannot be read"},
		{"crowdstrike-agent", api.No, "no process named crowdstrike-agent among 9"}, // cut name matches but the executable says otherwise
		{"sshd", api.No, "no process named sshd among 9"},
		{"falcon", api.No, ""},
		{"/opt/CrowdStrike/falcon-sensor", api.Unknown, "is a path"},
		{"", api.Unknown, "names no process"},
	}
	r := newFakeRoot(t)
	r.fakeProcesses(procs)
	r.write("/proc/self/status", "Name: not a pid\n") // not a process directory
	r.write("/proc/0/comm", "swapper\n")              // not a process either
	c := r.collector()
	c.euid = 0
	for _, tt := range tests {
		got, detail := c.processCheck(context.Background(), tt.process)
		if got != tt.want {
			t.Errorf("processCheck(%q) = %s (%s), want %s", tt.process, got, detail, tt.want)
		}
		contains(t, "detail of "+tt.process, detail, tt.detail)
	}
}

func TestProcessScanHidden(t *testing.T) {
	r := newFakeRoot(t)
	r.fakeProcesses(map[int][2]string{4242: {"bash", "/usr/bin/bash"}})
	r.write("/proc/self/mountinfo",
		"1 0 8:2 / / rw - ext4 /dev/sda2 rw\n"+
			"21 1 0:20 / /proc rw,nosuid - proc proc rw,hidepid=invisible\n")
	c := r.collector()
	c.euid = 1000
	got, detail := c.processCheck(context.Background(), "edr")
	if got != api.Unknown {
		t.Errorf("processCheck() = %s (%s), want unknown", got, detail)
	}
	contains(t, "detail", detail, "hidepid=invisible")
	// A process it can see is still found.
	if got, detail := c.processCheck(context.Background(), "bash"); got != api.Yes {
		t.Errorf("processCheck(bash) = %s (%s), want yes", got, detail)
	}

	// Root sees every process whatever the mount says.
	c = r.collector()
	c.euid = 0
	if got, detail := c.processCheck(context.Background(), "edr"); got != api.No {
		t.Errorf("as root: processCheck() = %s (%s), want no", got, detail)
	}
}

func TestProcessScanCap(t *testing.T) {
	r := newFakeRoot(t)
	r.fakeProcesses(map[int][2]string{1: {"a", ""}, 2: {"b", ""}, 3: {"c", ""}})
	c := r.collector()
	table, err := c.scanProcesses(context.Background(), 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(table.procs) != 2 {
		t.Errorf("scanned %d processes, want the cap of 2", len(table.procs))
	}
	got, detail := table.find("none")
	if got != api.Unknown {
		t.Errorf("find() = %s (%s), want unknown past the cap", got, detail)
	}
	contains(t, "detail", detail, "scans only 2 processes")
}

func TestProcessScanErrors(t *testing.T) {
	r := newFakeRoot(t) // no /proc at all
	c := r.collector()
	got, detail := c.processCheck(context.Background(), "x")
	if got != api.Unknown {
		t.Errorf("processCheck() = %s, want unknown", got)
	}
	contains(t, "detail", detail, "cannot list /proc")

	r = newFakeRoot(t)
	r.fakeProcesses(map[int][2]string{1: {"init", ""}})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if got, detail := r.collector().processCheck(ctx, "x"); got != api.Unknown {
		t.Errorf("cancelled: processCheck() = %s (%s), want unknown", got, detail)
	}
}

func TestProcessCheckHere(t *testing.T) {
	// This test's own process is running, under its executable's name.
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	name := filepath.Base(exe)
	got, detail := newCollector(Config{}).processCheck(context.Background(), name)
	if got != api.Yes {
		t.Errorf("processCheck(%s) = %s (%s), want yes", name, got, detail)
	}
}
