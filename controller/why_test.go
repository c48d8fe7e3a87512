package controller

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/controller/auth"
	"github.com/keyhole-net/keyhole/controller/store"
	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/apiclient"
)

// policyClock is a controller clock a test sets to any time.
type policyClock struct{ unixNano atomic.Int64 }

func (c *policyClock) Now() time.Time  { return time.Unix(0, c.unixNano.Load()).UTC() }
func (c *policyClock) Set(t time.Time) { c.unixNano.Store(t.UnixNano()) }

// newClockEnv starts a controller whose clock starts at start and moves
// only when the test sets it. Certificates, sessions and grants live two
// years, so that everything made at start stays valid at any time the test
// sets after it; the clock must not go more than a few minutes past the
// real time (the TLS stacks check certificates against the real time).
func newClockEnv(t *testing.T, start time.Time, cfg Config) (*testEnv, *policyClock) {
	t.Helper()
	clock := &policyClock{}
	clock.Set(start)
	const long = 2 * 365 * 24 * time.Hour
	cfg.Now, cfg.CertLifetime, cfg.SessionLifetime = clock.Now, long, long
	if cfg.GrantLifetime == 0 {
		cfg.GrantLifetime = long
	}
	return newTestEnv(t, cfg, 0), clock
}

var berlinTZ = func() *time.Location {
	loc, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		panic(err)
	}
	return loc
}()

// whyCase is one request: what keyhole admin why says about it, and what a
// grant request with the same facts gets.
type whyCase struct {
	name   string
	user   string
	device string // key into the devices map; "" is user's own
	app    string
	at     time.Time
	// mfaAge is how old the session's MFA is; 0 means no MFA.
	mfaAge time.Duration
	// source is what why is told; "" means the loopback address real
	// requests come from.
	source string

	wantAllow bool
	wantPos   int      // deciding (or unmet allow) rule, 0 for none
	wantUnmet []string // conditions the denial names
	wantCode  string   // for a refusal before the policy: the grant's error code
}

