package postgres

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/keyhole-net/keyhole/controller/store"
	"github.com/keyhole-net/keyhole/internal/api"
)

// insertAuditSQL returns the INSERT of one audit event whose eleven
// arguments (auditArgs) are $first and on.
func insertAuditSQL(first int) string {
	ps := make([]string, 11)
	for i := range ps {
		ps[i] = "$" + strconv.Itoa(first+i)
	}
	return `INSERT INTO audit_events (time, type, actor, user_name, device_id, app, gateway_id, grant_id, rule, source, reason)
	VALUES (` + strings.Join(ps, ", ") + `)`
}

// insertAuditOneSQL is insertAuditSQL(1), built once.
var insertAuditOneSQL = insertAuditSQL(1)

// auditArgs are insertAuditSQL's arguments. A zero Time becomes the
// current time: an event without a time cannot be found by Since.
func auditArgs(ev *api.AuditEvent) []any {
	return []any{orNow(ev.Time), ev.Type, ev.Actor, ev.User, string(ev.DeviceID), ev.App,
		string(ev.GatewayID), string(ev.GrantID), string(ev.Rule), ev.Source, ev.Reason}
}

// defaultLimit is how many audit events or flow records a query returns when
// it does not say.
const defaultLimit = 100

// AppendAudit implements store.Store. It sets evs[i].ID (and a zero Time)
// in the caller's slice. The events go in one batch, which PostgreSQL runs
// as one implicit transaction, in order: IDs increase along evs.
func (s *Store) AppendAudit(ctx context.Context, evs ...api.AuditEvent) error {
	if len(evs) == 0 {
		return nil
	}
	for i := range evs {
		evs[i].Time = orNow(evs[i].Time)
	}
	ids := make([]int64, len(evs))
	batch := &pgx.Batch{}
	for i := range evs {
		batch.Queue(insertAuditOneSQL+` RETURNING id`, auditArgs(&evs[i])...).QueryRow(func(row pgx.Row) error {
			return row.Scan(&ids[i])
		})
	}
	if err := s.pool.SendBatch(ctx, batch).Close(); err != nil {
		return fmt.Errorf("append %d audit events: %w", len(evs), dbErr(err))
	}
	// Only after commit: a rolled-back event must not look stored.
	for i := range evs {
		evs[i].ID = ids[i]
	}
	return nil
}

// Audit implements store.Store: newest first (by Time, then ID), at most
// q.Limit events (100 when zero or negative).
func (s *Store) Audit(ctx context.Context, q store.AuditQuery) ([]api.AuditEvent, error) {
	var where []string
	var args []any
	arg := func(v any) string {
		args = append(args, v)
		return "$" + strconv.Itoa(len(args))
	}
	if q.Type != "" {
		if strings.HasSuffix(q.Type, ".") {
			// A range rather than LIKE, whose _ and % would need
			// escaping; type is COLLATE "C", so the range is byte order
			// and "." + 1 is "/".
			where = append(where, `type >= `+arg(q.Type)+` AND type < `+arg(q.Type[:len(q.Type)-1]+"/"))
		} else {
			where = append(where, `type = `+arg(q.Type))
		}
	}
	for _, f := range []struct{ col, v string }{
		{"user_name", q.User}, {"device_id", string(q.DeviceID)}, {"app", q.App},
	} {
		if f.v != "" {
			where = append(where, f.col+` = `+arg(f.v))
		}
	}
	if !q.Since.IsZero() {
		where = append(where, `time >= `+arg(q.Since))
	}
	limit := q.Limit
	if limit <= 0 {
		limit = defaultLimit
	}
	query := `SELECT id, time, type, actor, user_name, device_id, app, gateway_id, grant_id, rule, source, reason FROM audit_events`
	if len(where) > 0 {
		query += ` WHERE ` + strings.Join(where, ` AND `)
	}
	query += ` ORDER BY time DESC, id DESC LIMIT ` + arg(limit)

	rows, err := s.pool.Query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("query audit: %w", err)
	}
	out, err := collect(rows, func(row pgx.CollectableRow) (api.AuditEvent, error) {
		var ev api.AuditEvent
		var t pgtype.Timestamptz
		var dev, gw, grant, rule string
		err := row.Scan(&ev.ID, &t, &ev.Type, &ev.Actor, &ev.User, &dev, &ev.App, &gw, &grant, &rule, &ev.Source, &ev.Reason)
		ev.Time = goTime(t)
		ev.DeviceID, ev.GatewayID, ev.GrantID, ev.Rule = api.DeviceID(dev), api.GatewayID(gw), api.GrantID(grant), api.RuleID(rule)
		return ev, err
	})
	if err != nil {
		return nil, fmt.Errorf("query audit: %w", err)
	}
	return out, nil
}

