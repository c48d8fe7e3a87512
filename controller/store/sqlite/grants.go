package sqlite

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/keyhole-net/keyhole/controller/store"
	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/key"
)

const insertGrantSQL = `
	INSERT INTO grants (id, device_id, user_name, app, app_id, gateway_id, client_ip, client_wg_key,
		targets, ports, rule, created_at, not_after, revoked_at, revoke_reason, name, export, source, mfa_at)
	VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`

const grantColumns = `id, device_id, user_name, app, app_id, gateway_id, client_ip, client_wg_key,
	targets, ports, rule, created_at, not_after, revoked_at, revoke_reason, name, export, source, mfa_at`

const selectGrantSQL = `SELECT ` + grantColumns + ` FROM grants`

// The LiveGrants queries, indexed by filter; see Store.liveGrants.
const (
	liveAll = iota
	liveByGateway
	liveByDevice
	liveByBoth
	liveByDeviceApp
	numLiveFilters
)

// liveGrantsSQL returns the LiveGrants query for a filter.
func liveGrantsSQL(filter int) string {
	q := selectGrantSQL + ` WHERE revoked_at IS NULL AND not_after > ?`
	switch filter {
	case liveByGateway:
		q += ` AND gateway_id = ?`
	case liveByDevice:
		q += ` AND device_id = ?`
	case liveByBoth:
		// "+" keeps SQLite off the gateway index: a device has a handful
		// of grants, a gateway thousands.
		q += ` AND +gateway_id = ? AND device_id = ?`
	case liveByDeviceApp:
		q += ` AND device_id = ? AND app_id = ?`
	}
	return q + ` ORDER BY created_at, id`
}

func scanGrant(sc scanner) (store.Grant, error) {
	var g store.Grant
	var id, dev, appID, gw, ip, wgKey, targets, ports, rule, source string
	var created, notAfter, revoked, mfaAt sql.NullInt64
	var export int
	if err := sc.Scan(&id, &dev, &g.User, &g.App, &appID, &gw, &ip, &wgKey,
		&targets, &ports, &rule, &created, &notAfter, &revoked, &g.RevokeReason, &g.Name, &export, &source, &mfaAt); err != nil {
		return store.Grant{}, dbErr(err)
	}
	g.Export, g.Facts.MFAAt = export != 0, goTime(mfaAt)
	g.ID, g.DeviceID, g.AppID, g.GatewayID, g.Rule = api.GrantID(id), api.DeviceID(dev), api.AppID(appID), api.GatewayID(gw), api.RuleID(rule)
	g.CreatedAt, g.NotAfter, g.RevokedAt = goTime(created), goTime(notAfter), goTime(revoked)
	var err error
	if g.ClientIP, err = goAddr(ip); err != nil {
		return store.Grant{}, fmt.Errorf("grant %s: %w", id, err)
	}
	if g.ClientWGKey, err = goKey(wgKey); err != nil {
		return store.Grant{}, fmt.Errorf("grant %s: %w", id, err)
	}
	if g.Facts.Source, err = goAddr(source); err != nil {
		return store.Grant{}, fmt.Errorf("grant %s: source: %w", id, err)
	}
	if err := goJSON(targets, &g.Targets); err != nil {
		return store.Grant{}, fmt.Errorf("grant %s: targets: %w", id, err)
	}
	if err := goJSON(ports, &g.Ports); err != nil {
		return store.Grant{}, fmt.Errorf("grant %s: ports: %w", id, err)
	}
	return g, nil
}

