package posture

import (
	"strings"
	"testing"
)

func TestParseMountinfo(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []mount
		wantErr string
	}{
		{
			name: "proc(5) example",
			in:   "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n",
			want: []mount{{major: 98, minor: 0, mountPoint: "/mnt2", fsType: "ext3", source: "/dev/root", superOptions: "rw,errors=continue"}},
		},
		{
			name: "no optional fields",
			in:   "26 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard\n",
			want: []mount{{major: 254, minor: 0, mountPoint: "/", fsType: "ext4", source: "/dev/vda", superOptions: "rw,discard"}},
		},
		{
			name: "several optional fields",
			in:   "26 1 0:52 / / rw shared:1 master:2 propagate_from:3 - overlay overlay rw,lowerdir=/a:/b\n",
			want: []mount{{major: 0, minor: 52, mountPoint: "/", fsType: "overlay", source: "overlay", superOptions: "rw,lowerdir=/a:/b"}},
		},
		{
			name: "escaped mount point",
			in:   `40 26 8:17 / /mnt/my\040disk\011tab\134slash rw - vfat /dev/sdb1 rw` + "\n",
			want: []mount{{major: 8, minor: 17, mountPoint: "/mnt/my disk\ttab\\slash", fsType: "vfat", source: "/dev/sdb1", superOptions: "rw"}},
		},
		{
			name: "no super options",
			in:   "40 26 8:17 / /x rw - vfat /dev/sdb1",
			want: []mount{{major: 8, minor: 17, mountPoint: "/x", fsType: "vfat", source: "/dev/sdb1"}},
		},
		{
			name: "blank lines",
			in:   "\n26 1 254:0 / / rw - ext4 /dev/vda rw\n\n",
			want: []mount{{major: 254, minor: 0, mountPoint: "/", fsType: "ext4", source: "/dev/vda", superOptions: "rw"}},
		},
		{name: "empty", in: ""},
		{name: "no separator", in: "26 1 254:0 / / rw shared:1 ext4 /dev/vda rw\n", wantErr: "line 1: want at least 10 fields"},
		{name: "nothing after separator", in: "26 1 254:0 / / rw - ext4\n", wantErr: "line 1"},
		{name: "bad device", in: "26 1 254 / / rw - ext4 /dev/vda rw\n", wantErr: `bad device number "254"`},
		{name: "negative device", in: "26 1 -1:0 / / rw - ext4 /dev/vda rw\n", wantErr: "bad device number"},
		{name: "second line bad", in: "26 1 254:0 / / rw - ext4 /dev/vda rw\nx\n", wantErr: "line 2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseMountinfo([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseMountinfo() error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseMountinfo(): %v", err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("parseMountinfo() = %+v, want %+v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Errorf("mount %d = %+v, want %+v", i, got[i], tt.want[i])
				}
			}
		})
	}
}

func TestUnescapeMountinfo(t *testing.T) {
	for in, want := range map[string]string{
		`plain`:       "plain",
		`a\040b`:      "a b",
		`a\012b`:      "a\nb",
		`\134`:        `\`,
		`trailing\04`: `trailing\04`, // too short to be an escape
		`\777`:        `\777`,        // above a byte
		`\08x`:        `\08x`,        // not octal
	} {
		if got := unescapeMountinfo(in); got != want {
			t.Errorf("unescapeMountinfo(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestRootMountIsTheLast(t *testing.T) {
	mounts, err := parseMountinfo([]byte(
		"1 0 8:2 / / rw - ext4 /dev/sda2 rw\n" +
			"21 1 0:20 / /proc rw - proc proc rw,hidepid=2\n" +
			"30 1 0:52 / / rw - overlay overlay rw\n"))
	if err != nil {
		t.Fatal(err)
	}
	m, ok := rootMount(mounts)
	if !ok || m.fsType != "overlay" {
		t.Errorf("rootMount() = %+v, %v; want the overlay stacked last", m, ok)
	}
	if v, ok := option(mounts[1].superOptions, "hidepid"); !ok || v != "2" {
		t.Errorf("option(hidepid) = %q, %v; want 2", v, ok)
	}
	if _, ok := option(mounts[1].superOptions, "gid"); ok {
		t.Error("option(gid) found an option that is not there")
	}
}

// FuzzMountinfo feeds arbitrary files to the mountinfo parser: it must
// not panic, and what it accepts must look like mounts. Seeds are in
// testdata/fuzz/FuzzMountinfo and below.
func FuzzMountinfo(f *testing.F) {
	f.Add([]byte("36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n"))
	f.Add([]byte("26 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n21 1 0:20 / /proc rw - proc proc rw\n"))
	f.Add([]byte(`40 26 8:17 / /mnt/a\040b rw - vfat /dev/sdb1 rw`))
	f.Add([]byte("1 0 0:1 / / rw - - - -\n"))
	f.Add([]byte("\\\\\\\\ - \\1 2 3:4"))
	f.Fuzz(func(t *testing.T, data []byte) {
		mounts, err := parseMountinfo(data)
		if err != nil {
			if len(mounts) != 0 {
				t.Fatalf("error %v with %d mounts", err, len(mounts))
			}
			return
		}
		if n := strings.Count(strings.TrimSpace(string(data)), "\n") + 1; len(mounts) > n {
			t.Fatalf("%d mounts from %d lines", len(mounts), n)
		}
		for _, m := range mounts {
			if m.fsType == "" || m.source == "" || m.mountPoint == "" {
				t.Fatalf("accepted a mount with an empty field: %+v", m)
			}
		}
		rootMount(mounts)
	})
}
