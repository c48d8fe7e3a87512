// Package policy decides whether a subject (a user and their groups, with
// the facts of their request) may reach an app, by evaluating an ordered
// list of rules: the first matching rule decides, and no match means deny.
//
// A rule matches when its users or groups and its apps match and its
// conditions (MFA age, time window, source address, approved device,
// posture profile) all hold. An allow rule whose conditions fail does not
// match and evaluation goes on; if nothing else allows, the denial names
// the unmet conditions of the allow rule closest to matching, so the person
// can act on them. A deny rule denies only when its conditions hold.
//
// The package is pure logic: it does no I/O, reads no clock, keeps no state
// beyond the compiled [Set], and knows nothing of gateways or the store; the
// caller passes every fact in the [Subject]. The controller loads the
// rules, compiles them once per change with [Compile], and calls
// [Set.Evaluate] on the grant path and [Set.Explain] for keyhole admin why
// (the same code, so the two cannot disagree); the admin API calls
// [ValidateRule] before it stores a new rule.
//
// Names are compared exactly (case-sensitive): "Eng" and "eng" are different
// groups. "*" in Users matches every user, "*" in Groups matches every user
// who belongs to at least one group, and "*" in Apps matches every app.
package policy

import (
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/keyhole-net/keyhole/internal/api"
)

// Wildcard matches any name in a rule's Users, Groups or Apps.
const Wildcard = "*"

// ErrInvalidRule is wrapped by every error from [Compile] and [ValidateRule],
// so the admin API can answer 400 without parsing messages.
var ErrInvalidRule = errors.New("invalid policy rule")

// Subject is who asks — a user and the groups the user belongs to — and
// the facts of the request that rule conditions look at. A fact left zero
// is unknown, and a condition on it fails.
type Subject struct {
	User   string
	Groups []string

	// Time is when the request is decided (time windows, MFA age).
	Time time.Time
	// Source is the client's address as the controller sees it.
	Source netip.Addr
	// MFAAt is when the session last passed MFA; zero means never.
	MFAAt time.Time
	// Device is the requesting device ("" unknown), and DeviceApproved
	// whether an admin approved it.
	Device         api.DeviceID
	DeviceApproved bool
	// Posture is the device's posture report the request is judged on;
	// nil when there is none (or none fresh enough), and then every
	// posture condition fails.
	Posture *api.Posture
}

// Decision is the outcome of [Set.Evaluate].
type Decision struct {
	// Allow reports whether the subject may reach the app.
	Allow bool
	// Unmet is set on a denial because an allow rule's conditions failed:
	// the conditions the request did not meet. Rule and Position then name
	// that allow rule.
	Unmet CondSet
	// Rule is the rule that decided, or "" for the default deny.
	Rule api.RuleID
	// Position is the deciding rule's position (1-based), or 0 for the
	// default deny.
	Position int
	// Reason is a sentence a person can act on; it goes to the audit log and,
	// for a denial, to the client.
	Reason string
}

// Set is a compiled, immutable rule list. It is safe for concurrent use; a
// policy change compiles a new Set rather than changing one in place. A nil
// *Set denies everything.
type Set struct {
	rules []rule
	// byApp lists, for each app named explicitly by some rule, the indexes
	// (ascending) into rules of the rules that name it.
	byApp map[string][]int32
	// anyApp lists the indexes (ascending) of the rules whose Apps is "*".
	// Evaluate merges it with byApp[app] so that rule order is preserved
	// without storing the wildcard rules once per app.
	anyApp []int32
	// timeApps and timeAny say which apps a rule with a time-dependent
	// condition (time window, MFA age) covers; see TimeDependent.
	timeApps map[string]struct{}
	timeAny  bool
	// hasConds reports whether some rule has conditions.
	hasConds bool
}

// rule is one compiled rule: name sets for matching and the decision it
// gives, Reason included, so that a match allocates nothing.
type rule struct {
	users  nameSet
	groups nameSet
	conds  *conditions // nil: none
	dec    Decision
	// head is the rule as a sentence, "allow group eng → wiki when …", a
	// substring of dec.Reason.
	head string
}

