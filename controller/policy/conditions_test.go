package policy

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/internal/api"
)

var (
	berlin = mustZone("Europe/Berlin")
	// officeHours is Mon–Fri 08:00–18:00 in Berlin; officeHoursOutside
	// holds outside it.
	officeHours        = api.TimeWindow{Days: []string{"mon-fri"}, Start: "08:00", End: "18:00", TZ: "Europe/Berlin"}
	officeHoursOutside = api.TimeWindow{Days: []string{"mon-fri"}, Start: "08:00", End: "18:00", TZ: "Europe/Berlin", Outside: true}
	// Monday 2026-11-23 10:00 CET and Saturday 2026-11-28 10:00 CET.
	monday10   = time.Date(2026, 11, 23, 10, 0, 0, 0, berlin)
	saturday10 = time.Date(2026, 11, 28, 10, 0, 0, 0, berlin)
	office     = netip.MustParsePrefix("198.51.100.0/24")
)

func mustZone(name string) *time.Location {
	loc, err := time.LoadLocation(name)
	if err != nil {
		panic(err)
	}
	return loc
}

// rc builds a rule with conditions.
func rc(p int, action api.Action, groups, apps []string, c api.RuleConditions) api.PolicyRule {
	x := r(p, action, nil, groups, apps)
	x.RuleConditions = c
	return x
}

// at is alice of eng asking at t with the other facts given.
func at(t time.Time, mod ...func(*Subject)) Subject {
	s := Subject{User: "alice", Groups: l("eng"), Time: t, Device: "dev_1", DeviceApproved: true,
		Source: netip.MustParseAddr("198.51.100.7"), MFAAt: t.Add(-5 * time.Minute)}
	for _, m := range mod {
		m(&s)
	}
	return s
}

func mfa15() api.RuleConditions { return api.RuleConditions{MFAWithin: api.Duration(15 * time.Minute)} }

func inWindow(w api.TimeWindow) api.RuleConditions { return api.RuleConditions{TimeWindow: &w} }

// TestMFAStaleOrNever: an MFA older than allowed and no MFA at all are the
// same denial, which says what to do.
func TestMFAStaleOrNever(t *testing.T) {
	rules := []api.PolicyRule{rc(1, api.Allow, l("eng"), l("payroll"), mfa15())}
	want := unmet(1, CondMFA, "re-authenticate with MFA (keyhole login) — this app needs MFA within 15m (rule #1: allow group eng → payroll when MFA within 15m)")
	for _, mfaAt := range []time.Time{monday10.Add(-15*time.Minute - time.Second), {}} {
		evaluateGolden(t, rules, at(monday10, func(s *Subject) { s.MFAAt = mfaAt }), "payroll", want)
	}
}

// evaluateGolden compiles rules and checks that Evaluate and Explain both
// decide want for sub and app; it returns the decision.
func evaluateGolden(t *testing.T, rules []api.PolicyRule, sub Subject, app string, want Decision) Decision {
	t.Helper()
	s, err := Compile(rules)
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	got := s.Evaluate(sub, app)
	if got != want {
		t.Errorf("Evaluate(%+v, %q)\n got: %#v\nwant: %#v", sub, app, got, want)
	}
	if exp, _ := s.Explain(sub, app); exp != got {
		t.Errorf("Explain decided %#v, Evaluate %#v", exp, got)
	}
	return got
}

func unmet(p int, c CondSet, reason string) Decision {
	return Decision{Rule: api.RuleID(fmt.Sprintf("r%d", p)), Position: p, Reason: reason, Unmet: c}
}

