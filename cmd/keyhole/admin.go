package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/apiclient"
)

// adminOpts are the persistent flags of keyhole admin.
type adminOpts struct {
	controller  string
	token       string
	fingerprint string
	json        bool
	stdout      io.Writer
}

func (c *cli) adminCmd() *cobra.Command {
	o := &adminOpts{stdout: c.stdout}
	cmd := groupCmd("admin", "Manage users, apps, gateways, policy, grants; read audit and flows")
	cmd.Long = `Talk to the controller's admin API. On the controller's own machine, with
the default data directory and no --controller, the token and CA fingerprint
are read from that directory; elsewhere give --token and --ca-fingerprint
(or KEYHOLE_ADMIN_TOKEN and KEYHOLE_CA_FINGERPRINT).`
	pf := cmd.PersistentFlags()
	pf.StringVar(&o.controller, "controller", defaultControllerURL, "controller URL")
	pf.StringVar(&o.token, "token", "", "admin token (env KEYHOLE_ADMIN_TOKEN)")
	setConfigKey(pf, "token", "admin-token")
	pf.StringVar(&o.fingerprint, "ca-fingerprint", "", "controller CA fingerprint, sha256:…")
	pf.BoolVar(&o.json, "json", false, "print JSON instead of tables")
	cmd.AddCommand(
		adminUserCmd(o),
		adminGroupCmd(o),
		adminAppCmd(o),
		adminGatewayGroupCmd(o),
		adminGatewayCmd(o),
		adminPolicyCmd(o),
		adminPostureCmd(o),
		adminDeviceCmd(o),
		adminWhyCmd(o),
		adminGrantCmd(o),
		adminAuditCmd(o),
		adminFlowCmd(o),
	)
	for _, sub := range cmd.Commands() {
		argumentsOnly(sub)
	}
	return cmd
}

// client returns an admin API client for the resolved flags.
func (o *adminOpts) client(cmd *cobra.Command) (*apiclient.Admin, error) {
	controllerTarget(cmd, &o.fingerprint, &o.token)
	if o.token == "" {
		return nil, errors.New("no admin token: give --token or set KEYHOLE_ADMIN_TOKEN (keyhole controller printed one on first start and saved it in DATA/admin.token)")
	}
	if o.fingerprint == "" {
		return nil, errors.New("no CA fingerprint: give --ca-fingerprint sha256:… or set KEYHOLE_CA_FINGERPRINT (keyhole controller prints it on start)")
	}
	return apiclient.NewAdmin(o.controller, o.fingerprint, o.token)
}

// run adapts fn, which gets a ready admin client, to a cobra RunE.
func (o *adminOpts) run(fn func(ctx context.Context, a *apiclient.Admin, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		a, err := o.client(cmd)
		if err != nil {
			return err
		}
		return fn(cmd.Context(), a, args)
	}
}

// print writes v as JSON with --json, else a table (or line) drawn by table.
func (o *adminOpts) print(v any, table func(w io.Writer)) error {
	if o.json {
		return writeJSON(o.stdout, v)
	}
	tw := tabwriter.NewWriter(o.stdout, 0, 0, 2, ' ', 0)
	table(tw)
	return tw.Flush()
}

// done reports a change that has no object to show: JSON gets {key: value}.
func (o *adminOpts) done(key, value, line string) error {
	return o.print(map[string]string{key: value}, func(w io.Writer) { fmt.Fprintln(w, line) })
}

