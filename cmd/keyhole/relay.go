package main

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/keyhole-net/keyhole/internal/relay"
	"github.com/keyhole-net/keyhole/internal/trust"
)

func (c *cli) relayCmd() *cobra.Command {
	var listen, publicIP, relayAddress, realm, secretFile string
	cmd := &cobra.Command{
		Use:   "relay",
		Short: "Run a STUN/TURN relay for clients and gateways that cannot meet directly",
		Long: `Run a standalone relay (STUN + TURN over UDP). Gateways and clients behind
NATs that cannot reach each other directly send their WireGuard traffic
through it; it sees only ciphertext.

Credentials are TURN REST API ones (coturn's use-auth-secret) made with the
shared secret in --secret-file, which the controller must hold too. On first
start the file is created with a random secret. The relay is not an open
relay: a gateway reaches only other allocations on it, a client only the
gateway its grant names.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg := relay.Config{Realm: realm, Logger: c.log.With("role", "relay")}
			var err error
			if cfg.Listen, err = netip.ParseAddrPort(listen); err != nil {
				return fmt.Errorf("--listen %q: want IP:PORT, e.g. 0.0.0.0:3478", listen)
			}
			if publicIP != "" {
				if cfg.PublicIP, err = netip.ParseAddr(publicIP); err != nil {
					return fmt.Errorf("--public-ip %q: want an IP address", publicIP)
				}
			} else if cfg.Listen.Addr().IsUnspecified() {
				return fmt.Errorf("--listen %s is a wildcard address: give --public-ip, the address clients and gateways reach this relay at", listen)
			}
			if relayAddress != "" {
				if cfg.RelayAddress, err = netip.ParseAddr(relayAddress); err != nil {
					return fmt.Errorf("--relay-address %q: want an IP address", relayAddress)
				}
			}
			secret, created, err := relaySecret(secretFile)
			if err != nil {
				return err
			}
			cfg.Secret = secret
			srv, err := relay.New(cfg)
			if err != nil {
				return err
			}
			defer srv.Close()
			out := c.stdout
			if created {
				fmt.Fprintf(out, "Relay secret: created in %s (mode 0600); the controller issues relay credentials with it\n", secretFile)
			} else {
				fmt.Fprintf(out, "Relay secret: %s\n", secretFile)
			}
			fmt.Fprintf(out, "Relay listening on udp://%s (public IP %s)\n", srv.Addr(), srv.PublicIP())
			return srv.Serve(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&listen, "listen", "0.0.0.0:3478", "UDP address to serve STUN and TURN on")
	setConfigKey(f, "listen", "relay-listen")
	f.StringVar(&publicIP, "public-ip", "", "IP put into relayed addresses (required when --listen is a wildcard address)")
	f.StringVar(&relayAddress, "relay-address", "", "local IP relay sockets bind to (default: the --listen address)")
	f.StringVar(&realm, "realm", relay.DefaultRealm, "TURN realm")
	f.StringVar(&secretFile, "secret-file", filepath.Join(defaultDataDir("relay"), "relay.secret"), "file holding the shared secret (created with a random one if missing)")
	return cmd
}

// relaySecret reads the shared secret from path, or creates the file with a
// random one (32 bytes, hex-encoded). The secret is the file's text, as
// coturn's static-auth-secret is, so the same file serves both.
func relaySecret(path string) (secret []byte, created bool, err error) {
	b, err := os.ReadFile(path)
	if err == nil {
		secret = bytes.TrimSpace(b)
		if len(secret) < relay.MinSecretBytes {
			return nil, false, fmt.Errorf("secret file %s holds %d bytes, want at least %d", path, len(secret), relay.MinSecretBytes)
		}
		return secret, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, false, fmt.Errorf("secret file: %w", err)
	}
	raw := make([]byte, 32)
	rand.Read(raw) // never fails (crypto/rand)
	secret = []byte(hex.EncodeToString(raw))
	if err := trust.WriteSecret(path, append(secret, '\n')); err != nil {
		return nil, false, err
	}
	return secret, true, nil
}