// TestWindow checks time windows against local wall-clock time, across
// midnight and daylight saving changes.
func TestWindow(t *testing.T) {
	utc := func(s string) time.Time {
		v, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	tests := []struct {
		name string
		w    api.TimeWindow
		at   string
		want bool
	}{
		// Office hours in Berlin, winter (CET, UTC+1).
		{"winter, before opening", officeHours, "2026-11-23T06:59:59Z", false},
		{"winter, opening minute", officeHours, "2026-11-23T07:00:00Z", true},
		{"winter, last second", officeHours, "2026-11-23T16:59:59Z", true},
		{"winter, end is exclusive", officeHours, "2026-11-23T17:00:00Z", false},
		{"winter, Saturday", officeHours, "2026-11-28T09:00:00Z", false},
		// Summer (CEST, UTC+2): the same wall-clock hours are other UTC hours.
		{"summer, 08:00 local", officeHours, "2026-07-06T06:00:00Z", true},
		{"summer, 07:59 local (08:59 in CET)", officeHours, "2026-07-06T05:59:00Z", false},
		{"summer, 18:30 local (17:30 in CET)", officeHours, "2026-07-06T16:30:00Z", false},
		// Friday night shift 22:00–06:00 UTC crosses midnight into Saturday.
		{"night, Friday 23:00", api.TimeWindow{Days: l("fri"), Start: "22:00", End: "06:00", TZ: "UTC"}, "2026-11-27T23:00:00Z", true},
		{"night, Saturday 00:00", api.TimeWindow{Days: l("fri"), Start: "22:00", End: "06:00", TZ: "UTC"}, "2026-11-28T00:00:00Z", true},
		{"night, Saturday 05:59", api.TimeWindow{Days: l("fri"), Start: "22:00", End: "06:00", TZ: "UTC"}, "2026-11-28T05:59:59Z", true},
		{"night, Saturday 06:00", api.TimeWindow{Days: l("fri"), Start: "22:00", End: "06:00", TZ: "UTC"}, "2026-11-28T06:00:00Z", false},
		{"night, Saturday 22:30 (Saturday's own night is not in)", api.TimeWindow{Days: l("fri"), Start: "22:00", End: "06:00", TZ: "UTC"}, "2026-11-28T22:30:00Z", false},
		{"night, Friday 21:59", api.TimeWindow{Days: l("fri"), Start: "22:00", End: "06:00", TZ: "UTC"}, "2026-11-27T21:59:00Z", false},
		{"night, Friday 05:00 (Thursday's night)", api.TimeWindow{Days: l("fri"), Start: "22:00", End: "06:00", TZ: "UTC"}, "2026-11-27T05:00:00Z", false},
		{"weeknights, Monday 05:00 is Sunday's night", api.TimeWindow{Days: l("mon-fri"), Start: "22:00", End: "06:00", TZ: "UTC"}, "2026-11-23T05:00:00Z", false},
		{"weeknights, Saturday 05:00 is Friday's night", api.TimeWindow{Days: l("mon-fri"), Start: "22:00", End: "06:00", TZ: "UTC"}, "2026-11-28T05:00:00Z", true},
		// Spring forward in Berlin, 2026-03-29: 02:00 CET becomes 03:00 CEST at 01:00Z.
		{"spring, 01:30 CET", api.TimeWindow{Start: "01:00", End: "03:00", TZ: "Europe/Berlin"}, "2026-03-29T00:30:00Z", true},
		{"spring, 01:59:59 CET", api.TimeWindow{Start: "01:00", End: "03:00", TZ: "Europe/Berlin"}, "2026-03-29T00:59:59Z", true},
		{"spring, the next second is 03:00 CEST", api.TimeWindow{Start: "01:00", End: "03:00", TZ: "Europe/Berlin"}, "2026-03-29T01:00:00Z", false},
		{"spring, a window in the skipped hour starts at 03:00", api.TimeWindow{Start: "02:30", End: "04:00", TZ: "Europe/Berlin"}, "2026-03-29T01:00:00Z", true},
		// Fall back, 2026-10-25: 03:00 CEST becomes 02:00 CET at 01:00Z;
		// 02:00–03:00 local happens twice and is in the window both times.
		{"fall, first 02:30 (CEST)", api.TimeWindow{Start: "02:00", End: "03:00", TZ: "Europe/Berlin"}, "2026-10-25T00:30:00Z", true},
		{"fall, second 02:30 (CET)", api.TimeWindow{Start: "02:00", End: "03:00", TZ: "Europe/Berlin"}, "2026-10-25T01:30:00Z", true},
		{"fall, 03:00 CET", api.TimeWindow{Start: "02:00", End: "03:00", TZ: "Europe/Berlin"}, "2026-10-25T02:00:00Z", false},
		// Whole days, ranges that wrap the week, half-hour zones.
		{"weekend whole day, Sunday 23:59:59", api.TimeWindow{Days: l("sat", "sun"), Start: "00:00", End: "24:00", TZ: "UTC"}, "2026-11-29T23:59:59Z", true},
		{"weekend whole day, Monday 00:00", api.TimeWindow{Days: l("sat", "sun"), Start: "00:00", End: "24:00", TZ: "UTC"}, "2026-11-30T00:00:00Z", false},
		{"fri-mon wraps: Monday", api.TimeWindow{Days: l("FRI-MON"), Start: "00:00", End: "24:00", TZ: "UTC"}, "2026-11-23T12:00:00Z", true},
		{"fri-mon wraps: Tuesday", api.TimeWindow{Days: l("fri-mon"), Start: "00:00", End: "24:00", TZ: "UTC"}, "2026-11-24T12:00:00Z", false},
		{"India, 09:00 IST", api.TimeWindow{Start: "09:00", End: "17:00", TZ: "Asia/Kolkata"}, "2026-11-23T03:30:00Z", true},
		{"India, 08:59 IST", api.TimeWindow{Start: "09:00", End: "17:00", TZ: "Asia/Kolkata"}, "2026-11-23T03:29:00Z", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, err := compileWindow(tt.w, nil)
			if err != nil {
				t.Fatal(err)
			}
			ts := utc(tt.at)
			if got := w.holds(ts); got != tt.want {
				t.Errorf("%s at %s (%s): holds = %v, want %v", tt.w, tt.at, ts.In(w.loc).Format("Mon 15:04 MST"), got, tt.want)
			}
			if ref := naiveContains(w, ts); ref != tt.want {
				t.Errorf("reference says %v", ref)
			}
			w.outside = true
			if got := w.holds(ts); got == tt.want {
				t.Errorf("outside the window: holds = %v, want %v", got, !tt.want)
			}
		})
	}
	w, _ := compileWindow(officeHours, nil)
	if w.holds(time.Time{}) {
		t.Error("a zero time is inside the window")
	}
	w.outside = true
	if w.holds(time.Time{}) {
		t.Error("a zero time is outside the window")
	}
}

