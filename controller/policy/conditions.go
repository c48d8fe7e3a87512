package policy

import (
	"fmt"
	"math/bits"
	"net/netip"
	"strconv"
	"strings"
	"time"
	// The controller must know every IANA zone a rule names, also on
	// minimal hosts and in containers without /usr/share/zoneinfo; this
	// embeds the database (about 450 KB) in every binary that evaluates
	// policy.
	_ "time/tzdata"

	"github.com/keyhole-net/keyhole/internal/api"
)

// CondSet is a set of rule conditions, e.g. those a denial found unmet.
type CondSet uint8

// The rule conditions, in the order they are checked and reported.
const (
	CondMFA CondSet = 1 << iota
	CondTimeWindow
	CondSource
	CondDeviceApproved
	CondPosture
)

// condNames are the wire names, in bit order.
var condNames = [...]string{api.CondMFAWithin, api.CondTimeWindow, api.CondSourceCIDRs, api.CondDeviceApproved, api.CondPosture}

// Names returns the wire names of the conditions in c (api.CondMFAWithin, …),
// in check order; nil for none.
func (c CondSet) Names() []string {
	if c == 0 {
		return nil
	}
	out := make([]string, 0, bits.OnesCount8(uint8(c)))
	for i, n := range condNames {
		if c&(1<<i) != 0 {
			out = append(out, n)
		}
	}
	return out
}

// Limits on what a rule's conditions may hold.
const (
	maxSourceCIDRs = 64
	maxDays        = 7
	maxTZBytes     = 64
)

// conditions is a rule's compiled conditions; a rule without any has a nil
// *conditions, so unconditioned rules cost one nil check.
type conditions struct {
	has       CondSet
	mfaWithin time.Duration
	window    window
	sources   []netip.Prefix
	// profile is the posture profile the rule names; nil when no profile
	// of that name exists, and then the condition never holds.
	profile *api.PostureProfile
	// spec is the rule's conditions as given, for explanations.
	spec api.RuleConditions
}

// compileConditions validates c and compiles it; nil when c sets nothing.
// zones caches time zones across the rules of one Compile; profiles are
// the posture profiles by name (nil when validating a rule alone: the
// caller checks the name exists).
func compileConditions(c api.RuleConditions, zones map[string]*time.Location, profiles map[string]*api.PostureProfile) (*conditions, error) {
	if c.IsZero() {
		return nil, nil
	}
	cc := &conditions{spec: c}
	if c.MFAWithin < 0 {
		return nil, fmt.Errorf("%s: %s is negative", api.CondMFAWithin, c.MFAWithin)
	}
	if c.MFAWithin > 0 {
		cc.has |= CondMFA
		cc.mfaWithin = time.Duration(c.MFAWithin)
	}
	if c.TimeWindow != nil {
		w, err := compileWindow(*c.TimeWindow, zones)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", api.CondTimeWindow, err)
		}
		cc.has |= CondTimeWindow
		cc.window = w
	}
	if len(c.SourceCIDRs) > maxSourceCIDRs {
		return nil, fmt.Errorf("%s: %d prefixes, the limit is %d", api.CondSourceCIDRs, len(c.SourceCIDRs), maxSourceCIDRs)
	}
	for i, p := range c.SourceCIDRs {
		switch {
		case !p.IsValid():
			return nil, fmt.Errorf("%s[%d]: not a valid prefix", api.CondSourceCIDRs, i)
		case p.Addr().Is4In6():
			return nil, fmt.Errorf("%s[%d]: %s: write IPv4 prefixes as IPv4 (source addresses are compared unmapped)", api.CondSourceCIDRs, i, p)
		case p.Addr().Zone() != "":
			return nil, fmt.Errorf("%s[%d]: %s: no zone, please", api.CondSourceCIDRs, i, p)
		case p.Masked() != p:
			return nil, fmt.Errorf("%s[%d]: %s has host bits set; did you mean %s?", api.CondSourceCIDRs, i, p, p.Masked())
		}
	}
	if len(c.SourceCIDRs) > 0 {
		cc.has |= CondSource
		cc.sources = append([]netip.Prefix(nil), c.SourceCIDRs...)
		cc.spec.SourceCIDRs = cc.sources
	}
	if c.DeviceApproved {
		cc.has |= CondDeviceApproved
	}
	if c.Posture != "" {
		if !profileName.MatchString(c.Posture) {
			return nil, fmt.Errorf("%s: %q is not a posture profile name", api.CondPosture, c.Posture)
		}
		cc.has |= CondPosture
		// A missing profile compiles to a condition that never holds:
		// the admin API refuses to remove a profile a rule names, so this
		// only covers races, and they must fail closed.
		cc.profile = profiles[c.Posture]
	}
	if c.TimeWindow != nil {
		w := *c.TimeWindow
		w.Days = append([]string(nil), w.Days...)
		cc.spec.TimeWindow = &w
	}
	return cc, nil
}

