package policy

import (
	"fmt"
	"testing"

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
