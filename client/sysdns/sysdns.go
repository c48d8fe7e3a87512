// Package sysdns points the system's resolver at the client's split DNS
// resolver (package client/splitdns) while TUN mode runs, and undoes it:
// when the client stops, and after a crash at the next start (Repair).
//
// Two backends, chosen by what the system runs:
//
//   - systemd-resolved (resolv.conf names its 127.0.0.53 stub and resolvectl
//     is installed): only the app domains are routed to our resolver, as
//     routing-only domains on the TUN link; every other name never reaches
//     it. Undone with "resolvectl revert".
//   - resolv.conf otherwise: the file is rewritten in place to name only our
//     resolver, which forwards every name that is not an app to the name
//     servers the file named before. Undone by writing the original back,
//     unless someone else has changed the file since.
//
// What is needed to undo is written to the data directory before the
// system is touched, so that Repair can undo after SIGKILL or a power cut.
// This package does not serve DNS, create the TUN device or decide which
// domains are apps.
package sysdns

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"
)

// Setting says where the system should send DNS queries for apps.
type Setting struct {
	// Interface is the TUN device, e.g. "keyhole0" (systemd-resolved
	// attaches the configuration to it).
	Interface string
	// Server is our resolver; it listens on port 53.
	Server netip.Addr
	// Domains are the routing domains: each sends the name itself and
	// every name below it to Server (systemd-resolved only; with
	// resolv.conf every name goes to Server). Derive them from the app
	// patterns: "*.corp.internal" gives "corp.internal", an exact name
	// "wiki.corp.internal" gives itself, and a domain below another one in
	// the list adds nothing.
	Domains []string
}

// Backend names, as recorded in the state file.
const (
	backendResolved   = "systemd-resolved"
	backendResolvConf = "resolv.conf"
)

// Files in the data directory.
const (
	stateFile = "sysdns.json"      // what to undo; present while applied
	origFile  = "resolv.conf.orig" // the original resolv.conf, for people
)

// state is what Repair needs to undo an Apply.
type state struct {
	Backend   string `json:"backend"`
	Interface string `json:"interface,omitempty"` // systemd-resolved
	// resolv.conf: the path written (symlinks are followed when it is
	// opened), whether it existed, its bytes before and what we wrote.
	Path     string `json:"path,omitempty"`
	Existed  bool   `json:"existed,omitempty"`
	Original []byte `json:"original,omitempty"`
	Written  []byte `json:"written,omitempty"`
}

// env is the system as this package sees it. Tests point it at temporary
// files and a fake resolvectl; Apply and Repair use systemEnv.
type env struct {
	resolvConf   string // /etc/resolv.conf
	resolvedConf string // systemd-resolved's list of upstream servers
	// resolvectl is the command's path, "" when it is not installed.
	resolvectl string
	run        func(ctx context.Context, name string, args ...string) error
	linkExists func(name string) bool
}

func systemEnv() env {
	e := env{
		resolvConf:   "/etc/resolv.conf",
		resolvedConf: "/run/systemd/resolve/resolv.conf",
		run:          runCommand,
		linkExists: func(name string) bool {
			_, err := net.InterfaceByName(name)
			return err == nil
		},
	}
	if p, err := exec.LookPath("resolvectl"); err == nil {
		e.resolvectl = p
	}
	return e
}

// commandTimeout bounds one resolvectl call.
const commandTimeout = 10 * time.Second

func runCommand(ctx context.Context, name string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, commandTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		if msg := strings.TrimSpace(string(out)); msg != "" {
			return fmt.Errorf("%s %s: %w: %s", filepath.Base(name), strings.Join(args, " "), err, msg)
		}
		return fmt.Errorf("%s %s: %w", filepath.Base(name), strings.Join(args, " "), err)
	}
	return nil
}

// Apply configures the system resolver to send app names to s.Server and
// returns the resolvers the system used before (to forward every other
// name to; port 53) and a function that undoes the change. State needed to
// undo is written to dataDir first (atomically, mode 0600), so that Repair
// can undo after a crash; Apply itself first undoes what an earlier run
// left behind.
//
// upstreams may be empty, with a warning logged: resolv.conf is missing or
// names no name server (the C library then tries a server on the local
// machine), or systemd-resolved knows no upstream server. The split
// resolver then answers names that are not apps REFUSED at once.
//
// restore may be called more than once; later calls return the first
// call's result.
func Apply(dataDir string, s Setting, log *slog.Logger) (upstreams []netip.AddrPort, restore func() error, err error) {
	if runtime.GOOS != "linux" {
		return nil, nil, fmt.Errorf("sysdns: %w on %s", errors.ErrUnsupported, runtime.GOOS)
	}
	return systemEnv().apply(dataDir, s, log)
}

// Repair undoes a configuration that a run which died left behind; it does
// nothing if there is none. Call it at start before Apply (which calls it
// too), or on its own to clean up without starting TUN mode.
func Repair(dataDir string, log *slog.Logger) error {
	return systemEnv().repair(dataDir, log)
}

