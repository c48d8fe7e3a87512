package postgres

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/keyhole-net/keyhole/controller/ipam"
	"github.com/keyhole-net/keyhole/controller/store"
	"github.com/keyhole-net/keyhole/internal/api"
)

// lockPool locks pool's counter row for the rest of tx and returns the
// next index to try, creating the row on first use. An upsert rather than
// SELECT … FOR UPDATE so that two controllers allocating from a new pool
// at once do not both insert the row: the second waits for the first and
// then reads its count.
func lockPool(ctx context.Context, tx pgx.Tx, pool netip.Prefix) (int64, error) {
	var next int64
	err := tx.QueryRow(ctx, `
		INSERT INTO pool_counters (pool, next) VALUES ($1, 0)
		ON CONFLICT (pool) DO UPDATE SET next = pool_counters.next
		RETURNING next`, pool.String()).Scan(&next)
	if err != nil {
		return 0, fmt.Errorf("allocate from %v: %w", pool, err)
	}
	return next, nil
}

// take hands out the first never-used address of pool at or after index
// next to owner and moves the counter past it; the caller holds the pool's
// lock (lockPool). The ip_allocations table (never pruned) makes it
// impossible to hand an address out twice, even after pools are changed to
// overlap ones used before: taken addresses are skipped. It all happens in
// the caller's transaction, so a failed create gives the address back.
func take(ctx context.Context, tx pgx.Tx, pool netip.Prefix, next int64, owner string) (netip.Addr, error) {
	poolKey := pool.String()
	for {
		addr, err := ipam.Nth(pool, uint64(next))
		if err != nil {
			return netip.Addr{}, fmt.Errorf("allocate from %v: %w", pool, err)
		}
		next++
		tag, err := tx.Exec(ctx, `INSERT INTO ip_allocations (ip, pool, owner) VALUES ($1, $2, $3) ON CONFLICT (ip) DO NOTHING`,
			addr.String(), poolKey, owner)
		if err != nil {
			return netip.Addr{}, fmt.Errorf("allocate from %v: %w", pool, err)
		}
		if tag.RowsAffected() == 0 {
			continue // taken through an overlapping pool; try the next one
		}
		if _, err := tx.Exec(ctx, `UPDATE pool_counters SET next = $2 WHERE pool = $1`, poolKey, next); err != nil {
			return netip.Addr{}, fmt.Errorf("allocate from %v: %w", pool, err)
		}
		return addr, nil
	}
}

