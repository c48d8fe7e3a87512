// Package pgtest gives tests a throwaway PostgreSQL server: Start runs
// initdb into the test's temporary directory and a postgres that listens
// only on a unix socket there (fsync off: nothing in it is worth keeping),
// and stops it when the test ends, also when the test fails or the test
// binary dies. NewDatabase hands each subtest an empty database of its own
// (a fresh schema, which the code under test cannot tell from a database,
// made in milliseconds). With KEYHOLE_TEST_POSTGRES_URL set, the tests use
// that server instead and only create and drop schemas (and, for
// CreateDatabase, databases) on it.
//
// PostgreSQL refuses to run as root; a test running as root runs it as
// the "postgres" user that Debian's package creates. Without PostgreSQL
// installed the tests are skipped, except in CI (CI=true), where a skipped
// store test would hide a broken store. Only tests import this package.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// EnvURL is the environment variable that points the tests at an existing
// server: a postgres:// URL (or key=value string) of a database and a role
// that may create schemas in it, and databases for CreateDatabase.
const EnvURL = "KEYHOLE_TEST_POSTGRES_URL"

// startTimeout bounds initdb plus the server's start-up, and stopTimeout
// its shutdown before it is killed.
const (
	startTimeout = 2 * time.Minute
	stopTimeout  = 30 * time.Second
)

// Server is a database on a PostgreSQL server that tests take empty
// databases from.
type Server struct {
	// url names the database, as a role that may create schemas in it
	// (and databases, for CreateDatabase): on a server Start ran, the
	// superuser on the maintenance database "postgres".
	url string
}

// URL returns the URL of the server's database, for tests that need more
// than NewDatabase and CreateDatabase give.
func (s *Server) URL() string { return s.url }

// Start returns a running server for t and its subtests: the one
// KEYHOLE_TEST_POSTGRES_URL names, or a new one that is stopped when t
// ends, whether it passed or not. When PostgreSQL is not installed it skips
// t, or fails it when CI is "true".
func Start(t testing.TB) *Server {
	t.Helper()
	if u := os.Getenv(EnvURL); u != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := ping(ctx, u); err != nil {
			t.Fatalf("pgtest: %s: %v", EnvURL, err)
		}
		return &Server{url: u}
	}
	bin, err := findBinaries()
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("pgtest: %v (CI must run the PostgreSQL tests: install the postgresql package)", err)
		}
		t.Skipf("pgtest: %v; install PostgreSQL (Debian: apt-get install postgresql) or set %s", err, EnvURL)
	}
	srv, err := start(t, bin)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	return srv
}

// NewDatabase returns the URL of an empty database for t — empty as far
// as the code under test can tell: a new schema in the server's database,
// which the URL makes the connection's search_path. A schema is created
// and dropped in milliseconds, a database in hundreds of them. It is
// dropped with everything in it when t ends (after t's own cleanups, which
// close what the test opened on it).
func (s *Server) NewDatabase(t testing.TB) string {
	t.Helper()
	name := newName(t)
	u, err := withParam(s.url, "search_path", name)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.exec(ctx, "CREATE SCHEMA "+name); err != nil {
		t.Fatalf("pgtest: create schema: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		// A connection a failed test left in a transaction would block
		// the drop for ever; give up on it after a while instead.
		if err := s.exec(ctx, "SET lock_timeout = '20s'", "DROP SCHEMA "+name+" CASCADE"); err != nil {
			t.Errorf("pgtest: drop schema %s: %v", name, err)
		}
	})
	return u
}

// CreateDatabase creates a database with options for CREATE DATABASE
// ("TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'") and returns
// it as a Server, whose NewDatabase gives schemas in it. It is dropped when
// t ends. A server that refuses the options fails t.
func (s *Server) CreateDatabase(t testing.TB, options string) *Server {
	t.Helper()
	name := newName(t)
	u, err := withParam(s.url, "dbname", name)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.exec(ctx, "CREATE DATABASE "+name+" "+options); err != nil {
		t.Fatalf("pgtest: create database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		// FORCE ends connections a failed test left open.
		if err := s.exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("pgtest: drop database %s: %v", name, err)
		}
	})
	return &Server{url: u}
}

