package postgres

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/keyhole-net/keyhole/internal/key"
)

// dbTime is how a time.Time is passed to a timestamptz column: NULL for
// the zero time. PostgreSQL keeps microseconds; pgx truncates the rest.
func dbTime(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t
}

// goTime reads a timestamptz, in UTC; NULL is the zero time.
func goTime(t pgtype.Timestamptz) time.Time {
	if !t.Valid {
		return time.Time{}
	}
	return t.Time.UTC()
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

// dbJSON encodes a jsonb list column as JSON text, which pgx passes as it
// is. Nil and empty lists and maps both become "null" so that they read
// back the same way (nil). Reading decodes straight into the Go value
// (pgx unmarshals jsonb, and "null" leaves it nil).
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

// newID returns prefix + 16 random hex characters.
func newID(prefix string) (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("new id: %w", err)
	}
	return prefix + hex.EncodeToString(b[:]), nil
}
