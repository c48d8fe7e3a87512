package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"

	"github.com/keyhole-net/keyhole/controller/store"
)

// LoginFailures implements store.Store.
func (s *Store) LoginFailures(ctx context.Context, keys ...string) ([]store.LoginFailures, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	args := make([]any, len(keys))
	for i, k := range keys {
		args[i] = k
	}
	rows, err := s.r.QueryContext(ctx, `SELECT throttle_key, failures, last_failure, locked_until FROM login_failures
		WHERE throttle_key IN (?`+strings.Repeat(", ?", len(keys)-1)+`) ORDER BY throttle_key`, args...)
	if err != nil {
		return nil, fmt.Errorf("login failures: %w", dbErr(err))
	}
	defer rows.Close()
	var out []store.LoginFailures
	for rows.Next() {
		var f store.LoginFailures
		var last, locked sql.NullInt64
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

// AddLoginFailure implements store.Store.
func (s *Store) AddLoginFailure(ctx context.Context, key string, at, fadeBefore time.Time) (store.LoginFailures, error) {
	f := store.LoginFailures{Key: key}
	var last, locked sql.NullInt64
	err := s.write(ctx, func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, `
			INSERT INTO login_failures (throttle_key, failures, last_failure, locked_until) VALUES (?, 1, ?, NULL)
			ON CONFLICT (throttle_key) DO UPDATE SET
				failures = CASE WHEN login_failures.last_failure < ? THEN 1 ELSE login_failures.failures + 1 END,
				last_failure = MAX(login_failures.last_failure, excluded.last_failure)
			RETURNING failures, last_failure, locked_until`,
			key, dbTime(orNow(at)), dbTime(fadeBefore)).Scan(&f.Failures, &last, &locked)
	})
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
	err := s.write(ctx, func(tx *sql.Tx) error {
		return mustAffect(tx.ExecContext(ctx, `
			UPDATE login_failures SET locked_until = MAX(COALESCE(locked_until, 0), ?) WHERE throttle_key = ?`,
			dbTime(until), key))
	})
	if err != nil {
		return fmt.Errorf("lock logins of %s: %w", key, err)
	}
	return nil
}

// ClearLoginFailures implements store.Store.
func (s *Store) ClearLoginFailures(ctx context.Context, key string) error {
	err := s.write(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `DELETE FROM login_failures WHERE throttle_key = ?`, key)
		return err
	})
	if err != nil {
		return fmt.Errorf("clear login failures of %s: %w", key, dbErr(err))
	}
	return nil
}

// PruneLoginFailures implements store.Store.
func (s *Store) PruneLoginFailures(ctx context.Context, fadeBefore, now time.Time) (int, error) {
	var n int64
	err := s.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM login_failures WHERE last_failure < ? AND COALESCE(locked_until, 0) <= ?`,
			dbTime(fadeBefore), dbTime(now))
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("prune login failures: %w", dbErr(err))
	}
	return int(n), nil
}
