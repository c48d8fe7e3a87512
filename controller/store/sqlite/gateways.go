package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"net/netip"
	"time"

	"github.com/keyhole-net/keyhole/controller/store"
	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/key"
)

// CreateGatewayGroup implements store.Store.
func (s *Store) CreateGatewayGroup(ctx context.Context, g api.GatewayGroup) error {
	err := s.write(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO gateway_groups (name, created_at) VALUES (?, ?)`,
			g.Name, dbTime(orNow(g.CreatedAt)))
		return dbErr(err)
	})
	if err != nil {
		return fmt.Errorf("create gateway group %q: %w", g.Name, err)
	}
	return nil
}

// GatewayGroups implements store.Store; Gateways counts each group's members.
func (s *Store) GatewayGroups(ctx context.Context) ([]api.GatewayGroup, error) {
	rows, err := s.r.QueryContext(ctx, `
		SELECT g.name, g.created_at, (SELECT count(*) FROM gateways w WHERE w.group_name = g.name)
		FROM gateway_groups g ORDER BY g.name`)
	if err != nil {
		return nil, fmt.Errorf("list gateway groups: %w", err)
	}
	defer rows.Close()
	var out []api.GatewayGroup
	for rows.Next() {
		var g api.GatewayGroup
		var created sql.NullInt64
		if err := rows.Scan(&g.Name, &created, &g.Gateways); err != nil {
			return nil, fmt.Errorf("list gateway groups: %w", err)
		}
		g.CreatedAt = goTime(created)
		out = append(out, g)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list gateway groups: %w", err)
	}
	return out, nil
}

// CreateEnrolToken implements store.Store.
func (s *Store) CreateEnrolToken(ctx context.Context, t store.EnrolToken) error {
	err := s.write(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO enrol_tokens (hash, group_name, created_at, expires_at) VALUES (?, ?, ?, ?)`,
			t.Hash, t.Group, dbTime(orNow(t.CreatedAt)), dbTime(t.ExpiresAt))
		if isConstraint(err, sqliteFK) {
			return fmt.Errorf("gateway group %q: %w", t.Group, store.ErrNotFound)
		}
		return dbErr(err)
	})
	if err != nil {
		// The hash is not the token, but it is still not for logs.
		return fmt.Errorf("create enrolment token for group %q: %w", t.Group, err)
	}
	return nil
}

// ConsumeEnrolToken implements store.Store. A used token reports
// ErrTokenUsed even once it has also expired: that is the likelier attack.
// A token expires at ExpiresAt exactly.
func (s *Store) ConsumeEnrolToken(ctx context.Context, hash string, now time.Time) (store.EnrolToken, error) {
	var t store.EnrolToken
	err := s.write(ctx, func(tx *sql.Tx) error {
		var created, expires, used sql.NullInt64
		err := tx.QueryRowContext(ctx, `SELECT hash, group_name, created_at, expires_at, used_at FROM enrol_tokens WHERE hash = ?`, hash).
			Scan(&t.Hash, &t.Group, &created, &expires, &used)
		if err != nil {
			return dbErr(err)
		}
		t.CreatedAt, t.ExpiresAt = goTime(created), goTime(expires)
		switch {
		case used.Valid:
			return store.ErrTokenUsed
		case !t.ExpiresAt.IsZero() && !now.Before(t.ExpiresAt):
			return store.ErrExpired
		}
		_, err = tx.ExecContext(ctx, `UPDATE enrol_tokens SET used_at = ? WHERE hash = ?`, dbTime(orNow(now)), hash)
		return dbErr(err)
	})
	if err != nil {
		return store.EnrolToken{}, fmt.Errorf("consume enrolment token: %w", err)
	}
	return t, nil
}