// CreateGrant implements store.Store. It is the hot path of the product, so
// concurrent calls are group-committed: while one transaction commits, the
// grants that arrive queue up, and the next caller to get the writer
// commits all of them in one transaction, each under its own savepoint so
// one bad grant (a duplicate ID) fails alone. A commit costs about the same
// for one grant as for fifty, so throughput grows with concurrency, and no
// caller waits for more than the batch ahead of it and its own.
func (s *Store) CreateGrant(ctx context.Context, g store.Grant, ev api.AuditEvent) error {
	req, err := newGrantReq(ctx, g, ev)
	if err != nil {
		return fmt.Errorf("create grant %s: %w", g.ID, err)
	}

	s.grants.mu.Lock()
	s.grants.pending = append(s.grants.pending, req)
	s.grants.mu.Unlock()

	s.grants.commitMu.Lock()
	select {
	case err = <-req.done: // an earlier caller committed our grant with its batch
	default:
		// Take everything queued, which includes req: it is not done, so
		// no batch has taken it. The batch is bounded by the number of
		// callers, each of which queues one grant at a time.
		s.grants.mu.Lock()
		batch := s.grants.pending
		s.grants.pending = nil
		s.grants.mu.Unlock()
		s.commitGrants(ctx, batch)
		err = <-req.done
	}
	s.grants.commitMu.Unlock()
	if err != nil {
		return fmt.Errorf("create grant %s: %w", g.ID, err)
	}
	return nil
}

// grantBatcher queues CreateGrant calls for group commit.
type grantBatcher struct {
	commitMu sync.Mutex // held while a batch is taken and committed

	mu      sync.Mutex  // guards pending
	pending []*grantReq // FIFO of grants not yet taken by a batch
}

// grantReq is one queued CreateGrant call. done receives exactly one
// result.
type grantReq struct {
	ctx            context.Context
	g              store.Grant
	ev             api.AuditEvent
	targets, ports string
	done           chan error
}

// newGrantReq encodes g's list columns and names g in ev.
func newGrantReq(ctx context.Context, g store.Grant, ev api.AuditEvent) (*grantReq, error) {
	req := &grantReq{ctx: ctx, g: g, ev: ev, done: make(chan error, 1)}
	var err error
	if req.targets, err = dbJSON(g.Targets); err != nil {
		return nil, err
	}
	if req.ports, err = dbJSON(g.Ports); err != nil {
		return nil, err
	}
	if req.ev.GrantID == "" {
		req.ev.GrantID = g.ID
	}
	return req, nil
}

// commitGrants stores batch in one transaction and answers every request.
// The transaction does not inherit the committing caller's cancellation:
// it carries other callers' grants too. A request whose own context is
// done by now is skipped.
func (s *Store) commitGrants(ctx context.Context, batch []*grantReq) {
	ctx = context.WithoutCancel(ctx)
	live := batch[:0:0]
	for _, r := range batch {
		if err := r.ctx.Err(); err != nil {
			r.done <- err
			continue
		}
		live = append(live, r)
	}
	if len(live) == 0 {
		return
	}
	results := make([]error, len(live))
	err := s.write(ctx, func(tx *sql.Tx) error {
		insGrant, insAudit := tx.StmtContext(ctx, s.insertGrant), tx.StmtContext(ctx, s.insertAudit)
		if len(live) == 1 {
			// Alone, the transaction itself is the savepoint.
			return s.insertGrantRow(ctx, insGrant, insAudit, live[0])
		}
		for i, r := range live {
			if _, err := tx.ExecContext(ctx, `SAVEPOINT grant_req`); err != nil {
				return err
			}
			if results[i] = s.insertGrantRow(ctx, insGrant, insAudit, r); results[i] != nil {
				if _, err := tx.ExecContext(ctx, `ROLLBACK TO grant_req`); err != nil {
					return err
				}
			}
			if _, err := tx.ExecContext(ctx, `RELEASE grant_req`); err != nil {
				return err
			}
		}
		return nil
	})
	for i, r := range live {
		if err != nil {
			r.done <- err
		} else {
			r.done <- results[i]
		}
	}
}