// naiveContains is window.contains written another way: the local wall
// clock as a date-time, checked against the window that opened today and
// the one that opened yesterday.
func naiveContains(w window, t time.Time) bool {
	lt := t.In(w.loc)
	wall := time.Date(lt.Year(), lt.Month(), lt.Day(), lt.Hour(), lt.Minute(), lt.Second(), 0, time.UTC)
	for _, back := range []int{0, 1} {
		d := time.Date(lt.Year(), lt.Month(), lt.Day()-back, 0, 0, 0, 0, time.UTC)
		if w.days&(1<<d.Weekday()) == 0 {
			continue
		}
		open := d.Add(time.Duration(w.start) * time.Second)
		end := d.Add(time.Duration(w.end) * time.Second)
		if w.end <= w.start {
			end = end.Add(24 * time.Hour)
		}
		if !wall.Before(open) && wall.Before(end) {
			return true
		}
	}
	return false
}

func TestCompileRejectsConditions(t *testing.T) {
	win := func(mod func(*api.TimeWindow)) api.RuleConditions {
		w := officeHours
		mod(&w)
		return api.RuleConditions{TimeWindow: &w}
	}
	tests := []struct {
		name    string
		c       api.RuleConditions
		wantMsg string
	}{
		{"negative MFA age", api.RuleConditions{MFAWithin: api.Duration(-time.Minute)}, "mfa_within: -1m is negative"},
		{"unknown day", win(func(w *api.TimeWindow) { w.Days = l("mon-fro") }), `time_window: days[0]: "mon-fro": want a day`},
		{"too many days", win(func(w *api.TimeWindow) { w.Days = l("mon", "tue", "wed", "thu", "fri", "sat", "sun", "mon") }), "days: 8 entries, the limit is 7"},
		{"hour without zero", win(func(w *api.TimeWindow) { w.Start = "8:00" }), `start: "8:00": want HH:MM`},
		{"signed hour", win(func(w *api.TimeWindow) { w.Start = "+8:00" }), `start: "+8:00": want HH:MM`},
		{"minutes past 59", win(func(w *api.TimeWindow) { w.End = "18:60" }), `end: "18:60": want HH:MM`},
		{"hour 25", win(func(w *api.TimeWindow) { w.End = "25:00" }), `end: "25:00": hours run 00 to 23 (24:00 is the end of the day)`},
		{"start at 24:00", win(func(w *api.TimeWindow) { w.Start = "24:00" }), `start: "24:00": hours run 00 to 23`},
		{"empty window", win(func(w *api.TimeWindow) { w.End = "08:00" }), "start and end are both 08:00"},
		{"no zone", win(func(w *api.TimeWindow) { w.TZ = "" }), "tz: give an IANA time zone"},
		{"unknown zone", win(func(w *api.TimeWindow) { w.TZ = "Mars/Olympus_Mons" }), `tz "Mars/Olympus_Mons": unknown time zone`},
		{"host-local zone", win(func(w *api.TimeWindow) { w.TZ = "Local" }), `tz "Local": name the zone`},
		{"path as zone", win(func(w *api.TimeWindow) { w.TZ = "../../etc/passwd" }), "unknown time zone"},
		{"zone with space", win(func(w *api.TimeWindow) { w.TZ = "Europe/ Berlin" }), "not an IANA time zone name"},
		{"host bits in source", api.RuleConditions{SourceCIDRs: []netip.Prefix{netip.MustParsePrefix("198.51.100.7/24")}}, "source_cidrs[0]: 198.51.100.7/24 has host bits set; did you mean 198.51.100.0/24?"},
		{"mapped source", api.RuleConditions{SourceCIDRs: []netip.Prefix{netip.MustParsePrefix("::ffff:198.51.100.0/120")}}, "write IPv4 prefixes as IPv4"},
		{"invalid source", api.RuleConditions{SourceCIDRs: []netip.Prefix{{}}}, "source_cidrs[0]: not a valid prefix"},
		{"too many sources", api.RuleConditions{SourceCIDRs: slices.Repeat([]netip.Prefix{office}, 65)}, "source_cidrs: 65 prefixes, the limit is 64"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Compile([]api.PolicyRule{rc(1, api.Allow, l("eng"), l("wiki"), tt.c)})
			if err == nil || !errors.Is(err, ErrInvalidRule) || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("Compile = %v\nwant ErrInvalidRule containing %q", err, tt.wantMsg)
			}
			err = ValidateRule(api.PolicyRuleCreate{Action: api.Allow, Groups: l("eng"), Apps: l("wiki"), RuleConditions: tt.c})
			if err == nil || !errors.Is(err, ErrInvalidRule) || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("ValidateRule = %v\nwant ErrInvalidRule containing %q", err, tt.wantMsg)
			}
		})
	}
}

