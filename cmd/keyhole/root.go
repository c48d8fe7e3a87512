package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
	"golang.org/x/term"
)

// cli is what every command of one command tree shares: the output streams,
// the tree's own viper and the logger built once the flags are resolved.
type cli struct {
	stdout, stderr io.Writer
	v              *viper.Viper
	configFile     string
	logLevel       string
	log            *slog.Logger
}

// newRootCmd builds the whole command tree. Each call returns an
// independent tree (its own viper, no shared state), so tests can run many.
func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	c := &cli{stdout: stdout, stderr: stderr, v: viper.New(), log: slog.New(slog.DiscardHandler)}
	root := &cobra.Command{
		Use:   "keyhole",
		Short: "Zero-trust access to private apps over WireGuard",
		Long: `Keyhole gives a person on a checked device a short-lived tunnel to exactly
one private app, decided per request by policy, through a gateway that opens
no inbound port.

Settings come from flags, then KEYHOLE_* environment variables (the flag name
upper-cased, "-" as "_": KEYHOLE_CONTROLLER, KEYHOLE_ADMIN_TOKEN,
KEYHOLE_CA_FINGERPRINT, KEYHOLE_DATA, …), then the YAML file named by
--config (keys are the long flag names), then defaults.`,
		SilenceErrors:     true,
		SilenceUsage:      true,
		CompletionOptions: cobra.CompletionOptions{DisableDefaultCmd: true},
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return c.prepare(cmd)
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	pf := root.PersistentFlags()
	pf.StringVar(&c.configFile, "config", "", "YAML config file (keys are long flag names; env KEYHOLE_CONFIG)")
	pf.StringVar(&c.logLevel, "log-level", "info", "log level: debug, info, warn or error")

	root.AddCommand(
		c.controllerCmd(),
		c.gatewayCmd(),
		c.relayCmd(),
		c.loginCmd(),
		c.mfaCmd(),
		c.connectCmd(),
		c.exportCmd(),
		c.upCmd(),
		c.downCmd(),
		c.statusCmd(),
		c.logoutCmd(),
		c.adminCmd(),
		c.demoCmd(),
		c.benchCmd(),
		c.versionCmd(),
	)
	return root
}

// groupCmd returns a command that only holds subcommands. Unlike cobra's
// default for such commands, an unknown subcommand is an error (exit 1),
// not a help page with exit 0.
func groupCmd(use, short string) *cobra.Command {
	return &cobra.Command{
		Use:   use,
		Short: short,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return fmt.Errorf("unknown command %q for %q; see %s --help", args[0], cmd.CommandPath(), cmd.CommandPath())
			}
			return cmd.Help()
		},
	}
}

// Flag annotations that change how a flag maps to config and environment.
const (
	// annotKey names the config key (and so the env var) of a flag whose
	// name alone would be ambiguous, e.g. admin's --token → admin-token →
	// KEYHOLE_ADMIN_TOKEN.
	annotKey = "keyhole_config_key"
	// annotNoConfig keeps a flag out of env and config resolution.
	annotNoConfig = "keyhole_no_config"
)

// argumentsOnly marks every local flag of cmd and its subcommands as a
// per-invocation argument (a filter, a name to create) rather than a
// setting: such flags are never read from the environment or config file,
// so KEYHOLE_USER for login does not leak into admin audit list --user.
func argumentsOnly(cmd *cobra.Command) {
	cmd.LocalNonPersistentFlags().VisitAll(func(f *pflag.Flag) {
		_ = cmd.Flags().SetAnnotation(f.Name, annotNoConfig, []string{"true"})
	})
	for _, sub := range cmd.Commands() {
		argumentsOnly(sub)
	}
}

// setConfigKey gives the flag name in fs the config key key.
func setConfigKey(fs *pflag.FlagSet, name, key string) {
	_ = fs.SetAnnotation(name, annotKey, []string{key})
}

// configKey returns the config key of f.
func configKey(f *pflag.Flag) string {
	if k := f.Annotations[annotKey]; len(k) == 1 {
		return k[0]
	}
	return f.Name
}

