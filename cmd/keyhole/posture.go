package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/keyhole-net/keyhole/client/posture"
	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/apiclient"
)

// profileFlags are the flags that describe a posture profile.
type profileFlags struct {
	description                      string
	os                               []string
	minClient                        string
	diskEncryption, firewall, screen bool
	files, processes, commands       []string
}

func (f *profileFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.description, "description", "", "what the profile is for")
	fs.StringSliceVar(&f.os, "os", nil, "allowed operating systems: linux, darwin, windows (default any)")
	fs.StringVar(&f.minClient, "min-client-version", "", "oldest Keyhole client release allowed, e.g. 0.7.0")
	fs.BoolVar(&f.diskEncryption, "disk-encryption", false, "require the root volume to be encrypted")
	fs.BoolVar(&f.firewall, "firewall", false, "require an active host firewall")
	fs.BoolVar(&f.screen, "screen-lock", false, "require a screen lock")
	fs.StringArrayVar(&f.files, "file", nil, "require a file: NAME=/path or NAME=/path:SHA256 (repeatable)")
	fs.StringArrayVar(&f.processes, "process", nil, "require a running process: NAME=executable (repeatable)")
	fs.StringArrayVar(&f.commands, "command", nil, "require the device's own command check NAME (its posture.commands configuration) to exit 0 (repeatable)")
}

// profile builds the profile; the controller validates it in full.
func (f *profileFlags) profile(name string) (api.PostureProfile, error) {
	p := api.PostureProfile{
		Name: name, Description: f.description, OS: f.os, MinClientVersion: f.minClient,
		DiskEncryption: f.diskEncryption, Firewall: f.firewall, ScreenLock: f.screen,
	}
	for _, s := range f.files {
		check, spec, ok := strings.Cut(s, "=")
		if !ok || check == "" || spec == "" {
			return p, fmt.Errorf("--file %q: want NAME=/path or NAME=/path:SHA256", s)
		}
		path, sum, _ := strings.Cut(spec, ":")
		p.Checks = append(p.Checks, api.PostureCheck{Name: check, Kind: api.CheckFile, Path: path, SHA256: strings.ToLower(sum)})
	}
	for _, s := range f.processes {
		check, proc, ok := strings.Cut(s, "=")
		if !ok || check == "" || proc == "" {
			return p, fmt.Errorf("--process %q: want NAME=executable, e.g. edr=falcon-sensor", s)
		}
		p.Checks = append(p.Checks, api.PostureCheck{Name: check, Kind: api.CheckProcess, Process: proc})
	}
	for _, check := range f.commands {
		p.Checks = append(p.Checks, api.PostureCheck{Name: check, Kind: api.CheckCommand})
	}
	return p, nil
}

