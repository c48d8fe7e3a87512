//go:build !linux

package posture

import (
	"context"
	"errors"
	"runtime"

	"github.com/keyhole-net/keyhole/internal/api"
)

// system reports, for each fact this package cannot yet read here, why.
func (c *collector) system(_ context.Context, p *api.Posture) {
	why := notImplemented()
	for _, k := range []string{keyOSVersion, keyKernel, keyDiskEncryption, keyFirewall, keyScreenLock} {
		p.Details[k] = why
	}
}

// scanProcesses cannot list processes here.
func (c *collector) scanProcesses(context.Context, int) (*processTable, error) {
	return nil, errors.New(notImplemented())
}

// kernelRelease is not read here.
func kernelRelease() (string, error) { return "", errors.New(notImplemented()) }

func notImplemented() string { return "not implemented on " + runtime.GOOS }
