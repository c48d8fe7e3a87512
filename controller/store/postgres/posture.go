package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/keyhole-net/keyhole/controller/store"
	"github.com/keyhole-net/keyhole/internal/api"
)

// SetDevicePosture implements store.Store. The check against the stored
// report's collection time is part of the UPDATE, so reports racing on two
// controllers cannot put an older one over a newer one. Collection times
// compare at microseconds, the precision the store keeps.
func (s *Store) SetDevicePosture(ctx context.Context, id api.DeviceID, p api.Posture, at time.Time) error {
	body, err := dbJSON(p)
	if err != nil {
		return fmt.Errorf("set posture of device %s: %w", id, err)
	}
	collected := p.CollectedAt.Truncate(time.Microsecond)
	tag, err := s.pool.Exec(ctx, `
		UPDATE devices SET posture = $1, posture_at = $2, posture_collected_at = $3
		WHERE id = $4 AND (posture_collected_at IS NULL OR posture_collected_at <= $3)`,
		body, dbTime(at), collected, string(id))
	if err == nil && tag.RowsAffected() == 0 {
		// Unknown device, or a newer report stored: tell which.
		var prev pgtype.Timestamptz
		err = s.pool.QueryRow(ctx, `SELECT posture_collected_at FROM devices WHERE id = $1`, string(id)).Scan(&prev)
		if err == nil {
			err = fmt.Errorf("report collected at %s is older than the stored one of %s: %w",
				p.CollectedAt.UTC().Format(time.RFC3339Nano), goTime(prev).Format(time.RFC3339Nano), store.ErrConflict)
		}
	}
	if err != nil {
		return fmt.Errorf("set posture of device %s: %w", id, dbErr(err))
	}
	return nil
}

// PostureProfiles implements store.Store.
func (s *Store) PostureProfiles(ctx context.Context) ([]api.PostureProfile, error) {
	rows, err := s.pool.Query(ctx, `SELECT name, body FROM posture_profiles ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list posture profiles: %w", err)
	}
	out, err := collect(rows, func(row pgx.CollectableRow) (api.PostureProfile, error) {
		var name string
		var p api.PostureProfile
		if err := row.Scan(&name, &p); err != nil {
			return p, fmt.Errorf("%s: %w", name, err)
		}
		p.Name = name
		return p, nil
	})
	if err != nil {
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
	_, err = s.pool.Exec(ctx, `INSERT INTO posture_profiles (name, body, created_at, updated_at) VALUES ($1, $2, $3, $3)`,
		p.Name, body, now)
	if err != nil {
		return fmt.Errorf("create posture profile %q: %w", p.Name, dbErr(err))
	}
	return nil
}

// UpdatePostureProfile implements store.Store.
func (s *Store) UpdatePostureProfile(ctx context.Context, p api.PostureProfile) error {
	body, err := dbJSON(p)
	if err != nil {
		return fmt.Errorf("update posture profile %q: %w", p.Name, err)
	}
	err = mustAffect(s.pool.Exec(ctx, `UPDATE posture_profiles SET body = $1, updated_at = $2 WHERE name = $3`, body, time.Now(), p.Name))
	if err != nil {
		return fmt.Errorf("update posture profile %q: %w", p.Name, err)
	}
	return nil
}

// DeletePostureProfile implements store.Store.
func (s *Store) DeletePostureProfile(ctx context.Context, name string) error {
	if err := mustAffect(s.pool.Exec(ctx, `DELETE FROM posture_profiles WHERE name = $1`, name)); err != nil {
		return fmt.Errorf("delete posture profile %q: %w", name, err)
	}
	return nil
}