// envName returns the environment variable for a config key.
func envName(key string) string {
	return "KEYHOLE_" + strings.ToUpper(strings.NewReplacer("-", "_", ".", "_").Replace(key))
}

// prepare resolves every flag of cmd that was not given on the command line
// from the environment and the config file, then builds the logger.
func (c *cli) prepare(cmd *cobra.Command) error {
	if !cmd.Flags().Changed("config") {
		c.configFile = os.Getenv("KEYHOLE_CONFIG")
	}
	if c.configFile != "" {
		c.v.SetConfigFile(c.configFile)
		c.v.SetConfigType("yaml")
		if err := c.v.ReadInConfig(); err != nil {
			return fmt.Errorf("config file %s: %w", c.configFile, err)
		}
		if err := checkConfigKeys(cmd.Root(), c.v.AllKeys()); err != nil {
			return fmt.Errorf("config file %s: %w", c.configFile, err)
		}
	}
	if err := resolveFlags(cmd.Flags(), c.v); err != nil {
		return err
	}
	log, err := newLogger(c.stderr, c.logLevel)
	if err != nil {
		return err
	}
	c.log = log
	return nil
}

// resolveFlags sets each flag in fs that was not given on the command line
// from its KEYHOLE_* environment variable or, failing that, from the config
// file in v. A flag set this way reports Changed, like one that was typed.
func resolveFlags(fs *pflag.FlagSet, v *viper.Viper) error {
	var errs []error
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Changed || f.Name == "help" || f.Name == "config" || len(f.Annotations[annotNoConfig]) > 0 {
			return
		}
		key := configKey(f)
		env := envName(key)
		if s, ok := os.LookupEnv(env); ok && s != "" {
			if err := fs.Set(f.Name, s); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %w", env, s, err))
			}
			return
		}
		if !v.InConfig(key) {
			return
		}
		if err := setFromConfig(fs, f, v.Get(key)); err != nil {
			errs = append(errs, fmt.Errorf("config key %s: %w", key, err))
		}
	})
	return errors.Join(errs...)
}

// setFromConfig sets f from a YAML value: a scalar, or a list for a flag
// that takes several values.
func setFromConfig(fs *pflag.FlagSet, f *pflag.Flag, val any) error {
	list, isList := val.([]any)
	if !isList {
		return fs.Set(f.Name, fmt.Sprint(val))
	}
	sv, ok := f.Value.(pflag.SliceValue)
	if !ok {
		return fmt.Errorf("want one value, not a list")
	}
	vals := make([]string, len(list))
	for i, x := range list {
		vals[i] = fmt.Sprint(x)
	}
	if err := sv.Replace(vals); err != nil {
		return err
	}
	f.Changed = true
	return nil
}

// checkConfigKeys rejects config keys no command knows, so a typo does not
// silently fall back to a default.
func checkConfigKeys(root *cobra.Command, keys []string) error {
	known := map[string]bool{}
	var walk func(*cobra.Command)
	walk = func(cmd *cobra.Command) {
		for _, fs := range []*pflag.FlagSet{cmd.LocalFlags(), cmd.PersistentFlags()} {
			fs.VisitAll(func(f *pflag.Flag) {
				if len(f.Annotations[annotNoConfig]) == 0 {
					known[configKey(f)] = true
				}
			})
		}
		for _, sub := range cmd.Commands() {
			walk(sub)
		}
	}
	walk(root)
	var unknown []string
	for _, k := range keys {
		if !known[k] {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		return fmt.Errorf("unknown key(s) %s; keys are long flag names, e.g. controller, data, ca-fingerprint, admin-token", strings.Join(unknown, ", "))
	}
	return nil
}

// newLogger returns a text logger when w is a terminal, JSON otherwise.
func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	if isTerminal(w) {
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return slog.New(slog.NewJSONHandler(w, opts)), nil
}

// isTerminal reports whether x (a reader or writer) is a terminal.
func isTerminal(x any) bool {
	f, ok := x.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}
