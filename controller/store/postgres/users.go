package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/keyhole-net/keyhole/controller/store"
	"github.com/keyhole-net/keyhole/internal/api"
)

// CreateGroup implements store.Store.
func (s *Store) CreateGroup(ctx context.Context, g api.Group) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO groups (name, created_at) VALUES ($1, $2)`,
		g.Name, dbTime(orNow(g.CreatedAt)))
	if err != nil {
		return fmt.Errorf("create group %q: %w", g.Name, dbErr(err))
	}
	return nil
}

// Groups implements store.Store; Members counts each group's users.
func (s *Store) Groups(ctx context.Context) ([]api.Group, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT g.name, g.created_at, (SELECT count(*) FROM user_groups m WHERE m.group_name = g.name)
		FROM groups g ORDER BY g.name`)
	if err != nil {
		return nil, fmt.Errorf("list groups: %w", err)
	}
	out, err := collect(rows, func(row pgx.CollectableRow) (api.Group, error) {
		var g api.Group
		var created pgtype.Timestamptz
		err := row.Scan(&g.Name, &created, &g.Members)
		g.CreatedAt = goTime(created)
		return g, err
	})
	if err != nil {
		return nil, fmt.Errorf("list groups: %w", err)
	}
	return out, nil
}

// collect reads every row with fn, returning nil (not an empty slice) when
// there are none.
func collect[T any](rows pgx.Rows, fn pgx.RowToFunc[T]) ([]T, error) {
	out, err := pgx.CollectRows(rows, fn)
	if len(out) == 0 {
		out = nil
	}
	return out, err
}

// CreateUser implements store.Store.
func (s *Store) CreateUser(ctx context.Context, u store.User) error {
	if u.ID == "" {
		id, err := newID("usr_")
		if err != nil {
			return fmt.Errorf("create user %q: %w", u.Name, err)
		}
		u.ID = api.UserID(id)
	}
	err := s.tx(ctx, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `
			INSERT INTO users (id, name, password_hash, disabled, created_at) VALUES ($1, $2, $3, $4, $5)`,
			string(u.ID), u.Name, u.PasswordHash, u.Disabled, dbTime(orNow(u.CreatedAt)))
		if err != nil {
			return dbErr(err)
		}
		return setGroups(ctx, tx, u.Name, u.Groups)
	})
	if err != nil {
		return fmt.Errorf("create user %q: %w", u.Name, err)
	}
	return nil
}

// setGroups makes the user's memberships exactly groups, naming the first
// group that does not exist in the error.
func setGroups(ctx context.Context, tx pgx.Tx, user string, groups []string) error {
	if _, err := tx.Exec(ctx, `DELETE FROM user_groups WHERE user_name = $1`, user); err != nil {
		return dbErr(err)
	}
	for _, g := range groups {
		_, err := tx.Exec(ctx, `INSERT INTO user_groups (user_name, group_name) VALUES ($1, $2) ON CONFLICT DO NOTHING`, user, g)
		if isFK(err) {
			return fmt.Errorf("group %q: %w", g, store.ErrNotFound)
		}
		if err != nil {
			return dbErr(err)
		}
	}
	return nil
}

const userColumns = `id, name, password_hash, disabled, created_at,
	ARRAY(SELECT group_name FROM user_groups m WHERE m.user_name = users.name ORDER BY group_name),
	EXISTS (SELECT 1 FROM user_mfa f WHERE f.user_name = users.name AND f.confirmed_at IS NOT NULL)`

func scanUser(row pgx.Row) (store.User, error) {
	var u store.User
	var id string
	var created pgtype.Timestamptz
	if err := row.Scan(&id, &u.Name, &u.PasswordHash, &u.Disabled, &created, &u.Groups, &u.MFA); err != nil {
		return store.User{}, dbErr(err)
	}
	u.ID = api.UserID(id)
	u.CreatedAt = goTime(created)
	if len(u.Groups) == 0 {
		u.Groups = nil
	}
	return u, nil
}

