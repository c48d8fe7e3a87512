package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"time"

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
	err := s.write(ctx, func(tx *sql.Tx) error {
		ip, err := allocate(ctx, tx, s.pools.Devices, "device:"+string(d.ID))
		if err != nil {
			return err
		}
		d.OverlayIP = ip
		_, err = tx.ExecContext(ctx, `
			INSERT INTO devices (id, user_name, name, overlay_ip, wg_key, key_pin, disabled, approved, created_at, last_seen)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			string(d.ID), d.User, d.Name, ip.String(), dbKey(d.WGPublicKey), d.KeyPin, boolInt(d.Disabled), boolInt(d.Approved), dbTime(d.CreatedAt), dbTime(d.LastSeen))
		if isConstraint(err, sqliteFK) {
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

func scanDevice(sc scanner) (store.Device, error) {
	var d store.Device
	var id, ip, wgKey, posture string
	var disabled, approved int
	var created, seen, postureAt sql.NullInt64
	if err := sc.Scan(&id, &d.User, &d.Name, &ip, &wgKey, &d.KeyPin, &disabled, &approved, &created, &seen, &posture, &postureAt); err != nil {
		return store.Device{}, dbErr(err)
	}
	d.ID, d.Disabled, d.Approved = api.DeviceID(id), disabled != 0, approved != 0
	d.CreatedAt, d.LastSeen, d.PostureAt = goTime(created), goTime(seen), goTime(postureAt)
	var err error
	if posture != "" {
		d.Posture = new(api.Posture)
		if err := goJSON(posture, d.Posture); err != nil {
			return store.Device{}, fmt.Errorf("device %s: posture: %w", id, err)
		}
	}
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
	d, err := scanDevice(s.r.QueryRowContext(ctx, `SELECT `+deviceColumns+` FROM devices WHERE id = ?`, string(id)))
	if err != nil {
		return store.Device{}, fmt.Errorf("device %s: %w", id, err)
	}
	return d, nil
}

// Devices implements store.Store, ordered by user, then creation.
func (s *Store) Devices(ctx context.Context) ([]store.Device, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+deviceColumns+` FROM devices ORDER BY user_name, created_at, id`)
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	defer rows.Close()
	var out []store.Device
	for rows.Next() {
		d, err := scanDevice(rows)
		if err != nil {
			return nil, fmt.Errorf("list devices: %w", err)
		}
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	return out, nil
}

// UpdateDevice implements store.Store.
func (s *Store) UpdateDevice(ctx context.Context, d store.Device) error {
	err := s.write(ctx, func(tx *sql.Tx) error {
		return mustAffect(tx.ExecContext(ctx, `UPDATE devices SET name = ?, wg_key = ?, key_pin = ?, disabled = ?, approved = ?, last_seen = ? WHERE id = ?`,
			d.Name, dbKey(d.WGPublicKey), d.KeyPin, boolInt(d.Disabled), boolInt(d.Approved), dbTime(d.LastSeen), string(d.ID)))
	})
	if err != nil {
		return fmt.Errorf("update device %s: %w", d.ID, err)
	}
	return nil
}

// DeleteDevice implements store.Store; sessions go with the device (ON
// DELETE CASCADE).
func (s *Store) DeleteDevice(ctx context.Context, id api.DeviceID) error {
	err := s.write(ctx, func(tx *sql.Tx) error {
		return mustAffect(tx.ExecContext(ctx, `DELETE FROM devices WHERE id = ?`, string(id)))
	})
	if err != nil {
		return fmt.Errorf("delete device %s: %w", id, err)
	}
	return nil
}

// SetDevicePosture implements store.Store.
func (s *Store) SetDevicePosture(ctx context.Context, id api.DeviceID, p api.Posture, at time.Time) error {
	body, err := dbJSON(p)
	if err != nil {
		return fmt.Errorf("set posture of device %s: %w", id, err)
	}
	err = s.write(ctx, func(tx *sql.Tx) error {
		var prev sql.NullInt64
		if err := tx.QueryRowContext(ctx, `SELECT posture_collected_at FROM devices WHERE id = ?`, string(id)).Scan(&prev); err != nil {
			return dbErr(err)
		}
		if prev.Valid && prev.Int64 > p.CollectedAt.UnixNano() {
			return fmt.Errorf("report collected at %s is older than the stored one of %s: %w",
				p.CollectedAt.UTC().Format(time.RFC3339Nano), goTime(prev).Format(time.RFC3339Nano), store.ErrConflict)
		}
		return mustAffect(tx.ExecContext(ctx, `UPDATE devices SET posture = ?, posture_at = ?, posture_collected_at = ? WHERE id = ?`,
			body, dbTime(at), p.CollectedAt.UnixNano(), string(id)))
	})
	if err != nil {
		return fmt.Errorf("set posture of device %s: %w", id, err)
	}
	return nil
}

// CreateSession implements store.Store; the device must exist.
func (s *Store) CreateSession(ctx context.Context, ss store.Session) error {
	err := s.write(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO sessions (hash, device_id, user_name, created_at, expires_at, mfa_at) VALUES (?, ?, ?, ?, ?, ?)`,
			ss.Hash, string(ss.DeviceID), ss.User, dbTime(orNow(ss.CreatedAt)), dbTime(ss.ExpiresAt), dbTime(ss.MFAAt))
		if isConstraint(err, sqliteFK) {
			return fmt.Errorf("device %s or user %q: %w", ss.DeviceID, ss.User, store.ErrNotFound)
		}
		return dbErr(err)
	})
	if err != nil {
		return fmt.Errorf("create session for device %s: %w", ss.DeviceID, err)
	}
	return nil
}

// Session implements store.Store. It returns expired sessions too; the
// caller compares ExpiresAt with its clock.
func (s *Store) Session(ctx context.Context, hash string) (store.Session, error) {
	var ss store.Session
	var dev string
	var created, expires, mfaAt sql.NullInt64
	err := s.r.QueryRowContext(ctx, `SELECT hash, device_id, user_name, created_at, expires_at, mfa_at FROM sessions WHERE hash = ?`, hash).
		Scan(&ss.Hash, &dev, &ss.User, &created, &expires, &mfaAt)
	if err != nil {
		return store.Session{}, fmt.Errorf("session: %w", dbErr(err))
	}
	ss.DeviceID, ss.CreatedAt, ss.ExpiresAt, ss.MFAAt = api.DeviceID(dev), goTime(created), goTime(expires), goTime(mfaAt)
	return ss, nil
}

// DeviceSession implements store.Store: three reads of the local
// database (there is no round trip to save).
func (s *Store) DeviceSession(ctx context.Context, hash string) (store.DeviceSession, error) {
	var ds store.DeviceSession
	var err error
	if ds.Session, err = s.Session(ctx, hash); err != nil {
		return store.DeviceSession{}, err
	}
	if ds.Device, ds.DeviceErr = s.Device(ctx, ds.Session.DeviceID); ds.DeviceErr == nil {
		ds.User, ds.UserErr = s.User(ctx, ds.Device.User)
	}
	return ds, nil
}

// DeleteSessions implements store.Store. Deleting none is not an error:
// logging a device out twice is fine.
func (s *Store) DeleteSessions(ctx context.Context, deviceID api.DeviceID) error {
	err := s.write(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `DELETE FROM sessions WHERE device_id = ?`, string(deviceID))
		return dbErr(err)
	})
	if err != nil {
		return fmt.Errorf("delete sessions of device %s: %w", deviceID, err)
	}
	return nil
}
