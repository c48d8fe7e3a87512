package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// resolved runs args with the command's RunE replaced by one that records
// the values its flags resolved to (flag, env, config file, default).
func resolved(t *testing.T, args []string, flags ...string) (map[string]string, result) {
	t.Helper()
	var out, errb syncBuffer
	root := newRootCmd(&out, &errb)
	cmd, _, err := root.Find(args)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		for _, f := range flags {
			got[f] = cmd.Flag(f).Value.String()
		}
		return nil
	}
	code := execute(context.Background(), root, args, &errb)
	return got, result{code: code, stdout: out.String(), stderr: errb.String()}
}

func TestConfigPrecedence(t *testing.T) {
	const (
		fromConfig = "https://config.example:8443"
		fromEnv    = "https://env.example:8443"
		fromFlag   = "https://flag.example:8443"
	)
	for _, tc := range []struct {
		name   string
		config string            // YAML; "" for no config file
		env    map[string]string // KEYHOLE_* variables
		args   []string          // after the command path
		cmd    []string          // command path (default admin user list)
		want   map[string]string // flag → resolved value
	}{
		{
			name: "defaults",
			want: map[string]string{"controller": defaultControllerURL, "token": "", "json": "false"},
		},
		{
			name:   "config file over default",
			config: "controller: " + fromConfig + "\nadmin-token: tok-config\njson: true\n",
			want:   map[string]string{"controller": fromConfig, "token": "tok-config", "json": "true"},
		},
		{
			name:   "env over config file",
			config: "controller: " + fromConfig + "\nadmin-token: tok-config\n",
			env:    map[string]string{"KEYHOLE_CONTROLLER": fromEnv, "KEYHOLE_ADMIN_TOKEN": "tok-env"},
			want:   map[string]string{"controller": fromEnv, "token": "tok-env"},
		},
		{
			name:   "flag over env over config file",
			config: "controller: " + fromConfig + "\n",
			env:    map[string]string{"KEYHOLE_CONTROLLER": fromEnv, "KEYHOLE_ADMIN_TOKEN": "tok-env"},
			args:   []string{"--controller", fromFlag},
			want:   map[string]string{"controller": fromFlag, "token": "tok-env"},
		},
		{
			name: "env alone",
			env:  map[string]string{"KEYHOLE_CA_FINGERPRINT": "sha256:abc", "KEYHOLE_JSON": "true"},
			want: map[string]string{"ca-fingerprint": "sha256:abc", "json": "true"},
		},
		{
			name:   "config file named by KEYHOLE_CONFIG",
			config: "ca-fingerprint: sha256:fromfile\n",
			env:    map[string]string{"KEYHOLE_CONFIG": "@config"},
			want:   map[string]string{"ca-fingerprint": "sha256:fromfile"},
		},
		{
			name:   "data dir: flag over env over config",
			cmd:    []string{"status"},
			config: "data: /from/config\n",
			env:    map[string]string{"KEYHOLE_DATA": "/from/env"},
			args:   []string{"--data", "/from/flag"},
			want:   map[string]string{"data": "/from/flag"},
		},
		{
			name:   "data dir: env over config",
			cmd:    []string{"status"},
			config: "data: /from/config\n",
			env:    map[string]string{"KEYHOLE_DATA": "/from/env"},
			want:   map[string]string{"data": "/from/env"},
		},
		{
			name:   "a list in the config file",
			cmd:    []string{"controller"},
			config: "name:\n  - keyhole.example\n  - 192.0.2.10\ngrant-lifetime: 5m\n",
			want:   map[string]string{"name": "[keyhole.example,192.0.2.10]", "grant-lifetime": "5m0s"},
		},
		{
			name: "a list in the environment",
			cmd:  []string{"controller"},
			env:  map[string]string{"KEYHOLE_NAME": "a.example,b.example"},
			want: map[string]string{"name": "[a.example,b.example]"},
		},
		{
			// Filters and names to create are arguments, not settings:
			// KEYHOLE_USER (for login) must not narrow an audit listing.
			name: "arguments are not read from env",
			cmd:  []string{"admin", "audit", "list"},
			env:  map[string]string{"KEYHOLE_USER": "alice", "KEYHOLE_LIMIT": "7"},
			want: map[string]string{"user": "", "limit": "50"},
		},
		{
			name: "login user from env",
			cmd:  []string{"login"},
			env:  map[string]string{"KEYHOLE_USER": "alice"},
			want: map[string]string{"user": "alice"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			isolate(t)
			args := tc.cmd
			if args == nil {
				args = []string{"admin", "user", "list"}
			}
			args = append(append([]string(nil), args...), tc.args...)
			if tc.config != "" {
				path := filepath.Join(t.TempDir(), "keyhole.yaml")
				if err := os.WriteFile(path, []byte(tc.config), 0o600); err != nil {
					t.Fatal(err)
				}
				if tc.env["KEYHOLE_CONFIG"] == "@config" {
					tc.env["KEYHOLE_CONFIG"] = path
				} else {
					args = append(args, "--config", path)
				}
			}
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			var flags []string
			for f := range tc.want {
				flags = append(flags, f)
			}
			got, r := resolved(t, args, flags...)
			if r.code != 0 {
				t.Fatalf("exit %d: %s", r.code, r.stderr)
			}
			for f, want := range tc.want {
				if got[f] != want {
					t.Errorf("--%s = %q, want %q", f, got[f], want)
				}
			}
		})
	}
}

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name, config, env, want string
	}{
		{"unknown key", "controler: https://x\n", "", "unknown key(s) controler"},
		{"bad value", "grant-lifetime: soon\n", "", "config key grant-lifetime"},
		{"list for a single value", "listen:\n  - a\n  - b\n", "", "want one value, not a list"},
		{"bad env value", "", "KEYHOLE_GRANT_LIFETIME=soon", "KEYHOLE_GRANT_LIFETIME"},
		{"missing file", "@missing", "", "config file"},
		{"bad log level", "log-level: loud\n", "", "--log-level"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			isolate(t)
			path := filepath.Join(t.TempDir(), "keyhole.yaml")
			if tc.config != "@missing" {
				if err := os.WriteFile(path, []byte(tc.config), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if k, v, ok := strings.Cut(tc.env, "="); ok {
				t.Setenv(k, v)
			}
			_, r := resolved(t, []string{"controller", "--config", path})
			if r.code != 1 || !strings.HasPrefix(r.stderr, "keyhole: ") || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("exit %d, stderr %q; want exit 1 and %q", r.code, r.stderr, tc.want)
			}
		})
	}
}