// TestWhyMatchesGrants is acceptance 5 of issue 5: for a table of requests,
// GET /v1/why gives the expected decision, and a real grant request with
// the same facts (user, device, time, source, MFA age) through the API is
// allowed or denied exactly as why said, with the same rule, reason and
// unmet conditions.
func TestWhyMatchesGrants(t *testing.T) {
	realNow := time.Now()
	start := realNow.Add(-300 * 24 * time.Hour).Truncate(time.Minute)
	e, clock := newClockEnv(t, start, Config{})
	ctx := context.Background()
	a := e.admin
	e.must(a.AddGatewayGroup(ctx, "site"))
	for _, g := range []string{"eng", "contractors", "ops"} {
		e.must(a.AddGroup(ctx, g))
	}
	users := map[string][]string{"alice": {"eng"}, "bob": {"contractors"}, "carol": {"ops"}, "dave": nil, "mallory": {"eng"}, "erin": {"eng"}}
	for name, groups := range users {
		e.must(a.AddUser(ctx, api.UserCreate{Name: name, Password: testPassword, Groups: groups}))
	}
	tcp443 := []api.PortRange{{Proto: "tcp", First: 443, Last: 443}}
	for _, app := range []string{"wiki", "payroll", "db", "lab", "night", "dst"} {
		e.must(a.AddApp(ctx, api.AppCreate{Name: app, Domains: []string{app + ".corp.internal"}, Ports: tcp443, GatewayGroup: "site"}))
	}
	office := api.TimeWindow{Days: []string{"mon-fri"}, Start: "08:00", End: "18:00", TZ: "Europe/Berlin"}
	outside := office
	outside.Outside = true
	rules := []api.PolicyRuleCreate{
		{Action: api.Deny, Users: []string{"mallory"}, Apps: []string{"*"}},
		{Action: api.Deny, Groups: []string{"contractors"}, Apps: []string{"payroll"}, RuleConditions: api.RuleConditions{TimeWindow: &outside}},
		{Action: api.Allow, Groups: []string{"eng"}, Apps: []string{"payroll"}, RuleConditions: api.RuleConditions{MFAWithin: api.Duration(15 * time.Minute)}},
		{Action: api.Allow, Groups: []string{"eng", "contractors"}, Apps: []string{"wiki"}, RuleConditions: api.RuleConditions{TimeWindow: &office}},
		{Action: api.Allow, Groups: []string{"ops"}, Apps: []string{"night"}, RuleConditions: api.RuleConditions{
			TimeWindow: &api.TimeWindow{Days: []string{"fri"}, Start: "22:00", End: "06:00", TZ: "Europe/Berlin"}}},
		{Action: api.Allow, Groups: []string{"eng"}, Apps: []string{"db"}, RuleConditions: api.RuleConditions{
			SourceCIDRs: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, DeviceApproved: true}},
		{Action: api.Allow, Groups: []string{"eng"}, Apps: []string{"lab"}, RuleConditions: api.RuleConditions{
			SourceCIDRs: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}}},
		{Action: api.Allow, Users: []string{"dave"}, Apps: []string{"dst"}, RuleConditions: api.RuleConditions{
			TimeWindow: &api.TimeWindow{Start: "01:00", End: "03:00", TZ: "Europe/Berlin"}}},
		{Action: api.Allow, Groups: []string{"contractors"}, Apps: []string{"payroll"}},
		{Action: api.Allow, Users: []string{"dave"}, Apps: []string{"wiki"}},
	}
	ruleIDs := make([]api.RuleID, len(rules)+1) // by position
	for i, r := range rules {
		got, err := a.AddPolicy(ctx, r)
		if err != nil {
			t.Fatalf("rule %d: %v", i+1, err)
		}
		ruleIDs[got.Position] = got.ID
	}
	e.addGateway("site")

	devices := map[string]*testDevice{}
	for name := range users {
		devices[name] = e.login(name)
	}
	devices["alice-unapproved"] = e.login("alice")
	yes, no := true, false
	e.must(a.UpdateDevice(ctx, devices["alice-unapproved"].id, api.DeviceUpdate{Approved: &no}))
	e.must(a.UpdateUser(ctx, "erin", api.UserUpdate{Disabled: &yes}))

	// week is a day of a week in Berlin a week after start: 0 is Monday.
	monday := start.In(berlinTZ).AddDate(0, 0, 7)
	for monday.Weekday() != time.Monday {
		monday = monday.AddDate(0, 0, 1)
	}
	week := func(day int, hhmm string) time.Time {
		var h, m int
		if _, err := fmt.Sscanf(hhmm, "%d:%d", &h, &m); err != nil {
			t.Fatal(err)
		}
		return time.Date(monday.Year(), monday.Month(), monday.Day()+day, h, m, 0, 0, berlinTZ)
	}
	const (
		mon, wed, thu, fri, sat, sun = 0, 2, 3, 4, 5, 6
	)
	utc := func(s string) time.Time {
		v, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	mfa, tw, src, dev := []string{api.CondMFAWithin}, []string{api.CondTimeWindow}, []string{api.CondSourceCIDRs}, []string{api.CondDeviceApproved}
	cases := []whyCase{
		{name: "deny before allow", user: "mallory", app: "wiki", at: week(mon, "10:00"), wantPos: 1},
		{name: "deny before allow despite fresh MFA", user: "mallory", app: "payroll", at: week(mon, "10:00"), mfaAge: time.Minute, wantPos: 1},
		{name: "MFA never", user: "alice", app: "payroll", at: week(mon, "10:00"), wantPos: 3, wantUnmet: mfa},
		{name: "MFA fresh", user: "alice", app: "payroll", at: week(mon, "10:00"), mfaAge: 5 * time.Minute, wantAllow: true, wantPos: 3},
		{name: "MFA stale", user: "alice", app: "payroll", at: week(mon, "10:00"), mfaAge: 20 * time.Minute, wantPos: 3, wantUnmet: mfa},
		{name: "conditional deny not holding lets a later allow decide", user: "bob", app: "payroll", at: week(mon, "10:00"), wantAllow: true, wantPos: 9},
		{name: "conditional deny holding on Saturday", user: "bob", app: "payroll", at: week(sat, "10:00"), wantPos: 2},
		{name: "conditional deny holding in the evening", user: "bob", app: "payroll", at: week(mon, "19:00"), wantPos: 2},
		{name: "conditional deny holding a minute before opening", user: "bob", app: "payroll", at: week(mon, "07:59"), wantPos: 2},
		{name: "conditional deny not holding at opening", user: "bob", app: "payroll", at: week(mon, "08:00"), wantAllow: true, wantPos: 9},
		{name: "office hours", user: "alice", app: "wiki", at: week(mon, "10:00"), wantAllow: true, wantPos: 4},
		{name: "office hours, Saturday", user: "alice", app: "wiki", at: week(sat, "10:00"), wantPos: 4, wantUnmet: tw},
		{name: "office hours end is exclusive", user: "alice", app: "wiki", at: week(fri, "18:00"), wantPos: 4, wantUnmet: tw},
		{name: "office hours, last minute", user: "alice", app: "wiki", at: week(fri, "17:59"), wantAllow: true, wantPos: 4},
		{name: "office hours, second group", user: "bob", app: "wiki", at: week(wed, "12:00"), wantAllow: true, wantPos: 4},
		{name: "user rule after another group's window", user: "dave", app: "wiki", at: week(sat, "10:00"), wantAllow: true, wantPos: 10},
		{name: "night shift, Friday 23:00", user: "carol", app: "night", at: week(fri, "23:00"), wantAllow: true, wantPos: 5},
		{name: "night shift after midnight", user: "carol", app: "night", at: week(sat, "05:30"), wantAllow: true, wantPos: 5},
		{name: "night shift ends at 06:00", user: "carol", app: "night", at: week(sat, "06:00"), wantPos: 5, wantUnmet: tw},
		{name: "night shift not yet", user: "carol", app: "night", at: week(fri, "21:59"), wantPos: 5, wantUnmet: tw},
		{name: "night shift, Thursday", user: "carol", app: "night", at: week(thu, "23:00"), wantPos: 5, wantUnmet: tw},
		{name: "night shift, Saturday night", user: "carol", app: "night", at: week(sun, "01:00"), wantPos: 5, wantUnmet: tw},
		{name: "source inside, approved device", user: "alice", app: "db", at: week(mon, "10:00"), wantAllow: true, wantPos: 6},
		{name: "unapproved device", user: "alice", device: "alice-unapproved", app: "db", at: week(mon, "10:00"), wantPos: 6, wantUnmet: dev},
		{name: "source outside", user: "alice", app: "lab", at: week(mon, "10:00"), wantPos: 7, wantUnmet: src},
		{name: "source inside (why only: requests come from loopback)", user: "alice", app: "lab", at: week(mon, "10:00"), source: "198.51.100.7", wantAllow: true, wantPos: 7},
		{name: "DST spring, 01:30 CET", user: "dave", app: "dst", at: utc("2026-03-29T00:30:00Z"), wantAllow: true, wantPos: 8},
		{name: "DST spring, 02:00 CET is 03:00 CEST", user: "dave", app: "dst", at: utc("2026-03-29T01:00:00Z"), wantPos: 8, wantUnmet: tw},
		{name: "DST fall, first 02:30 (CEST)", user: "dave", app: "dst", at: utc("2026-10-25T00:30:00Z"), wantAllow: true, wantPos: 8},
		{name: "DST fall, second 02:30 (CET)", user: "dave", app: "dst", at: utc("2026-10-25T01:30:00Z"), wantAllow: true, wantPos: 8},
		{name: "DST fall, 03:00 CET", user: "dave", app: "dst", at: utc("2026-10-25T02:00:00Z"), wantPos: 8, wantUnmet: tw},
		{name: "default deny, no groups", user: "dave", app: "payroll", at: week(mon, "10:00")},
		{name: "default deny, other group", user: "carol", app: "wiki", at: week(mon, "10:00")},
		{name: "disabled user", user: "erin", app: "wiki", at: week(mon, "10:00"), wantCode: api.CodeForbidden},
		{name: "unknown app", user: "alice", app: "nosuch.corp.internal", at: week(mon, "10:00"), wantCode: api.CodeNotFound},
	}
	if len(cases) < 30 {
		t.Fatalf("only %d cases", len(cases))
	}
	grantsChecked := 0
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := devices[tc.user]
			if tc.device != "" {
				d = devices[tc.device]
			}
			q := apiclient.WhyQuery{User: tc.user, App: tc.app, Device: d.id, Source: tc.source, At: tc.at, MFAAt: "never"}
			if q.Source == "" {
				q.Source = "127.0.0.1"
			}
			if tc.mfaAge > 0 {
				q.MFAAt = tc.at.Add(-tc.mfaAge).Format(time.RFC3339)
			}
			why, err := a.Why(ctx, q)
			if err != nil {
				t.Fatalf("why: %v", err)
			}
			var wantRule api.RuleID
			if tc.wantPos > 0 {
				wantRule = ruleIDs[tc.wantPos]
			}
			if why.Allow != tc.wantAllow || why.Rule != wantRule || !slices.Equal(why.Unmet, tc.wantUnmet) {
				t.Fatalf("why: allow %v rule %q unmet %v (%s); want allow %v rule %q (#%d) unmet %v",
					why.Allow, why.Rule, why.Unmet, why.Reason, tc.wantAllow, wantRule, tc.wantPos, tc.wantUnmet)
			}
			checkWhyTrace(t, why, tc.wantCode != "")
			if tc.source != "" || tc.at.Before(start) || tc.at.After(realNow) {
				return // no real request can have these facts
			}
			clock.Set(tc.at)
			var mfaAt time.Time
			if tc.mfaAge > 0 {
				mfaAt = tc.at.Add(-tc.mfaAge)
			}
			d.withSession(e, mfaAt)
			_, err = d.grant(tc.app)
			grantsChecked++
			if why.Allow {
				if err != nil {
					t.Fatalf("why allows (%s), the grant request got %v", why.Reason, err)
				}
				return
			}
			var ae *api.Error
			if !errors.As(err, &ae) {
				t.Fatalf("why denies (%s), the grant request got %v", why.Reason, err)
			}
			wantCode := tc.wantCode
			if wantCode == "" {
				wantCode = api.CodeDenied
			}
			if ae.Code != wantCode || ae.Message != why.Reason || ae.Rule != why.Rule || !slices.Equal(ae.Unmet, why.Unmet) {
				t.Fatalf("grant refused with %s %q rule %q unmet %v\nwhy said %q rule %q unmet %v",
					ae.Code, ae.Message, ae.Rule, ae.Unmet, why.Reason, why.Rule, why.Unmet)
			}
		})
	}
	t.Logf("%d cases, %d of them checked against real grant requests", len(cases), grantsChecked)
	if grantsChecked < 30 {
		t.Errorf("only %d cases checked against grants", grantsChecked)
	}
}

