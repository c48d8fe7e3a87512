package controller

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/keyhole-net/keyhole/controller/auth"
	"github.com/keyhole-net/keyhole/controller/cluster"
	"github.com/keyhole-net/keyhole/controller/store"
	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/trust"
)

// The controller's side of a cluster of controllers sharing one database:
// its identity, which gateways the other controllers hold, grant pushes
// and revocations relayed to them, catalog changes, and the periodic
// re-sync of gateway streams against the store that heals whatever gossip
// missed. The database is the truth; gossip only makes things happen now.

// Defaults for ClusterConfig fields left zero.
const (
	DefaultResyncInterval   = 3 * time.Second
	DefaultAnnounceInterval = 10 * time.Second
	DefaultCatalogInterval  = 10 * time.Second
)

// Kinds of the cluster events controllers exchange (besides
// cluster.KindRevoke). Bodies carry IDs only: anyone holding the gossip
// key can read them.
const (
	kindGatewayUp      = "gateway.up"      // a gateway opened a stream here
	kindGatewayHere    = "gateway.here"    // periodic: the gateways held here
	kindGatewayDown    = "gateway.down"    // a gateway's stream here closed
	kindGrantPush      = "grant.push"      // push a grant to a gateway held elsewhere
	kindGrantAck       = "grant.ack"       // the gateway took (or did not) a relayed push
	kindCatalogChanged = "catalog.changed" // apps, policy or posture profiles changed
	kindGatewayDrain   = "gateway.drain"   // an admin drained or undrained a gateway
)

// gatewayIDsPerEvent keeps gateway lists within cluster.MaxBodyBytes.
const gatewayIDsPerEvent = 24

// ClusterConfig joins a controller to the other controllers that share its
// database (Config.Store or StoreURL must name the same PostgreSQL): any
// of them then serves any client, admin or gateway.
type ClusterConfig struct {
	// BindAddr is the IP the gossip port (UDP and TCP) listens on
	// (default "0.0.0.0").
	BindAddr string
	// BindPort is the gossip port: 0 means cluster.DefaultPort (7946),
	// cluster.AnyPort a free one.
	BindPort int
	// AdvertiseAddr and AdvertisePort are where the other controllers reach
	// this one (default: the bound address, or a private address of the
	// host when bound to all).
	AdvertiseAddr string
	AdvertisePort int
	// Join lists controllers to join, "host:port" or "id/host:port".
	Join []string
	// SecretKey is the gossip key every controller of the cluster shares
	// (16, 24 or 32 bytes); required.
	SecretKey cluster.SecretKey
	// Timing tunes the gossip protocol (zero: LAN defaults).
	Timing cluster.Timing
	// ResyncInterval is how often each gateway stream held here is checked
	// against the store and re-synced when they differ: the bound on how
	// long a grant push or revocation that gossip lost takes to heal
	// (default DefaultResyncInterval).
	ResyncInterval time.Duration
	// AnnounceInterval is how often this controller re-announces the
	// gateways it holds; an announcement not renewed for three intervals
	// is forgotten (default DefaultAnnounceInterval).
	AnnounceInterval time.Duration
	// CatalogInterval is how often apps, policy and posture profiles are
	// re-read from the store in case a change notice was lost (default
	// DefaultCatalogInterval).
	CatalogInterval time.Duration
}

// ParseClusterKey reads a gossip key as a file holds it: 16, 24 or 32
// bytes, in standard base64 (as openssl rand -base64 32 prints it; tried
// first) or raw. Every controller parses the same file the same way.
func ParseClusterKey(b []byte) (cluster.SecretKey, error) {
	s := strings.TrimSpace(string(b))
	if k, err := base64.StdEncoding.DecodeString(s); err == nil && validKeyLen(len(k)) {
		return cluster.SecretKey(k), nil
	}
	if validKeyLen(len(s)) {
		return cluster.SecretKey(s), nil
	}
	return nil, errors.New("cluster key: want 16, 24 or 32 bytes, raw or base64 (openssl rand -base64 32)")
}

func validKeyLen(n int) bool { return n == 16 || n == 24 || n == 32 }

// loadControllerID returns cfg.ID, or the ID in DATA/controller.id, first
// writing a new one there on first start.
func loadControllerID(cfg Config) (string, error) {
	id := cfg.ID
	if id == "" {
		path := filepath.Join(cfg.DataDir, "controller.id")
		b, err := os.ReadFile(path)
		switch {
		case err == nil:
			id = strings.TrimSpace(string(b))
		case errors.Is(err, os.ErrNotExist):
			id = auth.NewID("ctl")
			if err := trust.WriteSecret(path, []byte(id+"\n")); err != nil {
				return "", fmt.Errorf("controller ID: %w", err)
			}
		default:
			return "", fmt.Errorf("controller ID: %w", err)
		}
	}
	if !cluster.ValidNodeName(id) {
		return "", fmt.Errorf("controller ID %q: want 1-64 letters, digits, '.', '_' or '-'", id)
	}
	return id, nil
}

// ID returns the controller's ID (keyhole://controller/<id>).
func (c *Controller) ID() string { return c.id }

