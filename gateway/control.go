package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/key"
	"github.com/keyhole-net/keyhole/internal/nat"
	"github.com/keyhole-net/keyhole/internal/trust"
	"github.com/keyhole-net/keyhole/internal/wg"
)

const (
	// maxEventBytes caps one stream line; a sync of 20,000 grants fits.
	maxEventBytes = 32 << 20
	// streamIdle is how long a stream may stay silent (the controller pings
	// every 15s) before the gateway treats it as dead and reconnects.
	streamIdle = 45 * time.Second
)

// controlLoop holds the control stream, reconnecting with exponential
// backoff and jitter until ctx ends.
func (g *Gateway) controlLoop(ctx context.Context) {
	backoff := 250 * time.Millisecond
	for ctx.Err() == nil {
		start := time.Now()
		err := g.runStream(ctx)
		g.setConnected(false)
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > 30*time.Second {
			backoff = 250 * time.Millisecond
		}
		// Full jitter keeps a fleet of gateways from reconnecting in step.
		wait := backoff/2 + rand.N(backoff/2+1)
		// Any controller of a cluster serves the gateway: try the next.
		url := g.api.Failover()
		g.log.Warn("control stream down; reconnecting", "err", err, "controller", url, "retry_in", wait.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		backoff = min(backoff*2, g.cfg.MaxBackoff)
	}
}

func (g *Gateway) setConnected(v bool) {
	g.mu.Lock()
	g.connected = v
	g.mu.Unlock()
	if v {
		g.metrics.streamUp.Set(1)
	} else {
		g.metrics.streamUp.Set(0)
	}
}

// Connected reports whether the control stream is up.
func (g *Gateway) Connected() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.connected
}

func (g *Gateway) endpoints() []netip.AddrPort {
	if len(g.cfg.Endpoints) > 0 {
		return g.cfg.Endpoints
	}
	port := g.net.Port()
	hosts := g.cfg.HostAddrs
	if stun := g.stunServer(); len(hosts) == 0 && stun.Addr().IsLoopback() {
		// Everything runs on this machine (a demo or a test): other
		// addresses would only leak traffic off loopback.
		hosts = []netip.Addr{stun.Addr()}
	}
	if len(hosts) > 0 {
		eps := make([]netip.AddrPort, 0, len(hosts))
		for _, a := range hosts {
			eps = append(eps, netip.AddrPortFrom(a, port))
		}
		return eps
	}
	eps := []netip.AddrPort{netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)}
	for _, ip := range nat.InterfaceAddrs() {
		if len(eps) == 16 {
			break
		}
		eps = append(eps, netip.AddrPortFrom(ip, port))
	}
	return eps
}