// unmet returns the conditions sub does not meet. It checks them all (a
// handful of comparisons) so that a denial can name every one.
func (c *conditions) unmet(sub *Subject) CondSet {
	var f CondSet
	if c.has&CondMFA != 0 && !mfaFresh(sub, c.mfaWithin) {
		f |= CondMFA
	}
	if c.has&CondTimeWindow != 0 && !c.window.holds(sub.Time) {
		f |= CondTimeWindow
	}
	if c.has&CondSource != 0 && !inPrefixes(c.sources, sub.Source) {
		f |= CondSource
	}
	if c.has&CondDeviceApproved != 0 && !sub.DeviceApproved {
		f |= CondDeviceApproved
	}
	if c.has&CondPosture != 0 && (c.profile == nil || len(PostureFailures(*c.profile, sub.Posture)) > 0) {
		f |= CondPosture
	}
	return f
}

// mfaFresh reports whether the subject's last MFA is at most within old at
// sub.Time. Never (zero MFAAt) and an unknown time fail.
func mfaFresh(sub *Subject, within time.Duration) bool {
	if sub.MFAAt.IsZero() || sub.Time.IsZero() {
		return false
	}
	// An MFA time a little ahead of the clock (another controller's) is fresh.
	return sub.Time.Sub(sub.MFAAt) <= within
}

