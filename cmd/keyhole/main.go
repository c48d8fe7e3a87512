// Command keyhole is Keyhole's one binary: every role is a subcommand
// (controller, gateway, login/connect/up/status/logout for people, admin for
// operators, demo for a whole system on one machine).
//
// This package is thin on purpose: it parses flags, environment and the
// config file (cobra + viper live here and nowhere else), builds each
// package's Config and runs it. Behaviour belongs in the role packages.
//
// Settings resolve in this order: flags, then KEYHOLE_* environment
// variables (KEYHOLE_CONTROLLER, KEYHOLE_ADMIN_TOKEN, KEYHOLE_CA_FINGERPRINT,
// KEYHOLE_DATA, …: the flag's name upper-cased with "-" as "_"), then the
// YAML file given by --config or KEYHOLE_CONFIG (keys are the long flag
// names), then defaults.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/keyhole-net/keyhole/internal/api"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run runs one keyhole command line and returns the process exit code.
// SIGINT and SIGTERM cancel the command's context; a second signal after
// that kills the process the default way.
func run(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	defer context.AfterFunc(ctx, stop)()
	return execute(ctx, newRootCmd(stdout, stderr), args, stderr)
}

// execute runs root with args until it returns or ctx is done, prints a
// failure as "keyhole: <message>" and returns the exit code.
func execute(ctx context.Context, root *cobra.Command, args []string, stderr io.Writer) int {
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintf(stderr, "keyhole: %s\n", errorMessage(err))
		return 1
	}
	return 0
}

// errorMessage is what a person sees for err: an API error's message says
// what to do, so it is shown without the wrapping and the code.
func errorMessage(err error) string {
	var ae *api.Error
	if errors.As(err, &ae) && ae.Message != "" {
		if ae.Rule != "" {
			return fmt.Sprintf("%s (rule %s)", ae.Message, ae.Rule)
		}
		return ae.Message
	}
	return err.Error()
}
