package controller

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/keyhole-net/keyhole/controller/policy"
	"github.com/keyhole-net/keyhole/controller/store"
	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/trust"
)

// Posture defaults.
const (
	// DefaultPostureMaxAge is how old a posture report may be when it
	// arrives, and how long a device's stored report stands in for a
	// request that carries none.
	DefaultPostureMaxAge = 10 * time.Minute
	// DefaultPostureInterval is how often clients are told to collect
	// their posture again and report a change.
	DefaultPostureInterval = time.Minute
	// postureClockSkew is how far ahead of the controller's clock a
	// device's collection time may be.
	postureClockSkew = time.Minute
	// Bounds on what a report may hold.
	maxPostureChecks = 64
	maxPostureString = 256
)

// postureRefused is the error for a posture report the controller does not
// accept: 403, with what to do. Every refusal is logged and audited.
func (c *Controller) postureRefused(ctx context.Context, d deviceCaller, source, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	c.log.Warn("posture report refused", "user", d.user.Name, "device_id", d.device.ID, "source", source, "reason", msg)
	c.audit(ctx, api.AuditEvent{Type: "posture.refused", Actor: d.actor(), User: d.user.Name, DeviceID: d.device.ID, Source: source, Reason: msg})
	return errf(http.StatusForbidden, api.CodePostureRefused, "posture report refused: %s", msg)
}

// posture returns the posture a request is judged on. A request that
// carries a report (sp) must carry a good one: signed by the key of the
// device certificate the request came with, naming that device, collected
// recently and not before the device's latest report; otherwise the whole
// request is refused. The accepted report becomes the device's latest
// (audited when it changed). A request without a report is judged on the
// device's latest one while that is younger than the maximum age, and on
// none (posture conditions fail) after.
func (c *Controller) posture(r *http.Request, d *deviceCaller, sp *api.SignedPosture) error {
	now := c.now()
	if sp == nil {
		if p := d.device.Posture; p != nil && now.Sub(d.device.PostureAt) <= c.cfg.PostureMaxAge {
			d.posture = p
		}
		return nil
	}
	ctx, source := r.Context(), remoteAddr(r)
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return unauthorized("a device certificate is required")
	}
	p, err := trust.VerifyPosture(*sp, r.TLS.PeerCertificates[0].PublicKey)
	switch {
	case errors.Is(err, trust.ErrPostureSignature):
		return c.postureRefused(ctx, *d, source, "not signed by the key of device %s", d.device.ID)
	case err != nil:
		return c.postureRefused(ctx, *d, source, "%v", err)
	}
	if p.DeviceID != d.device.ID {
		return c.postureRefused(ctx, *d, source, "the report is device %q's, and this is device %s", p.DeviceID, d.device.ID)
	}
	if err := validPosture(&p); err != nil {
		return c.postureRefused(ctx, *d, source, "%v", err)
	}
	switch age := now.Sub(p.CollectedAt); {
	case age < -postureClockSkew:
		return c.postureRefused(ctx, *d, source, "collected at %s, %s ahead of the controller's clock; set the device's clock right", p.CollectedAt.Format(time.RFC3339), (-age).Round(time.Second))
	case age > c.cfg.PostureMaxAge:
		return c.postureRefused(ctx, *d, source, "collected %s ago, the limit is %s; the client must send a fresh report", age.Round(time.Second), c.cfg.PostureMaxAge)
	}
	prev := d.device.Posture
	if prev != nil && prev.CollectedAt.Equal(p.CollectedAt) && !postureChanged(*prev, p) {
		// The report the device already gave (clients send their latest
		// with every request): nothing to store on the grant path.
		d.posture = prev
		return nil
	}
	err = c.store.SetDevicePosture(ctx, d.device.ID, p, now)
	if errors.Is(err, store.ErrConflict) {
		return c.postureRefused(ctx, *d, source, "older than the device's latest report (a replay?)")
	}
	if err != nil {
		return fmt.Errorf("store posture: %w", err)
	}
	if prev == nil || postureChanged(*prev, p) {
		c.audit(ctx, api.AuditEvent{Type: "device.posture", Actor: d.actor(), User: d.user.Name, DeviceID: d.device.ID, Source: source, Reason: postureSummary(p)})
		c.log.Info("device posture", "user", d.user.Name, "device_id", d.device.ID, "posture", postureSummary(p))
	}
	d.device.Posture, d.device.PostureAt, d.posture = &p, now, &p
	return nil
}

