package posture

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// scanProcesses reads the comm and executable of every process in /proc,
// up to limit.
func (c *collector) scanProcesses(ctx context.Context, limit int) (*processTable, error) {
	dir := c.path("/proc")
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("cannot list /proc: %s", errText(err))
	}
	defer f.Close()
	t := &processTable{incomplete: c.hiddenProcesses()}
	for {
		entries, err := f.ReadDir(1024)
		for _, e := range entries {
			pid, err := strconv.Atoi(e.Name())
			if err != nil || pid <= 0 {
				continue
			}
			if len(t.procs) == limit {
				t.incomplete = fmt.Sprintf("this client scans only %d processes", limit)
				return t, nil
			}
			if p, ok := readProcess(filepath.Join(dir, e.Name()), pid); ok {
				t.procs = append(t.procs, p)
			}
		}
		if errors.Is(err, io.EOF) {
			return t, nil
		}
		if err != nil {
			return nil, fmt.Errorf("cannot list /proc: %s", errText(err))
		}
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("process scan stopped: %w", err)
		}
	}
}

// readProcess reads one process's names; false when it has gone.
func readProcess(dir string, pid int) (process, bool) {
	p := process{pid: pid}
	comm, err := readCapped(filepath.Join(dir, "comm"), 64)
	if errors.Is(err, fs.ErrNotExist) {
		return p, false
	}
	p.comm = strings.TrimSuffix(string(comm), "\n")
	if exe, err := os.Readlink(filepath.Join(dir, "exe")); err == nil {
		p.exe = filepath.Base(strings.TrimSuffix(exe, " (deleted)"))
	}
	return p, true
}

// hiddenProcesses says why other users' processes are hidden from us
// (/proc mounted with hidepid and we are not root), or "".
func (c *collector) hiddenProcesses() string {
	if c.euid == 0 {
		return ""
	}
	data, err := readCapped(c.path("/proc/self/mountinfo"), maxMountinfoBytes)
	if err != nil {
		return "whether /proc hides other users' processes cannot be read: " + errText(err)
	}
	mounts, err := parseMountinfo(data)
	if err != nil {
		return "whether /proc hides other users' processes cannot be read: " + err.Error()
	}
	for i := len(mounts) - 1; i >= 0; i-- {
		m := mounts[i]
		if m.mountPoint != "/proc" {
			continue
		}
		if v, ok := option(m.superOptions, "hidepid"); ok && v != "0" && v != "off" {
			return "/proc is mounted with hidepid=" + v + ", which hides other users' processes from this client"
		}
		return ""
	}
	return ""
}