// ClusterAddr returns the bound gossip address while Run runs a cluster,
// or the zero value.
func (c *Controller) ClusterAddr() string {
	cl := c.cluster.Load()
	if cl == nil {
		return ""
	}
	return cl.Addr().String()
}

// peerView is what this controller knows of the others: the gateways they
// hold, and relayed pushes waiting for their acks.
type peerView struct {
	mu       sync.Mutex // guards gateways, acks
	gateways map[api.GatewayID]remoteGateway
	acks     map[string]chan pushAck
}

// remoteGateway is a gateway whose stream another controller holds.
type remoteGateway struct {
	controller string
	info       store.Gateway
	seen       time.Time
	// candidates are the gateway's own, as its controller last acked a
	// relayed push with them.
	candidates []api.Candidate
}

func newPeerView() *peerView {
	return &peerView{gateways: make(map[api.GatewayID]remoteGateway), acks: make(map[string]chan pushAck)}
}

// remoteGateways returns the gateways of group held by other controllers;
// the stream hub's picker adds them to its own.
func (c *Controller) remoteGateways(group string) []store.Gateway {
	if c.cluster.Load() == nil {
		return nil
	}
	c.peers.mu.Lock()
	defer c.peers.mu.Unlock()
	if len(c.peers.gateways) == 0 {
		return nil
	}
	var out []store.Gateway
	for _, r := range c.peers.gateways {
		if r.info.Group == group {
			out = append(out, r.info)
		}
	}
	return out
}

// gatewayOwner returns the controller holding gw's stream, if another does.
func (c *Controller) gatewayOwner(gw api.GatewayID) (string, bool) {
	c.peers.mu.Lock()
	defer c.peers.mu.Unlock()
	r, ok := c.peers.gateways[gw]
	return r.controller, ok
}

// gatewayReachable reports whether gw holds a stream here or elsewhere.
func (c *Controller) gatewayReachable(gw api.GatewayID) bool {
	if c.hub.connected(gw) {
		return true
	}
	_, ok := c.gatewayOwner(gw)
	return ok
}

// gatewayList is the body of gateway.up, gateway.here and gateway.down.
type gatewayList struct {
	IDs []api.GatewayID `json:"ids"`
}

// gatewayDrain is the body of gateway.drain.
type gatewayDrain struct {
	ID       api.GatewayID `json:"id"`
	Draining bool          `json:"draining"`
}

// noteDraining records a gateway's drain state wherever this controller
// keeps it: its own stream's view (the picker of the controller holding
// the gateway must stop choosing it) and its view of other controllers'
// gateways.
func (c *Controller) noteDraining(id api.GatewayID, draining bool) {
	c.hub.setDraining(id, draining)
	c.peers.mu.Lock()
	defer c.peers.mu.Unlock()
	if g, ok := c.peers.gateways[id]; ok {
		g.info.Draining = draining
		c.peers.gateways[id] = g
	}
}

// grantPush is the body of grant.push.
type grantPush struct {
	Push       string          `json:"push"` // names this push in its ack
	Grant      api.GrantID     `json:"grant"`
	Gateway    api.GatewayID   `json:"gateway"`
	Candidates []api.Candidate `json:"candidates,omitempty"`
}

// pushAck is the body of grant.ack.
type pushAck struct {
	Push  string      `json:"push"`
	Grant api.GrantID `json:"grant"`
	OK    bool        `json:"ok"`
	Error string      `json:"error,omitempty"`
	// Candidates are the gateway's, for the client to punch towards.
	Candidates []api.Candidate `json:"candidates,omitempty"`
	// NotHeld says the controller asked does not hold the gateway's
	// stream (it moved): the push may yet reach it elsewhere.
	NotHeld bool `json:"not_held,omitempty"`
}

// errNotHeld means the controller asked to push does not hold the
// gateway's stream (any more).
var errNotHeld = errors.New("the controller asked does not hold the gateway's stream")

// gatewayCandidates returns the candidates gw last reported, to this
// controller or (through a relayed push's ack) to the one holding it.
func (c *Controller) gatewayCandidates(gw api.GatewayID) []api.Candidate {
	if cs := c.hub.liveInfo(gw).candidates; len(cs) > 0 || c.hub.connected(gw) {
		return cs
	}
	c.peers.mu.Lock()
	defer c.peers.mu.Unlock()
	return c.peers.gateways[gw].candidates
}

// broadcast sends an event to the other controllers, if in a cluster.
func (c *Controller) broadcast(kind string, body any) {
	cl := c.cluster.Load()
	if cl == nil {
		return
	}
	b, err := json.Marshal(body)
	if err == nil {
		_, err = cl.Broadcast(kind, b)
	}
	if err != nil && !errors.Is(err, cluster.ErrClosed) {
		c.log.Warn("cluster broadcast failed", "kind", kind, "err", err)
	}
}

// announceGateways broadcasts ids under kind, in events that fit.
func (c *Controller) announceGateways(kind string, ids []api.GatewayID) {
	for chunk := range slices.Chunk(ids, gatewayIDsPerEvent) {
		c.broadcast(kind, gatewayList{IDs: chunk})
	}
}

