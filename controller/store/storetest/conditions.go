package storetest

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/controller/store"
	"github.com/keyhole-net/keyhole/internal/api"
)

// testPolicyConditions: a rule's conditions come back as stored, and a rule
// without any comes back with none.
func testPolicyConditions(t *testing.T, s store.Store) {
	ctx := context.Background()
	withConds := api.PolicyRule{
		ID: "rule_c", Action: api.Deny, Groups: []string{"contractors"}, Apps: []string{"payroll"},
		RuleConditions: api.RuleConditions{
			MFAWithin: api.Duration(15 * time.Minute),
			TimeWindow: &api.TimeWindow{
				Days: []string{"mon-fri"}, Start: "08:00", End: "18:00", TZ: "Europe/Berlin", Outside: true,
			},
			SourceCIDRs:    []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("2001:db8::/32")},
			DeviceApproved: true,
		},
		Description: "payroll in office hours only", CreatedAt: t0,
	}
	plain := api.PolicyRule{ID: "rule_p", Action: api.Allow, Users: []string{"alice"}, Apps: []string{"*"}, CreatedAt: t0}
	for _, r := range []api.PolicyRule{withConds, plain} {
		_, err := s.InsertPolicyRule(ctx, r)
		mustOK(t, err)
	}
	rules, err := s.PolicyRules(ctx)
	mustOK(t, err)
	withConds.Position, plain.Position = 1, 2
	wantEqual(t, "rules", rules, []api.PolicyRule{withConds, plain})
}

// testDeviceApproval: Approved is stored by CreateDevice and replaced by
// UpdateDevice.
func testDeviceApproval(t *testing.T, s store.Store) {
	ctx := context.Background()
	seed(t, s)
	pending := mustDevice(t, s, "alice", "laptop")
	wantEqual(t, "new device without Approved", pending.Approved, false)
	approved, err := s.CreateDevice(ctx, store.Device{ID: "dev_ok", User: "bob", Name: "phone", WGPublicKey: wgKey(t), Approved: true, CreatedAt: t0})
	mustOK(t, err)
	got, err := s.Device(ctx, approved.ID)
	mustOK(t, err)
	wantEqual(t, "approved device", got, approved)

	pending.Approved = true
	mustOK(t, s.UpdateDevice(ctx, pending))
	got, err = s.Device(ctx, pending.ID)
	mustOK(t, err)
	wantEqual(t, "after approval", got, pending)
	approved.Approved = false
	mustOK(t, s.UpdateDevice(ctx, approved))
	got, err = s.Device(ctx, approved.ID)
	mustOK(t, err)
	wantEqual(t, "after withdrawing approval", got.Approved, false)
}

// testGrantFacts: a grant keeps the facts it was allowed on; a renewal
// replaces them, an unknown source and a session without MFA included.
func testGrantFacts(t *testing.T, s store.Store) {
	ctx := context.Background()
	seed(t, s)
	dev := mustDevice(t, s, "alice", "laptop")
	g := grantFixture(t, "grt_f", dev, "gw_1", t0.Add(10*time.Minute))
	g.Facts = store.GrantFacts{Source: netip.MustParseAddr("198.51.100.7"), MFAAt: t0.Add(-3 * time.Minute)}
	mustOK(t, s.CreateGrant(ctx, g, allowEvent(g.ID)))
	got, err := s.Grant(ctx, g.ID)
	mustOK(t, err)
	wantEqual(t, "created", got.Facts, g.Facts)
	live, err := s.LiveGrants(ctx, t0, "", dev.ID)
	mustOK(t, err)
	wantEqual(t, "live", live, []store.Grant{g})

	for _, f := range []store.GrantFacts{
		{Source: netip.MustParseAddr("2001:db8::5"), MFAAt: t0.Add(time.Minute)},
		{},
	} {
		mustOK(t, s.RenewGrant(ctx, g.ID, t0.Add(20*time.Minute), f, api.AuditEvent{Time: t0, Type: "grant.renew", GrantID: g.ID}))
		got, err = s.Grant(ctx, g.ID)
		mustOK(t, err)
		wantEqual(t, "renewed", got.Facts, f)
	}
}