func TestCondSetNames(t *testing.T) {
	if got := CondSet(0).Names(); got != nil {
		t.Errorf("no conditions: %v", got)
	}
	got := (CondDeviceApproved | CondMFA | CondSource).Names()
	want := l(api.CondMFAWithin, api.CondSourceCIDRs, api.CondDeviceApproved)
	if !slices.Equal(got, want) {
		t.Errorf("Names = %v, want %v", got, want)
	}
}

func TestTimeDependent(t *testing.T) {
	s, err := Compile([]api.PolicyRule{
		rc(1, api.Allow, l("eng"), l("wiki"), inWindow(officeHours)),
		rc(2, api.Allow, l("eng"), l("payroll"), mfa15()),
		rc(3, api.Allow, l("eng"), l("db"), api.RuleConditions{DeviceApproved: true}),
		r(4, api.Allow, nil, l("eng"), l("git")),
	})
	if err != nil {
		t.Fatal(err)
	}
	for app, want := range map[string]bool{"wiki": true, "payroll": true, "db": false, "git": false} {
		if got := s.TimeDependent(app); got != want {
			t.Errorf("TimeDependent(%s) = %v, want %v", app, got, want)
		}
	}
	if !s.AnyTimeDependent() {
		t.Error("AnyTimeDependent = false")
	}
	wild, err := Compile([]api.PolicyRule{rc(1, api.Deny, l("eng"), l("*"), inWindow(officeHours))})
	if err != nil {
		t.Fatal(err)
	}
	if !wild.TimeDependent("anything") {
		t.Error("a window on * does not make every app time-dependent")
	}
	plain, _ := Compile(benchRules(10))
	var none *Set
	if plain.AnyTimeDependent() || none.AnyTimeDependent() || none.TimeDependent("x") {
		t.Error("a policy without time conditions is time-dependent")
	}
}

// TestEvaluateConditionsNoAlloc guards the grant path with conditions: a
// match allocates nothing, a window check included.
func TestEvaluateConditionsNoAlloc(t *testing.T) {
	s, err := Compile(benchConditionRules(500))
	if err != nil {
		t.Fatal(err)
	}
	sub := benchConditionSubject()
	if d := s.Evaluate(sub, "app499"); !d.Allow {
		t.Fatalf("fixture does not match: %+v", d)
	}
	if n := testing.AllocsPerRun(100, func() { s.Evaluate(sub, "app499") }); n != 0 {
		t.Errorf("Evaluate allocates %v times per matching call, want 0", n)
	}
}

