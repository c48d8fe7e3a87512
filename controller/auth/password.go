// Package auth holds the controller's credential primitives: argon2id
// password hashes in PHC string form, random bearer tokens with a
// recognisable prefix and their at-rest hashes, random object IDs, TOTP
// secrets and codes (RFC 6238) with single-use recovery codes, and the
// Sealer that encrypts the secrets that must be read back.
//
// It is deliberately small and pure: no HTTP, no store, no sessions or
// rate limits. The controller's handlers decide who is logging in and where
// hashes live; this package only makes and checks the secrets, in constant
// time where it matters.
package auth

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"golang.org/x/crypto/argon2"
)

// Password length limits enforced by [CheckPassword]. MaxPasswordBytes also
// bounds what [HashPassword] and [VerifyPassword] will feed to argon2, since
// an unbounded password is unbounded work for the server.
const (
	MinPasswordChars = 8
	MaxPasswordBytes = 1024
)

// Bounds on argon2id parameters, for new hashes and for hashes read back.
// A PHC string comes from the store, but a corrupted or tampered row must not
// be able to make one login allocate gigabytes or run for minutes.
const (
	maxMemoryKiB  = 1 << 20 // 1 GiB
	maxIterations = 64
	minSaltBytes  = 8
	maxSaltBytes  = 64
	minKeyBytes   = 16
	maxKeyBytes   = 64

	saltBytes = 16 // RFC 9106 §3.1 recommends 16
	keyBytes  = 32
)

var (
	// ErrMalformedHash is wrapped by VerifyPassword errors for a stored hash
	// that is not an argon2id PHC string this package can check.
	ErrMalformedHash = errors.New("malformed password hash")
	// ErrPasswordPolicy is wrapped by every CheckPassword error: the
	// password is unacceptable and the user should choose another.
	ErrPasswordPolicy = errors.New("password does not meet the password policy")
	// ErrPasswordTooLong is wrapped when a password is over MaxPasswordBytes.
	ErrPasswordTooLong = errors.New("password too long")
)

// Params are argon2id cost parameters. The zero Params means DefaultParams.
type Params struct {
	// MemoryKiB is the memory cost in KiB (argon2's m); at least
	// 8×Parallelism.
	MemoryKiB uint32
	// Iterations is the time cost (argon2's t); at least 1.
	Iterations uint32
	// Parallelism is the number of lanes (argon2's p); at least 1.
	Parallelism uint8
}

// DefaultParams follows the OWASP Password Storage Cheat Sheet
// (m=19 MiB, t=2, p=1): strong enough for an online login, and cheap enough
// that a 2-core controller can take a burst of logins without stalling.
// Treat it as a constant: it is a variable only because Go has no struct
// constants.
var DefaultParams = Params{MemoryKiB: 19456, Iterations: 2, Parallelism: 1}

func (p Params) orDefault() Params {
	if p == (Params{}) {
		return DefaultParams
	}
	return p
}

func (p Params) validate() error {
	switch {
	case p.Parallelism < 1:
		return fmt.Errorf("argon2id parallelism %d: must be at least 1", p.Parallelism)
	case p.Iterations < 1 || p.Iterations > maxIterations:
		return fmt.Errorf("argon2id iterations %d: must be from 1 to %d", p.Iterations, maxIterations)
	case p.MemoryKiB < 8*uint32(p.Parallelism) || p.MemoryKiB > maxMemoryKiB:
		return fmt.Errorf("argon2id memory %d KiB: must be from 8×parallelism (%d) to %d KiB", p.MemoryKiB, 8*uint32(p.Parallelism), maxMemoryKiB)
	}
	return nil
}

// CheckPassword reports whether pw is acceptable as a new password: at least
// MinPasswordChars characters (Unicode code points, so a passphrase in any
// script counts fairly) and at most MaxPasswordBytes bytes. Following NIST SP
// 800-63B, it imposes no composition rules: length is what makes a password
// strong.
func CheckPassword(pw string) error {
	if len(pw) > MaxPasswordBytes {
		return fmt.Errorf("%w: %w: it is %d bytes; use at most %d", ErrPasswordPolicy, ErrPasswordTooLong, len(pw), MaxPasswordBytes)
	}
	if !utf8.ValidString(pw) {
		return fmt.Errorf("%w: it is not valid UTF-8 text", ErrPasswordPolicy)
	}
	if n := utf8.RuneCountInString(pw); n < MinPasswordChars {
		return fmt.Errorf("%w: it has %d characters; use at least %d", ErrPasswordPolicy, n, MinPasswordChars)
	}
	return nil
}

// HashPassword hashes password with argon2id under p (zero p: DefaultParams)
// and a fresh random salt, and returns a PHC string:
//
//	$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>
//
// with salt and hash in unpadded standard base64. The string records its own
// parameters, so DefaultParams can change without invalidating old hashes.
// It does not apply CheckPassword; the caller decides the policy.
func HashPassword(password string, p Params) (string, error) {
	p = p.orDefault()
	if err := p.validate(); err != nil {
		return "", fmt.Errorf("hash password: %w", err)
	}
	if len(password) > MaxPasswordBytes {
		return "", fmt.Errorf("hash password: %w: %d bytes, the limit is %d", ErrPasswordTooLong, len(password), MaxPasswordBytes)
	}
	salt := make([]byte, saltBytes)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("hash password: salt: %w", err)
	}
	key := argon2.IDKey([]byte(password), salt, p.Iterations, p.MemoryKiB, p.Parallelism, keyBytes)
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version,
		p.MemoryKiB, p.Iterations, p.Parallelism,
		base64.RawStdEncoding.EncodeToString(salt), base64.RawStdEncoding.EncodeToString(key)), nil
}