// Compile validates rules and builds a Set that evaluates them in slice
// order. The caller passes them sorted by Position; Compile rejects positions
// that are not 1 or above and strictly increasing, because evaluating rules
// out of order would silently change what the policy means. profiles are
// the posture profiles rules may name; a rule naming a missing one never
// matches.
func Compile(rules []api.PolicyRule, profiles ...api.PostureProfile) (*Set, error) {
	s := &Set{
		rules: make([]rule, 0, len(rules)),
		byApp: make(map[string][]int32),
	}
	prev := 0
	var zones map[string]*time.Location
	byName := make(map[string]*api.PostureProfile, len(profiles))
	for i := range profiles {
		byName[profiles[i].Name] = &profiles[i]
	}
	for i, r := range rules {
		err := validate(r.Action, r.Users, r.Groups, r.Apps, r.Description)
		var conds *conditions
		if err == nil && !r.RuleConditions.IsZero() {
			if zones == nil {
				zones = make(map[string]*time.Location)
			}
			if conds, err = compileConditions(r.RuleConditions, zones, byName); err != nil {
				err = fmt.Errorf("%w: %w", ErrInvalidRule, err)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("compile policy: rule %d of %d (id %q, position %d): %w", i+1, len(rules), r.ID, r.Position, err)
		}
		if r.ID == "" {
			return nil, fmt.Errorf("compile policy: rule %d of %d (position %d): %w: id is empty", i+1, len(rules), r.Position, ErrInvalidRule)
		}
		if r.Position <= prev {
			return nil, fmt.Errorf("compile policy: rule %d of %d (id %q): %w: position %d must be above the previous rule's %d (rules must be sorted by position, starting at 1)",
				i+1, len(rules), r.ID, ErrInvalidRule, r.Position, prev)
		}
		prev = r.Position
		idx := int32(len(s.rules))
		reason, head := ruleReason(r, conds)
		s.rules = append(s.rules, rule{
			users:  newNameSet(r.Users),
			groups: newNameSet(r.Groups),
			conds:  conds,
			head:   head,
			dec: Decision{
				Allow:    r.Action == api.Allow,
				Rule:     r.ID,
				Position: r.Position,
				Reason:   reason,
			},
		})
		s.hasConds = s.hasConds || conds != nil
		if conds != nil && conds.has&(CondTimeWindow|CondMFA) != 0 {
			s.markTimeDependent(r.Apps)
		}
		if containsWildcard(r.Apps) {
			s.anyApp = append(s.anyApp, idx)
			continue
		}
		for _, app := range r.Apps {
			l := s.byApp[app]
			// A rule that names an app twice must be listed once.
			if len(l) == 0 || l[len(l)-1] != idx {
				s.byApp[app] = append(l, idx)
			}
		}
	}
	return s, nil
}

// Len returns the number of rules in s.
func (s *Set) Len() int {
	if s == nil {
		return 0
	}
	return len(s.rules)
}

// Evaluate decides whether sub may reach app: the first rule that matches
// (users or groups, app, and conditions) decides, and no match is a
// denial. It allocates only to build the reason of a denial that no rule
// decided.
func (s *Set) Evaluate(sub Subject, app string) Decision {
	return s.eval(&sub, app, nil)
}

// eval is the one evaluation behind Evaluate and Explain; a non-nil tr
// records every rule it looks at and which one decided.
func (s *Set) eval(sub *Subject, app string, tr *trace) Decision {
	if sub.User == "" || app == "" {
		// Fail closed: an empty name means the caller lost track of who asks
		// or for what, and "*" must not be read as matching that.
		return Decision{Reason: "the request names no user or no app, so no policy rule can allow it; this is a bug in the caller"}
	}
	if s == nil {
		return Decision{Reason: defaultDenyReason(*sub, app)}
	}
	if i := s.match(sub, app, tr); i >= 0 {
		return s.rules[i].dec
	}
	// Nothing matched. The denial names the unmet conditions of the allow
	// rule that came closest, if any; looking for it only here keeps the
	// matching loop as lean as it was before conditions.
	if s.hasConds {
		if i, unmet := s.closest(sub, app); i >= 0 {
			return s.unmetDecision(i, unmet, sub)
		}
	}
	return Decision{Reason: defaultDenyReason(*sub, app)}
}

// match returns the index of the first rule covering app whose users or
// groups and conditions all match sub, or -1; a non-nil tr records every
// rule it looks at.
func (s *Set) match(sub *Subject, app string, tr *trace) int32 {
	w := s.walk(app)
	for {
		i, ok := w.next()
		if !ok {
			return -1
		}
		r := &s.rules[i]
		if !r.users.has(sub.User) && !r.groups.hasAny(sub.Groups) {
			if tr != nil {
				tr.visit(i, false, 0)
			}
			continue
		}
		var unmet CondSet
		if r.conds != nil {
			unmet = r.conds.unmet(sub)
		}
		if tr != nil {
			tr.visit(i, true, unmet)
		}
		if unmet == 0 {
			return i
		}
	}
}

// closest returns, among the allow rules covering app whose users or
// groups match sub, the one with the fewest unmet conditions (the first
// among equals) and those conditions; -1 when there is none. It is called
// only when no rule matched, so every such rule has unmet conditions.
func (s *Set) closest(sub *Subject, app string) (int32, CondSet) {
	best, bestUnmet := int32(-1), CondSet(0)
	for w := s.walk(app); ; {
		i, ok := w.next()
		if !ok {
			return best, bestUnmet
		}
		r := &s.rules[i]
		if !r.dec.Allow || r.conds == nil || (!r.users.has(sub.User) && !r.groups.hasAny(sub.Groups)) {
			continue
		}
		if unmet := r.conds.unmet(sub); best < 0 || bits.OnesCount8(uint8(unmet)) < bits.OnesCount8(uint8(bestUnmet)) {
			best, bestUnmet = i, unmet
		}
	}
}

// ruleWalk yields, in rule order, the indexes of the rules covering one
// app: it merges the rules that name the app with those for any app (both
// lists ascending), so that the wildcard rules are not stored once per app.
type ruleWalk struct{ named, wild []int32 }

func (s *Set) walk(app string) ruleWalk { return ruleWalk{s.byApp[app], s.anyApp} }

func (w *ruleWalk) next() (int32, bool) {
	var i int32
	switch {
	case len(w.named) == 0 && len(w.wild) == 0:
		return 0, false
	case len(w.wild) == 0 || (len(w.named) > 0 && w.named[0] < w.wild[0]):
		i, w.named = w.named[0], w.named[1:]
	default:
		i, w.wild = w.wild[0], w.wild[1:]
	}
	return i, true
}

// unmetDecision is the denial when allow rule i matched but for the unmet
// conditions: each one's reason, then the rule.
func (s *Set) unmetDecision(i int32, unmet CondSet, sub *Subject) Decision {
	r := &s.rules[i]
	var b strings.Builder
	eachCond(unmet, func(c CondSet) {
		if b.Len() > 0 {
			b.WriteString("; ")
		}
		b.WriteString(r.conds.unmetReason(c, sub))
	})
	fmt.Fprintf(&b, " (rule #%d: %s)", r.dec.Position, r.head)
	return Decision{Rule: r.dec.Rule, Position: r.dec.Position, Reason: b.String(), Unmet: unmet}
}

// markTimeDependent records that a rule with a time-dependent condition
// covers apps.
func (s *Set) markTimeDependent(apps []string) {
	if containsWildcard(apps) {
		s.timeAny = true
		return
	}
	if s.timeApps == nil {
		s.timeApps = make(map[string]struct{})
	}
	for _, a := range apps {
		s.timeApps[a] = struct{}{}
	}
}

// TimeDependent reports whether a decision for app can change while
// nothing but the clock moves: some rule covering app has a time window or
// an MFA age condition. The controller re-checks such grants on a timer.
func (s *Set) TimeDependent(app string) bool {
	if s == nil {
		return false
	}
	_, ok := s.timeApps[app]
	return ok || s.timeAny
}

// AnyTimeDependent reports whether TimeDependent holds for some app.
func (s *Set) AnyTimeDependent() bool { return s != nil && (s.timeAny || len(s.timeApps) > 0) }

// ValidateRule checks a rule an admin wants to add, with the same checks
// [Compile] applies, and says which field is wrong. Position 0 (append) is
// allowed; the store assigns the final position.
func ValidateRule(r api.PolicyRuleCreate) error {
	if r.Position < 0 {
		return fmt.Errorf("%w: position %d: use 0 to append or N ≥ 1 to insert before rule N", ErrInvalidRule, r.Position)
	}
	if err := validate(r.Action, r.Users, r.Groups, r.Apps, r.Description); err != nil {
		return err
	}
	if _, err := compileConditions(r.RuleConditions, nil, nil); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidRule, err)
	}
	return nil
}

