package policy

import (
	"math/bits"
	"slices"

	"github.com/keyhole-net/keyhole/internal/api"
)

// trace records what one evaluation looked at, for Explain.
type trace struct {
	visits  []visit
	decided int32 // index of the rule that decided; -1 for none
}

// visit is one rule the evaluation looked at: it covers the app.
type visit struct {
	rule    int32
	subject bool    // users or groups matched
	unmet   CondSet // conditions that failed (checked only if subject)
}

func (t *trace) visit(i int32, subject bool, unmet CondSet) {
	t.visits = append(t.visits, visit{rule: i, subject: subject, unmet: unmet})
	if subject && unmet == 0 {
		t.decided = i
	}
}

// Explain decides like Evaluate — it is the same evaluation, recorded — and
// also returns every rule of the set in order with what the evaluation
// found: whether the rule covers the app, whether its users or groups
// matched, each condition's requirement against the request's value, and
// which rule decided. It is for keyhole admin why, not for the grant path.
func (s *Set) Explain(sub Subject, app string) (Decision, []api.WhyRule) {
	tr := trace{decided: -1}
	dec := s.eval(&sub, app, &tr)
	if s == nil {
		return dec, []api.WhyRule{}
	}
	// eval refuses an empty user or app before looking at any rule.
	refused := sub.User == "" || app == ""
	out := make([]api.WhyRule, len(s.rules))
	for i := range s.rules {
		r := &s.rules[i]
		w := api.WhyRule{ID: r.dec.Rule, Position: r.dec.Position, Action: api.Deny, Rule: r.head}
		if r.dec.Allow {
			w.Action = api.Allow
		}
		j := slices.IndexFunc(tr.visits, func(v visit) bool { return v.rule == int32(i) })
		var v visit
		if j >= 0 {
			v = tr.visits[j]
		}
		switch {
		case j >= 0 && int32(i) == tr.decided:
			w.Result = api.WhyDecided
		case j >= 0 && !v.subject:
			w.Result = api.WhyOtherSubject
		case j >= 0:
			w.Result = api.WhyUnmet
		case refused || (tr.decided >= 0 && int32(i) > tr.decided && s.covers(int32(i), app)):
			w.Result = api.WhyNotReached
		default:
			w.Result = api.WhyOtherApp
		}
		if r.conds != nil {
			checked := j >= 0 && v.subject
			eachCond(r.conds.has, func(c CondSet) {
				w.Conditions = append(w.Conditions, api.WhyCondition{
					Name:    condNames[bits.TrailingZeros8(uint8(c))],
					Want:    r.conds.want(c),
					Got:     r.conds.got(c, &sub),
					Checked: checked,
					Met:     checked && v.unmet&c == 0,
				})
			})
		}
		out[i] = w
	}
	return dec, out
}

// covers reports whether rule i covers app.
func (s *Set) covers(i int32, app string) bool {
	_, named := slices.BinarySearch(s.byApp[app], i)
	_, wild := slices.BinarySearch(s.anyApp, i)
	return named || wild
}
