package sysdns

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestResolvConfBindMount is the "ip netns exec" case: /etc/resolv.conf is
// a bind mount of /etc/netns/NS/resolv.conf, which a rename cannot replace
// (EBUSY). It needs root to mount, so it runs in the lab only.
func TestResolvConfBindMount(t *testing.T) {
	if os.Geteuid() != 0 || os.Getenv("KEYHOLE_E2E") == "" {
		t.Skip("needs root and KEYHOLE_E2E=1 (it bind-mounts a temporary file)")
	}
	f := newFakeSystem(t, origConf)
	nsFile := filepath.Join(t.TempDir(), "netns-resolv.conf")
	writeFile(t, nsFile, origConf)
	if err := syscall.Mount(nsFile, f.resolvConf, "", syscall.MS_BIND, ""); err != nil {
		t.Skipf("bind mount: %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(f.resolvConf, 0); err != nil {
			t.Errorf("unmount %s: %v", f.resolvConf, err)
		}
	})
	// The premise: renaming over a mount point fails.
	tmp := filepath.Join(filepath.Dir(f.resolvConf), "tmp")
	writeFile(t, tmp, "x")
	if err := os.Rename(tmp, f.resolvConf); !errors.Is(err, syscall.EBUSY) {
		t.Fatalf("rename over the bind mount: %v, want EBUSY", err)
	}

	_, restore := f.apply(t)
	if !isOurs([]byte(readFile(t, nsFile))) {
		t.Error("the bind-mounted file was not written")
	}
	if err := restore(); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, nsFile); got != origConf {
		t.Errorf("after restore:\n%s\nwant the original", got)
	}
}
