package cluster

import (
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/keyhole-net/keyhole/internal/trust"
)

// maxNodeNameLen bounds a controller ID; it travels in every event.
const maxNodeNameLen = 64

// maxPeers bounds the verified-peer registry: a cluster of controllers is
// small, and a peer that is not in it can neither join nor be heard.
const maxPeers = 1024

// ErrIdentity means a peer's certificate is not a controller certificate
// of this cluster's CA, or names another controller than the one expected.
var ErrIdentity = errors.New("peer is not a controller of this cluster")

// ValidNodeName reports whether s has the form of a controller ID: 1 to 64
// ASCII letters, digits, '.', '_' or '-', starting and ending with a letter
// or digit. The form keeps IDs safe in URIs (keyhole://controller/<id>),
// log lines and memberlist's "name/host:port" join syntax.
func ValidNodeName(s string) bool {
	if len(s) == 0 || len(s) > maxNodeNameLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if alnum {
			continue
		}
		if (c == '.' || c == '_' || c == '-') && i > 0 && i < len(s)-1 {
			continue
		}
		return false
	}
	return true
}

// verifyController checks that chain (leaf first, as a TLS peer sends it)
// leads to a root in roots and that the leaf carries exactly one keyhole://
// identity of kind controller with a valid ID, equal to want when want is
// not empty. It returns the ID and the leaf.
//
// Both ends of a gossip stream are controllers, and the controller's
// certificate (controller/ca) is issued for server authentication, so
// either server or client authentication is accepted as key usage: what
// binds the certificate to this use is the identity URI.
func verifyController(chain []*x509.Certificate, roots *x509.CertPool, want string, now time.Time) (string, *x509.Certificate, error) {
	if len(chain) == 0 {
		return "", nil, fmt.Errorf("%w: no certificate", ErrIdentity)
	}
	leaf := chain[0]
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := leaf.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return "", nil, fmt.Errorf("%w: %w", ErrIdentity, err)
	}
	kind, id, err := trust.Identity(leaf)
	if err != nil {
		return "", nil, fmt.Errorf("%w: %w", ErrIdentity, err)
	}
	if kind != trust.KindController {
		return "", nil, fmt.Errorf("%w: certificate is for a %s, not a controller", ErrIdentity, kind)
	}
	if !ValidNodeName(id) {
		return "", nil, fmt.Errorf("%w: controller ID %q is malformed", ErrIdentity, id)
	}
	if want != "" && id != want {
		return "", nil, fmt.Errorf("%w: certificate is for controller %q, expected %q", ErrIdentity, id, want)
	}
	return id, leaf, nil
}

// peerRegistry remembers what mutual TLS proved about other controllers:
// the certificate each presented (to check the signatures on their events)
// and the gossip address at which we reached each one (to accept
// memberlist's news of a node only at an address it proved it holds).
type peerRegistry struct {
	mu      sync.Mutex // guards certs, addrs, changed
	certs   map[string]*x509.Certificate
	addrs   map[string]string
	changed chan struct{} // capacity 1; signalled when certs grows or changes
}

func newPeerRegistry() *peerRegistry {
	return &peerRegistry{
		certs:   make(map[string]*x509.Certificate),
		addrs:   make(map[string]string),
		changed: make(chan struct{}, 1),
	}
}

// learn records a verified certificate for id and, when we dialed it, the
// address we dialed.
func (p *peerRegistry) learn(id string, cert *x509.Certificate, dialedAddr string) {
	p.mu.Lock()
	old, known := p.certs[id]
	if !known && len(p.certs) >= maxPeers {
		p.mu.Unlock()
		return
	}
	p.certs[id] = cert
	if dialedAddr != "" {
		p.addrs[id] = dialedAddr
	}
	p.mu.Unlock()
	if !known || !old.Equal(cert) {
		select {
		case p.changed <- struct{}{}:
		default:
		}
	}
}

// cert returns the certificate id last presented, if it is still valid.
func (p *peerRegistry) cert(id string, now time.Time) (*x509.Certificate, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	c, ok := p.certs[id]
	if !ok || now.After(c.NotAfter) {
		return nil, false
	}
	return c, true
}

// verifiedAt reports whether we reached id over mutual TLS at addr.
func (p *peerRegistry) verifiedAt(id, addr string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.addrs[id] == addr
}
