package main

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/keyhole-net/keyhole/internal/api"
)

// decodeJSON parses a command's --json output into a value of type T.
func decodeJSON[T any](t *testing.T, out string) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("output is not the JSON expected: %v\n%s", err, out)
	}
	return v
}

func TestAdminUsers(t *testing.T) {
	isolate(t)
	s := newBox(t)
	admin := func(args ...string) []string { return append(args, s.adminFlags()...) }

	mustRun(t, "", admin("admin", "group", "add", "eng")...)
	out := mustRun(t, testPassword+"\n", admin("admin", "user", "add", "alice", "--group", "eng", "--password-stdin")...)
	if !strings.Contains(out, "Created user alice") {
		t.Errorf("user add said %q", out)
	}
	mustRun(t, "", admin("admin", "user", "add", "bob")...)

	users := decodeJSON[[]api.User](t, mustRun(t, "", admin("admin", "user", "list", "--json")...))
	if len(users) != 2 {
		t.Fatalf("users: %+v", users)
	}
	i := slices.IndexFunc(users, func(u api.User) bool { return u.Name == "alice" })
	if i < 0 || !slices.Equal(users[i].Groups, []string{"eng"}) || users[i].Disabled {
		t.Fatalf("alice: %+v", users)
	}

	mustRun(t, "", admin("admin", "user", "disable", "alice")...)
	table := mustRun(t, "", admin("admin", "user", "list")...)
	if !strings.HasPrefix(table, "NAME") || !strings.Contains(table, "disabled") {
		t.Errorf("user list table:\n%s", table)
	}
	users = decodeJSON[[]api.User](t, mustRun(t, "", admin("admin", "user", "list", "--json")...))
	if i := slices.IndexFunc(users, func(u api.User) bool { return u.Name == "alice" }); !users[i].Disabled {
		t.Errorf("alice not disabled: %+v", users[i])
	}
	u := decodeJSON[api.User](t, mustRun(t, "", admin("admin", "user", "enable", "alice", "--json")...))
	if u.Disabled {
		t.Errorf("alice still disabled: %+v", u)
	}

	// The controller's own messages come through, without codes.
	r := keyhole(t, "", admin("admin", "user", "add", "carol", "--group", "nope")...)
	if r.code != 1 || r.stderr != "keyhole: group \"nope\" does not exist; create it with keyhole admin group add nope\n" {
		t.Errorf("unknown group: exit %d, stderr %q", r.code, r.stderr)
	}
	r = keyhole(t, "", "admin", "user", "list", "--controller", s.box.URL, "--ca-fingerprint", s.box.Fingerprint, "--token", "khadm_wrong")
	if r.code != 1 || !strings.HasPrefix(r.stderr, "keyhole: ") {
		t.Errorf("bad token: exit %d, stderr %q", r.code, r.stderr)
	}
	r = keyhole(t, "", admin("admin", "user", "frobnicate")...)
	if r.code != 1 || !strings.Contains(r.stderr, `unknown command "frobnicate"`) {
		t.Errorf("unknown subcommand: exit %d, stderr %q", r.code, r.stderr)
	}
	mustRun(t, "", admin("admin", "user", "rm", "bob")...)
	users = decodeJSON[[]api.User](t, mustRun(t, "", admin("admin", "user", "list", "--json")...))
	if len(users) != 1 {
		t.Errorf("after rm: %+v", users)
	}
}

