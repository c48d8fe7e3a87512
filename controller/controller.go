// Package controller is Keyhole's control plane: the HTTPS API for admins,
// clients and gateways; per-request grant decisions (policy + posture) and
// issuing; the gateway control streams that grants are pushed through;
// revocation; and the device event streams that tell clients of it at once.
// It owns the CA and the store; it never touches packets.
//
// Subpackages hold the pieces with one job each: policy (pure evaluation),
// store (persistence), auth (passwords, tokens, TOTP), ca (certificates),
// ipam (address allocation).
package controller

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyhole-net/keyhole/controller/auth"
	"github.com/keyhole-net/keyhole/controller/ca"
	"github.com/keyhole-net/keyhole/controller/cluster"
	"github.com/keyhole-net/keyhole/controller/store"
	"github.com/keyhole-net/keyhole/internal/relay"
	"github.com/keyhole-net/keyhole/internal/trust"
)

// Defaults for Config fields left zero.
const (
	DefaultListen          = ":8443"
	DefaultGrantLifetime   = 10 * time.Minute
	DefaultCertLifetime    = 12 * time.Hour
	DefaultSessionLifetime = 24 * time.Hour
	DefaultEnrolTokenTTL   = time.Hour
	DefaultAckTimeout      = 5 * time.Second
)

// Config configures a controller. Only DataDir is required.
type Config struct {
	// DataDir holds the CA, server certificate, SQLite database and the
	// first admin token. Created with mode 0700.
	DataDir string
	// Listen is the HTTPS API address (default ":8443").
	Listen string
	// ID names this controller: in its server certificate's URI SAN
	// keyhole://controller/<id>, in GET /v1/health and in the cluster
	// (default: the ID in DATA/controller.id, "ctl_…", made on first start).
	ID string
	// CADir, when set, holds the CA (ca.crt, ca.key) instead of DataDir.
	// The controllers of a cluster must share one CA: copy the first
	// controller's ca.crt and ca.key into each one's CADir (as with
	// kubeadm). Each controller still makes its own server certificate in
	// DataDir.
	CADir string
	// Cluster, when set, makes this controller a member of the cluster of
	// controllers that share its database (see ClusterConfig); nil runs it
	// alone.
	Cluster *ClusterConfig
	// Names are the DNS names and IPs the server certificate carries
	// (default: localhost, 127.0.0.1, ::1 and the host name).
	Names []string
	// Store, when set, replaces the default SQLite store in DataDir.
	Store store.Store
	// StoreURL, when Store is nil, names the database: "" for SQLite in
	// DataDir, a file path or "sqlite:PATH" for SQLite elsewhere, or a
	// PostgreSQL URL ("postgres://user@host/db") for a store several
	// controllers share.
	StoreURL string
	// GrantLifetime is how long a grant lives before renewal (default 10m).
	GrantLifetime time.Duration
	// CertLifetime is the lifetime of device and gateway certificates.
	CertLifetime time.Duration
	// SessionLifetime is how long a login lasts.
	SessionLifetime time.Duration
	// AckTimeout bounds the wait for a gateway to apply a pushed grant.
	AckTimeout time.Duration
	// GatewayGrace is how long a gateway whose control stream ended may
	// take to come back before its live grants move to another gateway of
	// the group (default DefaultGatewayGrace).
	GatewayGrace time.Duration
	// MaxWildcardNames caps the names one wildcard domain app serves, each
	// with an address of its own (default DefaultMaxWildcardNames).
	MaxWildcardNames int
	// RelayListen is the UDP address of the embedded TURN relay, which is
	// also the STUN server (default: Listen's host, port 3478; RelayOff
	// runs none, for an external relay such as coturn).
	RelayListen string
	// RelayAddr is the relay address handed to gateways and clients
	// (default: the embedded relay's). Set it for an external relay, or
	// when the embedded one listens on all addresses.
	RelayAddr netip.AddrPort
	// RelaySecret is the relay's TURN REST shared secret (coturn's
	// static-auth-secret); default: DATA/relay.secret, made on first start.
	RelaySecret []byte
	// RelayListenUDP, if set, opens the embedded relay's sockets (a test
	// running the controller inside a network namespace opens them there).
	RelayListenUDP func(network string, laddr *net.UDPAddr) (*net.UDPConn, error)
	// RelayTap, if set, sees every payload the embedded relay forwards
	// (tests prove with it that the relay carries only ciphertext).
	RelayTap func(from, to netip.AddrPort, payload []byte)
	// Password holds argon2id parameters (zero: auth defaults).
	Password auth.Params
	// RequireDeviceApproval makes new devices start unapproved: an
	// unapproved device gets no grant until an admin approves it
	// (PATCH /v1/devices/{id}, keyhole admin device approve). Without it
	// new devices are approved when they enrol.
	RequireDeviceApproval bool
	// TimeCheckInterval is how often live grants of apps under rules with a
	// time window or an MFA age are re-checked, so that access ends when a
	// window closes (default DefaultTimeCheckInterval).
	TimeCheckInterval time.Duration
	// MFAKey seals users' TOTP secrets at rest (auth.SealKeyBytes bytes;
	// default: DATA/mfa.key, made on first start). Controllers sharing a
	// database must share it.
	MFAKey []byte
	// PostureMaxAge is how old a device's posture report may be when it
	// arrives, and how long the latest one stands in for requests that
	// carry none (default DefaultPostureMaxAge).
	PostureMaxAge time.Duration
	// PostureInterval is how often clients collect their posture and
	// report a change (default DefaultPostureInterval).
	PostureInterval time.Duration
	// OIDC, when set, enables single sign-on with an OpenID Connect
	// provider (POST /v1/login/oidc/…).
	OIDC *OIDCConfig
	// Logger receives logs (nil: discard).
	Logger *slog.Logger
	// Now is the clock (nil: time.Now).
	Now func() time.Time
}

