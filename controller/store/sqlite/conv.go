package sqlite

import (
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"time"

	"github.com/keyhole-net/keyhole/internal/key"
)

// dbTime is how a time.Time is stored: unix nanoseconds, NULL for the zero
// time. Nanoseconds keep every time the controller produces exact.
func dbTime(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UnixNano()
}

// goTime reads a time stored by dbTime, in UTC.
func goTime(n sql.NullInt64) time.Time {
	if !n.Valid {
		return time.Time{}
	}
	return time.Unix(0, n.Int64).UTC()
}

// orNow returns t, or the current time in UTC when t is zero.
func orNow(t time.Time) time.Time {
	if t.IsZero() {
		return time.Now().UTC()
	}
	return t
}

// dbAddr stores an address as its canonical text, "" for none.
func dbAddr(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

func goAddr(s string) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, nil
	}
	return netip.ParseAddr(s)
}

// dbKey stores a WireGuard public key as base64, "" for the zero key (a
// device or gateway that has not reported one yet).
func dbKey(k key.WGPublic) string {
	if k.IsZero() {
		return ""
	}
	return k.String()
}

func goKey(s string) (key.WGPublic, error) {
	if s == "" {
		return key.WGPublic{}, nil
	}
	return key.ParseWGPublic(s)
}

// dbJSON encodes a list column. Nil and empty lists both become "null" so
// that they read back the same way (nil).
func dbJSON(v any) (string, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return "", err
	}
	if string(b) == "[]" || string(b) == "{}" {
		return "null", nil
	}
	return string(b), nil
}

func goJSON(s string, v any) error {
	if s == "" || s == "null" {
		return nil
	}
	return json.Unmarshal([]byte(s), v)
}

// newID returns prefix + 16 random hex characters.
func newID(prefix string) (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("new id: %w", err)
	}
	return prefix + hex.EncodeToString(b[:]), nil
}

// scanner is *sql.Row or *sql.Rows.
type scanner interface {
	Scan(dest ...any) error
}

// boolInt stores a bool as 0/1.
func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
