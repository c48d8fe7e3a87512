package posture

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/keyhole-net/keyhole/internal/api"
	"golang.org/x/sys/unix"
)

// system fills in the facts about the system itself.
func (c *collector) system(ctx context.Context, p *api.Posture) {
	var detail string
	if p.OSVersion, detail = c.osVersion(); detail != "" {
		p.Details[keyOSVersion] = detail
	}
	if k, err := c.uname(); err != nil {
		p.Details[keyKernel] = "uname: " + err.Error()
	} else {
		p.Kernel = k
	}
	p.DiskEncryption, p.Details[keyDiskEncryption] = c.diskEncryption()
	p.Firewall, p.Details[keyFirewall] = c.firewall(ctx)
	p.ScreenLock, p.Details[keyScreenLock] = c.screenLock(ctx)
}

// kernelRelease is the running kernel's release ("6.12.48-1-amd64").
func kernelRelease() (string, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", err
	}
	r := unix.ByteSliceToString(u.Release[:])
	if r == "" {
		return "", errors.New("empty release")
	}
	return cleanVersion(r), nil
}

// path is name (an absolute path on the system) below the collector's
// root.
func (c *collector) path(name string) string {
	return filepath.Join(c.root, name)
}

// readCapped reads at most max bytes of the file at path; a longer file
// is an error, not a truncated answer.
func readCapped(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("longer than %d bytes", max)
	}
	return b, nil
}
