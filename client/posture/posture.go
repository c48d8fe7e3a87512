// Package posture collects a device's posture on the device itself: the
// operating system and kernel, whether the root volume is encrypted, whether
// a host firewall filters incoming traffic, whether the session locks
// itself, and the admin-defined checks (files, processes, and the commands
// the device's own configuration defines). The result is an api.Posture.
//
// Collect never fails and never guesses: what it cannot determine is
// api.Unknown ("unknown" for strings), with a Details entry saying why.
// All work is bounded by the context, by a timeout per command, by a cap on
// the bytes hashed per file and by a cap on the processes scanned.
//
// Linux is implemented (files ending in _linux.go); on other systems
// Collect reports the OS, file and command checks, and Unknown for the
// rest. This package does not sign, send or schedule reports (the client
// does), nor judge them against a posture profile (the controller does).
package posture

import (
	"context"
	"os"
	"runtime"
	"time"

	"github.com/keyhole-net/keyhole/internal/api"
)

// DefaultCommandTimeout bounds each command when Config.CommandTimeout is 0.
const DefaultCommandTimeout = 5 * time.Second

// Keys of api.Posture.Details, the JSON names of the fields they explain.
const (
	keyOSVersion      = "os_version"
	keyKernel         = "kernel"
	keyClientVersion  = "client_version"
	keyDiskEncryption = "disk_encryption"
	keyFirewall       = "firewall"
	keyScreenLock     = "screen_lock"
)

// unknownString is what a string field holds when it cannot be read.
const unknownString = "unknown"

// Config says what Collect reports and where it looks.
type Config struct {
	// Version is the client version to report ("0.6.0", "(devel)"); empty
	// reports "unknown".
	Version string
	// Commands are the device's locally configured command checks
	// (posture.commands): check name → argv, run without a shell. The
	// controller names checks but never sends commands; a CheckCommand
	// whose name is not here is Unknown.
	Commands map[string][]string
	// CommandTimeout bounds each command Collect runs: command checks and
	// the system tools it asks (iptables-legacy, loginctl, gsettings).
	// 0 means DefaultCommandTimeout.
	CommandTimeout time.Duration
	// Root is the directory under which the system's own files are read
	// (proc, sys, etc, run, usr/lib); empty means "/". Tests point it at a
	// fake tree. The paths of file checks are not below Root: they are the
	// administrator's paths on the device.
	Root string
}

// Collect returns the device's posture and the results of checks, in the
// order given (a name listed twice is reported once, as first listed).
//
// CollectedAt is set to the time collection started, in UTC, so that
// every fact was observed at or after it; DeviceID is left for the caller
// to set. ctx bounds the whole collection: what is not determined when it
// ends is Unknown. Collect does its work on the calling goroutine: on
// Linux the firewall is read in the network namespace of the calling
// thread.
func Collect(ctx context.Context, cfg Config, checks []api.PostureCheck) api.Posture {
	return newCollector(cfg).collect(ctx, checks)
}

// collector holds one collection's configuration and what it has learnt
// so far; it is used by one goroutine and thrown away.
type collector struct {
	root           string
	version        string
	commands       map[string][]string
	commandTimeout time.Duration
	euid           int // whose view of the system this is (-1 on Windows)
	// uname returns the kernel release; tests replace it.
	uname func() (string, error)
	// output runs a system tool and returns its standard output; tests
	// replace it.
	output func(ctx context.Context, t tool) ([]byte, error)

	// The process table, scanned by the first process check.
	procs     *processTable
	procsErr  error
	procsDone bool
}

func newCollector(cfg Config) *collector {
	c := &collector{
		root:           cfg.Root,
		version:        cfg.Version,
		commands:       cfg.Commands,
		commandTimeout: cfg.CommandTimeout,
		euid:           os.Geteuid(),
		uname:          kernelRelease,
	}
	if c.root == "" {
		c.root = "/"
	}
	if c.commandTimeout <= 0 {
		c.commandTimeout = DefaultCommandTimeout
	}
	c.output = c.runTool
	return c
}

func (c *collector) collect(ctx context.Context, checks []api.PostureCheck) api.Posture {
	p := api.Posture{
		CollectedAt:    time.Now().UTC(),
		OS:             runtime.GOOS,
		OSVersion:      unknownString,
		Kernel:         unknownString,
		ClientVersion:  c.version,
		DiskEncryption: api.Unknown,
		Firewall:       api.Unknown,
		ScreenLock:     api.Unknown,
		Details:        map[string]string{},
	}
	if p.ClientVersion == "" {
		p.ClientVersion = unknownString
		p.Details[keyClientVersion] = "no version in the client's configuration"
	}
	c.system(ctx, &p)
	p.Checks = c.runChecks(ctx, checks)
	if len(p.Details) == 0 {
		p.Details = nil
	}
	return p
}

// Changed reports whether b says something a's receiver would judge
// differently: it compares every field except CollectedAt, Details and
// the checks' Detail texts, which vary between collections of the same
// posture ("no process named edr among 312"). Checks are compared by
// name, whatever their order.
func Changed(a, b api.Posture) bool {
	if a.DeviceID != b.DeviceID ||
		a.OS != b.OS || a.OSVersion != b.OSVersion || a.Kernel != b.Kernel ||
		a.ClientVersion != b.ClientVersion ||
		a.DiskEncryption != b.DiskEncryption || a.Firewall != b.Firewall ||
		a.ScreenLock != b.ScreenLock {
		return true
	}
	pass := make(map[string]api.Fact, len(a.Checks))
	for _, r := range a.Checks {
		pass[r.Name] = r.Pass
	}
	seen := make(map[string]bool, len(b.Checks))
	for _, r := range b.Checks {
		p, ok := pass[r.Name]
		if !ok || p != r.Pass {
			return true
		}
		seen[r.Name] = true
	}
	return len(seen) != len(pass)
}
