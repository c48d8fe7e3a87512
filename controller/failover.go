package controller

import (
	"context"
	"fmt"
	mrand "math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/keyhole-net/keyhole/controller/auth"
	"github.com/keyhole-net/keyhole/controller/store"
	"github.com/keyhole-net/keyhole/internal/api"
)

// Gateway groups: several gateways serve one group. New grants go to the
// healthy gateway with the fewest live grants; an admin can drain a gateway
// (no new grants, renewals move away); and when a gateway's stream ends and
// does not come back within a grace period, its live grants are re-issued
// through another gateway of the group and each client is told with a
// grant.moved device event.

// DefaultGatewayGrace is how long a gateway whose stream ended may take to
// reconnect before its grants move to another gateway of its group: long
// enough for a reconnect after a network blip or a controller handover,
// short enough that clients have a working path within seconds.
const DefaultGatewayGrace = 3 * time.Second

// loadUnknown is the load of a candidate whose grant count this
// controller does not know (a gateway another controller holds).
const loadUnknown = -1

// candidate is one gateway that could take a new grant: where it stands
// for the choice, whatever told us of it.
type candidate struct {
	gw       store.Gateway
	load     int  // live grants through it; loadUnknown if not known
	draining bool // an admin is taking it out of service
	local    bool // this controller holds its stream
}

// chooseGateway picks among cands the gateway for a new grant: never a
// draining one nor exclude; of the rest, those whose stream this
// controller holds when there are any (a grant through another
// controller's gateway costs a relayed push and ack through the cluster,
// and the controllers behind a load balancer each balance the gateways
// they hold); of those, the one with the fewest live grants, ties broken
// with intn (math/rand's IntN in production). A candidate of unknown load
// ties with the least loaded known one.
func chooseGateway(cands []candidate, exclude api.GatewayID, intn func(int) int) (candidate, bool) {
	if slices.ContainsFunc(cands, func(c candidate) bool { return c.local && !c.draining && c.gw.ID != exclude }) {
		cands = slices.DeleteFunc(slices.Clone(cands), func(c candidate) bool { return !c.local })
	}
	minKnown := -1
	for _, c := range cands {
		if c.draining || c.gw.ID == exclude || c.load == loadUnknown {
			continue
		}
		if minKnown < 0 || c.load < minKnown {
			minKnown = c.load
		}
	}
	var best []candidate
	bestLoad := -1
	for _, c := range cands {
		if c.draining || c.gw.ID == exclude {
			continue
		}
		load := c.load
		if load == loadUnknown {
			load = max(minKnown, 0)
		}
		switch {
		case bestLoad < 0 || load < bestLoad:
			best, bestLoad = append(best[:0], c), load
		case load == bestLoad:
			best = append(best, c)
		}
	}
	if len(best) == 0 {
		return candidate{}, false
	}
	return best[intn(len(best))], true
}

// pickGateway picks the gateway of group for a new grant (chooseGateway
// over the hub's candidates), never exclude.
func (c *Controller) pickGateway(group string, exclude api.GatewayID) (store.Gateway, bool) {
	cand, ok := chooseGateway(c.hub.candidates(group, c.now()), exclude, mrand.IntN)
	return cand.gw, ok
}

// gatewayUsable reports whether gw can carry a renewed grant: its stream
// is up (here, or on another controller of the cluster) and, as far as
// this controller knows, it is not draining.
func (c *Controller) gatewayUsable(gw api.GatewayID) bool {
	if info, ok := c.hub.info(gw); ok {
		return !info.Draining
	}
	return c.gatewayReachable(gw)
}

// grantLoad counts each gateway's live grants from what the hub pushed to
// it: the sync that opens its stream, then grants and revocations. It costs
// no store query; a grant that ends counts until its NotAfter.
type grantLoad struct {
	mu   sync.Mutex                                  // guards byGW, swept
	byGW map[api.GatewayID]map[api.GrantID]time.Time // grant → NotAfter
	// swept is when each gateway's ended grants were last forgotten:
	// count sweeps at most once per loadSweepEvery, not on every grant
	// request (a gateway holds thousands of grants).
	swept map[api.GatewayID]time.Time
}

// loadSweepEvery bounds how stale a load count may be: grants that ended
// within it may still count (the picker's balance does not care).
const loadSweepEvery = time.Second

func newGrantLoad() *grantLoad {
	return &grantLoad{byGW: make(map[api.GatewayID]map[api.GrantID]time.Time), swept: make(map[api.GatewayID]time.Time)}
}

// note updates gw's grants with an event queued for it.
func (l *grantLoad) note(gw api.GatewayID, ev api.StreamEvent) {
	l.mu.Lock()
	defer l.mu.Unlock()
	m := l.byGW[gw]
	if ev.Type == api.EventSync || m == nil {
		m = make(map[api.GrantID]time.Time, len(ev.Grants))
		l.byGW[gw] = m
	}
	switch ev.Type {
	case api.EventSync, api.EventGrant:
		for _, g := range ev.Grants {
			m[g.ID] = g.NotAfter
		}
	case api.EventRevoke:
		for _, id := range ev.GrantIDs {
			delete(m, id)
		}
	}
}

