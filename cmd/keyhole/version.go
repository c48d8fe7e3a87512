package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"

	"github.com/keyhole-net/keyhole/internal/api"
)

func (c *cli) versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			fmt.Fprintln(c.stdout, versionString())
			return nil
		},
	}
}

// moduleVersion is the version go build recorded for the main module: a
// release tag, a pseudo-version for a checkout, or "(devel)".
func moduleVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}

// versionString reports the module version and VCS revision the binary
// was built from (go build records both), the protocol version and Go's.
func versionString() string {
	version, revision, dirty := moduleVersion(), "", false
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				revision = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
	}
	s := "keyhole " + version
	if revision != "" {
		if len(revision) > 12 {
			revision = revision[:12]
		}
		s += " " + revision
		if dirty {
			s += "+dirty"
		}
	}
	return fmt.Sprintf("%s (protocol %d, %s %s/%s)", s, api.Version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