// checkWhyTrace checks that a why answer's rules agree with its decision.
func checkWhyTrace(t *testing.T, why api.Why, refused bool) {
	t.Helper()
	decided := slices.IndexFunc(why.Rules, func(r api.WhyRule) bool { return r.Result == api.WhyDecided })
	switch {
	case refused:
		for _, r := range why.Rules {
			if r.Result != api.WhyNotReached {
				t.Errorf("refused before the policy, yet rule #%d is %s", r.Position, r.Result)
			}
		}
	case why.Rule != "" && len(why.Unmet) == 0:
		if decided < 0 || why.Rules[decided].ID != why.Rule {
			t.Errorf("decided by %s; rules %+v", why.Rule, why.Rules)
		}
	case decided >= 0:
		t.Errorf("no rule decided, yet rule #%d says so", why.Rules[decided].Position)
	}
	for _, r := range why.Rules {
		if r.ID == why.Rule && len(why.Unmet) > 0 {
			var unmet []string
			for _, c := range r.Conditions {
				if c.Checked && !c.Met {
					unmet = append(unmet, c.Name)
				}
			}
			if r.Result != api.WhyUnmet || !slices.Equal(unmet, why.Unmet) {
				t.Errorf("denial names %v of %s, whose trace is %+v", why.Unmet, r.ID, r)
			}
		}
	}
}

// withSession gives d a new session of its device, made now, whose last
// MFA was at mfaAt (zero: none), as a login would have made it, and
// returns d.
func (d *testDevice) withSession(e *testEnv, mfaAt time.Time) *testDevice {
	d.t.Helper()
	tok, err := auth.NewToken(auth.PrefixSession)
	if err != nil {
		d.t.Fatal(err)
	}
	dev, err := e.c.store.Device(context.Background(), d.id)
	if err != nil {
		d.t.Fatal(err)
	}
	now := e.c.now()
	if err := e.c.store.CreateSession(context.Background(), store.Session{
		Hash: auth.HashToken(tok.Reveal()), DeviceID: d.id, User: dev.User, CreatedAt: now, ExpiresAt: now.Add(e.cfg.SessionLifetime), MFAAt: mfaAt,
	}); err != nil {
		d.t.Fatal(err)
	}
	d.api.SetBearer(tok.Reveal())
	return d
}

// TestTimeWindowRevokesLiveGrant: when a rule's time window closes, the
// controller's timer revokes the live grant it allowed, tells the device
// why on its event stream, audits it, and the gateway drops the grant.
func TestTimeWindowRevokesLiveGrant(t *testing.T) {
	now := time.Now().UTC().Truncate(time.Minute)
	e, clock := newClockEnv(t, now, Config{GrantLifetime: time.Hour, TimeCheckInterval: 20 * time.Millisecond})
	ctx := context.Background()
	gw := e.setupCorp()
	// The catch-all rule of setupCorp goes; wiki is open for eng from an
	// hour ago until ten minutes from now (UTC, crossing midnight if need be).
	rules, err := e.admin.Policies(ctx)
	if err != nil {
		t.Fatal(err)
	}
	e.must(nil, e.admin.RemovePolicy(ctx, rules[0].ID))
	w := api.TimeWindow{Start: now.Add(-time.Hour).Format("15:04"), End: now.Add(10 * time.Minute).Format("15:04"), TZ: "UTC"}
	e.must(e.admin.AddPolicy(ctx, api.PolicyRuleCreate{Action: api.Allow, Groups: []string{"eng"}, Apps: []string{"wiki"}, RuleConditions: api.RuleConditions{TimeWindow: &w}}))
	alice := e.login("alice")
	events := alice.events()
	if ev := events.next(t, 5*time.Second); ev.Type != api.DeviceEventHello {
		t.Fatalf("first event %+v", ev)
	}
	g := alice.mustGrant("wiki").Grant
	eventually(t, 5*time.Second, func() error {
		if _, ok := gw.Table().Lookup(g.ID); !ok {
			return errors.New("the gateway does not hold the grant")
		}
		return nil
	})
	stored, err := e.c.store.Grant(ctx, g.ID)
	if err != nil {
		t.Fatal(err)
	}
	if stored.Facts.Source != netip.MustParseAddr("127.0.0.1") {
		t.Errorf("grant facts %+v: want the loopback source", stored.Facts)
	}

	// Nine minutes on the window is still open: a check revokes nothing.
	clock.Set(now.Add(9 * time.Minute))
	if err := e.c.checkTime(ctx); err != nil {
		t.Fatal(err)
	}
	if stored, err := e.c.store.Grant(ctx, g.ID); err != nil || !stored.RevokedAt.IsZero() {
		t.Fatalf("grant inside the window: %+v, %v", stored, err)
	}
	// Past its end the timer revokes the grant.
	clock.Set(now.Add(11 * time.Minute))
	ev := events.next(t, 5*time.Second)
	wantReason := "this app is open every day " + w.Start + "-" + w.End + " UTC only"
	if ev.Type != api.DeviceEventGrantRevoked || ev.GrantID != g.ID || !strings.Contains(ev.Reason, wantReason) || !strings.Contains(ev.Reason, "policy no longer allows it") {
		t.Fatalf("event %+v; want grant.revoked for %s saying %q", ev, g.ID, wantReason)
	}
	stored, err = e.c.store.Grant(ctx, g.ID)
	if err != nil || stored.RevokedAt.IsZero() || stored.RevokeReason != ev.Reason {
		t.Fatalf("stored grant %+v, %v", stored, err)
	}
	evs, err := e.admin.Audit(ctx, apiclient.AuditFilter{Type: "grant.revoke"})
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 1 || evs[0].GrantID != g.ID || evs[0].Actor != "controller" || evs[0].Reason != ev.Reason || evs[0].User != "alice" {
		t.Fatalf("audit %+v", evs)
	}
	if !strings.Contains(ev.Reason, "(rule #1: allow group eng → wiki when every day") {
		t.Errorf("reason %q does not name the rule", ev.Reason)
	}
	eventually(t, 5*time.Second, func() error {
		if _, ok := gw.Table().Lookup(g.ID); ok {
			return errors.New("the gateway still holds the grant")
		}
		return nil
	})
	// And a new request is denied for the same reason.
	_, err = alice.grant("wiki")
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Code != api.CodeDenied || !slices.Equal(ae.Unmet, []string{api.CondTimeWindow}) {
		t.Fatalf("grant after the window: %v", err)
	}
}

// TestRenewalChecksConditions: a renewal evaluates the conditions with the
// renewal's own facts; one that fails them is denied, says what to do, and
// revokes the grant.
func TestRenewalChecksConditions(t *testing.T) {
	now := time.Now().UTC().Truncate(time.Minute)
	// The timer is off for the test's length: the renewal must find it.
	e, clock := newClockEnv(t, now, Config{GrantLifetime: time.Hour, TimeCheckInterval: time.Hour})
	ctx := context.Background()
	e.setupCorp()
	rules, err := e.admin.Policies(ctx)
	if err != nil {
		t.Fatal(err)
	}
	e.must(nil, e.admin.RemovePolicy(ctx, rules[0].ID))
	e.must(e.admin.AddPolicy(ctx, api.PolicyRuleCreate{Position: 1, Action: api.Allow, Groups: []string{"eng"}, Apps: []string{"wiki"},
		RuleConditions: api.RuleConditions{MFAWithin: api.Duration(15 * time.Minute)}}))
	e.must(e.admin.AddPolicy(ctx, api.PolicyRuleCreate{Position: 1, Action: api.Deny, Groups: []string{"eng"}, Apps: []string{"*"},
		RuleConditions: api.RuleConditions{SourceCIDRs: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}}}))
	alice := e.login("alice").withSession(e, now)
	g := alice.mustGrant("wiki").Grant
	if g.Rule == "" {
		t.Fatalf("grant %+v", g)
	}
	clock.Set(now.Add(10 * time.Minute))
	var resp api.GrantResponse
	if err := alice.api.Do(ctx, "POST", "/v1/grants/"+string(g.ID)+"/renew", nil, &resp); err != nil {
		t.Fatalf("renew with MFA 10m old: %v", err)
	}
	clock.Set(now.Add(16 * time.Minute))
	err = alice.api.Do(ctx, "POST", "/v1/grants/"+string(g.ID)+"/renew", nil, &resp)
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Code != api.CodeDenied || !slices.Equal(ae.Unmet, []string{api.CondMFAWithin}) ||
		!strings.HasPrefix(ae.Message, "re-authenticate with MFA (keyhole login) — this app needs MFA within 15m") {
		t.Fatalf("renew with MFA 16m old: %v", err)
	}
	stored, err := e.c.store.Grant(ctx, g.ID)
	if err != nil || !strings.HasPrefix(stored.RevokeReason, "renewal denied: re-authenticate with MFA") {
		t.Fatalf("grant after the denied renewal: %+v, %v", stored, err)
	}
}

// TestDeviceApproval: with --require-device-approval a new device gets
// nothing until an admin approves it; approving and withdrawing approval
// are audited, and withdrawing revokes the device's grants.
func TestDeviceApproval(t *testing.T) {
	e := newTestEnv(t, Config{RequireDeviceApproval: true}, 0)
	ctx := context.Background()
	e.setupCorp()
	alice := e.login("alice")
	devs, err := e.admin.Devices(ctx)
	if err != nil || len(devs) != 1 || devs[0].Approved {
		t.Fatalf("devices %+v, %v: want one, unapproved", devs, err)
	}
	_, err = alice.grant("wiki")
	var ae *api.Error
	wantMsg := fmt.Sprintf("device %s is waiting for an admin's approval (the controller requires approved devices); ask an admin to run keyhole admin device approve %s", alice.id, alice.id)
	if !errors.As(err, &ae) || ae.Code != api.CodeDenied || ae.Message != wantMsg || !slices.Equal(ae.Unmet, []string{api.CondDeviceApproved}) {
		t.Fatalf("grant from an unapproved device: %v", err)
	}
	why, err := e.admin.Why(ctx, apiclient.WhyQuery{User: "alice", App: "wiki", Device: alice.id})
	if err != nil || why.Allow || why.Reason != wantMsg || len(why.Rules) != 1 || why.Rules[0].Result != api.WhyNotReached {
		t.Fatalf("why: %+v, %v", why, err)
	}
	why, err = e.admin.Why(ctx, apiclient.WhyQuery{User: "alice", App: "wiki"})
	if err != nil || why.Allow || !slices.Contains(why.Notes, "no device given: taken as not approved (give device=ID)") {
		t.Fatalf("why without a device: %+v, %v", why, err)
	}

	yes, no := true, false
	d, err := e.admin.UpdateDevice(ctx, alice.id, api.DeviceUpdate{Approved: &yes})
	if err != nil || !d.Approved {
		t.Fatalf("approve: %+v, %v", d, err)
	}
	g := alice.mustGrant("wiki").Grant
	events := alice.events()
	events.next(t, 5*time.Second) // hello
	if _, err := e.admin.UpdateDevice(ctx, alice.id, api.DeviceUpdate{Approved: &no}); err != nil {
		t.Fatal(err)
	}
	ev := events.next(t, 5*time.Second)
	if ev.Type != api.DeviceEventGrantRevoked || ev.GrantID != g.ID || !strings.Contains(ev.Reason, "waiting for an admin's approval") {
		t.Fatalf("after withdrawing approval: %+v", ev)
	}
	for typ, reason := range map[string]string{"admin.device.approve": "device approved", "admin.device.unapprove": "device approval withdrawn"} {
		evs, err := e.admin.Audit(ctx, apiclient.AuditFilter{Type: typ})
		if err != nil || len(evs) != 1 || evs[0].DeviceID != alice.id || evs[0].Reason != reason || !strings.HasPrefix(evs[0].Actor, "admin:") {
			t.Errorf("audit %s: %+v, %v", typ, evs, err)
		}
	}
}

// TestWhyRefusesBadQueries: the why endpoint says what is wrong with a query.
func TestWhyRefusesBadQueries(t *testing.T) {
	e := newTestEnv(t, Config{}, 0)
	ctx := context.Background()
	e.setupCorp()
	bob := e.login("bob")
	for _, tc := range []struct {
		q    string
		code string
		msg  string
	}{
		{"user=alice", api.CodeBadRequest, "give user and app"},
		{"user=nobody&app=wiki", api.CodeNotFound, "user nobody not found"},
		{"user=alice&app=wiki&device=" + string(bob.id), api.CodeBadRequest, "belongs to user bob, not alice"},
		{"user=alice&app=wiki&device=dev_nope", api.CodeNotFound, "device dev_nope not found"},
		{"user=alice&app=wiki&source=banana", api.CodeBadRequest, `source "banana": want an IP address`},
		{"user=alice&app=wiki&at=yesterday", api.CodeBadRequest, `at "yesterday": want an RFC 3339 time`},
		{"user=alice&app=wiki&mfa_at=soon", api.CodeBadRequest, `mfa_at "soon": want an RFC 3339 time or never`},
		{"user=alice&app=" + strings.Repeat("x", 300), api.CodeBadRequest, "not an app name, an address or a valid DNS name"},
	} {
		err := e.admin.Client().Do(ctx, "GET", "/v1/why?"+tc.q, nil, nil)
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Code != tc.code || !strings.Contains(ae.Message, tc.msg) {
			t.Errorf("%s: %v; want %s containing %q", tc.q, err, tc.code, tc.msg)
		}
	}
	// Without a token: 401.
	if err := bob.api.Do(ctx, "GET", "/v1/why?user=alice&app=wiki", nil, nil); !apiclient.IsCode(err, api.CodeUnauthorized) {
		t.Errorf("device calling why: %v", err)
	}
}