// orEmpty makes a nil list print as [] in JSON.
func orEmpty[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// list prints a comma-separated list, or "-".
func list(s []string) string {
	if len(s) == 0 {
		return "-"
	}
	return strings.Join(s, ",")
}

// date prints a time in a table: local, to the second; "-" when zero.
func date(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04:05")
}

// --- users and groups ---------------------------------------------------

func adminUserCmd(o *adminOpts) *cobra.Command {
	cmd := groupCmd("user", "Manage users")

	var groups []string
	var passwordStdin bool
	add := &cobra.Command{
		Use:   "add NAME",
		Short: "Create a user (asks for a password on a terminal; --password-stdin for scripts)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var pw string
			if passwordStdin || isTerminal(cmd.InOrStdin()) {
				var err error
				if pw, err = readPassword(cmd.InOrStdin(), cmd.ErrOrStderr(), passwordStdin, "Password for "+args[0]+" (empty: none yet)"); err != nil {
					return err
				}
			}
			return o.run(func(ctx context.Context, a *apiclient.Admin, args []string) error {
				u, err := a.AddUser(ctx, api.UserCreate{Name: args[0], Password: pw, Groups: groups})
				if err != nil {
					return err
				}
				return o.print(u, func(w io.Writer) {
					fmt.Fprintf(w, "Created user %s (%s), groups %s", u.Name, u.ID, list(u.Groups))
					if pw == "" {
						fmt.Fprint(w, "; no password yet, so the user cannot log in")
					}
					fmt.Fprintln(w)
				})
			})(cmd, args)
		},
	}
	add.Flags().StringSliceVar(&groups, "group", nil, "group to join (repeatable; the group must exist)")
	add.Flags().BoolVar(&passwordStdin, "password-stdin", false, "read the password as one line from standard input")

	ls := &cobra.Command{
		Use:   "list",
		Short: "List users",
		Args:  cobra.NoArgs,
		RunE: o.run(func(ctx context.Context, a *apiclient.Admin, _ []string) error {
			us, err := a.Users(ctx)
			if err != nil {
				return err
			}
			return o.print(orEmpty(us), func(w io.Writer) {
				fmt.Fprintln(w, "NAME\tID\tGROUPS\tSTATUS\tMFA\tCREATED")
				for _, u := range us {
					st := "enabled"
					if u.Disabled {
						st = "disabled"
					}
					mfa := "-"
					if u.MFA {
						mfa = "totp"
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", u.Name, u.ID, list(u.Groups), st, mfa, date(u.CreatedAt))
				}
			})
		}),
	}
	setDisabled := func(disabled bool) func(context.Context, *apiclient.Admin, []string) error {
		return func(ctx context.Context, a *apiclient.Admin, args []string) error {
			u, err := a.UpdateUser(ctx, args[0], api.UserUpdate{Disabled: &disabled})
			if err != nil {
				return err
			}
			return o.print(u, func(w io.Writer) {
				if disabled {
					fmt.Fprintf(w, "Disabled user %s; their grants are revoked\n", u.Name)
				} else {
					fmt.Fprintf(w, "Enabled user %s\n", u.Name)
				}
			})
		}
	}
	disable := &cobra.Command{Use: "disable NAME", Short: "Disable a user (revokes their grants at once)", Args: cobra.ExactArgs(1), RunE: o.run(setDisabled(true))}
	enable := &cobra.Command{Use: "enable NAME", Short: "Enable a user", Args: cobra.ExactArgs(1), RunE: o.run(setDisabled(false))}
	rm := &cobra.Command{
		Use:   "rm NAME",
		Short: "Remove a user (revokes their grants)",
		Args:  cobra.ExactArgs(1),
		RunE: o.run(func(ctx context.Context, a *apiclient.Admin, args []string) error {
			if err := a.RemoveUser(ctx, args[0]); err != nil {
				return err
			}
			return o.done("removed", args[0], "Removed user "+args[0])
		}),
	}
	mfaReset := &cobra.Command{
		Use:   "mfa-reset NAME",
		Short: "Remove a user's MFA and recovery codes (a lost phone); logins need only the password until they enrol again",
		Args:  cobra.ExactArgs(1),
		RunE: o.run(func(ctx context.Context, a *apiclient.Admin, args []string) error {
			if err := a.ResetMFA(ctx, args[0]); err != nil {
				return err
			}
			return o.done("mfa_reset", args[0], "Removed the MFA of user "+args[0]+"; they can enrol again with keyhole mfa enroll")
		}),
	}
	cmd.AddCommand(add, ls, disable, enable, rm, mfaReset)
	return cmd
}

func adminGroupCmd(o *adminOpts) *cobra.Command {
	cmd := groupCmd("group", "Manage groups")
	add := &cobra.Command{
		Use:   "add NAME",
		Short: "Create a group",
		Args:  cobra.ExactArgs(1),
		RunE: o.run(func(ctx context.Context, a *apiclient.Admin, args []string) error {
			g, err := a.AddGroup(ctx, args[0])
			if err != nil {
				return err
			}
			return o.print(g, func(w io.Writer) { fmt.Fprintf(w, "Created group %s\n", g.Name) })
		}),
	}
	ls := &cobra.Command{
		Use:   "list",
		Short: "List groups",
		Args:  cobra.NoArgs,
		RunE: o.run(func(ctx context.Context, a *apiclient.Admin, _ []string) error {
			gs, err := a.Groups(ctx)
			if err != nil {
				return err
			}
			return o.print(orEmpty(gs), func(w io.Writer) {
				fmt.Fprintln(w, "NAME\tMEMBERS\tCREATED")
				for _, g := range gs {
					fmt.Fprintf(w, "%s\t%d\t%s\n", g.Name, g.Members, date(g.CreatedAt))
				}
			})
		}),
	}
	cmd.AddCommand(add, ls)
	return cmd
}

// --- apps ----------------------------------------------------------------

// parseAddresses parses the values of an address flag (--address,
// --source): a bare IP becomes a /32 (/128), a CIDR must name its network
// (no host bits).
func parseAddresses(flag string, ss []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range ss {
		s = strings.TrimSpace(s)
		if ip, err := netip.ParseAddr(s); err == nil {
			if ip.Zone() != "" {
				return nil, fmt.Errorf("%s %q: no zone, please", flag, s)
			}
			ip = ip.Unmap()
			out = append(out, netip.PrefixFrom(ip, ip.BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("%s %q: want an IP (10.0.0.5) or a CIDR (10.20.0.0/24)", flag, s)
		}
		if p.Masked() != p {
			return nil, fmt.Errorf("%s %q: host bits are set; did you mean %s (or %s alone)?", flag, s, p.Masked(), p.Addr())
		}
		out = append(out, p)
	}
	return out, nil
}

func adminAppCmd(o *adminOpts) *cobra.Command {
	cmd := groupCmd("app", "Manage apps (what a grant gives access to)")
	var (
		addresses, domains []string
		ports, gwGroup     string
	)
	add := &cobra.Command{
		Use:   "add NAME (--address CIDR_OR_IP… | --domain D…) --ports tcp/443,udp/53 --gateway-group G",
		Short: "Create an app",
		Example: `  keyhole admin app add wiki --domain wiki.corp.internal --ports tcp/443 --gateway-group site
  keyhole admin app add db --address 10.20.0.0/24 --ports tcp/5432 --gateway-group site`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			// Everything that can be checked here is, before any request.
			req := api.AppCreate{Name: args[0], GatewayGroup: gwGroup}
			var err error
			if req.Addresses, err = parseAddresses("--address", addresses); err != nil {
				return err
			}
			for _, d := range domains {
				if d = strings.ToLower(strings.TrimSuffix(strings.TrimSpace(d), ".")); d == "" {
					return errors.New("--domain: empty name")
				}
				req.Domains = append(req.Domains, d)
			}
			if len(req.Addresses)+len(req.Domains) == 0 {
				return errors.New("give at least one --address (IP or CIDR) or --domain")
			}
			if req.Ports, err = api.ParsePortRanges(ports); err != nil {
				return fmt.Errorf("--ports: %w", err)
			}
			if len(req.Ports) == 0 {
				return errors.New("give --ports, e.g. --ports tcp/443 or --ports tcp/8000-8010,udp/53")
			}
			if gwGroup == "" {
				return errors.New("give --gateway-group G (keyhole admin gateway-group list)")
			}
			return o.run(func(ctx context.Context, a *apiclient.Admin, _ []string) error {
				app, err := a.AddApp(ctx, req)
				if err != nil {
					return err
				}
				return o.print(app, func(w io.Writer) {
					fmt.Fprintf(w, "Created app %s: %s %s via gateway group %s\n", app.Name, appTargets(app), api.FormatPortRanges(app.Ports), app.GatewayGroup)
				})
			})(cmd, args)
		},
	}
	af := add.Flags()
	af.StringSliceVar(&addresses, "address", nil, "IP or CIDR on the gateway's site (repeatable)")
	af.StringSliceVar(&domains, "domain", nil, "exact domain name (repeatable)")
	af.StringVar(&ports, "ports", "", "ports, e.g. tcp/80,tcp/8000-8010,udp/53")
	af.StringVar(&gwGroup, "gateway-group", "", "gateway group that serves the app")

	ls := &cobra.Command{
		Use:   "list",
		Short: "List apps",
		Args:  cobra.NoArgs,
		RunE: o.run(func(ctx context.Context, a *apiclient.Admin, _ []string) error {
			as, err := a.Apps(ctx)
			if err != nil {
				return err
			}
			return o.print(orEmpty(as), func(w io.Writer) {
				fmt.Fprintln(w, "NAME\tTARGETS\tPORTS\tGATEWAY GROUP\tCREATED")
				for _, app := range as {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", app.Name, appTargets(app), api.FormatPortRanges(app.Ports), app.GatewayGroup, date(app.CreatedAt))
				}
			})
		}),
	}
	rm := &cobra.Command{
		Use:   "rm NAME",
		Short: "Remove an app (revokes its grants)",
		Args:  cobra.ExactArgs(1),
		RunE: o.run(func(ctx context.Context, a *apiclient.Admin, args []string) error {
			if err := a.RemoveApp(ctx, args[0]); err != nil {
				return err
			}
			return o.done("removed", args[0], "Removed app "+args[0])
		}),
	}
	cmd.AddCommand(add, ls, rm)
	return cmd
}

// appTargets prints an app's addresses and domains (with virtual IPs).
func appTargets(app api.App) string {
	var s []string
	for _, p := range app.Addresses {
		s = append(s, p.String())
	}
	for _, d := range app.Domains {
		if ip, ok := app.VirtualIPs[d]; ok {
			d += " (" + ip.String() + ")"
		}
		s = append(s, d)
	}
	return list(s)
}

// --- gateways ------------------------------------------------------------

func adminGatewayGroupCmd(o *adminOpts) *cobra.Command {
	cmd := groupCmd("gateway-group", "Manage gateway groups")
	add := &cobra.Command{
		Use:   "add NAME",
		Short: "Create a gateway group",
		Args:  cobra.ExactArgs(1),
		RunE: o.run(func(ctx context.Context, a *apiclient.Admin, args []string) error {
			g, err := a.AddGatewayGroup(ctx, args[0])
			if err != nil {
				return err
			}
			return o.print(g, func(w io.Writer) {
				fmt.Fprintf(w, "Created gateway group %s; enrol gateways with: keyhole admin gateway token --group %s\n", g.Name, g.Name)
			})
		}),
	}
	ls := &cobra.Command{
		Use:   "list",
		Short: "List gateway groups",
		Args:  cobra.NoArgs,
		RunE: o.run(func(ctx context.Context, a *apiclient.Admin, _ []string) error {
			gs, err := a.GatewayGroups(ctx)
			if err != nil {
				return err
			}
			return o.print(orEmpty(gs), func(w io.Writer) {
				fmt.Fprintln(w, "NAME\tGATEWAYS\tCREATED")
				for _, g := range gs {
					fmt.Fprintf(w, "%s\t%d\t%s\n", g.Name, g.Gateways, date(g.CreatedAt))
				}
			})
		}),
	}
	cmd.AddCommand(add, ls)
	return cmd
}

func adminGatewayCmd(o *adminOpts) *cobra.Command {
	cmd := groupCmd("gateway", "Enrol and list gateways")
	var (
		group string
		ttl   time.Duration
	)
	token := &cobra.Command{
		Use:   "token --group G",
		Short: "Create a one-time enrolment token (prints the token only)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if group == "" {
				return errors.New("give --group G (keyhole admin gateway-group list)")
			}
			return o.run(func(ctx context.Context, a *apiclient.Admin, _ []string) error {
				t, err := a.GatewayToken(ctx, group, ttl)
				if err != nil {
					return err
				}
				return o.print(t, func(w io.Writer) { fmt.Fprintln(w, t.Token) })
			})(cmd, args)
		},
	}
	token.Flags().StringVar(&group, "group", "", "gateway group the gateway joins")
	token.Flags().DurationVar(&ttl, "ttl", time.Hour, "how long the token can be used")
	ls := &cobra.Command{
		Use:   "list",
		Short: "List gateways",
		Args:  cobra.NoArgs,
		RunE: o.run(func(ctx context.Context, a *apiclient.Admin, _ []string) error {
			gs, err := a.Gateways(ctx)
			if err != nil {
				return err
			}
			return o.print(orEmpty(gs), func(w io.Writer) {
				fmt.Fprintln(w, "ID\tNAME\tGROUP\tOVERLAY IP\tCANDIDATES\tCONNECTED\tLAST SEEN")
				for _, g := range gs {
					var eps []string
					for _, c := range g.Candidates {
						eps = append(eps, c.Type+" "+c.Addr.String())
					}
					if len(eps) == 0 {
						for _, e := range g.Endpoints {
							eps = append(eps, e.String())
						}
					}
					conn := "no"
					if g.Connected {
						conn = "yes"
					}
					if g.Draining {
						conn += " (draining)"
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", g.ID, g.Name, g.Group, g.OverlayIP, list(eps), conn, date(g.LastSeen))
				}
				for _, g := range gs {
					if len(g.Peers) == 0 {
						continue
					}
					fmt.Fprintf(w, "\nPEERS OF %s\tDEVICE\tPATH\tENDPOINT\tLAST HANDSHAKE\tRX\tTX\n", g.Name)
					for _, p := range g.Peers {
						ep := "-"
						if p.Endpoint.IsValid() {
							ep = p.Endpoint.String()
						}
						hs := "never"
						if !p.LastHandshake.IsZero() {
							hs = date(p.LastHandshake)
						}
						fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.PublicKey, p.DeviceID, orDash(p.Path), ep, hs, fmtBytes(p.RxBytes), fmtBytes(p.TxBytes))
					}
				}
			})
		}),
	}
	cmd.AddCommand(token, ls, gatewayDrainCmd(o, true), gatewayDrainCmd(o, false))
	return cmd
}