func adminPostureCmd(o *adminOpts) *cobra.Command {
	cmd := groupCmd("posture", "Manage posture profiles: device requirements that policy rules name (--posture)")
	var pf profileFlags
	save := func(replace bool) func(*cobra.Command, []string) error {
		return o.run(func(ctx context.Context, a *apiclient.Admin, args []string) error {
			p, err := pf.profile(args[0])
			if err != nil {
				return err
			}
			verb := "Added"
			if replace {
				verb = "Replaced"
				p, err = a.UpdatePostureProfile(ctx, p)
			} else {
				p, err = a.AddPostureProfile(ctx, p)
			}
			if err != nil {
				return err
			}
			return o.print(p, func(w io.Writer) { fmt.Fprintf(w, "%s posture profile %s: %s\n", verb, p.Name, p) })
		})
	}
	add := &cobra.Command{
		Use:   "add NAME [requirements]",
		Short: "Add a posture profile",
		Long: `Add a posture profile: requirements a device's signed posture report must
meet. A policy rule requires it with --posture NAME. A fact the device cannot
determine is reported as unknown, and unknown never meets a requirement.

Command checks name a command in the device's own configuration
(posture.commands in its keyhole.yaml): the controller never sends a command
line to a device.`,
		Example: `  keyhole admin posture add corp-laptop --os linux,darwin --disk-encryption --firewall --min-client-version 0.7.0
  keyhole admin posture add edr --process edr=falcon-sensor --file edr-conf=/etc/edr.conf:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
  keyhole admin policy add --allow --group finance --app payroll --posture corp-laptop`,
		Args: cobra.ExactArgs(1),
		RunE: save(false),
	}
	pf.register(add.Flags())
	update := &cobra.Command{
		Use:   "update NAME [requirements]",
		Short: "Replace a posture profile (live grants are re-checked at once)",
		Args:  cobra.ExactArgs(1),
		RunE:  save(true),
	}
	pf.register(update.Flags())
	ls := &cobra.Command{
		Use:   "list",
		Short: "List posture profiles",
		Args:  cobra.NoArgs,
		RunE: o.run(func(ctx context.Context, a *apiclient.Admin, _ []string) error {
			ps, err := a.PostureProfiles(ctx)
			if err != nil {
				return err
			}
			return o.print(orEmpty(ps), func(w io.Writer) {
				fmt.Fprintln(w, "NAME\tREQUIRES\tDESCRIPTION")
				for _, p := range ps {
					fmt.Fprintf(w, "%s\t%s\t%s\n", p.Name, p, p.Description)
				}
			})
		}),
	}
	rm := &cobra.Command{
		Use:   "rm NAME",
		Short: "Remove a posture profile no rule requires",
		Args:  cobra.ExactArgs(1),
		RunE: o.run(func(ctx context.Context, a *apiclient.Admin, args []string) error {
			if err := a.RemovePostureProfile(ctx, args[0]); err != nil {
				return err
			}
			return o.print(map[string]string{"removed": args[0]}, func(w io.Writer) { fmt.Fprintf(w, "Removed posture profile %s\n", args[0]) })
		}),
	}
	cmd.AddCommand(add, update, ls, rm)
	return cmd
}

// postureCell is a device's latest posture in a table cell: "linux, disk
// yes, firewall no, screen lock unknown, checks 2/3"; "-" for none.
func postureCell(p *api.Posture) string {
	if p == nil {
		return "-"
	}
	s := fmt.Sprintf("%s, disk %s, firewall %s, screen lock %s", p.OS, p.DiskEncryption, p.Firewall, p.ScreenLock)
	if len(p.Checks) > 0 {
		pass := 0
		for _, c := range p.Checks {
			if c.Pass == api.Yes {
				pass++
			}
		}
		s += fmt.Sprintf(", checks %d/%d", pass, len(p.Checks))
	}
	return s
}

// postureConfig is what the client reports about itself: this binary's
// version and the device's own command checks, posture.commands in the
// configuration file (check name → argv; the controller never sends
// commands).
func (c *cli) postureConfig() (posture.Config, error) {
	cfg := posture.Config{Version: moduleVersion()}
	raw := c.v.Get("posture.commands")
	if raw == nil {
		return cfg, nil
	}
	m, ok := raw.(map[string]any)
	if !ok {
		return cfg, fmt.Errorf("posture.commands in the configuration: want a map of check name to command line (a list), got %T", raw)
	}
	cfg.Commands = make(map[string][]string, len(m))
	for name, v := range m {
		list, ok := v.([]any)
		if !ok || len(list) == 0 {
			return cfg, fmt.Errorf("posture.commands.%s: want the command as a list, e.g. [/usr/bin/edrctl, status]", name)
		}
		argv := make([]string, len(list))
		for i, a := range list {
			s, ok := a.(string)
			if !ok {
				return cfg, fmt.Errorf("posture.commands.%s[%d]: want a string", name, i)
			}
			argv[i] = s
		}
		if !strings.HasPrefix(argv[0], "/") {
			return cfg, fmt.Errorf("posture.commands.%s: %q must be an absolute path (commands run without a shell and without PATH)", name, argv[0])
		}
		cfg.Commands[name] = argv
	}
	return cfg, nil
}