// allocate hands out the next never-used address of pool to owner.
func allocate(ctx context.Context, tx pgx.Tx, pool netip.Prefix, owner string) (netip.Addr, error) {
	next, err := lockPool(ctx, tx, pool)
	if err != nil {
		return netip.Addr{}, err
	}
	return take(ctx, tx, pool, next, owner)
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
	err = s.tx(ctx, func(tx pgx.Tx) error {
		a.VirtualIPs = nil
		for _, d := range a.Domains {
			var owner string
			err := tx.QueryRow(ctx, `SELECT a.name FROM app_domains d JOIN apps a ON a.id = d.app_id WHERE d.domain = $1`, d).Scan(&owner)
			if err == nil {
				return fmt.Errorf("domain %q belongs to app %q: %w", d, owner, store.ErrConflict)
			} else if !errors.Is(err, pgx.ErrNoRows) {
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
		_, err = tx.Exec(ctx, `
			INSERT INTO apps (id, name, addresses, domains, virtual_ips, ports, gateway_group, created_at)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
			string(a.ID), a.Name, addresses, domains, vips, ports, a.GatewayGroup, dbTime(a.CreatedAt))
		if isFK(err) {
			return fmt.Errorf("gateway group %q: %w", a.GatewayGroup, store.ErrNotFound)
		}
		if err != nil {
			return dbErr(err)
		}
		if len(a.Domains) > 0 {
			// A domain another controller gave to its app meanwhile fails
			// here, on the primary key: ErrConflict.
			if _, err := tx.Exec(ctx, `INSERT INTO app_domains (domain, app_id) SELECT unnest($1::text[]), $2`,
				a.Domains, string(a.ID)); err != nil {
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
// A domain without one is looked up again once the apps pool is locked:
// another controller may have given it one in between, and it must not
// get two.
func (s *Store) domainVIP(ctx context.Context, tx pgx.Tx, domain string) (netip.Addr, error) {
	lookup := func() (netip.Addr, bool, error) {
		var ip string
		err := tx.QueryRow(ctx, `SELECT ip FROM domain_vips WHERE domain = $1`, domain).Scan(&ip)
		if errors.Is(err, pgx.ErrNoRows) {
			return netip.Addr{}, false, nil
		}
		if err != nil {
			return netip.Addr{}, false, err
		}
		a, err := netip.ParseAddr(ip)
		return a, true, err
	}
	if vip, ok, err := lookup(); ok || err != nil {
		return vip, err
	}
	next, err := lockPool(ctx, tx, s.pools.Apps)
	if err != nil {
		return netip.Addr{}, err
	}
	if vip, ok, err := lookup(); ok || err != nil {
		return vip, err
	}
	vip, err := take(ctx, tx, s.pools.Apps, next, "domain:"+domain)
	if err != nil {
		return netip.Addr{}, err
	}
	if _, err := tx.Exec(ctx, `INSERT INTO domain_vips (domain, ip) VALUES ($1, $2)`, domain, vip.String()); err != nil {
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

func scanApp(row pgx.Row) (store.App, error) {
	var a store.App
	var id string
	var created pgtype.Timestamptz
	if err := row.Scan(&id, &a.Name, &a.Addresses, &a.Domains, &a.VirtualIPs, &a.Ports, &a.GatewayGroup, &created); err != nil {
		return store.App{}, dbErr(err)
	}
	a.ID = api.AppID(id)
	a.CreatedAt = goTime(created)
	return a, nil
}

// App implements store.Store.
func (s *Store) App(ctx context.Context, name string) (store.App, error) {
	a, err := scanApp(s.pool.QueryRow(ctx, `SELECT `+appColumns+` FROM apps WHERE name = $1`, name))
	if err != nil {
		return store.App{}, fmt.Errorf("app %q: %w", name, err)
	}
	return a, nil
}

// Apps implements store.Store, ordered by name.
func (s *Store) Apps(ctx context.Context) ([]store.App, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+appColumns+` FROM apps ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list apps: %w", err)
	}
	out, err := collect(rows, func(row pgx.CollectableRow) (store.App, error) { return scanApp(row) })
	if err != nil {
		return nil, fmt.Errorf("list apps: %w", err)
	}
	return out, nil
}

// DeleteApp implements store.Store. The app's domains and wildcard names
// become free for another app; their virtual IPs stay reserved to the names.
func (s *Store) DeleteApp(ctx context.Context, name string) error {
	if err := mustAffect(s.pool.Exec(ctx, `DELETE FROM apps WHERE name = $1`, name)); err != nil {
		return fmt.Errorf("delete app %q: %w", name, err)
	}
	return nil
}

// AddWildcardName implements store.Store. The app's row stays locked from
// the count to the commit, so controllers adding names to one app at once
// cannot together pass the limit.
func (s *Store) AddWildcardName(ctx context.Context, n store.WildcardName, limit int) (store.WildcardName, bool, error) {
	n.CreatedAt = orNow(n.CreatedAt)
	created := n.CreatedAt
	var added bool
	err := s.tx(ctx, func(tx pgx.Tx) error {
		added, n.CreatedAt = false, created
		var one int
		err := tx.QueryRow(ctx, `SELECT 1 FROM apps WHERE id = $1 FOR UPDATE`, string(n.AppID)).Scan(&one)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("app %s: %w", n.AppID, store.ErrNotFound)
		} else if err != nil {
			return err
		}
		var at pgtype.Timestamptz
		err = tx.QueryRow(ctx, `SELECT created_at FROM wildcard_names WHERE app_id = $1 AND name = $2`,
			string(n.AppID), n.Name).Scan(&at)
		switch {
		case err == nil:
			n.CreatedAt = goTime(at)
		case !errors.Is(err, pgx.ErrNoRows):
			return dbErr(err)
		default:
			var count int
			if err := tx.QueryRow(ctx, `SELECT count(*) FROM wildcard_names WHERE app_id = $1`, string(n.AppID)).Scan(&count); err != nil {
				return dbErr(err)
			}
			if count >= limit {
				return fmt.Errorf("app holds %d names: %w", count, store.ErrLimit)
			}
			if _, err := tx.Exec(ctx, `INSERT INTO wildcard_names (app_id, name, created_at) VALUES ($1, $2, $3)`,
				string(n.AppID), n.Name, dbTime(n.CreatedAt)); err != nil {
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
	rows, err := s.pool.Query(ctx, `
		SELECT w.app_id, w.name, v.ip, w.created_at
		FROM wildcard_names w JOIN domain_vips v ON v.domain = w.name
		ORDER BY w.app_id, w.name`)
	if err != nil {
		return nil, fmt.Errorf("list wildcard names: %w", err)
	}
	out, err := collect(rows, func(row pgx.CollectableRow) (store.WildcardName, error) {
		var n store.WildcardName
		var app, ip string
		var created pgtype.Timestamptz
		if err := row.Scan(&app, &n.Name, &ip, &created); err != nil {
			return n, err
		}
		n.AppID, n.CreatedAt = api.AppID(app), goTime(created)
		var err error
		if n.VirtualIP, err = netip.ParseAddr(ip); err != nil {
			return n, fmt.Errorf("%q: %w", n.Name, err)
		}
		return n, nil
	})
	if err != nil {
		return nil, fmt.Errorf("list wildcard names: %w", err)
	}
	return out, nil
}