// count returns gw's grants live at now, forgetting those that ended.
func (l *grantLoad) count(gw api.GatewayID, now time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	m := l.byGW[gw]
	if last, ok := l.swept[gw]; ok && now.Sub(last) < loadSweepEvery && !now.Before(last) {
		return len(m)
	}
	for id, end := range m {
		if !now.Before(end) {
			delete(m, id)
		}
	}
	if m != nil {
		l.swept[gw] = now
	}
	return len(m)
}

// failover owns the goroutines that wait out a gateway's grace period.
type failover struct {
	mu     sync.Mutex // guards ctx, closed; orders wg.Add before wg.Wait
	ctx    context.Context
	closed bool
	wg     sync.WaitGroup
}

// start binds the watchers to Run's ctx.
func (f *failover) start(ctx context.Context) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ctx, f.closed = ctx, false
}

// wait stops new watchers and waits for running ones (they end with ctx).
func (f *failover) wait() {
	f.mu.Lock()
	f.closed = true
	f.mu.Unlock()
	f.wg.Wait()
}

// gatewayGrace is Config.GatewayGrace or its default.
func (c *Controller) gatewayGrace() time.Duration {
	if c.cfg.GatewayGrace > 0 {
		return c.cfg.GatewayGrace
	}
	return DefaultGatewayGrace
}

// watchGateway runs after gw's stream ended: unless gw is back within the
// grace period (or the controller stops), its live grants move to another
// gateway of their apps' groups.
func (c *Controller) watchGateway(gw api.GatewayID) {
	f := &c.failover
	f.mu.Lock()
	ctx := f.ctx
	if f.closed || ctx == nil || ctx.Err() != nil {
		f.mu.Unlock()
		return
	}
	f.wg.Add(1)
	f.mu.Unlock()
	go func() {
		defer f.wg.Done()
		t := time.NewTimer(c.gatewayGrace())
		defer t.Stop()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if c.gatewayReachable(gw) {
			return
		}
		if err := c.failoverGateway(ctx, gw); err != nil && ctx.Err() == nil {
			c.log.Error("gateway failover", "gateway_id", gw, "err", err)
		}
	}()
}

// watchGatewaysAtStart gives every gateway the grace to connect to a
// controller that just started, then moves the live grants of those that
// did not: a gateway that died while no controller ran never has a
// stream end here. Alone only: in a cluster a gateway may be held by
// another controller this one has not heard of yet.
func (c *Controller) watchGatewaysAtStart(ctx context.Context) {
	if c.cfg.Cluster != nil {
		return
	}
	gs, err := c.store.Gateways(ctx)
	if err != nil {
		c.log.Warn("listing gateways for failover", "err", err)
		return
	}
	for _, g := range gs {
		c.watchGateway(g.ID)
	}
}

// failoverGateway moves every live grant of gateway gw (gone) to another
// gateway of its app's group and tells each device with grant.moved. A
// grant with nowhere to go stays: its gateway may come back, and the
// client's renewal answers with a clear error meanwhile. Exports are left
// alone: a stock WireGuard client cannot be told of another gateway.
func (c *Controller) failoverGateway(ctx context.Context, gw api.GatewayID) error {
	live, err := c.store.LiveGrants(ctx, c.now(), gw, "")
	if err != nil {
		return fmt.Errorf("failover of gateway %s: %w", gw, err)
	}
	cat := c.catalog.Load()
	var moved, stuck int
	for _, g := range live {
		if g.Export {
			continue
		}
		if c.gatewayReachable(gw) {
			c.log.Info("gateway back during failover; its other grants stay", "gateway_id", gw)
			break
		}
		name, ok := cat.byID[g.AppID]
		if !ok {
			continue // the app is gone; the next recheck revokes the grant
		}
		to, ok := c.pickGateway(cat.apps[name].GatewayGroup, gw)
		if !ok {
			stuck++
			continue
		}
		reason := fmt.Sprintf("gateway %s is gone", gw)
		ev := api.AuditEvent{Actor: "controller", User: g.User, DeviceID: g.DeviceID, App: g.App, Rule: g.Rule}
		if _, err := c.moveGrant(ctx, g, to, g.NotAfter, g.Facts, nil, reason, ev); err != nil {
			c.log.Warn("grant not moved", "grant_id", g.ID, "gateway_id", to.ID, "err", err)
			stuck++
			continue
		}
		moved++
	}
	c.log.Info("gateway failover", "gateway_id", gw, "moved", moved, "stuck", stuck)
	return nil
}