// runStream says hello, opens the stream and applies events until it ends.
func (g *Gateway) runStream(ctx context.Context) error {
	if err := g.hello(ctx); err != nil {
		return fmt.Errorf("hello: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	var (
		acks    *acker
		ackDone = make(chan struct{})
	)
	defer func() {
		cancel()
		if acks != nil {
			<-ackDone
		}
	}()
	opened := func(resp *http.Response) {
		streamID := resp.Header.Get(api.HeaderStreamID)
		g.setConnected(true)
		g.log.Info("control stream up", "controller", g.api.URL(), "stream", streamID)
		acks = newAcker(g, streamID)
		go func() { defer close(ackDone); acks.run(ctx) }()
	}
	return g.api.ReadLines(ctx, "/v1/gateway/stream", streamIdle, maxEventBytes, opened, func(line []byte) error {
		var ev api.StreamEvent
		if err := json.Unmarshal(line, &ev); err != nil {
			// A line we cannot read means we may miss a revocation: drop
			// the stream and resync rather than carry on.
			return fmt.Errorf("malformed stream event: %w", err)
		}
		if err := g.apply(ev); err != nil {
			return fmt.Errorf("apply event %d: %w", ev.Seq, err)
		}
		if ev.Type != api.EventPing {
			acks.ack(ev.Seq)
		}
		return nil
	})
}

// apply changes the grant table and WireGuard peers for one event.
func (g *Gateway) apply(ev api.StreamEvent) error {
	changes, err := applyEvent(g.table, g.log, ev)
	if err != nil {
		return err
	}
	g.metrics.grants.Set(float64(g.table.Len()))
	if g.runCtx != nil && ev.Type != api.EventPing {
		// Before the ack: the client's first packet finds its DNAT.
		g.syncKernel(g.runCtx, false)
	}
	if err := g.applyPeers(changes); err != nil {
		return err
	}
	if ev.Type == api.EventGrant && g.runCtx != nil {
		g.onGrants(g.runCtx, &g.bg, ev.Grants)
	}
	return nil
}

// applyEvent applies one stream event to table and returns the WireGuard
// peer changes it implies. A malformed grant rejects the whole event before
// anything changes.
func applyEvent(table *GrantTable, log *slog.Logger, ev api.StreamEvent) ([]PeerChange, error) {
	switch ev.Type {
	case api.EventPing:
		return nil, nil
	case api.EventSync, api.EventGrant:
		for _, gr := range ev.Grants {
			if err := checkGrant(gr); err != nil {
				return nil, err
			}
		}
	}
	var changes []PeerChange
	switch ev.Type {
	case api.EventSync:
		removed, ch := table.Replace(ev.Grants)
		changes = ch
		for _, gr := range removed {
			log.Info("grant dropped by sync", "grant_id", gr.ID, "app", gr.App)
		}
		log.Info("grants synced", "grants", len(ev.Grants))
	case api.EventGrant:
		for _, gr := range ev.Grants {
			changes = append(changes, table.Upsert(gr)...)
			log.Info("grant added", "grant_id", gr.ID, "user", gr.User, "device_id", gr.DeviceID, "app", gr.App, "client_ip", gr.ClientIP, "not_after", gr.NotAfter)
		}
	case api.EventRevoke:
		removed, ch := table.Remove(ev.GrantIDs...)
		changes = ch
		for _, gr := range removed {
			log.Info("grant revoked", "grant_id", gr.ID, "app", gr.App, "reason", ev.Reason)
		}
	default:
		// Unknown events from a newer controller are ignored, not fatal.
		log.Debug("ignoring unknown stream event", "type", ev.Type)
	}
	return changes, nil
}

// checkGrant refuses grants a gateway cannot enforce safely.
func checkGrant(gr api.GatewayGrant) error {
	switch {
	case gr.ID == "":
		return errors.New("grant without id")
	case !gr.ClientIP.IsValid():
		return fmt.Errorf("grant %s: no client address", gr.ID)
	case gr.ClientWGKey.IsZero():
		return fmt.Errorf("grant %s: no client key", gr.ID)
	case len(gr.Targets) == 0 || len(gr.Ports) == 0:
		return fmt.Errorf("grant %s: no targets or ports", gr.ID)
	case gr.NotAfter.IsZero():
		return fmt.Errorf("grant %s: no expiry", gr.ID)
	}
	for _, t := range gr.Targets {
		if !t.Prefix.IsValid() || t.Prefix.Bits() == 0 {
			return fmt.Errorf("grant %s: bad target %v", gr.ID, t.Prefix)
		}
		if t.Host != "" && (len(t.Host) > 253 || strings.ContainsAny(t.Host, " /:\\")) {
			return fmt.Errorf("grant %s: bad host %q", gr.ID, t.Host)
		}
	}
	return nil
}

// peerGrace is how long a client's WireGuard peer outlives its last grant.
// It lets the FIN/RST of the connections just closed reach the client, and
// it must outlast the client's own idle-peer time (client.peerIdle, 30 s):
// the client keeps its session that long to reuse it for the next grant,
// and a gateway that had forgotten the peer would drop that traffic until
// WireGuard re-handshakes. The peer grants nothing by itself; every new
// connection is still checked against the table.
const peerGrace = 60 * time.Second

func (g *Gateway) applyPeers(changes []PeerChange) error {
	for _, ch := range changes {
		if !ch.Add {
			g.mu.Lock()
			g.peerRemovals[ch.Key] = g.now().Add(peerGrace)
			g.mu.Unlock()
			continue
		}
		g.mu.Lock()
		delete(g.peerRemovals, ch.Key)
		g.mu.Unlock()
		if g.lazy != nil {
			if err := g.lazy.update(ch.Key, ch.ClientIP); err != nil {
				return fmt.Errorf("update peer: %w", err)
			}
			continue
		}
		err := g.net.UpsertPeer(wg.Peer{
			PublicKey:  ch.Key,
			AllowedIPs: []netip.Prefix{netip.PrefixFrom(ch.ClientIP, ch.ClientIP.BitLen())},
		})
		if err != nil {
			return fmt.Errorf("add peer: %w", err)
		}
	}
	if g.lazy == nil {
		g.metrics.peers.Set(float64(g.table.Peers()))
	}
	return nil
}

// reapPeers removes peers whose grace period has passed and that no grant
// needs again.
func (g *Gateway) reapPeers() {
	now := g.now()
	var due []key.WGPublic
	g.mu.Lock()
	for k, at := range g.peerRemovals {
		if !now.Before(at) {
			due = append(due, k)
			delete(g.peerRemovals, k)
		}
	}
	g.mu.Unlock()
	for _, k := range due {
		if g.lazy != nil {
			g.reapLazyPeer(k)
			continue
		}
		if g.table.HasPeer(k) {
			continue
		}
		if err := g.net.RemovePeer(k); err != nil {
			g.log.Warn("removing peer", "err", err)
		}
	}
}

// acker sends cumulative acks, coalescing: while one ack is in flight, later
// sequence numbers wait and go out together.
type acker struct {
	g      *Gateway
	stream string
	latest atomic.Uint64
	wake   chan struct{}
}

func newAcker(g *Gateway, stream string) *acker {
	return &acker{g: g, stream: stream, wake: make(chan struct{}, 1)}
}

func (a *acker) ack(seq uint64) {
	a.latest.Store(seq)
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

func (a *acker) run(ctx context.Context) {
	var sent uint64
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.wake:
		}
		seq := a.latest.Load()
		if seq <= sent {
			continue
		}
		if err := a.g.api.Do(ctx, "POST", "/v1/gateway/ack", api.GatewayAck{Stream: a.stream, Seq: seq}, nil); err != nil {
			if ctx.Err() == nil {
				a.g.log.Warn("ack failed", "seq", seq, "err", err)
			}
			continue
		}
		sent = seq
	}
}

