package main

import (
	"errors"
	"fmt"
	"os/exec"
	"runtime"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/keyhole-net/keyhole/client"
	"github.com/keyhole-net/keyhole/internal/api"
)

// oidcLoginFlags are keyhole login's single sign-on flags.
type oidcLoginFlags struct {
	enabled bool // --oidc
	browser bool // --browser: code flow with a loopback redirect
	noOpen  bool // --no-open: print the URL only
}

func (o *oidcLoginFlags) register(f *pflag.FlagSet) {
	f.BoolVar(&o.enabled, "oidc", false, "log in with the controller's identity provider (single sign-on): shows a URL, a code and a QR code to approve from any device")
	f.BoolVar(&o.browser, "browser", false, "with --oidc: sign in with a browser on this machine (authorization code + PKCE, redirect to 127.0.0.1)")
	f.BoolVar(&o.noOpen, "no-open", false, "with --oidc --browser: print the sign-in URL instead of opening a browser")
}

// loginOIDC runs keyhole login --oidc.
func (c *cli) loginOIDC(cmd *cobra.Command, lc client.LoginConfig, o oidcLoginFlags) error {
	if lc.User != "" {
		return errors.New("--user does not go with --oidc: the identity provider says who you are")
	}
	if lc.CAFingerprint == "" {
		return errors.New("give --ca-fingerprint sha256:… (keyhole controller prints it on start) or set KEYHOLE_CA_FINGERPRINT")
	}
	cfg := client.OIDCLoginConfig{
		ControllerURL: lc.ControllerURL, ControllerFallbacks: lc.ControllerFallbacks, CAFingerprint: lc.CAFingerprint, DeviceName: lc.DeviceName, DataDir: lc.DataDir,
		Browser: o.browser,
		ShowDevice: func(s api.OIDCDeviceStart) {
			fmt.Fprintf(c.stderr, "To sign in, open %s and enter the code %s\n", s.VerificationURI, s.UserCode)
			if s.VerificationURIComplete != "" {
				fmt.Fprintf(c.stderr, "or scan this code (it carries the code already):\n")
				if err := writeQR(c.stderr, s.VerificationURIComplete); err != nil {
					fmt.Fprintf(c.stderr, "(%v)\n", err)
				}
			}
			fmt.Fprintf(c.stderr, "Waiting for approval (until %s)…\n", fmtTime(s.ExpiresAt))
		},
		OpenURL: func(u string) error {
			fmt.Fprintf(c.stderr, "Sign in with your browser:\n  %s\n", u)
			if !o.noOpen {
				if err := openBrowser(u); err != nil {
					fmt.Fprintf(c.stderr, "(could not open a browser: %v; open the URL yourself)\n", err)
				}
			}
			return nil
		},
	}
	p, err := client.LoginOIDC(cmd.Context(), cfg)
	if err != nil {
		return err
	}
	c.reportLogin(p)
	return nil
}

// openBrowser asks the desktop to open u. It does not wait for the browser.
func openBrowser(u string) error {
	var cmd *exec.Cmd
	switch runtime.GOOS {
	case "darwin":
		cmd = exec.Command("open", u)
	case "windows":
		cmd = exec.Command("rundll32", "url.dll,FileProtocolHandler", u)
	default:
		cmd = exec.Command("xdg-open", u)
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	go func() { _ = cmd.Wait() }()
	return nil
}
