package policy

import (
	"errors"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/internal/api"
)

// r builds a rule for tests; position p, ID "r<p>".
func r(p int, action api.Action, users, groups, apps []string, desc ...string) api.PolicyRule {
	return api.PolicyRule{
		ID: api.RuleID(fmt.Sprintf("r%d", p)), Position: p, Action: action,
		Users: users, Groups: groups, Apps: apps, Description: strings.Join(desc, ""),
	}
}

func l(s ...string) []string { return s }

func sub(user string, groups ...string) Subject { return Subject{User: user, Groups: groups} }

func allowed(p int, reason string) Decision {
	return Decision{Allow: true, Rule: api.RuleID(fmt.Sprintf("r%d", p)), Position: p, Reason: reason}
}

func denied(p int, reason string) Decision {
	return Decision{Rule: api.RuleID(fmt.Sprintf("r%d", p)), Position: p, Reason: reason}
}

func defaultDeny(reason string) Decision { return Decision{Reason: reason} }

// TestEvaluate is the golden table: every case states the whole Decision,
// reason text included, because the reason is what admins and users read.
func TestEvaluate(t *testing.T) {
	const (
		allow = api.Allow
		deny  = api.Deny
	)
	// Contractors may reach payroll in office hours only.
	payrollOfficeHours := []api.PolicyRule{
		rc(1, deny, l("contractors"), l("payroll"), inWindow(officeHoursOutside)),
		r(2, allow, nil, l("contractors"), l("payroll")),
	}
	tests := []struct {
		name  string
		rules []api.PolicyRule
		sub   Subject
		app   string
		want  Decision
	}{
		{
			name:  "empty rule set denies by default",
			rules: nil,
			sub:   sub("bob", "sales"), app: "wiki",
			want: defaultDeny(`no policy rule allows user "bob" (groups: sales) to reach app "wiki"; ask an admin to add one, e.g. keyhole admin policy add --allow --group sales --app wiki`),
		},
		{
			name:  "empty rule set, user without groups gets a --user suggestion",
			rules: nil,
			sub:   sub("bob"), app: "wiki",
			want: defaultDeny(`no policy rule allows user "bob" (no groups) to reach app "wiki"; ask an admin to add one, e.g. keyhole admin policy add --allow --user bob --app wiki`),
		},
		{
			name:  "group match allows",
			rules: []api.PolicyRule{r(1, allow, nil, l("eng"), l("wiki"))},
			sub:   sub("alice", "eng"), app: "wiki",
			want: allowed(1, "allowed by rule #1 (allow group eng → wiki)"),
		},
		{
			name:  "group match reports the rule's own position",
			rules: []api.PolicyRule{r(1, allow, l("carol"), nil, l("git")), r(2, allow, nil, l("eng"), l("wiki"))},
			sub:   sub("alice", "eng"), app: "wiki",
			want: allowed(2, "allowed by rule #2 (allow group eng → wiki)"),
		},
		{
			name:  "user match allows",
			rules: []api.PolicyRule{r(1, allow, l("alice"), nil, l("wiki"))},
			sub:   sub("alice"), app: "wiki",
			want: allowed(1, "allowed by rule #1 (allow user alice → wiki)"),
		},
		{
			name:  "user rule does not match another user",
			rules: []api.PolicyRule{r(1, allow, l("alice"), nil, l("wiki"))},
			sub:   sub("bob", "eng"), app: "wiki",
			want: defaultDeny(`no policy rule allows user "bob" (groups: eng) to reach app "wiki"; ask an admin to add one, e.g. keyhole admin policy add --allow --group eng --app wiki`),
		},
		{
			name:  "group rule does not match another group",
			rules: []api.PolicyRule{r(1, allow, nil, l("eng"), l("wiki"))},
			sub:   sub("bob", "sales"), app: "wiki",
			want: defaultDeny(`no policy rule allows user "bob" (groups: sales) to reach app "wiki"; ask an admin to add one, e.g. keyhole admin policy add --allow --group sales --app wiki`),
		},
		{
			name:  "rule for another app does not match",
			rules: []api.PolicyRule{r(1, allow, nil, l("eng"), l("git"))},
			sub:   sub("alice", "eng"), app: "wiki",
			want: defaultDeny(`no policy rule allows user "alice" (groups: eng) to reach app "wiki"; ask an admin to add one, e.g. keyhole admin policy add --allow --group eng --app wiki`),
		},
		{
			name:  "wildcard app matches any app",
			rules: []api.PolicyRule{r(1, allow, nil, l("admins"), l("*"))},
			sub:   sub("root", "admins"), app: "anything",
			want: allowed(1, "allowed by rule #1 (allow group admins → *)"),
		},
		{
			name:  "wildcard user matches any user",
			rules: []api.PolicyRule{r(1, allow, l("*"), nil, l("intranet"))},
			sub:   sub("zed"), app: "intranet",
			want: allowed(1, "allowed by rule #1 (allow user * → intranet)"),
		},
		{
			name:  "wildcard group matches a user in any group",
			rules: []api.PolicyRule{r(1, allow, nil, l("*"), l("intranet"))},
			sub:   sub("zed", "temps"), app: "intranet",
			want: allowed(1, "allowed by rule #1 (allow group * → intranet)"),
		},
		{
			name:  "wildcard group does not match a user without groups",
			rules: []api.PolicyRule{r(1, allow, nil, l("*"), l("intranet"))},
			sub:   sub("zed"), app: "intranet",
			want: defaultDeny(`no policy rule allows user "zed" (no groups) to reach app "intranet"; ask an admin to add one, e.g. keyhole admin policy add --allow --user zed --app intranet`),
		},
		{
			name:  "wildcard subject and app allow everything",
			rules: []api.PolicyRule{r(1, allow, l("*"), nil, l("*"))},
			sub:   sub("anyone"), app: "anything",
			want: allowed(1, "allowed by rule #1 (allow user * → *)"),
		},
		{
			name: "deny before allow: deny wins",
			rules: []api.PolicyRule{
				r(1, deny, l("mallory"), nil, l("*")),
				r(2, allow, nil, l("eng"), l("wiki")),
			},
			sub: sub("mallory", "eng"), app: "wiki",
			want: denied(1, "denied by rule #1 (deny user mallory → *)"),
		},
		{
			name: "allow before deny: allow wins",
			rules: []api.PolicyRule{
				r(1, allow, nil, l("eng"), l("wiki")),
				r(2, deny, l("mallory"), nil, l("*")),
			},
			sub: sub("mallory", "eng"), app: "wiki",
			want: allowed(1, "allowed by rule #1 (allow group eng → wiki)"),
		},
		{
			name: "deny rule for someone else lets a later allow decide",
			rules: []api.PolicyRule{
				r(1, deny, l("mallory"), nil, l("*")),
				r(2, allow, nil, l("eng"), l("wiki")),
			},
			sub: sub("alice", "eng"), app: "wiki",
			want: allowed(2, "allowed by rule #2 (allow group eng → wiki)"),
		},
		{
			name:  "deny reason carries the description",
			rules: []api.PolicyRule{r(1, deny, l("mallory"), nil, l("*"), "offboarded 2026-11-01, see TICKET-42")},
			sub:   sub("mallory"), app: "wiki",
			want: denied(1, "denied by rule #1 (deny user mallory → *): offboarded 2026-11-01, see TICKET-42"),
		},
		{
			name:  "allow reason carries the description too",
			rules: []api.PolicyRule{r(1, allow, nil, l("oncall"), l("prod-db"), "on-call access")},
			sub:   sub("dana", "oncall"), app: "prod-db",
			want: allowed(1, "allowed by rule #1 (allow group oncall → prod-db): on-call access"),
		},
		{
			name: "named app rule before wildcard app rule wins",
			rules: []api.PolicyRule{
				r(1, allow, nil, l("eng"), l("wiki")),
				r(2, deny, nil, l("eng"), l("*")),
			},
			sub: sub("alice", "eng"), app: "wiki",
			want: allowed(1, "allowed by rule #1 (allow group eng → wiki)"),
		},
		{
			name: "wildcard app rule before named app rule wins",
			rules: []api.PolicyRule{
				r(1, deny, nil, l("contractors"), l("*")),
				r(2, allow, nil, l("contractors"), l("wiki")),
			},
			sub: sub("cy", "contractors"), app: "wiki",
			want: denied(1, "denied by rule #1 (deny group contractors → *)"),
		},
		{
			name: "interleaved named and wildcard rules keep slice order",
			rules: []api.PolicyRule{
				r(1, allow, l("x"), nil, l("*")),
				r(2, allow, l("y"), nil, l("wiki")),
				r(3, deny, nil, l("eng"), l("*")),
				r(4, allow, nil, l("eng"), l("wiki")),
			},
			sub: sub("alice", "eng"), app: "wiki",
			want: denied(3, "denied by rule #3 (deny group eng → *)"),
		},
		{
			name: "user in several groups matches on any of them",
			rules: []api.PolicyRule{
				r(1, allow, nil, l("ops"), l("grafana")),
			},
			sub: sub("alice", "eng", "ops", "sre"), app: "grafana",
			want: allowed(1, "allowed by rule #1 (allow group ops → grafana)"),
		},
		{
			name: "user in several groups: first matching rule, not first group",
			rules: []api.PolicyRule{
				r(1, deny, nil, l("sre"), l("grafana")),
				r(2, allow, nil, l("eng"), l("grafana")),
			},
			sub: sub("alice", "eng", "sre"), app: "grafana",
			want: denied(1, "denied by rule #1 (deny group sre → grafana)"),
		},
		{
			name:  "default deny lists all groups and suggests the first",
			rules: nil,
			sub:   sub("bob", "sales", "emea"), app: "crm",
			want: defaultDeny(`no policy rule allows user "bob" (groups: sales, emea) to reach app "crm"; ask an admin to add one, e.g. keyhole admin policy add --allow --group sales --app crm`),
		},
		{
			name:  "group name that is a prefix of the user's group does not match",
			rules: []api.PolicyRule{r(1, allow, nil, l("eng"), l("wiki"))},
			sub:   sub("alice", "engineering"), app: "wiki",
			want: defaultDeny(`no policy rule allows user "alice" (groups: engineering) to reach app "wiki"; ask an admin to add one, e.g. keyhole admin policy add --allow --group engineering --app wiki`),
		},
		{
			name:  "app name that is a prefix of the requested app does not match",
			rules: []api.PolicyRule{r(1, allow, nil, l("eng"), l("wiki"))},
			sub:   sub("alice", "eng"), app: "wiki-admin",
			want: defaultDeny(`no policy rule allows user "alice" (groups: eng) to reach app "wiki-admin"; ask an admin to add one, e.g. keyhole admin policy add --allow --group eng --app wiki-admin`),
		},
		{
			name:  "requested app that is a prefix of the rule's app does not match",
			rules: []api.PolicyRule{r(1, allow, nil, l("eng"), l("wiki-admin"))},
			sub:   sub("alice", "eng"), app: "wiki",
			want: defaultDeny(`no policy rule allows user "alice" (groups: eng) to reach app "wiki"; ask an admin to add one, e.g. keyhole admin policy add --allow --group eng --app wiki`),
		},
		{
			name:  "user name that is a prefix of another does not match",
			rules: []api.PolicyRule{r(1, allow, l("al"), nil, l("wiki"))},
			sub:   sub("alice"), app: "wiki",
			want: defaultDeny(`no policy rule allows user "alice" (no groups) to reach app "wiki"; ask an admin to add one, e.g. keyhole admin policy add --allow --user alice --app wiki`),
		},
		{
			name:  "group names are case-sensitive",
			rules: []api.PolicyRule{r(1, allow, nil, l("Eng"), l("wiki"))},
			sub:   sub("alice", "eng"), app: "wiki",
			want: defaultDeny(`no policy rule allows user "alice" (groups: eng) to reach app "wiki"; ask an admin to add one, e.g. keyhole admin policy add --allow --group eng --app wiki`),
		},
		{
			name:  "user names are case-sensitive",
			rules: []api.PolicyRule{r(1, allow, l("Alice"), nil, l("wiki"))},
			sub:   sub("alice"), app: "wiki",
			want: defaultDeny(`no policy rule allows user "alice" (no groups) to reach app "wiki"; ask an admin to add one, e.g. keyhole admin policy add --allow --user alice --app wiki`),
		},
		{
			name:  "app names are case-sensitive",
			rules: []api.PolicyRule{r(1, allow, nil, l("eng"), l("Wiki"))},
			sub:   sub("alice", "eng"), app: "wiki",
			want: defaultDeny(`no policy rule allows user "alice" (groups: eng) to reach app "wiki"; ask an admin to add one, e.g. keyhole admin policy add --allow --group eng --app wiki`),
		},
		{
			name:  "rule with users and groups matches on the user",
			rules: []api.PolicyRule{r(1, allow, l("alice", "bob"), l("eng", "ops"), l("wiki", "git"))},
			sub:   sub("bob"), app: "git",
			want: allowed(1, "allowed by rule #1 (allow users alice, bob or groups eng, ops → wiki, git)"),
		},
		{
			name:  "rule with users and groups matches on a group",
			rules: []api.PolicyRule{r(1, allow, l("alice"), l("eng"), l("wiki"))},
			sub:   sub("carol", "eng"), app: "wiki",
			want: allowed(1, "allowed by rule #1 (allow user alice or group eng → wiki)"),
		},
		{
			name:  "a group named like the user does not match the user",
			rules: []api.PolicyRule{r(1, allow, nil, l("alice"), l("wiki"))},
			sub:   sub("alice"), app: "wiki",
			want: defaultDeny(`no policy rule allows user "alice" (no groups) to reach app "wiki"; ask an admin to add one, e.g. keyhole admin policy add --allow --user alice --app wiki`),
		},
		{
			name: "rule with many names uses the map form and still matches",
			rules: []api.PolicyRule{r(1, allow,
				l("u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8", "u9", "u10"), nil,
				l("a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8", "a9", "a10"))},
			sub: sub("u10"), app: "a9",
			want: allowed(1, "allowed by rule #1 (allow users u1, u2, u3, u4, u5, u6, u7, u8, u9, u10 → a1, a2, a3, a4, a5, a6, a7, a8, a9, a10)"),
		},
		{
			name:  "names with spaces are quoted in reasons and in the suggested command",
			rules: []api.PolicyRule{r(1, allow, nil, l("big team"), l("other app"))},
			sub:   sub("o'neil", "big team"), app: "my app",
			want: defaultDeny(`no policy rule allows user "o'neil" (groups: "big team") to reach app "my app"; ask an admin to add one, e.g. keyhole admin policy add --allow --group 'big team' --app 'my app'`),
		},
		{
			name:  "quoted names in a rule reason",
			rules: []api.PolicyRule{r(1, deny, l("o'neil"), nil, l("my app"))},
			sub:   sub("o'neil"), app: "my app",
			want: denied(1, `denied by rule #1 (deny user "o'neil" → "my app")`),
		},
		{
			name:  "user without groups gets a shell-quoted --user suggestion",
			rules: nil,
			sub:   sub("o'neil"), app: "wiki",
			want: defaultDeny(`no policy rule allows user "o'neil" (no groups) to reach app "wiki"; ask an admin to add one, e.g. keyhole admin policy add --allow --user 'o'\''neil' --app wiki`),
		},
		{
			name:  "empty user fails closed even against a wildcard allow",
			rules: []api.PolicyRule{r(1, allow, l("*"), l("*"), l("*"))},
			sub:   sub("", "eng"), app: "wiki",
			want: defaultDeny("the request names no user or no app, so no policy rule can allow it; this is a bug in the caller"),
		},
		{
			name:  "empty app fails closed even against a wildcard allow",
			rules: []api.PolicyRule{r(1, allow, l("*"), nil, l("*"))},
			sub:   sub("alice"), app: "",
			want: defaultDeny("the request names no user or no app, so no policy rule can allow it; this is a bug in the caller"),
		},
		{
			name:  "empty group names in the subject are ignored",
			rules: []api.PolicyRule{r(1, allow, nil, l("*"), l("wiki"))},
			sub:   sub("alice", ""), app: "wiki",
			want: defaultDeny(`no policy rule allows user "alice" (no groups) to reach app "wiki"; ask an admin to add one, e.g. keyhole admin policy add --allow --user alice --app wiki`),
		},
		{
			name:  "sparse positions are reported as given",
			rules: []api.PolicyRule{r(3, deny, nil, l("eng"), l("db")), r(7, allow, nil, l("eng"), l("wiki"))},
			sub:   sub("alice", "eng"), app: "wiki",
			want: allowed(7, "allowed by rule #7 (allow group eng → wiki)"),
		},
		// Rules with conditions.
		{
			name:  "fresh MFA allows",
			rules: []api.PolicyRule{rc(1, allow, l("eng"), l("payroll"), mfa15())},
			sub:   at(monday10), app: "payroll",
			want: allowed(1, "allowed by rule #1 (allow group eng → payroll when MFA within 15m)"),
		},
		{
			name:  "MFA exactly as old as allowed still allows",
			rules: []api.PolicyRule{rc(1, allow, l("eng"), l("payroll"), mfa15())},
			sub:   at(monday10, func(s *Subject) { s.MFAAt = monday10.Add(-15 * time.Minute) }), app: "payroll",
			want: allowed(1, "allowed by rule #1 (allow group eng → payroll when MFA within 15m)"),
		},
		{
			name:  "inside the time window allows",
			rules: []api.PolicyRule{rc(1, allow, l("eng"), l("wiki"), inWindow(officeHours))},
			sub:   at(monday10), app: "wiki",
			want: allowed(1, "allowed by rule #1 (allow group eng → wiki when mon-fri 08:00-18:00 Europe/Berlin)"),
		},
		{
			name:  "outside the time window denies with the local time",
			rules: []api.PolicyRule{rc(1, allow, l("eng"), l("wiki"), inWindow(officeHours))},
			sub:   at(saturday10), app: "wiki",
			want: unmet(1, CondTimeWindow, "this app is open mon-fri 08:00-18:00 Europe/Berlin only; it is Sat 2026-11-28 10:00 Europe/Berlin (CET) now (rule #1: allow group eng → wiki when mon-fri 08:00-18:00 Europe/Berlin)"),
		},
		{
			name:  "deny outside office hours, inside them: the deny does not apply",
			rules: payrollOfficeHours,
			sub:   Subject{User: "cy", Groups: l("contractors"), Time: monday10}, app: "payroll",
			want: allowed(2, "allowed by rule #2 (allow group contractors → payroll)"),
		},
		{
			name:  "deny outside office hours, on Saturday: the deny applies",
			rules: payrollOfficeHours,
			sub:   Subject{User: "cy", Groups: l("contractors"), Time: saturday10}, app: "payroll",
			want: denied(1, "denied by rule #1 (deny group contractors → payroll when outside mon-fri 08:00-18:00 Europe/Berlin)"),
		},
		{
			name:  "a deny rule whose conditions fail gives no reason of its own",
			rules: []api.PolicyRule{rc(1, deny, l("eng"), l("wiki"), api.RuleConditions{SourceCIDRs: []netip.Prefix{office}})},
			sub:   at(monday10, func(s *Subject) { s.Source = netip.MustParseAddr("203.0.113.9") }), app: "wiki",
			want: defaultDeny(`no policy rule allows user "alice" (groups: eng) to reach app "wiki"; ask an admin to add one, e.g. keyhole admin policy add --allow --group eng --app wiki`),
		},
		{
			name:  "source inside allows",
			rules: []api.PolicyRule{rc(1, allow, l("eng"), l("db"), api.RuleConditions{SourceCIDRs: []netip.Prefix{office}})},
			sub:   at(monday10), app: "db",
			want: allowed(1, "allowed by rule #1 (allow group eng → db when from 198.51.100.0/24)"),
		},
		{
			name:  "an IPv4-mapped source is compared as IPv4",
			rules: []api.PolicyRule{rc(1, allow, l("eng"), l("db"), api.RuleConditions{SourceCIDRs: []netip.Prefix{office}})},
			sub:   at(monday10, func(s *Subject) { s.Source = netip.MustParseAddr("::ffff:198.51.100.7") }), app: "db",
			want: allowed(1, "allowed by rule #1 (allow group eng → db when from 198.51.100.0/24)"),
		},
		{
			name:  "source outside denies",
			rules: []api.PolicyRule{rc(1, allow, l("eng"), l("db"), api.RuleConditions{SourceCIDRs: []netip.Prefix{office, netip.MustParsePrefix("2001:db8::/32")}})},
			sub:   at(monday10, func(s *Subject) { s.Source = netip.MustParseAddr("203.0.113.9") }), app: "db",
			want: unmet(1, CondSource, "connect from an allowed network (198.51.100.0/24 or 2001:db8::/32); the controller sees you at 203.0.113.9 (rule #1: allow group eng → db when from 198.51.100.0/24 or 2001:db8::/32)"),
		},
		{
			name:  "unknown source denies",
			rules: []api.PolicyRule{rc(1, allow, l("eng"), l("db"), api.RuleConditions{SourceCIDRs: []netip.Prefix{office}})},
			sub:   at(monday10, func(s *Subject) { s.Source = netip.Addr{} }), app: "db",
			want: unmet(1, CondSource, "connect from an allowed network (198.51.100.0/24); the controller does not know your address (rule #1: allow group eng → db when from 198.51.100.0/24)"),
		},
		{
			name:  "approved device allows",
			rules: []api.PolicyRule{rc(1, allow, l("eng"), l("db"), api.RuleConditions{DeviceApproved: true})},
			sub:   at(monday10), app: "db",
			want: allowed(1, "allowed by rule #1 (allow group eng → db when approved device)"),
		},
		{
			name:  "unapproved device denies and names the command",
			rules: []api.PolicyRule{rc(1, allow, l("eng"), l("db"), api.RuleConditions{DeviceApproved: true})},
			sub:   at(monday10, func(s *Subject) { s.DeviceApproved = false }), app: "db",
			want: unmet(1, CondDeviceApproved, "this app needs an approved device; ask an admin to approve this one (keyhole admin device approve dev_1) (rule #1: allow group eng → db when approved device)"),
		},
		{
			name: "every unmet condition of the rule is named, in order",
			rules: []api.PolicyRule{rc(1, allow, l("eng"), l("db"), api.RuleConditions{
				MFAWithin: api.Duration(time.Hour), TimeWindow: &officeHours, SourceCIDRs: []netip.Prefix{office}, DeviceApproved: true,
			})},
			sub: at(saturday10, func(s *Subject) {
				s.MFAAt, s.Source, s.DeviceApproved = time.Time{}, netip.MustParseAddr("203.0.113.9"), false
			}), app: "db",
			want: unmet(1, CondMFA|CondTimeWindow|CondSource|CondDeviceApproved, "re-authenticate with MFA (keyhole login) — this app needs MFA within 1h; "+
				"this app is open mon-fri 08:00-18:00 Europe/Berlin only; it is Sat 2026-11-28 10:00 Europe/Berlin (CET) now; "+
				"connect from an allowed network (198.51.100.0/24); the controller sees you at 203.0.113.9; "+
				"this app needs an approved device; ask an admin to approve this one (keyhole admin device approve dev_1) "+
				"(rule #1: allow group eng → db when MFA within 1h, mon-fri 08:00-18:00 Europe/Berlin, from 198.51.100.0/24, approved device)"),
		},
		{
			name: "the allow rule closest to matching gives the reason",
			rules: []api.PolicyRule{
				rc(1, allow, l("eng"), l("db"), api.RuleConditions{MFAWithin: api.Duration(time.Minute), DeviceApproved: true}),
				rc(2, allow, l("eng"), l("db"), api.RuleConditions{MFAWithin: api.Duration(time.Minute)}),
			},
			sub: at(monday10, func(s *Subject) { s.DeviceApproved = false }), app: "db",
			want: unmet(2, CondMFA, "re-authenticate with MFA (keyhole login) — this app needs MFA within 1m (rule #2: allow group eng → db when MFA within 1m)"),
		},
		{
			name: "among equally close rules the first gives the reason",
			rules: []api.PolicyRule{
				rc(1, allow, l("eng"), l("db"), api.RuleConditions{DeviceApproved: true}),
				rc(2, allow, l("eng"), l("db"), api.RuleConditions{MFAWithin: api.Duration(time.Minute)}),
			},
			sub: at(monday10, func(s *Subject) { s.DeviceApproved = false }), app: "db",
			want: unmet(1, CondDeviceApproved, "this app needs an approved device; ask an admin to approve this one (keyhole admin device approve dev_1) (rule #1: allow group eng → db when approved device)"),
		},
		{
			name: "a later rule without conditions allows after an unmet one",
			rules: []api.PolicyRule{
				rc(1, allow, l("eng"), l("db"), mfa15()),
				r(2, allow, nil, l("eng"), l("*")),
			},
			sub: at(monday10, func(s *Subject) { s.MFAAt = time.Time{} }), app: "db",
			want: allowed(2, "allowed by rule #2 (allow group eng → *)"),
		},
		{
			name: "a later deny decides after an unmet allow",
			rules: []api.PolicyRule{
				rc(1, allow, l("eng"), l("db"), mfa15()),
				r(2, deny, nil, l("eng"), l("*"), "eng off prod"),
			},
			sub: at(monday10, func(s *Subject) { s.MFAAt = time.Time{} }), app: "db",
			want: denied(2, "denied by rule #2 (deny group eng → *): eng off prod"),
		},
		{
			name:  "conditions of a rule for other users are not the reason",
			rules: []api.PolicyRule{rc(1, allow, l("ops"), l("db"), mfa15())},
			sub:   at(monday10, func(s *Subject) { s.MFAAt = time.Time{} }), app: "db",
			want: defaultDeny(`no policy rule allows user "alice" (groups: eng) to reach app "db"; ask an admin to add one, e.g. keyhole admin policy add --allow --group eng --app db`),
		},
		{
			name:  "no request time fails a time window, inside or outside",
			rules: []api.PolicyRule{rc(1, deny, l("eng"), l("db"), inWindow(officeHoursOutside)), rc(2, allow, l("eng"), l("db"), inWindow(officeHours))},
			sub:   at(time.Time{}, func(s *Subject) { s.MFAAt = time.Time{} }), app: "db",
			want: unmet(2, CondTimeWindow, "this app is open mon-fri 08:00-18:00 Europe/Berlin only; the request time is unknown (rule #2: allow group eng → db when mon-fri 08:00-18:00 Europe/Berlin)"),
		},
	}
	seen := make(map[string]bool)
	for _, tt := range tests {
		if seen[tt.name] {
			t.Fatalf("duplicate case name %q", tt.name)
		}
		seen[tt.name] = true
		t.Run(tt.name, func(t *testing.T) {
			got := evaluateGolden(t, tt.rules, tt.sub, tt.app, tt.want)
			if ref := naiveEvaluate(tt.rules, tt.sub, tt.app); ref.Allow != got.Allow || ref.Rule != got.Rule || ref.Unmet != got.Unmet {
				t.Errorf("naive evaluation disagrees: got rule %q allow %v unmet %v, naive rule %q allow %v unmet %v", got.Rule, got.Allow, got.Unmet, ref.Rule, ref.Allow, ref.Unmet)
			}
		})
	}
}

