package controller

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/keyhole-net/keyhole/controller/auth"
	"github.com/keyhole-net/keyhole/controller/policy"
	"github.com/keyhole-net/keyhole/controller/store"
	"github.com/keyhole-net/keyhole/internal/api"
)

// renewFraction is the part of a grant's lifetime after which clients renew.
const renewFraction = 2.0 / 3.0

func (c *Controller) handleGrantRequest(w http.ResponseWriter, r *http.Request, d deviceCaller) error {
	start := time.Now()
	var req api.GrantRequest
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if req.App == "" || len(req.App) > 253 {
		return badRequest("app: give an app name, domain or address (at most 253 characters)")
	}
	if req.Proto == "" {
		req.Proto = "tcp"
	}
	if req.Proto != "tcp" && req.Proto != "udp" {
		return badRequest("proto %q: want tcp or udp", req.Proto)
	}
	if err := c.posture(r, &d, req.Posture); err != nil {
		return err
	}
	cat := c.catalog.Load()
	base := api.AuditEvent{
		Actor: d.actor(), User: d.user.Name, DeviceID: d.device.ID, Source: remoteAddr(r),
	}
	m, ok, err := cat.resolveDest(req.App, c.names.nameOf)
	if err != nil {
		return err
	}
	if !ok {
		base.Type, base.App, base.Reason = "grant.deny", req.App, fmt.Sprintf("no app matches %q", req.App)
		c.audit(r.Context(), base)
		c.metrics.grantsDenied.Inc()
		return notFound("no app matches %q; ask an admin which apps exist (keyhole admin app list)", req.App)
	}
	app := m.app
	base.App = app.Name
	if m.name == "" && len(grantTargets(app)) == 0 {
		return badRequest("app %s serves only names under its wildcard domains (%s); ask for one of those names", app.Name, strings.Join(app.Domains, ", "))
	}
	if req.Port != 0 && !api.PortsContain(app.Ports, req.Proto, req.Port) {
		reason := fmt.Sprintf("app %s does not serve %s/%d (it serves %s)", app.Name, req.Proto, req.Port, api.FormatPortRanges(app.Ports))
		base.Type, base.Reason = "grant.deny", reason+nameNote(m.name)
		c.audit(r.Context(), base)
		c.metrics.grantsDenied.Inc()
		return errf(http.StatusForbidden, api.CodeDenied, "%s", reason)
	}
	dec, _ := c.decide(cat, c.subject(r, d), app.Name, false)
	if !dec.Allow {
		base.Type, base.Rule, base.Reason = "grant.deny", dec.Rule, dec.Reason+nameNote(m.name)
		c.audit(r.Context(), base)
		c.metrics.grantsDenied.Inc()
		c.log.Info("grant denied", "user", d.user.Name, "device_id", d.device.ID, "app", app.Name, "name", m.name, "rule", dec.Rule, "reason", dec.Reason)
		return denied(dec.Decision)
	}
	if err := validCandidates(req.Candidates); err != nil {
		return err
	}
	targets := grantTargets(app)
	if m.name != "" {
		vip, err := c.nameVIP(r.Context(), d, m, base)
		if err != nil {
			return err
		}
		targets = []api.GrantTarget{{Prefix: netip.PrefixFrom(vip, vip.BitLen()), Host: m.name}}
	}
	resp, err := c.issue(r.Context(), d, m, targets, dec, base, req.Candidates)
	if err != nil {
		return err
	}
	c.metrics.decisionSeconds.Observe(time.Since(start).Seconds())
	writeJSON(w, http.StatusOK, resp)
	return nil
}