// TestExplain checks the account of one evaluation rule by rule.
func TestExplain(t *testing.T) {
	s, err := Compile([]api.PolicyRule{
		r(1, api.Deny, l("mallory"), nil, l("*")),
		r(2, api.Allow, nil, l("eng"), l("git")),
		rc(3, api.Allow, l("eng"), l("payroll"), api.RuleConditions{MFAWithin: api.Duration(15 * time.Minute), SourceCIDRs: []netip.Prefix{office}}),
		rc(4, api.Allow, l("ops"), l("payroll"), api.RuleConditions{DeviceApproved: true}),
		r(5, api.Allow, nil, l("eng"), l("*")),
		r(6, api.Deny, nil, l("eng"), l("payroll")),
	})
	if err != nil {
		t.Fatal(err)
	}
	sub := at(monday10, func(s *Subject) { s.MFAAt = time.Time{} })
	dec, rules := s.Explain(sub, "payroll")
	if !dec.Allow || dec.Rule != "r5" {
		t.Fatalf("decision %+v, want allowed by r5", dec)
	}
	wantResults := []string{api.WhyOtherSubject, api.WhyOtherApp, api.WhyUnmet, api.WhyOtherSubject, api.WhyDecided, api.WhyNotReached}
	for i, w := range rules {
		if w.Result != wantResults[i] || w.Position != i+1 || w.ID != api.RuleID(fmt.Sprint("r", i+1)) {
			t.Errorf("rule %d: %+v, want result %s", i+1, w, wantResults[i])
		}
	}
	wantConds := []api.WhyCondition{
		{Name: api.CondMFAWithin, Want: "MFA within 15m", Got: "never (no MFA in this session)", Checked: true, Met: false},
		{Name: api.CondSourceCIDRs, Want: "from 198.51.100.0/24", Got: "198.51.100.7", Checked: true, Met: true},
	}
	if !slices.Equal(rules[2].Conditions, wantConds) {
		t.Errorf("rule 3 conditions\n got %+v\nwant %+v", rules[2].Conditions, wantConds)
	}
	if rules[2].Rule != "allow group eng → payroll when MFA within 15m, from 198.51.100.0/24" || rules[2].Action != api.Allow {
		t.Errorf("rule 3 text %q action %s", rules[2].Rule, rules[2].Action)
	}
	wantUnchecked := []api.WhyCondition{{Name: api.CondDeviceApproved, Want: "an approved device", Got: "device dev_1 is approved"}}
	if !slices.Equal(rules[3].Conditions, wantUnchecked) {
		t.Errorf("rule 4 (other subject) conditions %+v, want unchecked %+v", rules[3].Conditions, wantUnchecked)
	}

	// Refused before any rule: nothing is reached.
	_, rules = s.Explain(Subject{Groups: l("eng")}, "payroll")
	for _, w := range rules {
		if w.Result != api.WhyNotReached {
			t.Errorf("empty user: rule %d is %s", w.Position, w.Result)
		}
	}
	var none *Set
	if dec, rules := none.Explain(sub, "x"); dec.Allow || rules == nil || len(rules) != 0 {
		t.Errorf("nil Set: %+v %+v", dec, rules)
	}
}