func TestCompileRejects(t *testing.T) {
	ok := func(mod func(*api.PolicyRule)) []api.PolicyRule {
		x := r(1, api.Allow, nil, l("eng"), l("wiki"))
		mod(&x)
		return []api.PolicyRule{x}
	}
	tests := []struct {
		name    string
		rules   []api.PolicyRule
		wantMsg string // a part of the error message that names the problem
	}{
		{"unknown action", ok(func(x *api.PolicyRule) { x.Action = "permit" }), `action "permit": must be "allow" or "deny"`},
		{"empty action", ok(func(x *api.PolicyRule) { x.Action = "" }), `action "": must be "allow" or "deny"`},
		{"action in capitals", ok(func(x *api.PolicyRule) { x.Action = "ALLOW" }), `action "ALLOW"`},
		{"no apps", ok(func(x *api.PolicyRule) { x.Apps = nil }), "apps: name at least one app"},
		{"no subjects", ok(func(x *api.PolicyRule) { x.Groups = nil }), "users, groups: name at least one user or group"},
		{"empty user name", ok(func(x *api.PolicyRule) { x.Users = l("alice", "") }), "users[1]: name is empty"},
		{"empty group name", ok(func(x *api.PolicyRule) { x.Groups = l("") }), "groups[0]: name is empty"},
		{"empty app name", ok(func(x *api.PolicyRule) { x.Apps = l("") }), "apps[0]: name is empty"},
		{"padded name", ok(func(x *api.PolicyRule) { x.Apps = l(" wiki") }), `apps[0]: name " wiki" has leading or trailing space`},
		{"control character", ok(func(x *api.PolicyRule) { x.Groups = l("en\ng") }), "groups[0]: name \"en\\ng\" contains a control character"},
		{"invalid UTF-8", ok(func(x *api.PolicyRule) { x.Users = l("\xff") }), "users[0]: name \"\\xff\" is not valid UTF-8"},
		{"glob pattern", ok(func(x *api.PolicyRule) { x.Apps = l("wiki-*") }), `apps[0]: name "wiki-*": "*" is only allowed on its own`},
		{"wildcard with other names", ok(func(x *api.PolicyRule) { x.Groups = l("eng", "*") }), `groups: "*" already matches any name`},
		{"description with a newline", ok(func(x *api.PolicyRule) { x.Description = "line one\nline two" }), "description: contains a control character"},
		{"description too long", ok(func(x *api.PolicyRule) { x.Description = strings.Repeat("x", 501) }), "description: 501 bytes, the limit is 500"},
		{"empty ID", ok(func(x *api.PolicyRule) { x.ID = "" }), "id is empty"},
		{"zero position", ok(func(x *api.PolicyRule) { x.Position = 0 }), "position 0 must be above the previous rule's 0"},
		{"positions out of order", []api.PolicyRule{
			r(2, api.Allow, nil, l("eng"), l("wiki")),
			r(1, api.Allow, nil, l("eng"), l("git")),
		}, "position 1 must be above the previous rule's 2"},
		{"duplicate positions", []api.PolicyRule{
			r(1, api.Allow, nil, l("eng"), l("wiki")),
			r(1, api.Allow, nil, l("eng"), l("git")),
		}, "position 1 must be above the previous rule's 1"},
		{"bad rule after good ones names which", []api.PolicyRule{
			r(1, api.Allow, nil, l("eng"), l("wiki")),
			r(2, api.Deny, nil, nil, l("git")),
		}, `rule 2 of 2 (id "r2", position 2)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Compile(tt.rules)
			if err == nil {
				t.Fatalf("Compile succeeded with %d rules, want an error containing %q", s.Len(), tt.wantMsg)
			}
			if !errors.Is(err, ErrInvalidRule) {
				t.Errorf("error %q does not wrap ErrInvalidRule", err)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error %q\ndoes not contain %q", err, tt.wantMsg)
			}
		})
	}
}

func TestValidateRule(t *testing.T) {
	tests := []struct {
		name    string
		rule    api.PolicyRuleCreate
		wantMsg string // "" means valid
	}{
		{"valid group rule", api.PolicyRuleCreate{Action: api.Allow, Groups: l("eng"), Apps: l("wiki")}, ""},
		{"valid wildcard rule", api.PolicyRuleCreate{Action: api.Deny, Users: l("*"), Apps: l("*")}, ""},
		{"valid insert position", api.PolicyRuleCreate{Position: 3, Action: api.Allow, Users: l("a"), Apps: l("b")}, ""},
		{"negative position", api.PolicyRuleCreate{Position: -1, Action: api.Allow, Users: l("a"), Apps: l("b")}, "position -1: use 0 to append"},
		{"bad action", api.PolicyRuleCreate{Action: "maybe", Users: l("a"), Apps: l("b")}, `action "maybe"`},
		{"no apps", api.PolicyRuleCreate{Action: api.Allow, Users: l("a")}, "apps: name at least one app"},
		{"no subjects", api.PolicyRuleCreate{Action: api.Allow, Apps: l("b")}, "users, groups: name at least one user or group"},
		{"empty subject names", api.PolicyRuleCreate{Action: api.Allow, Users: l(""), Apps: l("b")}, "users[0]: name is empty"},
		{"bad description", api.PolicyRuleCreate{Action: api.Allow, Users: l("a"), Apps: l("b"), Description: "a\tb"}, "description: contains a control character"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateRule(tt.rule)
			if tt.wantMsg == "" {
				if err != nil {
					t.Fatalf("ValidateRule: %v", err)
				}
				return
			}
			if err == nil || !errors.Is(err, ErrInvalidRule) || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("ValidateRule = %v, want ErrInvalidRule containing %q", err, tt.wantMsg)
			}
		})
	}
}

func TestNilSetDenies(t *testing.T) {
	var s *Set
	if s.Len() != 0 {
		t.Errorf("Len = %d, want 0", s.Len())
	}
	if d := s.Evaluate(sub("alice", "eng"), "wiki"); d.Allow || d.Rule != "" || d.Reason == "" {
		t.Errorf("nil Set: %+v, want a default deny with a reason", d)
	}
}

func TestCompileCopiesInput(t *testing.T) {
	rules := []api.PolicyRule{r(1, api.Allow, l("alice"), nil, l("wiki"))}
	s, err := Compile(rules)
	if err != nil {
		t.Fatal(err)
	}
	rules[0].Users[0] = "mallory"
	rules[0].Apps[0] = "prod"
	rules[0].Action = api.Deny
	if d := s.Evaluate(sub("alice"), "wiki"); !d.Allow {
		t.Errorf("changing the input after Compile changed the Set: %+v", d)
	}
	if d := s.Evaluate(sub("mallory"), "wiki"); d.Allow {
		t.Errorf("changing the input after Compile changed the Set: %+v", d)
	}
}

func TestLen(t *testing.T) {
	s, err := Compile(benchRules(37))
	if err != nil {
		t.Fatal(err)
	}
	if s.Len() != 37 {
		t.Errorf("Len = %d, want 37", s.Len())
	}
}

// TestEvaluateNoAlloc guards the grant path: a rule match must not allocate.
func TestEvaluateNoAlloc(t *testing.T) {
	s, err := Compile(benchRules(500))
	if err != nil {
		t.Fatal(err)
	}
	subject := sub("user499", "team7", "team499")
	if d := s.Evaluate(subject, "app499"); d.Rule == "" {
		t.Fatalf("benchmark fixture does not match: %+v", d)
	}
	if n := testing.AllocsPerRun(100, func() { s.Evaluate(subject, "app499") }); n != 0 {
		t.Errorf("Evaluate allocates %v times per matching call, want 0", n)
	}
}

// TestEvaluateMatchesNaive compares the indexed evaluation with a plain scan
// over random policies drawn from a small alphabet, so that names collide.
func TestEvaluateMatchesNaive(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	names := l("a", "b", "c", "ab", "A", "*")
	pick := func(max int, wild bool) []string {
		n := rng.IntN(max + 1)
		var out []string
		for range n {
			v := names[rng.IntN(len(names))]
			if v == "*" && (!wild || n > 1) {
				continue
			}
			out = append(out, v)
		}
		return out
	}
	for iter := range 2000 {
		var rules []api.PolicyRule
		for p := 1; p <= rng.IntN(12); p++ {
			x := api.PolicyRule{ID: api.RuleID(fmt.Sprint("r", p)), Position: p, Action: api.Allow,
				Users: pick(2, true), Groups: pick(3, true), Apps: pick(3, true)}
			if rng.IntN(2) == 0 {
				x.Action = api.Deny
			}
			if len(x.Apps) == 0 {
				x.Apps = l("a")
			}
			if len(x.Users) == 0 && len(x.Groups) == 0 {
				x.Users = l("b")
			}
			rules = append(rules, x)
		}
		s, err := Compile(rules)
		if err != nil {
			// Duplicate names are valid, so only bad fixtures end up here.
			t.Fatalf("iteration %d: Compile: %v", iter, err)
		}
		for range 10 {
			subject := Subject{User: names[rng.IntN(len(names)-1)], Groups: pick(3, false)}
			app := names[rng.IntN(len(names)-1)]
			got, want := s.Evaluate(subject, app), naiveEvaluate(rules, subject, app)
			if got.Allow != want.Allow || got.Rule != want.Rule {
				t.Fatalf("iteration %d: rules %+v subject %+v app %q: got %+v, naive %+v", iter, rules, subject, app, got, want)
			}
		}
	}
}

// naiveEvaluate is the policy semantics written as plainly as possible, to
// check the indexed Set against: the first rule whose app, users or groups
// and conditions all match decides; failing that, the allow rule with the
// fewest unmet conditions (the first among equals) is named with them.
func naiveEvaluate(rules []api.PolicyRule, sub Subject, app string) Decision {
	in := func(list []string, v string) bool {
		for _, x := range list {
			if v != "" && (x == "*" || x == v) {
				return true
			}
		}
		return false
	}
	if sub.User == "" || app == "" {
		return Decision{}
	}
	var best Decision
	for _, r := range rules {
		if !in(r.Apps, app) {
			continue
		}
		match := in(r.Users, sub.User)
		for _, g := range sub.Groups {
			match = match || in(r.Groups, g)
		}
		if !match {
			continue
		}
		unmet := naiveUnmet(r.RuleConditions, sub)
		if unmet == 0 {
			return Decision{Allow: r.Action == api.Allow, Rule: r.ID, Position: r.Position}
		}
		if r.Action == api.Allow && (best.Rule == "" || bits.OnesCount8(uint8(unmet)) < bits.OnesCount8(uint8(best.Unmet))) {
			best = Decision{Rule: r.ID, Position: r.Position, Unmet: unmet}
		}
	}
	return best
}
