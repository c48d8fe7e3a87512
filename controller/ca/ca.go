// Package ca is the controller's certificate authority: it creates (on first
// start) or loads an ECDSA P-256 CA and the controller's server certificate
// from the data directory, and signs short-lived device and gateway
// certificates carrying keyhole:// identity URIs.
package ca

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/keyhole-net/keyhole/internal/trust"
)

const (
	caLifetime     = 10 * 365 * 24 * time.Hour
	serverLifetime = 365 * 24 * time.Hour
	clockSkew      = 5 * time.Minute
)

// CA signs certificates for devices and gateways and serves the controller's
// TLS identity.
type CA struct {
	cert   *x509.Certificate
	key    *ecdsa.PrivateKey
	server tls.Certificate
	pool   *x509.CertPool

	// verified remembers client certificates VerifyClient accepted, so a
	// client's every request does not repeat the chain's signature check.
	verified verifiedCerts
}

// Config says where the CA lives and which names the server certificate
// must carry.
type Config struct {
	Dir   string   // data directory; ca.crt, ca.key, server.crt, server.key
	Names []string // DNS names and IP addresses of the controller
	ID    string   // controller ID for its identity URI
	// CADir, when set, holds ca.crt and ca.key instead of Dir: controllers
	// of one cluster share their CA this way, while each keeps its own
	// server certificate in Dir.
	CADir string
	Now   func() time.Time
}

// LoadOrCreate loads the CA from cfg.Dir or creates it. created is true on
// first start. The server certificate is re-issued when it is missing,
// expiring within 30 days, or lacks one of cfg.Names or cfg.ID's identity.
func LoadOrCreate(cfg Config) (c *CA, created bool, err error) {
	now := time.Now
	if cfg.Now != nil {
		now = cfg.Now
	}
	caDir := cfg.Dir
	if cfg.CADir != "" {
		caDir = cfg.CADir
	}
	keyPath, certPath := filepath.Join(caDir, "ca.key"), filepath.Join(caDir, "ca.crt")
	c = &CA{}
	kb, err := os.ReadFile(keyPath)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := c.create(now(), keyPath, certPath); err != nil {
			return nil, false, err
		}
		created = true
	case err != nil:
		return nil, false, fmt.Errorf("load CA: %w", err)
	default:
		if c.key, err = trust.ParseKeyPEM(kb); err != nil {
			return nil, false, fmt.Errorf("load CA key: %w", err)
		}
		cb, err := os.ReadFile(certPath)
		if err != nil {
			return nil, false, fmt.Errorf("load CA: %w", err)
		}
		if c.cert, err = trust.ParseCertPEM(string(cb)); err != nil {
			return nil, false, fmt.Errorf("load CA: %w", err)
		}
		if !trust.SameKey(c.cert, c.key) {
			return nil, false, errors.New("load CA: ca.crt does not match ca.key")
		}
	}
	c.pool = x509.NewCertPool()
	c.pool.AddCert(c.cert)
	if err := c.loadOrIssueServer(cfg, now()); err != nil {
		return nil, false, err
	}
	return c, created, nil
}

func (c *CA) create(now time.Time, keyPath, certPath string) error {
	k, err := trust.NewKey()
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "Keyhole CA", Organization: []string{"Keyhole"}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(caLifetime),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		return fmt.Errorf("create CA: %w", err)
	}
	if c.cert, err = x509.ParseCertificate(der); err != nil {
		return fmt.Errorf("create CA: %w", err)
	}
	c.key = k
	kp, err := trust.KeyPEM(k)
	if err != nil {
		return err
	}
	if err := trust.WriteSecret(keyPath, kp); err != nil {
		return err
	}
	return trust.WriteSecret(certPath, []byte(trust.CertPEM(der)))
}

func (c *CA) loadOrIssueServer(cfg Config, now time.Time) error {
	keyPath, certPath := filepath.Join(cfg.Dir, "server.key"), filepath.Join(cfg.Dir, "server.crt")
	if kb, err := os.ReadFile(keyPath); err == nil {
		if cb, err := os.ReadFile(certPath); err == nil {
			k, kerr := trust.ParseKeyPEM(kb)
			cert, cerr := trust.ParseCertPEM(string(cb))
			if kerr == nil && cerr == nil && trust.SameKey(cert, k) && serverCertFits(cert, c.pool, cfg.Names, cfg.ID, now) {
				c.server = tls.Certificate{Certificate: [][]byte{cert.Raw, c.cert.Raw}, PrivateKey: k, Leaf: cert}
				return nil
			}
		}
	}
	k, err := trust.NewKey()
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: "keyhole controller"},
		NotBefore:    now.Add(-clockSkew),
		NotAfter:     now.Add(serverLifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		URIs:         nil,
	}
	if cfg.ID != "" {
		tmpl.URIs = append(tmpl.URIs, trust.IdentityURI(trust.KindController, cfg.ID))
	}
	for _, n := range cfg.Names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &k.PublicKey, c.key)
	if err != nil {
		return fmt.Errorf("issue server certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return fmt.Errorf("issue server certificate: %w", err)
	}
	kp, err := trust.KeyPEM(k)
	if err != nil {
		return err
	}
	if err := trust.WriteSecret(keyPath, kp); err != nil {
		return err
	}
	if err := trust.WriteSecret(certPath, []byte(trust.CertPEM(der))); err != nil {
		return err
	}
	c.server = tls.Certificate{Certificate: [][]byte{der, c.cert.Raw}, PrivateKey: k, Leaf: cert}
	return nil
}

