package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/keyhole-net/keyhole/controller/store"
)

// LoginFailures implements store.Store.
func (s *Store) LoginFailures(ctx context.Context, keys ...string) ([]store.LoginFailures, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	rows, err := s.pool.Query(ctx, `SELECT throttle_key, failures, last_failure, locked_until FROM login_failures
		WHERE throttle_key = ANY($1) ORDER BY throttle_key`, keys)
	if err != nil {
		return nil, fmt.Errorf("login failures: %w", dbErr(err))
	}
	defer rows.Close()
	var out []store.LoginFailures
	for rows.Next() {
		var f store.LoginFailures
		var last, locked pgtype.Timestamptz
		if err := rows.Scan(&f.Key, &f.Failures, &last, &locked); err != nil {
			return nil, fmt.Errorf("login failures: %w", dbErr(err))
		}
		f.Last, f.LockedUntil = goTime(last), goTime(locked)
		out = append(out, f)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("login failures: %w", dbErr(err))
	}
	return out, nil
}

// AddLoginFailure implements store.Store. The upsert is one statement:
// concurrent failures on several controllers each count.
func (s *Store) AddLoginFailure(ctx context.Context, key string, at, fadeBefore time.Time) (store.LoginFailures, error) {
	f := store.LoginFailures{Key: key}
	var last, locked pgtype.Timestamptz
	err := s.pool.QueryRow(ctx, `
		INSERT INTO login_failures (throttle_key, failures, last_failure, locked_until) VALUES ($1, 1, $2, NULL)
		ON CONFLICT (throttle_key) DO UPDATE SET
			failures = CASE WHEN login_failures.last_failure < $3 THEN 1 ELSE login_failures.failures + 1 END,
			last_failure = GREATEST(login_failures.last_failure, excluded.last_failure)
		RETURNING failures, last_failure, locked_until`,
		key, dbTime(orNow(at)), dbTime(fadeBefore)).Scan(&f.Failures, &last, &locked)
	if err != nil {
		return store.LoginFailures{}, fmt.Errorf("count login failure of %s: %w", key, dbErr(err))
	}
	f.Last, f.LockedUntil = goTime(last), goTime(locked)
	return f, nil
}

// LockLogin implements store.Store.
func (s *Store) LockLogin(ctx context.Context, key string, until time.Time) error {
	if until.IsZero() {
		return nil
	}
	err := mustAffect(s.pool.Exec(ctx, `
		UPDATE login_failures SET locked_until = GREATEST(locked_until, $1) WHERE throttle_key = $2`,
		dbTime(until), key))
	if err != nil {
		return fmt.Errorf("lock logins of %s: %w", key, err)
	}
	return nil
}

// ClearLoginFailures implements store.Store.
func (s *Store) ClearLoginFailures(ctx context.Context, key string) error {
	if _, err := s.pool.Exec(ctx, `DELETE FROM login_failures WHERE throttle_key = $1`, key); err != nil {
		return fmt.Errorf("clear login failures of %s: %w", key, dbErr(err))
	}
	return nil
}

// PruneLoginFailures implements store.Store.
func (s *Store) PruneLoginFailures(ctx context.Context, fadeBefore, now time.Time) (int, error) {
	tag, err := s.pool.Exec(ctx, `DELETE FROM login_failures WHERE last_failure < $1 AND (locked_until IS NULL OR locked_until <= $2)`,
		dbTime(fadeBefore), dbTime(now))
	if err != nil {
		return 0, fmt.Errorf("prune login failures: %w", dbErr(err))
	}
	return int(tag.RowsAffected()), nil
}
