package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/keyhole-net/keyhole/controller/store"
)

// ProvisionOIDCUser implements store.Store.
func (s *Store) ProvisionOIDCUser(ctx context.Context, l store.OIDCLogin) (store.User, error) {
	var name string
	err := s.write(ctx, func(tx *sql.Tx) error {
		err := tx.QueryRowContext(ctx, `SELECT user_name FROM oidc_identities WHERE issuer = ? AND subject = ?`,
			l.Issuer, l.Subject).Scan(&name)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			// First login of this identity: a new user, without password.
			// A taken name (a local user, another identity's) is a
			// conflict, never a takeover.
			name = l.User
			id, err := newID("usr_")
			if err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, `
				INSERT INTO users (id, name, password_hash, disabled, created_at) VALUES (?, ?, '', 0, ?)`,
				id, name, dbTime(orNow(l.Now))); err != nil {
				return dbErr(err)
			}
			if _, err := tx.ExecContext(ctx, `
				INSERT INTO oidc_identities (issuer, subject, user_name, created_at) VALUES (?, ?, ?, ?)`,
				l.Issuer, l.Subject, name, dbTime(orNow(l.Now))); err != nil {
				return dbErr(err)
			}
		case err != nil:
			return dbErr(err)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE oidc_identities SET last_login = ? WHERE issuer = ? AND subject = ?`,
			dbTime(orNow(l.Now)), l.Issuer, l.Subject); err != nil {
			return dbErr(err)
		}
		// Groups come from the IdP at every login: the claim replaces the
		// memberships, restricted to groups that exist here.
		if _, err := tx.ExecContext(ctx, `DELETE FROM user_groups WHERE user_name = ?`, name); err != nil {
			return dbErr(err)
		}
		for _, g := range l.Groups {
			if _, err := tx.ExecContext(ctx, `
				INSERT OR IGNORE INTO user_groups (user_name, group_name) SELECT ?, name FROM groups WHERE name = ?`,
				name, g); err != nil {
				return dbErr(err)
			}
		}
		return nil
	})
	if err != nil {
		return store.User{}, fmt.Errorf("provision oidc user %q: %w", l.User, err)
	}
	return s.User(ctx, name)
}