// VerifyPassword reports whether password matches the PHC string phc made by
// HashPassword, using the parameters recorded in phc and a constant-time
// comparison. A malformed phc, or one whose parameters are out of bounds, is
// an error wrapping ErrMalformedHash; a wrong password is (false, nil).
func VerifyPassword(phc, password string) (bool, error) {
	h, err := parsePHC(phc)
	if err != nil {
		return false, fmt.Errorf("verify password: %w", err)
	}
	if len(password) > MaxPasswordBytes {
		// HashPassword never hashes such a password, so it cannot match;
		// answering early reveals only the length, which the sender knows.
		return false, nil
	}
	key := argon2.IDKey([]byte(password), h.salt, h.params.Iterations, h.params.MemoryKiB, h.params.Parallelism, uint32(len(h.key)))
	return subtle.ConstantTimeCompare(key, h.key) == 1, nil
}

// DummyVerify does the work of a VerifyPassword under p (zero p:
// DefaultParams) and throws the result away. Call it when the user does not
// exist (or has no password) so that such logins take as long as real ones
// and response times do not reveal which names exist. Pass the Params new
// hashes are made with, since that is what most stored hashes cost.
func DummyVerify(password string, p Params) {
	p = p.orDefault()
	if p.validate() != nil {
		p = DefaultParams
	}
	if len(password) > MaxPasswordBytes {
		return // VerifyPassword returns early too
	}
	var salt [saltBytes]byte
	argon2.IDKey([]byte(password), salt[:], p.Iterations, p.MemoryKiB, p.Parallelism, keyBytes)
}

// phcHash is a parsed argon2id PHC string.
type phcHash struct {
	params Params
	salt   []byte
	key    []byte
}

// parsePHC parses "$argon2id$v=19$m=…,t=…,p=…$salt$hash" strictly: fields
// in this order, no extras, decimal numbers, unpadded standard base64.
func parsePHC(s string) (phcHash, error) {
	bad := func(format string, args ...any) (phcHash, error) {
		return phcHash{}, fmt.Errorf("%w: %s", ErrMalformedHash, fmt.Sprintf(format, args...))
	}
	fields := strings.Split(s, "$")
	if len(fields) != 6 || fields[0] != "" {
		return bad("want $argon2id$v=19$m=…,t=…,p=…$salt$hash, got %d $-separated fields", len(fields)-1)
	}
	if fields[1] != "argon2id" {
		return bad("algorithm %q: only argon2id is supported", fields[1])
	}
	v, ok := strings.CutPrefix(fields[2], "v=")
	if !ok || v != strconv.Itoa(argon2.Version) {
		return bad("version %q: only v=%d is supported", fields[2], argon2.Version)
	}
	var h phcHash
	params := strings.Split(fields[3], ",")
	if len(params) != 3 {
		return bad("parameters %q: want m=…,t=…,p=…", fields[3])
	}
	for i, name := range []string{"m", "t", "p"} {
		val, ok := strings.CutPrefix(params[i], name+"=")
		if !ok {
			return bad("parameters %q: want m=…,t=…,p=…", fields[3])
		}
		bits := 32
		if name == "p" {
			bits = 8
		}
		n, err := parseDecimal(val, bits)
		if err != nil {
			return bad("parameter %s=%q: %v", name, val, err)
		}
		switch name {
		case "m":
			h.params.MemoryKiB = uint32(n)
		case "t":
			h.params.Iterations = uint32(n)
		case "p":
			h.params.Parallelism = uint8(n)
		}
	}
	if err := h.params.validate(); err != nil {
		return bad("%v", err)
	}
	var err error
	if h.salt, err = decodeB64(fields[4], minSaltBytes, maxSaltBytes); err != nil {
		return bad("salt: %v", err)
	}
	if h.key, err = decodeB64(fields[5], minKeyBytes, maxKeyBytes); err != nil {
		return bad("hash: %v", err)
	}
	return h, nil
}

// parseDecimal accepts only plain decimal digits, without sign or leading
// zeros, so that each hash has exactly one spelling.
func parseDecimal(s string, bits int) (uint64, error) {
	if s == "" || (len(s) > 1 && s[0] == '0') || strings.TrimLeft(s, "0123456789") != "" {
		return 0, errors.New("not a decimal number")
	}
	return strconv.ParseUint(s, 10, bits)
}

func decodeB64(s string, minBytes, maxBytes int) ([]byte, error) {
	if base64.RawStdEncoding.DecodedLen(len(s)) > maxBytes {
		return nil, fmt.Errorf("longer than %d bytes", maxBytes)
	}
	b, err := base64.RawStdEncoding.Strict().DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("not unpadded base64: %w", err)
	}
	if len(b) < minBytes {
		return nil, fmt.Errorf("%d bytes, want at least %d", len(b), minBytes)
	}
	// Strict decoding rejects stray trailing bits but still skips CR and LF;
	// re-encoding checks that the text is the one canonical spelling.
	if base64.RawStdEncoding.EncodeToString(b) != s {
		return nil, errors.New("not canonical base64")
	}
	return b, nil
}
