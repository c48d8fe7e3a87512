package postgres

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/keyhole-net/keyhole/controller/store"
	"github.com/keyhole-net/keyhole/internal/api"
)

// CreateDevice implements store.Store; it fails with ErrNotFound when the
// user does not exist.
func (s *Store) CreateDevice(ctx context.Context, d store.Device) (store.Device, error) {
	if d.ID == "" {
		id, err := newID("dev_")
		if err != nil {
			return store.Device{}, fmt.Errorf("create device for %q: %w", d.User, err)
		}
		d.ID = api.DeviceID(id)
	}
	d.CreatedAt = orNow(d.CreatedAt)
	err := s.tx(ctx, func(tx pgx.Tx) error {
		ip, err := allocate(ctx, tx, s.pools.Devices, "device:"+string(d.ID))
		if err != nil {
			return err
		}
		d.OverlayIP = ip
		_, err = tx.Exec(ctx, `
			INSERT INTO devices (id, user_name, name, overlay_ip, wg_key, key_pin, disabled, approved, created_at, last_seen)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
			string(d.ID), d.User, d.Name, ip.String(), dbKey(d.WGPublicKey), d.KeyPin, d.Disabled, d.Approved, dbTime(d.CreatedAt), dbTime(d.LastSeen))
		if isFK(err) {
			return fmt.Errorf("user %q: %w", d.User, store.ErrNotFound)
		}
		return dbErr(err)
	})
	if err != nil {
		return store.Device{}, fmt.Errorf("create device %s for %q: %w", d.ID, d.User, err)
	}
	return d, nil
}

const deviceColumns = `id, user_name, name, overlay_ip, wg_key, key_pin, disabled, approved, created_at, last_seen, posture, posture_at`

func scanDevice(row pgx.Row) (store.Device, error) {
	var d store.Device
	var id, ip, wgKey string
	var created, seen, postureAt pgtype.Timestamptz
	// Posture is a pointer: pgx leaves it nil for NULL (no report yet).
	if err := row.Scan(&id, &d.User, &d.Name, &ip, &wgKey, &d.KeyPin, &d.Disabled, &d.Approved, &created, &seen, &d.Posture, &postureAt); err != nil {
		return store.Device{}, dbErr(err)
	}
	d.ID = api.DeviceID(id)
	d.CreatedAt, d.LastSeen, d.PostureAt = goTime(created), goTime(seen), goTime(postureAt)
	var err error
	if d.OverlayIP, err = goAddr(ip); err != nil {
		return store.Device{}, fmt.Errorf("device %s: %w", id, err)
	}
	if d.WGPublicKey, err = goKey(wgKey); err != nil {
		return store.Device{}, fmt.Errorf("device %s: %w", id, err)
	}
	return d, nil
}

// Device implements store.Store.
func (s *Store) Device(ctx context.Context, id api.DeviceID) (store.Device, error) {
	d, err := scanDevice(s.pool.QueryRow(ctx, `SELECT `+deviceColumns+` FROM devices WHERE id = $1`, string(id)))
	if err != nil {
		return store.Device{}, fmt.Errorf("device %s: %w", id, err)
	}
	return d, nil
}

// Devices implements store.Store, ordered by user, then creation.
func (s *Store) Devices(ctx context.Context) ([]store.Device, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+deviceColumns+` FROM devices ORDER BY user_name, created_at, id`)
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	out, err := collect(rows, func(row pgx.CollectableRow) (store.Device, error) { return scanDevice(row) })
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	return out, nil
}

// UpdateDevice implements store.Store.
func (s *Store) UpdateDevice(ctx context.Context, d store.Device) error {
	err := mustAffect(s.pool.Exec(ctx, `UPDATE devices SET name = $1, wg_key = $2, key_pin = $3, disabled = $4, approved = $5, last_seen = $6 WHERE id = $7`,
		d.Name, dbKey(d.WGPublicKey), d.KeyPin, d.Disabled, d.Approved, dbTime(d.LastSeen), string(d.ID)))
	if err != nil {
		return fmt.Errorf("update device %s: %w", d.ID, err)
	}
	return nil
}

// DeleteDevice implements store.Store; sessions go with the device (ON
// DELETE CASCADE).
func (s *Store) DeleteDevice(ctx context.Context, id api.DeviceID) error {
	if err := mustAffect(s.pool.Exec(ctx, `DELETE FROM devices WHERE id = $1`, string(id))); err != nil {
		return fmt.Errorf("delete device %s: %w", id, err)
	}
	return nil
}

// CreateSession implements store.Store; the device must exist.
func (s *Store) CreateSession(ctx context.Context, ss store.Session) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO sessions (hash, device_id, user_name, created_at, expires_at, mfa_at) VALUES ($1, $2, $3, $4, $5, $6)`,
		ss.Hash, string(ss.DeviceID), ss.User, dbTime(orNow(ss.CreatedAt)), dbTime(ss.ExpiresAt), dbTime(ss.MFAAt))
	if isFK(err) {
		err = fmt.Errorf("device %s or user %q: %w", ss.DeviceID, ss.User, store.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("create session for device %s: %w", ss.DeviceID, dbErr(err))
	}
	return nil
}

// Session implements store.Store. It returns expired sessions too; the
// caller compares ExpiresAt with its clock.
func (s *Store) Session(ctx context.Context, hash string) (store.Session, error) {
	ss, err := scanSession(s.pool.QueryRow(ctx, sessionSQL, hash))
	if err != nil {
		return store.Session{}, fmt.Errorf("session: %w", err)
	}
	return ss, nil
}

// The reads of DeviceSession: the session, its device, the device's user.
const (
	sessionSQL          = `SELECT hash, device_id, user_name, created_at, expires_at, mfa_at FROM sessions WHERE hash = $1`
	deviceOfSessionSQL  = `SELECT ` + deviceColumns + ` FROM devices WHERE id = (SELECT device_id FROM sessions WHERE hash = $1)`
	userOfSessionDevSQL = `SELECT ` + userColumns + ` FROM users WHERE name = (SELECT d.user_name FROM devices d JOIN sessions ss ON ss.device_id = d.id WHERE ss.hash = $1)`
)

func scanSession(row pgx.Row) (store.Session, error) {
	var ss store.Session
	var dev string
	var created, expires, mfaAt pgtype.Timestamptz
	if err := row.Scan(&ss.Hash, &dev, &ss.User, &created, &expires, &mfaAt); err != nil {
		return store.Session{}, dbErr(err)
	}
	ss.DeviceID, ss.CreatedAt, ss.ExpiresAt, ss.MFAAt = api.DeviceID(dev), goTime(created), goTime(expires), goTime(mfaAt)
	return ss, nil
}

// DeviceSession implements store.Store: the three reads go to the server
// as one batch, so a device's request waits for one round trip, not three.
func (s *Store) DeviceSession(ctx context.Context, hash string) (store.DeviceSession, error) {
	var b pgx.Batch
	b.Queue(sessionSQL, hash)
	b.Queue(deviceOfSessionSQL, hash)
	b.Queue(userOfSessionDevSQL, hash)
	br := s.pool.SendBatch(ctx, &b)
	var ds store.DeviceSession
	var err error
	if ds.Session, err = scanSession(br.QueryRow()); err != nil {
		_ = br.Close()
		return store.DeviceSession{}, fmt.Errorf("session: %w", err)
	}
	if ds.Device, ds.DeviceErr = scanDevice(br.QueryRow()); ds.DeviceErr != nil {
		ds.DeviceErr = fmt.Errorf("device %s: %w", ds.Session.DeviceID, ds.DeviceErr)
	} else if ds.User, ds.UserErr = scanUser(br.QueryRow()); ds.UserErr != nil {
		ds.UserErr = fmt.Errorf("user %q: %w", ds.Device.User, ds.UserErr)
	}
	if err := br.Close(); err != nil {
		return store.DeviceSession{}, fmt.Errorf("session: %w", dbErr(err))
	}
	return ds, nil
}

// DeleteSessions implements store.Store. Deleting none is not an error:
// logging a device out twice is fine.
func (s *Store) DeleteSessions(ctx context.Context, deviceID api.DeviceID) error {
	if _, err := s.pool.Exec(ctx, `DELETE FROM sessions WHERE device_id = $1`, string(deviceID)); err != nil {
		return fmt.Errorf("delete sessions of device %s: %w", deviceID, dbErr(err))
	}
	return nil
}