// TestExplainMatchesEvaluate draws random policies with conditions and
// random requests: Explain and Evaluate must decide the same, Explain's
// trace must agree with the decision, and both must match a plain
// reference.
func TestExplainMatchesEvaluate(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	base := time.Date(2026, 11, 23, 7, 30, 0, 0, time.UTC) // Monday 08:30 in Berlin
	times := []time.Time{base, base.Add(10 * time.Hour), base.Add(5 * 24 * time.Hour), {}}
	windows := []*api.TimeWindow{nil, &officeHours, {Days: l("fri"), Start: "22:00", End: "06:00", TZ: "UTC", Outside: true}}
	sources := []netip.Addr{{}, netip.MustParseAddr("198.51.100.7"), netip.MustParseAddr("203.0.113.1")}
	pick := func(names ...string) []string {
		var out []string
		for _, n := range names {
			if rng.IntN(2) == 0 {
				out = append(out, n)
			}
		}
		return out
	}
	for iter := range 3000 {
		var rules []api.PolicyRule
		for p := 1; p <= 1+rng.IntN(8); p++ {
			x := api.PolicyRule{ID: api.RuleID(fmt.Sprint("r", p)), Position: p, Action: api.Allow,
				Users: pick("alice", "bob"), Groups: pick("eng", "ops"), Apps: pick("wiki", "db")}
			if rng.IntN(3) == 0 {
				x.Action = api.Deny
			}
			if rng.IntN(4) == 0 {
				x.Apps = l("*")
			}
			if len(x.Apps) == 0 {
				x.Apps = l("wiki")
			}
			if len(x.Users)+len(x.Groups) == 0 {
				x.Groups = l("eng")
			}
			if rng.IntN(2) == 0 {
				x.MFAWithin = api.Duration(time.Duration(rng.IntN(3)) * 10 * time.Minute)
			}
			x.TimeWindow = windows[rng.IntN(len(windows))]
			if rng.IntN(3) == 0 {
				x.SourceCIDRs = []netip.Prefix{office}
			}
			x.DeviceApproved = rng.IntN(3) == 0
			rules = append(rules, x)
		}
		s, err := Compile(rules)
		if err != nil {
			t.Fatalf("iteration %d: Compile: %v", iter, err)
		}
		for range 10 {
			now := times[rng.IntN(len(times))]
			sub := Subject{User: l("alice", "bob", "carol")[rng.IntN(3)], Groups: pick("eng", "ops"), Time: now,
				Source: sources[rng.IntN(len(sources))], Device: "dev_1", DeviceApproved: rng.IntN(2) == 0}
			if rng.IntN(3) > 0 && !now.IsZero() {
				sub.MFAAt = now.Add(-time.Duration(rng.IntN(30)) * time.Minute)
			}
			app := l("wiki", "db", "git")[rng.IntN(3)]
			got := s.Evaluate(sub, app)
			exp, trace := s.Explain(sub, app)
			if exp != got {
				t.Fatalf("iteration %d: Explain %+v, Evaluate %+v", iter, exp, got)
			}
			if ref := naiveEvaluate(rules, sub, app); got.Allow != ref.Allow || got.Rule != ref.Rule || got.Unmet != ref.Unmet {
				t.Fatalf("iteration %d: rules %+v\nsubject %+v app %s\ngot %+v\nreference %+v", iter, rules, sub, app, got, ref)
			}
			decided := slices.IndexFunc(trace, func(w api.WhyRule) bool { return w.Result == api.WhyDecided })
			switch {
			case got.Rule != "" && got.Unmet == 0:
				if decided < 0 || trace[decided].ID != got.Rule {
					t.Fatalf("iteration %d: decided by %s, trace %+v", iter, got.Rule, trace)
				}
			case decided >= 0:
				t.Fatalf("iteration %d: no rule decided (%+v), trace says %s", iter, got, trace[decided].ID)
			}
			for i, w := range trace {
				if w.Result == api.WhyNotReached && (decided < 0 || i < decided) {
					t.Fatalf("iteration %d: rule %d not reached before the deciding one: %+v", iter, i+1, trace)
				}
				if got.Unmet != 0 && w.ID == got.Rule && w.Result != api.WhyUnmet {
					t.Fatalf("iteration %d: the denial names %s, whose trace is %s", iter, w.ID, w.Result)
				}
			}
		}
	}
}

// naiveUnmet checks a rule's conditions plainly, the time window with
// naiveContains.
func naiveUnmet(c api.RuleConditions, sub Subject) CondSet {
	var unmet CondSet
	if c.MFAWithin > 0 && (sub.MFAAt.IsZero() || sub.Time.IsZero() || sub.Time.Sub(sub.MFAAt) > time.Duration(c.MFAWithin)) {
		unmet |= CondMFA
	}
	if c.TimeWindow != nil {
		w, err := compileWindow(*c.TimeWindow, nil)
		if err != nil || sub.Time.IsZero() || naiveContains(w, sub.Time) == c.TimeWindow.Outside {
			unmet |= CondTimeWindow
		}
	}
	if len(c.SourceCIDRs) > 0 && !slices.ContainsFunc(c.SourceCIDRs, func(p netip.Prefix) bool { return sub.Source.IsValid() && p.Contains(sub.Source.Unmap()) }) {
		unmet |= CondSource
	}
	if c.DeviceApproved && !sub.DeviceApproved {
		unmet |= CondDeviceApproved
	}
	return unmet
}
