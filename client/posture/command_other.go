//go:build !unix

package posture

import (
	"fmt"
	"os/exec"
)

// setProcessAttrs refuses to run a command as another user, which only
// the Unix code knows how to do; a timeout kills the command itself.
func setProcessAttrs(_ *exec.Cmd, t tool) error {
	if t.asUser {
		return fmt.Errorf("running a command as user %d (group %d) is not implemented here", t.uid, t.gid)
	}
	return nil
}
