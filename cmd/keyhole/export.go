package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/skip2/go-qrcode"
	"github.com/spf13/cobra"

	"github.com/keyhole-net/keyhole/client"
	"github.com/keyhole-net/keyhole/controller"
)

// Export formats.
const (
	formatWGQuick = "wg-quick"
	formatWG      = "wg"
	formatQR      = "qr"
)

func (c *cli) exportCmd() *cobra.Command {
	var (
		opts   client.ExportOptions
		format string
		output string
		force  bool
	)
	cmd := &cobra.Command{
		Use:   "export APP",
		Short: "Write a short-lived WireGuard config for one app, for a stock WireGuard client",
		Long: `Export gives a phone or a machine without Keyhole a WireGuard config for
one app: a fresh key pair made here (the private key goes only into the
config), its own overlay address, and a grant the policy decides as for
keyhole connect. The config works until --ttl (at most 24h; it is never
renewed) or until the grant is revoked.

Formats: wg-quick (wg-quick up, or import into a WireGuard app), wg (only
the keys wg setconf accepts, as wg-quick strip prints them), qr (the
wg-quick config as a QR code for a phone's WireGuard app; with --output, a
PNG).

The stock client has no split DNS: the config names the app's addresses
for its hosts file instead of setting a DNS server.`,
		Example: `  keyhole export wiki --output wiki.conf
  keyhole export wiki --format qr --ttl 8h
  keyhole export wiki --format wg --output wiki-wg.conf && wg setconf wg0 wiki-wg.conf`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if format != formatWGQuick && format != formatWG && format != formatQR {
				return fmt.Errorf("--format %q: want wg-quick, wg or qr", format)
			}
			if output != "" && !force {
				// Before the grant exists: a refusal must not leave one behind.
				if _, err := os.Lstat(output); err == nil {
					return fmt.Errorf("%s exists; pass --force to overwrite it", output)
				}
			}
			opts.App = args[0]
			cfg, err := client.Export(cmd.Context(), opts)
			if err != nil {
				return err
			}
			var body []byte
			switch {
			case format == formatWG:
				body = []byte(cfg.WG())
			case format == formatQR && output != "":
				if body, err = qrPNG(cfg.QRPayload()); err != nil {
					return fmt.Errorf("export: %w", err)
				}
			case format == formatQR:
				var b strings.Builder
				fmt.Fprintln(&b, cfg.Summary())
				if hosts := cfg.HostsLines(); len(hosts) > 0 {
					fmt.Fprintf(&b, "Hosts file lines for the client: %s\n", strings.Join(hosts, "; "))
				}
				if err := writeQR(&b, cfg.QRPayload()); err != nil {
					return fmt.Errorf("export: %w", err)
				}
				body = []byte(b.String())
			default:
				body = []byte(cfg.WGQuick())
			}
			g := cfg.Export.Grant
			if output == "" {
				if isTerminal(c.stdout) {
					fmt.Fprintln(c.stderr, "keyhole: the config below holds a private key; whoever copies it reaches "+g.App+" (--output FILE saves it with mode 0600)")
				}
				_, err := c.stdout.Write(body)
				return err
			}
			if err := writeSecretFile(output, body, force); err != nil {
				return fmt.Errorf("export: %w; the grant exists, revoke it: keyhole admin grant revoke %s", err, g.ID)
			}
			fmt.Fprintf(c.stdout, "Wrote a %s config for %s to %s (grant %s until %s; revoke with keyhole admin grant revoke %s)\n",
				format, g.App, output, g.ID, fmtTime(g.NotAfter), g.ID)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&format, "format", formatWGQuick, "wg-quick, wg (for wg setconf) or qr")
	f.DurationVar(&opts.TTL, "ttl", controller.DefaultExportTTL, "how long the config works (at most 24h; never renewed)")
	f.StringVarP(&output, "output", "o", "", "write to this file (mode 0600) instead of standard output")
	f.BoolVar(&force, "force", false, "overwrite the --output file if it exists")
	f.StringVar(&opts.Endpoint, "endpoint", "", "gateway address for the config, HOST:PORT (default: the best one the controller knows)")
	for _, name := range []string{"format", "ttl", "output", "force", "endpoint"} {
		_ = f.SetAnnotation(name, annotNoConfig, []string{"true"})
	}
	f.StringVar(&opts.DataDir, "data", defaultDataDir(""), "client data directory")
	return cmd
}

// writeSecretFile writes b to path with mode 0600. Without force it never
// replaces a file (O_EXCL); with force it replaces one atomically, so a
// failed write leaves the old file as it was.
func writeSecretFile(path string, b []byte, force bool) error {
	if !force {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%s exists; pass --force to overwrite it", path)
		}
		if err != nil {
			return err
		}
		_, err = f.Write(b)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(path)
			return fmt.Errorf("write %s: %w", path, err)
		}
		return nil
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // fails harmlessly after the rename
	_, err = tmp.Write(b)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// qrQuietZone is the light margin around the code, in modules. The
// standard asks for 4; 2 keeps a full config inside 80 columns, and the
// terminal around it is rarely busy enough to confuse a phone's scanner.
const qrQuietZone = 2

// writeQR draws text as a QR code with Unicode half blocks, two module rows
// per line, in black on white whatever the terminal's colours are (a light
// code on a dark background is what many scanners refuse).
func writeQR(w io.Writer, text string) error {
	q, err := qrcode.New(text, qrcode.Low)
	if err != nil {
		return fmt.Errorf("qr code: %w", err)
	}
	q.DisableBorder = true
	bm := q.Bitmap()
	n := len(bm) + 2*qrQuietZone
	dark := func(x, y int) bool {
		x, y = x-qrQuietZone, y-qrQuietZone
		return y >= 0 && y < len(bm) && x >= 0 && x < len(bm[y]) && bm[y][x]
	}
	const (
		blackOnWhite = "\x1b[30;47m"
		reset        = "\x1b[0m"
	)
	var b strings.Builder
	for y := 0; y < n; y += 2 {
		b.WriteString(blackOnWhite)
		for x := range n {
			top, bottom := dark(x, y), y+1 < n && dark(x, y+1)
			switch {
			case top && bottom:
				b.WriteString("█")
			case top:
				b.WriteString("▀")
			case bottom:
				b.WriteString("▄")
			default:
				b.WriteString(" ")
			}
		}
		b.WriteString(reset + "\n")
	}
	_, err = io.WriteString(w, b.String())
	return err
}

// qrPNG renders text as a QR code image, 8 pixels a module.
func qrPNG(text string) ([]byte, error) {
	q, err := qrcode.New(text, qrcode.Low)
	if err != nil {
		return nil, fmt.Errorf("qr code: %w", err)
	}
	return q.PNG(-8)
}