// validPosture bounds what a report may hold and checks its facts are
// facts: it is input from the network, and it ends up in logs and audit.
func validPosture(p *api.Posture) error {
	if p.CollectedAt.IsZero() {
		return errors.New("collected_at is missing")
	}
	for name, f := range map[string]api.Fact{"disk_encryption": p.DiskEncryption, "firewall": p.Firewall, "screen_lock": p.ScreenLock} {
		if !f.Valid() {
			return fmt.Errorf("%s: %q is not yes, no or unknown", name, f)
		}
	}
	if len(p.Checks) > maxPostureChecks {
		return fmt.Errorf("%d check results, the limit is %d", len(p.Checks), maxPostureChecks)
	}
	if len(p.Details) > 16 {
		return fmt.Errorf("%d details, the limit is 16", len(p.Details))
	}
	strs := []string{p.OS, p.OSVersion, p.Kernel, p.ClientVersion}
	for k, v := range p.Details {
		strs = append(strs, k, v)
	}
	for _, cr := range p.Checks {
		if !cr.Pass.Valid() {
			return fmt.Errorf("check %q: pass %q is not yes, no or unknown", cr.Name, cr.Pass)
		}
		strs = append(strs, cr.Name, cr.Detail)
	}
	for _, s := range strs {
		if len(s) > maxPostureString || !utf8.ValidString(s) || strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			return fmt.Errorf("a value is over %d bytes, not UTF-8 or holds a control character", maxPostureString)
		}
	}
	return nil
}

// postureChanged reports whether two reports differ in anything policy
// looks at (not in when they were collected, nor in the wording of
// details). It does not modify either.
func postureChanged(a, b api.Posture) bool {
	return !slices.EqualFunc(a.Checks, b.Checks, func(x, y api.CheckResult) bool { return x.Name == y.Name && x.Pass == y.Pass }) ||
		a.OS != b.OS || a.OSVersion != b.OSVersion || a.Kernel != b.Kernel || a.ClientVersion != b.ClientVersion ||
		a.DiskEncryption != b.DiskEncryption || a.Firewall != b.Firewall || a.ScreenLock != b.ScreenLock
}

// postureSummary is a report on one line, for audit and logs: "linux
// Debian GNU/Linux 13 (trixie) 6.12.48, client 0.7.0, disk encryption yes,
// firewall no, screen lock unknown, edr yes".
func postureSummary(p api.Posture) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s %s, client %s, disk encryption %s, firewall %s, screen lock %s",
		p.OS, p.OSVersion, p.Kernel, p.ClientVersion, p.DiskEncryption, p.Firewall, p.ScreenLock)
	for _, cr := range p.Checks {
		fmt.Fprintf(&b, ", %s %s", cr.Name, cr.Pass)
	}
	return b.String()
}

