package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/keyhole-net/keyhole/client"
)

func (c *cli) loginCmd() *cobra.Command {
	var (
		cfg           client.LoginConfig
		passwordStdin bool
		sso           oidcLoginFlags
	)
	cmd := &cobra.Command{
		Use:   "login",
		Short: "Log in and enrol this device (the device key never leaves it)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			controllerTarget(cmd, &cfg.CAFingerprint, nil)
			if sso.enabled {
				return c.loginOIDC(cmd, cfg, sso)
			}
			if cfg.User == "" {
				return fmt.Errorf("give --user NAME")
			}
			if cfg.CAFingerprint == "" {
				return fmt.Errorf("give --ca-fingerprint sha256:… (keyhole controller prints it on start) or set KEYHOLE_CA_FINGERPRINT")
			}
			// One reader for the password and then, if the user has MFA
			// and no --totp was given, the code on the next line.
			in := cmd.InOrStdin()
			var lines io.Reader
			if passwordStdin {
				lines = bufio.NewReader(in)
				in = lines
			}
			pw, err := readPassword(in, c.stderr, passwordStdin, "Password for "+cfg.User)
			if err != nil {
				return err
			}
			cfg.Password = pw
			cfg.PromptMFA = func() (string, error) { return promptMFACode(in, lines, c.stderr) }
			p, err := client.Login(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			c.reportLogin(p)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.ControllerURL, "controller", defaultControllerURL, "controller URL")
	f.StringSliceVar(&cfg.ControllerFallbacks, "controller-fallback", nil, "another controller of the same cluster to use when this one is unreachable (repeatable; remembered)")
	f.StringVar(&cfg.CAFingerprint, "ca-fingerprint", "", "controller CA fingerprint, sha256:… (printed by keyhole controller)")
	f.StringVar(&cfg.User, "user", "", "user name")
	sso.register(f)
	f.BoolVar(&passwordStdin, "password-stdin", false, "read the password as one line from standard input (and the MFA code, if asked for and no --totp, from the next)")
	f.StringVar(&cfg.MFACode, "totp", "", "MFA code from the authenticator app, or a recovery code (asked for on a terminal when needed)")
	_ = f.SetAnnotation("totp", annotNoConfig, []string{"true"})
	f.StringVar(&cfg.DataDir, "data", defaultDataDir(""), "client data directory")
	f.StringVar(&cfg.DeviceName, "device-name", "", "name of this device (default: host name)")
	return cmd
}

func (c *cli) logoutCmd() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "logout",
		Short: "End this device's session and release its grants",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := client.LoadProfile(dir)
			if err != nil {
				return err
			}
			// A running agent would keep using the session: stop it first.
			if err := stopAgent(cmd.Context(), dir); err != nil && !errors.Is(err, client.ErrNoAgent) {
				return fmt.Errorf("stopping the agent before logout: %w", err)
			}
			if err := client.Logout(cmd.Context(), dir); err != nil {
				return err
			}
			fmt.Fprintf(c.stdout, "Logged out %s. Device %s stays enrolled; keyhole login reuses it.\n", p.User, p.DeviceID)
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "data", defaultDataDir(""), "client data directory")
	return cmd
}

// reportLogin prints what a successful login (password or OIDC) set up.
func (c *cli) reportLogin(p *client.Profile) {
	fmt.Fprintf(c.stdout, "Logged in as %s\n", p.User)
	fmt.Fprintf(c.stdout, "Device:     %s\n", p.DeviceID)
	fmt.Fprintf(c.stdout, "Overlay IP: %s\n", p.OverlayIP)
	fmt.Fprintf(c.stdout, "Session:    until %s\n", fmtTime(p.SessionExpiresAt))
}
