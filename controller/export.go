package controller

// Exports: single-app grants for stock WireGuard clients (POST /v1/exports).
//
// An export is a grant row with Export set. Its DeviceID is the device that
// asked for it (so disabling that device, its user or the policy revokes it
// through reevaluate, like any grant of the device), but its client is a
// stock WireGuard client with a key pair the device made and an overlay
// address of its own from the devices pool. The gateway keys peers by
// WireGuard key and client address and sees an export as one more grant;
// revocation, expiry and re-evaluation need no export-specific code.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net/http"
	"net/netip"
	"slices"
	"time"

	"github.com/keyhole-net/keyhole/controller/store"
	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/key"
)

// Export limits. A TTL outside [min, MaxExportTTL] is refused (400), not
// clamped: the person asked for something specific and should know.
const (
	// DefaultExportTTL is an export's lifetime when the request gives none.
	DefaultExportTTL = time.Hour
	// MaxExportTTL is the longest export. Exports are never renewed, so
	// this bounds how long a copied config can work.
	MaxExportTTL = 24 * time.Hour
	// MinExportTTL is the shortest export, lowered to the controller's
	// GrantLifetime when that is shorter (tests and demos run short grants).
	MinExportTTL = time.Minute
	// MaxExportsPerUser caps a user's live exports, across their devices.
	MaxExportsPerUser = 10
)

// minExportTTL is the shortest TTL this controller accepts.
func (c *Controller) minExportTTL() time.Duration { return min(MinExportTTL, c.cfg.GrantLifetime) }

// handleExportRequest serves POST /v1/exports: the same decision as a
// grant for the calling device's user (audited as export.allow and
// export.deny), then an export grant pushed to a gateway that a stock
// client can reach without a relay.
func (c *Controller) handleExportRequest(w http.ResponseWriter, r *http.Request, d deviceCaller) error {
	var req api.ExportRequest
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if req.App == "" || len(req.App) > 253 {
		return badRequest("app: give an app name, domain or address (at most 253 characters)")
	}
	if req.PublicKey.IsZero() {
		return badRequest("public_key: give the stock client's WireGuard public key (keyhole export makes a fresh one)")
	}
	ttl := time.Duration(req.TTL)
	if ttl == 0 {
		ttl = DefaultExportTTL
	}
	if ttl < c.minExportTTL() || ttl > MaxExportTTL {
		return badRequest("ttl %v: want %v to %v; exports are not renewed, so export again when one ends", ttl, c.minExportTTL(), MaxExportTTL)
	}
	ev := api.AuditEvent{Actor: d.actor(), User: d.user.Name, DeviceID: d.device.ID, Source: remoteAddr(r)}
	app, dec, err := c.decideExport(r, d, req.App, &ev)
	if err != nil {
		return err
	}
	resp, err := c.issueExport(r.Context(), d, app, dec, ev, req.PublicKey, ttl)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}

// decideExport resolves dest to an app and evaluates the policy for d's
// user; a denial is audited (export.deny) and returned as the API error.
// It fills in ev.App.
func (c *Controller) decideExport(r *http.Request, d deviceCaller, dest string, ev *api.AuditEvent) (store.App, verdict, error) {
	ctx := r.Context()
	cat := c.catalog.Load()
	// Wildcard names get their addresses on demand, for grants; an export
	// covers what an app holds for good.
	m, ok, err := cat.resolveDest(dest, func(netip.Addr) (string, bool) { return "", false })
	if err != nil {
		return store.App{}, verdict{}, err
	}
	if !ok {
		ev.Type, ev.App, ev.Reason = "export.deny", dest, fmt.Sprintf("no app matches %q", dest)
		c.audit(ctx, *ev)
		c.metrics.grantsDenied.Inc()
		return store.App{}, verdict{}, notFound("no app matches %q; ask an admin which apps exist (keyhole admin app list)", dest)
	}
	if m.name != "" {
		return store.App{}, verdict{}, badRequest("%s is a name under a wildcard domain of app %s; exports cover an app's exact domains and addresses only", m.name, m.app.Name)
	}
	ev.App = m.app.Name
	dec, _ := c.decide(cat, c.subject(r, d), m.app.Name, false)
	if !dec.Allow {
		ev.Type, ev.Rule, ev.Reason = "export.deny", dec.Rule, dec.Reason
		c.audit(ctx, *ev)
		c.metrics.grantsDenied.Inc()
		c.log.Info("export denied", "user", d.user.Name, "device_id", d.device.ID, "app", m.app.Name, "rule", dec.Rule, "reason", dec.Reason)
		return store.App{}, verdict{}, denied(dec.Decision)
	}
	return m.app, dec, nil
}