// handleDevicePosture serves POST /v1/device/posture: the client reports a
// changed posture. The controller stores it and re-checks the device's
// live grants at once, revoking those it no longer allows (the client
// hears why on its event stream).
func (c *Controller) handleDevicePosture(w http.ResponseWriter, r *http.Request, d deviceCaller) error {
	var sp api.SignedPosture
	if err := decode(w, r, &sp); err != nil {
		return err
	}
	if err := c.posture(r, &d, &sp); err != nil {
		return err
	}
	if err := c.recheck(r.Context(), c.catalog.Load(), "posture changed", d.actor(), func(g store.Grant) bool {
		return g.DeviceID == d.device.ID
	}); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// handlePostureChecks serves GET /v1/device/posture/checks: every check of
// every posture profile, for the client to run.
func (c *Controller) handlePostureChecks(w http.ResponseWriter, r *http.Request, _ deviceCaller) error {
	writeJSON(w, http.StatusOK, api.PostureChecks{Checks: c.catalog.Load().checks, Interval: api.Duration(c.cfg.PostureInterval)})
	return nil
}

// profileChecks is the union of the profiles' checks, by name. A name
// means one check everywhere (the admin API refuses a profile that
// redefines one), so the first definition stands.
func profileChecks(profiles []api.PostureProfile) []api.PostureCheck {
	out := []api.PostureCheck{}
	for _, p := range profiles {
		for _, ch := range p.Checks {
			if !slices.ContainsFunc(out, func(o api.PostureCheck) bool { return o.Name == ch.Name }) {
				out = append(out, ch)
			}
		}
	}
	slices.SortFunc(out, func(a, b api.PostureCheck) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// --- Admin ------------------------------------------------------------------

func (c *Controller) handlePostureList(w http.ResponseWriter, r *http.Request, _ adminCaller) error {
	ps, err := c.store.PostureProfiles(r.Context())
	if err != nil {
		return err
	}
	if ps == nil {
		ps = []api.PostureProfile{}
	}
	writeJSON(w, http.StatusOK, ps)
	return nil
}

// handlePostureAdd serves POST /v1/posture (create) and
// PUT /v1/posture/{name} (replace). A replaced profile takes effect at
// once: live grants are re-checked against it.
func (c *Controller) handlePostureAdd(w http.ResponseWriter, r *http.Request, a adminCaller) error {
	var p api.PostureProfile
	if err := decode(w, r, &p); err != nil {
		return err
	}
	replace := r.Method == http.MethodPut
	if replace && p.Name == "" {
		p.Name = r.PathValue("name")
	}
	if replace && p.Name != r.PathValue("name") {
		return badRequest("the body names profile %q and the URL %q", p.Name, r.PathValue("name"))
	}
	if err := policy.ValidateProfile(p); err != nil {
		return badRequest("%v", err)
	}
	if err := c.checkProfileChecks(p); err != nil {
		return err
	}
	typ := "admin.posture.add"
	if replace {
		typ = "admin.posture.update"
		if err := c.store.UpdatePostureProfile(r.Context(), p); err != nil {
			return storeErr("posture profile "+p.Name, err)
		}
	} else if err := c.store.CreatePostureProfile(r.Context(), p); err != nil {
		return storeErr("posture profile "+p.Name, err)
	}
	c.adminAudit(r, a, typ, api.AuditEvent{Reason: p.Name + ": " + p.String()})
	if err := c.reevaluate(r.Context(), "posture profile "+p.Name+" changed", a.actor()); err != nil {
		return err
	}
	c.devices.broadcast(api.DeviceEvent{Type: api.DeviceEventPostureChanged, Time: c.now()})
	c.broadcast(kindCatalogChanged, catalogNote{Posture: true})
	status := http.StatusCreated
	if replace {
		status = http.StatusOK
	}
	writeJSON(w, status, p)
	return nil
}

// checkProfileChecks refuses a check name that another profile defines
// differently: clients run each named check once.
func (c *Controller) checkProfileChecks(p api.PostureProfile) error {
	for _, ch := range p.Checks {
		for _, o := range c.catalog.Load().profiles {
			if o.Name == p.Name {
				continue
			}
			if i := slices.IndexFunc(o.Checks, func(x api.PostureCheck) bool { return x.Name == ch.Name }); i >= 0 && o.Checks[i] != ch {
				return errf(http.StatusConflict, api.CodeConflict, "check %q is defined differently in profile %s (%s); use another name or the same definition", ch.Name, o.Name, o.Checks[i])
			}
		}
	}
	return nil
}

func (c *Controller) handlePostureDelete(w http.ResponseWriter, r *http.Request, a adminCaller) error {
	name := r.PathValue("name")
	rules, err := c.store.PolicyRules(r.Context())
	if err != nil {
		return err
	}
	for _, rule := range rules {
		if rule.Posture == name {
			return errf(http.StatusConflict, api.CodeConflict, "policy rule #%d (%s) requires posture profile %s; remove the rule first", rule.Position, rule.ID, name)
		}
	}
	if err := c.store.DeletePostureProfile(r.Context(), name); err != nil {
		return storeErr("posture profile "+name, err)
	}
	c.adminAudit(r, a, "admin.posture.delete", api.AuditEvent{Reason: name})
	if err := c.catalogChanged(r.Context()); err != nil {
		return err
	}
	c.devices.broadcast(api.DeviceEvent{Type: api.DeviceEventPostureChanged, Time: c.now()})
	c.broadcast(kindCatalogChanged, catalogNote{Posture: true})
	w.WriteHeader(http.StatusNoContent)
	return nil
}