// gatewayDrainCmd is keyhole admin gateway drain ID (drain) or undrain ID.
func gatewayDrainCmd(o *adminOpts, drain bool) *cobra.Command {
	use, short := "undrain ID", "Put a drained gateway back in service"
	if drain {
		use, short = "drain ID", "Take a gateway out of service: no new grants; renewals move to another gateway of its group"
	}
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: o.run(func(ctx context.Context, a *apiclient.Admin, args []string) error {
			g, err := a.UpdateGateway(ctx, api.GatewayID(args[0]), api.GatewayUpdate{Draining: &drain})
			if err != nil {
				return err
			}
			return o.print(g, func(w io.Writer) {
				if g.Draining {
					fmt.Fprintf(w, "Gateway %s (%s, group %s) is draining: it gets no new grants; its grants move to another gateway of the group as they renew\n", g.ID, g.Name, g.Group)
				} else {
					fmt.Fprintf(w, "Gateway %s (%s, group %s) is back in service\n", g.ID, g.Name, g.Group)
				}
			})
		}),
	}
}

// --- policy --------------------------------------------------------------

func adminPolicyCmd(o *adminOpts) *cobra.Command {
	cmd := groupCmd("policy", "Manage the ordered policy (first match wins; default deny)")
	var (
		allow, deny         bool
		groups, users, apps []string
		position            int
		description         string
		conds               conditionFlags
	)
	add := &cobra.Command{
		Use:   "add (--allow|--deny) [--group G]… [--user U]… --app A… [conditions]",
		Short: "Add a rule (appended, or before the rule now at --position)",
		Long: `Add a rule. Conditions are optional and must all hold for the rule to match:
an allow rule whose conditions fail does not match (evaluation goes on, and
a request nothing else allows is denied with the unmet conditions); a deny
rule denies only when its conditions hold.`,
		Example: `  keyhole admin policy add --allow --group eng --app wiki --description 'engineers read the wiki'
  keyhole admin policy add --allow --group finance --app payroll --mfa-within 15m --source 198.51.100.0/24 --require-approved-device
  keyhole admin policy add --deny --group contractors --app payroll --days mon-fri --hours 08:00-18:00 --tz Europe/Berlin --outside-hours`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			req := api.PolicyRuleCreate{Users: users, Groups: groups, Apps: apps, Position: position, Description: description}
			var err error
			if req.RuleConditions, err = conds.conditions(); err != nil {
				return err
			}
			switch {
			case allow == deny:
				return errors.New("give exactly one of --allow or --deny")
			case allow:
				req.Action = api.Allow
			default:
				req.Action = api.Deny
			}
			if len(apps) == 0 {
				return errors.New("give at least one --app (or --app '*' for every app)")
			}
			if len(users)+len(groups) == 0 {
				return errors.New("give at least one --group or --user (or --group '*' for everyone)")
			}
			if position < 0 {
				return errors.New("--position must be 1 or more (0 appends)")
			}
			return o.run(func(ctx context.Context, a *apiclient.Admin, _ []string) error {
				r, err := a.AddPolicy(ctx, req)
				if err != nil {
					return err
				}
				return o.print(r, func(w io.Writer) {
					fmt.Fprintf(w, "Added rule %s at position %d: %s\n", r.ID, r.Position, ruleText(r))
				})
			})(cmd, args)
		},
	}
	f := add.Flags()
	f.BoolVar(&allow, "allow", false, "allow matching requests")
	f.BoolVar(&deny, "deny", false, "deny matching requests")
	f.StringSliceVar(&groups, "group", nil, "group the rule applies to (repeatable; * for any)")
	f.StringSliceVar(&users, "user", nil, "user the rule applies to (repeatable; * for any)")
	f.StringSliceVar(&apps, "app", nil, "app the rule covers (repeatable; * for any)")
	f.IntVar(&position, "position", 0, "insert before the rule now at this 1-based position (0: append)")
	f.StringVar(&description, "description", "", "why the rule exists")
	conds.register(f)

	ls := &cobra.Command{
		Use:   "list",
		Short: "List rules in evaluation order",
		Args:  cobra.NoArgs,
		RunE: o.run(func(ctx context.Context, a *apiclient.Admin, _ []string) error {
			rs, err := a.Policies(ctx)
			if err != nil {
				return err
			}
			return o.print(orEmpty(rs), func(w io.Writer) {
				fmt.Fprintln(w, "POS\tID\tACTION\tGROUPS\tUSERS\tAPPS\tCONDITIONS\tDESCRIPTION")
				for _, r := range rs {
					fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Position, r.ID, r.Action, list(r.Groups), list(r.Users), list(r.Apps), dash(r.RuleConditions.String()), r.Description)
				}
				fmt.Fprintln(w, "-\t(default)\tdeny\t*\t*\t*\t-\tnothing matched")
			})
		}),
	}
	rm := &cobra.Command{
		Use:   "rm ID",
		Short: "Remove a rule (grants it no longer allows are revoked)",
		Args:  cobra.ExactArgs(1),
		RunE: o.run(func(ctx context.Context, a *apiclient.Admin, args []string) error {
			if err := a.RemovePolicy(ctx, api.RuleID(args[0])); err != nil {
				return err
			}
			return o.done("removed", args[0], "Removed rule "+args[0])
		}),
	}
	cmd.AddCommand(add, ls, rm)
	return cmd
}