// flowColumns are the columns AppendFlows writes, in its order.
var flowColumns = []string{"grant_id", "gateway_id", "device_id", "client_ip", "app", "proto", "destination",
	"bytes_up", "bytes_down", "start_time", "end_time", "error"}

// AppendFlows implements store.Store with COPY: one statement for any
// number of records, atomic, in order.
func (s *Store) AppendFlows(ctx context.Context, recs ...api.FlowRecord) error {
	if len(recs) == 0 {
		return nil
	}
	_, err := s.pool.CopyFrom(ctx, pgx.Identifier{"flow_records"}, flowColumns,
		pgx.CopyFromSlice(len(recs), func(i int) ([]any, error) {
			r := &recs[i]
			// Byte counters are uint64; bigint is int64. The conversion
			// keeps the bits, and reading back converts again.
			return []any{string(r.GrantID), string(r.GatewayID), string(r.DeviceID),
				dbAddr(r.ClientIP), r.App, r.Proto, r.Destination, int64(r.BytesUp), int64(r.BytesDown),
				dbTime(r.Start), dbTime(r.End), r.Error}, nil
		}))
	if err != nil {
		return fmt.Errorf("append %d flow records: %w", len(recs), dbErr(err))
	}
	return nil
}

// Flows implements store.Store: the grant's flow records (every grant's
// when grant is empty), newest first by Start, at most limit (100 when zero
// or negative). Records without a Start come last, as in the SQLite store.
func (s *Store) Flows(ctx context.Context, grant api.GrantID, limit int) ([]api.FlowRecord, error) {
	if limit <= 0 {
		limit = defaultLimit
	}
	query := `SELECT grant_id, gateway_id, device_id, client_ip, app, proto, destination,
		bytes_up, bytes_down, start_time, end_time, error FROM flow_records`
	args := []any{limit}
	if grant != "" {
		query += ` WHERE grant_id = $2`
		args = append(args, string(grant))
	}
	query += ` ORDER BY start_time DESC NULLS LAST, id DESC LIMIT $1`
	rows, err := s.pool.Query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("flows of grant %s: %w", grant, err)
	}
	out, err := collect(rows, func(row pgx.CollectableRow) (api.FlowRecord, error) {
		var r api.FlowRecord
		var g, gw, dev, ip string
		var up, down int64
		var start, end pgtype.Timestamptz
		if err := row.Scan(&g, &gw, &dev, &ip, &r.App, &r.Proto, &r.Destination, &up, &down, &start, &end, &r.Error); err != nil {
			return r, err
		}
		r.GrantID, r.GatewayID, r.DeviceID = api.GrantID(g), api.GatewayID(gw), api.DeviceID(dev)
		r.BytesUp, r.BytesDown = uint64(up), uint64(down)
		r.Start, r.End = goTime(start), goTime(end)
		var err error
		r.ClientIP, err = goAddr(ip)
		return r, err
	})
	if err != nil {
		return nil, fmt.Errorf("flows of grant %s: %w", grant, err)
	}
	return out, nil
}
