package controller

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"time"

	"github.com/keyhole-net/keyhole/controller/policy"
	"github.com/keyhole-net/keyhole/controller/store"
	"github.com/keyhole-net/keyhole/internal/api"
)

// DefaultTimeCheckInterval is how often live grants under time-dependent
// rules are re-checked by default.
const DefaultTimeCheckInterval = time.Minute

// mfaAt is when the caller's session last passed MFA (zero: never). It is
// the one place the policy path reads the session's MFA time.
func (d deviceCaller) mfaAt() time.Time { return d.MFAAt }

// subject is who asks in r, with the facts of the request that rule
// conditions look at.
func (c *Controller) subject(r *http.Request, d deviceCaller) policy.Subject {
	return policy.Subject{
		User: d.user.Name, Groups: d.user.Groups,
		Time: c.now(), Source: remoteIP(r), MFAAt: d.mfaAt(),
		Device: d.device.ID, DeviceApproved: d.device.Approved, Posture: d.posture,
	}
}

// remoteIP is the client's address as the controller saw it (the TLS
// connection's remote address); invalid when it cannot be read.
func remoteIP(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// verdict is a policy decision with the facts it was made on; a grant
// keeps the facts, for re-evaluation without a request.
type verdict struct {
	policy.Decision
	sub policy.Subject
}

func (v verdict) facts() store.GrantFacts {
	return store.GrantFacts{Source: v.sub.Source, MFAAt: v.sub.MFAAt}
}

// decide is the policy decision for every grant request, renewal, export
// and re-evaluation, and for keyhole admin why: one function, so an
// explanation cannot disagree with a grant. With explain set it also
// returns the rule-by-rule account (policy.Set.Explain); without, nil.
func (c *Controller) decide(cat *catalog, sub policy.Subject, app string, explain bool) (verdict, []api.WhyRule) {
	if c.cfg.RequireDeviceApproval && !sub.DeviceApproved {
		// Before any rule: with approval required, an unapproved device
		// gets nothing, whatever the policy says.
		dec := policy.Decision{Unmet: policy.CondDeviceApproved, Reason: unapprovedReason(sub.Device)}
		var rules []api.WhyRule
		if explain {
			_, rules = cat.policy.Explain(sub, app)
			notReached(rules)
		}
		return verdict{dec, sub}, rules
	}
	if explain {
		dec, rules := cat.policy.Explain(sub, app)
		return verdict{dec, sub}, rules
	}
	return verdict{cat.policy.Evaluate(sub, app), sub}, nil
}

// notReached marks every rule of an explanation as not reached, for a
// request refused before the policy.
func notReached(rules []api.WhyRule) {
	for i := range rules {
		rules[i].Result = api.WhyNotReached
		for j := range rules[i].Conditions {
			rules[i].Conditions[j].Checked, rules[i].Conditions[j].Met = false, false
		}
	}
}

func unapprovedReason(dev api.DeviceID) string {
	if dev == "" {
		return "the controller requires an approved device (--require-device-approval), and the request names none"
	}
	return fmt.Sprintf("device %s is waiting for an admin's approval (the controller requires approved devices); ask an admin to run keyhole admin device approve %s", dev, dev)
}

// denied is the API error for a policy denial: 403 with the rule and the
// unmet conditions, so the client can act on them.
func denied(dec policy.Decision) error {
	e := errf(http.StatusForbidden, api.CodeDenied, "%s", dec.Reason)
	e.body.Rule, e.body.Unmet = dec.Rule, dec.Unmet.Names()
	return e
}

// watchTime re-checks, every TimeCheckInterval until ctx is done, the live
// grants that time alone can end (their app is under a rule with a time
// window or an MFA age), and revokes those the policy no longer allows:
// a time window closing ends access within one interval, not only at the
// next renewal.
func (c *Controller) watchTime(ctx context.Context) {
	t := time.NewTicker(c.cfg.TimeCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := c.checkTime(ctx); err != nil && ctx.Err() == nil {
				c.log.Error("time-based policy check failed; retrying at the next tick", "err", err)
			}
		}
	}
}

// checkTime is one round of watchTime.
func (c *Controller) checkTime(ctx context.Context) error {
	cat := c.catalog.Load()
	if !cat.policy.AnyTimeDependent() {
		return nil
	}
	return c.recheck(ctx, cat, "policy re-checked at "+c.now().Format(time.RFC3339), "controller", func(g store.Grant) bool {
		name, ok := cat.byID[g.AppID]
		return ok && cat.policy.TimeDependent(name)
	})
}