// ruleText prints a rule as a sentence: "allow group eng → wiki".
func ruleText(r api.PolicyRule) string {
	var subj []string
	if len(r.Groups) > 0 {
		subj = append(subj, "group "+strings.Join(r.Groups, ","))
	}
	if len(r.Users) > 0 {
		subj = append(subj, "user "+strings.Join(r.Users, ","))
	}
	s := fmt.Sprintf("%s %s → %s", r.Action, strings.Join(subj, " and "), strings.Join(r.Apps, ","))
	if c := r.RuleConditions.String(); c != "" {
		s += " when " + c
	}
	return s
}

// --- devices, grants -----------------------------------------------------

func adminDeviceCmd(o *adminOpts) *cobra.Command {
	cmd := groupCmd("device", "List, disable, enable and approve devices")
	ls := &cobra.Command{
		Use:   "list",
		Short: "List devices",
		Args:  cobra.NoArgs,
		RunE: o.run(func(ctx context.Context, a *apiclient.Admin, _ []string) error {
			ds, err := a.Devices(ctx)
			if err != nil {
				return err
			}
			return o.print(orEmpty(ds), func(w io.Writer) {
				fmt.Fprintln(w, "ID\tUSER\tNAME\tOVERLAY IP\tSTATUS\tAPPROVED\tPOSTURE\tLAST SEEN")
				for _, d := range ds {
					st := "enabled"
					if d.Disabled {
						st = "disabled"
					}
					approved := "yes"
					if !d.Approved {
						approved = "no"
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.ID, d.User, d.Name, d.OverlayIP, st, approved, postureCell(d.Posture), date(d.LastSeen))
				}
			})
		}),
	}
	// update applies u to the device named by the argument and says what
	// happened with done (format, then the device's ID and user).
	update := func(u api.DeviceUpdate, done string) func(*cobra.Command, []string) error {
		return o.run(func(ctx context.Context, a *apiclient.Admin, args []string) error {
			d, err := a.UpdateDevice(ctx, api.DeviceID(args[0]), u)
			if err != nil {
				return err
			}
			return o.print(d, func(w io.Writer) { fmt.Fprintf(w, done+"\n", d.ID, d.User) })
		})
	}
	yes, no := true, false
	disable := &cobra.Command{Use: "disable ID", Short: "Disable a device (revokes its grants at once)", Args: cobra.ExactArgs(1),
		RunE: update(api.DeviceUpdate{Disabled: &yes}, "Disabled device %s (%s); its grants are revoked")}
	enable := &cobra.Command{Use: "enable ID", Short: "Enable a device", Args: cobra.ExactArgs(1),
		RunE: update(api.DeviceUpdate{Disabled: &no}, "Enabled device %s (%s)")}
	approve := &cobra.Command{Use: "approve ID", Short: "Approve a device (needed with --require-device-approval, and by rules that require an approved device)", Args: cobra.ExactArgs(1),
		RunE: update(api.DeviceUpdate{Approved: &yes}, "Approved device %s (%s)")}
	unapprove := &cobra.Command{Use: "unapprove ID", Short: "Withdraw a device's approval (revokes the grants that need it)", Args: cobra.ExactArgs(1),
		RunE: update(api.DeviceUpdate{Approved: &no}, "Withdrew the approval of device %s (%s); grants that need an approved device are revoked")}
	rm := &cobra.Command{Use: "rm ID", Short: "Remove a device: its grants are revoked at once, its sessions end; it must log in again to enrol anew", Args: cobra.ExactArgs(1),
		RunE: o.run(func(ctx context.Context, a *apiclient.Admin, args []string) error {
			if err := a.RemoveDevice(ctx, api.DeviceID(args[0])); err != nil {
				return err
			}
			return o.print(map[string]string{"removed": args[0]}, func(w io.Writer) {
				fmt.Fprintf(w, "Removed device %s; its grants are revoked\n", args[0])
			})
		})}
	cmd.AddCommand(ls, disable, enable, approve, unapprove, rm)
	return cmd
}

