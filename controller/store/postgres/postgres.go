// Package postgres is the PostgreSQL implementation of store.Store
// (github.com/jackc/pgx/v5, pgxpool), for production and for clusters:
// several controllers share one database, which is the source of truth.
// It passes the same conformance suite (storetest) as the embedded SQLite
// store and keeps the same conventions, listed below. Tests run it against
// a throwaway server (internal/pgtest).
//
// Because other controllers write to the same database at the same time,
// every read-then-write runs in a transaction that locks what it read:
//   - address allocation locks its pool's counter row (SELECT … FOR UPDATE
//     in effect) until commit, so each pool hands out one address at a time
//     across all controllers; a domain's virtual IP is looked up again
//     under that lock, so two controllers never give one domain two;
//   - InsertPolicyRule and DeletePolicyRule lock policy_rules against other
//     writers (SHARE ROW EXCLUSIVE; readers go on) while they renumber;
//   - AddWildcardName locks the app's row while it counts the app's names;
//   - CreateExport and ProvisionOIDCUser hold a transaction advisory lock
//     on the user, or on the (issuer, subject) pair, while they check and
//     insert;
//   - ConsumeEnrolToken and RenewGrant lock the row they check;
//     RevokeGrants locks its grants in ID order.
//
// Transactions run at READ COMMITTED; one that fails with a deadlock or a
// serialization failure is retried a few times.
//
// The grant path (CreateGrant) stores the grant and its audit event in
// one statement and group-commits concurrent grants, as the SQLite store
// does: the grants that arrive while a batch commits go together in the
// next one, sent as one pipeline (one round trip) and committed once, so
// a durable server (synchronous_commit on) flushes its WAL once per batch
// rather than once per grant. Statements are prepared once per connection
// (pgx's statement cache).
//
// Conventions the store adds to the store.Store contract, as the SQLite
// store does:
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
//   - empty lists read back as nil, user groups sorted by name; names sort
//     byte by byte (COLLATE "C") whatever the database's collation.
//
// Times are stored as timestamptz, which keeps microseconds: a time is read
// back in UTC, truncated to the microsecond. That is the one difference
// from the SQLite store, which keeps nanoseconds.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keyhole-net/keyhole/controller/store"
)

// Config says which database to use and which pools it allocates from.
type Config struct {
	// URL is the connection string: a URL
	// ("postgres://keyhole:secret@db.example:5432/keyhole?sslmode=verify-full")
	// or key=value pairs, as libpq and pgx take them. Errors show it with
	// the password removed. The store prepares its statements once per
	// connection; behind a pooler in transaction mode (PgBouncer) add
	// default_query_exec_mode=exec to the URL.
	URL string
	// Pools are the overlay prefixes for devices, app domains and gateways.
	// They must be valid, masked and must not overlap each other, and every
	// controller sharing the database must use the same ones.
	Pools store.Pools
	// MaxConns caps this controller's connections to the database; 0 means
	// pgxpool's default (the larger of 4 and the number of CPUs).
	MaxConns int
}

// Store is the PostgreSQL store. It is safe for concurrent use, also by
// several processes on one database.
type Store struct {
	pool  *pgxpool.Pool
	pools store.Pools

	grants grantBatcher // group commit of CreateGrant
}

var _ store.Store = (*Store)(nil)

// Open connects to the database at cfg.URL and migrates it to the newest
// schema this code knows. It refuses a database whose schema is newer.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	where := RedactURL(cfg.URL)
	if err := cfg.Pools.Validate(); err != nil {
		return nil, fmt.Errorf("open store %s: %w", where, err)
	}
	if cfg.URL == "" {
		return nil, errors.New("open store: empty URL; use postgres://user@host/database")
	}
	if cfg.MaxConns < 0 {
		return nil, fmt.Errorf("open store %s: MaxConns %d: must be 0 (default) or more", where, cfg.MaxConns)
	}
	pc, err := pgxpool.ParseConfig(cfg.URL)
	if err != nil {
		// pgconn's parse errors already leave the password out.
		return nil, fmt.Errorf("open store %s: %w", where, err)
	}
	if cfg.MaxConns > 0 {
		pc.MaxConns = int32(min(cfg.MaxConns, 1<<30))
	}
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", where, err)
	}
	s := &Store{pool: pool, pools: cfg.Pools}
	s.grants.commit = make(chan struct{}, grantCommitters(pc.MaxConns))
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("open store %s: %w", where, err)
	}
	if err := migrate(ctx, pool, time.Now()); err != nil {
		pool.Close()
		return nil, fmt.Errorf("open store %s: %w", where, err)
	}
	return s, nil
}