// streamOpened tells the cluster that gw's stream is now held here.
func (c *Controller) streamOpened(gw store.Gateway) {
	c.peers.mu.Lock()
	delete(c.peers.gateways, gw.ID)
	c.peers.mu.Unlock()
	c.announceGateways(kindGatewayUp, []api.GatewayID{gw.ID})
}

// streamClosed tells the cluster that gw's stream is no longer held here
// (unless a newer stream of it already replaced the closed one).
func (c *Controller) streamClosed(gw store.Gateway) {
	if !c.hub.connected(gw.ID) {
		c.announceGateways(kindGatewayDown, []api.GatewayID{gw.ID})
	}
}

// pushRemote asks the controller holding g's gateway to push g, and waits
// (within ctx) for its ack: over the direct channel to that controller
// first; when the channel fails, through gossip, while watching for the
// gateway's stream to move (here, or to another controller, which is then
// asked directly). A grant is in the store before it is pushed, so a push
// that reaches no one is not lost: the gateway's next sync (on reconnect,
// or the holder's re-sync with the store) carries it.
func (c *Controller) pushRemote(ctx context.Context, g store.Grant, cands []api.Candidate) error {
	var nonce [8]byte
	_, _ = rand.Read(nonce[:])
	p := grantPush{Push: hex.EncodeToString(nonce[:]), Grant: g.ID, Gateway: g.GatewayID, Candidates: cands}
	owner, _ := c.gatewayOwner(g.GatewayID)
	a, err := c.pushLink(ctx, owner, p)
	if err == nil {
		c.metrics.relayedPushes.WithLabelValues("link", "ok").Inc()
		return c.remoteAcked(g, a)
	}
	if !(errors.Is(err, cluster.ErrLink) || errors.Is(err, errNotHeld)) || ctx.Err() != nil {
		c.metrics.relayedPushes.WithLabelValues("link", "failed").Inc()
		return fmt.Errorf("push to %s through controller %s: %w", g.GatewayID, owner, err)
	}
	c.log.Warn("direct push to the gateway's controller failed; relaying it through gossip", "controller_id", owner, "grant_id", g.ID, "err", err)
	err = c.pushGossip(ctx, g, p, owner)
	result := "ok"
	if err != nil {
		result = "failed"
	}
	c.metrics.relayedPushes.WithLabelValues("gossip", result).Inc()
	return err
}

// pushLink sends p to controller owner over the direct channel and
// returns its ack; an error wrapping cluster.ErrLink means the channel
// failed, not the push.
func (c *Controller) pushLink(ctx context.Context, owner string, p grantPush) (pushAck, error) {
	cl := c.cluster.Load()
	if cl == nil {
		return pushAck{}, fmt.Errorf("%w: not in a cluster", cluster.ErrLink)
	}
	body, err := json.Marshal(p)
	if err != nil {
		return pushAck{}, fmt.Errorf("push %s: %w", p.Grant, err)
	}
	out, err := cl.Call(ctx, owner, linkPushPath, body)
	if err != nil {
		return pushAck{}, err
	}
	var a pushAck
	if err := json.Unmarshal(out, &a); err != nil || a.Push != p.Push || a.Grant != p.Grant {
		return pushAck{}, fmt.Errorf("%w: controller %s answered the push with something else", cluster.ErrLink, owner)
	}
	if a.NotHeld {
		return pushAck{}, fmt.Errorf("controller %s: %w", owner, errNotHeld)
	}
	if !a.OK {
		return pushAck{}, fmt.Errorf("refused: %s", a.Error)
	}
	return a, nil
}

// remoteAcked records what a remote push's ack tells of the gateway.
func (c *Controller) remoteAcked(g store.Grant, a pushAck) error {
	if !a.OK {
		return fmt.Errorf("push to %s through another controller: %s", g.GatewayID, a.Error)
	}
	c.peers.mu.Lock()
	if r, ok := c.peers.gateways[g.GatewayID]; ok {
		r.candidates = a.Candidates
		c.peers.gateways[g.GatewayID] = r
	}
	c.peers.mu.Unlock()
	return nil
}

// pushGossip relays p through gossip to whichever controller holds the
// gateway and waits for its ack. It also polls where the gateway's stream
// is: once here, g is pushed here; once held by a controller other than
// failed, that one is asked over the direct channel.
func (c *Controller) pushGossip(ctx context.Context, g store.Grant, p grantPush, failed string) error {
	for len(p.Candidates) > 0 {
		if b, _ := json.Marshal(p); len(b) <= cluster.MaxBodyBytes {
			break
		}
		p.Candidates = p.Candidates[:len(p.Candidates)-1]
	}
	ch := make(chan pushAck, 1)
	c.peers.mu.Lock()
	c.peers.acks[p.Push] = ch
	c.peers.mu.Unlock()
	defer func() {
		c.peers.mu.Lock()
		delete(c.peers.acks, p.Push)
		c.peers.mu.Unlock()
	}()
	c.broadcast(kindGrantPush, p)
	poll := time.NewTicker(pushPollInterval)
	defer poll.Stop()
	for {
		select {
		case a := <-ch:
			if a.NotHeld {
				continue // the gateway moved on; another holder may ack
			}
			return c.remoteAcked(g, a)
		case <-poll.C:
			if c.hub.connected(g.GatewayID) {
				gg := c.gatewayGrant(g)
				gg.ClientCandidates = p.Candidates
				return c.hub.push(ctx, g.GatewayID, api.StreamEvent{Type: api.EventGrant, Time: c.now(), Grants: []api.GatewayGrant{gg}})
			}
			if owner, ok := c.gatewayOwner(g.GatewayID); ok && owner != failed {
				a, err := c.pushLink(ctx, owner, p)
				if err == nil {
					return c.remoteAcked(g, a)
				}
				if !errors.Is(err, cluster.ErrLink) && !errors.Is(err, errNotHeld) {
					return fmt.Errorf("push to %s through controller %s: %w", g.GatewayID, owner, err)
				}
				failed = owner
			}
		case <-ctx.Done():
			return fmt.Errorf("push to %s through another controller: waiting for ack: %w", g.GatewayID, ctx.Err())
		}
	}
}

