//go:build !unix

package posture

import "os"

// openForHash opens a file to hash.
func openForHash(path string) (*os.File, error) {
	return os.Open(path)
}

// notDir reports whether err says a component of a path is not a
// directory; only the Unix code tells.
func notDir(error) bool { return false }