// issueExport stores an export grant of app for the stock client with key
// pub, pushes it to a gateway the client can reach directly and waits for
// the gateway's ack, and answers with what the client's config needs.
func (c *Controller) issueExport(ctx context.Context, d deviceCaller, app store.App, dec verdict, ev api.AuditEvent, pub key.WGPublic, ttl time.Duration) (api.ExportResponse, error) {
	targets := grantTargets(app)
	if len(targets) == 0 {
		return api.ExportResponse{}, badRequest("app %s has no fixed address to export (only wildcard domains); ask an admin for an app with exact domains or addresses", app.Name)
	}
	gw, direct, err := c.exportGateway(ctx, app.GatewayGroup)
	if err != nil {
		return api.ExportResponse{}, err
	}
	now := c.now()
	g := newGrant(d, app, gw.ID, targets, dec, now, now.Add(ttl))
	g.Export, g.ClientWGKey = true, pub
	ev.Type, ev.Time, ev.GrantID, ev.GatewayID, ev.Rule, ev.Reason = "export.allow", now, g.ID, gw.ID, dec.Rule, dec.Reason
	g, err = c.store.CreateExport(ctx, g, ev, MaxExportsPerUser)
	switch {
	case errors.Is(err, store.ErrConflict):
		return api.ExportResponse{}, conflict("public key %s is a device's or an earlier export's; every export needs a fresh key (keyhole export makes one)", pub)
	case errors.Is(err, store.ErrLimit):
		return api.ExportResponse{}, errf(http.StatusConflict, api.CodeLimitReached,
			"%s already holds %d live exports, the most allowed; revoke one (keyhole admin grant revoke ID) or wait for one to expire", d.user.Name, MaxExportsPerUser)
	case err != nil:
		return api.ExportResponse{}, fmt.Errorf("export %s for %s: %w", app.Name, d.user.Name, err)
	}
	if err := c.pushNew(ctx, g, nil); err != nil {
		return api.ExportResponse{}, err
	}
	c.metrics.grantsIssued.Inc()
	c.log.Info("export issued", "grant_id", g.ID, "user", g.User, "device_id", g.DeviceID, "app", g.App,
		"gateway_id", gw.ID, "client_ip", g.ClientIP, "rule", dec.Rule, "not_after", g.NotAfter)

	peer := c.grantResponse(g, gw).Peer
	// A stock client speaks neither TURN nor connectivity checks.
	peer.Candidates, peer.CheckKey = direct, nil
	peer.Endpoints = make([]netip.AddrPort, len(direct))
	for i, cand := range direct {
		peer.Endpoints[i] = cand.Addr
	}
	names := make(map[string]netip.Addr)
	for _, t := range targets {
		if t.Host != "" {
			names[t.Host] = t.Prefix.Addr()
		}
	}
	return api.ExportResponse{Grant: g.Grant, Peer: peer, Address: g.ClientIP, Names: names}, nil
}

