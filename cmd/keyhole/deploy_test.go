package main

import (
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// TestDeployFilesUseRealFlags keeps deploy/ true: every keyhole command
// line in the systemd units and the Kubernetes manifests names a
// subcommand and flags that exist.
func TestDeployFilesUseRealFlags(t *testing.T) {
	root := newRootCmd(io.Discard, io.Discard)
	check := func(where string, args []string) {
		t.Helper()
		cmd, rest, err := root.Find(args)
		if err != nil || cmd == root {
			t.Errorf("%s: %q is not a keyhole command: %v", where, args, err)
			return
		}
		for _, a := range rest {
			name, ok := strings.CutPrefix(a, "--")
			if !ok {
				continue
			}
			name, _, _ = strings.Cut(name, "=")
			if cmd.Flags().Lookup(name) == nil && cmd.InheritedFlags().Lookup(name) == nil {
				t.Errorf("%s: keyhole %s has no flag --%s", where, cmd.Name(), name)
			}
		}
	}

	units, err := filepath.Glob("../../deploy/systemd/*.service")
	if err != nil || len(units) == 0 {
		t.Fatalf("no systemd units: %v", err)
	}
	execStart := regexp.MustCompile(`(?m)^ExecStart=\S*keyhole (.*)$`)
	for _, u := range units {
		b, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		m := execStart.FindSubmatch(b)
		if m == nil {
			t.Errorf("%s: no ExecStart running keyhole", u)
			continue
		}
		check(filepath.Base(u), strings.Fields(string(m[1])))
	}

	manifests, err := filepath.Glob("../../deploy/kubernetes/*.yaml")
	if err != nil || len(manifests) == 0 {
		t.Fatalf("no Kubernetes manifests: %v", err)
	}
	for _, mf := range manifests {
		f, err := os.Open(mf)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(f)
		for {
			var doc struct {
				Kind string
				Spec struct {
					Template struct {
						Spec struct {
							Containers []struct {
								Name string
								Args []string
							}
						}
					}
				}
			}
			if err := dec.Decode(&doc); err == io.EOF {
				break
			} else if err != nil {
				t.Fatalf("%s: %v", mf, err)
			}
			for _, c := range doc.Spec.Template.Spec.Containers {
				check(filepath.Base(mf)+" "+doc.Kind+"/"+c.Name, c.Args)
			}
		}
		f.Close()
	}
}
