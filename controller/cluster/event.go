package cluster

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Wire format of an event (all integers big-endian):
//
//	u8  msgEvent
//	u8  wireVersion
//	u8  len(origin)  origin
//	u64 epoch
//	u64 seq
//	i64 expires, Unix milliseconds
//	u8  len(kind)    kind
//	u16 len(body)    body (JSON)
//	u16 len(sig)     sig
//
// sig is the origin's signature, with the key of its controller
// certificate, over eventSigDomain followed by every byte before the
// signature length. Events travel verbatim, so a relay never re-encodes
// what it did not sign.
//
// The full-state exchange (LocalState) is:
//
//	u8  msgState
//	u8  wireVersion
//	u16 count
//	count × (u16 len(event)  event)
const (
	msgEvent    = 0x01
	msgState    = 0x02
	wireVersion = 1

	eventSigDomain = "keyhole cluster event v1\x00"

	// MaxBodyBytes is the largest event body Broadcast accepts. An event
	// must fit, with memberlist's framing and encryption, in one gossip
	// packet (1400 bytes).
	MaxBodyBytes = 900

	// maxKindLen bounds an event kind.
	maxKindLen = 32

	// maxSigBytes bounds a signature (ECDSA P-256 ASN.1: ≤ 72; P-384:
	// ≤ 104; Ed25519: 64; RSA-2048: 256).
	maxSigBytes = 512

	// maxEventBytes is the largest encoded event a receiver accepts.
	maxEventBytes = 2 + 1 + maxNodeNameLen + 8 + 8 + 8 + 1 + maxKindLen + 2 + MaxBodyBytes + 2 + maxSigBytes

	// maxStateEvents caps the revocation set carried in a full-state
	// exchange, and so its size (about 1.8 MB at most).
	maxStateEvents = 1024

	// maxStateBytes is the largest full state a receiver decodes.
	maxStateBytes = 4 + maxStateEvents*(2+maxEventBytes)
)

// ErrTooLarge means an event body is over MaxBodyBytes.
var ErrTooLarge = errors.New("event body too large for one gossip packet")

// errMalformed means bytes from the network are not a valid message.
var errMalformed = errors.New("malformed cluster message")

// Event is one broadcast between controllers. (Origin, Epoch, Seq) names
// it uniquely: Epoch is fixed per start of the origin's Cluster and Seq
// counts up from 1 within it, so receivers de-duplicate on the triple and a
// restarted controller never reuses one.
type Event struct {
	// Origin is the controller ID of the sender (its memberlist node name).
	Origin string
	// Epoch identifies one run of the origin (its start time, in Unix
	// nanoseconds).
	Epoch uint64
	// Seq numbers the origin's events within the epoch, from 1.
	Seq uint64
	// Kind says what the event means to the controller ("revoke", …).
	Kind string
	// Body is the event's JSON payload, at most MaxBodyBytes.
	Body json.RawMessage
	// Expires is when receivers stop spreading, delivering and remembering
	// the event (millisecond precision).
	Expires time.Time
}

// key returns the event's identity for de-duplication.
func (e Event) key() eventKey { return eventKey{e.Origin, e.Epoch, e.Seq} }

// eventKey names an event uniquely.
type eventKey struct {
	origin string
	epoch  uint64
	seq    uint64
}

// revocationBody is the body of a KindRevoke event.
type revocationBody struct {
	IDs []string `json:"ids"`
}

// RevokedIDs returns the IDs carried by a KindRevoke event.
func (e Event) RevokedIDs() ([]string, error) {
	if e.Kind != KindRevoke {
		return nil, fmt.Errorf("event %s/%d/%d is %q, not %q", e.Origin, e.Epoch, e.Seq, e.Kind, KindRevoke)
	}
	var b revocationBody
	if err := json.Unmarshal(e.Body, &b); err != nil {
		return nil, fmt.Errorf("revocation %s/%d/%d: %w", e.Origin, e.Epoch, e.Seq, err)
	}
	return b.IDs, nil
}

