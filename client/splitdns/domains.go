package splitdns

import (
	"fmt"
	"strings"
)

// domainSet is an immutable set of app name patterns; SetDomains swaps
// whole sets so that queries never see a half-built one.
type domainSet struct {
	exact map[string]struct{} // "wiki.corp.internal"
	wild  map[string]struct{} // suffix of "*.corp.internal": "corp.internal"
}

// newDomainSet parses patterns; the bad ones are returned as errors, the
// rest are kept.
func newDomainSet(patterns []string) (*domainSet, []error) {
	d := &domainSet{exact: make(map[string]struct{}), wild: make(map[string]struct{})}
	var errs []error
	for _, p := range patterns {
		name := canonicalName(p)
		wild := false
		if rest, ok := strings.CutPrefix(name, "*."); ok {
			name, wild = rest, true
		}
		if err := checkPattern(name); err != nil {
			errs = append(errs, fmt.Errorf("domain pattern %q: %w", p, err))
			continue
		}
		if wild {
			d.wild[name] = struct{}{}
		} else {
			d.exact[name] = struct{}{}
		}
	}
	return d, errs
}

// checkPattern accepts host names of at least one label: letters, digits,
// '-' and '_' (the latter for service names such as _ldap._tcp). A single
// label is allowed ("*.internal", "intranet") but the root is not: it would
// take every name away from the upstream resolvers.
func checkPattern(name string) error {
	if name == "" {
		return fmt.Errorf("empty name")
	}
	if len(name) > maxNameLen {
		return fmt.Errorf("longer than %d characters", maxNameLen)
	}
	for label := range strings.SplitSeq(name, ".") {
		if label == "" || len(label) > maxLabelLen {
			return fmt.Errorf("label %q: want 1 to %d characters", label, maxLabelLen)
		}
		for i := 0; i < len(label); i++ {
			if c := label[i]; !isHostChar(c) {
				return fmt.Errorf("label %q: character %q not allowed (a '*' may only stand alone as the first label)", label, c)
			}
		}
	}
	return nil
}

// DNS limits on names in presentation form, without the trailing dot.
const (
	maxNameLen  = 253
	maxLabelLen = 63
)

func isHostChar(c byte) bool {
	return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_'
}

// match reports the pattern that makes name (canonical, see canonicalName)
// an app name: an exact name first, else the most specific wildcard.
func (d *domainSet) match(name string) (pattern string, ok bool) {
	if d == nil || name == "" || strings.IndexByte(name, '\\') >= 0 {
		// miekg/dns writes a '.' inside a label and bytes outside
		// printable ASCII as escapes; such names are no host names, and
		// matching them by their text would let "a\.corp.internal" (two
		// labels) pass for a name under corp.internal (three).
		return "", false
	}
	if _, ok := d.exact[name]; ok {
		return name, true
	}
	// Scan left to right so that the longest suffix wins; the suffix
	// starts after a dot, so at least one label stands in front of it.
	for i := 0; i < len(name); i++ {
		if name[i] != '.' {
			continue
		}
		if _, ok := d.wild[name[i+1:]]; ok {
			return "*." + name[i+1:], true
		}
	}
	return "", false
}

// canonicalName lowercases ASCII letters and drops one trailing dot. It
// does not allocate when name is canonical already (the common case for
// the names resolvers send).
func canonicalName(name string) string {
	name = strings.TrimSuffix(name, ".")
	for i := 0; i < len(name); i++ {
		if c := name[i]; 'A' <= c && c <= 'Z' {
			return strings.ToLower(name)
		}
	}
	return name
}
