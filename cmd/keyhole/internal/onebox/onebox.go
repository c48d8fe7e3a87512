// Package onebox runs a whole Keyhole system in one process on loopback: a
// controller (embedded SQLite), gateways, logged-in clients and sample
// apps. keyhole demo, keyhole bench and the integration tests use it, so all
// three exercise the real components the same way. Nothing here is a mock.
package onebox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/keyhole-net/keyhole/client"
	"github.com/keyhole-net/keyhole/client/posture"
	"github.com/keyhole-net/keyhole/controller"
	"github.com/keyhole-net/keyhole/controller/auth"
	"github.com/keyhole-net/keyhole/gateway"
	"github.com/keyhole-net/keyhole/internal/apiclient"
)

// Config configures a Box.
type Config struct {
	// Dir holds every component's data directory.
	Dir string
	// Listen is the controller's API address (default 127.0.0.1:0).
	Listen string
	// GrantLifetime overrides the controller default (10m).
	GrantLifetime time.Duration
	// Logger for all components (nil: discard).
	Logger *slog.Logger
	// FastPasswords uses cheap argon2id parameters (tests and benchmarks
	// only; never in a real controller).
	FastPasswords bool
	// Now is the controller's clock (nil: time.Now); tests move it to
	// step TOTP codes and lockouts without sleeping.
	Now func() time.Time
	// PostureInterval overrides how often clients collect their posture
	// (the controller default, 1m).
	PostureInterval time.Duration
	// GatewayGrace overrides how long a gateway that lost its stream may
	// take to come back before its grants move (the controller default).
	GatewayGrace time.Duration
	// StoreURL is the controller's database (controller.Config.StoreURL;
	// "": SQLite in Dir).
	StoreURL string
}

// Box is a running system. Close stops everything it started.
type Box struct {
	cfg         Config
	Controller  *controller.Controller
	URL         string
	Fingerprint string
	AdminToken  string
	Admin       *apiclient.Admin

	ctx    context.Context
	cancel context.CancelFunc

	ctrlCfg controller.Config

	mu      sync.Mutex // guards runs, ctrlRun, Controller swaps
	runs    []*run
	ctrlRun *run
}

// run is one component goroutine the box owns.
type run struct {
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

// Start starts a controller in cfg.Dir/controller.
func Start(ctx context.Context, cfg Config) (*Box, error) {
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	ccfg := controller.Config{
		DataDir: filepath.Join(cfg.Dir, "controller"),
		Listen:  cfg.Listen,
		Names:   []string{"localhost", "127.0.0.1"},
		// Any free port: on one machine nobody needs the relay at the
		// well-known 3478, and tests run several boxes at once.
		RelayListen:     "127.0.0.1:0",
		GrantLifetime:   cfg.GrantLifetime,
		PostureInterval: cfg.PostureInterval,
		GatewayGrace:    cfg.GatewayGrace,
		StoreURL:        cfg.StoreURL,
		Logger:          cfg.Logger.With("role", "controller"),
		Now:             cfg.Now,
	}
	if cfg.FastPasswords {
		ccfg.Password = auth.Params{MemoryKiB: 64, Iterations: 1, Parallelism: 1}
	}
	c, err := controller.New(ctx, ccfg)
	if err != nil {
		return nil, err
	}
	addr, err := c.Listen()
	if err != nil {
		c.Close()
		return nil, err
	}
	b := &Box{cfg: cfg, Controller: c, Fingerprint: c.Fingerprint()}
	b.ctx, b.cancel = context.WithCancel(context.WithoutCancel(ctx))
	b.URL = "https://" + addr.String()
	tok, err := os.ReadFile(filepath.Join(ccfg.DataDir, "admin.token"))
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("onebox: admin token: %w", err)
	}
	b.AdminToken = strings.TrimSpace(string(tok))
	b.ctrlRun = b.start(c.Run)
	// A restart must come back on the same address.
	b.ctrlCfg = ccfg
	b.ctrlCfg.Listen = addr.String()
	if b.Admin, err = apiclient.NewAdmin(b.URL, b.Fingerprint, b.AdminToken); err != nil {
		b.Close()
		return nil, err
	}
	if err := waitFor(ctx, 5*time.Second, func() error {
		_, err := b.Admin.Client().ConnectionState(ctx)
		return err
	}); err != nil {
		b.Close()
		return nil, fmt.Errorf("onebox: controller did not come up: %w", err)
	}
	return b, nil
}

// start runs fn in a goroutine owned by the box.
func (b *Box) start(fn func(context.Context) error) *run {
	ctx, cancel := context.WithCancel(b.ctx)
	r := &run{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		r.err = fn(ctx)
	}()
	b.mu.Lock()
	b.runs = append(b.runs, r)
	b.mu.Unlock()
	return r
}

// Stop stops a component and waits for it.
func (r *run) Stop() error {
	r.cancel()
	<-r.done
	return r.err
}

// Gateway is a running gateway.
type Gateway struct {
	*gateway.Gateway
	run *run
	Dir string
}

// Stop stops the gateway and waits for it.
func (g *Gateway) Stop() error { return g.run.Stop() }