func (e env) apply(dataDir string, s Setting, log *slog.Logger) ([]netip.AddrPort, func() error, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	domains, err := checkSetting(&s)
	if err != nil {
		return nil, nil, fmt.Errorf("sysdns: %w", err)
	}
	if err := e.repair(dataDir, log); err != nil {
		return nil, nil, err
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("sysdns: %w", err)
	}
	cur, err := os.ReadFile(e.resolvConf)
	existed := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("sysdns: read %s: %w", e.resolvConf, err)
	}

	var (
		st        state
		upstreams []netip.AddrPort
	)
	if e.resolvectl != "" && usesResolvedStub(cur) {
		st = state{Backend: backendResolved, Interface: s.Interface}
		upstreams, err = e.resolvedUpstreams(s.Server, log)
		if err != nil {
			return nil, nil, err
		}
		if err := writeState(dataDir, &st); err != nil {
			return nil, nil, err
		}
		if err := e.applyResolved(s, domains); err != nil {
			// Take back whatever part was applied.
			if uerr := e.undo(dataDir, &st, log); uerr != nil {
				err = errors.Join(err, uerr)
			}
			return nil, nil, fmt.Errorf("sysdns: configure systemd-resolved: %w", err)
		}
		log.Info("system DNS: app domains routed to Keyhole", "backend", st.Backend, "interface", s.Interface, "server", s.Server, "domains", domains, "upstreams", upstreams)
	} else {
		if isOurs(cur) {
			log.Warn("system DNS: resolv.conf was left by Keyhole without a record of the original; it cannot be restored", "path", e.resolvConf)
		}
		upstreams = parseNameservers(cur, maxResolvConfServers, s.Server)
		written := renderResolvConf(cur, s.Server, upstreams, absPath(filepath.Join(dataDir, origFile)))
		st = state{Backend: backendResolvConf, Path: e.resolvConf, Existed: existed, Original: cur, Written: written}
		if existed {
			if err := writeFileAtomic(filepath.Join(dataDir, origFile), cur); err != nil {
				return nil, nil, err
			}
		}
		if err := writeState(dataDir, &st); err != nil {
			return nil, nil, err
		}
		if err := writeInPlace(e.resolvConf, written, !existed); err != nil {
			if uerr := e.undo(dataDir, &st, log); uerr != nil {
				err = errors.Join(err, uerr)
			}
			return nil, nil, fmt.Errorf("sysdns: %w", err)
		}
		log.Info("system DNS: resolv.conf points at Keyhole", "backend", st.Backend, "path", e.resolvConf, "server", s.Server, "upstreams", upstreams)
	}
	if len(upstreams) == 0 {
		log.Warn("system DNS: no previous name server found; names that are not apps will not resolve", "backend", st.Backend)
	}

	var (
		once       sync.Once
		restoreErr error
	)
	restore := func() error {
		once.Do(func() { restoreErr = e.undo(dataDir, &st, log) })
		return restoreErr
	}
	return upstreams, restore, nil
}

// repair undoes the state left in dataDir, if any.
func (e env) repair(dataDir string, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	st, err := readState(dataDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	log.Info("system DNS: undoing the configuration of an earlier run", "backend", st.Backend)
	return e.undo(dataDir, st, log)
}

// undo reverts st and then forgets it. A state it cannot undo now is
// kept, so that a later Repair tries again.
func (e env) undo(dataDir string, st *state, log *slog.Logger) error {
	var err error
	switch st.Backend {
	case backendResolved:
		err = e.undoResolved(st, log)
	case backendResolvConf:
		err = e.undoResolvConf(dataDir, st, log)
	default:
		err = fmt.Errorf("unknown backend %q", st.Backend)
	}
	if err != nil {
		return fmt.Errorf("sysdns: undo %s configuration: %w", st.Backend, err)
	}
	if err := os.Remove(filepath.Join(dataDir, stateFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("sysdns: %w", err)
	}
	return nil
}

// checkSetting validates s and returns its domains, lowercase without a
// trailing dot or duplicates. Names go to resolvectl as arguments: nothing
// that could pass for an option gets through.
func checkSetting(s *Setting) ([]string, error) {
	if !s.Server.IsValid() {
		return nil, errors.New("no DNS server address")
	}
	if err := checkInterface(s.Interface); err != nil {
		return nil, err
	}
	var domains []string
	seen := make(map[string]bool)
	for _, d := range s.Domains {
		name := strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(d, "~"), "."))
		if err := checkDomain(name); err != nil {
			return nil, fmt.Errorf("routing domain %q: %w", d, err)
		}
		if !seen[name] {
			seen[name] = true
			domains = append(domains, name)
		}
	}
	return domains, nil
}

func checkInterface(name string) error {
	// IFNAMSIZ is 16 with the NUL.
	if name == "" || len(name) > 15 || strings.HasPrefix(name, "-") || strings.ContainsAny(name, "/ \t\n:") {
		return fmt.Errorf("interface name %q: want 1 to 15 characters, no '/', ':', space or leading '-'", name)
	}
	return nil
}

func checkDomain(name string) error {
	if name == "" || len(name) > 253 {
		return errors.New("want 1 to 253 characters")
	}
	for label := range strings.SplitSeq(name, ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("label %q: want 1 to 63 characters", label)
		}
		if label[0] == '-' {
			return fmt.Errorf("label %q starts with '-'", label)
		}
		for _, c := range []byte(label) {
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return fmt.Errorf("label %q: character %q not allowed", label, c)
			}
		}
	}
	return nil
}

func readState(dataDir string) (*state, error) {
	path := filepath.Join(dataDir, stateFile)
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("sysdns: %w", err)
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("sysdns: %s is damaged (check the system's DNS settings, then remove it): %w", path, err)
	}
	return &st, nil
}

func writeState(dataDir string, st *state) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("sysdns: %w", err)
	}
	return writeFileAtomic(filepath.Join(dataDir, stateFile), b)
}

// writeFileAtomic writes b to path with mode 0600: a temporary file,
// synced, renamed over path, and the directory synced, so that after a
// crash path holds either the old or the new bytes.
func writeFileAtomic(path string, b []byte) (err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, ".tmp-"+filepath.Base(path))
	if err != nil {
		return fmt.Errorf("sysdns: write %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			os.Remove(tmp.Name())
		}
	}()
	_, err = tmp.Write(b)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("sysdns: write %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync() // best effort: not every file system syncs directories
		d.Close()
	}
	return nil
}

func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}