// maxDescriptionBytes bounds a rule's description, which is repeated in
// every decision the rule makes (audit events, denial messages).
const maxDescriptionBytes = 500

func validate(action api.Action, users, groups, apps []string, description string) error {
	if action != api.Allow && action != api.Deny {
		return fmt.Errorf("%w: action %q: must be %q or %q", ErrInvalidRule, action, api.Allow, api.Deny)
	}
	if len(users) == 0 && len(groups) == 0 {
		return fmt.Errorf("%w: users, groups: name at least one user or group (\"*\" for everyone)", ErrInvalidRule)
	}
	if len(apps) == 0 {
		return fmt.Errorf("%w: apps: name at least one app (\"*\" for every app)", ErrInvalidRule)
	}
	for _, f := range []struct {
		field string
		names []string
	}{{"users", users}, {"groups", groups}, {"apps", apps}} {
		if err := validateNames(f.field, f.names); err != nil {
			return fmt.Errorf("%w: %w", ErrInvalidRule, err)
		}
	}
	switch {
	case len(description) > maxDescriptionBytes:
		return fmt.Errorf("%w: description: %d bytes, the limit is %d", ErrInvalidRule, len(description), maxDescriptionBytes)
	case !utf8.ValidString(description):
		return fmt.Errorf("%w: description: not valid UTF-8", ErrInvalidRule)
	case strings.ContainsFunc(description, unicode.IsControl):
		// It is quoted into one-line reasons and log records.
		return fmt.Errorf("%w: description: contains a control character such as a newline", ErrInvalidRule)
	}
	return nil
}