// moveGrant re-issues live grant g through gateway to, until notAfter with
// facts, and retires g: it creates the new grant, pushes it (with the
// client's candidates, if known) and waits for the ack, tells g's device
// with grant.moved, then revokes g (its gateway learns on reconnect).
func (c *Controller) moveGrant(ctx context.Context, g store.Grant, to store.Gateway, notAfter time.Time, facts store.GrantFacts, cands []api.Candidate, reason string, ev api.AuditEvent) (store.Grant, error) {
	now := c.now()
	ng := g
	ng.ID = api.GrantID(auth.NewID("grt"))
	ng.GatewayID, ng.CreatedAt, ng.NotAfter, ng.Facts = to.ID, now, notAfter, facts
	ng.RevokedAt, ng.RevokeReason = time.Time{}, ""
	ev.Type, ev.Time, ev.GrantID, ev.GatewayID = "grant.move", now, ng.ID, to.ID
	ev.Reason = fmt.Sprintf("moved from grant %s on gateway %s: %s", g.ID, g.GatewayID, reason) + nameNote(g.Name)
	if err := c.store.CreateGrant(ctx, ng, ev); err != nil {
		return store.Grant{}, fmt.Errorf("move grant %s: %w", g.ID, err)
	}
	if err := c.pushNew(ctx, ng, cands); err != nil {
		return store.Grant{}, fmt.Errorf("move grant %s: %w", g.ID, err)
	}
	c.devices.publish(g.DeviceID, api.DeviceEvent{
		Type: api.DeviceEventGrantMoved, GrantID: g.ID, NewGrantID: ng.ID, Reason: reason, Time: now,
	})
	why := fmt.Sprintf("moved to grant %s on gateway %s: %s", ng.ID, to.ID, reason)
	if _, err := c.revoke(context.WithoutCancel(ctx), []api.GrantID{g.ID}, why, "controller"); err != nil {
		c.log.Warn("moved grant not revoked; it ends at its expiry", "grant_id", g.ID, "err", err)
	}
	c.log.Info("grant moved", "grant_id", g.ID, "new_grant_id", ng.ID, "app", g.App, "device_id", g.DeviceID, "from_gateway_id", g.GatewayID, "gateway_id", to.ID, "reason", reason)
	return ng, nil
}

// renewElsewhere renews g through another gateway when its own is
// draining or gone: the answer then carries the new grant and peer. ok is
// false when g should be renewed where it is (its gateway is usable, or
// draining with nowhere else to go); a gone gateway with no other in the
// group is an error that says so.
func (c *Controller) renewElsewhere(ctx context.Context, g store.Grant, dec verdict, ev api.AuditEvent, cands []api.Candidate, notAfter time.Time) (resp api.GrantResponse, ok bool, err error) {
	if c.gatewayUsable(g.GatewayID) {
		return api.GrantResponse{}, false, nil
	}
	group := ""
	if name, found := c.catalog.Load().byID[g.AppID]; found {
		group = c.catalog.Load().apps[name].GatewayGroup
	}
	connected := c.gatewayReachable(g.GatewayID)
	to, found := c.pickGateway(group, g.GatewayID)
	if !found {
		if connected {
			return api.GrantResponse{}, false, nil // draining, but the only one
		}
		return api.GrantResponse{}, false, errf(http.StatusServiceUnavailable, api.CodeUnavailable,
			"gateway %s of grant %s is not connected and no other gateway of group %q is; try again shortly", g.GatewayID, g.ID, group)
	}
	why := fmt.Sprintf("gateway %s is gone", g.GatewayID)
	if connected {
		why = fmt.Sprintf("gateway %s is draining", g.GatewayID)
	}
	ev.Rule = dec.Rule
	ng := g
	ng.Rule = dec.Rule
	moved, err := c.moveGrant(ctx, ng, to, notAfter, dec.facts(), cands, why, ev)
	if err != nil {
		return api.GrantResponse{}, false, err
	}
	c.metrics.grantsRenewed.Inc()
	return c.grantResponse(moved, to), true, nil
}

// handleGatewayUpdate serves PATCH /v1/gateways/{id}: drain or undrain.
func (c *Controller) handleGatewayUpdate(w http.ResponseWriter, r *http.Request, a adminCaller) error {
	id := api.GatewayID(r.PathValue("id"))
	var req api.GatewayUpdate
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if req.Draining == nil {
		return badRequest(`nothing to change; send {"draining": true} or {"draining": false}`)
	}
	if err := c.store.SetGatewayDraining(r.Context(), id, *req.Draining); err != nil {
		return storeErr("gateway "+string(id), err)
	}
	// Every controller must know: the one holding the gateway's stream
	// picks it for new grants. One that misses the event reads the state
	// from the store when the gateway's stream moves.
	c.noteDraining(id, *req.Draining)
	c.broadcast(kindGatewayDrain, gatewayDrain{ID: id, Draining: *req.Draining})
	gw, err := c.store.Gateway(r.Context(), id)
	if err != nil {
		return storeErr("gateway "+string(id), err)
	}
	typ, reason := "admin.gateway.undrain", "gateway back in service"
	if gw.Draining {
		typ, reason = "admin.gateway.drain", "gateway draining: no new grants; renewals move to another gateway of group "+gw.Group
	}
	c.adminAudit(r, a, typ, api.AuditEvent{GatewayID: id, Reason: reason})
	c.log.Info(reason, "gateway_id", id, "group", gw.Group)
	gw.Connected = c.hub.connected(id)
	writeJSON(w, http.StatusOK, gw)
	return nil
}
