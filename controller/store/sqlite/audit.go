package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"strings"

	"github.com/keyhole-net/keyhole/controller/store"
	"github.com/keyhole-net/keyhole/internal/api"
)

const insertAuditSQL = `
	INSERT INTO audit_events (time, type, actor, user_name, device_id, app, gateway_id, grant_id, rule, source, reason)
	VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`

// defaultLimit is how many audit events or flow records a query returns when
// it does not say.
const defaultLimit = 100

// appendAudit inserts ev inside tx and returns its ID. A zero Time becomes
// the current time: an event without a time cannot be found by Since.
func (s *Store) appendAudit(ctx context.Context, tx *sql.Tx, ev api.AuditEvent) (int64, error) {
	res, err := tx.StmtContext(ctx, s.insertAudit).ExecContext(ctx,
		orNow(ev.Time).UnixNano(), ev.Type, ev.Actor, ev.User, string(ev.DeviceID), ev.App,
		string(ev.GatewayID), string(ev.GrantID), string(ev.Rule), ev.Source, ev.Reason)
	if err != nil {
		return 0, fmt.Errorf("append audit %s: %w", ev.Type, dbErr(err))
	}
	return res.LastInsertId()
}

// AppendAudit implements store.Store. It sets evs[i].ID (and a zero Time)
// in the caller's slice.
func (s *Store) AppendAudit(ctx context.Context, evs ...api.AuditEvent) error {
	if len(evs) == 0 {
		return nil
	}
	for i := range evs {
		evs[i].Time = orNow(evs[i].Time)
	}
	ids := make([]int64, len(evs))
	err := s.write(ctx, func(tx *sql.Tx) error {
		for i, ev := range evs {
			id, err := s.appendAudit(ctx, tx, ev)
			if err != nil {
				return err
			}
			ids[i] = id
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("append %d audit events: %w", len(evs), err)
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
	if q.Type != "" {
		if strings.HasSuffix(q.Type, ".") {
			// A range rather than LIKE, which is case-insensitive in
			// SQLite; "." + 1 is "/". The "+" keeps SQLite off the type
			// index: a prefix such as "grant." matches most events, and
			// walking the time index newest first stops at the limit,
			// where the type index would collect and sort all of them.
			where = append(where, `+type >= ? AND +type < ?`)
			args = append(args, q.Type, q.Type[:len(q.Type)-1]+"/")
		} else {
			where = append(where, `type = ?`)
			args = append(args, q.Type)
		}
	}
	for _, f := range []struct{ col, v string }{
		{"user_name", q.User}, {"device_id", string(q.DeviceID)}, {"app", q.App},
	} {
		if f.v != "" {
			where = append(where, f.col+` = ?`)
			args = append(args, f.v)
		}
	}
	if !q.Since.IsZero() {
		where = append(where, `time >= ?`)
		args = append(args, q.Since.UnixNano())
	}
	limit := q.Limit
	if limit <= 0 {
		limit = defaultLimit
	}
	query := `SELECT id, time, type, actor, user_name, device_id, app, gateway_id, grant_id, rule, source, reason FROM audit_events`
	if len(where) > 0 {
		query += ` WHERE ` + strings.Join(where, ` AND `)
	}
	query += ` ORDER BY time DESC, id DESC LIMIT ?`
	args = append(args, limit)

	rows, err := s.r.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("query audit: %w", err)
	}
	defer rows.Close()
	var out []api.AuditEvent
	for rows.Next() {
		var ev api.AuditEvent
		var t sql.NullInt64
		var dev, gw, grant, rule string
		if err := rows.Scan(&ev.ID, &t, &ev.Type, &ev.Actor, &ev.User, &dev, &ev.App, &gw, &grant, &rule, &ev.Source, &ev.Reason); err != nil {
			return nil, fmt.Errorf("query audit: %w", err)
		}
		ev.Time = goTime(t)
		ev.DeviceID, ev.GatewayID, ev.GrantID, ev.Rule = api.DeviceID(dev), api.GatewayID(gw), api.GrantID(grant), api.RuleID(rule)
		out = append(out, ev)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("query audit: %w", err)
	}
	return out, nil
}

// AppendFlows implements store.Store.
func (s *Store) AppendFlows(ctx context.Context, recs ...api.FlowRecord) error {
	if len(recs) == 0 {
		return nil
	}
	err := s.write(ctx, func(tx *sql.Tx) error {
		st, err := tx.PrepareContext(ctx, `
			INSERT INTO flow_records (grant_id, gateway_id, device_id, client_ip, app, proto, destination,
				bytes_up, bytes_down, start_time, end_time, error)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
		if err != nil {
			return err
		}
		defer st.Close()
		for _, r := range recs {
			// Byte counters are uint64; SQLite integers are int64. The
			// conversion keeps the bits, and reading back converts again.
			if _, err := st.ExecContext(ctx, string(r.GrantID), string(r.GatewayID), string(r.DeviceID),
				dbAddr(r.ClientIP), r.App, r.Proto, r.Destination, int64(r.BytesUp), int64(r.BytesDown),
				dbTime(r.Start), dbTime(r.End), r.Error); err != nil {
				return dbErr(err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("append %d flow records: %w", len(recs), err)
	}
	return nil
}

// Flows implements store.Store: the grant's flow records (every grant's
// when grant is empty), newest first by Start, at most limit (100 when zero
// or negative).
func (s *Store) Flows(ctx context.Context, grant api.GrantID, limit int) ([]api.FlowRecord, error) {
	if limit <= 0 {
		limit = defaultLimit
	}
	query := `SELECT grant_id, gateway_id, device_id, client_ip, app, proto, destination,
		bytes_up, bytes_down, start_time, end_time, error FROM flow_records`
	var args []any
	if grant != "" {
		query += ` WHERE grant_id = ?`
		args = append(args, string(grant))
	}
	query += ` ORDER BY start_time DESC, id DESC LIMIT ?`
	args = append(args, limit)
	rows, err := s.r.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("flows of grant %s: %w", grant, err)
	}
	defer rows.Close()
	var out []api.FlowRecord
	for rows.Next() {
		var r api.FlowRecord
		var g, gw, dev, ip string
		var up, down int64
		var start, end sql.NullInt64
		if err := rows.Scan(&g, &gw, &dev, &ip, &r.App, &r.Proto, &r.Destination, &up, &down, &start, &end, &r.Error); err != nil {
			return nil, fmt.Errorf("flows of grant %s: %w", grant, err)
		}
		r.GrantID, r.GatewayID, r.DeviceID = api.GrantID(g), api.GatewayID(gw), api.DeviceID(dev)
		r.BytesUp, r.BytesDown = uint64(up), uint64(down)
		r.Start, r.End = goTime(start), goTime(end)
		if r.ClientIP, err = goAddr(ip); err != nil {
			return nil, fmt.Errorf("flows of grant %s: %w", grant, err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("flows of grant %s: %w", grant, err)
	}
	return out, nil
}
