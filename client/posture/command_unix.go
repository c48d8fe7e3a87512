//go:build unix

package posture

import (
	"errors"
	"os"
	"os/exec"
	"syscall"
)

// setProcessAttrs puts the command in a process group of its own, so that
// a timeout kills everything it started, and runs it as t's user when t
// asks for one.
func setProcessAttrs(cmd *exec.Cmd, t tool) error {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if t.asUser {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: t.uid, Gid: t.gid, NoSetGroups: true}
	}
	cmd.Cancel = func() error {
		// The group's id is the leader's pid (Setpgid with Pgid 0).
		err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		if errors.Is(err, syscall.ESRCH) {
			return os.ErrProcessDone
		}
		return err
	}
	return nil
}
