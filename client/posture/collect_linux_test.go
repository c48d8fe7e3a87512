package posture

import (
	"context"
	"errors"
	"testing"

	"github.com/keyhole-net/keyhole/internal/api"
)

// TestCollectFakeRoot collects from a fake tree: a container whose root is
// an overlay.
func TestCollectFakeRoot(t *testing.T) {
	r := newFakeRoot(t)
	r.write("/etc/os-release", "PRETTY_NAME=\"Fake OS 1 (test)\"\n")
	r.fakeProcesses(map[int][2]string{7: {"edr", "/opt/edr/edr"}})
	r.rootMount("0:52", "overlay", "overlay")
	c := r.collector()
	c.uname = func() (string, error) { return "", errors.New("no uname here") }
	p := c.collect(context.Background(), []api.PostureCheck{{Name: "edr", Kind: api.CheckProcess, Process: "edr"}})

	if p.OSVersion != "Fake OS 1 (test)" {
		t.Errorf("OSVersion = %q", p.OSVersion)
	}
	if p.Kernel != "unknown" || p.Details[keyKernel] != "uname: no uname here" {
		t.Errorf("Kernel = %q (%q), want unknown with the reason", p.Kernel, p.Details[keyKernel])
	}
	if p.DiskEncryption != api.Unknown {
		t.Errorf("DiskEncryption = %s, want unknown", p.DiskEncryption)
	}
	contains(t, "disk detail", p.Details[keyDiskEncryption], "a container's root?")
	if p.ScreenLock != api.Unknown {
		t.Errorf("ScreenLock = %s, want unknown", p.ScreenLock)
	}
	if len(p.Checks) != 1 || p.Checks[0].Pass != api.Yes {
		t.Errorf("Checks = %+v, want edr running", p.Checks)
	}
}

func TestKernelRelease(t *testing.T) {
	k, err := kernelRelease()
	if err != nil || k == "" {
		t.Errorf("kernelRelease() = %q, %v", k, err)
	}
}
