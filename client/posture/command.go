package posture

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

const (
	// maxToolOutputBytes caps what is read from a system tool's standard
	// output (an iptables rule dump); a longer output is an error, never
	// a truncated answer.
	maxToolOutputBytes = 4 << 20
	// maxCheckOutputBytes is how much of a command check's output is kept
	// for its detail; the rest is discarded.
	maxCheckOutputBytes = 512
	// maxStderrBytes is how much of a tool's standard error is kept for
	// an error message.
	maxStderrBytes = 512
	// waitDelay bounds the wait for a killed command's output pipes, in
	// case a descendant outside its process group holds them open.
	waitDelay = time.Second
)

// errTimeout is returned for a command that did not finish within its
// timeout; it was killed with its process group.
var errTimeout = errors.New("timed out")

// tool is a system program Collect asks something.
type tool struct {
	argv []string
	// env, when not nil, is the whole environment of the program.
	env []string
	// uid and gid, when asUser is set, are the user the program runs as
	// (a desktop session's owner).
	asUser   bool
	uid, gid uint32
	// combined returns standard error with standard output, for a tool
	// that warns there while it succeeds.
	combined bool
}

func (t tool) String() string { return strings.Join(t.argv, " ") }

// runTool runs t without a shell and with empty standard input, and
// returns its standard output; a non-zero exit is an error that quotes the
// first line of its standard error.
func (c *collector) runTool(ctx context.Context, t tool) ([]byte, error) {
	stdout := &cappedBuffer{max: maxToolOutputBytes}
	stderr := &cappedBuffer{max: maxStderrBytes}
	if t.combined {
		stderr = stdout
	}
	err := c.run(ctx, t, stdout, stderr)
	if err == nil && stdout.overflow {
		err = fmt.Errorf("output longer than %d bytes", maxToolOutputBytes)
	}
	if err != nil {
		if line := firstLine(stderr.Bytes()); line != "" {
			err = fmt.Errorf("%w: %s", err, line)
		}
		return nil, fmt.Errorf("%s: %w", t.argv[0], err)
	}
	return stdout.Bytes(), nil
}

// run runs t within c.commandTimeout, killing its whole process group
// when the timeout or ctx ends first. The error is errTimeout on timeout,
// ctx's error when ctx ended, or what exec returned.
func (c *collector) run(ctx context.Context, t tool, stdout, stderr *cappedBuffer) error {
	if len(t.argv) == 0 || t.argv[0] == "" {
		return errors.New("empty command")
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	tctx, cancel := context.WithTimeout(ctx, c.commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(tctx, t.argv[0], t.argv[1:]...)
	cmd.Env = t.env
	cmd.Stdout = stdout
	cmd.Stderr = stderr
	cmd.WaitDelay = waitDelay
	if err := setProcessAttrs(cmd, t); err != nil {
		return err
	}
	err := cmd.Run()
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return ctx.Err()
	case tctx.Err() != nil:
		return fmt.Errorf("%w after %v", errTimeout, c.commandTimeout)
	}
	return err
}

// cappedBuffer keeps the first max bytes written to it and discards the
// rest, so a chatty command cannot make us hold its whole output. (It
// does not embed bytes.Buffer, whose ReadFrom io.Copy would use instead of
// Write.)
type cappedBuffer struct {
	buf      bytes.Buffer
	max      int
	overflow bool
}

func (b *cappedBuffer) Write(p []byte) (int, error) {
	if room := b.max - b.buf.Len(); room < len(p) {
		b.overflow = true
		if room > 0 {
			b.buf.Write(p[:room])
		}
		return len(p), nil
	}
	return b.buf.Write(p)
}

// Bytes returns what was kept.
func (b *cappedBuffer) Bytes() []byte { return b.buf.Bytes() }

// firstLine returns the first non-empty line of b, trimmed and shortened
// for a detail.
func firstLine(b []byte) string {
	for line := range strings.SplitSeq(string(b), "\n") {
		if line = strings.TrimSpace(line); line != "" {
			const maxRunes = 120
			if r := []rune(line); len(r) > maxRunes {
				line = string(r[:maxRunes]) + "…"
			}
			return line
		}
	}
	return ""
}
