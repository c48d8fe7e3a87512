package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/netip"

	"github.com/keyhole-net/keyhole/controller/ipam"
	"github.com/keyhole-net/keyhole/controller/store"
	"github.com/keyhole-net/keyhole/internal/api"
)

// allocate hands out the next never-used address of pool to owner, inside
// the caller's transaction so a failed create gives the address back. The
// counter makes it O(1); the ip_allocations table (never pruned) makes it
// impossible to hand an address out twice, even after pools are changed to
// overlap ones used before: taken addresses are skipped.
func allocate(ctx context.Context, tx *sql.Tx, pool netip.Prefix, owner string) (netip.Addr, error) {
	poolKey := pool.String()
	var next int64
	err := tx.QueryRowContext(ctx, `SELECT next FROM pool_counters WHERE pool = ?`, poolKey).Scan(&next)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return netip.Addr{}, fmt.Errorf("allocate from %v: %w", pool, err)
	}
	for {
		addr, err := ipam.Nth(pool, uint64(next))
		if err != nil {
			return netip.Addr{}, fmt.Errorf("allocate from %v: %w", pool, err)
		}
		next++
		res, err := tx.ExecContext(ctx, `INSERT INTO ip_allocations (ip, pool, owner) VALUES (?, ?, ?) ON CONFLICT (ip) DO NOTHING`,
			addr.String(), poolKey, owner)
		if err != nil {
			return netip.Addr{}, fmt.Errorf("allocate from %v: %w", pool, err)
		}
		if n, err := res.RowsAffected(); err != nil {
			return netip.Addr{}, fmt.Errorf("allocate from %v: %w", pool, err)
		} else if n == 0 {
			continue // taken through an overlapping pool; try the next one
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO pool_counters (pool, next) VALUES (?, ?)
			ON CONFLICT (pool) DO UPDATE SET next = excluded.next`, poolKey, next); err != nil {
			return netip.Addr{}, fmt.Errorf("allocate from %v: %w", pool, err)
		}
		return addr, nil
	}
}

// CreateApp implements store.Store. Each domain keeps the virtual IP it got
// the first time any app claimed it, so deleting and re-creating an app does
// not move its addresses; a domain claimed by another live app is a conflict.
func (s *Store) CreateApp(ctx context.Context, a store.App) (store.App, error) {
	if a.ID == "" {
		id, err := newID("app_")
		if err != nil {
			return store.App{}, fmt.Errorf("create app %q: %w", a.Name, err)
		}
		a.ID = api.AppID(id)
	}
	a.CreatedAt = orNow(a.CreatedAt)
	a.Domains = dedupe(a.Domains)
	addresses, err := dbJSON(a.Addresses)
	if err != nil {
		return store.App{}, fmt.Errorf("create app %q: %w", a.Name, err)
	}
	ports, err := dbJSON(a.Ports)
	if err != nil {
		return store.App{}, fmt.Errorf("create app %q: %w", a.Name, err)
	}
	domains, err := dbJSON(a.Domains)
	if err != nil {
		return store.App{}, fmt.Errorf("create app %q: %w", a.Name, err)
	}
	err = s.write(ctx, func(tx *sql.Tx) error {
		a.VirtualIPs = nil
		for _, d := range a.Domains {
			var owner string
			err := tx.QueryRowContext(ctx, `SELECT a.name FROM app_domains d JOIN apps a ON a.id = d.app_id WHERE d.domain = ?`, d).Scan(&owner)
			if err == nil {
				return fmt.Errorf("domain %q belongs to app %q: %w", d, owner, store.ErrConflict)
			} else if !errors.Is(err, sql.ErrNoRows) {
				return err
			}
			if store.IsWildcard(d) {
				continue // names under it get addresses on demand (AddWildcardName)
			}
			vip, err := s.domainVIP(ctx, tx, d)
			if err != nil {
				return err
			}
			if a.VirtualIPs == nil {
				a.VirtualIPs = make(map[string]netip.Addr, len(a.Domains))
			}
			a.VirtualIPs[d] = vip
		}
		vips, err := dbJSON(a.VirtualIPs)
		if err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `
			INSERT INTO apps (id, name, addresses, domains, virtual_ips, ports, gateway_group, created_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
			string(a.ID), a.Name, addresses, domains, vips, ports, a.GatewayGroup, dbTime(a.CreatedAt))
		if isConstraint(err, sqliteFK) {
			return fmt.Errorf("gateway group %q: %w", a.GatewayGroup, store.ErrNotFound)
		}
		if err != nil {
			return dbErr(err)
		}
		for _, d := range a.Domains {
			if _, err := tx.ExecContext(ctx, `INSERT INTO app_domains (domain, app_id) VALUES (?, ?)`, d, string(a.ID)); err != nil {
				return dbErr(err)
			}
		}
		return nil
	})
	if err != nil {
		return store.App{}, fmt.Errorf("create app %q: %w", a.Name, err)
	}
	return a, nil
}

