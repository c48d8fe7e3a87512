package posture

import (
	"testing"

	"github.com/keyhole-net/keyhole/internal/api"
)

// Device paths below /sys/devices, as on a real machine.
const (
	sdaPath  = "pci0000:00/0000:00:1f.2/ata1/block/sda"
	sdbPath  = "pci0000:00/0000:00:1f.2/ata2/block/sdb"
	dm0Path  = "virtual/block/dm-0"
	dm1Path  = "virtual/block/dm-1"
	md0Path  = "virtual/block/md0"
	loopPath = "virtual/block/loop0"
)

func TestDiskEncryption(t *testing.T) {
	tests := []struct {
		name string
		// build makes the tree: devices and the root mount.
		build func(r *fakeRoot)
		want  api.Fact
		// detail must contain this.
		detail string
	}{
		{
			name: "crypt directly under /",
			build: func(r *fakeRoot) {
				r.blockDev(sdaPath, "8:0")
				sda2 := r.blockDev(sdaPath+"/sda2", "8:2")
				r.partition(sda2)
				dm0 := r.blockDev(dm0Path, "254:0")
				r.dm(dm0, "CRYPT-LUKS2-0f1e2d3c4b5a69788796a5b4c3d2e1f0-luks-root", "luks-root")
				r.slave(dm0, sda2)
				r.rootMount("254:0", "ext4", "/dev/mapper/luks-root")
			},
			want:   api.Yes,
			detail: "/ is on dm-0 (dm-crypt LUKS2, luks-root)",
		},
		{
			name: "LVM on crypt",
			build: func(r *fakeRoot) {
				r.blockDev(sdaPath, "8:0")
				sda3 := r.blockDev(sdaPath+"/sda3", "8:3")
				r.partition(sda3)
				dm0 := r.blockDev(dm0Path, "254:0")
				r.dm(dm0, "CRYPT-LUKS1-abc-cryptlvm", "cryptlvm")
				r.slave(dm0, sda3)
				dm1 := r.blockDev(dm1Path, "254:1")
				r.dm(dm1, "LVM-Kx9yZ", "vg-root")
				r.slave(dm1, dm0)
				r.rootMount("254:1", "ext4", "/dev/mapper/vg-root")
			},
			want:   api.Yes,
			detail: "/ is on dm-1 (LVM vg-root) on dm-0 (dm-crypt LUKS1, cryptlvm)",
		},
		{
			name: "plain partition",
			build: func(r *fakeRoot) {
				r.blockDev(sdaPath, "8:0")
				sda2 := r.blockDev(sdaPath+"/sda2", "8:2")
				r.partition(sda2)
				r.rootMount("8:2", "ext4", "/dev/sda2")
			},
			want:   api.No,
			detail: "/ is on sda2 (partition of sda), with no dm-crypt layer",
		},
		{
			name: "plain whole disk",
			build: func(r *fakeRoot) {
				r.blockDev("pci0000:00/0000:00:02.0/virtio1/block/vda", "254:0")
				r.rootMount("254:0", "ext4", "/dev/vda")
			},
			want:   api.No,
			detail: "/ is on vda, with no dm-crypt layer",
		},
		{
			name: "LVM on a plain partition",
			build: func(r *fakeRoot) {
				r.blockDev(sdaPath, "8:0")
				sda2 := r.blockDev(sdaPath+"/sda2", "8:2")
				r.partition(sda2)
				dm0 := r.blockDev(dm0Path, "254:0")
				r.dm(dm0, "LVM-abc", "vg-root")
				r.slave(dm0, sda2)
				r.rootMount("254:0", "xfs", "/dev/mapper/vg-root")
			},
			want:   api.No,
			detail: "with no dm-crypt layer",
		},
		{
			name: "LVM spanning a crypt and a plain disk",
			build: func(r *fakeRoot) {
				sda := r.blockDev(sdaPath, "8:0")
				sdb := r.blockDev(sdbPath, "8:16")
				dm0 := r.blockDev(dm0Path, "254:0")
				r.dm(dm0, "CRYPT-LUKS2-abc-c", "c")
				r.slave(dm0, sda)
				dm1 := r.blockDev(dm1Path, "254:1")
				r.dm(dm1, "LVM-abc", "vg-root")
				r.slave(dm1, dm0)
				r.slave(dm1, sdb)
				r.rootMount("254:1", "ext4", "/dev/mapper/vg-root")
			},
			want:   api.No,
			detail: "not all of it on dm-crypt",
		},
		{
			name: "partition of RAID1 over two crypt devices",
			build: func(r *fakeRoot) {
				sda := r.blockDev(sdaPath, "8:0")
				sdb := r.blockDev(sdbPath, "8:16")
				dm0 := r.blockDev(dm0Path, "254:0")
				r.dm(dm0, "CRYPT-LUKS2-a-c0", "c0")
				r.slave(dm0, sda)
				dm1 := r.blockDev(dm1Path, "254:1")
				r.dm(dm1, "CRYPT-LUKS2-b-c1", "c1")
				r.slave(dm1, sdb)
				md0 := r.blockDev(md0Path, "9:0")
				r.write("/sys/devices/"+md0Path+"/md/level", "raid1\n")
				r.slave(md0, dm0)
				r.slave(md0, dm1)
				p1 := r.blockDev(md0Path+"/md0p1", "259:0")
				r.partition(p1)
				r.rootMount("259:0", "ext4", "/dev/md0p1")
			},
			want:   api.Yes,
			detail: "md0p1 (partition of md0 on (dm-0 (dm-crypt LUKS2, c0) and dm-1 (dm-crypt LUKS2, c1)))",
		},
		{
			name: "integrity device is not crypt",
			build: func(r *fakeRoot) {
				sda := r.blockDev(sdaPath, "8:0")
				dm0 := r.blockDev(dm0Path, "254:0")
				r.dm(dm0, "CRYPT-SUBDEV-abc-x_dif", "x_dif")
				r.slave(dm0, sda)
				r.rootMount("254:0", "ext4", "/dev/mapper/x_dif")
			},
			want:   api.No,
			detail: "/ is on dm-0 (CRYPT x_dif) on sda, with no dm-crypt layer",
		},
		{
			name: "btrfs names its device as the source",
			build: func(r *fakeRoot) {
				sda := r.blockDev(sdaPath, "8:0")
				dm0 := r.blockDev(dm0Path, "254:0")
				r.dm(dm0, "CRYPT-LUKS2-abc-luks-1234", "luks-1234")
				r.slave(dm0, sda)
				r.rootMount("0:33", "btrfs", "/dev/mapper/luks-1234")
			},
			want:   api.Yes,
			detail: "dm-crypt LUKS2",
		},
		{
			name: "btrfs on a plain partition",
			build: func(r *fakeRoot) {
				r.blockDev(sdaPath, "8:0")
				r.partition(r.blockDev(sdaPath+"/sda2", "8:2"))
				r.rootMount("0:33", "btrfs", "/dev/sda2")
			},
			want:   api.No,
			detail: "/ is on sda2 (partition of sda)",
		},
		{
			name: "btrfs on a device not in /sys",
			build: func(r *fakeRoot) {
				r.rootMount("0:33", "btrfs", "/dev/disk/by-uuid/1234")
			},
			want:   api.Unknown,
			detail: "whose block device cannot be found",
		},
		{
			name: "overlay root of a container",
			build: func(r *fakeRoot) {
				r.rootMount("0:52", "overlay", "overlay")
			},
			want:   api.Unknown,
			detail: "/ is an overlay file system (a container's root?)",
		},
		{
			name: "tmpfs root",
			build: func(r *fakeRoot) {
				r.rootMount("0:2", "tmpfs", "none")
			},
			want:   api.Unknown,
			detail: "in memory",
		},
		{
			name: "9p root of a VM",
			build: func(r *fakeRoot) {
				r.rootMount("0:27", "9p", "rootfs")
			},
			want:   api.Unknown,
			detail: `/ is a 9p file system from "rootfs"`,
		},
		{
			name: "device-mapper device without a uuid",
			build: func(r *fakeRoot) {
				sda := r.blockDev(sdaPath, "8:0")
				dm0 := r.blockDev(dm0Path, "254:0")
				r.dm(dm0, "", "hand-made")
				r.slave(dm0, sda)
				r.rootMount("254:0", "ext4", "/dev/mapper/hand-made")
			},
			want:   api.Unknown,
			detail: "dm-0 is a device-mapper device without a uuid",
		},
		{
			name: "loop device",
			build: func(r *fakeRoot) {
				loop := r.blockDev(loopPath, "7:0")
				r.write(loop+"/loop/backing_file", "/var/lib/images/root.img\n")
				r.rootMount("7:0", "ext4", "/dev/loop0")
			},
			want:   api.Unknown,
			detail: "loop0 is backed by the file /var/lib/images/root.img",
		},
		{
			name: "root device missing from /sys",
			build: func(r *fakeRoot) {
				r.rootMount("8:2", "ext4", "/dev/sda2")
			},
			want:   api.Unknown,
			detail: "which is not in /sys/dev/block",
		},
		{
			name:   "no mountinfo",
			build:  func(r *fakeRoot) {},
			want:   api.Unknown,
			detail: "cannot read /proc/self/mountinfo: no such file or directory",
		},
		{
			name: "garbled mountinfo",
			build: func(r *fakeRoot) {
				r.write("/proc/self/mountinfo", "26 1 254:0 / / rw\n")
			},
			want:   api.Unknown,
			detail: "cannot parse /proc/self/mountinfo: line 1",
		},
		{
			name: "no root mount",
			build: func(r *fakeRoot) {
				r.write("/proc/self/mountinfo", "21 1 0:20 / /proc rw - proc proc rw\n")
			},
			want:   api.Unknown,
			detail: "no mount at /",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newFakeRoot(t)
			tt.build(r)
			got, detail := r.collector().diskEncryption()
			if got != tt.want {
				t.Errorf("diskEncryption() = %s (%s), want %s", got, detail, tt.want)
			}
			contains(t, "detail", detail, tt.detail)
		})
	}
}

