package postgres

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/keyhole-net/keyhole/controller/store"
	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/key"
)

const grantColumns = `id, device_id, user_name, app, app_id, gateway_id, client_ip, client_wg_key,
	targets, ports, rule, created_at, not_after, revoked_at, revoke_reason, name, export, source, mfa_at`

// insertGrantSQL stores a grant and its audit event in one statement:
// the audit event is inserted from the grant insert's RETURNING, so it
// exists exactly when the grant was stored. A grant whose ID (or export
// key) is taken is not an error that aborts the transaction but no row at
// all, which lets a batch of grants share a transaction (commitGrants)
// and tell each caller its own result. Arguments: grantArgs.
const insertGrantSQL = `
	WITH g AS (
		INSERT INTO grants (id, device_id, user_name, app, app_id, gateway_id, client_ip, client_wg_key,
			targets, ports, rule, created_at, not_after, revoked_at, revoke_reason, name, export, source, mfa_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)
		ON CONFLICT DO NOTHING
		RETURNING id
	)
	INSERT INTO audit_events (time, type, actor, user_name, device_id, app, gateway_id, grant_id, rule, source, reason)
	SELECT $20::timestamptz, $21::text, $22::text, $23::text, $24::text, $25::text, $26::text, $27::text, $28::text, $29::text, $30::text
	FROM g`

// errGrantTaken is what insertGrantSQL inserting nothing means.
var errGrantTaken = fmt.Errorf("grant ID or export key %w", store.ErrConflict)

// insertGrant runs insertGrantSQL.
func insertGrant(ctx context.Context, db interface {
	Exec(context.Context, string, ...any) (pgconn.CommandTag, error)
}, args []any) error {
	tag, err := db.Exec(ctx, insertGrantSQL, args...)
	if err != nil {
		return dbErr(err)
	}
	if tag.RowsAffected() == 0 {
		return errGrantTaken
	}
	return nil
}

const selectGrantSQL = `SELECT ` + grantColumns + ` FROM grants`

// The LiveGrants queries, one per filter; pgx prepares each once per
// connection, and each has a partial index (revoked_at IS NULL) to use.
var (
	liveAllSQL       = liveGrantsSQL(``)
	liveByGatewaySQL = liveGrantsSQL(` AND gateway_id = $2`)
	liveByDeviceSQL  = liveGrantsSQL(` AND device_id = $2`)
	liveByBothSQL    = liveGrantsSQL(` AND device_id = $2 AND gateway_id = $3`)
	liveForSQL       = liveGrantsSQL(` AND device_id = $2 AND app_id = $3`)
)

// renewGrantSQL sets a grant's NotAfter and facts and appends the
// renewal's audit event, in one statement.
var renewGrantSQL = `WITH u AS (UPDATE grants SET not_after = $1, source = $2, mfa_at = $3 WHERE id = $4) ` +
	insertAuditSQL(5)

func liveGrantsSQL(filter string) string {
	return selectGrantSQL + ` WHERE revoked_at IS NULL AND not_after > $1` + filter + ` ORDER BY created_at, id`
}

// grantArgs are insertGrantSQL's arguments for g and ev.
func grantArgs(g *store.Grant, ev *api.AuditEvent) ([]any, error) {
	targets, err := dbJSON(g.Targets)
	if err != nil {
		return nil, fmt.Errorf("targets: %w", err)
	}
	ports, err := dbJSON(g.Ports)
	if err != nil {
		return nil, fmt.Errorf("ports: %w", err)
	}
	grantID := ev.GrantID
	if grantID == "" {
		grantID = g.ID
	}
	return []any{
		string(g.ID), string(g.DeviceID), g.User, g.App, string(g.AppID), string(g.GatewayID),
		dbAddr(g.ClientIP), dbKey(g.ClientWGKey), targets, ports, string(g.Rule),
		dbTime(orNow(g.CreatedAt)), g.NotAfter, dbTime(g.RevokedAt), g.RevokeReason, g.Name, g.Export,
		dbAddr(g.Facts.Source), dbTime(g.Facts.MFAAt),

		orNow(ev.Time), ev.Type, ev.Actor, ev.User, string(ev.DeviceID), ev.App,
		string(ev.GatewayID), string(grantID), string(ev.Rule), ev.Source, ev.Reason,
	}, nil
}

