// Package key holds Keyhole's typed keys: WireGuard key pairs for devices and
// gateways. Private keys print as [redacted]; public keys compare in constant
// time through Equal and cannot be confused with private ones at compile time.
//
// Certificate keys (ECDSA, for mTLS) live in internal/trust; this package is
// only about the Curve25519 keys WireGuard uses.
package key

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"

	"golang.org/x/crypto/curve25519"
)

// Size is the length in bytes of a WireGuard key.
const Size = 32

// WGPrivate is a WireGuard (Curve25519) private key. Its String and
// MarshalText never reveal it; use UAPIHex or Base64Secret on purpose.
type WGPrivate struct {
	k [Size]byte
}

// WGPublic is a WireGuard (Curve25519) public key. The zero value is invalid.
type WGPublic struct {
	k [Size]byte
}

// NewWGPrivate returns a fresh, clamped private key from crypto/rand.
func NewWGPrivate() (WGPrivate, error) {
	var p WGPrivate
	if _, err := rand.Read(p.k[:]); err != nil {
		return WGPrivate{}, fmt.Errorf("generate wireguard key: %w", err)
	}
	clamp(&p.k)
	return p, nil
}

func clamp(k *[Size]byte) {
	k[0] &= 248
	k[31] = (k[31] & 127) | 64
}

// ParseWGPrivate decodes a base64 private key (the wg(8) format).
func ParseWGPrivate(s string) (WGPrivate, error) {
	var p WGPrivate
	if err := decode32(s, &p.k); err != nil {
		return WGPrivate{}, fmt.Errorf("parse wireguard private key: %w", err)
	}
	return p, nil
}

// IsZero reports whether p is the zero key.
func (p WGPrivate) IsZero() bool { return subtle.ConstantTimeCompare(p.k[:], make([]byte, Size)) == 1 }

// Public derives the public key.
func (p WGPrivate) Public() WGPublic {
	var pub WGPublic
	curve25519.ScalarBaseMult(&pub.k, &p.k)
	return pub
}

// String implements fmt.Stringer without revealing the key.
func (p WGPrivate) String() string { return "[redacted]" }

// GoString keeps %#v from printing the key bytes.
func (p WGPrivate) GoString() string { return "key.WGPrivate{[redacted]}" }

// MarshalText refuses to serialise a private key by accident.
func (p WGPrivate) MarshalText() ([]byte, error) {
	return nil, errors.New("refusing to marshal a private key; use Base64Secret")
}

// Base64Secret returns the key in wg(8) base64 form, for files with mode 0600.
func (p WGPrivate) Base64Secret() string { return base64.StdEncoding.EncodeToString(p.k[:]) }

// UAPIHex returns the key in the lowercase hex form the UAPI protocol uses.
func (p WGPrivate) UAPIHex() string { return hex.EncodeToString(p.k[:]) }

// ParseWGPublic decodes a base64 public key.
func ParseWGPublic(s string) (WGPublic, error) {
	var p WGPublic
	if err := decode32(s, &p.k); err != nil {
		return WGPublic{}, fmt.Errorf("parse wireguard public key: %w", err)
	}
	if p.IsZero() {
		return WGPublic{}, errors.New("parse wireguard public key: zero key")
	}
	return p, nil
}

// ParseWGPublicHex decodes a lowercase hex public key (the UAPI form).
func ParseWGPublicHex(s string) (WGPublic, error) {
	var p WGPublic
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != Size {
		return WGPublic{}, fmt.Errorf("parse wireguard public key %q: want %d hex bytes", s, Size)
	}
	copy(p.k[:], b)
	return p, nil
}

// IsZero reports whether p is the zero key.
func (p WGPublic) IsZero() bool { return p == WGPublic{} }

// Equal compares two public keys in constant time.
func (p WGPublic) Equal(o WGPublic) bool { return subtle.ConstantTimeCompare(p.k[:], o.k[:]) == 1 }

// String returns the base64 form, as wg(8) prints it.
func (p WGPublic) String() string { return base64.StdEncoding.EncodeToString(p.k[:]) }

// UAPIHex returns the lowercase hex form the UAPI protocol uses.
func (p WGPublic) UAPIHex() string { return hex.EncodeToString(p.k[:]) }

// Bytes returns a copy of the raw key.
func (p WGPublic) Bytes() [Size]byte { return p.k }

// MarshalText implements encoding.TextMarshaler (base64).
func (p WGPublic) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler (base64).
func (p *WGPublic) UnmarshalText(b []byte) error {
	k, err := ParseWGPublic(string(b))
	if err != nil {
		return err
	}
	*p = k
	return nil
}

func decode32(s string, dst *[Size]byte) error {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return fmt.Errorf("not base64: %w", err)
	}
	if len(b) != Size {
		return fmt.Errorf("want %d bytes, got %d", Size, len(b))
	}
	copy(dst[:], b)
	return nil
}

// ErrLowOrderPoint means a Diffie-Hellman exchange gave the all-zero
// result: the peer's public value is a low-order point, never a real key.
var ErrLowOrderPoint = errors.New("wireguard key: low-order public value")

// SharedSecret is the X25519 Diffie-Hellman of p with the public value pub
// (a peer's static or ephemeral key). Keys stay inside this package: a
// caller that needs DH with its private key gets only the result.
func (p WGPrivate) SharedSecret(pub [Size]byte) ([Size]byte, error) {
	var out [Size]byte
	ss, err := curve25519.X25519(p.k[:], pub[:])
	if err != nil {
		return out, fmt.Errorf("%w: %w", ErrLowOrderPoint, err)
	}
	copy(out[:], ss)
	return out, nil
}

// WGPublicFromBytes returns the public key with raw value b (as it travels
// in WireGuard messages).
func WGPublicFromBytes(b [Size]byte) WGPublic { return WGPublic{k: b} }