// newName returns a fresh schema or database name.
func newName(t testing.TB) string {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return "keyhole_test_" + hex.EncodeToString(b[:])
}

// exec runs statements, one after the other, on the server's database.
func (s *Server) exec(ctx context.Context, sqls ...string) error {
	conn, err := pgx.Connect(ctx, s.url)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	for _, sql := range sqls {
		if _, err := conn.Exec(ctx, sql); err != nil {
			return err
		}
	}
	return nil
}

func ping(ctx context.Context, u string) error {
	conn, err := pgx.Connect(ctx, u)
	if err != nil {
		return err
	}
	return conn.Close(ctx)
}

// withParam returns the connection string u with key set to value: a
// query parameter of a URL ("dbname" becomes its path), or one more
// key=value pair, which overrides an earlier one.
func withParam(u, key, value string) (string, error) {
	pu, err := url.Parse(u)
	if err != nil || (pu.Scheme != "postgres" && pu.Scheme != "postgresql") {
		if strings.Contains(u, "://") {
			return "", fmt.Errorf("%s: not a postgres:// URL", EnvURL)
		}
		return u + " " + key + "=" + value, nil
	}
	q := pu.Query()
	if key == "dbname" {
		pu.Path = "/" + value
		q.Del("dbname")
	} else {
		q.Set(key, value)
	}
	pu.RawQuery = q.Encode()
	return pu.String(), nil
}

// binaries are the PostgreSQL programs the server needs, from one
// installation.
type binaries struct {
	initdb, postgres string
}

// debianBins is where Debian's packages put each major version's server
// programs.
const debianBins = "/usr/lib/postgresql/*/bin"

// findBinaries looks for initdb and postgres on PATH, then in Debian's
// /usr/lib/postgresql/VERSION/bin, newest version first.
func findBinaries() (binaries, error) { return findBinariesIn(debianBins) }

// findBinariesIn is findBinaries with versioned directories matching glob.
func findBinariesIn(glob string) (binaries, error) {
	var dirs []string
	if p, err := exec.LookPath("initdb"); err == nil {
		dirs = append(dirs, filepath.Dir(p))
	}
	versions, _ := filepath.Glob(glob)
	slices.SortFunc(versions, func(a, b string) int { return compareVersions(versionOf(b), versionOf(a)) })
	dirs = append(dirs, versions...)
	for _, d := range dirs {
		b := binaries{initdb: filepath.Join(d, "initdb"), postgres: filepath.Join(d, "postgres")}
		if isExecutable(b.initdb) && isExecutable(b.postgres) {
			return b, nil
		}
	}
	return binaries{}, errors.New("PostgreSQL server binaries (initdb, postgres) not found on PATH or in /usr/lib/postgresql/*/bin")
}

// versionOf returns the version directory of a Debian bin directory
// ("/usr/lib/postgresql/15/bin" → "15").
func versionOf(binDir string) string { return filepath.Base(filepath.Dir(binDir)) }

