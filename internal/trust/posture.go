package trust

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/keyhole-net/keyhole/internal/api"
)

// postureContext separates posture signatures from every other use of a
// device key: a signature over a report can never be taken for one over
// anything else (a TLS handshake, a CSR).
const postureContext = "keyhole posture report v1\x00"

// MaxPostureBytes bounds a posture report: a device with many checks stays
// far below it.
const MaxPostureBytes = 32 << 10

// SignPosture encodes p and signs it with the device key k.
func SignPosture(p api.Posture, k *ecdsa.PrivateKey) (api.SignedPosture, error) {
	b, err := json.Marshal(p)
	if err != nil {
		return api.SignedPosture{}, fmt.Errorf("sign posture: %w", err)
	}
	return SignPostureReport(b, k)
}

// SignPostureReport signs the encoded report b with the device key k.
func SignPostureReport(b []byte, k *ecdsa.PrivateKey) (api.SignedPosture, error) {
	if len(b) > MaxPostureBytes {
		return api.SignedPosture{}, fmt.Errorf("sign posture: report is %d bytes, over the limit of %d", len(b), MaxPostureBytes)
	}
	sig, err := ecdsa.SignASN1(rand.Reader, k, postureDigest(b))
	if err != nil {
		return api.SignedPosture{}, fmt.Errorf("sign posture: %w", err)
	}
	return api.SignedPosture{Report: b, Signature: sig}, nil
}

// ErrPostureSignature is wrapped by VerifyPosture when the signature does
// not verify with the key.
var ErrPostureSignature = errors.New("posture report not signed by this device's key")

// VerifyPosture checks that sp is signed by pub (the device certificate's
// key) and returns the report it carries. It checks the signature and the
// encoding only; whose report it is and how old is the caller's to check.
func VerifyPosture(sp api.SignedPosture, pub any) (api.Posture, error) {
	ek, ok := pub.(*ecdsa.PublicKey)
	if !ok {
		return api.Posture{}, fmt.Errorf("verify posture: device key is %T, not ECDSA", pub)
	}
	if len(sp.Report) == 0 || len(sp.Report) > MaxPostureBytes {
		return api.Posture{}, fmt.Errorf("verify posture: report is %d bytes; want 1 to %d", len(sp.Report), MaxPostureBytes)
	}
	if !ecdsa.VerifyASN1(ek, postureDigest(sp.Report), sp.Signature) {
		return api.Posture{}, ErrPostureSignature
	}
	var p api.Posture
	dec := json.NewDecoder(bytes.NewReader(sp.Report))
	if err := dec.Decode(&p); err != nil {
		return api.Posture{}, fmt.Errorf("verify posture: report: %w", err)
	}
	if dec.More() {
		return api.Posture{}, errors.New("verify posture: report: data after the JSON object")
	}
	return p, nil
}

func postureDigest(report []byte) []byte {
	h := sha256.New()
	h.Write([]byte(postureContext))
	h.Write(report)
	return h.Sum(nil)
}
