// Package sqlite is the embedded implementation of store.Store: one SQLite
// file (modernc.org/sqlite, pure Go, nothing to install) in WAL mode. It is
// the default store for a single controller; clusters use the PostgreSQL
// implementation, and both pass the same conformance suite (storetest).
//
// Writes go through a pool of exactly one connection, so the controller's own
// writers queue in database/sql instead of fighting over SQLite's write lock
// (no SQLITE_BUSY between goroutines); reads use a separate pool that WAL lets
// run beside the writer. Write transactions start with BEGIN IMMEDIATE and a
// busy timeout, so another process on the same file (an admin tool) waits its
// turn rather than failing.
//
// Conventions the store adds to the store.Store contract:
//   - an empty ID in CreateUser, CreateApp, CreateGateway, CreateDevice or
//     InsertPolicyRule is filled with a random one ("usr_…", "app_…", "gw_…",
//     "dev_…", "rule_…"), and a zero CreatedAt with the current time;
//   - Gateway.Connected is not stored (it is the controller's live view of
//     its streams) and always reads back false;
//   - grants keep the names and IDs they were issued with and have no
//     foreign keys: they are the record of access given and outlive the
//     device, app or gateway they name;
//   - RenewGrant treats ev.Time as "now" for the expiry check, and an
//     expired grant fails with an error matching ErrNotFound and ErrExpired;
//   - DeleteUser also deletes the user's devices and sessions; a domain's
//     virtual IP stays reserved to that domain after its app is deleted;
//   - empty lists read back as nil, user groups sorted by name.
//
// Times are stored as unix nanoseconds and read back in UTC, exactly.
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	msqlite "modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/keyhole-net/keyhole/controller/store"
)

// Config says where the database lives and which pools it allocates from.
type Config struct {
	// Path is the database file, created (with its parent directory, mode
	// 0700) if missing, mode 0600. ":memory:" keeps everything in memory for
	// tests and demos; it is lost on Close.
	Path string
	// Pools are the overlay prefixes for devices, app domains and gateways.
	// They must be valid, masked and must not overlap each other.
	Pools store.Pools
}

// Store is the SQLite store. It is safe for concurrent use.
type Store struct {
	w     *sql.DB // exactly one connection; every write goes here
	r     *sql.DB // read-only connections; the same pool as w for ":memory:"
	pools store.Pools

	// Prepared statements of the grant path, which must sustain thousands
	// of grants a second; preparing them once saves a parse per call.
	insertGrant *sql.Stmt                 // on w
	insertAudit *sql.Stmt                 // on w
	grantByID   *sql.Stmt                 // on r
	liveGrants  [numLiveFilters]*sql.Stmt // on r

	grants grantBatcher // group commit of CreateGrant
}

var _ store.Store = (*Store)(nil)

// busyTimeout is how long a connection waits for another process's lock
// before failing with SQLITE_BUSY. Within one process the writer pool
// already serialises writers, so this only matters across processes.
const busyTimeout = 10 * time.Second

// Open opens (creating if needed) and migrates the database at cfg.Path.
// It refuses a database whose schema is newer than this code knows.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if err := cfg.Pools.Validate(); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	if cfg.Path == "" {
		return nil, errors.New(`open store: empty path; use a file name or ":memory:"`)
	}
	memory := cfg.Path == ":memory:"
	if !memory {
		if err := prepareFile(cfg.Path); err != nil {
			return nil, fmt.Errorf("open store %s: %w", cfg.Path, err)
		}
	}

	s := &Store{pools: cfg.Pools}
	var err error
	if s.w, err = sql.Open("sqlite", dsn(cfg.Path, false)); err != nil {
		return nil, fmt.Errorf("open store %s: %w", cfg.Path, err)
	}
	// One connection: SQLite allows one writer at a time, and for ":memory:"
	// the connection is the database, so it must never be closed while idle.
	s.w.SetMaxOpenConns(1)
	s.w.SetMaxIdleConns(1)
	s.w.SetConnMaxLifetime(0)
	s.w.SetConnMaxIdleTime(0)
	if memory {
		s.r = s.w
	} else {
		if s.r, err = sql.Open("sqlite", dsn(cfg.Path, true)); err != nil {
			s.w.Close()
			return nil, fmt.Errorf("open store %s: %w", cfg.Path, err)
		}
		n := max(4, runtime.GOMAXPROCS(0))
		s.r.SetMaxOpenConns(n)
		s.r.SetMaxIdleConns(n)
	}
	if err := s.init(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("open store %s: %w", cfg.Path, err)
	}
	return s, nil
}