func serverCertFits(cert *x509.Certificate, pool *x509.CertPool, names []string, id string, now time.Time) bool {
	if now.Add(30 * 24 * time.Hour).After(cert.NotAfter) {
		return false
	}
	if id != "" {
		want := trust.IdentityURI(trust.KindController, id).String()
		if !slices.ContainsFunc(cert.URIs, func(u *url.URL) bool { return u.String() == want }) {
			return false
		}
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return false
	}
	for _, n := range names {
		if cert.VerifyHostname(n) != nil {
			return false
		}
	}
	return true
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		// crypto/rand never fails on Linux; a zero serial would still be
		// unique enough in practice and must not crash the controller.
		return big.NewInt(time.Now().UnixNano())
	}
	return n
}

// Cert returns the CA certificate.
func (c *CA) Cert() *x509.Certificate { return c.cert }

// Fingerprint returns "sha256:…" of the CA certificate.
func (c *CA) Fingerprint() string { return trust.Fingerprint(c.cert) }

// ServerTLS returns the controller's TLS server config: TLS 1.3, the server
// certificate chained to the CA, and client certificates requested and, when
// given, verified against the CA.
func (c *CA) ServerTLS() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{c.server},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    c.pool,
		NextProtos:   []string{"h2", "http/1.1"},
	}
}

// Sign issues a client certificate for the CSR with one identity URI SAN,
// valid for lifetime from now. The CSR's signature and key type are checked.
func (c *CA) Sign(csrPEM, kind, id string, lifetime time.Duration, now time.Time) (*x509.Certificate, error) {
	csr, err := trust.ParseCSR(csrPEM)
	if err != nil {
		return nil, err
	}
	if !slices.Contains([]string{trust.KindDevice, trust.KindGateway}, kind) {
		return nil, fmt.Errorf("sign: unknown identity kind %q", kind)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: kind + "/" + id},
		NotBefore:    now.Add(-clockSkew),
		NotAfter:     now.Add(lifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{trust.IdentityURI(kind, id)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, csr.PublicKey, c.key)
	if err != nil {
		return nil, fmt.Errorf("sign %s/%s: %w", kind, id, err)
	}
	return x509.ParseCertificate(der)
}

// VerifyClient checks that cert was issued by this CA, is within its
// validity at now, and names exactly one identity; it returns kind and ID.
func (c *CA) VerifyClient(cert *x509.Certificate, now time.Time) (kind, id string, err error) {
	if v, ok := c.verified.lookup(cert, now); ok {
		return v.kind, v.id, nil
	}
	chains, err := cert.Verify(x509.VerifyOptions{Roots: c.pool, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		return "", "", fmt.Errorf("client certificate: %w", err)
	}
	kind, id, err = trust.Identity(cert)
	if err != nil {
		return "", "", err
	}
	c.verified.add(cert, chains, kind, id)
	return kind, id, nil
}

// maxVerifiedCerts bounds the cache of verified client certificates; a
// full cache starts over (each client then verifies once more).
const maxVerifiedCerts = 16384

// verifiedCerts caches VerifyClient's answers by the certificate's bytes.
// What it caches is a function of those bytes and the CA alone, except
// time: each entry keeps the validity window of the chain it was verified
// with, and counts only within it.
type verifiedCerts struct {
	mu sync.Mutex // guards m
	m  map[[sha256.Size]byte]verifiedCert
}

type verifiedCert struct {
	kind, id            string
	notBefore, notAfter time.Time
}

func (v *verifiedCerts) lookup(cert *x509.Certificate, now time.Time) (verifiedCert, bool) {
	k := sha256.Sum256(cert.Raw)
	v.mu.Lock()
	e, ok := v.m[k]
	v.mu.Unlock()
	if !ok || now.Before(e.notBefore) || now.After(e.notAfter) {
		return verifiedCert{}, false
	}
	return e, true
}

func (v *verifiedCerts) add(cert *x509.Certificate, chains [][]*x509.Certificate, kind, id string) {
	if len(chains) == 0 {
		return
	}
	e := verifiedCert{kind: kind, id: id, notBefore: cert.NotBefore, notAfter: cert.NotAfter}
	for _, c := range chains[0] {
		if c.NotBefore.After(e.notBefore) {
			e.notBefore = c.NotBefore
		}
		if c.NotAfter.Before(e.notAfter) {
			e.notAfter = c.NotAfter
		}
	}
	k := sha256.Sum256(cert.Raw)
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.m == nil || len(v.m) >= maxVerifiedCerts {
		v.m = make(map[[sha256.Size]byte]verifiedCert)
	}
	v.m[k] = e
}
