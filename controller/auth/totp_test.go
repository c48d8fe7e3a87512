package auth

import (
	"bytes"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"
)

// TestTOTPRFC6238 checks codes against the SHA-1 test vectors of RFC 6238
// Appendix B (the last six of their eight digits).
func TestTOTPRFC6238(t *testing.T) {
	secret := Token("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ") // base32 of "12345678901234567890"
	for _, tc := range []struct {
		unix int64
		code string
	}{
		{59, "287082"},
		{1111111109, "081804"},
		{1111111111, "050471"},
		{1234567890, "005924"},
		{2000000000, "279037"},
		{20000000000, "353130"},
	} {
		now := time.Unix(tc.unix, 0)
		got, err := TOTPCode(secret, TOTPStep(now))
		if err != nil || got != tc.code {
			t.Errorf("code at %d = %q, %v; want %s", tc.unix, got, err, tc.code)
		}
		step, ok := CheckTOTP(secret, tc.code, now)
		if !ok || step != TOTPStep(now) {
			t.Errorf("CheckTOTP(%s at %d) = %d, %v; want step %d", tc.code, tc.unix, step, ok, TOTPStep(now))
		}
	}
}

func TestCheckTOTP(t *testing.T) {
	secret, uri, err := NewTOTP("Keyhole", "alice")
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(uri.Reveal())
	if err != nil || u.Scheme != "otpauth" || u.Host != "totp" || u.Query().Get("secret") != secret.Reveal() ||
		u.Query().Get("issuer") != "Keyhole" || u.Query().Get("digits") != "6" || u.Query().Get("period") != "30" {
		t.Fatalf("uri %q: %v", uri.Reveal(), err)
	}
	if len(secret.Reveal()) != 32 { // 20 bytes in base32
		t.Errorf("secret has %d characters, want 32", len(secret.Reveal()))
	}
	now := time.Date(2026, 11, 23, 9, 0, 10, 0, time.UTC)
	cur := TOTPStep(now)
	code := func(step int64) string {
		c, err := TOTPCode(secret, step)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	other, _, _ := NewTOTP("Keyhole", "bob")
	for _, tc := range []struct {
		name     string
		code     string
		wantStep int64
		wantOK   bool
	}{
		{"current step", code(cur), cur, true},
		{"one step early", code(cur - 1), cur - 1, true},
		{"one step late", code(cur + 1), cur + 1, true},
		{"two steps early", code(cur - 2), 0, false},
		{"two steps late", code(cur + 2), 0, false},
		{"another secret", otherCode(t, other, cur, code(cur)), 0, false},
		{"five digits", code(cur)[:5], 0, false},
		{"seven digits", code(cur) + "0", 0, false},
		{"letters", "12345a", 0, false},
		{"spaces", " " + code(cur)[1:], 0, false},
		{"empty", "", 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			step, ok := CheckTOTP(secret, tc.code, now)
			if ok != tc.wantOK || (ok && step != tc.wantStep) {
				t.Errorf("CheckTOTP(%q) = %d, %v; want %d, %v", tc.code, step, ok, tc.wantStep, tc.wantOK)
			}
		})
	}
	if s := fmt.Sprintf("%v %s %+v", secret, uri, secret); s != "[redacted] [redacted] [redacted]" {
		t.Errorf("secret and uri print as %q", s)
	}
}

// otherCode is other's code at step, unless it happens to equal avoid.
func otherCode(t *testing.T, other Token, step int64, avoid string) string {
	t.Helper()
	for s := step; ; s += 10 {
		c, err := TOTPCode(other, s)
		if err != nil {
			t.Fatal(err)
		}
		if c != avoid {
			return c
		}
	}
}

func TestRecoveryCodes(t *testing.T) {
	seen := map[string]bool{}
	for range 50 {
		c := NewRecoveryCode().Reveal()
		if len(c) != 19 || strings.Count(c, "-") != 3 || seen[c] {
			t.Fatalf("recovery code %q: want xxxx-xxxx-xxxx-xxxx, each new", c)
		}
		seen[c] = true
	}
	c := NewRecoveryCode().Reveal()
	h, err := HashRecoveryCode("alice", c)
	if err != nil {
		t.Fatal(err)
	}
	for _, retyped := range []string{strings.ToUpper(c), strings.ReplaceAll(c, "-", ""), strings.ReplaceAll(c, "-", " ")} {
		if h2, err := HashRecoveryCode("alice", retyped); err != nil || h2 != h {
			t.Errorf("%q hashes differently from %q (%v)", retyped, c, err)
		}
	}
	if h2, _ := HashRecoveryCode("bob", c); h2 == h {
		t.Error("the same code hashes alike for two users")
	}
	for _, bad := range []string{"", "123456", c[:18], c + "a", strings.Replace(c, c[:1], "1", 1)} {
		if _, err := HashRecoveryCode("alice", bad); !errors.Is(err, ErrMalformedCode) {
			t.Errorf("HashRecoveryCode(%q) err = %v, want ErrMalformedCode", bad, err)
		}
	}
}

func TestSealer(t *testing.T) {
	key := bytes.Repeat([]byte{7}, SealKeyBytes)
	s, err := NewSealer(key)
	if err != nil {
		t.Fatal(err)
	}
	plain := []byte("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ")
	a, b := s.Seal(plain, "alice"), s.Seal(plain, "alice")
	if a == b {
		t.Error("two seals of one value are equal: the nonce is not random")
	}
	if strings.Contains(a, string(plain)) || !strings.HasPrefix(a, "v1.") {
		t.Errorf("sealed form %q", a)
	}
	got, err := s.Open(a, "alice")
	if err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("Open = %q, %v", got, err)
	}
	other, _ := NewSealer(bytes.Repeat([]byte{8}, SealKeyBytes))
	tampered := []byte(a)
	tampered[len(tampered)-2] ^= 1
	for name, open := range map[string]func() ([]byte, error){
		"other context": func() ([]byte, error) { return s.Open(a, "bob") },
		"other key":     func() ([]byte, error) { return other.Open(a, "alice") },
		"tampered":      func() ([]byte, error) { return s.Open(string(tampered), "alice") },
		"no prefix":     func() ([]byte, error) { return s.Open(a[3:], "alice") },
		"short":         func() ([]byte, error) { return s.Open("v1.AAAA", "alice") },
		"not base64":    func() ([]byte, error) { return s.Open("v1.!!!!", "alice") },
	} {
		if _, err := open(); !errors.Is(err, ErrUnseal) {
			t.Errorf("%s: err %v, want ErrUnseal", name, err)
		}
	}
	if _, err := NewSealer(key[:16]); err == nil {
		t.Error("16-byte key accepted")
	}
}
