package controller

import (
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"time"

	"github.com/keyhole-net/keyhole/controller/policy"
	"github.com/keyhole-net/keyhole/internal/api"
)

// handleWhy serves GET /v1/why?user=&app=&device=&source=&at=&mfa_at=
// (admin): how the controller decides the grant request those facts
// describe, rule by rule. The decision comes from decide, as a grant's
// does; facts not given are unknown, and conditions on them fail, as they
// would for a request that lacked them.
func (c *Controller) handleWhy(w http.ResponseWriter, r *http.Request, _ adminCaller) error {
	q := r.URL.Query()
	userName, dest := q.Get("user"), q.Get("app")
	if userName == "" || dest == "" {
		return badRequest("give user and app, e.g. GET /v1/why?user=alice&app=wiki (optional: device, source, at, mfa_at)")
	}
	u, err := c.store.User(r.Context(), userName)
	if err != nil {
		return storeErr("user "+userName, err)
	}
	out := api.Why{User: u.Name, Groups: u.Groups, App: dest, At: c.now()}
	if out.Groups == nil {
		out.Groups = []string{}
	}
	var refused string // why the grant path would refuse before the policy
	if u.Disabled {
		refused = fmt.Sprintf("user %s is disabled; ask an admin", u.Name)
	}
	sub := policy.Subject{User: u.Name, Groups: u.Groups}
	if id := q.Get("device"); id != "" {
		dv, err := c.store.Device(r.Context(), api.DeviceID(id))
		if err != nil {
			return storeErr("device "+id, err)
		}
		if dv.User != u.Name {
			return badRequest("device %s belongs to user %s, not %s", dv.ID, dv.User, u.Name)
		}
		if dv.Disabled && refused == "" {
			refused = fmt.Sprintf("device %s is disabled; ask an admin", dv.ID)
		}
		sub.Device, sub.DeviceApproved, out.DeviceID = dv.ID, dv.Approved, dv.ID
		// The device's latest report, as a renewal without one would be
		// judged on it (within the maximum age, which why does not apply).
		sub.Posture = dv.Posture
	}
	if s := q.Get("source"); s != "" {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return badRequest("source %q: want an IP address, e.g. 198.51.100.7", s)
		}
		sub.Source = ip.Unmap()
		out.Source = sub.Source
	}
	if s := q.Get("at"); s != "" {
		t, err := time.Parse(time.RFC3339, s)
		if err != nil {
			return badRequest("at %q: want an RFC 3339 time, e.g. 2026-11-23T09:00:00+01:00", s)
		}
		out.At = t.UTC()
	}
	sub.Time = out.At
	switch s := q.Get("mfa_at"); s {
	case "", "never":
	default:
		t, err := time.Parse(time.RFC3339, s)
		if err != nil {
			return badRequest("mfa_at %q: want an RFC 3339 time or never", s)
		}
		sub.MFAAt, out.MFAAt = t.UTC(), t.UTC()
	}

	cat := c.catalog.Load()
	app := dest
	m, ok, err := cat.resolveDest(dest, c.names.nameOf)
	switch {
	case err != nil:
		return err
	case ok:
		app, out.App = m.app.Name, m.app.Name
	case refused == "":
		refused = fmt.Sprintf("no app matches %q; ask an admin which apps exist (keyhole admin app list)", dest)
	}
	dec, rules := c.decide(cat, sub, app, true)
	out.Allow, out.Rule, out.Reason, out.Unmet, out.Rules = dec.Allow, dec.Rule, dec.Reason, dec.Unmet.Names(), rules
	if refused != "" {
		out.Allow, out.Rule, out.Reason, out.Unmet = false, "", refused, nil
		notReached(out.Rules)
	}
	out.Notes = whyNotes(q.Get("device"), q.Get("source"), q.Get("mfa_at"), out.Rules, c.cfg.RequireDeviceApproval)
	writeJSON(w, http.StatusOK, out)
	return nil
}

// whyNotes says which facts a why query left out that the rules (or the
// device approval setting) would have looked at.
func whyNotes(device, source, mfaAt string, rules []api.WhyRule, approvalRequired bool) []string {
	uses := func(cond string) bool {
		return slices.ContainsFunc(rules, func(r api.WhyRule) bool {
			return r.Result != api.WhyOtherApp && slices.ContainsFunc(r.Conditions, func(c api.WhyCondition) bool { return c.Name == cond })
		})
	}
	var notes []string
	if device == "" && (approvalRequired || uses(api.CondDeviceApproved)) {
		notes = append(notes, "no device given: taken as not approved (give device=ID)")
	}
	if source == "" && uses(api.CondSourceCIDRs) {
		notes = append(notes, "no source given: source conditions fail (give source=IP)")
	}
	if device == "" && uses(api.CondPosture) {
		notes = append(notes, "no device given: no posture report, posture conditions fail (give device=ID)")
	}
	if mfaAt == "" && uses(api.CondMFAWithin) {
		notes = append(notes, "no mfa_at given: taken as a session without MFA (give mfa_at=RFC3339)")
	}
	return notes
}
