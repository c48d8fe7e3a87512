package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/keyhole-net/keyhole/client"
	"github.com/keyhole-net/keyhole/internal/trust"
)

// defaultControllerURL is where every role looks for the controller when
// none is given: the one started with zero config on this machine.
const defaultControllerURL = "https://127.0.0.1:8443"

// defaultDataDir returns the default data directory of a role: the client's
// own directory for "", and a subdirectory of it for the controller and the
// gateway, so one machine can run every role with zero config.
func defaultDataDir(role string) string {
	d := client.DefaultDataDir()
	if role == "" {
		return d
	}
	return filepath.Join(d, role)
}

// localController is what a controller started with the default data
// directory on this machine left for the other roles to find: its CA
// fingerprint and its first admin token. Either may be empty.
type localController struct {
	dir         string
	fingerprint string
	adminToken  string
}

// findLocalController reads the default controller data directory. It is
// used only when no --controller was given, so a remote controller is never
// paired with local secrets.
func findLocalController() localController {
	lc := localController{dir: defaultDataDir("controller")}
	if b, err := os.ReadFile(filepath.Join(lc.dir, "ca.crt")); err == nil {
		if cert, err := trust.ParseCertPEM(string(b)); err == nil {
			lc.fingerprint = trust.Fingerprint(cert)
		}
	}
	if b, err := os.ReadFile(filepath.Join(lc.dir, "admin.token")); err == nil {
		lc.adminToken = strings.TrimSpace(string(b))
	}
	return lc
}

// controllerTarget fills in the CA fingerprint (and admin token, when tok
// is non-nil) from a controller with the default data directory on this
// machine, when the controller URL is the default or names this machine
// (loopback): local secrets are never offered to a remote controller.
func controllerTarget(cmd *cobra.Command, fp, tok *string) {
	if cmd.Flags().Changed("controller") {
		u, err := url.Parse(cmd.Flag("controller").Value.String())
		if err != nil || !isLoopbackHost(u.Hostname()) {
			return
		}
	}
	if *fp != "" && (tok == nil || *tok != "") {
		return
	}
	lc := findLocalController()
	if *fp == "" {
		*fp = lc.fingerprint
	}
	if tok != nil && *tok == "" {
		*tok = lc.adminToken
	}
}

// isLoopbackHost reports whether host is localhost or a loopback address.
func isLoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// readPassword reads a password: one line from in with fromStdin, else a
// prompt without echo when in is a terminal.
func readPassword(in io.Reader, prompt io.Writer, fromStdin bool, what string) (string, error) {
	if fromStdin {
		line, err := readLine(in)
		if errors.Is(err, errNoInput) {
			return "", errors.New("--password-stdin: standard input is empty")
		}
		if err != nil {
			return "", fmt.Errorf("--password-stdin: %w", err)
		}
		return line, nil
	}
	f, ok := in.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return "", errors.New("no terminal to ask for the password on; pipe it in with --password-stdin")
	}
	fmt.Fprintf(prompt, "%s: ", what)
	b, err := term.ReadPassword(int(f.Fd()))
	fmt.Fprintln(prompt)
	if err != nil {
		return "", fmt.Errorf("read password: %w", err)
	}
	return string(b), nil
}

// errNoInput means the input ended before a line.
var errNoInput = errors.New("no input")

// readLine reads one line from in, without its line ending. A reader that
// must yield several lines in turn (a password, then a code) must be a
// *bufio.Reader, which this reuses instead of wrapping.
func readLine(in io.Reader) (string, error) {
	line, err := bufio.NewReader(in).ReadString('\n')
	if err != nil && !(errors.Is(err, io.EOF) && line != "") {
		if errors.Is(err, io.EOF) {
			return "", errNoInput
		}
		return "", err
	}
	return strings.TrimRight(line, "\r\n"), nil
}

// fmtTime prints t for people: local time, and how far away it is.
func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04:05") + " (" + fmtRel(t) + ")"
}

// fmtRel prints how far t is from now: "in 9m", "3s ago".
func fmtRel(t time.Time) string {
	d := time.Until(t)
	ago := d < 0
	if ago {
		d = -d
	}
	var s string
	switch {
	case d < time.Minute:
		s = d.Truncate(time.Second).String()
	case d < 48*time.Hour:
		s = d.Truncate(time.Minute).String()
		s = strings.TrimSuffix(s, "0s")
	default:
		s = fmt.Sprintf("%dd", int(d.Hours()/24))
	}
	if ago {
		return s + " ago"
	}
	return "in " + s
}

// fmtBytes prints a byte count for people.
func fmtBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