// validKind reports whether s is a usable event kind: 1 to 32 lowercase
// letters, digits, '.', '_' or '-'.
func validKind(s string) bool {
	if len(s) == 0 || len(s) > maxKindLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// signedEvent is an event with its encoding, as received or sent.
type signedEvent struct {
	Event
	raw      []byte // the whole message, verbatim
	signed   int    // raw[:signed] is what the signature covers
	sig      []byte
	viaState bool // learned from a full-state exchange, not gossip
}

// encodeEvent encodes and signs e with signer.
func encodeEvent(e Event, signer crypto.Signer) ([]byte, error) {
	if !ValidNodeName(e.Origin) {
		return nil, fmt.Errorf("encode event: invalid origin %q", e.Origin)
	}
	if !validKind(e.Kind) {
		return nil, fmt.Errorf("encode event: invalid kind %q", e.Kind)
	}
	if len(e.Body) > MaxBodyBytes {
		return nil, fmt.Errorf("encode event: %w (%d bytes, limit %d)", ErrTooLarge, len(e.Body), MaxBodyBytes)
	}
	b := make([]byte, 0, 64+len(e.Body)+maxSigBytes)
	b = append(b, msgEvent, wireVersion, byte(len(e.Origin)))
	b = append(b, e.Origin...)
	b = binary.BigEndian.AppendUint64(b, e.Epoch)
	b = binary.BigEndian.AppendUint64(b, e.Seq)
	b = binary.BigEndian.AppendUint64(b, uint64(e.Expires.UnixMilli()))
	b = append(b, byte(len(e.Kind)))
	b = append(b, e.Kind...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(e.Body)))
	b = append(b, e.Body...)
	sig, err := sign(signer, b)
	if err != nil {
		return nil, fmt.Errorf("encode event: %w", err)
	}
	if len(sig) > maxSigBytes {
		return nil, fmt.Errorf("encode event: signature of %d bytes is over the limit of %d", len(sig), maxSigBytes)
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(sig)))
	return append(b, sig...), nil
}

// decodeEvent parses an event message. It checks the form of every field
// but not the signature (see verifyEvent). The returned event does not
// alias b.
func decodeEvent(b []byte) (signedEvent, error) {
	if len(b) > maxEventBytes {
		return signedEvent{}, fmt.Errorf("%w: event of %d bytes is over the limit", errMalformed, len(b))
	}
	raw := bytes.Clone(b)
	r := reader{b: raw}
	if t, v := r.u8(), r.u8(); r.err == nil && (t != msgEvent || v != wireVersion) {
		return signedEvent{}, fmt.Errorf("%w: type %d version %d", errMalformed, t, v)
	}
	var e signedEvent
	e.Origin = string(r.bytes(int(r.u8())))
	e.Epoch = r.u64()
	e.Seq = r.u64()
	e.Expires = time.UnixMilli(int64(r.u64())).UTC()
	e.Kind = string(r.bytes(int(r.u8())))
	body := r.bytes(int(r.u16()))
	e.signed = r.off
	e.sig = r.bytes(int(r.u16()))
	if r.err != nil {
		return signedEvent{}, r.err
	}
	if r.off != len(raw) {
		return signedEvent{}, fmt.Errorf("%w: %d trailing bytes", errMalformed, len(raw)-r.off)
	}
	switch {
	case !ValidNodeName(e.Origin):
		return signedEvent{}, fmt.Errorf("%w: origin %q", errMalformed, e.Origin)
	case e.Seq == 0:
		return signedEvent{}, fmt.Errorf("%w: sequence 0", errMalformed)
	case !validKind(e.Kind):
		return signedEvent{}, fmt.Errorf("%w: kind %q", errMalformed, e.Kind)
	case len(body) > MaxBodyBytes:
		return signedEvent{}, fmt.Errorf("%w: body of %d bytes", errMalformed, len(body))
	case !json.Valid(body):
		return signedEvent{}, fmt.Errorf("%w: body is not JSON", errMalformed)
	case len(e.sig) == 0 || len(e.sig) > maxSigBytes:
		return signedEvent{}, fmt.Errorf("%w: signature of %d bytes", errMalformed, len(e.sig))
	}
	e.Body = json.RawMessage(body)
	e.raw = raw
	return e, nil
}