// compareVersions orders "9.6" < "10" < "15" numerically, part by part.
func compareVersions(a, b string) int {
	pa, pb := strings.Split(a, "."), strings.Split(b, ".")
	for i := range max(len(pa), len(pb)) {
		var x, y int
		if i < len(pa) {
			x, _ = strconv.Atoi(pa[i])
		}
		if i < len(pb) {
			y, _ = strconv.Atoi(pb[i])
		}
		if x != y {
			return x - y
		}
	}
	return 0
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// start runs initdb and postgres in a temporary directory of t and
// registers their shutdown.
func start(t testing.TB, bin binaries) (*Server, error) {
	dir := t.TempDir()
	// A unix socket path must fit in sun_path (108 bytes); a long TMPDIR or
	// test name would not, so fall back to a short directory of our own.
	if len(filepath.Join(dir, ".s.PGSQL.5432")) > 100 {
		short, err := os.MkdirTemp("", "pgt")
		if err != nil {
			return nil, err
		}
		t.Cleanup(func() { os.RemoveAll(short) })
		dir = short
	}
	cred, err := runAs(dir)
	if err != nil {
		return nil, err
	}
	data := filepath.Join(dir, "data")
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()

	initdb := exec.CommandContext(ctx, bin.initdb, "-D", data, "-U", "postgres", "-A", "trust",
		"-E", "UTF8", "--locale=C", "--no-sync")
	initdb.Dir = dir
	initdb.SysProcAttr = sysProcAttr(cred)
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("initdb: %v\n%s", err, out)
	}

	logPath := filepath.Join(dir, "postgres.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logFile.Close() // the child has its own descriptor
	if cred != nil {
		if err := os.Chown(logPath, int(cred.Uid), int(cred.Gid)); err != nil {
			return nil, err
		}
	}
	srv := exec.Command(bin.postgres, "-D", data, "-k", dir,
		"-c", "listen_addresses=", // the unix socket only: no TCP port at all
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
		"-c", "max_connections=200", "-c", "shared_buffers=32MB",
		"-c", "logging_collector=off", "-c", "log_min_messages=warning")
	srv.Dir = dir
	srv.Stdout, srv.Stderr = logFile, logFile
	srv.SysProcAttr = sysProcAttr(cred)
	if err := srv.Start(); err != nil {
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		srv.Wait() // the exit status is in the log; stop only needs to know it is gone
		close(exited)
	}()
	t.Cleanup(func() { stop(t, srv.Process, exited, logPath) })

	u := (&url.URL{Scheme: "postgres", User: url.User("postgres"), Path: "/postgres",
		RawQuery: url.Values{"host": {dir}, "sslmode": {"disable"}}.Encode()}).String()
	// Poll until the server accepts connections: it has no readiness
	// signal a child can wait on other than the socket.
	for {
		pctx, pcancel := context.WithTimeout(ctx, time.Second)
		err := ping(pctx, u)
		pcancel()
		if err == nil {
			return &Server{url: u}, nil
		}
		select {
		case <-exited:
			return nil, fmt.Errorf("postgres exited during start-up:\n%s", tail(logPath))
		case <-ctx.Done():
			return nil, fmt.Errorf("postgres not ready after %v: %v\n%s", startTimeout, err, tail(logPath))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// stop shuts the server down (SIGINT: fast shutdown, rolling back open
// transactions) and kills it if it does not exit in time.
func stop(t testing.TB, p *os.Process, exited <-chan struct{}, logPath string) {
	select {
	case <-exited:
		t.Errorf("pgtest: postgres exited before the test ended:\n%s", tail(logPath))
		return
	default:
	}
	_ = p.Signal(syscall.SIGINT)
	select {
	case <-exited:
	case <-time.After(stopTimeout):
		_ = p.Kill()
		<-exited
		t.Errorf("pgtest: postgres did not stop within %v; killed", stopTimeout)
	}
}

// tail returns the end of the server log, for failure messages.
func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	const n = 4000
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// runAs returns the credential to run PostgreSQL with: nil normally, the
// "postgres" user's when the test runs as root (PostgreSQL refuses to run
// as root). dir is handed to that user, and its parent (the test's own
// temporary directory, mode 0700) is opened for traversal only.
func runAs(dir string) (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root, PostgreSQL needs the \"postgres\" user to run as: %w", err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("postgres uid %q: %w", u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("postgres gid %q: %w", u.Gid, err)
	}
	if err := os.Chown(dir, int(uid), int(gid)); err != nil {
		return nil, err
	}
	parent := filepath.Dir(dir)
	fi, err := os.Stat(parent)
	if err != nil {
		return nil, err
	}
	if fi.Mode().Perm()&0o001 == 0 {
		keep := fi.Mode() & (os.ModePerm | os.ModeSetuid | os.ModeSetgid | os.ModeSticky)
		if err := os.Chmod(parent, keep|0o011); err != nil {
			return nil, err
		}
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}
