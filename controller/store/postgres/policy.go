package postgres

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/keyhole-net/keyhole/internal/api"
)

// PolicyRules implements store.Store, in evaluation order.
func (s *Store) PolicyRules(ctx context.Context) ([]api.PolicyRule, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT id, position, action, users, groups, apps, conditions, description, created_at
		FROM policy_rules ORDER BY position`)
	if err != nil {
		return nil, fmt.Errorf("list policy rules: %w", err)
	}
	out, err := collect(rows, func(row pgx.CollectableRow) (api.PolicyRule, error) {
		var r api.PolicyRule
		var id, action string
		var created pgtype.Timestamptz
		if err := row.Scan(&id, &r.Position, &action, &r.Users, &r.Groups, &r.Apps, &r.RuleConditions, &r.Description, &created); err != nil {
			return r, err
		}
		r.ID, r.Action, r.CreatedAt = api.RuleID(id), api.Action(action), goTime(created)
		return r, nil
	})
	if err != nil {
		return nil, fmt.Errorf("list policy rules: %w", err)
	}
	return out, nil
}

// lockPolicy keeps other writers of policy_rules (other controllers'
// inserts and deletes) out until tx ends, so that the count and the
// renumbering see every rule; plain reads go on.
func lockPolicy(ctx context.Context, tx pgx.Tx) error {
	if _, err := tx.Exec(ctx, `LOCK TABLE policy_rules IN SHARE ROW EXCLUSIVE MODE`); err != nil {
		return fmt.Errorf("lock policy: %w", err)
	}
	return nil
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
	asked := r.Position
	err = s.tx(ctx, func(tx pgx.Tx) error {
		r.Position = asked
		if err := lockPolicy(ctx, tx); err != nil {
			return err
		}
		var n int
		if err := tx.QueryRow(ctx, `SELECT count(*) FROM policy_rules`).Scan(&n); err != nil {
			return err
		}
		if r.Position == 0 || r.Position > n {
			r.Position = n + 1
		} else if _, err := tx.Exec(ctx, `UPDATE policy_rules SET position = position + 1 WHERE position >= $1`, r.Position); err != nil {
			// One statement: the deferrable UNIQUE (position) is checked
			// at its end, not per row.
			return fmt.Errorf("renumber: %w", err)
		}
		_, err := tx.Exec(ctx, `
			INSERT INTO policy_rules (id, position, action, users, groups, apps, conditions, description, created_at)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
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
	err := s.tx(ctx, func(tx pgx.Tx) error {
		if err := lockPolicy(ctx, tx); err != nil {
			return err
		}
		var pos int
		if err := tx.QueryRow(ctx, `DELETE FROM policy_rules WHERE id = $1 RETURNING position`, string(id)).Scan(&pos); err != nil {
			return dbErr(err)
		}
		if _, err := tx.Exec(ctx, `UPDATE policy_rules SET position = position - 1 WHERE position > $1`, pos); err != nil {
			return fmt.Errorf("renumber: %w", err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("delete policy rule %s: %w", id, err)
	}
	return nil
}