// exportGateway picks, at random among the connected gateways of group that
// a stock client can reach directly, one gateway and its direct
// candidates, best first.
func (c *Controller) exportGateway(ctx context.Context, group string) (store.Gateway, []api.Candidate, error) {
	all, err := c.store.Gateways(ctx)
	if err != nil {
		return store.Gateway{}, nil, fmt.Errorf("export: gateways: %w", err)
	}
	type choice struct {
		gw     store.Gateway
		direct []api.Candidate
	}
	var usable []choice
	connected := 0
	for _, gw := range all {
		if gw.Group != group {
			continue
		}
		info, ok := c.hub.info(gw.ID) // as of the gateway's last hello
		if !ok {
			if !c.gatewayReachable(gw.ID) {
				continue
			}
			// Another controller of the cluster holds it: its endpoints
			// are in the store; its candidates are known here only after
			// a push through that controller.
			info = gw
		}
		connected++
		if direct := directCandidates(c.gatewayCandidates(gw.ID), info.Endpoints); len(direct) > 0 {
			usable = append(usable, choice{info, direct})
		}
	}
	if len(usable) == 0 {
		if connected == 0 {
			return store.Gateway{}, nil, errf(http.StatusServiceUnavailable, api.CodeUnavailable,
				"no gateway of group %q is connected; start one (keyhole gateway) or try again shortly", group)
		}
		return store.Gateway{}, nil, errf(http.StatusServiceUnavailable, api.CodeUnavailable,
			"no gateway of group %q has a directly reachable address (only relayed ones), and stock WireGuard clients cannot use the relay; give the gateway a public or port-forwarded address", group)
	}
	u := usable[mrand.IntN(len(usable))]
	return u.gw, u.direct, nil
}

// directCandidates returns the gateway addresses a stock WireGuard client
// can send to without a relay: host and server-reflexive candidates and
// the gateway's advertised endpoints, without duplicates, best first.
// Best is the address most likely reachable from wherever the person is:
// public before private (and carrier-grade NAT) before loopback, then
// server-reflexive (what the outside saw) before host, then IPv4 before
// IPv6. Relayed, unspecified, link-local and multicast addresses never
// qualify.
func directCandidates(cands []api.Candidate, endpoints []netip.AddrPort) []api.Candidate {
	all := slices.Clone(cands)
	for _, ep := range endpoints {
		all = append(all, api.Candidate{Type: api.CandidateHost, Addr: ep})
	}
	var out []api.Candidate
	seen := make(map[netip.AddrPort]int) // address → index in out
	for _, cand := range all {
		a := netip.AddrPortFrom(cand.Addr.Addr().Unmap(), cand.Addr.Port())
		ip := a.Addr()
		if (cand.Type != api.CandidateHost && cand.Type != api.CandidateSrflx) || !ip.IsValid() || a.Port() == 0 ||
			ip.IsUnspecified() || ip.IsMulticast() || ip.IsLinkLocalUnicast() || ip.IsInterfaceLocalMulticast() {
			continue
		}
		cand.Addr = a
		if i, dup := seen[a]; dup {
			if cand.Type == api.CandidateSrflx {
				out[i].Type = api.CandidateSrflx
			}
			continue
		}
		seen[a] = len(out)
		out = append(out, cand)
	}
	slices.SortStableFunc(out, func(x, y api.Candidate) int {
		return cmp.Or(
			cmp.Compare(reachClass(x.Addr.Addr()), reachClass(y.Addr.Addr())),
			cmp.Compare(typeRank(x.Type), typeRank(y.Type)),
			cmp.Compare(familyRank(x.Addr.Addr()), familyRank(y.Addr.Addr())),
		)
	})
	return out
}

// carrierNAT is RFC 6598 shared address space: behind a provider's NAT.
var carrierNAT = netip.MustParsePrefix("100.64.0.0/10")

// reachClass ranks an address by how widely it can be reached.
func reachClass(ip netip.Addr) int {
	switch {
	case ip.IsLoopback():
		return 2
	case ip.IsPrivate() || carrierNAT.Contains(ip):
		return 1
	default:
		return 0
	}
}

func typeRank(typ string) int {
	if typ == api.CandidateSrflx {
		return 0
	}
	return 1
}

func familyRank(ip netip.Addr) int {
	if ip.Is4() {
		return 0
	}
	return 1
}
