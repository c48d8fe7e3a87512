package main

import (
	"context"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/controller/store"
	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/key"
)

func TestAdminPolicyConditionsAndWhy(t *testing.T) {
	isolate(t)
	// Input errors are caught before any request.
	nowhere := []string{"--controller", "https://127.0.0.1:1", "--token", "x", "--ca-fingerprint", "sha256:00"}
	rule := []string{"admin", "policy", "add", "--allow", "--group", "eng", "--app", "wiki"}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"hours without zone", append(rule, "--hours", "08:00-18:00"), "--tz: give the window's IANA time zone"},
		{"days without hours", append(rule, "--days", "mon-fri", "--tz", "UTC"), "--hours: give the window's hours"},
		{"hours without a dash", append(rule, "--hours", "0800", "--tz", "UTC"), `--hours "0800": want START-END`},
		{"outside without a window", append(rule, "--outside-hours"), "--outside-hours: give the window too"},
		{"source with host bits", append(rule, "--source", "198.51.100.7/24"), `--source "198.51.100.7/24": host bits are set; did you mean 198.51.100.0/24`},
		{"negative MFA age", append(rule, "--mfa-within", "-5m"), "--mfa-within: give a positive duration"},
		{"why: bad time", []string{"admin", "why", "alice", "wiki", "--at", "tomorrow"}, `--at "tomorrow": want an RFC 3339 time`},
		{"why: bad source", []string{"admin", "why", "alice", "wiki", "--source", "banana"}, `--source "banana": want an IP address`},
		{"why: bad MFA time", []string{"admin", "why", "alice", "wiki", "--mfa-at", "soon"}, `--mfa-at "soon": want an RFC 3339 time or never`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := keyhole(t, "", append(tc.args, nowhere...)...)
			if r.code != 1 || !strings.HasPrefix(r.stderr, "keyhole: ") || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("exit %d, stderr %q; want exit 1 and %q", r.code, r.stderr, tc.want)
			}
		})
	}

	// The system's own rule (eng may reach the wiki) goes: these tests
	// bring their own.
	s := newSystem(t)
	admin := func(args ...string) []string { return append(args, s.adminFlags()...) }
	ctx := context.Background()
	rules := decodeJSON[[]api.PolicyRule](t, mustRun(t, "", admin("admin", "policy", "list", "--json")...))
	mustRun(t, "", admin("admin", "policy", "rm", string(rules[0].ID))...)

	// The controller checks what the CLI cannot, and says so.
	r := keyhole(t, "", admin(append(rule, "--hours", "08:00-18:00", "--tz", "Mars/Base")...)...)
	if r.code != 1 || !strings.Contains(r.stderr, `tz "Mars/Base": unknown time zone`) {
		t.Errorf("unknown zone: exit %d, stderr %q", r.code, r.stderr)
	}

	got := decodeJSON[api.PolicyRule](t, mustRun(t, "", admin(append(rule, "--mfa-within", "15m", "--days", "mon-fri", "--hours", "08:00-18:00",
		"--tz", "Europe/Berlin", "--source", "198.51.100.0/24", "--source", "203.0.113.5", "--require-approved-device", "--json")...)...))
	want := api.RuleConditions{
		MFAWithin:      api.Duration(15 * time.Minute),
		TimeWindow:     &api.TimeWindow{Days: []string{"mon-fri"}, Start: "08:00", End: "18:00", TZ: "Europe/Berlin"},
		SourceCIDRs:    []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("203.0.113.5/32")},
		DeviceApproved: true,
	}
	if !reflect.DeepEqual(got.RuleConditions, want) {
		t.Fatalf("conditions %+v, want %+v", got.RuleConditions, want)
	}
	conds := "MFA within 15m, mon-fri 08:00-18:00 Europe/Berlin, from 198.51.100.0/24 or 203.0.113.5/32, approved device"
	if table := mustRun(t, "", admin("admin", "policy", "list")...); !strings.Contains(table, "CONDITIONS") || !strings.Contains(table, conds) {
		t.Errorf("policy list does not show the conditions:\n%s", table)
	}
	out := mustRun(t, "", admin("admin", "policy", "add", "--deny", "--group", "eng", "--app", "wiki", "--position", "1",
		"--days", "sat-sun", "--hours", "00:00-24:00", "--tz", "UTC")...)
	if !strings.Contains(out, "deny group eng → wiki when sat-sun 00:00-24:00 UTC") {
		t.Errorf("policy add said %q", out)
	}

	wg, err := key.NewWGPrivate()
	if err != nil {
		t.Fatal(err)
	}
	dev, err := s.box.Controller.Store().CreateDevice(ctx, store.Device{User: "alice", Name: "laptop", WGPublicKey: wg.Public()})
	if err != nil {
		t.Fatal(err)
	}
	if table := mustRun(t, "", admin("admin", "device", "list")...); !strings.Contains(table, "APPROVED") || !strings.Contains(table, " no ") {
		t.Errorf("device list does not show the device unapproved:\n%s", table)
	}
	if out := mustRun(t, "", admin("admin", "device", "approve", string(dev.ID))...); !strings.Contains(out, "Approved device "+string(dev.ID)) {
		t.Errorf("device approve said %q", out)
	}

	// Monday 10:00 in Berlin, from the office, MFA ten minutes ago, on the
	// approved device: rule 1 (weekends) does not hold, rule 2 allows.
	why := decodeJSON[api.Why](t, mustRun(t, "", admin("admin", "why", "alice", "wiki", "--device", string(dev.ID), "--source", "198.51.100.7",
		"--at", "2026-11-23T10:00:00+01:00", "--mfa-at", "2026-11-23T09:50:00+01:00", "--json")...))
	if !why.Allow || why.Rule != got.ID || len(why.Rules) != 2 || why.Rules[0].Result != api.WhyUnmet || why.Rules[1].Result != api.WhyDecided {
		t.Errorf("why: %+v", why)
	}
	// Without the facts: denied, each unmet condition shown, with notes.
	table := mustRun(t, "", admin("admin", "why", "alice", "wiki", "--at", "2026-11-23T10:00:00+01:00")...)
	for _, w := range []string{"conditions unmet", "UNMET", "mfa_within: want MFA within 15m; got never", "DENY", "re-authenticate with MFA (keyhole login)", "note", "no source given"} {
		if !strings.Contains(table, w) {
			t.Errorf("why table lacks %q:\n%s", w, table)
		}
	}
}
