package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/keyhole-net/keyhole/internal/api"
)

// PostureProfiles implements store.Store.
func (s *Store) PostureProfiles(ctx context.Context) ([]api.PostureProfile, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT name, body FROM posture_profiles ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list posture profiles: %w", err)
	}
	defer rows.Close()
	var out []api.PostureProfile
	for rows.Next() {
		var name, body string
		if err := rows.Scan(&name, &body); err != nil {
			return nil, fmt.Errorf("list posture profiles: %w", err)
		}
		var p api.PostureProfile
		if err := goJSON(body, &p); err != nil {
			return nil, fmt.Errorf("list posture profiles: %s: %w", name, err)
		}
		p.Name = name
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list posture profiles: %w", err)
	}
	return out, nil
}

// CreatePostureProfile implements store.Store.
func (s *Store) CreatePostureProfile(ctx context.Context, p api.PostureProfile) error {
	body, err := dbJSON(p)
	if err != nil {
		return fmt.Errorf("create posture profile %q: %w", p.Name, err)
	}
	now := time.Now()
	err = s.write(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO posture_profiles (name, body, created_at, updated_at) VALUES (?, ?, ?, ?)`,
			p.Name, body, dbTime(now), dbTime(now))
		return dbErr(err)
	})
	if err != nil {
		return fmt.Errorf("create posture profile %q: %w", p.Name, err)
	}
	return nil
}

// UpdatePostureProfile implements store.Store.
func (s *Store) UpdatePostureProfile(ctx context.Context, p api.PostureProfile) error {
	body, err := dbJSON(p)
	if err != nil {
		return fmt.Errorf("update posture profile %q: %w", p.Name, err)
	}
	err = s.write(ctx, func(tx *sql.Tx) error {
		return mustAffect(tx.ExecContext(ctx, `UPDATE posture_profiles SET body = ?, updated_at = ? WHERE name = ?`, body, dbTime(time.Now()), p.Name))
	})
	if err != nil {
		return fmt.Errorf("update posture profile %q: %w", p.Name, err)
	}
	return nil
}

// DeletePostureProfile implements store.Store.
func (s *Store) DeletePostureProfile(ctx context.Context, name string) error {
	err := s.write(ctx, func(tx *sql.Tx) error {
		return mustAffect(tx.ExecContext(ctx, `DELETE FROM posture_profiles WHERE name = ?`, name))
	})
	if err != nil {
		return fmt.Errorf("delete posture profile %q: %w", name, err)
	}
	return nil
}