// pushPollInterval is how often a push relayed through gossip checks
// whether the gateway's stream moved.
const pushPollInterval = 50 * time.Millisecond

// linkPushPath is the direct channel's request to push a grant to a
// gateway held by the controller called (body grantPush, answer pushAck).
const linkPushPath = "/v1/cluster/push"

// linkHandler serves the direct channel's requests from other
// controllers (cluster.Config.Link).
func (r *clusterRun) linkHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+linkPushPath, r.handleLinkPush)
	mux.HandleFunc("POST "+linkRevokePath, r.handleLinkRevoke)
	return mux
}

// linkRevokePath is the direct channel's notice of grants revoked on the
// controller calling (body revokedIDs): the fast path of a revocation to
// the gateways held elsewhere. The same IDs also travel by gossip.
const linkRevokePath = "/v1/cluster/revoked"

// revokedIDs is the body of a linkRevokePath request.
type revokedIDs struct {
	IDs []string `json:"ids"`
}

// maxLinkRevokeIDs bounds the IDs of one linkRevokePath request.
const maxLinkRevokeIDs = 1000

// handleLinkRevoke pushes another controller's revocation to the gateways
// held here, as its gossip would (relayRevocation: the store decides).
func (r *clusterRun) handleLinkRevoke(w http.ResponseWriter, req *http.Request) {
	if _, ok := cluster.LinkPeer(req.Context()); !ok {
		http.Error(w, "not a controller of this cluster", http.StatusForbidden)
		return
	}
	var body revokedIDs
	err := json.NewDecoder(io.LimitReader(req.Body, cluster.MaxLinkBodyBytes)).Decode(&body)
	if err == nil && (len(body.IDs) == 0 || len(body.IDs) > maxLinkRevokeIDs) {
		err = fmt.Errorf("want 1-%d IDs", maxLinkRevokeIDs)
	}
	for _, id := range body.IDs {
		if err == nil && (id == "" || len(id) > 128) {
			err = errors.New("bad grant ID")
		}
	}
	if err != nil {
		http.Error(w, "bad revocation: "+err.Error(), http.StatusBadRequest)
		return
	}
	if !r.enter() {
		http.Error(w, "controller is stopping", http.StatusServiceUnavailable)
		return
	}
	defer r.bg.Done()
	ctx, cancel := context.WithTimeout(r.ctx, r.c.cfg.AckTimeout)
	defer cancel()
	r.relayRevocation(ctx, body.IDs)
	w.WriteHeader(http.StatusNoContent)
}

// handleLinkPush pushes a grant another controller issued to a gateway
// held here and answers with the gateway's ack.
func (r *clusterRun) handleLinkPush(w http.ResponseWriter, req *http.Request) {
	peer, ok := cluster.LinkPeer(req.Context())
	if !ok {
		http.Error(w, "not a controller of this cluster", http.StatusForbidden)
		return
	}
	var p grantPush
	body, err := io.ReadAll(io.LimitReader(req.Body, cluster.MaxLinkBodyBytes+1))
	if err == nil && len(body) > cluster.MaxLinkBodyBytes {
		err = errors.New("body too large")
	}
	if err == nil {
		err = json.Unmarshal(body, &p)
	}
	if err == nil && (p.Push == "" || p.Grant == "" || p.Gateway == "" || len(p.Candidates) > api.MaxCandidates) {
		err = errors.New("incomplete push")
	}
	if err != nil {
		http.Error(w, "bad push: "+err.Error(), http.StatusBadRequest)
		return
	}
	if !r.enter() {
		http.Error(w, "controller is stopping", http.StatusServiceUnavailable)
		return
	}
	defer r.bg.Done()
	ctx, cancel := context.WithCancel(req.Context())
	defer cancel()
	stop := context.AfterFunc(r.ctx, cancel)
	defer stop()
	a := r.pushHere(ctx, p)
	if !a.OK {
		r.c.log.Warn("relayed grant push failed", "grant_id", p.Grant, "gateway_id", p.Gateway, "controller_id", peer, "err", a.Error)
	}
	b, err := json.Marshal(a)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(b)
}

