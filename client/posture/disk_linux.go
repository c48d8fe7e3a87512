package posture

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/keyhole-net/keyhole/internal/api"
	"golang.org/x/sys/unix"
)

// maxBlockDepth bounds the walk down a device stack (LVM on dm-crypt on a
// RAID partition is four).
const maxBlockDepth = 16

// maxSysAttrBytes caps a sysfs attribute read (dm/uuid, dev).
const maxSysAttrBytes = 4 << 10

// diskEncryption reports whether the volume holding "/" sits on a dm-crypt
// device: it finds the block device of / in /proc/self/mountinfo and walks
// down its stack in /sys (device-mapper slaves, RAID members, a
// partition's disk).
func (c *collector) diskEncryption() (api.Fact, string) {
	data, err := readCapped(c.path("/proc/self/mountinfo"), maxMountinfoBytes)
	if err != nil {
		return api.Unknown, "cannot read /proc/self/mountinfo: " + errText(err)
	}
	mounts, err := parseMountinfo(data)
	if err != nil {
		return api.Unknown, "cannot parse /proc/self/mountinfo: " + err.Error()
	}
	root, ok := rootMount(mounts)
	if !ok {
		return api.Unknown, "no mount at / in /proc/self/mountinfo"
	}
	dev := fmt.Sprintf("%d:%d", root.major, root.minor)
	if root.major == 0 {
		// No block device behind the mount itself: an overlay or tmpfs,
		// or btrfs, which gives every subvolume an anonymous device but
		// names its real one as the source.
		if !strings.HasPrefix(root.source, "/dev/") {
			return api.Unknown, notOnBlockDevice(root)
		}
		if dev, err = c.blockDeviceNumber(root.source); err != nil {
			return api.Unknown, fmt.Sprintf("/ is %s on %s, whose block device cannot be found: %v", root.fsType, root.source, err)
		}
	}
	dir, err := filepath.EvalSymlinks(c.path("/sys/dev/block/" + dev))
	if err != nil {
		return api.Unknown, fmt.Sprintf("/ is %s on %s (%s), which is not in /sys/dev/block: %s", root.fsType, root.source, dev, errText(err))
	}
	w := stackWalker{visited: make(map[string]bool)}
	n := w.walk(dir, 0)
	switch {
	case n.fact == api.Yes:
		return api.Yes, "/ is on " + n.desc
	case n.fact == api.Unknown:
		return api.Unknown, "/ is on " + n.desc + "; " + w.reason
	case w.sawCrypt:
		return api.No, "/ is on " + n.desc + ", not all of it on dm-crypt"
	}
	return api.No, "/ is on " + n.desc + ", with no dm-crypt layer"
}

// notOnBlockDevice explains a root file system that has no block device
// of its own.
func notOnBlockDevice(m mount) string {
	switch m.fsType {
	case "overlay", "aufs", "fuse-overlayfs":
		return fmt.Sprintf("/ is an %s file system (a container's root?); the disk below it is not visible here", m.fsType)
	case "tmpfs", "ramfs", "rootfs":
		return fmt.Sprintf("/ is a %s file system in memory; the disk the system came from is not visible here", m.fsType)
	case "zfs":
		return fmt.Sprintf("/ is ZFS dataset %s; ZFS native encryption is not inspected", m.source)
	}
	return fmt.Sprintf("/ is a %s file system from %q, not on a local block device; the disk below it is not visible here", m.fsType, m.source)
}

// blockDeviceNumber returns "MAJ:MIN" of a /dev path: from the device node
// when there is one under root, else by name from /sys (/dev/NAME,
// /dev/mapper/NAME, /dev/VG/LV).
func (c *collector) blockDeviceNumber(devPath string) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(c.path(devPath), &st); err == nil && st.Mode&syscall.S_IFMT == syscall.S_IFBLK {
		return fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev)), nil
	}
	rel := strings.TrimPrefix(filepath.Clean(devPath), "/dev/")
	var attr string
	switch parts := strings.Split(rel, "/"); {
	case len(parts) == 1:
		attr = "/sys/class/block/" + parts[0] + "/dev"
	case len(parts) == 2 && parts[0] == "mapper":
		return c.dmDeviceNumber(parts[1])
	case len(parts) == 2:
		// LVM names its mapping VG-LV, doubling dashes within each.
		return c.dmDeviceNumber(strings.ReplaceAll(parts[0], "-", "--") + "-" + strings.ReplaceAll(parts[1], "-", "--"))
	default:
		return "", errors.New("no such device node and no rule to find it in /sys")
	}
	b, err := readCapped(c.path(attr), maxSysAttrBytes)
	if err != nil {
		return "", fmt.Errorf("read %s: %s", attr, errText(err))
	}
	return strings.TrimSpace(string(b)), nil
}