// issue creates (or, when the device already holds a live grant for the
// same app and name through a connected gateway, extends) a grant for
// targets, pushes it to the gateway and waits for the gateway's ack before
// answering: the client's first handshake must find the gateway ready.
func (c *Controller) issue(ctx context.Context, d deviceCaller, m match, targets []api.GrantTarget, dec verdict, ev api.AuditEvent, cands []api.Candidate) (api.GrantResponse, error) {
	app := m.app
	now := c.now()
	live, err := c.store.LiveGrantsFor(ctx, now, d.device.ID, app.ID)
	if err != nil {
		return api.GrantResponse{}, err
	}
	for _, g := range live {
		if !g.Export && g.Name == m.name && c.gatewayReachable(g.GatewayID) {
			return c.extend(ctx, g, dec, ev, cands, c.grantEnd(d, now))
		}
	}
	gw, ok := c.hub.pick(app.GatewayGroup)
	if !ok {
		return api.GrantResponse{}, errf(http.StatusServiceUnavailable, api.CodeUnavailable,
			"no gateway of group %q is connected for app %s; start one (keyhole gateway) or try again shortly", app.GatewayGroup, app.Name)
	}
	g := newGrant(d, app, gw.ID, targets, dec, now, c.grantEnd(d, now))
	g.ClientIP, g.ClientWGKey, g.Name = d.device.OverlayIP, d.device.WGPublicKey, m.name
	ev.Type, ev.Time, ev.GrantID, ev.GatewayID, ev.Rule, ev.Reason = "grant.allow", now, g.ID, gw.ID, dec.Rule, dec.Reason+nameNote(g.Name)
	if err := c.store.CreateGrant(ctx, g, ev); err != nil {
		return api.GrantResponse{}, fmt.Errorf("create grant: %w", err)
	}
	if err := c.pushNew(ctx, g, cands); err != nil {
		return api.GrantResponse{}, err
	}
	c.metrics.grantsIssued.Inc()
	c.log.Info("grant issued", "grant_id", g.ID, "user", g.User, "device_id", g.DeviceID, "app", g.App, "name", g.Name, "gateway_id", gw.ID, "rule", dec.Rule, "not_after", g.NotAfter)
	return c.grantResponse(g, gw), nil
}

// grantEnd is the NotAfter of a grant issued or renewed now for d: one
// grant lifetime, and never past the end of d's session, so access ends
// when the session does and the user must log in again.
func (c *Controller) grantEnd(d deviceCaller, now time.Time) time.Time {
	end := now.Add(c.cfg.GrantLifetime)
	if !d.sessionEnd.IsZero() && d.sessionEnd.Before(end) {
		end = d.sessionEnd
	}
	return end
}

// extend gives a live grant NotAfter notAfter and the facts of the
// decision that allowed it, and pushes the update (or moves it, see
// renewElsewhere).
func (c *Controller) extend(ctx context.Context, g store.Grant, dec verdict, ev api.AuditEvent, cands []api.Candidate, notAfter time.Time) (api.GrantResponse, error) {
	// A grant whose gateway drains or is gone is renewed through another
	// gateway of the group: the answer carries the new grant and peer.
	if resp, moved, err := c.renewElsewhere(ctx, g, dec, ev, cands, notAfter); moved || err != nil {
		return resp, err
	}
	now := c.now()
	g.NotAfter, g.Facts = notAfter, dec.facts()
	g.Rule = dec.Rule
	ev.Type, ev.Time, ev.GrantID, ev.GatewayID, ev.Rule, ev.Reason = "grant.renew", now, g.ID, g.GatewayID, dec.Rule, dec.Reason+nameNote(g.Name)
	if err := c.store.RenewGrant(ctx, g.ID, g.NotAfter, g.Facts, ev); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return api.GrantResponse{}, errf(http.StatusGone, api.CodeExpired, "grant %s expired or was revoked; request a new one", g.ID)
		}
		return api.GrantResponse{}, fmt.Errorf("renew grant: %w", err)
	}
	if err := c.pushGrant(ctx, g, cands); err != nil {
		// The gateway still holds the old expiry; the client may retry.
		return api.GrantResponse{}, errf(http.StatusBadGateway, api.CodeGatewayError, "gateway %s did not take the renewal in time; try again", g.GatewayID)
	}
	c.metrics.grantsRenewed.Inc()
	info, ok := c.hub.info(g.GatewayID)
	if !ok {
		var err error
		if info, err = c.store.Gateway(ctx, g.GatewayID); err != nil {
			return api.GrantResponse{}, fmt.Errorf("renew grant: gateway %s: %w", g.GatewayID, err)
		}
	}
	return c.grantResponse(g, info), nil
}