func validateNames(field string, names []string) error {
	for i, n := range names {
		switch {
		case n == "":
			return fmt.Errorf("%s[%d]: name is empty", field, i)
		case !utf8.ValidString(n):
			return fmt.Errorf("%s[%d]: name %q is not valid UTF-8", field, i, n)
		case strings.TrimSpace(n) != n:
			return fmt.Errorf("%s[%d]: name %q has leading or trailing space", field, i, n)
		case strings.ContainsFunc(n, unicode.IsControl):
			return fmt.Errorf("%s[%d]: name %q contains a control character", field, i, n)
		case n != Wildcard && strings.Contains(n, Wildcard):
			// Patterns such as "eng-*" are not supported; refusing them
			// beats letting an admin believe they match something.
			return fmt.Errorf("%s[%d]: name %q: \"*\" is only allowed on its own, meaning any", field, i, n)
		}
	}
	if len(names) > 1 && containsWildcard(names) {
		return fmt.Errorf("%s: \"*\" already matches any name; list no other names with it", field)
	}
	return nil
}

func containsWildcard(names []string) bool { return slices.Contains(names, Wildcard) }

// smallSet is the size up to which a nameSet scans a slice instead of
// hashing: for the handful of names a rule usually holds, comparing strings
// is cheaper than a map lookup.
const smallSet = 8

// nameSet is the compiled form of a rule's Users, Groups or Apps.
type nameSet struct {
	any   bool
	small []string
	big   map[string]struct{}
}

func newNameSet(names []string) nameSet {
	if containsWildcard(names) {
		return nameSet{any: true}
	}
	if len(names) <= smallSet {
		// Cloned so that the caller changing its slice cannot change the Set.
		return nameSet{small: slices.Clone(names)}
	}
	m := make(map[string]struct{}, len(names))
	for _, n := range names {
		m[n] = struct{}{}
	}
	return nameSet{big: m}
}

// has reports whether the set matches name; the empty name never matches.
func (s *nameSet) has(name string) bool {
	if name == "" {
		return false
	}
	if s.any {
		return true
	}
	if s.big != nil {
		_, ok := s.big[name]
		return ok
	}
	for _, n := range s.small {
		if n == name {
			return true
		}
	}
	return false
}

func (s *nameSet) hasAny(names []string) bool {
	for _, n := range names {
		if s.has(n) {
			return true
		}
	}
	return false
}