// Controller is a running control plane. Create with New, start with Run.
type Controller struct {
	cfg     Config
	id      string // controller ID
	log     *slog.Logger
	now     func() time.Time
	ca      *ca.CA
	store   store.Store
	ownsDB  bool
	hub     *streamHub
	devices *deviceHub
	metrics *metrics
	// names and nameLimit serve the names under wildcard domains.
	names     *wildcardNames
	nameLimit *nameLimiter
	// pingInterval is how often idle streams get a ping (tests shorten it).
	pingInterval time.Duration
	catalog      atomic.Pointer[catalog]
	// catalogMu serialises catalog reloads so a slow reload cannot overwrite
	// a newer one.
	catalogMu sync.Mutex

	firstAdminToken auth.Token // set only on the first start

	mfaSealer *auth.Sealer   // seals TOTP secrets in the store
	logins    *loginThrottle // failed logins per user and source

	oidc *oidcRP // nil without an OIDC provider

	relaySecret []byte
	relay       *relay.Server // embedded relay; nil when off
	relayAddr   netip.AddrPort
	closeOnce   sync.Once

	// cluster is the running cluster membership (nil when alone or not
	// running); peers is what it tells of the other controllers.
	cluster atomic.Pointer[cluster.Cluster]
	peers   *peerView

	mu       sync.Mutex // guards listener
	listener net.Listener

	// failover waits out the grace of gateways whose stream ended.
	failover failover
}