// domainVIP returns the domain's virtual IP, allocating it on first use.
func (s *Store) domainVIP(ctx context.Context, tx *sql.Tx, domain string) (netip.Addr, error) {
	var ip string
	err := tx.QueryRowContext(ctx, `SELECT ip FROM domain_vips WHERE domain = ?`, domain).Scan(&ip)
	if err == nil {
		return netip.ParseAddr(ip)
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return netip.Addr{}, err
	}
	vip, err := allocate(ctx, tx, s.pools.Apps, "domain:"+domain)
	if err != nil {
		return netip.Addr{}, err
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO domain_vips (domain, ip) VALUES (?, ?)`, domain, vip.String()); err != nil {
		return netip.Addr{}, dbErr(err)
	}
	return vip, nil
}

// dedupe drops repeated strings, keeping the first occurrence's place.
func dedupe(ss []string) []string {
	if len(ss) == 0 {
		return nil
	}
	seen := make(map[string]bool, len(ss))
	out := make([]string, 0, len(ss))
	for _, s := range ss {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

const appColumns = `id, name, addresses, domains, virtual_ips, ports, gateway_group, created_at`

func scanApp(sc scanner) (store.App, error) {
	var a store.App
	var id, addresses, domains, vips, ports string
	var created sql.NullInt64
	if err := sc.Scan(&id, &a.Name, &addresses, &domains, &vips, &ports, &a.GatewayGroup, &created); err != nil {
		return store.App{}, dbErr(err)
	}
	a.ID = api.AppID(id)
	a.CreatedAt = goTime(created)
	for _, f := range []struct {
		s string
		v any
	}{{addresses, &a.Addresses}, {domains, &a.Domains}, {vips, &a.VirtualIPs}, {ports, &a.Ports}} {
		if err := goJSON(f.s, f.v); err != nil {
			return store.App{}, fmt.Errorf("app %q: decode: %w", a.Name, err)
		}
	}
	return a, nil
}

// App implements store.Store.
func (s *Store) App(ctx context.Context, name string) (store.App, error) {
	a, err := scanApp(s.r.QueryRowContext(ctx, `SELECT `+appColumns+` FROM apps WHERE name = ?`, name))
	if err != nil {
		return store.App{}, fmt.Errorf("app %q: %w", name, err)
	}
	return a, nil
}

// Apps implements store.Store, ordered by name.
func (s *Store) Apps(ctx context.Context) ([]store.App, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+appColumns+` FROM apps ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list apps: %w", err)
	}
	defer rows.Close()
	var out []store.App
	for rows.Next() {
		a, err := scanApp(rows)
		if err != nil {
			return nil, fmt.Errorf("list apps: %w", err)
		}
		out = append(out, a)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list apps: %w", err)
	}
	return out, nil
}

// DeleteApp implements store.Store. The app's domains and wildcard names
// become free for another app; their virtual IPs stay reserved to the names.
func (s *Store) DeleteApp(ctx context.Context, name string) error {
	err := s.write(ctx, func(tx *sql.Tx) error {
		return mustAffect(tx.ExecContext(ctx, `DELETE FROM apps WHERE name = ?`, name))
	})
	if err != nil {
		return fmt.Errorf("delete app %q: %w", name, err)
	}
	return nil
}

// AddWildcardName implements store.Store.
func (s *Store) AddWildcardName(ctx context.Context, n store.WildcardName, limit int) (store.WildcardName, bool, error) {
	n.CreatedAt = orNow(n.CreatedAt)
	var added bool
	err := s.write(ctx, func(tx *sql.Tx) error {
		added = false
		var created sql.NullInt64
		err := tx.QueryRowContext(ctx, `SELECT created_at FROM wildcard_names WHERE app_id = ? AND name = ?`,
			string(n.AppID), n.Name).Scan(&created)
		switch {
		case err == nil:
			n.CreatedAt = goTime(created)
		case !errors.Is(err, sql.ErrNoRows):
			return dbErr(err)
		default:
			var count int
			if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM wildcard_names WHERE app_id = ?`, string(n.AppID)).Scan(&count); err != nil {
				return dbErr(err)
			}
			if count >= limit {
				return fmt.Errorf("app holds %d names: %w", count, store.ErrLimit)
			}
			_, err := tx.ExecContext(ctx, `INSERT INTO wildcard_names (app_id, name, created_at) VALUES (?, ?, ?)`,
				string(n.AppID), n.Name, dbTime(n.CreatedAt))
			if isConstraint(err, sqliteFK) {
				return fmt.Errorf("app %s: %w", n.AppID, store.ErrNotFound)
			}
			if err != nil {
				return dbErr(err)
			}
			added = true
		}
		// Existing names have their address already; domainVIP only reads it.
		vip, err := s.domainVIP(ctx, tx, n.Name)
		n.VirtualIP = vip
		return err
	})
	if err != nil {
		return store.WildcardName{}, false, fmt.Errorf("add wildcard name %q: %w", n.Name, err)
	}
	return n, added, nil
}

// WildcardNames implements store.Store.
func (s *Store) WildcardNames(ctx context.Context) ([]store.WildcardName, error) {
	rows, err := s.r.QueryContext(ctx, `
		SELECT w.app_id, w.name, v.ip, w.created_at
		FROM wildcard_names w JOIN domain_vips v ON v.domain = w.name
		ORDER BY w.app_id, w.name`)
	if err != nil {
		return nil, fmt.Errorf("list wildcard names: %w", err)
	}
	defer rows.Close()
	var out []store.WildcardName
	for rows.Next() {
		var n store.WildcardName
		var app, ip string
		var created sql.NullInt64
		if err := rows.Scan(&app, &n.Name, &ip, &created); err != nil {
			return nil, fmt.Errorf("list wildcard names: %w", err)
		}
		n.AppID, n.CreatedAt = api.AppID(app), goTime(created)
		if n.VirtualIP, err = netip.ParseAddr(ip); err != nil {
			return nil, fmt.Errorf("list wildcard names: %q: %w", n.Name, err)
		}
		out = append(out, n)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list wildcard names: %w", err)
	}
	return out, nil
}