// ruleReason builds, at compile time, the reason a rule gives when it
// decides, e.g. "allowed by rule #2 (allow group eng → wiki when MFA within
// 15m)", and returns with it the part in parentheses, the rule as a
// sentence.
func ruleReason(r api.PolicyRule, conds *conditions) (reason, head string) {
	var b strings.Builder
	if r.Action == api.Allow {
		b.WriteString("allowed")
	} else {
		b.WriteString("denied")
	}
	fmt.Fprintf(&b, " by rule #%d (", r.Position)
	start := b.Len()
	fmt.Fprintf(&b, "%s ", r.Action)
	if len(r.Users) > 0 {
		writeNames(&b, "user", r.Users)
	}
	if len(r.Groups) > 0 {
		if len(r.Users) > 0 {
			b.WriteString(" or ")
		}
		writeNames(&b, "group", r.Groups)
	}
	b.WriteString(" → ")
	writeList(&b, r.Apps)
	if conds != nil {
		b.WriteString(" when ")
		b.WriteString(conds.spec.String())
	}
	end := b.Len()
	b.WriteString(")")
	if d := strings.TrimSpace(r.Description); d != "" {
		b.WriteString(": ")
		b.WriteString(d)
	}
	reason = b.String()
	return reason, reason[start:end]
}

// writeNames writes "user alice" or "users alice, bob".
func writeNames(b *strings.Builder, kind string, names []string) {
	b.WriteString(kind)
	if len(names) > 1 {
		b.WriteString("s")
	}
	b.WriteString(" ")
	writeList(b, names)
}

func writeList(b *strings.Builder, names []string) {
	for i, n := range names {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(quoteIfNeeded(n))
	}
}

// quoteIfNeeded leaves plain names as they are, so reasons read naturally,
// and quotes the rest so a name with spaces or commas cannot be misread.
func quoteIfNeeded(n string) string { return string(appendName(nil, n)) }

func plainRune(r rune) bool {
	return r < utf8.RuneSelf && (r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' ||
		strings.ContainsRune("._-@+*", r))
}

// defaultDenyReason says that nothing matched and how an admin would fix
// it, suggesting a group rule when the user has groups (rules for groups age
// better than rules for single users) and a user rule otherwise. It appends
// to a stack buffer so that the only allocation is the final string.
func defaultDenyReason(sub Subject, app string) string {
	b := make([]byte, 0, 256)
	b = append(b, "no policy rule allows user "...)
	b = strconv.AppendQuote(b, sub.User)
	b = append(b, " ("...)
	var group string
	for _, g := range sub.Groups {
		if g == "" {
			continue
		}
		if group == "" {
			b = append(b, "groups: "...)
			group = g
		} else {
			b = append(b, ", "...)
		}
		b = appendName(b, g)
	}
	if group == "" {
		b = append(b, "no groups"...)
	}
	b = append(b, ") to reach app "...)
	b = strconv.AppendQuote(b, app)
	b = append(b, "; ask an admin to add one, e.g. keyhole admin policy add --allow "...)
	if group != "" {
		b = append(b, "--group "...)
		b = appendShellQuoted(b, group)
	} else {
		b = append(b, "--user "...)
		b = appendShellQuoted(b, sub.User)
	}
	b = append(b, " --app "...)
	b = appendShellQuoted(b, app)
	return string(b)
}

// appendName appends n, quoted if it is not plain (see quoteIfNeeded).
func appendName(b []byte, n string) []byte {
	if n == "" || strings.ContainsFunc(n, func(r rune) bool { return !plainRune(r) }) {
		return strconv.AppendQuote(b, n)
	}
	return append(b, n...)
}

// appendShellQuoted appends s quoted so that the suggested command is safe
// to paste into a POSIX shell.
func appendShellQuoted(b []byte, s string) []byte {
	if s != "" && !strings.ContainsFunc(s, func(r rune) bool { return !plainRune(r) || r == '*' }) {
		return append(b, s...)
	}
	b = append(b, '\'')
	for i := 0; i < len(s); i++ {
		if s[i] == '\'' {
			b = append(b, `'\''`...)
		} else {
			b = append(b, s[i])
		}
	}
	return append(b, '\'')
}
