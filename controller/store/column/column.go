// Package column holds the column encodings the SQL stores (sqlite and
// postgres) share, so both store a value the same way: addresses and
// WireGuard keys as text with "" for none, lists as JSON with "null" for
// empty, and row IDs as a prefix and random hex.
package column

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"time"

	"github.com/keyhole-net/keyhole/internal/key"
)

// OrNow returns t, or the current time in UTC when t is zero.
func OrNow(t time.Time) time.Time {
	if t.IsZero() {
		return time.Now().UTC()
	}
	return t
}

// Addr stores an address as its canonical text, "" for none.
func Addr(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

// ParseAddr reads what Addr stored.
func ParseAddr(s string) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, nil
	}
	return netip.ParseAddr(s)
}

// Key stores a WireGuard public key as base64, "" for the zero key (a
// device or gateway that has not reported one yet).
func Key(k key.WGPublic) string {
	if k.IsZero() {
		return ""
	}
	return k.String()
}

// ParseKey reads what Key stored.
func ParseKey(s string) (key.WGPublic, error) {
	if s == "" {
		return key.WGPublic{}, nil
	}
	return key.ParseWGPublic(s)
}

// JSON encodes a list or map column. Nil and empty ones both become
// "null" so that they read back the same way (nil).
func JSON(v any) (string, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return "", err
	}
	if string(b) == "[]" || string(b) == "{}" {
		return "null", nil
	}
	return string(b), nil
}

// NewID returns prefix + 16 random hex characters.
func NewID(prefix string) (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("new id: %w", err)
	}
	return prefix + hex.EncodeToString(b[:]), nil
}