// newGrant is a fresh grant of app for d's user through gateway gw, with
// the facts dec was made on; the caller sets the client's address and key.
func newGrant(d deviceCaller, app store.App, gw api.GatewayID, targets []api.GrantTarget, dec verdict, now, notAfter time.Time) store.Grant {
	return store.Grant{
		Grant: api.Grant{
			ID:        api.GrantID(auth.NewID("grt")),
			DeviceID:  d.device.ID,
			User:      d.user.Name,
			App:       app.Name,
			GatewayID: gw,
			Targets:   targets,
			Ports:     app.Ports,
			Rule:      dec.Rule,
			CreatedAt: now,
			NotAfter:  notAfter,
		},
		AppID: app.ID,
		Facts: dec.facts(),
	}
}

// pushNew pushes a grant just created to its gateway. A grant the gateway
// did not take is revoked at once (nobody could use it) and the error
// tells the caller to try again.
func (c *Controller) pushNew(ctx context.Context, g store.Grant, cands []api.Candidate) error {
	if err := c.pushGrant(ctx, g, cands); err != nil {
		c.log.Warn("gateway did not take grant; revoking it", "grant_id", g.ID, "gateway_id", g.GatewayID, "err", err)
		_, _ = c.revoke(context.WithoutCancel(ctx), []api.GrantID{g.ID}, "gateway did not acknowledge the grant", "controller")
		return errf(http.StatusBadGateway, api.CodeGatewayError, "gateway %s did not take the grant in time; try again", g.GatewayID)
	}
	return nil
}

// pushGrant sends g to its gateway, with the client's candidates to punch
// towards (if any), and waits for the ack. When another controller of the
// cluster holds the gateway's stream, that controller pushes it.
func (c *Controller) pushGrant(ctx context.Context, g store.Grant, cands []api.Candidate) error {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.AckTimeout)
	defer cancel()
	if !c.hub.connected(g.GatewayID) {
		if _, ok := c.gatewayOwner(g.GatewayID); ok {
			return c.pushRemote(ctx, g, cands)
		}
	}
	gg := c.gatewayGrant(g)
	gg.ClientCandidates = cands
	return c.hub.push(ctx, g.GatewayID, api.StreamEvent{
		Type: api.EventGrant, Time: c.now(), Grants: []api.GatewayGrant{gg},
	})
}

func (c *Controller) gatewayGrant(g store.Grant) api.GatewayGrant {
	return api.GatewayGrant{
		ID: g.ID, DeviceID: g.DeviceID, User: g.User, App: g.App, ClientIP: g.ClientIP,
		ClientWGKey: g.ClientWGKey, Targets: g.Targets, Ports: g.Ports, NotAfter: g.NotAfter,
		CheckKey: c.checkKey(g.ID),
	}
}

func (c *Controller) grantResponse(g store.Grant, gw store.Gateway) api.GrantResponse {
	allowed := make([]netip.Prefix, 0, len(g.Targets))
	for _, t := range g.Targets {
		allowed = append(allowed, t.Prefix)
	}
	life := g.NotAfter.Sub(c.now())
	return api.GrantResponse{
		Grant: g.Grant,
		Peer: api.Peer{
			GatewayID: gw.ID, PublicKey: gw.WGPublicKey, Endpoints: gw.Endpoints, AllowedIPs: allowed,
			Candidates: c.gatewayCandidates(gw.ID), CheckKey: c.checkKey(g.ID),
		},
		RenewAfter: c.now().Add(time.Duration(float64(life) * renewFraction)),
		STUN:       c.relayAddr,
	}
}

