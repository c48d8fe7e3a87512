package posture

import (
	"fmt"
	"strconv"
	"strings"
)

// maxMountinfoBytes caps /proc/self/mountinfo; a host with thousands of
// mounts stays well under it.
const maxMountinfoBytes = 8 << 20

// mount is one line of /proc/PID/mountinfo (proc(5)).
type mount struct {
	major, minor uint32
	mountPoint   string
	fsType       string
	source       string
	superOptions string
}

// parseMountinfo parses /proc/PID/mountinfo:
//
//	36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//
// A malformed line is an error naming it: the file comes from the kernel,
// so one that does not parse is not worth half-trusting.
func parseMountinfo(data []byte) ([]mount, error) {
	var mounts []mount
	for i, line := range strings.Split(strings.TrimRight(string(data), "\n"), "\n") {
		if line == "" {
			continue
		}
		m, err := parseMountinfoLine(line)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", i+1, err)
		}
		mounts = append(mounts, m)
	}
	return mounts, nil
}

func parseMountinfoLine(line string) (mount, error) {
	f := strings.Fields(line)
	// Mount ID, parent ID, major:minor, root, mount point, options, zero
	// or more optional fields, "-", type, source, super options.
	sep := -1
	for i := 6; i < len(f); i++ {
		if f[i] == "-" {
			sep = i
			break
		}
	}
	if sep < 0 || len(f) < sep+3 {
		return mount{}, fmt.Errorf("want at least 10 fields with a %q separator, have %d", "-", len(f))
	}
	majS, minS, ok := strings.Cut(f[2], ":")
	maj, err1 := strconv.ParseUint(majS, 10, 32)
	minr, err2 := strconv.ParseUint(minS, 10, 32)
	if !ok || err1 != nil || err2 != nil {
		return mount{}, fmt.Errorf("bad device number %q", f[2])
	}
	m := mount{
		major:      uint32(maj),
		minor:      uint32(minr),
		mountPoint: unescapeMountinfo(f[4]),
		fsType:     unescapeMountinfo(f[sep+1]),
		source:     unescapeMountinfo(f[sep+2]),
	}
	if len(f) > sep+3 {
		m.superOptions = unescapeMountinfo(f[sep+3])
	}
	return m, nil
}

// unescapeMountinfo undoes the kernel's octal escapes of space, tab,
// newline and backslash (\040, \011, \012, \134) and leaves anything else
// as it is.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			n := (s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0')
			if s[i+1] <= '3' {
				b.WriteByte(n)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }

// rootMount returns the mount at "/" that the process sees: the last one
// listed, since later mounts stack over earlier ones.
func rootMount(mounts []mount) (mount, bool) {
	for i := len(mounts) - 1; i >= 0; i-- {
		if mounts[i].mountPoint == "/" {
			return mounts[i], true
		}
	}
	return mount{}, false
}

// option returns the value of key in a comma-separated mount option list
// ("hidepid=2"), and whether it is there.
func option(opts, key string) (string, bool) {
	for o := range strings.SplitSeq(opts, ",") {
		k, v, _ := strings.Cut(o, "=")
		if k == key {
			return v, true
		}
	}
	return "", false
}
