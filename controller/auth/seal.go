package auth

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// SealKeyBytes is the size of a Sealer key (AES-256).
const SealKeyBytes = 32

// sealPrefix versions the sealed form, so that the scheme can change
// without misreading old rows.
const sealPrefix = "v1."

// ErrUnseal is wrapped by every Open error: the sealed value is malformed,
// was sealed under another key or for another context, or was tampered with.
var ErrUnseal = errors.New("cannot unseal")

// Sealer encrypts small secrets kept at rest (TOTP shared secrets), which
// unlike passwords and tokens must be read back and so cannot be hashed.
// It uses AES-256-GCM with a random nonce per value; the context string
// (say, the owner's name) is authenticated too, so a sealed value copied
// to another row does not open there. A database dump without the key
// reveals nothing.
type Sealer struct {
	aead cipher.AEAD
}

// NewSealer returns a Sealer for a SealKeyBytes-byte key.
func NewSealer(key []byte) (*Sealer, error) {
	if len(key) != SealKeyBytes {
		return nil, fmt.Errorf("seal key: %d bytes, want %d", len(key), SealKeyBytes)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("seal key: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("seal key: %w", err)
	}
	return &Sealer{aead: aead}, nil
}

// Seal encrypts plain for context and returns text safe to store:
// "v1." and the unpadded base64url of nonce and ciphertext.
func (s *Sealer) Seal(plain []byte, context string) string {
	nonce := make([]byte, s.aead.NonceSize(), s.aead.NonceSize()+len(plain)+s.aead.Overhead())
	_, _ = rand.Read(nonce) // never fails (crypto/rand)
	out := s.aead.Seal(nonce, nonce, plain, []byte(context))
	return sealPrefix + base64.RawURLEncoding.EncodeToString(out)
}

// Open decrypts what Seal returned for the same context.
func (s *Sealer) Open(sealed, context string) ([]byte, error) {
	body, ok := strings.CutPrefix(sealed, sealPrefix)
	if !ok {
		return nil, fmt.Errorf("%w: unknown format", ErrUnseal)
	}
	b, err := base64.RawURLEncoding.DecodeString(body)
	if err != nil || len(b) < s.aead.NonceSize()+s.aead.Overhead() {
		return nil, fmt.Errorf("%w: malformed", ErrUnseal)
	}
	n := s.aead.NonceSize()
	plain, err := s.aead.Open(nil, b[:n], b[n:], []byte(context))
	if err != nil {
		return nil, fmt.Errorf("%w: wrong key, wrong context or tampered", ErrUnseal)
	}
	return plain, nil
}
