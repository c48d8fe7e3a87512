package posture

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// fakeRoot is a fake system tree (proc, sys, etc) in a temporary
// directory, for a collector whose Root points at it.
type fakeRoot struct {
	t   *testing.T
	dir string
}

func newFakeRoot(t *testing.T) *fakeRoot {
	t.Helper()
	return &fakeRoot{t: t, dir: t.TempDir()}
}

// collector returns a collector reading this tree, whose tools fail
// unless the test replaces output.
func (r *fakeRoot) collector() *collector {
	c := newCollector(Config{Root: r.dir})
	c.output = func(_ context.Context, t tool) ([]byte, error) {
		return nil, fmt.Errorf("%s: no such tool in this test", t)
	}
	return c
}

// write creates the file at name (a system path such as "/etc/os-release")
// with content.
func (r *fakeRoot) write(name, content string) {
	r.t.Helper()
	p := filepath.Join(r.dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		r.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		r.t.Fatal(err)
	}
}

// symlink makes name a relative symbolic link to target, both system
// paths, as sysfs links are.
func (r *fakeRoot) symlink(name, target string) {
	r.t.Helper()
	p := filepath.Join(r.dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		r.t.Fatal(err)
	}
	rel, err := filepath.Rel(filepath.Dir(name), target)
	if err != nil {
		r.t.Fatal(err)
	}
	if err := os.Symlink(rel, p); err != nil {
		r.t.Fatal(err)
	}
}

// rootMount writes /proc/self/mountinfo with / mounted from source.
func (r *fakeRoot) rootMount(majMin, fsType, source string) {
	r.write("/proc/self/mountinfo", fmt.Sprintf(
		"1 0 %s / / rw,relatime shared:1 - %s %s rw\n"+
			"21 1 0:20 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw\n",
		majMin, fsType, source))
}

// blockDev adds a block device at path below /sys/devices (its last
// element is its name) with its links in /sys/dev/block, /sys/class/block
// and, for a whole device, /sys/block.
func (r *fakeRoot) blockDev(path, majMin string) string {
	dir := "/sys/devices/" + path
	name := filepath.Base(dir)
	r.write(dir+"/dev", majMin+"\n")
	r.symlink("/sys/dev/block/"+majMin, dir)
	r.symlink("/sys/class/block/"+name, dir)
	if filepath.Base(filepath.Dir(dir)) == "block" {
		r.symlink("/sys/block/"+name, dir)
	}
	return dir
}

// partition marks dir a partition of the device above it.
func (r *fakeRoot) partition(dir string) {
	r.write(dir+"/partition", "2\n")
}

// dm makes dir a device-mapper device.
func (r *fakeRoot) dm(dir, uuid, name string) {
	r.write(dir+"/dm/uuid", uuid+"\n")
	r.write(dir+"/dm/name", name+"\n")
}

// slave puts lower below upper.
func (r *fakeRoot) slave(upper, lower string) {
	r.symlink(upper+"/slaves/"+filepath.Base(lower), lower)
}