// verifyEvent checks e's signature against the origin's certificate.
func verifyEvent(e signedEvent, cert *x509.Certificate) error {
	alg, ok := sigAlgorithm(cert.PublicKey)
	if !ok {
		return fmt.Errorf("verify event from %s: unsupported key type %T", e.Origin, cert.PublicKey)
	}
	msg := append([]byte(eventSigDomain), e.raw[:e.signed]...)
	if err := cert.CheckSignature(alg, msg, e.sig); err != nil {
		return fmt.Errorf("verify event from %s: %w", e.Origin, err)
	}
	return nil
}

// sign signs eventSigDomain+b the way x509.Certificate.CheckSignature
// verifies with the algorithm sigAlgorithm picks for the public key.
func sign(signer crypto.Signer, b []byte) ([]byte, error) {
	msg := append([]byte(eventSigDomain), b...)
	switch signer.Public().(type) {
	case ed25519.PublicKey:
		return signer.Sign(rand.Reader, msg, crypto.Hash(0))
	case *ecdsa.PublicKey, *rsa.PublicKey:
		sum := sha256.Sum256(msg)
		return signer.Sign(rand.Reader, sum[:], crypto.SHA256)
	default:
		return nil, fmt.Errorf("unsupported key type %T", signer.Public())
	}
}

func sigAlgorithm(pub any) (x509.SignatureAlgorithm, bool) {
	switch pub.(type) {
	case ed25519.PublicKey:
		return x509.PureEd25519, true
	case *ecdsa.PublicKey:
		return x509.ECDSAWithSHA256, true
	case *rsa.PublicKey:
		return x509.SHA256WithRSA, true
	}
	return 0, false
}

// encodeState encodes a revocation set (events already encoded).
func encodeState(events [][]byte) []byte {
	n := 4
	for _, e := range events {
		n += 2 + len(e)
	}
	b := make([]byte, 0, n)
	b = append(b, msgState, wireVersion)
	b = binary.BigEndian.AppendUint16(b, uint16(len(events)))
	for _, e := range events {
		b = binary.BigEndian.AppendUint16(b, uint16(len(e)))
		b = append(b, e...)
	}
	return b
}

// decodeState splits a full-state message into its events (each still to
// be decoded and verified). The slices alias b.
func decodeState(b []byte) ([][]byte, error) {
	if len(b) > maxStateBytes {
		return nil, fmt.Errorf("%w: state of %d bytes is over the limit", errMalformed, len(b))
	}
	r := reader{b: b}
	if t, v := r.u8(), r.u8(); r.err == nil && (t != msgState || v != wireVersion) {
		return nil, fmt.Errorf("%w: type %d version %d", errMalformed, t, v)
	}
	n := int(r.u16())
	if r.err == nil && n > maxStateEvents {
		return nil, fmt.Errorf("%w: %d events in state, limit %d", errMalformed, n, maxStateEvents)
	}
	var out [][]byte
	for i := 0; i < n && r.err == nil; i++ {
		e := r.bytes(int(r.u16()))
		if len(e) > maxEventBytes {
			return nil, fmt.Errorf("%w: state event of %d bytes", errMalformed, len(e))
		}
		out = append(out, e)
	}
	if r.err != nil {
		return nil, r.err
	}
	if r.off != len(b) {
		return nil, fmt.Errorf("%w: %d trailing bytes", errMalformed, len(b)-r.off)
	}
	return out, nil
}

// reader reads big-endian fields, remembering the first error so callers
// check once.
type reader struct {
	b   []byte
	off int
	err error
}

func (r *reader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || len(r.b)-r.off < n {
		r.err = fmt.Errorf("%w: truncated", errMalformed)
		return nil
	}
	s := r.b[r.off : r.off+n]
	r.off += n
	return s
}

func (r *reader) u8() byte {
	s := r.take(1)
	if s == nil {
		return 0
	}
	return s[0]
}

func (r *reader) u16() uint16 {
	s := r.take(2)
	if s == nil {
		return 0
	}
	return binary.BigEndian.Uint16(s)
}

func (r *reader) u64() uint64 {
	s := r.take(8)
	if s == nil {
		return 0
	}
	return binary.BigEndian.Uint64(s)
}

func (r *reader) bytes(n int) []byte { return r.take(n) }
