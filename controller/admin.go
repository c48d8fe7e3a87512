package controller

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/keyhole-net/keyhole/controller/auth"
	"github.com/keyhole-net/keyhole/controller/policy"
	"github.com/keyhole-net/keyhole/controller/store"
	"github.com/keyhole-net/keyhole/internal/api"
)

// overlay is the whole overlay range; app addresses must not overlap it.
var overlay = netip.MustParsePrefix("100.64.0.0/10")

const (
	defaultTokenTTL = time.Hour
	maxTokenTTL     = 7 * 24 * time.Hour
	maxListItems    = 64 // groups, domains, addresses, ports, rule subjects
)

func (c *Controller) adminAudit(r *http.Request, a adminCaller, typ string, ev api.AuditEvent) {
	ev.Type, ev.Actor, ev.Source = typ, a.actor(), remoteAddr(r)
	c.audit(r.Context(), ev)
}

func (c *Controller) handleUserList(w http.ResponseWriter, r *http.Request, _ adminCaller) error {
	us, err := c.store.Users(r.Context())
	if err != nil {
		return err
	}
	out := make([]api.User, len(us))
	for i, u := range us {
		out[i] = u.User
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (c *Controller) checkGroups(r *http.Request, groups []string) error {
	if len(groups) > maxListItems {
		return badRequest("at most %d groups", maxListItems)
	}
	if len(groups) == 0 {
		return nil
	}
	all, err := c.store.Groups(r.Context())
	if err != nil {
		return err
	}
	known := make(map[string]bool, len(all))
	for _, g := range all {
		known[g.Name] = true
	}
	for _, g := range groups {
		if !known[g] {
			return notFound("group %q does not exist; create it with keyhole admin group add %s", g, g)
		}
	}
	return nil
}

func (c *Controller) handleUserAdd(w http.ResponseWriter, r *http.Request, a adminCaller) error {
	var req api.UserCreate
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if err := checkUserName(req.Name); err != nil {
		return err
	}
	if err := c.checkGroups(r, req.Groups); err != nil {
		return err
	}
	u := store.User{User: api.User{ID: api.UserID(auth.NewID("usr")), Name: req.Name, Groups: req.Groups, CreatedAt: c.now()}}
	if u.Groups == nil {
		u.Groups = []string{}
	}
	if req.Password != "" {
		if err := auth.CheckPassword(req.Password); err != nil {
			return badRequest("%v", err)
		}
		h, err := auth.HashPassword(req.Password, c.cfg.Password)
		if err != nil {
			return err
		}
		u.PasswordHash = h
	}
	if err := c.store.CreateUser(r.Context(), u); err != nil {
		return storeErr("user "+req.Name, err)
	}
	c.adminAudit(r, a, "admin.user.add", api.AuditEvent{User: u.Name})
	writeJSON(w, http.StatusCreated, u.User)
	return nil
}

func (c *Controller) handleUserUpdate(w http.ResponseWriter, r *http.Request, a adminCaller) error {
	name := r.PathValue("name")
	var req api.UserUpdate
	if err := decode(w, r, &req); err != nil {
		return err
	}
	u, err := c.store.User(r.Context(), name)
	if err != nil {
		return storeErr("user "+name, err)
	}
	if req.Disabled != nil {
		u.Disabled = *req.Disabled
	}
	if req.Groups != nil {
		if err := c.checkGroups(r, *req.Groups); err != nil {
			return err
		}
		u.Groups = *req.Groups
	}
	if req.Password != nil {
		if err := auth.CheckPassword(*req.Password); err != nil {
			return badRequest("%v", err)
		}
		if u.PasswordHash, err = auth.HashPassword(*req.Password, c.cfg.Password); err != nil {
			return err
		}
	}
	if err := c.store.UpdateUser(r.Context(), u); err != nil {
		return storeErr("user "+name, err)
	}
	c.adminAudit(r, a, "admin.user.update", api.AuditEvent{User: u.Name})
	if err := c.reevaluate(r.Context(), "user "+name+" changed", a.actor()); err != nil {
		return err
	}
	if u.Disabled {
		c.devices.closeUser(u.Name)
	}
	writeJSON(w, http.StatusOK, u.User)
	return nil
}

func (c *Controller) handleUserDelete(w http.ResponseWriter, r *http.Request, a adminCaller) error {
	name := r.PathValue("name")
	if err := c.store.DeleteUser(r.Context(), name); err != nil {
		return storeErr("user "+name, err)
	}
	c.adminAudit(r, a, "admin.user.rm", api.AuditEvent{User: name})
	if err := c.reevaluate(r.Context(), "user "+name+" removed", a.actor()); err != nil {
		return err
	}
	c.devices.closeUser(name)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (c *Controller) handleGroupList(w http.ResponseWriter, r *http.Request, _ adminCaller) error {
	gs, err := c.store.Groups(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, gs)
	return nil
}

func (c *Controller) handleGroupAdd(w http.ResponseWriter, r *http.Request, a adminCaller) error {
	var req api.Group
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if err := checkName("group", req.Name); err != nil {
		return err
	}
	g := api.Group{Name: req.Name, CreatedAt: c.now()}
	if err := c.store.CreateGroup(r.Context(), g); err != nil {
		return storeErr("group "+req.Name, err)
	}
	c.adminAudit(r, a, "admin.group.add", api.AuditEvent{Reason: "group " + g.Name})
	writeJSON(w, http.StatusCreated, g)
	return nil
}

func (c *Controller) handleAppList(w http.ResponseWriter, r *http.Request, _ adminCaller) error {
	as, err := c.store.Apps(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, as)
	return nil
}

func (c *Controller) handleAppAdd(w http.ResponseWriter, r *http.Request, a adminCaller) error {
	var req api.AppCreate
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if err := checkName("app", req.Name); err != nil {
		return err
	}
	if len(req.Addresses)+len(req.Domains) == 0 {
		return badRequest("app %s: give at least one --address (IP or CIDR) or --domain", req.Name)
	}
	if len(req.Addresses) > maxListItems || len(req.Domains) > maxListItems || len(req.Ports) > maxListItems {
		return badRequest("app %s: at most %d addresses, domains and port ranges each", req.Name, maxListItems)
	}
	for _, p := range req.Addresses {
		if !p.IsValid() {
			return badRequest("app %s: invalid address", req.Name)
		}
		if p.Overlaps(overlay) {
			return badRequest("app %s: address %s overlaps the overlay %s; use the app's real site address", req.Name, p, overlay)
		}
		if p.Addr().IsUnspecified() || p.Bits() == 0 {
			return badRequest("app %s: address %s would grant everything; name the app's own prefix", req.Name, p)
		}
	}
	seen := make(map[string]bool)
	cat := c.catalog.Load()
	for _, d := range req.Domains {
		if err := checkDomain(d); err != nil {
			return err
		}
		if seen[d] {
			return badRequest("app %s: domain %s listed twice", req.Name, d)
		}
		seen[d] = true
		other, ok := cat.byDomain[d]
		if suffix, wild := strings.CutPrefix(d, "*."); wild {
			other, ok = cat.byWildcard[suffix]
		}
		if ok {
			return conflict("domain %s already belongs to app %s", d, other)
		}
	}
	if len(req.Ports) == 0 {
		return badRequest("app %s: give at least one port range, e.g. tcp/443", req.Name)
	}
	if req.GatewayGroup == "" {
		return badRequest("app %s: gateway_group is required", req.Name)
	}
	app, err := c.store.CreateApp(r.Context(), store.App{
		ID: api.AppID(auth.NewID("app")), Name: req.Name, Addresses: req.Addresses, Domains: req.Domains,
		Ports: req.Ports, GatewayGroup: req.GatewayGroup, CreatedAt: c.now(),
	})
	if errors.Is(err, store.ErrNotFound) {
		return notFound("gateway group %q does not exist; create it with keyhole admin gateway-group add %s", req.GatewayGroup, req.GatewayGroup)
	}
	if err != nil {
		return storeErr("app "+req.Name, err)
	}
	c.adminAudit(r, a, "admin.app.add", api.AuditEvent{App: app.Name})
	// A new domain can take names from a wildcard app (an exact domain or
	// a longer wildcard wins), and their grants with them.
	if len(app.Domains) > 0 {
		err = c.reevaluate(r.Context(), "app "+app.Name+" added", a.actor())
	} else {
		err = c.catalogChanged(r.Context())
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, app)
	return nil
}

func (c *Controller) handleAppDelete(w http.ResponseWriter, r *http.Request, a adminCaller) error {
	name := r.PathValue("name")
	if err := c.store.DeleteApp(r.Context(), name); err != nil {
		return storeErr("app "+name, err)
	}
	c.adminAudit(r, a, "admin.app.rm", api.AuditEvent{App: name})
	if err := c.reevaluate(r.Context(), "app "+name+" removed", a.actor()); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (c *Controller) handleGatewayGroupList(w http.ResponseWriter, r *http.Request, _ adminCaller) error {
	gs, err := c.store.GatewayGroups(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, gs)
	return nil
}

func (c *Controller) handleGatewayGroupAdd(w http.ResponseWriter, r *http.Request, a adminCaller) error {
	var req api.GatewayGroup
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if err := checkName("gateway group", req.Name); err != nil {
		return err
	}
	g := api.GatewayGroup{Name: req.Name, CreatedAt: c.now()}
	if err := c.store.CreateGatewayGroup(r.Context(), g); err != nil {
		return storeErr("gateway group "+req.Name, err)
	}
	c.adminAudit(r, a, "admin.gateway_group.add", api.AuditEvent{Reason: "gateway group " + g.Name})
	writeJSON(w, http.StatusCreated, g)
	return nil
}

func (c *Controller) handleGatewayTokenAdd(w http.ResponseWriter, r *http.Request, a adminCaller) error {
	var req api.GatewayTokenCreate
	if err := decode(w, r, &req); err != nil {
		return err
	}
	ttl := time.Duration(req.TTL)
	if ttl == 0 {
		ttl = defaultTokenTTL
	}
	if ttl < time.Second || ttl > maxTokenTTL {
		return badRequest("ttl must be between 1s and %s", maxTokenTTL)
	}
	groups, err := c.store.GatewayGroups(r.Context())
	if err != nil {
		return err
	}
	found := false
	for _, g := range groups {
		found = found || g.Name == req.Group
	}
	if !found {
		return notFound("gateway group %q does not exist; create it with keyhole admin gateway-group add %s", req.Group, req.Group)
	}
	tok, err := auth.NewToken(auth.PrefixGateway)
	if err != nil {
		return err
	}
	now := c.now()
	t := store.EnrolToken{Hash: auth.HashToken(tok.Reveal()), Group: req.Group, CreatedAt: now, ExpiresAt: now.Add(ttl)}
	if err := c.store.CreateEnrolToken(r.Context(), t); err != nil {
		return err
	}
	c.adminAudit(r, a, "admin.gateway_token.add", api.AuditEvent{Reason: "gateway group " + req.Group})
	writeJSON(w, http.StatusCreated, api.GatewayToken{Token: tok.Reveal(), Group: req.Group, ExpiresAt: t.ExpiresAt})
	return nil
}

func (c *Controller) handleGatewayList(w http.ResponseWriter, r *http.Request, _ adminCaller) error {
	gs, err := c.store.Gateways(r.Context())
	if err != nil {
		return err
	}
	for i := range gs {
		gs[i].Connected = c.hub.connected(gs[i].ID)
		if gs[i].Connected {
			live := c.hub.liveInfo(gs[i].ID)
			gs[i].Candidates, gs[i].Peers = live.candidates, live.peers
		}
	}
	writeJSON(w, http.StatusOK, gs)
	return nil
}

func (c *Controller) handlePolicyList(w http.ResponseWriter, r *http.Request, _ adminCaller) error {
	rs, err := c.store.PolicyRules(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, rs)
	return nil
}

func (c *Controller) handlePolicyAdd(w http.ResponseWriter, r *http.Request, a adminCaller) error {
	var req api.PolicyRuleCreate
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if err := policy.ValidateRule(req); err != nil {
		return badRequest("%v", err)
	}
	if len(req.Users)+len(req.Groups)+len(req.Apps) > 3*maxListItems {
		return badRequest("rule too large")
	}
	if req.Position < 0 {
		return badRequest("position must be 1 or more (0 appends)")
	}
	if err := c.checkRuleNames(r, req); err != nil {
		return err
	}
	rule, err := c.store.InsertPolicyRule(r.Context(), api.PolicyRule{
		ID: api.RuleID(auth.NewID("rule")), Position: req.Position, Action: req.Action, Users: req.Users,
		Groups: req.Groups, Apps: req.Apps, RuleConditions: req.RuleConditions, Description: req.Description, CreatedAt: c.now(),
	})
	if err != nil {
		return err
	}
	c.adminAudit(r, a, "admin.policy.add", api.AuditEvent{Rule: rule.ID})
	// A new rule can deny what was allowed (a deny inserted first).
	if err := c.reevaluate(r.Context(), "policy changed", a.actor()); err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, rule)
	return nil
}

// checkRuleNames refuses rules naming users, groups or apps that do not
// exist: a typo in a rule is a silent hole or a silent lockout.
func (c *Controller) checkRuleNames(r *http.Request, req api.PolicyRuleCreate) error {
	cat := c.catalog.Load()
	if p := req.Posture; p != "" && !slices.ContainsFunc(cat.profiles, func(x api.PostureProfile) bool { return x.Name == p }) {
		return notFound("posture profile %q does not exist (keyhole admin posture list)", p)
	}
	for _, app := range req.Apps {
		if _, ok := cat.apps[app]; !ok && app != "*" {
			return notFound("app %q does not exist (keyhole admin app list)", app)
		}
	}
	var groups []string
	for _, g := range req.Groups {
		if g != "*" {
			groups = append(groups, g)
		}
	}
	if err := c.checkGroups(r, groups); err != nil {
		return err
	}
	for _, u := range req.Users {
		if u == "*" {
			continue
		}
		if _, err := c.store.User(r.Context(), u); err != nil {
			return storeErr("user "+u, err)
		}
	}
	return nil
}

func (c *Controller) handlePolicyDelete(w http.ResponseWriter, r *http.Request, a adminCaller) error {
	id := api.RuleID(r.PathValue("id"))
	if err := c.store.DeletePolicyRule(r.Context(), id); err != nil {
		return storeErr("policy rule "+string(id), err)
	}
	c.adminAudit(r, a, "admin.policy.rm", api.AuditEvent{Rule: id})
	if err := c.reevaluate(r.Context(), "policy changed", a.actor()); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (c *Controller) handleDeviceList(w http.ResponseWriter, r *http.Request, _ adminCaller) error {
	ds, err := c.store.Devices(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, ds)
	return nil
}

// handleDeviceDelete serves DELETE /v1/devices/{id}: the device's grants
// are revoked at once (exports it made included), its sessions end, its
// event streams close, and it must enrol again to come back.
func (c *Controller) handleDeviceDelete(w http.ResponseWriter, r *http.Request, a adminCaller) error {
	id := api.DeviceID(r.PathValue("id"))
	d, err := c.store.Device(r.Context(), id)
	if err != nil {
		return storeErr("device "+string(id), err)
	}
	live, err := c.store.LiveGrants(r.Context(), c.now(), "", id)
	if err != nil {
		return err
	}
	ids := make([]api.GrantID, len(live))
	for i, g := range live {
		ids[i] = g.ID
	}
	if _, err := c.revoke(r.Context(), ids, "device "+string(id)+" removed", a.actor()); err != nil {
		return err
	}
	if err := c.store.DeleteDevice(r.Context(), id); err != nil {
		return storeErr("device "+string(id), err)
	}
	c.devices.closeDevice(id)
	c.adminAudit(r, a, "admin.device.remove", api.AuditEvent{DeviceID: id, User: d.User, Reason: fmt.Sprintf("device %s (%s) removed; %d grants revoked", id, d.Name, len(ids))})
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (c *Controller) handleDeviceUpdate(w http.ResponseWriter, r *http.Request, a adminCaller) error {
	id := api.DeviceID(r.PathValue("id"))
	var req api.DeviceUpdate
	if err := decode(w, r, &req); err != nil {
		return err
	}
	d, err := c.store.Device(r.Context(), id)
	if err != nil {
		return storeErr("device "+string(id), err)
	}
	if req.Disabled != nil {
		d.Disabled = *req.Disabled
	}
	if req.Approved != nil {
		d.Approved = *req.Approved
	}
	if err := c.store.UpdateDevice(r.Context(), d); err != nil {
		return err
	}
	if req.Disabled != nil || req.Approved == nil {
		c.adminAudit(r, a, "admin.device.update", api.AuditEvent{DeviceID: id, User: d.User})
	}
	switch {
	case req.Approved != nil && *req.Approved:
		c.adminAudit(r, a, "admin.device.approve", api.AuditEvent{DeviceID: id, User: d.User, Reason: "device approved"})
	case req.Approved != nil:
		c.adminAudit(r, a, "admin.device.unapprove", api.AuditEvent{DeviceID: id, User: d.User, Reason: "device approval withdrawn"})
	}
	if err := c.reevaluate(r.Context(), "device "+string(id)+" changed", a.actor()); err != nil {
		return err
	}
	if d.Disabled {
		c.devices.closeDevice(id)
	}
	writeJSON(w, http.StatusOK, d)
	return nil
}

func (c *Controller) handleGrantList(w http.ResponseWriter, r *http.Request, _ adminCaller) error {
	gs, err := c.store.LiveGrants(r.Context(), c.now(), "", "")
	if err != nil {
		return err
	}
	out := make([]api.Grant, len(gs))
	for i, g := range gs {
		out[i] = g.Grant
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func queryLimit(r *http.Request) (int, error) {
	s := r.URL.Query().Get("limit")
	if s == "" {
		return 100, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 10000 {
		return 0, badRequest("limit must be a number from 1 to 10000")
	}
	return n, nil
}

func (c *Controller) handleAuditList(w http.ResponseWriter, r *http.Request, _ adminCaller) error {
	limit, err := queryLimit(r)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	aq := store.AuditQuery{Type: q.Get("type"), User: q.Get("user"), App: q.Get("app"), DeviceID: api.DeviceID(q.Get("device")), Limit: limit}
	if s := q.Get("since"); s != "" {
		t, err := time.Parse(time.RFC3339, s)
		if err != nil {
			return badRequest("since: want RFC 3339 time, e.g. 2026-11-23T09:00:00Z")
		}
		aq.Since = t
	}
	evs, err := c.store.Audit(r.Context(), aq)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, evs)
	return nil
}

func (c *Controller) handleFlowList(w http.ResponseWriter, r *http.Request, _ adminCaller) error {
	limit, err := queryLimit(r)
	if err != nil {
		return err
	}
	fs, err := c.store.Flows(r.Context(), api.GrantID(r.URL.Query().Get("grant")), limit)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, fs)
	return nil
}