// dmDeviceNumber finds the device-mapper device named name.
func (c *collector) dmDeviceNumber(name string) (string, error) {
	entries, err := os.ReadDir(c.path("/sys/block"))
	if err != nil {
		return "", fmt.Errorf("read /sys/block: %s", errText(err))
	}
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "dm-") {
			continue
		}
		dir := c.path("/sys/block/" + e.Name())
		if got, err := readCapped(filepath.Join(dir, "dm/name"), maxSysAttrBytes); err != nil || strings.TrimSpace(string(got)) != name {
			continue
		}
		b, err := readCapped(filepath.Join(dir, "dev"), maxSysAttrBytes)
		if err != nil {
			return "", fmt.Errorf("read /sys/block/%s/dev: %s", e.Name(), errText(err))
		}
		return strings.TrimSpace(string(b)), nil
	}
	return "", fmt.Errorf("no device-mapper device named %q in /sys/block", name)
}

// stackWalker walks down a block device stack in /sys.
type stackWalker struct {
	visited  map[string]bool
	sawCrypt bool
	reason   string // why the walk is unknown: the first reason found
}

// stackNode is what the walk found at and below one device: whether all
// of it is on dm-crypt, and a description for people ("dm-1 (LVM
// vg-root) on dm-0 (dm-crypt LUKS2)").
type stackNode struct {
	fact api.Fact
	desc string
}

func (w *stackWalker) unknown(desc, reason string) stackNode {
	if w.reason == "" {
		w.reason = reason
	}
	return stackNode{api.Unknown, desc}
}

// walk describes the device whose /sys/devices directory is dir.
func (w *stackWalker) walk(dir string, depth int) stackNode {
	name := filepath.Base(dir)
	if depth > maxBlockDepth {
		return w.unknown(name, fmt.Sprintf("the device stack is deeper than %d", maxBlockDepth))
	}
	if w.visited[dir] {
		return w.unknown(name, "the device stack has a cycle at "+name)
	}
	w.visited[dir] = true

	desc := name
	uuid, err := readCapped(filepath.Join(dir, "dm/uuid"), maxSysAttrBytes)
	isDM := err == nil
	switch {
	case isDM:
		u := strings.TrimSpace(string(uuid))
		dmName, _ := readCapped(filepath.Join(dir, "dm/name"), maxSysAttrBytes)
		if t, ok := cryptType(u); ok {
			w.sawCrypt = true
			return stackNode{api.Yes, fmt.Sprintf("%s (dm-crypt %s, %s)", name, t, strings.TrimSpace(string(dmName)))}
		}
		if u == "" {
			return w.unknown(name, name+" is a device-mapper device without a uuid, so what it maps is not known")
		}
		kind, _, _ := strings.Cut(u, "-")
		desc = fmt.Sprintf("%s (%s %s)", name, kind, strings.TrimSpace(string(dmName)))
	case !errors.Is(err, fs.ErrNotExist):
		return w.unknown(name, fmt.Sprintf("cannot read %s/dm/uuid: %s", name, errText(err)))
	}

	slaves, err := os.ReadDir(filepath.Join(dir, "slaves"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return w.unknown(desc, fmt.Sprintf("cannot read %s/slaves: %s", name, errText(err)))
	}
	if len(slaves) > 0 {
		// All of the device is encrypted only if every device below is
		// (an LV spanning a plain disk is not).
		fact := api.Yes
		var below []string
		for _, s := range slaves {
			sdir, err := filepath.EvalSymlinks(filepath.Join(dir, "slaves", s.Name()))
			var n stackNode
			if err != nil {
				n = w.unknown(s.Name(), fmt.Sprintf("cannot resolve %s/slaves/%s: %s", name, s.Name(), errText(err)))
			} else {
				n = w.walk(sdir, depth+1)
			}
			below = append(below, n.desc)
			fact = and(fact, n.fact)
		}
		if len(below) == 1 {
			return stackNode{fact, desc + " on " + below[0]}
		}
		return stackNode{fact, desc + " on (" + strings.Join(below, " and ") + ")"}
	}
	if isDM {
		// A mapping of nothing (zero, error) or of what /sys does not
		// show: it is not dm-crypt, and has nothing below to be.
		return stackNode{api.No, desc}
	}
	if _, err := os.Stat(filepath.Join(dir, "partition")); err == nil {
		n := w.walk(filepath.Dir(dir), depth+1)
		return stackNode{n.fact, desc + " (partition of " + n.desc + ")"}
	}
	if b, err := readCapped(filepath.Join(dir, "loop/backing_file"), maxSysAttrBytes); err == nil {
		return w.unknown(desc, fmt.Sprintf("%s is backed by the file %s, whose disk is not inspected", name, strings.TrimSpace(string(b))))
	}
	return stackNode{api.No, desc}
}

// cryptType returns the type in a dm-crypt device's uuid
// ("CRYPT-LUKS2-<uuid>-<name>" gives "LUKS2"). The integrity devices
// cryptsetup puts below an authenticated LUKS2 device (CRYPT-SUBDEV) are
// not themselves encrypted.
func cryptType(uuid string) (string, bool) {
	rest, ok := strings.CutPrefix(uuid, "CRYPT-")
	if !ok {
		return "", false
	}
	t, _, _ := strings.Cut(rest, "-")
	if t == "" || t == "SUBDEV" {
		return "", false
	}
	return t, true
}

// and is Kleene's three-valued conjunction: No wins, then Unknown.
func and(a, b api.Fact) api.Fact {
	switch {
	case a == api.No || b == api.No:
		return api.No
	case a == api.Unknown || b == api.Unknown:
		return api.Unknown
	}
	return api.Yes
}
