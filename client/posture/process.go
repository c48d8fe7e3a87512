package posture

import (
	"context"
	"fmt"
	"strings"

	"github.com/keyhole-net/keyhole/internal/api"
)

const (
	// maxProcesses caps the process scan; a device with more is Unknown
	// for a process it did not find among the first ones.
	maxProcesses = 1 << 17
	// commLen is the most bytes of a name Linux keeps in comm
	// (TASK_COMM_LEN less the NUL).
	commLen = 15
)

// process is what the scan learnt about one process.
type process struct {
	pid  int
	comm string // the name the process goes by (Linux: comm)
	exe  string // base name of the executable; "" when unreadable
}

// processTable is the processes seen by one scan (Linux: of /proc).
type processTable struct {
	procs []process
	// incomplete, when set, says why a process that was not seen may
	// still be running.
	incomplete string
}

// processCheck: a process whose comm or executable base name is name is
// running.
func (c *collector) processCheck(ctx context.Context, name string) (api.Fact, string) {
	switch {
	case name == "":
		return api.Unknown, "the check names no process"
	case strings.Contains(name, "/"):
		return api.Unknown, fmt.Sprintf("%q is a path; the check wants an executable name", name)
	}
	if !c.procsDone {
		c.procs, c.procsErr = c.scanProcesses(ctx, maxProcesses)
		c.procsDone = true
	}
	if c.procsErr != nil {
		return api.Unknown, c.procsErr.Error()
	}
	return c.procs.find(name)
}

// find looks for name among the processes; see processCheck.
func (t *processTable) find(name string) (api.Fact, string) {
	var maybe *process
	for i, p := range t.procs {
		switch {
		case p.exe == name:
			return api.Yes, fmt.Sprintf("pid %d runs %s", p.pid, name)
		case p.comm == name && len(name) <= commLen:
			return api.Yes, fmt.Sprintf("pid %d is named %s", p.pid, name)
		case p.exe == "" && len(name) > commLen && p.comm == name[:commLen] && maybe == nil:
			// comm is the name cut short, and the executable cannot be
			// read to tell.
			maybe = &t.procs[i]
		}
	}
	if maybe != nil {
		return api.Unknown, fmt.Sprintf("pid %d is named %s, which %s is cut to, and its executable cannot be read", maybe.pid, maybe.comm, name)
	}
	if t.incomplete != "" {
		return api.Unknown, fmt.Sprintf("no process named %s among %d seen, but %s", name, len(t.procs), t.incomplete)
	}
	return api.No, fmt.Sprintf("no process named %s among %d", name, len(t.procs))
}
