package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/keyhole-net/keyhole/controller/store"
)

// CreateMFA implements store.Store. A pending enrolment is replaced in
// place (the upsert's WHERE leaves a confirmed one alone, and then no row
// changes).
func (s *Store) CreateMFA(ctx context.Context, m store.MFA) error {
	tag, err := s.pool.Exec(ctx, `
		INSERT INTO user_mfa (user_name, secret, created_at, confirmed_at, last_step) VALUES ($1, $2, $3, NULL, 0)
		ON CONFLICT (user_name) DO UPDATE SET secret = excluded.secret, created_at = excluded.created_at, last_step = 0
		WHERE user_mfa.confirmed_at IS NULL`,
		m.User, m.Secret, dbTime(orNow(m.CreatedAt)))
	switch {
	case isFK(err):
		err = fmt.Errorf("user: %w", store.ErrNotFound)
	case err != nil:
		err = dbErr(err)
	case tag.RowsAffected() == 0:
		err = fmt.Errorf("confirmed enrolment: %w", store.ErrConflict)
	}
	if err != nil {
		return fmt.Errorf("create mfa for %q: %w", m.User, err)
	}
	return nil
}

// MFA implements store.Store.
func (s *Store) MFA(ctx context.Context, user string) (store.MFA, error) {
	m := store.MFA{User: user}
	var created, confirmed pgtype.Timestamptz
	err := s.pool.QueryRow(ctx, `SELECT secret, created_at, confirmed_at, last_step FROM user_mfa WHERE user_name = $1`, user).
		Scan(&m.Secret, &created, &confirmed, &m.LastStep)
	if err != nil {
		return store.MFA{}, fmt.Errorf("mfa of %q: %w", user, dbErr(err))
	}
	m.CreatedAt, m.ConfirmedAt = goTime(created), goTime(confirmed)
	return m, nil
}

// ConfirmMFA implements store.Store.
func (s *Store) ConfirmMFA(ctx context.Context, user, secret string, step int64, at time.Time, recoveryHashes []string) error {
	err := s.tx(ctx, func(tx pgx.Tx) error {
		err := mustAffect(tx.Exec(ctx, `
			UPDATE user_mfa SET confirmed_at = $1, last_step = $2
			WHERE user_name = $3 AND secret = $4 AND confirmed_at IS NULL`,
			dbTime(orNow(at)), step, user, secret))
		if err != nil {
			return fmt.Errorf("pending enrolment: %w", err)
		}
		if len(recoveryHashes) > 0 {
			if _, err := tx.Exec(ctx, `INSERT INTO recovery_codes (user_name, hash) SELECT $1, unnest($2::text[])`,
				user, recoveryHashes); err != nil {
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
// statement, so two logins racing with one code cannot both win: the
// second waits for the first's row lock and then finds the step used.
func (s *Store) UseMFAStep(ctx context.Context, user string, step int64) (bool, error) {
	err := mustAffect(s.pool.Exec(ctx, `
		UPDATE user_mfa SET last_step = $1
		WHERE user_name = $2 AND confirmed_at IS NOT NULL AND last_step < $1`, step, user))
	if errors.Is(err, store.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("use mfa step of %q: %w", user, err)
	}
	return true, nil
}

// UseRecoveryCode implements store.Store.
func (s *Store) UseRecoveryCode(ctx context.Context, user, hash string, at time.Time) (int, error) {
	var left int
	err := s.tx(ctx, func(tx pgx.Tx) error {
		err := mustAffect(tx.Exec(ctx, `
			UPDATE recovery_codes SET used_at = $1 WHERE user_name = $2 AND hash = $3 AND used_at IS NULL`,
			dbTime(orNow(at)), user, hash))
		if err != nil {
			return err
		}
		return dbErr(tx.QueryRow(ctx, `SELECT count(*) FROM recovery_codes WHERE user_name = $1 AND used_at IS NULL`, user).Scan(&left))
	})
	if err != nil {
		return 0, fmt.Errorf("use recovery code of %q: %w", user, err)
	}
	return left, nil
}

// DeleteMFA implements store.Store; the recovery codes go with the
// enrolment (ON DELETE CASCADE).
func (s *Store) DeleteMFA(ctx context.Context, user string) error {
	if err := mustAffect(s.pool.Exec(ctx, `DELETE FROM user_mfa WHERE user_name = $1`, user)); err != nil {
		return fmt.Errorf("delete mfa of %q: %w", user, err)
	}
	return nil
}
