package api

import (
	"net/netip"
	"testing"
	"time"
)

func TestDurationString(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0:                                "0s",
		15 * time.Minute:                 "15m",
		time.Hour:                        "1h",
		90 * time.Minute:                 "1h30m",
		time.Hour + 5*time.Second:        "1h0m5s",
		90 * time.Second:                 "1m30s",
		-time.Minute:                     "-1m",
		500 * time.Millisecond:           "500ms",
		48*time.Hour + 30*time.Minute:    "48h30m",
		10*time.Minute + time.Nanosecond: "10m0.000000001s",
	} {
		if got := Duration(d).String(); got != want {
			t.Errorf("Duration(%v).String() = %q, want %q", d, got, want)
		}
		if back, err := time.ParseDuration(Duration(d).String()); err != nil || back != d {
			t.Errorf("%q parses back as %v, %v", Duration(d).String(), back, err)
		}
	}
}

func TestRuleConditionsString(t *testing.T) {
	c := RuleConditions{
		MFAWithin:      Duration(15 * time.Minute),
		TimeWindow:     &TimeWindow{Days: []string{"Mon-Fri"}, Start: "08:00", End: "18:00", TZ: "Europe/Berlin", Outside: true},
		SourceCIDRs:    []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("2001:db8::/32")},
		DeviceApproved: true,
	}
	want := "MFA within 15m, outside mon-fri 08:00-18:00 Europe/Berlin, from 198.51.100.0/24 or 2001:db8::/32, approved device"
	if got := c.String(); got != want || c.IsZero() {
		t.Errorf("String() = %q, want %q (IsZero %v)", got, want, c.IsZero())
	}
	if got := (TimeWindow{Start: "22:00", End: "06:00", TZ: "UTC"}).String(); got != "every day 22:00-06:00 UTC" {
		t.Errorf("window without days: %q", got)
	}
	if z := (RuleConditions{}); z.String() != "" || !z.IsZero() {
		t.Errorf("zero conditions: %q, IsZero %v", z.String(), z.IsZero())
	}
}