// New opens (or creates, on first start) the controller's CA and store.
func New(ctx context.Context, cfg Config) (*Controller, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("controller: DataDir is required")
	}
	if cfg.Listen == "" {
		cfg.Listen = DefaultListen
	}
	if len(cfg.Names) == 0 {
		cfg.Names = []string{"localhost", "127.0.0.1", "::1"}
		if h, err := os.Hostname(); err == nil && h != "localhost" {
			cfg.Names = append(cfg.Names, h)
		}
	}
	if cfg.GrantLifetime <= 0 {
		cfg.GrantLifetime = DefaultGrantLifetime
	}
	if cfg.CertLifetime <= 0 {
		cfg.CertLifetime = DefaultCertLifetime
	}
	if cfg.SessionLifetime <= 0 {
		cfg.SessionLifetime = DefaultSessionLifetime
	}
	if cfg.AckTimeout <= 0 {
		cfg.AckTimeout = DefaultAckTimeout
	}
	if cfg.MaxWildcardNames <= 0 {
		cfg.MaxWildcardNames = DefaultMaxWildcardNames
	}
	if cfg.TimeCheckInterval <= 0 {
		cfg.TimeCheckInterval = DefaultTimeCheckInterval
	}
	if cfg.PostureMaxAge <= 0 {
		cfg.PostureMaxAge = DefaultPostureMaxAge
	}
	if cfg.PostureInterval <= 0 {
		cfg.PostureInterval = DefaultPostureInterval
	}
	if cfg.Password == (auth.Params{}) {
		cfg.Password = auth.DefaultParams
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("controller: data dir: %w", err)
	}
	c := &Controller{
		cfg: cfg, log: cfg.Logger, now: func() time.Time { return cfg.Now().UTC() },
		names: newWildcardNames(), nameLimit: newNameLimiter(newNameBurst, newNameInterval),
		pingInterval: streamPingInterval,
	}
	var created bool
	var err error
	if c.relaySecret, err = loadRelaySecret(cfg); err != nil {
		return nil, fmt.Errorf("controller: %w", err)
	}
	if c.mfaSealer, err = loadMFASealer(cfg); err != nil {
		return nil, fmt.Errorf("controller: %w", err)
	}
	c.logins = newLoginThrottle(cfg.Store)
	if c.id, err = loadControllerID(cfg); err != nil {
		return nil, fmt.Errorf("controller: %w", err)
	}
	if cfg.CADir != "" {
		if err := os.MkdirAll(cfg.CADir, 0o700); err != nil {
			return nil, fmt.Errorf("controller: CA dir: %w", err)
		}
	}
	if cfg.Cluster != nil && len(cfg.Cluster.SecretKey) == 0 {
		return nil, errors.New("controller: a cluster needs a gossip key (--cluster-key-file); make one with: openssl rand -base64 32")
	}
	c.ca, created, err = ca.LoadOrCreate(ca.Config{Dir: cfg.DataDir, CADir: cfg.CADir, Names: cfg.Names, ID: c.id, Now: c.now})
	if err != nil {
		return nil, fmt.Errorf("controller: %w", err)
	}
	c.store = cfg.Store
	if c.store == nil {
		if c.store, err = openStore(ctx, cfg.StoreURL, cfg.DataDir); err != nil {
			return nil, fmt.Errorf("controller: %w", err)
		}
		c.ownsDB = true
	}
	if cfg.OIDC != nil {
		if c.oidc, err = newOIDCRP(*cfg.OIDC, c.log, c.now); err != nil {
			c.Close()
			return nil, fmt.Errorf("controller: %w", err)
		}
	}
	c.metrics = newMetrics()
	c.hub = newStreamHub(c.log, c.metrics)
	c.peers = newPeerView()
	c.hub.remote = c.remoteGateways
	c.devices = newDeviceHub(c.metrics)
	names, err := c.store.WildcardNames(ctx)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("controller: %w", err)
	}
	c.names.add(names...)
	if err := c.reloadCatalog(ctx); err != nil {
		c.Close()
		return nil, err
	}
	if created {
		if err := c.createFirstAdminToken(ctx); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

func (c *Controller) createFirstAdminToken(ctx context.Context) error {
	tok, err := auth.NewToken(auth.PrefixAdmin)
	if err != nil {
		return err
	}
	if err := c.store.CreateAdminToken(ctx, store.AdminToken{
		ID: auth.NewID("tok"), Hash: auth.HashToken(tok.Reveal()), Scope: "admin", CreatedAt: c.now(),
	}); err != nil {
		return fmt.Errorf("controller: first admin token: %w", err)
	}
	if err := trust.WriteSecret(filepath.Join(c.cfg.DataDir, "admin.token"), []byte(tok.Reveal()+"\n")); err != nil {
		return fmt.Errorf("controller: first admin token: %w", err)
	}
	c.firstAdminToken = tok
	return nil
}

// FirstAdminToken returns the admin token created on first start, or "" on
// later starts (it is in DataDir/admin.token).
func (c *Controller) FirstAdminToken() auth.Token { return c.firstAdminToken }

// Reload re-reads apps and policy from the store. Only tools that write the
// store directly (bulk imports, benchmarks) need it; the API reloads itself.
func (c *Controller) Reload(ctx context.Context) error { return c.reloadCatalog(ctx) }

// Fingerprint returns the CA fingerprint clients and gateways pin.
func (c *Controller) Fingerprint() string { return c.ca.Fingerprint() }

// Store returns the controller's store (for tools and tests in-process).
func (c *Controller) Store() store.Store { return c.store }

// Addr returns the bound API address once Run has started listening, or nil.
func (c *Controller) Addr() net.Addr {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.listener == nil {
		return nil
	}
	return c.listener.Addr()
}

// Listen binds the API address; Run calls it if it was not called before.
// Calling it first lets a caller learn the port before Run.
func (c *Controller) Listen() (net.Addr, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.listener != nil {
		return c.listener.Addr(), nil
	}
	l, err := net.Listen("tcp", c.cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("controller: listen: %w", err)
	}
	if err := c.startRelay(l.Addr()); err != nil {
		l.Close()
		return nil, fmt.Errorf("controller: %w", err)
	}
	c.listener = l
	return l.Addr(), nil
}

// Run serves the API until ctx is done, then shuts down: gateway and device
// streams are closed and in-flight requests get a moment to finish.
func (c *Controller) Run(ctx context.Context) error {
	if _, err := c.Listen(); err != nil {
		return err
	}
	c.mu.Lock()
	l := c.listener
	c.mu.Unlock()
	srv := &http.Server{
		Handler:           logRequests(c.log, c.routes()),
		TLSConfig:         c.ca.ServerTLS(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(c.log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(tls.NewListener(l, srv.TLSConfig)) }()
	relayDone := make(chan struct{})
	relayCtx, stopRelay := context.WithCancel(ctx)
	defer func() { stopRelay(); <-relayDone }()
	var loops sync.WaitGroup
	loopCtx, stopLoops := context.WithCancel(ctx)
	defer func() { stopLoops(); loops.Wait() }()
	loops.Go(func() { c.watchTime(loopCtx) })
	loops.Go(func() { c.pruneLoginFailures(loopCtx) })
	go func() {
		defer close(relayDone)
		if c.relay != nil {
			if err := c.relay.Serve(relayCtx); err != nil {
				c.log.Error("relay stopped", "err", err)
			}
		}
	}()
	stopCluster := func() {}
	if c.cfg.Cluster != nil {
		var err error
		if stopCluster, err = c.startCluster(ctx); err != nil {
			srv.Close()
			<-errc
			return err
		}
	}
	c.failover.start(ctx)
	defer c.failover.wait()
	c.watchGatewaysAtStart(ctx)
	c.log.Info("controller listening", "addr", l.Addr().String(), "relay", c.relayAddr, "ca_fingerprint", c.Fingerprint(), "controller_id", c.id)
	select {
	case err := <-errc:
		stopCluster()
		return fmt.Errorf("controller: serve: %w", err)
	case <-ctx.Done():
	}
	stopCluster()
	c.hub.closeAll()
	c.devices.closeAll()
	shutCtx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutCtx); err != nil {
		srv.Close()
	}
	<-errc
	return nil
}

// Close releases the store if the controller opened it. Safe to call twice.
func (c *Controller) Close() error {
	var err error
	c.closeOnce.Do(func() {
		if c.relay != nil {
			c.relay.Close()
		}
		if c.oidc != nil {
			c.oidc.close()
		}
		if c.ownsDB && c.store != nil {
			err = c.store.Close()
		}
	})
	return err
}

func (c *Controller) routes() http.Handler {
	mux := http.NewServeMux()
	h := func(pattern string, fn handler) { mux.Handle(pattern, c.wrap(fn)) }

	h("GET /v1/health", c.handleHealth)
	// Metrics reveal who uses what and how much: admin token required
	// (Prometheus: authorization.credentials in the scrape config).
	h("GET /metrics", c.admin(func(w http.ResponseWriter, r *http.Request, _ adminCaller) error {
		c.metrics.handler().ServeHTTP(w, r)
		return nil
	}))

	// Admin API (admin token).
	h("GET /v1/users", c.admin(c.handleUserList))
	h("POST /v1/users", c.admin(c.handleUserAdd))
	h("PATCH /v1/users/{name}", c.admin(c.handleUserUpdate))
	h("DELETE /v1/users/{name}", c.admin(c.handleUserDelete))
	h("DELETE /v1/users/{name}/mfa", c.admin(c.handleUserMFAReset))
	h("GET /v1/groups", c.admin(c.handleGroupList))
	h("POST /v1/groups", c.admin(c.handleGroupAdd))
	h("GET /v1/apps", c.admin(c.handleAppList))
	h("POST /v1/apps", c.admin(c.handleAppAdd))
	h("DELETE /v1/apps/{name}", c.admin(c.handleAppDelete))
	h("GET /v1/gateway-groups", c.admin(c.handleGatewayGroupList))
	h("POST /v1/gateway-groups", c.admin(c.handleGatewayGroupAdd))
	h("POST /v1/gateway-tokens", c.admin(c.handleGatewayTokenAdd))
	h("GET /v1/gateways", c.admin(c.handleGatewayList))
	h("PATCH /v1/gateways/{id}", c.admin(c.handleGatewayUpdate))
	h("GET /v1/policies", c.admin(c.handlePolicyList))
	h("POST /v1/policies", c.admin(c.handlePolicyAdd))
	h("DELETE /v1/policies/{id}", c.admin(c.handlePolicyDelete))
	h("GET /v1/why", c.admin(c.handleWhy))
	h("GET /v1/posture", c.admin(c.handlePostureList))
	h("POST /v1/posture", c.admin(c.handlePostureAdd))
	h("PUT /v1/posture/{name}", c.admin(c.handlePostureAdd))
	h("DELETE /v1/posture/{name}", c.admin(c.handlePostureDelete))
	h("GET /v1/devices", c.admin(c.handleDeviceList))
	h("PATCH /v1/devices/{id}", c.admin(c.handleDeviceUpdate))
	h("DELETE /v1/devices/{id}", c.admin(c.handleDeviceDelete))
	h("GET /v1/grants", c.admin(c.handleGrantList))
	h("GET /v1/audit", c.admin(c.handleAuditList))
	h("GET /v1/flows", c.admin(c.handleFlowList))

	// Clients.
	h("POST /v1/login", c.handleLogin)
	c.oidcRoutes(h)
	h("POST /v1/logout", c.device(c.handleLogout))
	h("POST /v1/mfa/enrol", c.device(c.handleMFAEnrol))
	h("POST /v1/mfa/confirm", c.device(c.handleMFAConfirm))
	h("POST /v1/device/certificate", c.device(c.handleDeviceCert))
	h("POST /v1/device/rotate", c.device(c.handleDeviceRotate))
	h("GET /v1/device/domains", c.device(c.handleDeviceDomains))
	h("GET /v1/device/events", c.device(c.handleDeviceEvents))
	h("POST /v1/device/posture", c.device(c.handleDevicePosture))
	h("GET /v1/device/posture/checks", c.device(c.handlePostureChecks))
	h("POST /v1/grants", c.device(c.handleGrantRequest))
	h("POST /v1/grants/{id}/renew", c.device(c.handleGrantRenew))
	h("POST /v1/exports", c.device(c.handleExportRequest))
	// DELETE /v1/grants/{id}: the owning device or an admin.
	h("DELETE /v1/grants/{id}", c.handleGrantRevoke)

	// Gateways.
	h("POST /v1/gateway/enrol", c.handleEnrol)
	h("POST /v1/gateway/certificate", c.gateway(c.handleGatewayCert))
	h("POST /v1/gateway/hello", c.gateway(c.handleGatewayHello))
	h("GET /v1/gateway/stream", c.gateway(c.handleGatewayStream))
	h("POST /v1/gateway/ack", c.streamGateway(c.handleGatewayAck))
	h("POST /v1/gateway/flows", c.gateway(c.handleGatewayFlows))
	h("POST /v1/gateway/peers", c.gateway(c.handleGatewayPeers))

	// Everything else: a JSON 404/405 rather than net/http's plain text.
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pattern := mux.Handler(r); pattern == "" {
			c.writeError(w, r, notFound("no API endpoint %s %s; see docs/api.md", r.Method, r.URL.Path))
			return
		}
		mux.ServeHTTP(w, r)
	})
}