// User implements store.Store.
func (s *Store) User(ctx context.Context, name string) (store.User, error) {
	u, err := scanUser(s.pool.QueryRow(ctx, `SELECT `+userColumns+` FROM users WHERE name = $1`, name))
	if err != nil {
		return store.User{}, fmt.Errorf("user %q: %w", name, err)
	}
	return u, nil
}

// Users implements store.Store, ordered by name.
func (s *Store) Users(ctx context.Context) ([]store.User, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+userColumns+` FROM users ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list users: %w", err)
	}
	out, err := collect(rows, func(row pgx.CollectableRow) (store.User, error) { return scanUser(row) })
	if err != nil {
		return nil, fmt.Errorf("list users: %w", err)
	}
	return out, nil
}

// UpdateUser implements store.Store.
func (s *Store) UpdateUser(ctx context.Context, u store.User) error {
	err := s.tx(ctx, func(tx pgx.Tx) error {
		err := mustAffect(tx.Exec(ctx, `UPDATE users SET disabled = $1, password_hash = $2 WHERE name = $3`,
			u.Disabled, u.PasswordHash, u.Name))
		if err != nil {
			return err
		}
		return setGroups(ctx, tx, u.Name, u.Groups)
	})
	if err != nil {
		return fmt.Errorf("update user %q: %w", u.Name, err)
	}
	return nil
}

// DeleteUser implements store.Store. The user's memberships, devices and
// sessions go with it (ON DELETE CASCADE); its grants stay as history.
func (s *Store) DeleteUser(ctx context.Context, name string) error {
	if err := mustAffect(s.pool.Exec(ctx, `DELETE FROM users WHERE name = $1`, name)); err != nil {
		return fmt.Errorf("delete user %q: %w", name, err)
	}
	return nil
}

// ProvisionOIDCUser implements store.Store. An advisory lock on the
// identity makes two first logins at once (on two controllers) find one
// user rather than one of them failing on the name.
func (s *Store) ProvisionOIDCUser(ctx context.Context, l store.OIDCLogin) (store.User, error) {
	var name string
	err := s.tx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, hashtext($2::text || chr(10) || $3::text))`,
			lockOIDCIdentity, l.Issuer, l.Subject); err != nil {
			return err
		}
		err := tx.QueryRow(ctx, `SELECT user_name FROM oidc_identities WHERE issuer = $1 AND subject = $2`,
			l.Issuer, l.Subject).Scan(&name)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			// First login of this identity: a new user, without password.
			// A taken name (a local user, another identity's) is a
			// conflict, never a takeover.
			name = l.User
			id, err := newID("usr_")
			if err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `
				INSERT INTO users (id, name, password_hash, disabled, created_at) VALUES ($1, $2, '', false, $3)`,
				id, name, dbTime(orNow(l.Now))); err != nil {
				return dbErr(err)
			}
			if _, err := tx.Exec(ctx, `
				INSERT INTO oidc_identities (issuer, subject, user_name, created_at) VALUES ($1, $2, $3, $4)`,
				l.Issuer, l.Subject, name, dbTime(orNow(l.Now))); err != nil {
				return dbErr(err)
			}
		case err != nil:
			return dbErr(err)
		}
		if _, err := tx.Exec(ctx, `UPDATE oidc_identities SET last_login = $1 WHERE issuer = $2 AND subject = $3`,
			dbTime(orNow(l.Now)), l.Issuer, l.Subject); err != nil {
			return dbErr(err)
		}
		// Groups come from the IdP at every login: the claim replaces the
		// memberships, restricted to groups that exist here.
		if _, err := tx.Exec(ctx, `DELETE FROM user_groups WHERE user_name = $1`, name); err != nil {
			return dbErr(err)
		}
		if len(l.Groups) > 0 {
			if _, err := tx.Exec(ctx, `
				INSERT INTO user_groups (user_name, group_name)
				SELECT $1, name FROM groups WHERE name = ANY($2) ON CONFLICT DO NOTHING`,
				name, l.Groups); err != nil {
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