func adminGrantCmd(o *adminOpts) *cobra.Command {
	cmd := groupCmd("grant", "List and revoke live grants")
	ls := &cobra.Command{
		Use:   "list",
		Short: "List live grants",
		Args:  cobra.NoArgs,
		RunE: o.run(func(ctx context.Context, a *apiclient.Admin, _ []string) error {
			gs, err := a.Grants(ctx)
			if err != nil {
				return err
			}
			return o.print(orEmpty(gs), func(w io.Writer) {
				fmt.Fprintln(w, "ID\tUSER\tDEVICE\tAPP\tGATEWAY\tPORTS\tRULE\tEXPIRES")
				for _, g := range gs {
					dev := string(g.DeviceID)
					if g.Export {
						dev += " (export)" // a stock WireGuard client's, made by that device
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", g.ID, g.User, dev, g.App, g.GatewayID, api.FormatPortRanges(g.Ports), g.Rule, fmtTime(g.NotAfter))
				}
			})
		}),
	}
	revoke := &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a grant at once (its open connections close)",
		Args:  cobra.ExactArgs(1),
		RunE: o.run(func(ctx context.Context, a *apiclient.Admin, args []string) error {
			if err := a.RevokeGrant(ctx, api.GrantID(args[0])); err != nil {
				return err
			}
			return o.done("revoked", args[0], "Revoked grant "+args[0])
		}),
	}
	cmd.AddCommand(ls, revoke)
	return cmd
}

