package policy

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/internal/api"
)

// benchRules builds n rules shaped like a real policy: rule i lets user<i>
// and group team<i> reach app<i> and the app "shared" that every rule names,
// and every 25th rule denies one user everything.
func benchRules(n int) []api.PolicyRule {
	rules := make([]api.PolicyRule, n)
	for i := range rules {
		x := api.PolicyRule{
			ID:       api.RuleID(fmt.Sprintf("rule_%d", i)),
			Position: i + 1,
			Action:   api.Allow,
			Users:    []string{fmt.Sprintf("user%d", i)},
			Groups:   []string{fmt.Sprintf("team%d", i)},
			Apps:     []string{fmt.Sprintf("app%d", i), "shared"},
		}
		if i%25 == 0 {
			x.Action, x.Users, x.Groups, x.Apps = api.Deny, []string{fmt.Sprintf("blocked%d", i)}, nil, []string{"*"}
		}
		rules[i] = x
	}
	return rules
}

// BenchmarkEvaluate measures one decision against 500 rules, the size the
// grant path must handle at well over 1000 decisions a second.
func BenchmarkEvaluate(b *testing.B) {
	s, err := Compile(benchRules(500))
	if err != nil {
		b.Fatal(err)
	}
	subject := Subject{User: "user499", Groups: []string{"all-staff", "eng", "team499"}}
	cases := []struct {
		name      string
		sub       Subject
		app       string
		wantAllow bool
	}{
		// The app index skips to the rules that name the app.
		{"named_app_last_rule", subject, "app499", true},
		// Every rule names "shared": the worst case, a scan of all 500.
		{"shared_app_last_rule", subject, "shared", true},
		// No rule names the app: only the wildcard rules are checked, and
		// the reason is built.
		{"default_deny", subject, "unknown", false},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			if d := s.Evaluate(c.sub, c.app); d.Allow != c.wantAllow {
				b.Fatalf("fixture: %+v", d)
			}
			b.ReportAllocs()
			for b.Loop() {
				s.Evaluate(c.sub, c.app)
			}
		})
	}
}

func BenchmarkCompile(b *testing.B) {
	rules := benchRules(500)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Compile(rules); err != nil {
			b.Fatal(err)
		}
	}
}

// benchConditionRules is benchRules with every allow rule carrying all four
// conditions, as a policy that uses them throughout would.
func benchConditionRules(n int) []api.PolicyRule {
	rules := benchRules(n)
	w := officeHours
	for i := range rules {
		if rules[i].Action == api.Allow {
			rules[i].RuleConditions = api.RuleConditions{
				MFAWithin: api.Duration(15 * time.Minute), TimeWindow: &w,
				SourceCIDRs: []netip.Prefix{office}, DeviceApproved: true,
			}
		}
	}
	return rules
}

// benchConditionSubject meets the conditions of benchConditionRules.
func benchConditionSubject() Subject {
	return Subject{User: "user499", Groups: []string{"all-staff", "eng", "team499"}, Time: monday10,
		Source: netip.MustParseAddr("198.51.100.7"), MFAAt: monday10.Add(-time.Minute), Device: "dev_1", DeviceApproved: true}
}

// BenchmarkEvaluateConditions is BenchmarkEvaluate's named-app case when
// the matching rule has every condition: the cost of the checks (a time
// zone conversion among them) on the grant path.
func BenchmarkEvaluateConditions(b *testing.B) {
	s, err := Compile(benchConditionRules(500))
	if err != nil {
		b.Fatal(err)
	}
	met := benchConditionSubject()
	unmet := met
	unmet.MFAAt = time.Time{}
	for _, c := range []struct {
		name      string
		sub       Subject
		wantAllow bool
	}{
		{"named_app_met", met, true},
		// Denied for the unmet MFA: the reason is built.
		{"named_app_unmet", unmet, false},
	} {
		b.Run(c.name, func(b *testing.B) {
			if d := s.Evaluate(c.sub, "app499"); d.Allow != c.wantAllow {
				b.Fatalf("fixture: %+v", d)
			}
			b.ReportAllocs()
			for b.Loop() {
				s.Evaluate(c.sub, "app499")
			}
		})
	}
}