func scanGrant(row pgx.Row) (store.Grant, error) {
	var g store.Grant
	var id, dev, appID, gw, ip, wgKey, rule, source string
	var created, notAfter, revoked, mfaAt pgtype.Timestamptz
	if err := row.Scan(&id, &dev, &g.User, &g.App, &appID, &gw, &ip, &wgKey,
		&g.Targets, &g.Ports, &rule, &created, &notAfter, &revoked, &g.RevokeReason, &g.Name, &g.Export, &source, &mfaAt); err != nil {
		return store.Grant{}, dbErr(err)
	}
	g.ID, g.DeviceID, g.AppID, g.GatewayID, g.Rule = api.GrantID(id), api.DeviceID(dev), api.AppID(appID), api.GatewayID(gw), api.RuleID(rule)
	g.CreatedAt, g.NotAfter, g.RevokedAt, g.Facts.MFAAt = goTime(created), goTime(notAfter), goTime(revoked), goTime(mfaAt)
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
	return g, nil
}

// CreateGrant implements store.Store. It is the hot path of the product,
// so concurrent calls are group-committed, as in the SQLite store: while
// one batch commits, the grants that arrive queue up, and the next caller
// to commit takes all of them into one transaction. The batch goes to the
// server as one pipeline (one round trip) and commits once, which matters
// when each commit waits for a WAL flush; each grant's statement reports
// its own conflict without failing the others (insertGrantSQL). A lone
// grant is one statement in autocommit.
func (s *Store) CreateGrant(ctx context.Context, g store.Grant, ev api.AuditEvent) error {
	args, err := grantArgs(&g, &ev)
	if err != nil {
		return fmt.Errorf("create grant %s: %w", g.ID, err)
	}
	req := &grantReq{ctx: ctx, args: args, done: make(chan error, 1)}
	s.grants.mu.Lock()
	s.grants.pending = append(s.grants.pending, req)
	s.grants.mu.Unlock()

	// Wait for a turn to commit, or for another batch to take req and
	// answer it. A caller whose context ends first leaves if no batch has
	// taken req yet; otherwise the answer is on its way.
	select {
	case s.grants.commit <- struct{}{}:
	case err = <-req.done:
		return wrapGrantErr(g.ID, err)
	case <-ctx.Done():
		if s.grants.withdraw(req) {
			return wrapGrantErr(g.ID, ctx.Err())
		}
		return wrapGrantErr(g.ID, <-req.done)
	}
	select {
	case err = <-req.done: // an earlier caller committed our grant with its batch
		<-s.grants.commit
	default:
		// Take everything queued. That includes req unless another
		// committer's batch took it and is still at work on it; then
		// req's answer comes with that batch.
		s.grants.mu.Lock()
		batch := s.grants.pending
		s.grants.pending = nil
		s.grants.mu.Unlock()
		if len(batch) > 0 {
			s.commitGrants(ctx, batch)
		}
		<-s.grants.commit
		err = <-req.done
	}
	return wrapGrantErr(g.ID, err)
}

func wrapGrantErr(id api.GrantID, err error) error {
	if err != nil {
		return fmt.Errorf("create grant %s: %w", id, err)
	}
	return nil
}

// grantBatcher queues CreateGrant calls for group commit.
type grantBatcher struct {
	// commit holds a token for each batch being committed; its capacity
	// is how many batches may commit at once.
	commit chan struct{}

	mu      sync.Mutex  // guards pending
	pending []*grantReq // FIFO of grants not yet taken by a batch
}

// withdraw takes req out of the queue and reports whether it was still
// there (no batch has taken it).
func (b *grantBatcher) withdraw(req *grantReq) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	i := slices.Index(b.pending, req)
	if i < 0 {
		return false
	}
	b.pending = slices.Delete(b.pending, i, i+1)
	return true
}

// grantReq is one queued CreateGrant call. done receives exactly one
// result.
type grantReq struct {
	ctx  context.Context
	args []any
	done chan error
}