// Close closes the store's connections, waiting for those in use.
func (s *Store) Close() error {
	s.pool.Close()
	return nil
}

// passwordParam finds a password in key=value connection strings and URL
// query parameters, and userinfoPassword one in a URL that does not parse.
var (
	passwordParam    = regexp.MustCompile(`(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]*)`)
	userinfoPassword = regexp.MustCompile(`^([a-zA-Z][a-zA-Z0-9+.-]*://[^:@/?#]*):[^@/?#]*@`)
)

// RedactURL returns a connection string fit for logs and errors: a URL
// without its password ("postgres://keyhole@db/keyhole"), or key=value
// pairs with the password's value replaced.
func RedactURL(conn string) string {
	if u, err := url.Parse(conn); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		if u.User != nil {
			u.User = url.User(u.User.Username())
		}
		if q := u.Query(); q.Has("password") {
			q.Del("password")
			u.RawQuery = q.Encode()
		}
		return u.String()
	}
	conn = userinfoPassword.ReplaceAllString(conn, "${1}@")
	return passwordParam.ReplaceAllString(conn, "${1}[redacted]")
}

// --- transactions and errors -------------------------------------------------

// maxAttempts is how often a transaction is tried when it keeps failing
// with a deadlock or serialization failure.
const maxAttempts = 5

// tx runs fn in one transaction, committing when it returns nil. A
// transaction that fails with a deadlock or serialization failure (which
// PostgreSQL asks clients to retry) runs again, so fn must start from the
// same state each time.
func (s *Store) tx(ctx context.Context, fn func(tx pgx.Tx) error) error {
	for attempt := 1; ; attempt++ {
		err := pgx.BeginFunc(ctx, s.pool, fn)
		if err == nil || attempt == maxAttempts || !retryable(err) {
			return dbErr(err)
		}
		// A little jitter so that the transactions that collided do not
		// collide again.
		wait := time.Duration(attempt) * time.Duration(1+rand.IntN(5)) * time.Millisecond
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (retrying after: %w)", ctx.Err(), err)
		case <-time.After(wait):
		}
	}
}

// retryable reports whether err is one PostgreSQL asks clients to retry
// the transaction after.
func retryable(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "40001" || pe.Code == "40P01")
}

// SQLSTATE codes the store branches on.
const (
	codeUniqueViolation     = "23505"
	codeForeignKeyViolation = "23503"
	codeRestrictViolation   = "23001"
)

// dbErr maps driver errors onto the store's sentinels, keeping the
// driver's error for people: unique violations become ErrConflict,
// foreign-key violations by an insert (a referenced name missing)
// ErrNotFound, deleting a row that is still referenced ErrConflict, no rows
// ErrNotFound. Errors already mapped pass through.
func dbErr(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return store.ErrNotFound
	}
	if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrConflict) {
		return err
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch {
		case pe.Code == codeUniqueViolation:
			return fmt.Errorf("%w: %w", store.ErrConflict, err)
		case isForeignKeyMissing(pe):
			return fmt.Errorf("referenced name %w: %w", store.ErrNotFound, err)
		case pe.Code == codeForeignKeyViolation || pe.Code == codeRestrictViolation:
			return fmt.Errorf("still in use: %w: %w", store.ErrConflict, err)
		}
	}
	return err
}

// isForeignKeyMissing reports whether pe is an insert or update that names
// a row that does not exist (rather than a delete of a row still named).
func isForeignKeyMissing(pe *pgconn.PgError) bool {
	return pe.Code == codeForeignKeyViolation && strings.HasPrefix(pe.Message, "insert or update")
}

// isFK reports whether err is an insert or update naming a missing row.
func isFK(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && isForeignKeyMissing(pe)
}

// mustAffect turns "no row changed" into ErrNotFound.
func mustAffect(tag pgconn.CommandTag, err error) error {
	if err != nil {
		return dbErr(err)
	}
	if tag.RowsAffected() == 0 {
		return store.ErrNotFound
	}
	return nil
}

// Advisory lock classes, the first key of pg_advisory_xact_lock(int, int);
// the second is the object's hash. "kh" in the high bytes keeps them apart
// from other applications' locks on the same database.
const (
	lockMigrate int32 = 0x6b680001 + iota
	lockExportUser
	lockOIDCIdentity
)
