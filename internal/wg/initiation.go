package wg

import (
	"crypto/hmac"
	"crypto/subtle"
	"errors"
	"fmt"
	"hash"

	"github.com/keyhole-net/keyhole/internal/key"
	"golang.org/x/crypto/blake2s"
	"golang.org/x/crypto/chacha20poly1305"
)

// Errors returned by [InitiationDecoder]. They say why a message was not
// accepted; none of them is worth more than a debug log, since anyone can
// send junk to the WireGuard port.
var (
	// ErrNotInitiation means the bytes are not a handshake initiation
	// (type 1, three zero bytes, 148 bytes long).
	ErrNotInitiation = errors.New("not a wireguard handshake initiation")
	// ErrMAC1 means mac1 does not match: the sender does not know this
	// node's public key, or the message was altered.
	ErrMAC1 = errors.New("handshake initiation: bad mac1")
	// ErrStatic means the encrypted static key did not decrypt: the
	// message was not made for this node's private key.
	ErrStatic = errors.New("handshake initiation: static key does not decrypt")
)

// Layout of a handshake initiation (WireGuard whitepaper §5.4.2): type and
// reserved (4), sender index (4), ephemeral (32), encrypted static (32 +
// 16 tag), encrypted timestamp (12 + 16 tag), mac1 (16), mac2 (16).
const (
	initiationType    = 1
	InitiationSize    = 148 // bytes of a handshake initiation message
	initEphemeralOff  = 8
	initStaticOff     = initEphemeralOff + key.Size
	initStaticSealed  = key.Size + chacha20poly1305.Overhead
	initTimestampOff  = initStaticOff + initStaticSealed
	initMAC1Off       = initTimestampOff + 12 + chacha20poly1305.Overhead
	initMAC2Off       = initMAC1Off + blake2s.Size128
	noiseConstruction = "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
	wgIdentifier      = "WireGuard v1 zx2c4 Jason@zx2c4.com"
	labelMAC1         = "mac1----"
)

// InitiationDecoder runs the first steps of the Noise IKpsk2 responder
// (the WireGuard handshake) on initiations sent to one static key: enough
// to learn who is knocking, before any WireGuard peer exists for them. It
// checks mac1 and decrypts the initiator's static public key; it does not
// check the timestamp or the preshared key, make a session or answer —
// wireguard-go does all that once the peer is configured.
//
// Its methods are safe for concurrent use and allocate little; DH is the
// expensive part (Static), so callers check mac1 (CheckMAC1) first and
// bound how often they call Static.
type InitiationDecoder struct {
	priv    key.WGPrivate
	mac1Key [blake2s.Size]byte // HASH(LABEL_MAC1 || S_pub_r)
	chain0  [blake2s.Size]byte // C after HASH(CONSTRUCTION)
	hash0   [blake2s.Size]byte // H after mixing in the identifier and S_pub_r
}

// NewInitiationDecoder returns a decoder for initiations addressed to the
// holder of priv.
func NewInitiationDecoder(priv key.WGPrivate) *InitiationDecoder {
	d := &InitiationDecoder{priv: priv}
	pub := priv.Public().Bytes()
	d.mac1Key = blake2s.Sum256(append([]byte(labelMAC1), pub[:]...))
	d.chain0 = blake2s.Sum256([]byte(noiseConstruction))
	d.hash0 = mixHash(mixHash(d.chain0, []byte(wgIdentifier)), pub[:])
	return d
}

// IsInitiation reports whether pkt has the type, reserved bytes and size
// of a handshake initiation. It says nothing about who sent it.
func IsInitiation(pkt []byte) bool {
	return len(pkt) == InitiationSize && pkt[0] == initiationType && pkt[1] == 0 && pkt[2] == 0 && pkt[3] == 0
}

// CheckMAC1 verifies the initiation's mac1: a keyed BLAKE2s over the
// message up to mac1, keyed with a hash of this node's public key. It is
// cheap (no DH) and filters out everything not meant for this node.
func (d *InitiationDecoder) CheckMAC1(pkt []byte) error {
	if !IsInitiation(pkt) {
		return ErrNotInitiation
	}
	h, err := blake2s.New128(d.mac1Key[:])
	if err != nil {
		return fmt.Errorf("mac1: %w", err) // unreachable: the key is 32 bytes
	}
	h.Write(pkt[:initMAC1Off])
	var sum [blake2s.Size128]byte
	if subtle.ConstantTimeCompare(h.Sum(sum[:0]), pkt[initMAC1Off:initMAC2Off]) != 1 {
		return ErrMAC1
	}
	return nil
}

// Static returns the initiator's static public key, decrypted from the
// initiation with one DH. It checks mac1 too, so a caller that already
// did pays for the keyed hash twice but never for a DH on junk.
func (d *InitiationDecoder) Static(pkt []byte) (key.WGPublic, error) {
	if err := d.CheckMAC1(pkt); err != nil {
		return key.WGPublic{}, err
	}
	var eph [key.Size]byte
	copy(eph[:], pkt[initEphemeralOff:initStaticOff])
	// C = KDF1(C, E_pub_i); H = HASH(H || E_pub_i)
	chain := kdf1(d.chain0, eph[:])
	h := mixHash(d.hash0, eph[:])
	// (C, k) = KDF2(C, DH(S_priv_r, E_pub_i))
	ss, err := d.priv.SharedSecret(eph)
	if err != nil {
		return key.WGPublic{}, fmt.Errorf("handshake initiation: %w", err)
	}
	_, k := kdf2(chain, ss[:])
	aead, err := chacha20poly1305.New(k[:])
	if err != nil {
		return key.WGPublic{}, fmt.Errorf("handshake initiation: %w", err) // unreachable: k is 32 bytes
	}
	var nonce [chacha20poly1305.NonceSize]byte // counter 0
	var static [key.Size]byte
	if _, err := aead.Open(static[:0], nonce[:], pkt[initStaticOff:initTimestampOff], h[:]); err != nil {
		return key.WGPublic{}, ErrStatic
	}
	return key.WGPublicFromBytes(static), nil
}

// mixHash is HASH(h || data).
func mixHash(h [blake2s.Size]byte, data []byte) [blake2s.Size]byte {
	x, _ := blake2s.New256(nil)
	x.Write(h[:])
	x.Write(data)
	var out [blake2s.Size]byte
	x.Sum(out[:0])
	return out
}

func newHMAC(k []byte) hash.Hash {
	return hmac.New(func() hash.Hash { h, _ := blake2s.New256(nil); return h }, k)
}

// hmacSum is HMAC-BLAKE2s(k, parts...).
func hmacSum(k []byte, parts ...[]byte) [blake2s.Size]byte {
	m := newHMAC(k)
	for _, p := range parts {
		m.Write(p)
	}
	var out [blake2s.Size]byte
	m.Sum(out[:0])
	return out
}

// kdf1 and kdf2 are the HKDF of the whitepaper (§5.4): T0 = HMAC(C, input),
// T1 = HMAC(T0, 0x1), T2 = HMAC(T0, T1 || 0x2).
func kdf1(c [blake2s.Size]byte, input []byte) [blake2s.Size]byte {
	t0 := hmacSum(c[:], input)
	return hmacSum(t0[:], []byte{1})
}

func kdf2(c [blake2s.Size]byte, input []byte) (t1, t2 [blake2s.Size]byte) {
	t0 := hmacSum(c[:], input)
	t1 = hmacSum(t0[:], []byte{1})
	t2 = hmacSum(t0[:], t1[:], []byte{2})
	return t1, t2
}