func (s *Store) insertGrantRow(ctx context.Context, insGrant, insAudit *sql.Stmt, r *grantReq) error {
	g, ev := &r.g, &r.ev
	_, err := insGrant.ExecContext(ctx,
		string(g.ID), string(g.DeviceID), g.User, g.App, string(g.AppID), string(g.GatewayID),
		dbAddr(g.ClientIP), dbKey(g.ClientWGKey), r.targets, r.ports, string(g.Rule),
		dbTime(orNow(g.CreatedAt)), g.NotAfter.UnixNano(), dbTime(g.RevokedAt), g.RevokeReason, g.Name, boolInt(g.Export),
		dbAddr(g.Facts.Source), dbTime(g.Facts.MFAAt))
	if err != nil {
		return dbErr(err)
	}
	_, err = insAudit.ExecContext(ctx,
		orNow(ev.Time).UnixNano(), ev.Type, ev.Actor, ev.User, string(ev.DeviceID), ev.App,
		string(ev.GatewayID), string(ev.GrantID), string(ev.Rule), ev.Source, ev.Reason)
	if err != nil {
		return fmt.Errorf("append audit %s: %w", ev.Type, dbErr(err))
	}
	return nil
}

// Grant implements store.Store.
func (s *Store) Grant(ctx context.Context, id api.GrantID) (store.Grant, error) {
	g, err := scanGrant(s.grantByID.QueryRowContext(ctx, string(id)))
	if err != nil {
		return store.Grant{}, fmt.Errorf("grant %s: %w", id, err)
	}
	return g, nil
}

// LiveGrants implements store.Store, oldest first. Each filter combination
// has its own prepared statement, so SQLite plans it once against the
// matching partial index.
func (s *Store) LiveGrants(ctx context.Context, now time.Time, gateway api.GatewayID, device api.DeviceID) ([]store.Grant, error) {
	var rows *sql.Rows
	var err error
	switch {
	case gateway != "" && device != "":
		rows, err = s.liveGrants[liveByBoth].QueryContext(ctx, now.UnixNano(), string(gateway), string(device))
	case gateway != "":
		rows, err = s.liveGrants[liveByGateway].QueryContext(ctx, now.UnixNano(), string(gateway))
	case device != "":
		rows, err = s.liveGrants[liveByDevice].QueryContext(ctx, now.UnixNano(), string(device))
	default:
		rows, err = s.liveGrants[liveAll].QueryContext(ctx, now.UnixNano())
	}
	if err != nil {
		return nil, fmt.Errorf("live grants: %w", err)
	}
	defer rows.Close()
	var out []store.Grant
	for rows.Next() {
		g, err := scanGrant(rows)
		if err != nil {
			return nil, fmt.Errorf("live grants: %w", err)
		}
		out = append(out, g)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("live grants: %w", err)
	}
	return out, nil
}

// LiveGrantsFor implements store.Store.
func (s *Store) LiveGrantsFor(ctx context.Context, now time.Time, device api.DeviceID, app api.AppID) ([]store.Grant, error) {
	rows, err := s.liveGrants[liveByDeviceApp].QueryContext(ctx, now.UnixNano(), string(device), string(app))
	if err != nil {
		return nil, fmt.Errorf("live grants for %s: %w", device, err)
	}
	defer rows.Close()
	var out []store.Grant
	for rows.Next() {
		g, err := scanGrant(rows)
		if err != nil {
			return nil, fmt.Errorf("live grants for %s: %w", device, err)
		}
		out = append(out, g)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("live grants for %s: %w", device, err)
	}
	return out, nil
}

