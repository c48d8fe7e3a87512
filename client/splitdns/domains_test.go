package splitdns

import (
	"strings"
	"testing"
)

func TestMatch(t *testing.T) {
	patterns := []string{
		"wiki.corp.internal",
		"*.corp.internal",
		"*.eng.corp.internal",
		"Git.Example.COM.", // case and trailing dot ignored in patterns too
		"*.svc",
		"intranet",
		// Ignored: not patterns we can match safely.
		"*", "*.", "", "a.*.b", "**.x", "x..y", "bad_char!.x", "*." + strings.Repeat("a", 64) + ".x",
	}
	d, errs := newDomainSet(patterns)
	if len(errs) != 8 {
		t.Errorf("got %d pattern errors, want 8: %v", len(errs), errs)
	}
	tests := []struct {
		name    string
		query   string // as it comes in a question
		pattern string // "" = not an app
	}{
		{"exact", "wiki.corp.internal.", "wiki.corp.internal"},
		{"exact beats wildcard", "wiki.corp.internal", "wiki.corp.internal"},
		{"exact, any case", "WiKi.Corp.Internal.", "wiki.corp.internal"},
		{"wildcard, one label", "jira.corp.internal.", "*.corp.internal"},
		{"wildcard, two labels", "x.jira.corp.internal.", "*.corp.internal"},
		{"most specific wildcard", "ci.eng.corp.internal.", "*.eng.corp.internal"},
		{"wildcard own suffix is its parent's", "eng.corp.internal.", "*.corp.internal"},
		{"wildcard apex is no app", "corp.internal.", ""},
		{"single-label wildcard", "db.svc.", "*.svc"},
		{"single-label exact", "intranet.", "intranet"},
		{"below an exact name is no app", "x.intranet.", ""},
		{"pattern with case and dot", "git.example.com.", "git.example.com"},
		{"sibling of exact", "www.example.com.", ""},
		{"suffix without dot boundary", "xcorp.internal.", ""},
		{"other domain", "example.org.", ""},
		{"root", ".", ""},
		{"escaped dot is no host name", `a\.corp.internal.`, ""},
		{"escaped byte is no host name", `a\032b.corp.internal.`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := d.match(canonicalName(tt.query))
			if ok != (tt.pattern != "") || got != tt.pattern {
				t.Errorf("match(%q) = %q, %v; want %q", tt.query, got, ok, tt.pattern)
			}
		})
	}
}

func TestMatchEmptySet(t *testing.T) {
	var d *domainSet
	if _, ok := d.match("a.b"); ok {
		t.Error("nil set matched")
	}
	d, _ = newDomainSet(nil)
	if _, ok := d.match("a.b"); ok {
		t.Error("empty set matched")
	}
}

func TestCanonicalNameNoAlloc(t *testing.T) {
	n := testing.AllocsPerRun(100, func() { _ = canonicalName("wiki.corp.internal.") })
	if n != 0 {
		t.Errorf("canonicalName of a lowercase name allocates %v times", n)
	}
}
