//go:build unix

package posture

import (
	"errors"
	"os"
	"syscall"
)

// openForHash opens a file to hash without blocking, should it have been
// replaced by a FIFO since it was found to be a regular file.
func openForHash(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
}

// notDir reports whether err says a component of a path is not a
// directory: the path names nothing.
func notDir(err error) bool { return errors.Is(err, syscall.ENOTDIR) }