func inPrefixes(ps []netip.Prefix, a netip.Addr) bool {
	if !a.IsValid() {
		return false
	}
	a = a.Unmap().WithZone("")
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// window is a compiled api.TimeWindow.
type window struct {
	days       uint8 // bit d: the window opens on time.Weekday d
	start, end int   // seconds after local midnight; end may be 86400, end < start crosses midnight
	loc        *time.Location
	outside    bool
}

const day = 24 * 60 * 60

func compileWindow(w api.TimeWindow, zones map[string]*time.Location) (window, error) {
	var cw window
	var err error
	if cw.days, err = parseDays(w.Days); err != nil {
		return window{}, err
	}
	if cw.start, err = parseClock(w.Start, false); err != nil {
		return window{}, fmt.Errorf("start: %w", err)
	}
	if cw.end, err = parseClock(w.End, true); err != nil {
		return window{}, fmt.Errorf("end: %w", err)
	}
	if cw.start == cw.end {
		return window{}, fmt.Errorf("start and end are both %s: the window would be empty or the whole day; use 00:00-24:00 for the whole day", w.Start)
	}
	if cw.loc, err = loadZone(w.TZ, zones); err != nil {
		return window{}, err
	}
	cw.outside = w.Outside
	return cw, nil
}

// loadZone loads an IANA zone, once per Compile.
func loadZone(name string, zones map[string]*time.Location) (*time.Location, error) {
	if loc, ok := zones[name]; ok {
		return loc, nil
	}
	switch {
	case name == "":
		return nil, fmt.Errorf("tz: give an IANA time zone, e.g. Europe/Berlin or UTC")
	case name == "Local":
		// time.Local is whatever the controller host is set to: two
		// controllers could disagree.
		return nil, fmt.Errorf("tz %q: name the zone, e.g. Europe/Berlin or UTC", name)
	case len(name) > maxTZBytes || strings.ContainsFunc(name, func(r rune) bool { return r <= ' ' || r > '~' }):
		return nil, fmt.Errorf("tz %q: not an IANA time zone name", name)
	}
	loc, err := time.LoadLocation(name)
	if err != nil {
		return nil, fmt.Errorf("tz %q: unknown time zone; use an IANA name, e.g. Europe/Berlin, America/New_York or UTC", name)
	}
	if zones != nil {
		zones[name] = loc
	}
	return loc, nil
}

var dayNames = [...]string{"sun", "mon", "tue", "wed", "thu", "fri", "sat"}

func parseDay(s string) (time.Weekday, bool) {
	for i, n := range dayNames {
		if strings.EqualFold(s, n) {
			return time.Weekday(i), true
		}
	}
	return 0, false
}

// parseDays turns "mon", "mon-fri", "fri-mon" entries into a weekday bit
// set; none means every day.
func parseDays(days []string) (uint8, error) {
	if len(days) == 0 {
		return 0x7f, nil
	}
	if len(days) > maxDays {
		return 0, fmt.Errorf("days: %d entries, the limit is %d (use ranges such as mon-fri)", len(days), maxDays)
	}
	var set uint8
	for i, d := range days {
		from, to, isRange := strings.Cut(d, "-")
		a, ok1 := parseDay(from)
		b, ok2 := a, true
		if isRange {
			b, ok2 = parseDay(to)
		}
		if !ok1 || !ok2 {
			return 0, fmt.Errorf("days[%d]: %q: want a day (mon, tue, wed, thu, fri, sat, sun) or a range such as mon-fri", i, d)
		}
		for wd := a; ; wd = (wd + 1) % 7 {
			set |= 1 << wd
			if wd == b {
				break
			}
		}
	}
	return set, nil
}

// parseClock parses "HH:MM" into seconds after midnight; "24:00" only
// when allow24.
func parseClock(s string, allow24 bool) (int, error) {
	h, m, ok := strings.Cut(s, ":")
	if !ok || len(h) != 2 || len(m) != 2 {
		return 0, fmt.Errorf("%q: want HH:MM, e.g. 08:00", s)
	}
	hh, err1 := strconv.Atoi(h)
	mm, err2 := strconv.Atoi(m)
	if err1 != nil || err2 != nil || h[0] == '+' || h[0] == '-' || m[0] == '+' || m[0] == '-' || hh < 0 || mm < 0 || mm > 59 {
		return 0, fmt.Errorf("%q: want HH:MM, e.g. 08:00", s)
	}
	switch {
	case hh == 24 && mm == 0 && allow24:
		return day, nil
	case hh > 23:
		if allow24 {
			return 0, fmt.Errorf("%q: hours run 00 to 23 (24:00 is the end of the day)", s)
		}
		return 0, fmt.Errorf("%q: hours run 00 to 23", s)
	}
	return hh*3600 + mm*60, nil
}

// holds reports whether the condition holds at t: inside the window, or
// outside it for an Outside window. An unknown (zero) time fails both ways.
func (w *window) holds(t time.Time) bool {
	if t.IsZero() {
		return false
	}
	return w.contains(t) != w.outside
}

// contains reports whether t falls inside the window, in local wall-clock
// time of the window's zone. The part of a midnight-crossing window after
// midnight belongs to the day the window opened.
func (w *window) contains(t time.Time) bool {
	lt := t.In(w.loc)
	h, m, s := lt.Clock()
	sec := h*3600 + m*60 + s
	wd := lt.Weekday()
	if w.start < w.end {
		return w.days&(1<<wd) != 0 && sec >= w.start && sec < w.end
	}
	if sec >= w.start {
		return w.days&(1<<wd) != 0
	}
	return sec < w.end && w.days&(1<<((wd+6)%7)) != 0
}

// want describes condition c of the rule as a requirement.
func (c *conditions) want(cond CondSet) string {
	switch cond {
	case CondMFA:
		return "MFA within " + api.Duration(c.mfaWithin).String()
	case CondTimeWindow:
		return c.spec.TimeWindow.String()
	case CondSource:
		return "from " + joinPrefixes(c.sources)
	case CondDeviceApproved:
		return "an approved device"
	case CondPosture:
		if c.profile == nil {
			return "posture " + c.spec.Posture + " (no such profile)"
		}
		return "posture " + c.spec.Posture + ": " + c.profile.String()
	}
	return ""
}

// got describes what sub has for condition c.
func (c *conditions) got(cond CondSet, sub *Subject) string {
	switch cond {
	case CondMFA:
		switch {
		case sub.MFAAt.IsZero():
			return "never (no MFA in this session)"
		case sub.Time.IsZero():
			return "MFA at " + sub.MFAAt.UTC().Format(time.RFC3339) + ", request time unknown"
		}
		return fmt.Sprintf("MFA %s ago (%s)", sub.Time.Sub(sub.MFAAt).Round(time.Second), sub.MFAAt.UTC().Format(time.RFC3339))
	case CondTimeWindow:
		if sub.Time.IsZero() {
			return "request time unknown"
		}
		return localTime(sub.Time, c.window.loc)
	case CondSource:
		if !sub.Source.IsValid() {
			return "source address unknown"
		}
		return sub.Source.String()
	case CondDeviceApproved:
		switch {
		case sub.Device == "":
			return "no device given"
		case sub.DeviceApproved:
			return "device " + string(sub.Device) + " is approved"
		}
		return "device " + string(sub.Device) + " is not approved"
	case CondPosture:
		return postureGot(c.profile, c.spec.Posture, sub.Posture)
	}
	return ""
}

// localTime prints t as a person in loc reads a clock: "Sat 10:12 Europe/Berlin (CET)".
func localTime(t time.Time, loc *time.Location) string {
	lt := t.In(loc)
	s := lt.Format("Mon 2006-01-02 15:04") + " " + loc.String()
	if abbr, _ := lt.Zone(); abbr != loc.String() {
		s += " (" + abbr + ")"
	}
	return s
}

// unmetReason is the sentence a person acts on for one unmet condition.
func (c *conditions) unmetReason(cond CondSet, sub *Subject) string {
	switch cond {
	case CondMFA:
		return "re-authenticate with MFA (keyhole login) — this app needs MFA within " + api.Duration(c.mfaWithin).String()
	case CondTimeWindow:
		w := *c.spec.TimeWindow
		now := "the request time is unknown"
		if !sub.Time.IsZero() {
			now = "it is " + localTime(sub.Time, c.window.loc) + " now"
		}
		if w.Outside {
			w.Outside = false
			return "this app is closed " + w.String() + "; " + now
		}
		return "this app is open " + w.String() + " only; " + now
	case CondSource:
		at := "the controller does not know your address"
		if sub.Source.IsValid() {
			at = "the controller sees you at " + sub.Source.String()
		}
		return "connect from an allowed network (" + joinPrefixes(c.sources) + "); " + at
	case CondDeviceApproved:
		if sub.Device == "" {
			return "this app needs an approved device, and the request names none"
		}
		return "this app needs an approved device; ask an admin to approve this one (keyhole admin device approve " + string(sub.Device) + ")"
	case CondPosture:
		if c.profile == nil {
			return "this app needs posture profile " + c.spec.Posture + ", which does not exist; ask an admin"
		}
		return strings.Join(PostureFailures(*c.profile, sub.Posture), "; ")
	}
	return ""
}

func joinPrefixes(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, " or ")
}

// eachCond calls fn for each condition in set, in check order.
func eachCond(set CondSet, fn func(CondSet)) {
	for i := range len(condNames) {
		if c := CondSet(1 << i); set&c != 0 {
			fn(c)
		}
	}
}
