package cluster

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"log/slog"
	"math/big"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/internal/trust"
)

// testCA is a throwaway certificate authority.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t testing.TB) *testCA {
	t.Helper()
	k, err := trust.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: k, pool: pool}
}

// issue returns a certificate chain for keyhole://kind/id, with the key
// usage controller/ca gives a controller's server certificate.
func (ca *testCA) issue(t testing.TB, kind, id string) tls.Certificate {
	t.Helper()
	k, err := trust.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: kind + "/" + id},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		URIs:         nil,
	}
	if kind != "" {
		tmpl.URIs = append(tmpl.URIs, trust.IdentityURI(kind, id))
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &k.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return tls.Certificate{Certificate: [][]byte{der, ca.cert.Raw}, PrivateKey: k, Leaf: leaf}
}

var testKey = SecretKey("0123456789abcdef0123456789abcdef")

// recorder collects what a node's handlers saw.
type recorder struct {
	mu      sync.Mutex
	events  []Event
	members []MemberEvent
}

func (r *recorder) handle(_ context.Context, ev Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, ev)
}

func (r *recorder) member(ev MemberEvent) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.members = append(r.members, ev)
}

func (r *recorder) got() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}

func (r *recorder) memberEvents() []MemberEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.members)
}

// count returns how many times ev (by identity) was delivered.
func (r *recorder) count(ev Event) int {
	n := 0
	for _, e := range r.got() {
		if e.key() == ev.key() {
			n++
		}
	}
	return n
}

// logRecorder is a slog handler that keeps every record's text.
type logRecorder struct {
	mu    *sync.Mutex
	lines *[]string
	attrs []slog.Attr
}

func newLogRecorder() *logRecorder {
	return &logRecorder{mu: new(sync.Mutex), lines: new([]string)}
}

func (h *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (h *logRecorder) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", r.Level, r.Message)
	for _, a := range h.attrs {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
	}
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	h.mu.Lock()
	*h.lines = append(*h.lines, b.String())
	h.mu.Unlock()
	return nil
}
func (h *logRecorder) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.attrs = append(slices.Clone(h.attrs), as...)
	return &c
}
func (h *logRecorder) WithGroup(string) slog.Handler { return h }

func (h *logRecorder) all() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(*h.lines)
}

func (h *logRecorder) contains(s string) bool {
	for _, l := range h.all() {
		if strings.Contains(l, s) {
			return true
		}
	}
	return false
}

// node is a started cluster member with what it recorded.
type node struct {
	*Cluster
	rec  *recorder
	logs *logRecorder
}

type nodeOpt func(*Config)

func withKey(k SecretKey) nodeOpt        { return func(c *Config) { c.SecretKey = k } }
func withJoin(addrs ...string) nodeOpt   { return func(c *Config) { c.Join = addrs } }
func withCert(c tls.Certificate) nodeOpt { return func(cfg *Config) { cfg.Certificate = c } }
func withCAs(p *x509.CertPool) nodeOpt   { return func(c *Config) { c.CAs = p } }

// outsider lets a node start with a certificate that is not its own
// controller identity, as an attacker would.
func outsider() nodeOpt { return func(c *Config) { c.skipOwnCertCheck = true } }

// startNode starts a member named name on an ephemeral loopback port.
func startNode(t *testing.T, ca *testCA, name string, opts ...nodeOpt) *node {
	t.Helper()
	n := &node{rec: &recorder{}, logs: newLogRecorder()}
	cfg := Config{
		NodeName:    name,
		BindAddr:    "127.0.0.1",
		BindPort:    AnyPort,
		SecretKey:   testKey,
		Certificate: ca.issue(t, trust.KindController, name),
		CAs:         ca.pool,
		Handler:     n.rec.handle,
		OnMember:    n.rec.member,
		Timing:      LoopbackTiming(),
		Logger:      slog.New(n.logs),
	}
	for _, o := range opts {
		o(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	n.Cluster = c
	t.Cleanup(func() {
		if err := c.Shutdown(); err != nil {
			t.Errorf("shutdown %s: %v", name, err)
		}
		for _, l := range n.logs.all() {
			if strings.Contains(l, string(testKey)) || strings.Contains(l, fmt.Sprintf("%x", []byte(testKey))) {
				t.Errorf("%s logged the secret key: %s", name, l)
			}
		}
	})
	return n
}

// startCluster starts n members that join the first one.
func startCluster(t *testing.T, ca *testCA, names ...string) []*node {
	t.Helper()
	var nodes []*node
	for i, name := range names {
		var opts []nodeOpt
		if i > 0 {
			opts = append(opts, withJoin(nodes[0].Addr().String()))
		}
		nodes = append(nodes, startNode(t, ca, name, opts...))
	}
	waitMembers(t, nodes, names...)
	return nodes
}

func memberNames(c *Cluster) []string {
	var out []string
	for _, m := range c.Members() {
		out = append(out, m.Name)
	}
	return out
}

// waitMembers waits until every node sees exactly the named members.
func waitMembers(t *testing.T, nodes []*node, names ...string) {
	t.Helper()
	want := slices.Sorted(slices.Values(names))
	eventually(t, 10*time.Second, func() (bool, string) {
		for _, n := range nodes {
			if got := memberNames(n.Cluster); !slices.Equal(got, want) {
				return false, fmt.Sprintf("%s sees %v, want %v", n.cfg.NodeName, got, want)
			}
		}
		return true, ""
	})
}

// quiesce waits until no node has broadcasts left to transmit or
// messages left to process, five checks in a row (longer than two gossip
// intervals), so whatever was in flight has landed.
func quiesce(t *testing.T, nodes ...*node) {
	t.Helper()
	calm := 0
	eventually(t, 10*time.Second, func() (bool, string) {
		for _, n := range nodes {
			if q := n.queue.NumQueued(); q > 0 {
				calm = 0
				return false, fmt.Sprintf("%s still has %d broadcasts queued", n.cfg.NodeName, q)
			}
			if l := len(n.inbound); l > 0 {
				calm = 0
				return false, fmt.Sprintf("%s still has %d messages to process", n.cfg.NodeName, l)
			}
			if w := n.stats.held.Load(); w > 0 {
				calm = 0
				return false, fmt.Sprintf("%s still holds %d events back", n.cfg.NodeName, w)
			}
		}
		calm++
		return calm >= 5, "queues empty, making sure they stay so"
	})
}

// eventually polls cond until it holds or timeout passes, then fails with
// what cond last reported.
func eventually(t testing.TB, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not after %s: %s", timeout, why)
		}
		<-tick.C
	}
}
