package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/keyhole-net/keyhole/client"
)

func (c *cli) mfaCmd() *cobra.Command {
	cmd := groupCmd("mfa", "Multi-factor authentication (TOTP) for your user")
	var dir, code string
	enrol := &cobra.Command{
		Use:     "enroll",
		Aliases: []string{"enrol"},
		Short:   "Enrol an authenticator app; from then on keyhole login asks for its code",
		Long: `Enroll asks the controller (with this device's session) for a new TOTP
secret, shows it as a QR code and an otpauth:// URI for an authenticator
app, and asks for the code the app then shows, to confirm. Only a confirmed
enrolment counts: until then logins need no code. On confirmation it
prints ten recovery codes, each good for one login in place of a code;
they are not shown again.

Without a terminal, the code is read as one line from standard input; if
there is none, the enrolment stays pending for 10 minutes, and
keyhole mfa enroll --code CODE confirms it.

A user who already has MFA cannot enrol again: an admin resets it first
(keyhole admin user mfa-reset USER).`,
		Example: `  keyhole mfa enroll
  keyhole mfa enroll < /dev/null && keyhole mfa enroll --code 123456`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if code == "" {
				e, err := client.EnrolMFA(ctx, dir)
				if err != nil {
					return err
				}
				fmt.Fprintln(c.stdout, "Scan this with an authenticator app (or enter the secret by hand):")
				if err := writeQR(c.stdout, e.URI); err != nil {
					return err
				}
				fmt.Fprintf(c.stdout, "Secret: %s\nURI:    %s\n", e.Secret, e.URI)
				in := cmd.InOrStdin()
				if isTerminal(in) {
					fmt.Fprint(c.stderr, "Code the app shows now: ")
				}
				code, err = readLine(in)
				if errors.Is(err, errNoInput) || (err == nil && code == "") {
					fmt.Fprintf(c.stdout, "Not confirmed yet, so logins do not ask for a code. Confirm before %s with: keyhole mfa enroll --code CODE\n", fmtTime(e.ExpiresAt))
					return nil
				}
				if err != nil {
					return fmt.Errorf("read code: %w", err)
				}
			}
			conf, err := client.ConfirmMFA(ctx, dir, code)
			if err != nil {
				return err
			}
			fmt.Fprintln(c.stdout, "MFA is active: keyhole login now asks for a code.")
			fmt.Fprintln(c.stdout, "Recovery codes, each good for one login in place of a code. Keep them somewhere safe; they are not shown again:")
			for _, rc := range conf.RecoveryCodes {
				fmt.Fprintf(c.stdout, "  %s\n", rc)
			}
			return nil
		},
	}
	f := enrol.Flags()
	f.StringVar(&code, "code", "", "confirm the pending enrolment with this code (instead of starting one)")
	_ = f.SetAnnotation("code", annotNoConfig, []string{"true"})
	f.StringVar(&dir, "data", defaultDataDir(""), "client data directory")
	cmd.AddCommand(enrol)
	return cmd
}

// promptMFACode returns the login's second factor when the controller asks
// for one: the next line of lines (after the password, with
// --password-stdin), or what a person types at a prompt on in.
func promptMFACode(in io.Reader, lines io.Reader, prompt io.Writer) (string, error) {
	src := lines
	if src == nil {
		if !isTerminal(in) {
			return "", errors.New("this user has MFA: give --totp CODE (or, with --password-stdin, the code as a second line)")
		}
		fmt.Fprint(prompt, "MFA code (or a recovery code): ")
		src = in
	}
	code, err := readLine(src)
	if errors.Is(err, errNoInput) || (err == nil && code == "") {
		return "", errors.New("this user has MFA: give --totp CODE, or the code as a second line of standard input after the password")
	}
	if err != nil {
		return "", fmt.Errorf("read MFA code: %w", err)
	}
	return code, nil
}