// commitGrants stores batch in one transaction and answers every request.
// The transaction does not end with the committing caller's context: it
// carries other callers' grants too. It ends at the last of their
// deadlines, if they all have one, so that an unreachable database does
// not hold them for ever. A request whose own context is done by now is
// skipped. Should the batch fail as a whole (not a taken ID, which
// insertGrantSQL reports per grant), nothing of it is stored and each
// grant is tried alone, so that one bad grant fails alone.
func (s *Store) commitGrants(ctx context.Context, batch []*grantReq) {
	ctx = context.WithoutCancel(ctx)
	live := batch[:0:0]
	var last time.Time // the latest deadline
	unbounded := false // a request without a deadline
	for _, r := range batch {
		if err := r.ctx.Err(); err != nil {
			r.done <- err
			continue
		}
		live = append(live, r)
		if d, ok := r.ctx.Deadline(); !ok {
			unbounded = true
		} else if d.After(last) {
			last = d
		}
	}
	if !unbounded && !last.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, last)
		defer cancel()
	}
	if len(live) > 1 {
		results := make([]error, len(live))
		b := &pgx.Batch{}
		for i, r := range live {
			b.Queue(insertGrantSQL, r.args...).Exec(func(tag pgconn.CommandTag) error {
				if tag.RowsAffected() == 0 {
					results[i] = errGrantTaken
				}
				return nil
			})
		}
		// Without BEGIN, the pipeline is one implicit transaction.
		if err := s.pool.SendBatch(ctx, b).Close(); err == nil {
			for i, r := range live {
				r.done <- results[i]
			}
			return
		}
	}
	for _, r := range live {
		r.done <- insertGrant(ctx, s.pool, r.args)
	}
}

// Grant implements store.Store.
func (s *Store) Grant(ctx context.Context, id api.GrantID) (store.Grant, error) {
	g, err := scanGrant(s.pool.QueryRow(ctx, selectGrantSQL+` WHERE id = $1`, string(id)))
	if err != nil {
		return store.Grant{}, fmt.Errorf("grant %s: %w", id, err)
	}
	return g, nil
}

// LiveGrants implements store.Store, oldest first.
func (s *Store) LiveGrants(ctx context.Context, now time.Time, gateway api.GatewayID, device api.DeviceID) ([]store.Grant, error) {
	var rows pgx.Rows
	var err error
	switch {
	case gateway != "" && device != "":
		rows, err = s.pool.Query(ctx, liveByBothSQL, now, string(device), string(gateway))
	case gateway != "":
		rows, err = s.pool.Query(ctx, liveByGatewaySQL, now, string(gateway))
	case device != "":
		rows, err = s.pool.Query(ctx, liveByDeviceSQL, now, string(device))
	default:
		rows, err = s.pool.Query(ctx, liveAllSQL, now)
	}
	if err != nil {
		return nil, fmt.Errorf("live grants: %w", err)
	}
	out, err := collect(rows, func(row pgx.CollectableRow) (store.Grant, error) { return scanGrant(row) })
	if err != nil {
		return nil, fmt.Errorf("live grants: %w", err)
	}
	return out, nil
}

// LiveGrantsFor implements store.Store.
func (s *Store) LiveGrantsFor(ctx context.Context, now time.Time, device api.DeviceID, app api.AppID) ([]store.Grant, error) {
	rows, err := s.pool.Query(ctx, liveForSQL, now, string(device), string(app))
	if err != nil {
		return nil, fmt.Errorf("live grants for %s: %w", device, err)
	}
	out, err := collect(rows, func(row pgx.CollectableRow) (store.Grant, error) { return scanGrant(row) })
	if err != nil {
		return nil, fmt.Errorf("live grants for %s: %w", device, err)
	}
	return out, nil
}

// RenewGrant implements store.Store. ev.Time is the renewal's "now": a grant
// whose NotAfter is not after it has expired and cannot be renewed (an error
// matching both ErrNotFound and ErrExpired); with ev.Time zero only
// revocation is checked. A revoked or unknown grant is ErrNotFound. The
// grant's row is locked from the check to the commit, so a revocation on
// another controller comes before or after the renewal, not in between.
func (s *Store) RenewGrant(ctx context.Context, id api.GrantID, notAfter time.Time, facts store.GrantFacts, ev api.AuditEvent) error {
	if ev.GrantID == "" {
		ev.GrantID = id
	}
	err := s.tx(ctx, func(tx pgx.Tx) error {
		var cur time.Time
		err := tx.QueryRow(ctx, `SELECT not_after FROM grants WHERE id = $1 AND revoked_at IS NULL FOR UPDATE`, string(id)).Scan(&cur)
		if err != nil {
			return dbErr(err)
		}
		if !ev.Time.IsZero() && !cur.After(ev.Time) {
			// No live grant matched (ErrNotFound, as for a revoked one),
			// and the reason is expiry (ErrExpired) for callers who care.
			return fmt.Errorf("expired at %v: %w, %w", cur.UTC(), store.ErrNotFound, store.ErrExpired)
		}
		_, err = tx.Exec(ctx, renewGrantSQL,
			append([]any{notAfter, dbAddr(facts.Source), dbTime(facts.MFAAt), string(id)}, auditArgs(&ev)...)...)
		return dbErr(err)
	})
	if err != nil {
		return fmt.Errorf("renew grant %s: %w", id, err)
	}
	return nil
}

