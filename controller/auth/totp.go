package auth

import (
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/pquerna/otp"
	"github.com/pquerna/otp/hotp"
	"github.com/pquerna/otp/totp"
)

// TOTP parameters: RFC 6238's defaults, the only ones every authenticator
// app supports (HMAC-SHA-1, six digits, 30-second steps).
const (
	TOTPPeriod = 30 * time.Second
	TOTPDigits = 6
	// TOTPSkew is how many steps either side of now a code may be from: one
	// covers a phone clock a little off and a code typed as it turned over.
	TOTPSkew = 1
	// totpSecretBytes is the shared secret's size: 160 bits, as RFC 4226
	// recommends for HMAC-SHA-1.
	totpSecretBytes = 20
)

// RecoveryCodeCount is how many recovery codes an enrolment makes.
const RecoveryCodeCount = 10

// recoveryCodeChars is the random part of a recovery code: 16 base32
// characters, 80 bits, beyond guessing online and, with a fast hash,
// offline too.
const recoveryCodeChars = 16

// NewTOTP makes a fresh TOTP shared secret for account and returns it
// (base32) with its otpauth:// URI, which authenticator apps read from a
// QR code. Both hold the secret, so both are Tokens: they print redacted.
func NewTOTP(issuer, account string) (secret, uri Token, err error) {
	k, err := totp.Generate(totp.GenerateOpts{
		Issuer: issuer, AccountName: account, Period: uint(TOTPPeriod / time.Second),
		SecretSize: totpSecretBytes, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1,
	})
	if err != nil {
		return "", "", fmt.Errorf("new totp: %w", err)
	}
	return Token(k.Secret()), Token(k.URL()), nil
}

// TOTPStep is the RFC 6238 time step t falls in.
func TOTPStep(t time.Time) int64 { return t.Unix() / int64(TOTPPeriod/time.Second) }

// TOTPCode returns the code of secret at time step step (for tests and
// tools that act as an authenticator).
func TOTPCode(secret Token, step int64) (string, error) {
	code, err := hotp.GenerateCodeCustom(secret.Reveal(), uint64(step), hotpOpts)
	if err != nil {
		return "", fmt.Errorf("totp code: %w", err)
	}
	return code, nil
}

var hotpOpts = hotp.ValidateOpts{Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1}

// CheckTOTP reports whether code is secret's code for a time step within
// TOTPSkew steps of now, and which step it is: the caller keeps the last
// step used and refuses any step not after it, so that a code cannot be
// replayed (RFC 6238 §5.2). Comparison is constant-time.
func CheckTOTP(secret Token, code string, now time.Time) (step int64, ok bool) {
	if !IsTOTPCode(code) {
		return 0, false
	}
	cur := TOTPStep(now)
	// Oldest first: a code valid for two steps (it cannot be, barring a
	// collision) would then burn the earlier one only.
	for s := cur - TOTPSkew; s <= cur+TOTPSkew; s++ {
		if s < 0 {
			continue
		}
		match, err := hotp.ValidateCustom(code, uint64(s), secret.Reveal(), hotpOpts)
		if err == nil && match {
			return s, true
		}
	}
	return 0, false
}

// IsTOTPCode reports whether s has the form of a TOTP code: six ASCII
// digits. Anything else a user types at the code prompt is taken for a
// recovery code.
func IsTOTPCode(s string) bool {
	return len(s) == TOTPDigits && strings.Trim(s, "0123456789") == ""
}

// NewRecoveryCode returns a random single-use recovery code,
// "xxxx-xxxx-xxxx-xxxx" in lowercase base32.
func NewRecoveryCode() Token {
	r := strings.ToLower(rand.Text()[:recoveryCodeChars])
	return Token(r[0:4] + "-" + r[4:8] + "-" + r[8:12] + "-" + r[12:16])
}

// ErrMalformedCode is returned by HashRecoveryCode for input that cannot be
// a recovery code.
var ErrMalformedCode = errors.New("not a recovery code")

// HashRecoveryCode returns what the store keeps for user's recovery code:
// the hex SHA-256 of the user name and the code with case, dashes and
// spaces normalised away (people retype them). The user name keeps one
// user's hashes useless against another's.
func HashRecoveryCode(user, code string) (string, error) {
	norm := strings.ToLower(strings.NewReplacer("-", "", " ", "").Replace(code))
	if len(norm) != recoveryCodeChars || strings.Trim(norm, "abcdefghijklmnopqrstuvwxyz234567") != "" {
		return "", ErrMalformedCode
	}
	return HashToken(user + "\x00" + norm), nil
}