// clusterRevoked tells the other controllers of grants revoked here.
func (c *Controller) clusterRevoked(revoked []store.Grant) {
	cl := c.cluster.Load()
	if cl == nil || len(revoked) == 0 {
		return
	}
	ids := make([]string, 0, len(revoked))
	var until time.Time
	for _, g := range revoked {
		ids = append(ids, string(g.ID))
		if g.NotAfter.After(until) {
			until = g.NotAfter
		}
	}
	if _, err := cl.Revoked(ids, until); err != nil && !errors.Is(err, cluster.ErrClosed) {
		c.log.Warn("cluster revocation broadcast failed; the store re-sync will deliver it", "err", err)
	}
	// The fast path: every other controller hears of it directly now.
	for chunk := range slices.Chunk(ids, maxLinkRevokeIDs) {
		if b, err := json.Marshal(revokedIDs{IDs: chunk}); err == nil {
			cl.Tell(linkRevokePath, b, c.cfg.AckTimeout)
		}
	}
}

// clusterRun is one run of the controller's cluster membership: the
// goroutines it starts and how to stop them.
type clusterRun struct {
	c      *Controller
	cfg    ClusterConfig
	ctx    context.Context
	bg     sync.WaitGroup // relayed pushes and revocations, direct-channel requests
	resync chan struct{}  // cap 1: re-sync every stream with the store now

	// mu guards stopped (set before bg.Wait, so no direct-channel request
	// adds to bg after it) and relayed: grants whose revocation was
	// relayed here lately, by when, as it comes both over the direct
	// channel and through gossip.
	mu      sync.Mutex
	stopped bool
	relayed map[api.GrantID]time.Time
}

// maxRelayedRevocations bounds clusterRun.relayed.
const maxRelayedRevocations = 65536

// enter counts a direct-channel request in r.bg, unless the run is
// stopping; a true return must be followed by r.bg.Done.
func (r *clusterRun) enter() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopped || r.ctx.Err() != nil {
		return false
	}
	r.bg.Add(1)
	return true
}

// notRelayed returns the IDs among ids whose revocation was not relayed
// here within the last minute.
func (r *clusterRun) notRelayed(ids []string, now time.Time) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := ids[:0:0]
	for _, id := range ids {
		if at, ok := r.relayed[api.GrantID(id)]; ok && now.Sub(at) < time.Minute {
			continue
		}
		out = append(out, id)
	}
	return out
}

// markRelayed records that the revocation of id was relayed here.
func (r *clusterRun) markRelayed(id api.GrantID, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.relayed == nil || len(r.relayed) >= maxRelayedRevocations {
		r.relayed = make(map[api.GrantID]time.Time)
	}
	r.relayed[id] = now
}

// startCluster joins the cluster; the returned stop leaves it and waits
// for every goroutine it started.
func (c *Controller) startCluster(ctx context.Context) (stop func(), err error) {
	cfg := *c.cfg.Cluster
	if cfg.ResyncInterval <= 0 {
		cfg.ResyncInterval = DefaultResyncInterval
	}
	if cfg.AnnounceInterval <= 0 {
		cfg.AnnounceInterval = DefaultAnnounceInterval
	}
	if cfg.CatalogInterval <= 0 {
		cfg.CatalogInterval = DefaultCatalogInterval
	}
	ctx, cancel := context.WithCancel(ctx)
	r := &clusterRun{c: c, cfg: cfg, ctx: ctx, resync: make(chan struct{}, 1)}
	pool := x509.NewCertPool()
	pool.AddCert(c.ca.Cert())
	cl, err := cluster.New(cluster.Config{
		NodeName: c.id, BindAddr: cfg.BindAddr, BindPort: cfg.BindPort,
		AdvertiseAddr: cfg.AdvertiseAddr, AdvertisePort: cfg.AdvertisePort, Join: cfg.Join,
		SecretKey: cfg.SecretKey, Certificate: c.ca.ServerTLS().Certificates[0], CAs: pool,
		Timing: cfg.Timing, Logger: c.log.With("component", "cluster"),
		Handler:  r.onEvent,
		OnMember: r.onMember,
		Link:     r.linkHandler(),
	})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("controller: %w", err)
	}
	c.cluster.Store(cl)
	c.log.Info("cluster started", "controller_id", c.id, "gossip", cl.Addr().String(), "join", cfg.Join)
	loopDone := make(chan struct{})
	go func() {
		defer close(loopDone)
		r.loop()
	}()
	return func() {
		c.cluster.Store(nil)
		cancel()
		<-loopDone
		if err := cl.Close(); err != nil {
			c.log.Warn("cluster close", "err", err)
		}
		r.mu.Lock()
		r.stopped = true
		r.mu.Unlock()
		r.bg.Wait()
		c.peers.mu.Lock()
		clear(c.peers.gateways)
		c.peers.mu.Unlock()
	}, nil
}

