package api

import (
	"net/netip"
	"strings"
	"time"
)

// Rule condition names: the JSON fields of RuleConditions, and what
// Error.Unmet and WhyCondition.Name hold.
const (
	CondMFAWithin      = "mfa_within"
	CondTimeWindow     = "time_window"
	CondSourceCIDRs    = "source_cidrs"
	CondDeviceApproved = "device_approved"
)

// RuleConditions are what must hold, besides a rule's users, groups and
// apps, for the rule to match. All are optional; those set must all hold.
//
// An allow rule whose conditions fail does not match: evaluation goes on
// to the next rule, and a request that nothing else allows is denied with
// the unmet conditions as the reason. A deny rule denies only when its
// conditions hold ("deny payroll outside office hours").
type RuleConditions struct {
	// MFAWithin: the session's last MFA is at most this old. A session
	// without MFA fails it.
	MFAWithin Duration `json:"mfa_within,omitempty"`
	// TimeWindow: the request comes inside the window (outside it, with
	// Outside set).
	TimeWindow *TimeWindow `json:"time_window,omitempty"`
	// SourceCIDRs: the client's address as the controller sees it (the
	// TLS connection's remote address) is inside one of them.
	SourceCIDRs []netip.Prefix `json:"source_cidrs,omitempty"`
	// DeviceApproved: an admin approved the device (see Device.Approved).
	DeviceApproved bool `json:"device_approved,omitempty"`
	// Posture names a PostureProfile the device's signed posture report
	// must satisfy; a request without a fresh report fails it.
	Posture string `json:"posture,omitempty"`
}

// IsZero reports whether no condition is set.
func (c RuleConditions) IsZero() bool {
	return c.MFAWithin == 0 && c.TimeWindow == nil && len(c.SourceCIDRs) == 0 && !c.DeviceApproved && c.Posture == ""
}

// String describes the conditions for people, e.g.
// "MFA within 15m, mon-fri 08:00-18:00 Europe/Berlin, from 198.51.100.0/24,
// approved device"; "" when there are none.
func (c RuleConditions) String() string {
	var parts []string
	if c.MFAWithin != 0 {
		parts = append(parts, "MFA within "+c.MFAWithin.String())
	}
	if c.TimeWindow != nil {
		parts = append(parts, c.TimeWindow.String())
	}
	if len(c.SourceCIDRs) > 0 {
		s := make([]string, len(c.SourceCIDRs))
		for i, p := range c.SourceCIDRs {
			s[i] = p.String()
		}
		parts = append(parts, "from "+strings.Join(s, " or "))
	}
	if c.DeviceApproved {
		parts = append(parts, "approved device")
	}
	if c.Posture != "" {
		parts = append(parts, "posture "+c.Posture)
	}
	return strings.Join(parts, ", ")
}

// TimeWindow is a weekly window of local wall-clock time in an IANA time
// zone, e.g. Mon–Fri 08:00–18:00 Europe/Berlin. Wall-clock time means the
// window follows daylight saving time: 08:00 is 08:00 local in winter and
// in summer.
type TimeWindow struct {
	// Days are the days the window opens on: "mon" … "sun" and ranges such
	// as "mon-fri" or "fri-mon"; empty means every day.
	Days []string `json:"days,omitempty"`
	// Start and End are "HH:MM", 24-hour; the window holds from Start up to
	// but not including End. End "24:00" is the end of the day; an End
	// before Start crosses midnight (a "fri" window 22:00–06:00 runs from
	// Friday 22:00 to Saturday 06:00).
	Start string `json:"start"`
	End   string `json:"end"`
	// TZ is the IANA time zone, e.g. "Europe/Berlin" or "UTC".
	TZ string `json:"tz"`
	// Outside inverts the window: the condition holds when the request
	// comes outside it ("deny payroll outside office hours").
	Outside bool `json:"outside,omitempty"`
}

// String describes the window, e.g. "mon-fri 08:00-18:00 Europe/Berlin" or
// "outside every day 22:00-06:00 UTC".
func (w TimeWindow) String() string {
	var b strings.Builder
	if w.Outside {
		b.WriteString("outside ")
	}
	if len(w.Days) == 0 {
		b.WriteString("every day")
	} else {
		b.WriteString(strings.ToLower(strings.Join(w.Days, ",")))
	}
	b.WriteString(" " + w.Start + "-" + w.End + " " + w.TZ)
	return b.String()
}

// Why is the answer of GET /v1/why (admin): how the policy decides one
// request, rule by rule. It comes from the same evaluation a grant request
// gets, so for the same facts Allow, Rule and Reason are exactly what the
// grant request would get.
type Why struct {
	// The facts the decision was made on.
	User     string     `json:"user"`
	Groups   []string   `json:"groups"`
	App      string     `json:"app"`
	DeviceID DeviceID   `json:"device_id,omitempty"`
	Source   netip.Addr `json:"source,omitzero"`
	At       time.Time  `json:"at"`
	MFAAt    time.Time  `json:"mfa_at,omitzero"`
	// Notes say which facts were not given and what was assumed instead
	// (no source: source conditions fail).
	Notes []string `json:"notes,omitempty"`

	// The decision.
	Allow bool `json:"allow"`
	// Rule decided (Allow), denied, or is the allow rule whose unmet
	// conditions the denial names; "" for the default deny and for
	// refusals before the policy (disabled user, unapproved device).
	Rule   RuleID `json:"rule,omitempty"`
	Reason string `json:"reason"`
	// Unmet names the conditions a denial asks for (CondMFAWithin, …).
	Unmet []string `json:"unmet,omitempty"`

	// Rules is every policy rule, in evaluation order.
	Rules []WhyRule `json:"rules"`
}

// Outcomes of a rule in WhyRule.Result. WhyUnmet: users or groups and app
// match, a condition does not, so the rule does not match. WhyNotReached:
// an earlier rule decided, or the request was refused before the policy.
const (
	WhyDecided      = "decided"          // the rule matched and decided
	WhyOtherApp     = "other_app"        // the rule does not cover the app
	WhyOtherSubject = "other_subject"    // it covers the app, not the user or groups
	WhyUnmet        = "conditions_unmet" // see above
	WhyNotReached   = "not_reached"      // see above
)

// WhyRule is one rule in a Why.
type WhyRule struct {
	ID       RuleID `json:"id"`
	Position int    `json:"position"`
	Action   Action `json:"action"`
	// Rule is the rule as a sentence: "allow group eng → wiki when MFA within 15m".
	Rule   string `json:"rule"`
	Result string `json:"result"` // Why* constants
	// Conditions are the rule's conditions, checked (Met set) only when
	// its users, groups and app match.
	Conditions []WhyCondition `json:"conditions,omitempty"`
}

// WhyCondition is one condition of a rule and what the request had.
type WhyCondition struct {
	Name string `json:"name"` // Cond* constants
	// Want is the requirement ("MFA within 15m"); Got is the request's
	// value ("never", "203.0.113.7", "Sat 10:12 Europe/Berlin").
	Want string `json:"want"`
	Got  string `json:"got"`
	// Checked is false when the rule's users, groups or app did not match
	// or the rule was not reached; Met is meaningful only when Checked.
	Checked bool `json:"checked"`
	Met     bool `json:"met"`
}
