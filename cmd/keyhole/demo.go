package main

import (
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/keyhole-net/keyhole/cmd/keyhole/internal/onebox"
)

func (c *cli) demoCmd() *cobra.Command {
	var cfg onebox.DemoConfig
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run the whole product on this machine, with narration",
		Long: `Start a controller, a gateway, two private web apps, users and a policy on
loopback; show access granted, denied and revoked; then keep running with a
forward for alice and print commands to try in another terminal. Ctrl-C
stops everything. Data goes to a temporary directory unless --dir is given.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !cmd.Flags().Changed("listen") {
				cfg.Listen = "" // 127.0.0.1:8443, or a free port if taken
			}
			cfg.Out = c.stdout
			cfg.Logger = c.log
			if !cmd.Flags().Changed("log-level") {
				// Narration is the output; component logs only for trouble.
				log, err := newLogger(c.stderr, slog.LevelWarn.String())
				if err != nil {
					return err
				}
				cfg.Logger = log
			}
			return onebox.RunDemo(cmd.Context(), cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Listen, "listen", "127.0.0.1:8443", "controller API address (default: 127.0.0.1:8443, or a free port if taken)")
	f.StringVar(&cfg.Dir, "dir", "", "keep the demo's data in this (new) directory; default: a temporary one, removed on exit")
	return cmd
}