// expiryLoop closes grants at their NotAfter on the gateway's own clock.
func (g *Gateway) expiryLoop(ctx context.Context) {
	// A short tick bounds how late an expiry can be, even when a renewal
	// moved the earliest NotAfter; the check itself is cheap.
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		g.reapPeers()
		next := g.table.NextExpiry()
		if next.IsZero() || g.now().Before(next) {
			continue
		}
		removed, changes := g.table.Expire()
		for _, gr := range removed {
			g.log.Info("grant expired; connections closed", "grant_id", gr.ID, "app", gr.App, "not_after", gr.NotAfter)
		}
		g.metrics.grants.Set(float64(g.table.Len()))
		g.syncKernel(ctx, false)
		if err := g.applyPeers(changes); err != nil {
			g.log.Error("removing expired peers", "err", err)
		}
	}
}

// certLoop renews the gateway certificate after half its lifetime.
func (g *Gateway) certLoop(ctx context.Context) {
	for {
		cert := g.creds.Cert
		half := cert.NotBefore.Add(cert.NotAfter.Sub(cert.NotBefore) / 2)
		wait := max(time.Until(half), time.Second)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		if err := g.renewCert(ctx); err != nil {
			g.log.Warn("certificate renewal failed; retrying", "err", err, "not_after", cert.NotAfter)
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Minute):
			}
		}
	}
}

func (g *Gateway) renewCert(ctx context.Context) error {
	csr, err := trust.NewCSR(g.creds.Key, g.cfg.Name)
	if err != nil {
		return err
	}
	var resp api.CertificateResponse
	if err := g.api.Do(ctx, "POST", "/v1/gateway/certificate", api.CertificateRenewal{CSR: csr}, &resp); err != nil {
		return err
	}
	cert, err := trust.ParseCertPEM(resp.Certificate)
	if err != nil {
		return err
	}
	creds := &trust.Credentials{Key: g.creds.Key, Cert: cert, CA: g.creds.CA}
	if err := creds.Save(g.cfg.DataDir); err != nil {
		return err
	}
	g.creds = creds
	g.api.SetCredentials(creds)
	g.log.Info("certificate renewed", "not_after", cert.NotAfter)
	return nil
}
