package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"

	"github.com/keyhole-net/keyhole/internal/api"
)

// PolicyRules implements store.Store, in evaluation order.
func (s *Store) PolicyRules(ctx context.Context) ([]api.PolicyRule, error) {
	rows, err := s.r.QueryContext(ctx, `
		SELECT id, position, action, users, groups, apps, conditions, description, created_at
		FROM policy_rules ORDER BY position`)
	if err != nil {
		return nil, fmt.Errorf("list policy rules: %w", err)
	}
	defer rows.Close()
	var out []api.PolicyRule
	for rows.Next() {
		var r api.PolicyRule
		var id, action, users, groups, apps, conds string
		var created sql.NullInt64
		if err := rows.Scan(&id, &r.Position, &action, &users, &groups, &apps, &conds, &r.Description, &created); err != nil {
			return nil, fmt.Errorf("list policy rules: %w", err)
		}
		r.ID, r.Action, r.CreatedAt = api.RuleID(id), api.Action(action), goTime(created)
		for _, f := range []struct {
			s string
			v *[]string
		}{{users, &r.Users}, {groups, &r.Groups}, {apps, &r.Apps}} {
			if err := goJSON(f.s, f.v); err != nil {
				return nil, fmt.Errorf("list policy rules: rule %s: %w", id, err)
			}
		}
		if err := goJSON(conds, &r.RuleConditions); err != nil {
			return nil, fmt.Errorf("list policy rules: rule %s: conditions: %w", id, err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list policy rules: %w", err)
	}
	return out, nil
}

// InsertPolicyRule implements store.Store. A negative position is an error.
func (s *Store) InsertPolicyRule(ctx context.Context, r api.PolicyRule) (api.PolicyRule, error) {
	if r.Position < 0 {
		return api.PolicyRule{}, fmt.Errorf("insert policy rule: position %d: must be 0 (append) or 1 and up", r.Position)
	}
	if r.ID == "" {
		id, err := newID("rule_")
		if err != nil {
			return api.PolicyRule{}, fmt.Errorf("insert policy rule: %w", err)
		}
		r.ID = api.RuleID(id)
	}
	r.CreatedAt = orNow(r.CreatedAt)
	var lists [3]string
	for i, l := range [][]string{r.Users, r.Groups, r.Apps} {
		var err error
		if lists[i], err = dbJSON(l); err != nil {
			return api.PolicyRule{}, fmt.Errorf("insert policy rule %s: %w", r.ID, err)
		}
	}
	conds, err := dbConditions(r.RuleConditions)
	if err != nil {
		return api.PolicyRule{}, fmt.Errorf("insert policy rule %s: %w", r.ID, err)
	}
	err = s.write(ctx, func(tx *sql.Tx) error {
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM policy_rules`).Scan(&n); err != nil {
			return err
		}
		if r.Position == 0 || r.Position > n {
			r.Position = n + 1
		} else if err := shiftPositions(ctx, tx, r.Position, +1); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `
			INSERT INTO policy_rules (id, position, action, users, groups, apps, conditions, description, created_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			string(r.ID), r.Position, string(r.Action), lists[0], lists[1], lists[2], conds, r.Description, dbTime(r.CreatedAt))
		return dbErr(err)
	})
	if err != nil {
		return api.PolicyRule{}, fmt.Errorf("insert policy rule %s at %d: %w", r.ID, r.Position, err)
	}
	return r, nil
}

// dbConditions stores a rule's conditions as JSON, "null" for none.
func dbConditions(c api.RuleConditions) (string, error) {
	if c.IsZero() {
		return "null", nil
	}
	b, err := json.Marshal(c)
	if err != nil {
		return "", fmt.Errorf("conditions: %w", err)
	}
	return string(b), nil
}

// DeletePolicyRule implements store.Store; the rules after it move up one.
func (s *Store) DeletePolicyRule(ctx context.Context, id api.RuleID) error {
	err := s.write(ctx, func(tx *sql.Tx) error {
		var pos int
		err := tx.QueryRowContext(ctx, `DELETE FROM policy_rules WHERE id = ? RETURNING position`, string(id)).Scan(&pos)
		if err != nil {
			return dbErr(err)
		}
		return shiftPositions(ctx, tx, pos+1, -1)
	})
	if err != nil {
		return fmt.Errorf("delete policy rule %s: %w", id, err)
	}
	return nil
}

// shiftPositions moves every rule at position >= from by delta. SQLite
// checks UNIQUE per row, so a plain "position = position + 1" collides with
// the next rule; going through negative numbers avoids that.
func shiftPositions(ctx context.Context, tx *sql.Tx, from, delta int) error {
	if _, err := tx.ExecContext(ctx, `UPDATE policy_rules SET position = -(position + ?) WHERE position >= ?`, delta, from); err != nil {
		return fmt.Errorf("renumber: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `UPDATE policy_rules SET position = -position WHERE position < 0`); err != nil {
		return fmt.Errorf("renumber: %w", err)
	}
	return nil
}