// CreateGateway implements store.Store.
func (s *Store) CreateGateway(ctx context.Context, g store.Gateway) (store.Gateway, error) {
	if g.ID == "" {
		id, err := newID("gw_")
		if err != nil {
			return store.Gateway{}, fmt.Errorf("create gateway %q: %w", g.Name, err)
		}
		g.ID = api.GatewayID(id)
	}
	g.CreatedAt = orNow(g.CreatedAt)
	g.Connected = false
	endpoints, err := dbJSON(g.Endpoints)
	if err != nil {
		return store.Gateway{}, fmt.Errorf("create gateway %q: %w", g.Name, err)
	}
	err = s.write(ctx, func(tx *sql.Tx) error {
		ip, err := allocate(ctx, tx, s.pools.Gateways, "gateway:"+string(g.ID))
		if err != nil {
			return err
		}
		g.OverlayIP = ip
		_, err = tx.ExecContext(ctx, `
			INSERT INTO gateways (id, name, group_name, wg_key, overlay_ip, endpoints, last_seen, created_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
			string(g.ID), g.Name, g.Group, dbKey(g.WGPublicKey), ip.String(), endpoints, dbTime(g.LastSeen), dbTime(g.CreatedAt))
		if isConstraint(err, sqliteFK) {
			return fmt.Errorf("gateway group %q: %w", g.Group, store.ErrNotFound)
		}
		return dbErr(err)
	})
	if err != nil {
		return store.Gateway{}, fmt.Errorf("create gateway %q: %w", g.Name, err)
	}
	return g, nil
}

const gatewayColumns = `id, name, group_name, wg_key, overlay_ip, endpoints, last_seen, created_at, draining`

func scanGateway(sc scanner) (store.Gateway, error) {
	var g store.Gateway
	var id, wgKey, ip, endpoints string
	var seen, created sql.NullInt64
	if err := sc.Scan(&id, &g.Name, &g.Group, &wgKey, &ip, &endpoints, &seen, &created, &g.Draining); err != nil {
		return store.Gateway{}, dbErr(err)
	}
	g.ID = api.GatewayID(id)
	g.LastSeen, g.CreatedAt = goTime(seen), goTime(created)
	var err error
	if g.WGPublicKey, err = goKey(wgKey); err != nil {
		return store.Gateway{}, fmt.Errorf("gateway %s: %w", id, err)
	}
	if g.OverlayIP, err = goAddr(ip); err != nil {
		return store.Gateway{}, fmt.Errorf("gateway %s: %w", id, err)
	}
	if err := goJSON(endpoints, &g.Endpoints); err != nil {
		return store.Gateway{}, fmt.Errorf("gateway %s: endpoints: %w", id, err)
	}
	return g, nil
}

// Gateway implements store.Store.
func (s *Store) Gateway(ctx context.Context, id api.GatewayID) (store.Gateway, error) {
	g, err := scanGateway(s.r.QueryRowContext(ctx, `SELECT `+gatewayColumns+` FROM gateways WHERE id = ?`, string(id)))
	if err != nil {
		return store.Gateway{}, fmt.Errorf("gateway %s: %w", id, err)
	}
	return g, nil
}

// Gateways implements store.Store, ordered by group, then name.
func (s *Store) Gateways(ctx context.Context) ([]store.Gateway, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+gatewayColumns+` FROM gateways ORDER BY group_name, name, id`)
	if err != nil {
		return nil, fmt.Errorf("list gateways: %w", err)
	}
	defer rows.Close()
	var out []store.Gateway
	for rows.Next() {
		g, err := scanGateway(rows)
		if err != nil {
			return nil, fmt.Errorf("list gateways: %w", err)
		}
		out = append(out, g)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list gateways: %w", err)
	}
	return out, nil
}

// UpdateGatewayStatus implements store.Store.
func (s *Store) UpdateGatewayStatus(ctx context.Context, id api.GatewayID, wg key.WGPublic, endpoints []netip.AddrPort, seen time.Time) error {
	eps, err := dbJSON(endpoints)
	if err != nil {
		return fmt.Errorf("update gateway %s: %w", id, err)
	}
	err = s.write(ctx, func(tx *sql.Tx) error {
		return mustAffect(tx.ExecContext(ctx, `UPDATE gateways SET wg_key = ?, endpoints = ?, last_seen = ? WHERE id = ?`,
			dbKey(wg), eps, dbTime(seen), string(id)))
	})
	if err != nil {
		return fmt.Errorf("update gateway %s: %w", id, err)
	}
	return nil
}

// SetGatewayDraining implements store.Store.
func (s *Store) SetGatewayDraining(ctx context.Context, id api.GatewayID, draining bool) error {
	err := s.write(ctx, func(tx *sql.Tx) error {
		return mustAffect(tx.ExecContext(ctx, `UPDATE gateways SET draining = ? WHERE id = ?`, draining, string(id)))
	})
	if err != nil {
		return fmt.Errorf("set gateway %s draining: %w", id, err)
	}
	return nil
}

// CreateAdminToken implements store.Store.
func (s *Store) CreateAdminToken(ctx context.Context, t store.AdminToken) error {
	err := s.write(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO admin_tokens (id, hash, scope, created_at, revoked_at) VALUES (?, ?, ?, ?, ?)`,
			t.ID, t.Hash, t.Scope, dbTime(orNow(t.CreatedAt)), dbTime(t.RevokedAt))
		return dbErr(err)
	})
	if err != nil {
		return fmt.Errorf("create admin token %s: %w", t.ID, err)
	}
	return nil
}

// AdminTokenByHash implements store.Store. A revoked token is returned with
// RevokedAt set; refusing it is the caller's decision.
func (s *Store) AdminTokenByHash(ctx context.Context, hash string) (store.AdminToken, error) {
	var t store.AdminToken
	var created, revoked sql.NullInt64
	err := s.r.QueryRowContext(ctx, `SELECT id, hash, scope, created_at, revoked_at FROM admin_tokens WHERE hash = ?`, hash).
		Scan(&t.ID, &t.Hash, &t.Scope, &created, &revoked)
	if err != nil {
		return store.AdminToken{}, fmt.Errorf("admin token: %w", dbErr(err))
	}
	t.CreatedAt, t.RevokedAt = goTime(created), goTime(revoked)
	return t, nil
}
