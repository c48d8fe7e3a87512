package policy

import (
	"encoding/hex"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"golang.org/x/mod/semver"

	"github.com/keyhole-net/keyhole/internal/api"
)

// Limits on posture profiles.
const (
	maxProfileChecks = 32
	maxCheckField    = 1024
)

// profileName is what a posture profile may be called: it appears in rule
// conditions, reasons and URLs.
var profileName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// knownOS are the operating systems a profile may name (Go's names).
var knownOS = []string{"linux", "darwin", "windows", "freebsd", "openbsd", "netbsd", "android", "ios"}

// ValidateProfile checks a posture profile an admin wants to store, and
// says which field is wrong.
func ValidateProfile(p api.PostureProfile) error {
	if !profileName.MatchString(p.Name) {
		return fmt.Errorf("%w: name %q: use 1–63 letters, digits, '.', '_' or '-', starting with a letter or digit", ErrInvalidRule, p.Name)
	}
	if len(p.Description) > maxDescriptionBytes {
		return fmt.Errorf("%w: description: %d bytes, the limit is %d", ErrInvalidRule, len(p.Description), maxDescriptionBytes)
	}
	for i, os := range p.OS {
		if !slices.Contains(knownOS, os) {
			return fmt.Errorf("%w: os[%d]: %q is not one of %s", ErrInvalidRule, i, os, strings.Join(knownOS, ", "))
		}
	}
	if v := p.MinClientVersion; v != "" && !semver.IsValid(canonicalVersion(v)) {
		return fmt.Errorf("%w: min_client_version %q: not a version such as 0.6.0", ErrInvalidRule, v)
	}
	if len(p.Checks) > maxProfileChecks {
		return fmt.Errorf("%w: checks: %d, the limit is %d", ErrInvalidRule, len(p.Checks), maxProfileChecks)
	}
	names := make(map[string]bool, len(p.Checks))
	for i, c := range p.Checks {
		if err := validateCheck(c); err != nil {
			return fmt.Errorf("%w: checks[%d]: %w", ErrInvalidRule, i, err)
		}
		if names[c.Name] {
			return fmt.Errorf("%w: checks[%d]: name %q is used twice", ErrInvalidRule, i, c.Name)
		}
		names[c.Name] = true
	}
	return nil
}

func validateCheck(c api.PostureCheck) error {
	if !profileName.MatchString(c.Name) {
		return fmt.Errorf("name %q: use 1–63 letters, digits, '.', '_' or '-'", c.Name)
	}
	for _, f := range []string{c.Path, c.SHA256, c.Process} {
		if len(f) > maxCheckField || strings.ContainsFunc(f, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			return fmt.Errorf("%s: a field is over %d bytes or holds a control character", c.Name, maxCheckField)
		}
	}
	switch c.Kind {
	case api.CheckFile:
		if !strings.HasPrefix(c.Path, "/") {
			return fmt.Errorf("%s: path %q must be absolute", c.Name, c.Path)
		}
		if c.SHA256 != "" {
			if b, err := hex.DecodeString(c.SHA256); err != nil || len(b) != 32 || strings.ToLower(c.SHA256) != c.SHA256 {
				return fmt.Errorf("%s: sha256 must be 64 lowercase hex digits", c.Name)
			}
		}
		if c.Process != "" {
			return fmt.Errorf("%s: a file check has no process", c.Name)
		}
	case api.CheckProcess:
		if c.Process == "" || strings.Contains(c.Process, "/") && !strings.HasPrefix(c.Process, "/") {
			return fmt.Errorf("%s: process must be an executable name or an absolute path", c.Name)
		}
		if c.Path != "" || c.SHA256 != "" {
			return fmt.Errorf("%s: a process check has no path or sha256", c.Name)
		}
	case api.CheckCommand:
		if c.Path != "" || c.SHA256 != "" || c.Process != "" {
			return fmt.Errorf("%s: a command check names a command of the device's own configuration (posture.commands) by its name only", c.Name)
		}
	default:
		return fmt.Errorf("%s: kind %q: must be %q, %q or %q", c.Name, c.Kind, api.CheckFile, api.CheckProcess, api.CheckCommand)
	}
	return nil
}

// canonicalVersion turns "0.6.0" into semver's "v0.6.0".
func canonicalVersion(v string) string {
	if strings.HasPrefix(v, "v") {
		return v
	}
	return "v" + v
}

// PostureFailures checks a device's posture report against a profile and
// returns, for each requirement it does not meet, a sentence a person can
// act on ("disk encryption is required on /: this device reports no (/ is
// on /dev/sda2, not dm-crypt)"); nil when every requirement holds. A nil
// report fails every profile: a device that sent none is unknown.
func PostureFailures(prof api.PostureProfile, p *api.Posture) []string {
	if p == nil {
		return []string{"send a device posture report (update the Keyhole client, or check that it can collect its posture) — posture profile " + prof.Name + " requires one"}
	}
	var out []string
	if len(prof.OS) > 0 && !slices.Contains(prof.OS, p.OS) {
		out = append(out, fmt.Sprintf("this app needs a device running %s; this one runs %s", strings.Join(prof.OS, " or "), orUnknown(p.OS)))
	}
	if want := prof.MinClientVersion; want != "" {
		have := canonicalVersion(p.ClientVersion)
		if !semver.IsValid(have) || semver.Compare(have, canonicalVersion(want)) < 0 {
			out = append(out, fmt.Sprintf("update the Keyhole client to %s or later; this one is %s", want, orUnknown(p.ClientVersion)))
		}
	}
	fact := func(want bool, got api.Fact, field, what, ask string) {
		if !want || got == api.Yes {
			return
		}
		s := what + " is required"
		switch got {
		case api.No:
			s += ": " + ask
		default:
			s += ": this device could not tell (" + string(api.Unknown) + "); " + ask
		}
		if d := p.Details[field]; d != "" {
			s += " (" + d + ")"
		}
		out = append(out, s)
	}
	fact(prof.DiskEncryption, p.DiskEncryption, "disk_encryption", "disk encryption on /", "encrypt the root volume")
	fact(prof.Firewall, p.Firewall, "firewall", "an active firewall", "turn on the host firewall")
	fact(prof.ScreenLock, p.ScreenLock, "screen_lock", "a screen lock", "turn on the screen lock")
	for _, c := range prof.Checks {
		r, ok := p.Check(c.Name)
		switch {
		case !ok:
			out = append(out, fmt.Sprintf("check %s (%s) is required: this device did not report it; restart the Keyhole client so it fetches the checks", c.Name, c))
		case r.Pass == api.Yes:
		case r.Pass == api.No:
			out = append(out, fmt.Sprintf("check %s (%s) failed on this device%s", c.Name, c, detail(r.Detail)))
		default:
			out = append(out, fmt.Sprintf("check %s (%s) could not be run on this device%s", c.Name, c, detail(r.Detail)))
		}
	}
	return out
}

func detail(d string) string {
	if d == "" {
		return ""
	}
	return ": " + d
}

func orUnknown(s string) string {
	if s == "" {
		return string(api.Unknown)
	}
	return s
}

// postureSummary is what a report shows for a profile in explanations:
// "meets linux, disk encryption" or the failures.
func postureGot(prof *api.PostureProfile, name string, p *api.Posture) string {
	if prof == nil {
		return "posture profile " + name + " does not exist"
	}
	if p == nil {
		return "no posture report"
	}
	if f := PostureFailures(*prof, p); len(f) > 0 {
		return strings.Join(f, "; ")
	}
	return "meets " + prof.String()
}
