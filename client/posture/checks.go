package posture

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/keyhole-net/keyhole/internal/api"
)

// maxHashBytes is the largest file a file check hashes; a larger one is
// Unknown rather than read for minutes.
const maxHashBytes = 256 << 20

// runChecks runs checks in order, each name once.
func (c *collector) runChecks(ctx context.Context, checks []api.PostureCheck) []api.CheckResult {
	var results []api.CheckResult
	seen := make(map[string]bool, len(checks))
	for _, chk := range checks {
		if seen[chk.Name] {
			continue
		}
		seen[chk.Name] = true
		r := api.CheckResult{Name: chk.Name}
		if err := ctx.Err(); err != nil {
			r.Pass, r.Detail = api.Unknown, "not run: "+err.Error()
		} else {
			r.Pass, r.Detail = c.runCheck(ctx, chk)
		}
		results = append(results, r)
	}
	return results
}

func (c *collector) runCheck(ctx context.Context, chk api.PostureCheck) (api.Fact, string) {
	switch chk.Kind {
	case api.CheckFile:
		return fileCheck(ctx, chk.Path, chk.SHA256)
	case api.CheckProcess:
		return c.processCheck(ctx, chk.Process)
	case api.CheckCommand:
		return c.commandCheck(ctx, chk.Name)
	}
	return api.Unknown, fmt.Sprintf("unknown kind of check %q (this client knows %s, %s, %s)",
		chk.Kind, api.CheckFile, api.CheckProcess, api.CheckCommand)
}

// fileCheck: path is a regular file and, when want is set, its SHA-256 is
// want.
func fileCheck(ctx context.Context, path, want string) (api.Fact, string) {
	if !filepath.IsAbs(path) {
		return api.Unknown, fmt.Sprintf("path %q is not absolute", path)
	}
	want = strings.ToLower(want)
	if want != "" {
		if b, err := hex.DecodeString(want); err != nil || len(b) != sha256.Size {
			return api.Unknown, "the check's sha256 is not 64 hex digits"
		}
	}
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist) || notDir(err):
		return api.No, "missing"
	case err != nil:
		return api.Unknown, "cannot stat: " + errText(err)
	case !fi.Mode().IsRegular():
		return api.No, "not a regular file (" + fileType(fi.Mode()) + ")"
	case want == "":
		return api.Yes, "exists"
	case fi.Size() > maxHashBytes:
		return api.Unknown, fmt.Sprintf("%d bytes, larger than the %d MiB this client hashes", fi.Size(), maxHashBytes>>20)
	}
	got, err := hashFile(ctx, path, fi)
	if err != nil {
		return api.Unknown, err.Error()
	}
	if got != want {
		return api.No, "sha256 is " + shortHex(got) + ", want " + shortHex(want)
	}
	return api.Yes, "sha256 matches"
}

// hashFile returns the SHA-256 of the regular file at path, which must
// still be the file fi describes.
func hashFile(ctx context.Context, path string, fi fs.FileInfo) (string, error) {
	f, err := openForHash(path)
	if err != nil {
		return "", fmt.Errorf("cannot open: %s", errText(err))
	}
	defer f.Close()
	if ofi, err := f.Stat(); err != nil || !os.SameFile(fi, ofi) {
		return "", errors.New("the file changed while it was checked")
	}
	h := sha256.New()
	n, err := io.Copy(h, &ctxReader{ctx: ctx, r: io.LimitReader(f, maxHashBytes+1)})
	switch {
	case err != nil:
		return "", fmt.Errorf("cannot read: %s", errText(err))
	case n > maxHashBytes:
		return "", fmt.Errorf("grew past the %d MiB this client hashes", maxHashBytes>>20)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// ctxReader stops reading when ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r *ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}

// commandCheck runs the command the device's configuration defines under
// name: Yes when it exits 0 within the timeout.
func (c *collector) commandCheck(ctx context.Context, name string) (api.Fact, string) {
	argv, ok := c.commands[name]
	if !ok {
		return api.Unknown, "not defined in this device's configuration (posture.commands)"
	}
	out := &cappedBuffer{max: maxCheckOutputBytes}
	// Both streams feed the detail: a failing check usually says why on
	// standard error.
	err := c.run(ctx, tool{argv: argv}, out, out)
	line := firstLine(out.Bytes())
	var exitErr *exec.ExitError
	switch {
	case err == nil:
		return api.Yes, withLine("exit status 0", line)
	case errors.As(err, &exitErr):
		return api.No, withLine(exitErr.Error(), line)
	case errors.Is(err, errTimeout):
		return api.Unknown, err.Error()
	case ctx.Err() != nil:
		return api.Unknown, "not finished: " + err.Error()
	}
	return api.Unknown, "cannot run: " + err.Error()
}

func withLine(s, line string) string {
	if line == "" {
		return s
	}
	return s + ": " + line
}

// shortHex shortens a hash for a detail, as api.PostureCheck.String does.
func shortHex(h string) string {
	if len(h) > 12 {
		return h[:12] + "…"
	}
	return h
}

// errText is err's message without the operation and path that
// *fs.PathError adds, which the detail's context already gives.
func errText(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

func fileType(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeSymlink != 0:
		return "a symbolic link"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeDevice != 0:
		return "a device"
	}
	return "mode " + m.String()
}