// RenewGrant implements store.Store. ev.Time is the renewal's "now": a grant
// whose NotAfter is not after it has expired and cannot be renewed (an error
// matching both ErrNotFound and ErrExpired); with ev.Time zero only
// revocation is checked. A revoked or unknown grant is ErrNotFound.
func (s *Store) RenewGrant(ctx context.Context, id api.GrantID, notAfter time.Time, facts store.GrantFacts, ev api.AuditEvent) error {
	if ev.GrantID == "" {
		ev.GrantID = id
	}
	err := s.write(ctx, func(tx *sql.Tx) error {
		var cur int64
		err := tx.QueryRowContext(ctx, `SELECT not_after FROM grants WHERE id = ? AND revoked_at IS NULL`, string(id)).Scan(&cur)
		if err != nil {
			return dbErr(err)
		}
		if !ev.Time.IsZero() && cur <= ev.Time.UnixNano() {
			// No live grant matched (ErrNotFound, as for a revoked one),
			// and the reason is expiry (ErrExpired) for callers who care.
			return fmt.Errorf("expired at %v: %w, %w", goTime(sql.NullInt64{Int64: cur, Valid: true}), store.ErrNotFound, store.ErrExpired)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE grants SET not_after = ?, source = ?, mfa_at = ? WHERE id = ?`,
			notAfter.UnixNano(), dbAddr(facts.Source), dbTime(facts.MFAAt), string(id)); err != nil {
			return dbErr(err)
		}
		_, err = s.appendAudit(ctx, tx, ev)
		return err
	})
	if err != nil {
		return fmt.Errorf("renew grant %s: %w", id, err)
	}
	return nil
}

// RevokeGrants implements store.Store. Unknown and already revoked IDs are
// skipped. Each revoked grant gets a copy of ev naming it (GrantID, and
// User, DeviceID, App, GatewayID where ev leaves them empty), with Reason
// defaulting to reason and Time to now.
func (s *Store) RevokeGrants(ctx context.Context, ids []api.GrantID, reason string, now time.Time, ev api.AuditEvent) ([]store.Grant, error) {
	var revoked []store.Grant
	err := s.write(ctx, func(tx *sql.Tx) error {
		revoked = revoked[:0] // write may not retry, but stay correct if it ever does
		seen := make(map[api.GrantID]bool, len(ids))
		for _, id := range ids {
			if seen[id] {
				continue
			}
			seen[id] = true
			g, err := scanGrant(tx.QueryRowContext(ctx, `
				UPDATE grants SET revoked_at = ?, revoke_reason = ?
				WHERE id = ? AND revoked_at IS NULL
				RETURNING `+grantColumns, now.UnixNano(), reason, string(id)))
			if errors.Is(err, store.ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			e := ev
			e.GrantID = g.ID
			e.User = cmp.Or(e.User, g.User)
			e.DeviceID = cmp.Or(e.DeviceID, g.DeviceID)
			e.App = cmp.Or(e.App, g.App)
			e.GatewayID = cmp.Or(e.GatewayID, g.GatewayID)
			e.Reason = cmp.Or(e.Reason, reason)
			if e.Time.IsZero() {
				e.Time = now
			}
			if _, err := s.appendAudit(ctx, tx, e); err != nil {
				return err
			}
			revoked = append(revoked, g)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("revoke %d grants: %w", len(ids), err)
	}
	return revoked, nil
}

// RekeyGrants implements store.Store.
func (s *Store) RekeyGrants(ctx context.Context, device api.DeviceID, k key.WGPublic, now time.Time) ([]store.Grant, error) {
	var out []store.Grant
	err := s.write(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `
			UPDATE grants SET client_wg_key = ?
			WHERE device_id = ? AND export = 0 AND revoked_at IS NULL AND not_after > ?`,
			dbKey(k), string(device), now.UnixNano()); err != nil {
			return dbErr(err)
		}
		rows, err := tx.QueryContext(ctx, `SELECT `+grantColumns+` FROM grants
			WHERE device_id = ? AND export = 0 AND revoked_at IS NULL AND not_after > ? ORDER BY created_at, id`,
			string(device), now.UnixNano())
		if err != nil {
			return dbErr(err)
		}
		defer rows.Close()
		for rows.Next() {
			g, err := scanGrant(rows)
			if err != nil {
				return err
			}
			out = append(out, g)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("rekey grants of device %s: %w", device, err)
	}
	return out, nil
}
