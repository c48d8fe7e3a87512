package sqlite

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/keyhole-net/keyhole/controller/store"
	"github.com/keyhole-net/keyhole/internal/api"
)

// CreateGroup implements store.Store.
func (s *Store) CreateGroup(ctx context.Context, g api.Group) error {
	err := s.write(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO groups (name, created_at) VALUES (?, ?)`,
			g.Name, dbTime(orNow(g.CreatedAt)))
		return dbErr(err)
	})
	if err != nil {
		return fmt.Errorf("create group %q: %w", g.Name, err)
	}
	return nil
}

// Groups implements store.Store; Members counts each group's users.
func (s *Store) Groups(ctx context.Context) ([]api.Group, error) {
	rows, err := s.r.QueryContext(ctx, `
		SELECT g.name, g.created_at, (SELECT count(*) FROM user_groups m WHERE m.group_name = g.name)
		FROM groups g ORDER BY g.name`)
	if err != nil {
		return nil, fmt.Errorf("list groups: %w", err)
	}
	defer rows.Close()
	var out []api.Group
	for rows.Next() {
		var g api.Group
		var created sql.NullInt64
		if err := rows.Scan(&g.Name, &created, &g.Members); err != nil {
			return nil, fmt.Errorf("list groups: %w", err)
		}
		g.CreatedAt = goTime(created)
		out = append(out, g)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list groups: %w", err)
	}
	return out, nil
}

// CreateUser implements store.Store.
func (s *Store) CreateUser(ctx context.Context, u store.User) error {
	err := s.write(ctx, func(tx *sql.Tx) error {
		if u.ID == "" {
			id, err := newID("usr_")
			if err != nil {
				return err
			}
			u.ID = api.UserID(id)
		}
		_, err := tx.ExecContext(ctx, `
			INSERT INTO users (id, name, password_hash, disabled, created_at) VALUES (?, ?, ?, ?, ?)`,
			string(u.ID), u.Name, u.PasswordHash, boolInt(u.Disabled), dbTime(orNow(u.CreatedAt)))
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
func setGroups(ctx context.Context, tx *sql.Tx, user string, groups []string) error {
	if _, err := tx.ExecContext(ctx, `DELETE FROM user_groups WHERE user_name = ?`, user); err != nil {
		return dbErr(err)
	}
	for _, g := range groups {
		_, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO user_groups (user_name, group_name) VALUES (?, ?)`, user, g)
		if isConstraint(err, sqliteFK) {
			return fmt.Errorf("group %q: %w", g, store.ErrNotFound)
		}
		if err != nil {
			return dbErr(err)
		}
	}
	return nil
}

const userColumns = `id, name, password_hash, disabled, created_at,
	(SELECT json_group_array(group_name ORDER BY group_name) FROM user_groups m WHERE m.user_name = users.name),
	EXISTS (SELECT 1 FROM user_mfa f WHERE f.user_name = users.name AND f.confirmed_at IS NOT NULL)`

func scanUser(sc scanner) (store.User, error) {
	var u store.User
	var created sql.NullInt64
	var groups string
	var disabled, mfa int
	var id string
	if err := sc.Scan(&id, &u.Name, &u.PasswordHash, &disabled, &created, &groups, &mfa); err != nil {
		return store.User{}, dbErr(err)
	}
	u.ID = api.UserID(id)
	u.Disabled, u.MFA = disabled != 0, mfa != 0
	u.CreatedAt = goTime(created)
	if err := goJSON(groups, &u.Groups); err != nil {
		return store.User{}, fmt.Errorf("groups: %w", err)
	}
	if len(u.Groups) == 0 {
		u.Groups = nil
	}
	return u, nil
}

// User implements store.Store.
func (s *Store) User(ctx context.Context, name string) (store.User, error) {
	u, err := scanUser(s.r.QueryRowContext(ctx, `SELECT `+userColumns+` FROM users WHERE name = ?`, name))
	if err != nil {
		return store.User{}, fmt.Errorf("user %q: %w", name, err)
	}
	return u, nil
}

// Users implements store.Store, ordered by name.
func (s *Store) Users(ctx context.Context) ([]store.User, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+userColumns+` FROM users ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list users: %w", err)
	}
	defer rows.Close()
	var out []store.User
	for rows.Next() {
		u, err := scanUser(rows)
		if err != nil {
			return nil, fmt.Errorf("list users: %w", err)
		}
		out = append(out, u)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list users: %w", err)
	}
	return out, nil
}

// UpdateUser implements store.Store.
func (s *Store) UpdateUser(ctx context.Context, u store.User) error {
	err := s.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE users SET disabled = ?, password_hash = ? WHERE name = ?`,
			boolInt(u.Disabled), u.PasswordHash, u.Name)
		if err := mustAffect(res, err); err != nil {
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
	err := s.write(ctx, func(tx *sql.Tx) error {
		return mustAffect(tx.ExecContext(ctx, `DELETE FROM users WHERE name = ?`, name))
	})
	if err != nil {
		return fmt.Errorf("delete user %q: %w", name, err)
	}
	return nil
}
