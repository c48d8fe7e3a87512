package postgres

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/keyhole-net/keyhole/controller/store"
	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/key"
)

// CreateGatewayGroup implements store.Store.
func (s *Store) CreateGatewayGroup(ctx context.Context, g api.GatewayGroup) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO gateway_groups (name, created_at) VALUES ($1, $2)`,
		g.Name, dbTime(orNow(g.CreatedAt)))
	if err != nil {
		return fmt.Errorf("create gateway group %q: %w", g.Name, dbErr(err))
	}
	return nil
}

// GatewayGroups implements store.Store; Gateways counts each group's members.
func (s *Store) GatewayGroups(ctx context.Context) ([]api.GatewayGroup, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT g.name, g.created_at, (SELECT count(*) FROM gateways w WHERE w.group_name = g.name)
		FROM gateway_groups g ORDER BY g.name`)
	if err != nil {
		return nil, fmt.Errorf("list gateway groups: %w", err)
	}
	out, err := collect(rows, func(row pgx.CollectableRow) (api.GatewayGroup, error) {
		var g api.GatewayGroup
		var created pgtype.Timestamptz
		err := row.Scan(&g.Name, &created, &g.Gateways)
		g.CreatedAt = goTime(created)
		return g, err
	})
	if err != nil {
		return nil, fmt.Errorf("list gateway groups: %w", err)
	}
	return out, nil
}

// CreateEnrolToken implements store.Store.
func (s *Store) CreateEnrolToken(ctx context.Context, t store.EnrolToken) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO enrol_tokens (hash, group_name, created_at, expires_at) VALUES ($1, $2, $3, $4)`,
		t.Hash, t.Group, dbTime(orNow(t.CreatedAt)), dbTime(t.ExpiresAt))
	if isFK(err) {
		err = fmt.Errorf("gateway group %q: %w", t.Group, store.ErrNotFound)
	}
	if err != nil {
		// The hash is not the token, but it is still not for logs.
		return fmt.Errorf("create enrolment token for group %q: %w", t.Group, dbErr(err))
	}
	return nil
}

// ConsumeEnrolToken implements store.Store. A used token reports
// ErrTokenUsed even once it has also expired: that is the likelier attack.
// A token expires at ExpiresAt exactly. The row is locked from the check
// to the update, so of two controllers consuming one token only one wins.
func (s *Store) ConsumeEnrolToken(ctx context.Context, hash string, now time.Time) (store.EnrolToken, error) {
	var t store.EnrolToken
	err := s.tx(ctx, func(tx pgx.Tx) error {
		var created, expires, used pgtype.Timestamptz
		err := tx.QueryRow(ctx, `SELECT hash, group_name, created_at, expires_at, used_at FROM enrol_tokens WHERE hash = $1 FOR UPDATE`, hash).
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
		_, err = tx.Exec(ctx, `UPDATE enrol_tokens SET used_at = $1 WHERE hash = $2`, dbTime(orNow(now)), hash)
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
	err = s.tx(ctx, func(tx pgx.Tx) error {
		ip, err := allocate(ctx, tx, s.pools.Gateways, "gateway:"+string(g.ID))
		if err != nil {
			return err
		}
		g.OverlayIP = ip
		_, err = tx.Exec(ctx, `
			INSERT INTO gateways (id, name, group_name, wg_key, overlay_ip, endpoints, last_seen, created_at)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
			string(g.ID), g.Name, g.Group, dbKey(g.WGPublicKey), ip.String(), endpoints, dbTime(g.LastSeen), dbTime(g.CreatedAt))
		if isFK(err) {
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

func scanGateway(row pgx.Row) (store.Gateway, error) {
	var g store.Gateway
	var id, wgKey, ip string
	var seen, created pgtype.Timestamptz
	if err := row.Scan(&id, &g.Name, &g.Group, &wgKey, &ip, &g.Endpoints, &seen, &created, &g.Draining); err != nil {
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
	return g, nil
}

// Gateway implements store.Store.
func (s *Store) Gateway(ctx context.Context, id api.GatewayID) (store.Gateway, error) {
	g, err := scanGateway(s.pool.QueryRow(ctx, `SELECT `+gatewayColumns+` FROM gateways WHERE id = $1`, string(id)))
	if err != nil {
		return store.Gateway{}, fmt.Errorf("gateway %s: %w", id, err)
	}
	return g, nil
}

// Gateways implements store.Store, ordered by group, then name.
func (s *Store) Gateways(ctx context.Context) ([]store.Gateway, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+gatewayColumns+` FROM gateways ORDER BY group_name, name, id`)
	if err != nil {
		return nil, fmt.Errorf("list gateways: %w", err)
	}
	out, err := collect(rows, func(row pgx.CollectableRow) (store.Gateway, error) { return scanGateway(row) })
	if err != nil {
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
	err = mustAffect(s.pool.Exec(ctx, `UPDATE gateways SET wg_key = $1, endpoints = $2, last_seen = $3 WHERE id = $4`,
		dbKey(wg), eps, dbTime(seen), string(id)))
	if err != nil {
		return fmt.Errorf("update gateway %s: %w", id, err)
	}
	return nil
}

// SetGatewayDraining implements store.Store.
func (s *Store) SetGatewayDraining(ctx context.Context, id api.GatewayID, draining bool) error {
	if err := mustAffect(s.pool.Exec(ctx, `UPDATE gateways SET draining = $1 WHERE id = $2`, draining, string(id))); err != nil {
		return fmt.Errorf("set gateway %s draining: %w", id, err)
	}
	return nil
}

// CreateAdminToken implements store.Store.
func (s *Store) CreateAdminToken(ctx context.Context, t store.AdminToken) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO admin_tokens (id, hash, scope, created_at, revoked_at) VALUES ($1, $2, $3, $4, $5)`,
		t.ID, t.Hash, t.Scope, dbTime(orNow(t.CreatedAt)), dbTime(t.RevokedAt))
	if err != nil {
		return fmt.Errorf("create admin token %s: %w", t.ID, dbErr(err))
	}
	return nil
}

// AdminTokenByHash implements store.Store. A revoked token is returned with
// RevokedAt set; refusing it is the caller's decision.
func (s *Store) AdminTokenByHash(ctx context.Context, hash string) (store.AdminToken, error) {
	var t store.AdminToken
	var created, revoked pgtype.Timestamptz
	err := s.pool.QueryRow(ctx, `SELECT id, hash, scope, created_at, revoked_at FROM admin_tokens WHERE hash = $1`, hash).
		Scan(&t.ID, &t.Hash, &t.Scope, &created, &revoked)
	if err != nil {
		return store.AdminToken{}, fmt.Errorf("admin token: %w", dbErr(err))
	}
	t.CreatedAt, t.RevokedAt = goTime(created), goTime(revoked)
	return t, nil
}
