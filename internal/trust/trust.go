// Package trust holds the certificate plumbing every role shares: ECDSA P-256
// keys and CSRs, the CA fingerprint format ("sha256:" + 64 hex digits),
// TLS configs that pin a controller's CA by fingerprint on first contact, and
// the keyhole:// identity URIs carried in certificate SANs.
//
// Issuing certificates is the controller's job (controller/ca); this package
// only creates keys and requests, and verifies what it is shown.
package trust

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
)

// Identity kinds carried in certificate URI SANs.
const (
	KindDevice     = "device"
	KindGateway    = "gateway"
	KindController = "controller"
)

// ErrFingerprintMismatch means the server's CA is not the pinned one.
var ErrFingerprintMismatch = errors.New("controller CA does not match the pinned fingerprint")

// Fingerprint returns "sha256:<hex>" of the certificate's DER bytes.
func Fingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// ParseFingerprint validates and normalises a fingerprint (case and an
// optional missing "sha256:" prefix are forgiven; anything else is not).
func ParseFingerprint(s string) (string, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	h := strings.TrimPrefix(s, "sha256:")
	if len(h) != 64 {
		return "", fmt.Errorf("CA fingerprint %q: want sha256: followed by 64 hex digits (printed by keyhole controller on start)", s)
	}
	if _, err := hex.DecodeString(h); err != nil {
		return "", fmt.Errorf("CA fingerprint %q: not hex", s)
	}
	return "sha256:" + h, nil
}

// IdentityURI returns keyhole://KIND/ID.
func IdentityURI(kind, id string) *url.URL {
	return &url.URL{Scheme: "keyhole", Host: kind, Path: "/" + id}
}

// Identity returns the kind and ID of the single keyhole:// URI SAN in cert.
func Identity(cert *x509.Certificate) (kind, id string, err error) {
	var found []*url.URL
	for _, u := range cert.URIs {
		if u.Scheme == "keyhole" {
			found = append(found, u)
		}
	}
	if len(found) != 1 {
		return "", "", fmt.Errorf("certificate has %d keyhole identities, want 1", len(found))
	}
	u := found[0]
	id = strings.TrimPrefix(u.Path, "/")
	if u.Host == "" || id == "" || strings.Contains(id, "/") {
		return "", "", fmt.Errorf("malformed keyhole identity %q", u)
	}
	return u.Host, id, nil
}

// NewKey returns a fresh ECDSA P-256 key.
func NewKey() (*ecdsa.PrivateKey, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate P-256 key: %w", err)
	}
	return k, nil
}

// NewCSR returns a PEM certificate request signed by k.
func NewCSR(k *ecdsa.PrivateKey, commonName string) (string, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: commonName},
	}, k)
	if err != nil {
		return "", fmt.Errorf("create CSR: %w", err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), nil
}

// ParseCSR decodes and checks the signature of a PEM CSR with a P-256 key.
func ParseCSR(s string) (*x509.CertificateRequest, error) {
	b, _ := pem.Decode([]byte(s))
	if b == nil || b.Type != "CERTIFICATE REQUEST" {
		return nil, errors.New("csr: not a PEM CERTIFICATE REQUEST")
	}
	csr, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("csr: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("csr: bad signature: %w", err)
	}
	pub, ok := csr.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, errors.New("csr: key must be ECDSA P-256")
	}
	return csr, nil
}

// ParseCertPEM decodes the first certificate in a PEM string.
func ParseCertPEM(s string) (*x509.Certificate, error) {
	b, _ := pem.Decode([]byte(s))
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, errors.New("not a PEM CERTIFICATE")
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse certificate: %w", err)
	}
	return c, nil
}

// CertPEM encodes a DER certificate as PEM.
func CertPEM(der []byte) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

// KeyPEM encodes a private key as PKCS#8 PEM.
func KeyPEM(k *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("marshal key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParseKeyPEM decodes a PKCS#8 PEM ECDSA key.
func ParseKeyPEM(b []byte) (*ecdsa.PrivateKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("not a PEM private key")
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse key: %w", err)
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, errors.New("key is not ECDSA")
	}
	return ek, nil
}

// WriteSecret writes b to path with mode 0600, atomically (temp file and
// rename), creating the directory with mode 0700.
func WriteSecret(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// PinnedConfig returns a TLS client config for first contact with a
// controller: the server must present a chain that contains a CA certificate
// with the pinned fingerprint, and the leaf must verify against that CA for
// serverName. cert, if non-nil, is offered for mTLS.
func PinnedConfig(fingerprint, serverName string, cert *tls.Certificate) (*tls.Config, error) {
	fp, err := ParseFingerprint(fingerprint)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS13,
		ServerName: serverName,
		// Chain verification is done in VerifyConnection against the pinned CA.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return verifyPinned(cs, fp, serverName)
		},
	}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return cfg, nil
}

func verifyPinned(cs tls.ConnectionState, fp, serverName string) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("controller sent no certificate")
	}
	var ca *x509.Certificate
	for _, c := range cs.PeerCertificates {
		if c.IsCA && Fingerprint(c) == fp {
			ca = c
			break
		}
	}
	if ca == nil {
		return fmt.Errorf("%w (pinned %s)", ErrFingerprintMismatch, fp)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
		Roots:     roots,
		DNSName:   serverName,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return fmt.Errorf("controller certificate: %w", err)
	}
	return nil
}

// CAFromChain returns the CA certificate with the given fingerprint from a
// verified connection state, to be saved after first contact.
func CAFromChain(cs tls.ConnectionState, fingerprint string) (*x509.Certificate, error) {
	fp, err := ParseFingerprint(fingerprint)
	if err != nil {
		return nil, err
	}
	for _, c := range cs.PeerCertificates {
		if c.IsCA && Fingerprint(c) == fp {
			return c, nil
		}
	}
	return nil, ErrFingerprintMismatch
}

// KeyPin is the pin of a public key: the hex SHA-256 of its DER
// SubjectPublicKeyInfo ("" when it cannot be encoded).
func KeyPin(pub any) string {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// SameKey reports whether cert certifies the public half of k.
func SameKey(cert *x509.Certificate, k *ecdsa.PrivateKey) bool {
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return false
	}
	a, err1 := x509.MarshalPKIXPublicKey(pub)
	b, err2 := x509.MarshalPKIXPublicKey(&k.PublicKey)
	return err1 == nil && err2 == nil && bytes.Equal(a, b)
}
