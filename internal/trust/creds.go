package trust

import (
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// Files inside a gateway's or device's data directory.
const (
	fileKey  = "identity.key" // ECDSA private key, 0600
	fileCert = "identity.crt"
	fileCA   = "ca.crt"
)

// ErrNoCredentials means the directory holds no enrolment yet.
var ErrNoCredentials = errors.New("no credentials (not enrolled or logged in yet)")

// Credentials are a node's mTLS identity: its key, the certificate the
// controller's CA signed for it, and that CA.
type Credentials struct {
	Key  *ecdsa.PrivateKey
	Cert *x509.Certificate
	CA   *x509.Certificate
}

// String never prints the key.
func (c *Credentials) String() string {
	if c == nil || c.Cert == nil {
		return "Credentials{}"
	}
	return fmt.Sprintf("Credentials{%v, not_after=%s}", c.Cert.URIs, c.Cert.NotAfter.Format(time.RFC3339))
}

// LoadCredentials reads credentials from dir; ErrNoCredentials if absent.
func LoadCredentials(dir string) (*Credentials, error) {
	kb, err := os.ReadFile(filepath.Join(dir, fileKey))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNoCredentials
	}
	if err != nil {
		return nil, fmt.Errorf("load credentials: %w", err)
	}
	k, err := ParseKeyPEM(kb)
	if err != nil {
		return nil, fmt.Errorf("load credentials: %w", err)
	}
	cb, err := os.ReadFile(filepath.Join(dir, fileCert))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNoCredentials
	}
	if err != nil {
		return nil, fmt.Errorf("load credentials: %w", err)
	}
	cert, err := ParseCertPEM(string(cb))
	if err != nil {
		return nil, fmt.Errorf("load credentials: %w", err)
	}
	ab, err := os.ReadFile(filepath.Join(dir, fileCA))
	if err != nil {
		return nil, fmt.Errorf("load credentials: %w", err)
	}
	ca, err := ParseCertPEM(string(ab))
	if err != nil {
		return nil, fmt.Errorf("load credentials: %w", err)
	}
	if !SameKey(cert, k) {
		return nil, errors.New("load credentials: certificate does not match key")
	}
	return &Credentials{Key: k, Cert: cert, CA: ca}, nil
}

// Save writes the credentials to dir (key 0600).
func (c *Credentials) Save(dir string) error {
	kp, err := KeyPEM(c.Key)
	if err != nil {
		return err
	}
	if err := WriteSecret(filepath.Join(dir, fileKey), kp); err != nil {
		return err
	}
	if err := WriteSecret(filepath.Join(dir, fileCert), []byte(CertPEM(c.Cert.Raw))); err != nil {
		return err
	}
	return WriteSecret(filepath.Join(dir, fileCA), []byte(CertPEM(c.CA.Raw)))
}

// Identity returns the kind and ID in the certificate.
func (c *Credentials) Identity() (kind, id string, err error) { return Identity(c.Cert) }

// Fingerprint returns the pinned CA's fingerprint.
func (c *Credentials) Fingerprint() string { return Fingerprint(c.CA) }

// TLSConfig returns a client config that trusts only the saved CA and
// presents this certificate.
func (c *Credentials) TLSConfig(serverName string) *tls.Config {
	roots := x509.NewCertPool()
	roots.AddCert(c.CA)
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		RootCAs:    roots,
		ServerName: serverName,
		// GetClientCertificate (not Certificates) so a renewed certificate,
		// swapped in by the owner, is used on the next handshake.
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return &tls.Certificate{Certificate: [][]byte{c.Cert.Raw}, PrivateKey: c.Key, Leaf: c.Cert}, nil
		},
	}
}