// loop re-announces the gateways held here, forgets stale announcements
// of others, re-syncs streams with the store and reloads the catalog,
// each on its own period, until the run ends.
func (r *clusterRun) loop() {
	announce := time.NewTicker(r.cfg.AnnounceInterval)
	defer announce.Stop()
	resync := time.NewTicker(r.cfg.ResyncInterval)
	defer resync.Stop()
	catalog := time.NewTicker(r.cfg.CatalogInterval)
	defer catalog.Stop()
	// A difference a re-sync saw is checked again after grace, not a
	// whole interval later.
	grace := resyncGrace(r.cfg.ResyncInterval)
	confirm := time.NewTimer(grace)
	confirm.Stop()
	defer confirm.Stop()
	var again bool
	for {
		if again {
			confirm.Reset(grace)
			again = false
		}
		select {
		case <-r.ctx.Done():
			return
		case <-announce.C:
			r.c.announceGateways(kindGatewayHere, r.c.hub.ids())
			r.c.forgetStale(r.c.now().Add(-3 * r.cfg.AnnounceInterval))
		case <-resync.C:
			again = r.c.resyncStreams(r.ctx, grace)
		case <-r.resync:
			again = r.c.resyncStreams(r.ctx, grace)
		case <-confirm.C:
			again = r.c.resyncStreams(r.ctx, grace)
		case <-catalog.C:
			r.c.reloadFromPeers(r.ctx)
		}
	}
}

// onMember keeps the gateway view in step with membership: a member that
// leaves or fails takes its gateways with it; one that joins (or comes
// back from a partition) learns ours, and we re-check our streams against
// the store, for what the partition kept from us.
func (r *clusterRun) onMember(m cluster.MemberEvent) {
	c := r.c
	c.log.Info("controller "+m.Change.String(), "controller_id", m.Member.Name, "gossip", m.Member.Addr.String())
	switch m.Change {
	case cluster.MemberLeave, cluster.MemberFail:
		c.peers.mu.Lock()
		for id, g := range c.peers.gateways {
			if g.controller == m.Member.Name {
				delete(c.peers.gateways, id)
			}
		}
		c.peers.mu.Unlock()
	case cluster.MemberJoin:
		c.announceGateways(kindGatewayHere, c.hub.ids())
		select {
		case r.resync <- struct{}{}:
		default:
		}
	}
}

// onEvent handles another controller's event. It runs on the cluster's
// goroutine, one event at a time: anything that waits on a gateway runs
// on a goroutine of r instead.
func (r *clusterRun) onEvent(ctx context.Context, ev cluster.Event) {
	c := r.c
	var err error
	switch ev.Kind {
	case cluster.KindRevoke:
		var ids []string
		if ids, err = ev.RevokedIDs(); err == nil {
			r.relayRevocation(ctx, ids)
		}
	case kindGatewayUp, kindGatewayHere:
		var l gatewayList
		if err = json.Unmarshal(ev.Body, &l); err == nil {
			c.learnGateways(ctx, ev.Origin, l.IDs, ev.Kind == kindGatewayUp)
		}
	case kindGatewayDown:
		var l gatewayList
		if err = json.Unmarshal(ev.Body, &l); err == nil {
			c.peers.mu.Lock()
			for _, id := range l.IDs {
				if g, ok := c.peers.gateways[id]; ok && g.controller == ev.Origin {
					delete(c.peers.gateways, id)
				}
			}
			c.peers.mu.Unlock()
		}
	case kindGrantPush:
		var p grantPush
		if err = json.Unmarshal(ev.Body, &p); err == nil && c.hub.connected(p.Gateway) {
			r.bg.Add(1)
			go func() {
				defer r.bg.Done()
				r.relayPush(p)
			}()
		}
	case kindGrantAck:
		var a pushAck
		if err = json.Unmarshal(ev.Body, &a); err == nil {
			c.peers.mu.Lock()
			ch := c.peers.acks[a.Push]
			c.peers.mu.Unlock()
			if ch != nil {
				select {
				case ch <- a:
				default:
				}
			}
		}
	case kindGatewayDrain:
		var d gatewayDrain
		if err = json.Unmarshal(ev.Body, &d); err == nil {
			c.noteDraining(d.ID, d.Draining)
		}
	case kindCatalogChanged:
		var n catalogNote
		if err = json.Unmarshal(ev.Body, &n); err == nil {
			err = c.reloadCatalog(ctx)
		}
		if err == nil && n.Posture {
			c.devices.broadcast(api.DeviceEvent{Type: api.DeviceEventPostureChanged, Time: c.now()})
		}
	default:
		c.log.Debug("ignoring unknown cluster event", "kind", ev.Kind, "origin", ev.Origin)
	}
	if err != nil {
		c.log.Warn("cluster event not handled", "kind", ev.Kind, "origin", ev.Origin, "err", err)
	}
}

// learnGateways records that origin holds the streams of ids. fresh (a
// stream just opened) re-reads each gateway's keys and endpoints, which
// its hello just updated; otherwise only unknown or moved ones are read.
func (c *Controller) learnGateways(ctx context.Context, origin string, ids []api.GatewayID, fresh bool) {
	now := c.now()
	for _, id := range ids {
		if c.hub.connected(id) {
			continue // ours: the announcement is stale
		}
		c.peers.mu.Lock()
		g, ok := c.peers.gateways[id]
		if ok && g.controller == origin && !fresh {
			g.seen = now
			c.peers.gateways[id] = g
			c.peers.mu.Unlock()
			continue
		}
		c.peers.mu.Unlock()
		info, err := c.store.Gateway(ctx, id)
		if err != nil {
			c.log.Warn("gateway announced by another controller not found", "gateway_id", id, "controller_id", origin, "err", err)
			continue
		}
		c.peers.mu.Lock()
		c.peers.gateways[id] = remoteGateway{controller: origin, info: info, seen: now}
		c.peers.mu.Unlock()
	}
}

