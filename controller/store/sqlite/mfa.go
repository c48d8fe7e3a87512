package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/keyhole-net/keyhole/controller/store"
)

// CreateMFA implements store.Store. A pending enrolment is replaced in
// place (the upsert's WHERE leaves a confirmed one alone, and then no row
// changes).
func (s *Store) CreateMFA(ctx context.Context, m store.MFA) error {
	err := s.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `
			INSERT INTO user_mfa (user_name, secret, created_at, confirmed_at, last_step) VALUES (?, ?, ?, NULL, 0)
			ON CONFLICT (user_name) DO UPDATE SET secret = excluded.secret, created_at = excluded.created_at, last_step = 0
			WHERE user_mfa.confirmed_at IS NULL`,
			m.User, m.Secret, dbTime(orNow(m.CreatedAt)))
		if isConstraint(err, sqliteFK) {
			return fmt.Errorf("user: %w", store.ErrNotFound)
		}
		if err := mustAffect(res, err); errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("confirmed enrolment: %w", store.ErrConflict)
		} else if err != nil {
			return err
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("create mfa for %q: %w", m.User, err)
	}
	return nil
}

// MFA implements store.Store.
func (s *Store) MFA(ctx context.Context, user string) (store.MFA, error) {
	m := store.MFA{User: user}
	var created, confirmed sql.NullInt64
	err := s.r.QueryRowContext(ctx, `SELECT secret, created_at, confirmed_at, last_step FROM user_mfa WHERE user_name = ?`, user).
		Scan(&m.Secret, &created, &confirmed, &m.LastStep)
	if err != nil {
		return store.MFA{}, fmt.Errorf("mfa of %q: %w", user, dbErr(err))
	}
	m.CreatedAt, m.ConfirmedAt = goTime(created), goTime(confirmed)
	return m, nil
}

// ConfirmMFA implements store.Store.
func (s *Store) ConfirmMFA(ctx context.Context, user, secret string, step int64, at time.Time, recoveryHashes []string) error {
	err := s.write(ctx, func(tx *sql.Tx) error {
		err := mustAffect(tx.ExecContext(ctx, `
			UPDATE user_mfa SET confirmed_at = ?, last_step = ?
			WHERE user_name = ? AND secret = ? AND confirmed_at IS NULL`,
			dbTime(orNow(at)), step, user, secret))
		if err != nil {
			return fmt.Errorf("pending enrolment: %w", err)
		}
		for _, h := range recoveryHashes {
			if _, err := tx.ExecContext(ctx, `INSERT INTO recovery_codes (user_name, hash) VALUES (?, ?)`, user, h); err != nil {
				return dbErr(err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("confirm mfa of %q: %w", user, err)
	}
	return nil
}

// UseMFAStep implements store.Store. The comparison and the update are one
// statement, so two logins racing with one code cannot both win.
func (s *Store) UseMFAStep(ctx context.Context, user string, step int64) (bool, error) {
	var used bool
	err := s.write(ctx, func(tx *sql.Tx) error {
		err := mustAffect(tx.ExecContext(ctx, `
			UPDATE user_mfa SET last_step = ?
			WHERE user_name = ? AND confirmed_at IS NOT NULL AND last_step < ?`, step, user, step))
		used = err == nil
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		return err
	})
	if err != nil {
		return false, fmt.Errorf("use mfa step of %q: %w", user, err)
	}
	return used, nil
}

// UseRecoveryCode implements store.Store.
func (s *Store) UseRecoveryCode(ctx context.Context, user, hash string, at time.Time) (int, error) {
	var left int
	err := s.write(ctx, func(tx *sql.Tx) error {
		err := mustAffect(tx.ExecContext(ctx, `
			UPDATE recovery_codes SET used_at = ? WHERE user_name = ? AND hash = ? AND used_at IS NULL`,
			dbTime(orNow(at)), user, hash))
		if err != nil {
			return err
		}
		return dbErr(tx.QueryRowContext(ctx, `SELECT count(*) FROM recovery_codes WHERE user_name = ? AND used_at IS NULL`, user).Scan(&left))
	})
	if err != nil {
		return 0, fmt.Errorf("use recovery code of %q: %w", user, err)
	}
	return left, nil
}

// DeleteMFA implements store.Store; the recovery codes go with the
// enrolment (ON DELETE CASCADE).
func (s *Store) DeleteMFA(ctx context.Context, user string) error {
	err := s.write(ctx, func(tx *sql.Tx) error {
		return mustAffect(tx.ExecContext(ctx, `DELETE FROM user_mfa WHERE user_name = ?`, user))
	})
	if err != nil {
		return fmt.Errorf("delete mfa of %q: %w", user, err)
	}
	return nil
}