func (c *Controller) handleGrantRenew(w http.ResponseWriter, r *http.Request, d deviceCaller) error {
	id := api.GrantID(r.PathValue("id"))
	// The body is optional: a client that moved sends its new candidates.
	var req api.GrantRenewal
	if r.ContentLength != 0 {
		if err := decode(w, r, &req); err != nil {
			return err
		}
		if err := validCandidates(req.Candidates); err != nil {
			return err
		}
	}
	if err := c.posture(r, &d, req.Posture); err != nil {
		return err
	}
	g, err := c.store.Grant(r.Context(), id)
	if errors.Is(err, store.ErrNotFound) || (err == nil && g.DeviceID != d.device.ID) {
		return notFound("grant %s not found for this device", id)
	}
	if err != nil {
		return err
	}
	if g.Export {
		return errf(http.StatusForbidden, api.CodeForbidden, "grant %s is an export for a stock WireGuard client; exports are not renewed: run keyhole export again for a new config", id)
	}
	if !g.RevokedAt.IsZero() {
		return errf(http.StatusGone, api.CodeExpired, "grant %s was revoked (%s); request a new one", id, g.RevokeReason)
	}
	if !c.now().Before(g.NotAfter) {
		return errf(http.StatusGone, api.CodeExpired, "grant %s expired; request a new one", id)
	}
	cat := c.catalog.Load()
	ev := api.AuditEvent{Actor: d.actor(), User: d.user.Name, DeviceID: d.device.ID, App: g.App, Source: remoteAddr(r)}
	name, ok := cat.byID[g.AppID]
	if !ok {
		_, _ = c.revoke(r.Context(), []api.GrantID{id}, "app removed", d.actor())
		return errf(http.StatusGone, api.CodeExpired, "app %s was removed; grant %s revoked", g.App, id)
	}
	if why := cat.stillMatches(g); why != "" {
		_, _ = c.revoke(r.Context(), []api.GrantID{id}, why, d.actor())
		return errf(http.StatusGone, api.CodeExpired, "%s; grant %s revoked, request %s again", why, id, g.Name)
	}
	dec, _ := c.decide(cat, c.subject(r, d), name, false)
	if !dec.Allow {
		ev.Type, ev.Rule, ev.Reason, ev.GrantID = "grant.deny", dec.Rule, dec.Reason, id
		c.audit(r.Context(), ev)
		_, _ = c.revoke(r.Context(), []api.GrantID{id}, "renewal denied: "+dec.Reason, d.actor())
		return denied(dec.Decision)
	}
	resp, err := c.extend(r.Context(), g, dec, ev, req.Candidates, c.grantEnd(d, c.now()))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}

// handleGrantRevoke serves DELETE /v1/grants/{id} for admins and for the
// device that holds the grant (a client releasing what it no longer needs).
func (c *Controller) handleGrantRevoke(w http.ResponseWriter, r *http.Request) error {
	id := api.GrantID(r.PathValue("id"))
	var actor string
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		d, err := c.authDevice(r)
		if err != nil {
			return err
		}
		g, err := c.store.Grant(r.Context(), id)
		if err != nil || g.DeviceID != d.device.ID {
			return notFound("grant %s not found for this device", id)
		}
		actor = d.actor()
	} else {
		a, err := c.authAdmin(r)
		if err != nil {
			return err
		}
		if _, err := c.store.Grant(r.Context(), id); err != nil {
			return storeErr("grant "+string(id), err)
		}
		actor = a.actor()
	}
	revoked, err := c.revoke(r.Context(), []api.GrantID{id}, "revoked by "+actor, actor)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]int{"revoked": len(revoked)})
	return nil
}

// revoke marks grants revoked in the store (the source of truth), then
// pushes the removal to each gateway and waits briefly for its ack so
// callers can rely on live connections being closed. A gateway that is not
// connected learns it from the sync on reconnect, and expires the grant on
// its own clock in any case.
func (c *Controller) revoke(ctx context.Context, ids []api.GrantID, reason, actor string) ([]store.Grant, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	now := c.now()
	revoked, err := c.store.RevokeGrants(ctx, ids, reason, now, api.AuditEvent{Type: "grant.revoke", Time: now, Actor: actor, Reason: reason})
	if err != nil {
		return nil, fmt.Errorf("revoke grants: %w", err)
	}
	byGateway := make(map[api.GatewayID][]api.GrantID)
	for _, g := range revoked {
		// Never blocks: the client learns at once if it listens, and the
		// gateway enforces the revocation either way.
		c.devices.publish(g.DeviceID, api.DeviceEvent{Type: api.DeviceEventGrantRevoked, GrantID: g.ID, Reason: reason, Time: now})
		byGateway[g.GatewayID] = append(byGateway[g.GatewayID], g.ID)
		c.log.Info("grant revoked", "grant_id", g.ID, "user", g.User, "app", g.App, "gateway_id", g.GatewayID, "reason", reason)
	}
	c.metrics.grantsRevoked.Add(float64(len(revoked)))
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.AckTimeout)
	defer cancel()
	errc := make(chan error, len(byGateway))
	for gw, gids := range byGateway {
		go func() {
			errc <- c.hub.push(pctx, gw, api.StreamEvent{Type: api.EventRevoke, Time: now, GrantIDs: gids, Reason: reason})
		}()
	}
	// The other controllers push it to the gateways they hold; one that
	// misses it drops the grants at its next re-sync with the store.
	c.clusterRevoked(revoked)
	for range byGateway {
		if err := <-errc; err != nil && !errors.Is(err, errNotConnected) {
			c.log.Warn("revocation not acknowledged; the gateway will drop it on reconnect or expiry", "err", err)
		}
	}
	return revoked, nil
}