// TestFailoverFlags: the gateway grace and eager peers reach their
// configs, and a negative grace is refused before anything starts.
func TestFailoverFlags(t *testing.T) {
	isolate(t)
	got, r := resolved(t, []string{"controller", "--gateway-grace", "10s"}, "gateway-grace")
	if r.code != 0 || got["gateway-grace"] != "10s" {
		t.Errorf("controller --gateway-grace 10s: exit %d, resolved %q: %s", r.code, got["gateway-grace"], r.stderr)
	}
	got, r = resolved(t, []string{"controller"}, "gateway-grace")
	if r.code != 0 || got["gateway-grace"] != "3s" {
		t.Errorf("controller default grace: exit %d, resolved %q", r.code, got["gateway-grace"])
	}
	got, r = resolved(t, []string{"gateway", "--eager-peers"}, "eager-peers")
	if r.code != 0 || got["eager-peers"] != "true" {
		t.Errorf("gateway --eager-peers: exit %d, resolved %q: %s", r.code, got["eager-peers"], r.stderr)
	}
	r = keyhole(t, "", "controller", "--data", t.TempDir(), "--gateway-grace", "-1s")
	if r.code != 1 || !strings.Contains(r.stderr, "--gateway-grace -1s: must not be negative") {
		t.Errorf("negative grace: exit %d, stderr %q", r.code, r.stderr)
	}
}
