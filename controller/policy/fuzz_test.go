package policy

import (
	"fmt"
	"strings"
	"testing"

	"github.com/keyhole-net/keyhole/internal/api"
)

// FuzzCompileEvaluate feeds arbitrary rules and requests through Compile and
// Evaluate. Neither may panic; a compiled Set must agree with the plain
// reference evaluation and always give a reason.
//
// A policy is written one rule per line as
// "action|users,…|groups,…|apps,…|description"; the request as
// "user|groups,…|app".
func FuzzCompileEvaluate(f *testing.F) {
	f.Add("allow||eng|wiki|\ndeny|mallory||*|offboarded", "mallory|eng|wiki")
	f.Add("deny||contractors|*|\nallow||contractors|wiki|", "cy|contractors|wiki")
	f.Add("allow|*||*|", "anyone||anything")
	f.Add("allow||*|intranet|", "zed||intranet")
	f.Add("permit|a||b|", "a||b")
	f.Add("allow|a,,b||c|", "a||c")
	f.Add("allow|o'neil||my app|", "o'neil|big team|my app")
	f.Add("", "|\xff|")
	f.Fuzz(func(t *testing.T, policy, request string) {
		var rules []api.PolicyRule
		for i, line := range strings.Split(policy, "\n") {
			if i >= 64 {
				break
			}
			fs := strings.SplitN(line, "|", 5)
			for len(fs) < 5 {
				fs = append(fs, "")
			}
			rules = append(rules, api.PolicyRule{
				ID: api.RuleID(fmt.Sprint("r", i)), Position: i + 1, Action: api.Action(fs[0]),
				Users: split(fs[1]), Groups: split(fs[2]), Apps: split(fs[3]), Description: fs[4],
			})
		}
		rq := strings.SplitN(request, "|", 3)
		for len(rq) < 3 {
			rq = append(rq, "")
		}
		subject, app := Subject{User: rq[0], Groups: split(rq[1])}, rq[2]

		s, err := Compile(rules)
		if err != nil {
			if s != nil {
				t.Fatalf("Compile returned a Set and an error: %v", err)
			}
			// A nil Set still has to answer safely.
			if d := s.Evaluate(subject, app); d.Allow {
				t.Fatalf("nil Set allowed: %+v", d)
			}
			return
		}
		if s.Len() != len(rules) {
			t.Fatalf("Len = %d, want %d", s.Len(), len(rules))
		}
		got := s.Evaluate(subject, app)
		want := naiveEvaluate(rules, subject, app)
		if got.Allow != want.Allow || got.Rule != want.Rule || got.Position != want.Position {
			t.Fatalf("got %+v, reference %+v", got, want)
		}
		if got.Reason == "" {
			t.Fatalf("empty reason: %+v", got)
		}
		if got.Allow && got.Rule == "" {
			t.Fatalf("allowed without a rule: %+v", got)
		}
		for _, r := range rules {
			if err := ValidateRule(api.PolicyRuleCreate{Action: r.Action, Users: r.Users, Groups: r.Groups, Apps: r.Apps, Description: r.Description}); err != nil {
				t.Fatalf("Compile accepted a rule ValidateRule rejects: %+v: %v", r, err)
			}
		}
	})
}

func split(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}