// forgetStale drops announcements not renewed since before.
func (c *Controller) forgetStale(before time.Time) {
	c.peers.mu.Lock()
	defer c.peers.mu.Unlock()
	for id, g := range c.peers.gateways {
		if g.seen.Before(before) {
			delete(c.peers.gateways, id)
		}
	}
}

// relayPush pushes a grant another controller issued to a gateway held
// here (pushHere) and tells that controller, through gossip, whether the
// gateway took it.
func (r *clusterRun) relayPush(p grantPush) {
	c := r.c
	ctx, cancel := context.WithTimeout(r.ctx, c.cfg.AckTimeout)
	defer cancel()
	ack := r.pushHere(ctx, p)
	for len(ack.Candidates) > 0 {
		if b, _ := json.Marshal(ack); len(b) <= cluster.MaxBodyBytes {
			break
		}
		ack.Candidates = ack.Candidates[:len(ack.Candidates)-1]
	}
	if !ack.OK {
		c.log.Warn("relayed grant push failed", "grant_id", p.Grant, "gateway_id", p.Gateway, "err", ack.Error)
	}
	c.broadcast(kindGrantAck, ack)
}

// pushHere pushes a grant another controller issued to a gateway held
// here, re-read from the store (the request carries IDs only: the store
// is the truth, and a revoked or expired grant is not pushed), and
// returns the gateway's ack, bounded by the ack timeout.
func (r *clusterRun) pushHere(ctx context.Context, p grantPush) pushAck {
	c := r.c
	ack := pushAck{Push: p.Push, Grant: p.Grant}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.AckTimeout)
	defer cancel()
	if !c.hub.connected(p.Gateway) {
		ack.Error = "gateway " + string(p.Gateway) + " is not connected to controller " + c.id
		ack.NotHeld = true
		return ack
	}
	g, err := c.store.Grant(ctx, p.Grant)
	switch {
	case err != nil:
		ack.Error = "grant not found: " + err.Error()
	case !g.RevokedAt.IsZero():
		ack.Error = "grant was revoked"
	case !c.now().Before(g.NotAfter):
		ack.Error = "grant expired"
	case g.GatewayID != p.Gateway:
		ack.Error = "grant is for another gateway"
	default:
		gg := c.gatewayGrant(g)
		gg.ClientCandidates = p.Candidates
		err = c.hub.push(ctx, g.GatewayID, api.StreamEvent{Type: api.EventGrant, Time: c.now(), Grants: []api.GatewayGrant{gg}})
		if err != nil {
			ack.Error = err.Error()
		} else {
			ack.OK = true
			ack.Candidates = c.hub.liveInfo(g.GatewayID).candidates
		}
	}
	return ack
}

// relayRevocation pushes another controller's revocation of ids to the
// gateways held here and tells the devices listening here.
func (r *clusterRun) relayRevocation(ctx context.Context, ids []string) {
	c := r.c
	if ids = r.notRelayed(ids, c.now()); len(ids) == 0 {
		return
	}
	byGateway := make(map[api.GatewayID][]api.GrantID)
	reasons := make(map[api.GatewayID]string)
	for _, id := range ids {
		g, err := c.store.Grant(ctx, api.GrantID(id))
		if err != nil {
			if !errors.Is(err, store.ErrNotFound) {
				c.log.Warn("revoked grant not read; the store re-sync will drop it", "grant_id", id, "err", err)
			}
			continue
		}
		if g.RevokedAt.IsZero() {
			continue // not (yet) revoked in the store: the store decides
		}
		r.markRelayed(g.ID, c.now())
		c.devices.publish(g.DeviceID, api.DeviceEvent{Type: api.DeviceEventGrantRevoked, GrantID: g.ID, Reason: g.RevokeReason, Time: g.RevokedAt})
		if c.hub.connected(g.GatewayID) {
			byGateway[g.GatewayID] = append(byGateway[g.GatewayID], g.ID)
			reasons[g.GatewayID] = g.RevokeReason
		}
	}
	for gw, gids := range byGateway {
		r.bg.Add(1)
		go func() {
			defer r.bg.Done()
			pctx, cancel := context.WithTimeout(r.ctx, c.cfg.AckTimeout)
			defer cancel()
			err := c.hub.push(pctx, gw, api.StreamEvent{Type: api.EventRevoke, Time: c.now(), GrantIDs: gids, Reason: reasons[gw]})
			if err != nil && !errors.Is(err, errNotConnected) {
				c.log.Warn("relayed revocation not acknowledged; the store re-sync will drop it", "gateway_id", gw, "err", err)
			}
		}()
	}
}