// --- audit, flows --------------------------------------------------------

func adminAuditCmd(o *adminOpts) *cobra.Command {
	cmd := groupCmd("audit", "Read the audit log (decisions, logins, changes)")
	var f apiclient.AuditFilter
	ls := &cobra.Command{
		Use:   "list",
		Short: "List audit events, newest first",
		Args:  cobra.NoArgs,
		RunE: o.run(func(ctx context.Context, a *apiclient.Admin, _ []string) error {
			evs, err := a.Audit(ctx, f)
			if err != nil {
				return err
			}
			return o.print(orEmpty(evs), func(w io.Writer) {
				fmt.Fprintln(w, "TIME\tTYPE\tACTOR\tUSER\tDEVICE\tAPP\tRULE\tREASON")
				for _, e := range evs {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", date(e.Time), e.Type, e.Actor, dash(e.User), dash(string(e.DeviceID)), dash(e.App), dash(string(e.Rule)), e.Reason)
				}
			})
		}),
	}
	lf := ls.Flags()
	lf.StringVar(&f.Type, "type", "", "only events of this type, e.g. grant.deny")
	lf.StringVar(&f.User, "user", "", "only events about this user")
	lf.StringVar(&f.App, "app", "", "only events about this app")
	lf.IntVar(&f.Limit, "limit", 50, "at most this many events (1–10000)")
	cmd.AddCommand(ls)
	return cmd
}

