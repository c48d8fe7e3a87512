package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/apiclient"
)

// conditionFlags are the condition flags of keyhole admin policy add.
type conditionFlags struct {
	mfaWithin      time.Duration
	days           []string
	hours, tz      string
	outside        bool
	sources        []string
	approvedDevice bool
	posture        string
}

func (f *conditionFlags) register(fs *pflag.FlagSet) {
	fs.DurationVar(&f.mfaWithin, "mfa-within", 0, "the session's last MFA must be at most this old, e.g. 15m")
	fs.StringSliceVar(&f.days, "days", nil, "days of the time window: mon … sun and ranges, e.g. mon-fri or sat,sun (default every day)")
	fs.StringVar(&f.hours, "hours", "", "hours of the time window, local: START-END, e.g. 08:00-18:00 (22:00-06:00 crosses midnight; END 24:00 is the end of the day)")
	fs.StringVar(&f.tz, "tz", "", "IANA time zone of the window, e.g. Europe/Berlin or UTC (required with --days or --hours)")
	fs.BoolVar(&f.outside, "outside-hours", false, "the condition holds outside the --days/--hours window instead of inside")
	fs.StringSliceVar(&f.sources, "source", nil, "the client's address must be inside this CIDR (repeatable; a bare IP is a /32)")
	fs.BoolVar(&f.approvedDevice, "require-approved-device", false, "the device must be approved by an admin (keyhole admin device approve)")
	fs.StringVar(&f.posture, "posture", "", "the device's posture must satisfy this posture profile (keyhole admin posture list)")
}

// conditions checks the flags and builds the rule's conditions; the
// controller checks them again (days, times, zone).
func (f *conditionFlags) conditions() (api.RuleConditions, error) {
	var c api.RuleConditions
	if f.mfaWithin < 0 {
		return c, errors.New("--mfa-within: give a positive duration, e.g. 15m")
	}
	c.MFAWithin = api.Duration(f.mfaWithin)
	switch {
	case f.hours != "" || len(f.days) > 0 || f.tz != "":
		if f.hours == "" {
			return c, errors.New("--hours: give the window's hours, e.g. --hours 08:00-18:00 (00:00-24:00 for whole days)")
		}
		if f.tz == "" {
			return c, errors.New("--tz: give the window's IANA time zone, e.g. --tz Europe/Berlin or --tz UTC")
		}
		start, end, ok := strings.Cut(f.hours, "-")
		if !ok {
			return c, fmt.Errorf("--hours %q: want START-END, e.g. 08:00-18:00", f.hours)
		}
		c.TimeWindow = &api.TimeWindow{Days: f.days, Start: strings.TrimSpace(start), End: strings.TrimSpace(end), TZ: f.tz, Outside: f.outside}
	case f.outside:
		return c, errors.New("--outside-hours: give the window too (--days, --hours, --tz)")
	}
	var err error
	if c.SourceCIDRs, err = parseAddresses("--source", f.sources); err != nil {
		return c, err
	}
	c.DeviceApproved = f.approvedDevice
	c.Posture = f.posture
	return c, nil
}

func adminWhyCmd(o *adminOpts) *cobra.Command {
	var (
		q      apiclient.WhyQuery
		device string
		at     string
	)
	cmd := &cobra.Command{
		Use:   "why USER APP [--device D] [--source IP] [--at RFC3339] [--mfa-at RFC3339|never]",
		Short: "Explain how the policy decides USER's request for APP, rule by rule",
		Long: `Explain the decision a grant request with these facts gets: every rule in
order, whether it covers the app and the user, each condition's requirement
against the request's value, which rule decided, and the reason the client
would see. It runs the controller's own evaluation, so it cannot disagree
with a grant. Facts not given are unknown and conditions on them fail:
give --device for device approval, --source for source conditions and
--mfa-at for MFA age; --at defaults to now.`,
		Example: `  keyhole admin why alice payroll --device dev_1234 --source 198.51.100.7
  keyhole admin why bob wiki --at 2026-11-28T19:30:00+01:00`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			q.User, q.App, q.Device = args[0], args[1], api.DeviceID(device)
			if at != "" {
				t, err := time.Parse(time.RFC3339, at)
				if err != nil {
					return fmt.Errorf("--at %q: want an RFC 3339 time, e.g. 2026-11-23T09:00:00+01:00", at)
				}
				q.At = t
			}
			if q.Source != "" {
				if _, err := netip.ParseAddr(q.Source); err != nil {
					return fmt.Errorf("--source %q: want an IP address, e.g. 198.51.100.7", q.Source)
				}
			}
			if q.MFAAt != "" && q.MFAAt != "never" {
				if _, err := time.Parse(time.RFC3339, q.MFAAt); err != nil {
					return fmt.Errorf("--mfa-at %q: want an RFC 3339 time or never", q.MFAAt)
				}
			}
			return o.run(func(ctx context.Context, a *apiclient.Admin, _ []string) error {
				why, err := a.Why(ctx, q)
				if err != nil {
					return err
				}
				return o.print(why, func(w io.Writer) { printWhy(w, why) })
			})(cmd, args)
		},
	}
	f := cmd.Flags()
	f.StringVar(&device, "device", "", "the requesting device (its approval counts)")
	f.StringVar(&q.Source, "source", "", "the client's address as the controller would see it")
	f.StringVar(&at, "at", "", "when the request comes, RFC 3339 (default now)")
	f.StringVar(&q.MFAAt, "mfa-at", "", "the session's last MFA, RFC 3339, or never (default: never)")
	return cmd
}

// whyResults are the words a table uses for api.WhyRule.Result.
var whyResults = map[string]string{
	api.WhyDecided:      "DECIDED",
	api.WhyOtherApp:     "other app",
	api.WhyOtherSubject: "other users/groups",
	api.WhyUnmet:        "conditions unmet",
	api.WhyNotReached:   "not reached",
}

func printWhy(w io.Writer, why api.Why) {
	fmt.Fprintf(w, "%s (groups %s) → %s at %s", why.User, list(why.Groups), why.App, why.At.Format(time.RFC3339))
	if why.DeviceID != "" {
		fmt.Fprintf(w, ", device %s", why.DeviceID)
	}
	if why.Source.IsValid() {
		fmt.Fprintf(w, ", from %s", why.Source)
	}
	if !why.MFAAt.IsZero() {
		fmt.Fprintf(w, ", MFA at %s", why.MFAAt.Format(time.RFC3339))
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "\nPOS\tID\tRESULT\tRULE")
	for _, r := range why.Rules {
		res := whyResults[r.Result]
		if res == "" {
			res = r.Result
		}
		fmt.Fprintf(w, "%d\t%s\t%s\t%s\n", r.Position, r.ID, res, r.Rule)
		for _, c := range r.Conditions {
			mark := "not checked"
			switch {
			case c.Checked && c.Met:
				mark = "met"
			case c.Checked:
				mark = "UNMET"
			}
			fmt.Fprintf(w, "\t\t  %s\t%s: want %s; got %s\n", mark, c.Name, c.Want, c.Got)
		}
	}
	verdict := "DENY"
	if why.Allow {
		verdict = "ALLOW"
	}
	fmt.Fprintf(w, "\n%s\t%s\n", verdict, why.Reason)
	for _, n := range why.Notes {
		fmt.Fprintf(w, "note\t%s\n", n)
	}
}
