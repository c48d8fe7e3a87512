package policy

import (
	"fmt"
	"strings"
	"testing"
	"time"

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

// FuzzTimeWindow feeds arbitrary windows (days as comma-separated entries)
// and times through the condition compiler and the window check. Neither
// may panic; Compile and ValidateRule must agree on what is valid; a valid
// window must agree with the plain reference and invert exactly when
// Outside is set.
func FuzzTimeWindow(f *testing.F) {
	f.Add("mon-fri", "08:00", "18:00", "Europe/Berlin", int64(1795413600), false)
	f.Add("fri", "22:00", "06:00", "UTC", int64(1795557600), true)
	f.Add("sat,sun", "00:00", "24:00", "Asia/Kolkata", int64(0), false)
	f.Add("", "01:00", "03:00", "Europe/Berlin", int64(1774746000), false)
	f.Add("fri-mon", "23:59", "00:01", "America/St_Johns", int64(-1), false)
	f.Add("mon-fro", "8:00", "25:00", "../etc/passwd", int64(1), true)
	f.Fuzz(func(t *testing.T, days, start, end, tz string, unix int64, outside bool) {
		w := api.TimeWindow{Days: split(days), Start: start, End: end, TZ: tz, Outside: outside}
		c := api.RuleConditions{TimeWindow: &w}
		s, err := Compile([]api.PolicyRule{{ID: "r1", Position: 1, Action: api.Allow, Users: []string{"u"}, Apps: []string{"a"}, RuleConditions: c}})
		verr := ValidateRule(api.PolicyRuleCreate{Action: api.Allow, Users: []string{"u"}, Apps: []string{"a"}, RuleConditions: c})
		if (err == nil) != (verr == nil) {
			t.Fatalf("Compile: %v; ValidateRule: %v", err, verr)
		}
		if err != nil {
			return
		}
		ts := time.Unix(unix, 0)
		d := s.Evaluate(Subject{User: "u", Time: ts}, "a")
		cw, err := compileWindow(w, nil)
		if err != nil {
			t.Fatalf("Compile accepted a window compileWindow rejects: %v", err)
		}
		if want := naiveContains(cw, ts) != outside; d.Allow != want {
			t.Fatalf("%s at %s: allow %v, reference %v", w, ts.In(cw.loc), d.Allow, want)
		}
		if d.Reason == "" || (!d.Allow && d.Unmet != CondTimeWindow) {
			t.Fatalf("decision %+v", d)
		}
		_, trace := s.Explain(Subject{User: "u", Time: ts}, "a")
		if len(trace) != 1 || len(trace[0].Conditions) != 1 || trace[0].Conditions[0].Met != d.Allow {
			t.Fatalf("trace %+v for %+v", trace, d)
		}
	})
}
