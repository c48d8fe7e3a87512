package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strings"
)

// Token prefixes, so that a leaked token says what it is (and secret
// scanners can match it) without revealing anything about its value.
const (
	PrefixAdmin   = "khadm" // admin API token
	PrefixGateway = "khgw"  // one-time gateway enrolment token
	PrefixSession = "khs"   // user session token
)

// tokenBytes is the entropy of a token: 256 bits, beyond guessing.
const tokenBytes = 32

// idChars is the length of the random part of an ID: 60 bits, so that IDs
// stay short in URLs and logs yet do not collide in practice (the store's
// unique keys catch the rest).
const idChars = 12

const redacted = "[redacted]"

// Token is a bearer secret such as "khadm_<43 base64url characters>", or
// another secret string that must never be printed (a TOTP secret, a
// recovery code). It
// prints as "[redacted]" through fmt (every verb), slog and encoding
// (MarshalText), so that it cannot leak into logs or JSON by accident; call
// Reveal where the value must really go out (once, to its owner). fmt cannot
// see through unexported struct fields, so keep a Token in an exported field
// or a variable of its own if the holder may be printed.
type Token string

// NewToken returns a random token "<prefix>_<base64url>". prefix is one of
// the Prefix constants or another short lowercase word.
func NewToken(prefix string) (Token, error) {
	prefix = strings.TrimSuffix(prefix, "_")
	if prefix == "" || len(prefix) > 16 || strings.ContainsFunc(prefix, func(r rune) bool { return (r < 'a' || r > 'z') && (r < '0' || r > '9') }) {
		return "", fmt.Errorf("new token: prefix %q: want 1 to 16 lowercase letters or digits", prefix)
	}
	b := make([]byte, tokenBytes)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("new token: %w", err)
	}
	return Token(prefix + "_" + base64.RawURLEncoding.EncodeToString(b)), nil
}

// Reveal returns the token's value.
func (t Token) Reveal() string { return string(t) }

// String returns "[redacted]".
func (t Token) String() string { return redacted }

// GoString returns "[redacted]", for %#v.
func (t Token) GoString() string { return redacted }

// Format prints "[redacted]" for every verb, so that %x or %d cannot
// spell the value out either.
func (t Token) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(redacted)) }

// LogValue implements slog.LogValuer: handlers that would otherwise encode
// the string (JSONHandler) log "[redacted]".
func (t Token) LogValue() slog.Value { return slog.StringValue(redacted) }

// MarshalText returns "[redacted]", so that a Token put into a JSON body or
// a log record by mistake stays secret. Send Reveal() where the value is meant
// to travel.
func (t Token) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// HashToken returns the hex SHA-256 of a token, which is what the store
// keeps and looks tokens up by. A fast hash is enough: tokens have 256 bits
// of entropy, so unlike passwords they cannot be guessed from the hash.
func HashToken(t string) string {
	sum := sha256.Sum256([]byte(t))
	return hex.EncodeToString(sum[:])
}

// NewID returns a random object ID "<prefix>_<12 lowercase base32 chars>",
// e.g. NewID("usr") = "usr_k3j5x7q2m4ab". A trailing "_" on prefix is
// accepted, so NewID("usr_") is the same form. IDs are names, not secrets.
func NewID(prefix string) string {
	// rand.Text never fails and draws uniformly from the base32 alphabet.
	return strings.TrimSuffix(prefix, "_") + "_" + strings.ToLower(rand.Text()[:idChars])
}