func TestAdminAppAdd(t *testing.T) {
	isolate(t)
	s := newBox(t)
	mustRun(t, "", append([]string{"admin", "gateway-group", "add", "site"}, s.adminFlags()...)...)

	// Input errors are caught before any request: the controller flags
	// here point nowhere, and the error is still about the input.
	nowhere := []string{"--controller", "https://127.0.0.1:1", "--token", "x", "--ca-fingerprint", "sha256:00"}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"bad CIDR", []string{"--address", "198.51.100.5/24", "--ports", "tcp/80", "--gateway-group", "site"}, "host bits are set; did you mean 198.51.100.0/24"},
		{"not an address", []string{"--address", "banana", "--ports", "tcp/80", "--gateway-group", "site"}, `--address "banana": want an IP`},
		{"port zero", []string{"--address", "198.51.100.5", "--ports", "tcp/0", "--gateway-group", "site"}, "must be a number from 1 to 65535"},
		{"reversed range", []string{"--address", "198.51.100.5", "--ports", "tcp/90-80", "--gateway-group", "site"}, "first port is above last"},
		{"no protocol", []string{"--address", "198.51.100.5", "--ports", "80", "--gateway-group", "site"}, "want PROTO/PORT"},
		{"no ports", []string{"--address", "198.51.100.5", "--gateway-group", "site"}, "give --ports"},
		{"no target", []string{"--ports", "tcp/80", "--gateway-group", "site"}, "at least one --address"},
		{"no gateway group", []string{"--address", "198.51.100.5", "--ports", "tcp/80"}, "give --gateway-group"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append(append([]string{"admin", "app", "add", "x"}, tc.args...), nowhere...)
			r := keyhole(t, "", args...)
			if r.code != 1 || !strings.HasPrefix(r.stderr, "keyhole: ") || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("exit %d, stderr %q; want exit 1 and %q", r.code, r.stderr, tc.want)
			}
		})
	}

	r := keyhole(t, "", append([]string{"admin", "app", "add", "x", "--address", "198.51.100.5", "--ports", "tcp/80", "--gateway-group", "nope"}, s.adminFlags()...)...)
	if r.code != 1 || !strings.Contains(r.stderr, `gateway group "nope" does not exist; create it with keyhole admin gateway-group add nope`) {
		t.Errorf("unknown gateway group: exit %d, stderr %q", r.code, r.stderr)
	}

	app := decodeJSON[api.App](t, mustRun(t, "", append([]string{"admin", "app", "add", "db", "--address", "198.51.100.5", "--address", "203.0.113.0/24",
		"--ports", "tcp/5432,tcp/8000-8010,udp/53", "--gateway-group", "site", "--json"}, s.adminFlags()...)...))
	if got := api.FormatPortRanges(app.Ports); got != "tcp/5432,tcp/8000-8010,udp/53" {
		t.Errorf("ports %s", got)
	}
	if len(app.Addresses) != 2 || app.Addresses[0].String() != "198.51.100.5/32" || app.Addresses[1].String() != "203.0.113.0/24" {
		t.Errorf("addresses %v", app.Addresses)
	}
	mustRun(t, "", append([]string{"admin", "app", "add", "wiki", "--domain", "Wiki.Corp.Internal.", "--ports", "tcp/443", "--gateway-group", "site"}, s.adminFlags()...)...)
	apps := decodeJSON[[]api.App](t, mustRun(t, "", append([]string{"admin", "app", "list", "--json"}, s.adminFlags()...)...))
	if len(apps) != 2 {
		t.Fatalf("apps: %+v", apps)
	}
	table := mustRun(t, "", append([]string{"admin", "app", "list"}, s.adminFlags()...)...)
	if !strings.Contains(table, "wiki.corp.internal (100.") {
		t.Errorf("app list table does not show the domain with its virtual IP:\n%s", table)
	}
}

func TestAdminPolicyAndLists(t *testing.T) {
	isolate(t)
	s := newSystem(t)
	admin := func(args ...string) []string { return append(args, s.adminFlags()...) }

	rules := decodeJSON[[]api.PolicyRule](t, mustRun(t, "", admin("admin", "policy", "list", "--json")...))
	if len(rules) != 1 {
		t.Fatalf("rules: %+v", rules)
	}
	r := decodeJSON[api.PolicyRule](t, mustRun(t, "", admin("admin", "policy", "add", "--deny", "--user", "alice", "--app", "wiki", "--position", "1", "--description", "on leave", "--json")...))
	if r.Action != api.Deny || r.Position != 1 || r.Description != "on leave" {
		t.Errorf("rule %+v", r)
	}
	rules = decodeJSON[[]api.PolicyRule](t, mustRun(t, "", admin("admin", "policy", "list", "--json")...))
	if len(rules) != 2 || rules[0].ID != r.ID {
		t.Errorf("rules after insert at 1: %+v", rules)
	}
	table := mustRun(t, "", admin("admin", "policy", "list")...)
	if !strings.Contains(table, "(default)") || !strings.Contains(table, "on leave") {
		t.Errorf("policy table:\n%s", table)
	}
	mustRun(t, "", admin("admin", "policy", "rm", string(r.ID))...)

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no action", []string{"--group", "eng", "--app", "wiki"}, "exactly one of --allow or --deny"},
		{"both actions", []string{"--allow", "--deny", "--group", "eng", "--app", "wiki"}, "exactly one of --allow or --deny"},
		{"no app", []string{"--allow", "--group", "eng"}, "at least one --app"},
		{"no subject", []string{"--allow", "--app", "wiki"}, "at least one --group or --user"},
		{"unknown app", []string{"--allow", "--group", "eng", "--app", "payroll"}, `app "payroll" does not exist`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := keyhole(t, "", admin(append([]string{"admin", "policy", "add"}, tc.args...)...)...)
			if r.code != 1 || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("exit %d, stderr %q; want exit 1 and %q", r.code, r.stderr, tc.want)
			}
		})
	}

	// Gateway enrolment token: the token alone, for scripts.
	tok := mustRun(t, "", admin("admin", "gateway", "token", "--group", "site")...)
	if !strings.HasPrefix(tok, "khgw_") || strings.Count(tok, "\n") != 1 {
		t.Errorf("gateway token printed %q", tok)
	}
	gws := decodeJSON[[]api.Gateway](t, mustRun(t, "", admin("admin", "gateway", "list", "--json")...))
	if len(gws) != 1 || !gws[0].Connected {
		t.Errorf("gateways: %+v", gws)
	}
	// Every list parses as a JSON array, even when empty.
	for _, what := range [][]string{{"group"}, {"gateway-group"}, {"device"}, {"grant"}, {"audit"}, {"flow"}} {
		out := mustRun(t, "", admin(append(append([]string{"admin"}, what...), "list", "--json")...)...)
		decodeJSON[[]json.RawMessage](t, out)
	}
	evs := decodeJSON[[]api.AuditEvent](t, mustRun(t, "", admin("admin", "audit", "list", "--type", "admin.policy.add", "--limit", "5", "--json")...))
	if len(evs) != 2 {
		t.Errorf("policy.add audit events: %+v", evs)
	}
}