func (s *Store) init(ctx context.Context) error {
	if err := migrate(ctx, s.w, time.Now()); err != nil {
		return err
	}
	var err error
	if s.insertGrant, err = s.w.PrepareContext(ctx, insertGrantSQL); err != nil {
		return fmt.Errorf("prepare: %w", err)
	}
	if s.insertAudit, err = s.w.PrepareContext(ctx, insertAuditSQL); err != nil {
		return fmt.Errorf("prepare: %w", err)
	}
	if s.grantByID, err = s.r.PrepareContext(ctx, selectGrantSQL+` WHERE id = ?`); err != nil {
		return fmt.Errorf("prepare: %w", err)
	}
	for i := range s.liveGrants {
		if s.liveGrants[i], err = s.r.PrepareContext(ctx, liveGrantsSQL(i)); err != nil {
			return fmt.Errorf("prepare: %w", err)
		}
	}
	return nil
}

// Close closes the database. For a file database the WAL is checkpointed
// into the main file by SQLite when the last connection closes.
func (s *Store) Close() error {
	var errs []error
	for _, st := range append([]*sql.Stmt{s.insertGrant, s.insertAudit, s.grantByID}, s.liveGrants[:]...) {
		if st != nil {
			errs = append(errs, st.Close())
		}
	}
	if s.r != nil && s.r != s.w {
		errs = append(errs, s.r.Close())
	}
	if s.w != nil {
		errs = append(errs, s.w.Close())
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close store: %w", err)
	}
	return nil
}

// prepareFile creates the parent directory (0700) and the database file
// (0600) before SQLite does, because SQLite would create the file with the
// umask's permissions and the database holds token and password hashes.
// The -wal and -shm files inherit the main file's mode.
func prepareFile(path string) error {
	if strings.ContainsAny(path, "?#") {
		return errors.New("path must not contain '?' or '#'")
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Chmod(path, 0o600)
}

// dsn builds the modernc.org/sqlite data source name. Every connection gets
// the busy timeout and foreign keys (both per-connection settings); WAL is
// persistent in the file but setting it again is free.
func dsn(path string, readOnly bool) string {
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busyTimeout.Milliseconds()))
	q.Add("_pragma", "foreign_keys(1)")
	q.Add("_pragma", "synchronous(NORMAL)")
	if path == ":memory:" {
		// WAL does not apply to memory databases; one connection does
		// everything, so there is nothing to wait for either.
		q.Set("_txlock", "immediate")
		return ":memory:?" + q.Encode()
	}
	if readOnly {
		q.Add("_pragma", "query_only(1)")
	} else {
		q.Add("_pragma", "journal_mode(WAL)")
		// Checkpoint every ~40 MB of WAL instead of every 4 MB: each
		// checkpoint copies pages back and fsyncs, and doing it a tenth as
		// often measured 20-35% more grants/s. journal_size_limit then
		// truncates the WAL file after a checkpoint so it does not stay big.
		q.Add("_pragma", "wal_autocheckpoint(10000)")
		q.Add("_pragma", "journal_size_limit(67108864)")
		// Take the write lock at BEGIN: a deferred transaction that reads
		// and then writes can fail with SQLITE_BUSY without waiting when
		// another process wrote in between.
		q.Set("_txlock", "immediate")
	}
	return "file:" + (&url.URL{Path: path}).EscapedPath() + "?" + q.Encode()
}

// --- transactions and errors -------------------------------------------------

// write runs fn in one write transaction on the single writer connection.
func (s *Store) write(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return dbErr(err)
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback() // fn's error is the one worth reporting
		return err
	}
	return dbErr(tx.Commit())
}

// dbErr maps driver errors onto the store's sentinels, keeping the driver's
// message for people: unique violations become ErrConflict, foreign-key
// violations (a referenced name missing) ErrNotFound, deleting a row that is
// still referenced ErrConflict, no rows ErrNotFound.
func dbErr(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, sql.ErrNoRows) {
		return store.ErrNotFound
	}
	var se *msqlite.Error
	if errors.As(err, &se) {
		switch se.Code() {
		case sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
			return fmt.Errorf("%w (%s)", store.ErrConflict, se.Error())
		case sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY:
			return fmt.Errorf("referenced name %w (%s)", store.ErrNotFound, se.Error())
		case sqlite3.SQLITE_CONSTRAINT_TRIGGER:
			// ON DELETE RESTRICT reports through the trigger code: the row
			// is still referenced (a group with members), a conflict.
			if strings.Contains(se.Error(), "FOREIGN KEY") {
				return fmt.Errorf("still in use: %w (%s)", store.ErrConflict, se.Error())
			}
		}
	}
	return err
}

// sqliteFK is the extended code of a foreign-key violation.
const sqliteFK = sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY

// isConstraint reports whether err is a SQLite constraint violation of the
// given extended code.
func isConstraint(err error, code int) bool {
	var se *msqlite.Error
	return errors.As(err, &se) && se.Code() == code
}

// mustAffect turns "no row changed" into ErrNotFound.
func mustAffect(res sql.Result, err error) error {
	if err != nil {
		return dbErr(err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n == 0 {
		return store.ErrNotFound
	}
	return nil
}