// RevokeGrants implements store.Store. Unknown and already revoked IDs are
// skipped. Each revoked grant gets a copy of ev naming it (GrantID, and
// User, DeviceID, App, GatewayID where ev leaves them empty), with Reason
// defaulting to reason and Time to now. The grants come back in the order
// of ids; their rows are locked in ID order, so two revocations of
// overlapping sets on two controllers do not deadlock.
func (s *Store) RevokeGrants(ctx context.Context, ids []api.GrantID, reason string, now time.Time, ev api.AuditEvent) ([]store.Grant, error) {
	place := make(map[api.GrantID]int, len(ids)) // first place in ids
	var sorted []string
	for _, id := range ids {
		if _, ok := place[id]; !ok {
			place[id] = len(place)
			sorted = append(sorted, string(id))
		}
	}
	if len(sorted) == 0 {
		return nil, nil
	}
	slices.Sort(sorted)
	var revoked []store.Grant
	err := s.tx(ctx, func(tx pgx.Tx) error {
		revoked = nil
		rows, err := tx.Query(ctx, `
			WITH locked AS (
				SELECT id AS locked_id FROM grants
				WHERE id = ANY($1) AND revoked_at IS NULL
				ORDER BY id FOR UPDATE
			)
			UPDATE grants SET revoked_at = $2, revoke_reason = $3
			FROM locked WHERE id = locked_id
			RETURNING `+grantColumns, sorted, now, reason)
		if err != nil {
			return err
		}
		byID, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (store.Grant, error) { return scanGrant(row) })
		if err != nil {
			return err
		}
		slices.SortFunc(byID, func(a, b store.Grant) int {
			return cmp.Compare(place[a.ID], place[b.ID])
		})
		batch := &pgx.Batch{}
		for _, g := range byID {
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
			batch.Queue(insertAuditOneSQL, auditArgs(&e)...)
		}
		if err := tx.SendBatch(ctx, batch).Close(); err != nil {
			return fmt.Errorf("append audit: %w", err)
		}
		revoked = byID
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("revoke %d grants: %w", len(ids), err)
	}
	if len(revoked) == 0 {
		return nil, nil
	}
	return revoked, nil
}

// RekeyGrants implements store.Store, oldest first. One statement: the
// grants it returns are exactly those it changed.
func (s *Store) RekeyGrants(ctx context.Context, device api.DeviceID, k key.WGPublic, now time.Time) ([]store.Grant, error) {
	rows, err := s.pool.Query(ctx, `
		UPDATE grants SET client_wg_key = $1
		WHERE device_id = $2 AND NOT export AND revoked_at IS NULL AND not_after > $3
		RETURNING `+grantColumns, dbKey(k), string(device), now)
	if err != nil {
		return nil, fmt.Errorf("rekey grants of device %s: %w", device, err)
	}
	out, err := collect(rows, func(row pgx.CollectableRow) (store.Grant, error) { return scanGrant(row) })
	if err != nil {
		return nil, fmt.Errorf("rekey grants of device %s: %w", device, dbErr(err))
	}
	// RETURNING has no order; LiveGrants' is the one callers know.
	slices.SortFunc(out, func(a, b store.Grant) int {
		return cmp.Or(a.CreatedAt.Compare(b.CreatedAt), cmp.Compare(a.ID, b.ID))
	})
	return out, nil
}

// grantCommitters is how many grant batches commit at once for a pool of
// maxConns connections: a few, so that batches overlap their round trips
// and WAL flushes, but at most half the pool, which leaves the rest to
// the reads around them.
func grantCommitters(maxConns int32) int {
	return int(min(4, max(1, maxConns/2)))
}