func adminFlowCmd(o *adminOpts) *cobra.Command {
	cmd := groupCmd("flow", "Read flow records (connections the gateways proxied)")
	var (
		grant string
		limit int
	)
	ls := &cobra.Command{
		Use:   "list",
		Short: "List flow records, newest first",
		Args:  cobra.NoArgs,
		RunE: o.run(func(ctx context.Context, a *apiclient.Admin, _ []string) error {
			fs, err := a.Flows(ctx, api.GrantID(grant), limit)
			if err != nil {
				return err
			}
			return o.print(orEmpty(fs), func(w io.Writer) {
				fmt.Fprintln(w, "START\tGRANT\tAPP\tCLIENT\tDESTINATION\tUP\tDOWN\tDURATION\tERROR")
				for _, r := range fs {
					dur := "-"
					if !r.End.IsZero() {
						dur = r.End.Sub(r.Start).Round(time.Millisecond).String()
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s/%s\t%s\t%s\t%s\t%s\n", date(r.Start), r.GrantID, r.App, r.ClientIP, r.Proto, r.Destination, fmtBytes(r.BytesUp), fmtBytes(r.BytesDown), dur, r.Error)
				}
			})
		}),
	}
	ls.Flags().StringVar(&grant, "grant", "", "only flows of this grant")
	ls.Flags().IntVar(&limit, "limit", 50, "at most this many records (1–10000)")
	cmd.AddCommand(ls)
	return cmd
}

// dash prints "-" for an empty table cell.
func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