// GatewayOptions configures AddGateway.
type GatewayOptions struct {
	Group string
	Name  string
	// Dir re-uses an enrolled gateway's data directory (restart); empty
	// enrols a new gateway in a fresh directory.
	Dir   string
	Hosts map[string]netip.Addr
	// MaxBackoff for reconnects (tests use a short one).
	MaxBackoff time.Duration
	// PeerIdle is gateway.Config.PeerIdle (tests use a short one).
	PeerIdle time.Duration
}

// AddGateway enrols (unless opts.Dir is already enrolled) and starts a
// gateway, and waits until its control stream is up.
func (b *Box) AddGateway(ctx context.Context, opts GatewayOptions) (*Gateway, error) {
	cfg := gateway.Config{
		ControllerURL: b.URL, CAFingerprint: b.Fingerprint, DataDir: opts.Dir, Name: opts.Name,
		Hosts: opts.Hosts, MaxBackoff: opts.MaxBackoff, FlowInterval: 200 * time.Millisecond, PeerIdle: opts.PeerIdle,
		Logger: b.cfg.Logger.With("role", "gateway", "name", opts.Name),
	}
	if cfg.DataDir == "" {
		cfg.DataDir = filepath.Join(b.cfg.Dir, "gateway-"+opts.Name)
		tok, err := b.Admin.GatewayToken(ctx, opts.Group, time.Hour)
		if err != nil {
			return nil, fmt.Errorf("onebox: gateway token: %w", err)
		}
		cfg.Token = tok.Token
	}
	gw, err := gateway.New(cfg)
	if err != nil {
		return nil, err
	}
	r := b.start(gw.Run)
	g := &Gateway{Gateway: gw, run: r, Dir: cfg.DataDir}
	select {
	case <-gw.Ready():
	case <-r.done:
		return nil, fmt.Errorf("onebox: gateway stopped: %w", r.err)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if err := waitFor(ctx, 10*time.Second, func() error {
		if !gw.Connected() {
			return errors.New("control stream not up")
		}
		return nil
	}); err != nil {
		r.Stop()
		return nil, fmt.Errorf("onebox: gateway: %w", err)
	}
	return g, nil
}

// Client is a running, logged-in client.
type Client struct {
	*client.Client
	run *run
	Dir string
}

// Stop stops the client and waits for it.
func (c *Client) Stop() error { return c.run.Stop() }

// ClientOptions configures Login.
type ClientOptions struct {
	User, Password string
	// Dir re-uses a logged-in data directory without logging in again.
	Dir     string
	NoRenew bool
	// Posture configures the client's posture collection.
	Posture posture.Config
	// Keepalive is client.Config.Keepalive (tests use a short one).
	Keepalive time.Duration
}

// Login logs a user in (unless opts.Dir holds a login) and starts a client.
func (b *Box) Login(ctx context.Context, opts ClientOptions) (*Client, error) {
	dir := opts.Dir
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp(b.cfg.Dir, "client-"+opts.User+"-"); err != nil {
			return nil, err
		}
		if _, err := client.Login(ctx, client.LoginConfig{
			ControllerURL: b.URL, CAFingerprint: b.Fingerprint, User: opts.User, Password: opts.Password,
			DeviceName: "onebox", DataDir: dir,
		}); err != nil {
			return nil, err
		}
	}
	c, err := client.New(client.Config{DataDir: dir, NoRenew: opts.NoRenew, Posture: opts.Posture, Keepalive: opts.Keepalive, Logger: b.cfg.Logger.With("role", "client", "user", opts.User)})
	if err != nil {
		return nil, err
	}
	return &Client{Client: c, run: b.start(c.Run), Dir: dir}, nil
}

// Close stops every component, newest first, and closes the controller.
func (b *Box) Close() {
	b.mu.Lock()
	runs := b.runs
	b.runs = nil
	b.mu.Unlock()
	for i := len(runs) - 1; i >= 0; i-- {
		runs[i].Stop()
	}
	b.cancel()
	b.mu.Lock()
	c := b.Controller
	b.mu.Unlock()
	c.Close()
}

// StopController stops the controller (for outage tests): its API goes
// away and its store is closed, as when the process dies.
func (b *Box) StopController() error {
	b.mu.Lock()
	r := b.ctrlRun
	b.mu.Unlock()
	err := r.Stop()
	b.Controller.Close()
	return err
}

// RestartController starts a new controller on the same data directory and
// address after StopController.
func (b *Box) RestartController(ctx context.Context) error {
	c, err := controller.New(ctx, b.ctrlCfg)
	if err != nil {
		return err
	}
	if _, err := c.Listen(); err != nil {
		c.Close()
		return err
	}
	b.mu.Lock()
	b.Controller = c
	b.mu.Unlock()
	r := b.start(c.Run)
	b.mu.Lock()
	b.ctrlRun = r
	b.mu.Unlock()
	return nil
}

// waitFor polls fn until it succeeds or timeout passes.
func waitFor(ctx context.Context, timeout time.Duration, fn func() error) error {
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if err = fn(); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return err
}

// Loopback is 127.0.0.1, where sample apps listen.
var Loopback = netip.MustParseAddr("127.0.0.1")

// ListenTCP listens on a free loopback port.
func ListenTCP() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }
