package controller

import (
	"context"
	"crypto/ecdsa"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/apiclient"
	"github.com/keyhole-net/keyhole/internal/trust"
)

// report is a healthy posture report of d, collected now.
func (d *testDevice) report(mutate ...func(p *api.Posture)) api.Posture {
	p := api.Posture{
		DeviceID: d.id, CollectedAt: time.Now().UTC(), OS: "linux", OSVersion: "Debian GNU/Linux 13 (trixie)", Kernel: "6.12.48",
		ClientVersion: "0.7.0", DiskEncryption: api.Yes, Firewall: api.Yes, ScreenLock: api.Unknown,
		Checks: []api.CheckResult{{Name: "edr", Pass: api.Yes}},
	}
	for _, m := range mutate {
		m(&p)
	}
	return p
}

func (d *testDevice) sign(p api.Posture, k *ecdsa.PrivateKey) *api.SignedPosture {
	d.t.Helper()
	if k == nil {
		k = d.key
	}
	sp, err := trust.SignPosture(p, k)
	if err != nil {
		d.t.Fatal(err)
	}
	return &sp
}

func (d *testDevice) grantWith(dest string, sp *api.SignedPosture) (api.GrantResponse, error) {
	var resp api.GrantResponse
	err := d.api.Do(context.Background(), "POST", "/v1/grants", api.GrantRequest{App: dest, Posture: sp}, &resp)
	return resp, err
}

func (d *testDevice) postPosture(sp *api.SignedPosture) error {
	return d.api.Do(context.Background(), "POST", "/v1/device/posture", sp, nil)
}

func diskOff(p *api.Posture) {
	p.DiskEncryption = api.No
	p.Details = map[string]string{"disk_encryption": "/ is on /dev/vda1, no dm-crypt below it"}
}

// setupPosture: wiki needs posture profile "encrypted" (disk encryption
// and the edr check); the rest of corp needs nothing.
func (e *testEnv) setupPosture() {
	e.t.Helper()
	ctx := context.Background()
	e.setupCorp()
	rules, err := e.admin.Policies(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	e.must(nil, e.admin.RemovePolicy(ctx, rules[0].ID))
	e.must(e.admin.AddPostureProfile(ctx, api.PostureProfile{
		Name: "encrypted", DiskEncryption: true,
		Checks: []api.PostureCheck{{Name: "edr", Kind: api.CheckProcess, Process: "falcon-sensor"}},
	}))
	e.must(e.admin.AddPolicy(ctx, api.PolicyRuleCreate{Action: api.Allow, Groups: []string{"eng"}, Apps: []string{"wiki"},
		RuleConditions: api.RuleConditions{Posture: "encrypted"}}))
	e.must(e.admin.AddPolicy(ctx, api.PolicyRuleCreate{Action: api.Allow, Groups: []string{"eng"}, Apps: []string{"corp"}}))
}

// TestPostureDecides is acceptance 3 of issue 5: a rule that requires disk
// encryption denies a device reporting it off and allows one reporting it
// on; flipping the posture during an open session revokes at once (a
// report) or at the next renewal.
func TestPostureDecides(t *testing.T) {
	e := newTestEnv(t, Config{}, 100*time.Millisecond)
	e.setupPosture()
	ctx := context.Background()
	on, off := e.login("alice"), e.login("alice")

	var checks api.PostureChecks
	if err := on.api.Do(ctx, "GET", "/v1/device/posture/checks", nil, &checks); err != nil {
		t.Fatal(err)
	}
	if len(checks.Checks) != 1 || checks.Checks[0].Name != "edr" || checks.Interval <= 0 {
		t.Fatalf("posture checks = %+v", checks)
	}

	g, err := on.grantWith("wiki.corp.internal", on.sign(on.report(), nil))
	if err != nil {
		t.Fatalf("encrypted device: %v", err)
	}
	_, err = off.grantWith("wiki.corp.internal", off.sign(off.report(diskOff), nil))
	wantCode(t, "unencrypted device", err, api.CodeDenied)
	var ae *api.Error
	if !errors.As(err, &ae) || !strings.Contains(ae.Message, "disk encryption on / is required: encrypt the root volume (/ is on /dev/vda1") || len(ae.Unmet) != 1 || ae.Unmet[0] != api.CondPosture {
		t.Fatalf("denial = %+v; want the disk encryption reason and unmet posture", ae)
	}
	// The other app needs no posture.
	if _, err := off.grantWith("a.corp.internal", nil); err != nil {
		t.Fatalf("app without posture rule: %v", err)
	}
	// Without a report: the stored one stands in (on), none at all fails.
	if _, err := on.grant("wiki.corp.internal"); err != nil {
		t.Fatalf("request without a report, stored report fresh: %v", err)
	}
	none := e.login("alice")
	_, err = none.grant("wiki.corp.internal")
	wantCode(t, "device that never reported", err, api.CodeDenied)
	if !strings.Contains(err.Error(), "send a device posture report") {
		t.Errorf("denial without report: %v", err)
	}
	// The admin sees the latest report, and the audit log has it.
	devs, err := e.admin.Devices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range devs {
		if d.ID == off.id && (d.Posture == nil || d.Posture.DiskEncryption != api.No || d.PostureAt.IsZero()) {
			t.Errorf("device list posture of %s = %+v", d.ID, d.Posture)
		}
	}

	// Flip during the session: a report revokes within the request.
	events := on.events()
	events.next(t, 2*time.Second) // hello
	start := time.Now()
	if err := on.postPosture(on.sign(on.report(diskOff), nil)); err != nil {
		t.Fatalf("posture report: %v", err)
	}
	ev := events.next(t, time.Second)
	if ev.Type != api.DeviceEventGrantRevoked || ev.GrantID != g.Grant.ID || !strings.Contains(ev.Reason, "disk encryption") {
		t.Fatalf("event after the flip = %+v; want grant.revoked %s naming disk encryption", ev, g.Grant.ID)
	}
	t.Logf("posture flip to revocation: %v", time.Since(start))
	evs, err := e.admin.Audit(ctx, apiclient.AuditFilter{Type: "device.posture", User: "alice"})
	evs = slices.DeleteFunc(evs, func(ev api.AuditEvent) bool { return ev.DeviceID != on.id })
	if err != nil || len(evs) != 2 || !strings.Contains(evs[0].Reason, "disk encryption no") {
		t.Errorf("device.posture audit = %+v, %v; want two, the newest with disk encryption no", evs, err)
	}

	// Flip at renewal: the renewal is denied and the grant revoked.
	back := on.report()
	g2, err := on.grantWith("wiki.corp.internal", on.sign(back, nil))
	if err != nil {
		t.Fatal(err)
	}
	err = on.api.Do(ctx, "POST", "/v1/grants/"+string(g2.Grant.ID)+"/renew", api.GrantRenewal{Posture: on.sign(on.report(diskOff), nil)}, nil)
	wantCode(t, "renewal with encryption off", err, api.CodeDenied)
	got, err := e.c.store.Grant(ctx, g2.Grant.ID)
	if err != nil || got.RevokedAt.IsZero() || !strings.Contains(got.RevokeReason, "renewal denied") {
		t.Fatalf("grant after denied renewal: %+v, %v", got, err)
	}

	// A tighter profile takes effect at once for live grants.
	g3, err := on.grantWith("wiki.corp.internal", on.sign(on.report(), nil))
	if err != nil {
		t.Fatal(err)
	}
	e.must(e.admin.UpdatePostureProfile(ctx, api.PostureProfile{Name: "encrypted", DiskEncryption: true, ScreenLock: true,
		Checks: []api.PostureCheck{{Name: "edr", Kind: api.CheckProcess, Process: "falcon-sensor"}}}))
	if got, _ := e.c.store.Grant(ctx, g3.Grant.ID); got.RevokedAt.IsZero() || !strings.Contains(got.RevokeReason, "screen lock") {
		t.Errorf("grant after the profile required a screen lock: revoked %v (%s)", got.RevokedAt, got.RevokeReason)
	}

	// keyhole admin why agrees, on the device's latest report.
	why, err := e.admin.Why(ctx, apiclient.WhyQuery{User: "alice", App: "wiki", Device: on.id})
	if err != nil || why.Allow || len(why.Unmet) != 1 || why.Unmet[0] != api.CondPosture || !strings.Contains(why.Reason, "screen lock") {
		t.Errorf("why = %+v, %v", why, err)
	}
}

// TestPostureRefused is acceptance 4 of issue 5: reports not signed by the
// device key, replayed from another device, replayed over a newer one,
// from the future, stale or malformed are each refused, logged and audited.
func TestPostureRefused(t *testing.T) {
	e := newTestEnv(t, Config{PostureMaxAge: 5 * time.Minute}, 0)
	e.setupPosture()
	ctx := context.Background()
	alice, other := e.login("alice"), e.login("alice")
	stranger, err := trust.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	good := alice.sign(alice.report(), nil)
	if err := alice.postPosture(good); err != nil {
		t.Fatal(err)
	}
	unsigned := *alice.sign(alice.report(), nil)
	unsigned.Signature = nil

	tests := []struct {
		name string
		dev  *testDevice
		sp   *api.SignedPosture
		want string
	}{
		{"signed by another key", alice, alice.sign(alice.report(), stranger), "not signed by the key of device " + string(alice.id)},
		{"no signature", alice, &unsigned, "not signed by the key"},
		{"replayed by another device", other, good, "not signed by the key of device " + string(other.id)},
		{"another device's report re-signed", other, other.sign(alice.report(), nil), "the report is device \"" + string(alice.id) + "\"'s"},
		{"older than the latest", alice, alice.sign(alice.report(func(p *api.Posture) { p.CollectedAt = p.CollectedAt.Add(-time.Minute) }), nil), "older than the device's latest report"},
		{"from the future", alice, alice.sign(alice.report(func(p *api.Posture) { p.CollectedAt = p.CollectedAt.Add(time.Hour) }), nil), "ahead of the controller's clock"},
		{"stale", alice, alice.sign(alice.report(func(p *api.Posture) { p.CollectedAt = p.CollectedAt.Add(-time.Hour) }), nil), "the limit is 5m0s"},
		{"not a fact", alice, alice.sign(alice.report(func(p *api.Posture) { p.Firewall = "probably" }), nil), `firewall: "probably" is not yes, no or unknown`},
		{"control characters", alice, alice.sign(alice.report(func(p *api.Posture) { p.OSVersion = "x\n\x1b[31m" }), nil), "control character"},
		{"malformed report", alice, signRaw(t, alice.key, []byte(`{"device_id": 7}`)), "cannot unmarshal"},
		{"trailing data", alice, signRaw(t, alice.key, append(mustMarshal(t, alice.report()), " {}"...)), "data after the JSON object"},
		{"empty", alice, &api.SignedPosture{}, "report is 0 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, send := range []func() error{
				func() error { return tt.dev.postPosture(tt.sp) },
				func() error { _, err := tt.dev.grantWith("wiki.corp.internal", tt.sp); return err },
			} {
				err := send()
				wantCode(t, tt.name, err, api.CodePostureRefused)
				if !strings.Contains(err.Error(), tt.want) {
					t.Errorf("error %q; want it to contain %q", err, tt.want)
				}
			}
		})
	}
	// None of them replaced alice's stored report, and every refusal is
	// in the audit log.
	dv, err := e.c.store.Device(ctx, alice.id)
	if err != nil || dv.Posture == nil || dv.Posture.Firewall != api.Yes || dv.Posture.OSVersion != "Debian GNU/Linux 13 (trixie)" {
		t.Errorf("stored posture after refusals: %+v, %v", dv.Posture, err)
	}
	evs, err := e.admin.Audit(ctx, apiclient.AuditFilter{Type: "posture.refused", Limit: 100})
	if err != nil || len(evs) != 2*len(tests) {
		t.Errorf("posture.refused audit events: %d, %v; want %d", len(evs), err, 2*len(tests))
	}
}

// signRaw signs arbitrary bytes as a posture report (what a broken or
// hostile client could send).
func signRaw(t *testing.T, k *ecdsa.PrivateKey, report []byte) *api.SignedPosture {
	t.Helper()
	sp, err := trust.SignPostureReport(report, k)
	if err != nil {
		t.Fatal(err)
	}
	return &sp
}

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestPostureProfilesAdmin: profiles are validated, a rule cannot name a
// missing one, and a profile a rule names cannot be removed.
func TestPostureProfilesAdmin(t *testing.T) {
	e := newTestEnv(t, Config{}, 0)
	e.setupPosture()
	ctx := context.Background()
	_, err := e.admin.AddPostureProfile(ctx, api.PostureProfile{Name: "bad", Checks: []api.PostureCheck{{Name: "x", Kind: "registry"}}})
	wantCode(t, "bad check kind", err, api.CodeBadRequest)
	_, err = e.admin.AddPostureProfile(ctx, api.PostureProfile{Name: "encrypted"})
	wantCode(t, "duplicate", err, api.CodeConflict)
	_, err = e.admin.AddPostureProfile(ctx, api.PostureProfile{Name: "other", Checks: []api.PostureCheck{{Name: "edr", Kind: api.CheckProcess, Process: "other-edr"}}})
	wantCode(t, "check name redefined", err, api.CodeConflict)
	_, err = e.admin.AddPolicy(ctx, api.PolicyRuleCreate{Action: api.Allow, Users: []string{"bob"}, Apps: []string{"wiki"}, RuleConditions: api.RuleConditions{Posture: "nope"}})
	wantCode(t, "rule naming a missing profile", err, api.CodeNotFound)
	wantCode(t, "removing a profile in use", e.admin.RemovePostureProfile(ctx, "encrypted"), api.CodeConflict)
	ps, err := e.admin.PostureProfiles(ctx)
	if err != nil || len(ps) != 1 || ps[0].Name != "encrypted" {
		t.Fatalf("profiles = %+v, %v", ps, err)
	}
}

// TestPostureRepeatNotStoredAgain: the same report sent with several
// requests is stored once (no write on the grant path for it) and keeps
// its check details.
func TestPostureRepeatNotStoredAgain(t *testing.T) {
	e := newTestEnv(t, Config{}, 0)
	e.setupPosture()
	ctx := context.Background()
	d := e.login("alice")
	p := d.report(func(p *api.Posture) { p.Checks[0].Detail = "pid 7 runs falcon-sensor" })
	sp := d.sign(p, nil)
	if _, err := d.grantWith("wiki.corp.internal", sp); err != nil {
		t.Fatal(err)
	}
	first, err := e.c.store.Device(ctx, d.id)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.grantWith("a.corp.internal", sp); err != nil {
		t.Fatal(err)
	}
	again, err := e.c.store.Device(ctx, d.id)
	if err != nil {
		t.Fatal(err)
	}
	if !again.PostureAt.Equal(first.PostureAt) {
		t.Errorf("the same report was stored again: accepted at %v, then %v", first.PostureAt, again.PostureAt)
	}
	if got := again.Posture.Checks[0].Detail; got != "pid 7 runs falcon-sensor" {
		t.Errorf("stored check detail %q", got)
	}
}
