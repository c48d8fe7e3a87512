// Package policy decides whether a subject (a user and their groups) may reach
// an app, by evaluating an ordered list of rules: the first matching rule
// decides, and no match means deny.
//
// The package is pure logic: it does no I/O, keeps no state beyond the
// compiled [Set], and knows nothing about devices, posture, gateways or the
// store. The controller loads the rules, compiles them once per change with
// [Compile], and calls [Set.Evaluate] on the grant path; the admin API calls
// [ValidateRule] before it stores a new rule.
//
// Names are compared exactly (case-sensitive): "Eng" and "eng" are different
// groups. "*" in Users matches every user, "*" in Groups matches every user
// who belongs to at least one group, and "*" in Apps matches every app.
package policy

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/keyhole-net/keyhole/internal/api"
)

// Wildcard matches any name in a rule's Users, Groups or Apps.
const Wildcard = "*"

// ErrInvalidRule is wrapped by every error from [Compile] and [ValidateRule],
// so the admin API can answer 400 without parsing messages.
var ErrInvalidRule = errors.New("invalid policy rule")

// Subject is who asks: a user and the groups the user belongs to.
type Subject struct {
	User   string
	Groups []string
}

// Decision is the outcome of [Set.Evaluate].
type Decision struct {
	// Allow reports whether the subject may reach the app.
	Allow bool
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
}

// rule is one compiled rule: name sets for matching and the decision it
// gives, Reason included, so that a match allocates nothing.
type rule struct {
	users  nameSet
	groups nameSet
	dec    Decision
}

// Compile validates rules and builds a Set that evaluates them in slice
// order. The caller passes them sorted by Position; Compile rejects positions
// that are not 1 or above and strictly increasing, because evaluating rules
// out of order would silently change what the policy means.
func Compile(rules []api.PolicyRule) (*Set, error) {
	s := &Set{
		rules: make([]rule, 0, len(rules)),
		byApp: make(map[string][]int32),
	}
	prev := 0
	for i, r := range rules {
		if err := validate(r.Action, r.Users, r.Groups, r.Apps, r.Description); err != nil {
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
		s.rules = append(s.rules, rule{
			users:  newNameSet(r.Users),
			groups: newNameSet(r.Groups),
			dec: Decision{
				Allow:    r.Action == api.Allow,
				Rule:     r.ID,
				Position: r.Position,
				Reason:   ruleReason(r),
			},
		})
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
// both decides, and no match is a denial. It allocates only to build the
// reason of a default deny.
func (s *Set) Evaluate(sub Subject, app string) Decision {
	if sub.User == "" || app == "" {
		// Fail closed: an empty name means the caller lost track of who asks
		// or for what, and "*" must not be read as matching that.
		return Decision{Reason: "the request names no user or no app, so no policy rule can allow it; this is a bug in the caller"}
	}
	if s != nil {
		// Walk the rules that name app and the rules for any app together,
		// in rule order; both lists are ascending.
		named, wild := s.byApp[app], s.anyApp
		for len(named) > 0 || len(wild) > 0 {
			var i int32
			if len(wild) == 0 || (len(named) > 0 && named[0] < wild[0]) {
				i, named = named[0], named[1:]
			} else {
				i, wild = wild[0], wild[1:]
			}
			r := &s.rules[i]
			if r.users.has(sub.User) || r.groups.hasAny(sub.Groups) {
				return r.dec
			}
		}
	}
	return Decision{Reason: defaultDenyReason(sub, app)}
}

// ValidateRule checks a rule an admin wants to add, with the same checks
// [Compile] applies, and says which field is wrong. Position 0 (append) is
// allowed; the store assigns the final position.
func ValidateRule(r api.PolicyRuleCreate) error {
	if r.Position < 0 {
		return fmt.Errorf("%w: position %d: use 0 to append or N ≥ 1 to insert before rule N", ErrInvalidRule, r.Position)
	}
	return validate(r.Action, r.Users, r.Groups, r.Apps, r.Description)
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
// decides, e.g. "allowed by rule #2 (allow group eng → wiki)".
func ruleReason(r api.PolicyRule) string {
	var b strings.Builder
	if r.Action == api.Allow {
		b.WriteString("allowed")
	} else {
		b.WriteString("denied")
	}
	fmt.Fprintf(&b, " by rule #%d (%s ", r.Position, r.Action)
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
	b.WriteString(")")
	if d := strings.TrimSpace(r.Description); d != "" {
		b.WriteString(": ")
		b.WriteString(d)
	}
	return b.String()
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