func TestCryptType(t *testing.T) {
	tests := []struct {
		uuid string
		want string
		ok   bool
	}{
		{"CRYPT-LUKS2-0f1e2d3c4b5a69788796a5b4c3d2e1f0-luks-root", "LUKS2", true},
		{"CRYPT-PLAIN-swap", "PLAIN", true},
		{"CRYPT-BITLK-abc-win", "BITLK", true},
		{"CRYPT-SUBDEV-abc-x_dif", "", false},
		{"CRYPT-", "", false},
		{"LVM-abc", "", false},
		{"", "", false},
	}
	for _, tt := range tests {
		got, ok := cryptType(tt.uuid)
		if got != tt.want || ok != tt.ok {
			t.Errorf("cryptType(%q) = %q, %v; want %q, %v", tt.uuid, got, ok, tt.want, tt.ok)
		}
	}
}

func TestAnd(t *testing.T) {
	for _, tt := range []struct{ a, b, want api.Fact }{
		{api.Yes, api.Yes, api.Yes},
		{api.Yes, api.No, api.No},
		{api.Unknown, api.No, api.No},
		{api.Yes, api.Unknown, api.Unknown},
		{api.Unknown, api.Unknown, api.Unknown},
	} {
		if got := and(tt.a, tt.b); got != tt.want {
			t.Errorf("and(%s, %s) = %s, want %s", tt.a, tt.b, got, tt.want)
		}
	}
}