// reevaluate re-checks every live grant against the current users, devices,
// apps and policy, and revokes those no longer allowed. Every admin change
// that can take access away calls it, so the rule "revocable within a
// second" holds for policy edits as much as for explicit revocations.
func (c *Controller) reevaluate(ctx context.Context, why, actor string) error {
	if err := c.catalogChanged(ctx); err != nil {
		return err
	}
	return c.recheck(ctx, c.catalog.Load(), why, actor, nil)
}

// recheck re-checks the live grants that keep accepts (nil: all) against
// cat, the current users and devices, and the facts each grant was last
// allowed on, at the current time; it revokes those no longer allowed,
// with why and the reason.
func (c *Controller) recheck(ctx context.Context, cat *catalog, why, actor string, keep func(store.Grant) bool) error {
	now := c.now()
	live, err := c.store.LiveGrants(ctx, now, "", "")
	if err != nil {
		return fmt.Errorf("reevaluate: %w", err)
	}
	users := make(map[string]*store.User)
	devices := make(map[api.DeviceID]*store.Device)
	byReason := make(map[string][]api.GrantID)
	for _, g := range live {
		if keep != nil && !keep(g) {
			continue
		}
		u, ok := users[g.User]
		if !ok {
			if uu, err := c.store.User(ctx, g.User); err == nil {
				u = &uu
			}
			users[g.User] = u
		}
		dv, ok := devices[g.DeviceID]
		if !ok {
			if dd, err := c.store.Device(ctx, g.DeviceID); err == nil {
				dv = &dd
			}
			devices[g.DeviceID] = dv
		}
		var reason string
		name, appOK := cat.byID[g.AppID]
		switch {
		case u == nil:
			reason = "user removed"
		case u.Disabled:
			reason = "user disabled"
		case dv == nil:
			reason = "device removed"
		case dv.Disabled:
			reason = "device disabled"
		case !appOK:
			reason = "app removed"
		case cat.stillMatches(g) != "":
			reason = cat.stillMatches(g)
		default:
			dec, _ := c.decide(cat, policy.Subject{
				User: u.Name, Groups: u.Groups, Time: now, Source: g.Facts.Source, MFAAt: g.Facts.MFAAt,
				Device: dv.ID, DeviceApproved: dv.Approved, Posture: dv.Posture,
			}, name, false)
			if !dec.Allow {
				reason = "policy no longer allows it: " + dec.Reason
			}
		}
		if reason != "" {
			byReason[why+": "+reason] = append(byReason[why+": "+reason], g.ID)
		}
	}
	for reason, ids := range byReason {
		if _, err := c.revoke(ctx, ids, reason, actor); err != nil {
			return err
		}
	}
	return nil
}

// nameNote names the wildcard name of a grant in audit reasons.
func nameNote(name string) string {
	if name == "" {
		return ""
	}
	return " (name " + name + ")"
}

// audit appends an event; a failure to audit is logged loudly but does not
// turn a denial into an error for the caller.
func (c *Controller) audit(ctx context.Context, ev api.AuditEvent) {
	if ev.Time.IsZero() {
		ev.Time = c.now()
	}
	if err := c.store.AppendAudit(ctx, ev); err != nil {
		c.log.Error("audit write failed", "type", ev.Type, "err", err)
	}
}