// reloadFromPeers re-reads what admins on other controllers may have
// changed: the catalog and the names under wildcard domains.
func (c *Controller) reloadFromPeers(ctx context.Context) {
	if err := c.reloadCatalog(ctx); err != nil {
		c.log.Warn("periodic catalog reload failed", "err", err)
	}
	if names, err := c.store.WildcardNames(ctx); err == nil {
		c.names.add(names...)
	}
}

// catalogChanged reloads the catalog after an admin change here and tells
// the other controllers to reload theirs.
func (c *Controller) catalogChanged(ctx context.Context) error {
	if err := c.reloadCatalog(ctx); err != nil {
		return err
	}
	c.broadcast(kindCatalogChanged, catalogNote{})
	return nil
}

// catalogNote is the body of catalog.changed.
type catalogNote struct {
	// Posture says posture profiles changed: clients re-read their checks.
	Posture bool `json:"posture,omitempty"`
}

// resyncStreams checks every stream held here against the store and sends
// a fresh sync to those whose live grants changed since their last sync,
// and still differ after grace (see resyncStream). It reports whether a
// difference seen now awaits its confirmation: the caller checks again
// after grace, so healing takes one interval plus grace at most.
func (c *Controller) resyncStreams(ctx context.Context, grace time.Duration) (pending bool) {
	for _, s := range c.hub.all() {
		if ctx.Err() != nil {
			return false
		}
		p, err := c.resyncStream(ctx, s, grace)
		if err != nil && !errors.Is(err, errStreamClosed) {
			c.log.Warn("gateway stream re-sync failed", "gateway_id", s.info.ID, "err", err)
		}
		pending = pending || p
	}
	return pending
}

// resyncGrace is how long a difference between the store and a stream
// must last before a re-sync sends a sync: a grant committed but not yet
// pushed (or revoked but not yet pushed) is a difference for the moment it
// is in flight, and a full sync for it would only repeat the push.
func resyncGrace(interval time.Duration) time.Duration {
	return min(interval/2, time.Second)
}

// resyncStream sends s a sync of its gateway's live grants if they differ
// from what it was last synced with, in some grant that already differed
// at least grace ago (grace 0: at once); pending reports a difference
// still waiting for that. A push queued while the store was read may be
// newer than the snapshot, so the sync is then left to the next round
// rather than sent after it.
func (c *Controller) resyncStream(ctx context.Context, s *gwStream, grace time.Duration) (pending bool, err error) {
	s.mu.Lock()
	before := s.nextSeq
	s.mu.Unlock()
	live, err := c.store.LiveGrants(ctx, c.now(), s.info.ID, "")
	if err != nil {
		return false, fmt.Errorf("re-sync %s: %w", s.info.ID, err)
	}
	now := c.now()
	diff, confirmed := s.diff(live, now, grace)
	if !confirmed {
		return diff, nil
	}
	ev := c.syncEvent(live)
	wait, err := s.enqueueIf(ev, before)
	if err != nil || wait == nil {
		return wait == nil && err == nil, err
	}
	c.hub.load.note(s.info.ID, ev)
	c.log.Info("gateway stream re-synced with the store", "gateway_id", s.info.ID, "live_grants", len(live))
	pctx, cancel := context.WithTimeout(ctx, c.cfg.AckTimeout)
	defer cancel()
	select {
	case <-wait:
	case <-s.out.done:
	case <-pctx.Done():
	}
	return false, nil
}

// syncEvent is a sync of live, the live grants of one gateway.
func (c *Controller) syncEvent(live []store.Grant) api.StreamEvent {
	ev := api.StreamEvent{Type: api.EventSync, Time: c.now(), Grants: make([]api.GatewayGrant, 0, len(live))}
	for _, gr := range live {
		ev.Grants = append(ev.Grants, c.gatewayGrant(gr))
	}
	return ev
}

// enqueueIf queues ev (a sync) unless anything was queued since seq
// before; it returns nil, nil when it did not queue.
func (s *gwStream) enqueueIf(ev api.StreamEvent, before uint64) (<-chan struct{}, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.nextSeq != before {
		return nil, nil
	}
	ev.Seq = s.nextSeq
	if !s.out.put(0, ev) {
		return nil, errStreamClosed
	}
	s.nextSeq++
	s.trackLocked(ev)
	ch := make(chan struct{})
	s.waiters[ev.Seq] = ch
	return ch, nil
}

// all returns the streams held here.
func (h *streamHub) all() []*gwStream {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]*gwStream, 0, len(h.streams))
	for _, s := range h.streams {
		out = append(out, s)
	}
	return out
}

// ids returns the IDs of the gateways whose streams are held here.
func (h *streamHub) ids() []api.GatewayID {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]api.GatewayID, 0, len(h.streams))
	for id := range h.streams {
		out = append(out, id)
	}
	return out
}

// ParseClusterListen parses --cluster-listen ("[host]:port") into the bind
// address and port of a ClusterConfig.
func ParseClusterListen(addr string) (bindAddr string, bindPort int, err error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("cluster listen %q: %w", addr, err)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 0 || p > 65535 {
		return "", 0, fmt.Errorf("cluster listen %q: want a port 0-65535", addr)
	}
	return host, p, nil
}
