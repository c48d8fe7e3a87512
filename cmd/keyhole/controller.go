package main

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/keyhole-net/keyhole/controller"
)

func (c *cli) controllerCmd() *cobra.Command {
	var (
		cfg         controller.Config
		names       []string
		relayAddr   string
		relaySecret string
		sso         oidcControllerFlags
		cl          clusterFlags
	)
	cmd := &cobra.Command{
		Use:   "controller",
		Short: "Run the control plane (HTTPS API, grant issuing, gateway streams)",
		Long: `Run the controller. On first start it creates a CA and an admin token in
--data and prints both the CA fingerprint (everything that joins pins it) and
the token (shown once; also saved in DATA/admin.token).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			cfg.Names = names
			cfg.Logger = c.log.With("role", "controller")
			if relayAddr != "" {
				ap, err := netip.ParseAddrPort(relayAddr)
				if err != nil {
					return fmt.Errorf("--relay-addr %q: want IP:port: %w", relayAddr, err)
				}
				cfg.RelayAddr = ap
			}
			if relaySecret != "" {
				b, err := os.ReadFile(relaySecret)
				if err != nil {
					return fmt.Errorf("--relay-secret-file: %w", err)
				}
				cfg.RelaySecret = bytes.TrimSpace(b)
			}
			if cfg.GatewayGrace < 0 {
				return fmt.Errorf("--gateway-grace %v: must not be negative", cfg.GatewayGrace)
			}
			oc, err := sso.config()
			if err != nil {
				return err
			}
			cfg.OIDC = oc
			if cfg.Cluster, err = cl.config(); err != nil {
				return err
			}
			ctrl, err := controller.New(ctx, cfg)
			if err != nil {
				return err
			}
			defer ctrl.Close()
			addr, err := ctrl.Listen()
			if err != nil {
				return err
			}
			out := c.stdout
			fmt.Fprintf(out, "CA fingerprint: %s\n", ctrl.Fingerprint())
			tokenFile := filepath.Join(cfg.DataDir, "admin.token")
			if tok := ctrl.FirstAdminToken(); tok.Reveal() != "" {
				fmt.Fprintf(out, "Admin token:    %s\n", tok.Reveal())
				fmt.Fprintf(out, "                (shown once; also saved in %s, mode 0600)\n", tokenFile)
			} else {
				fmt.Fprintf(out, "Admin token:    in %s (created on first start)\n", tokenFile)
			}
			fmt.Fprintf(out, "Listening on    https://%s\n", displayAddr(addr))
			if ra := ctrl.RelayAddr(); ra.IsValid() {
				kind := "embedded"
				if ctrl.Relay() == nil {
					kind = "external"
				}
				fmt.Fprintf(out, "Relay/STUN:     udp://%s (%s)\n", ra, kind)
			}
			return ctrl.Run(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.DataDir, "data", defaultDataDir("controller"), "data directory (CA, database, admin token)")
	f.StringVar(&cfg.Listen, "listen", controller.DefaultListen, "HTTPS API address")
	f.StringVar(&cfg.StoreURL, "store", "", `database: "" for SQLite in the data directory, a file path, or postgres://user@host/db for PostgreSQL (shared by a controller cluster); the URL's password is never printed`)
	f.StringSliceVar(&names, "name", nil, "DNS name or IP the server certificate carries (repeatable; default localhost, 127.0.0.1, ::1 and the host name)")
	f.DurationVar(&cfg.GrantLifetime, "grant-lifetime", controller.DefaultGrantLifetime, "lifetime of a grant before renewal")
	f.DurationVar(&cfg.SessionLifetime, "session-lifetime", controller.DefaultSessionLifetime, "how long a login lasts; no grant outlives it, then the user logs in again")
	f.DurationVar(&cfg.PostureMaxAge, "posture-max-age", controller.DefaultPostureMaxAge, "how old a device's posture report may be when it arrives, and how long the latest stands in for requests without one")
	f.DurationVar(&cfg.PostureInterval, "posture-interval", controller.DefaultPostureInterval, "how often clients collect their posture and report a change")
	f.DurationVar(&cfg.CertLifetime, "cert-lifetime", controller.DefaultCertLifetime, "lifetime of device and gateway certificates (clients rotate their keys at two thirds of it)")
	f.DurationVar(&cfg.GatewayGrace, "gateway-grace", controller.DefaultGatewayGrace, "how long a gateway whose stream dropped may take to come back before its clients' grants move to another gateway of its group")
	f.BoolVar(&cfg.RequireDeviceApproval, "require-device-approval", false, "new devices start unapproved and get no grant until an admin approves them (keyhole admin device approve ID)")
	f.StringVar(&cfg.RelayListen, "relay-listen", "", `UDP address of the embedded TURN relay and STUN server (default: the --listen host, port 3478; "off" for an external relay)`)
	f.StringVar(&relayAddr, "relay-addr", "", "relay address handed to gateways and clients, IP:port (default: the embedded relay's; required for an external relay such as coturn)")
	sso.register(f)
	cl.register(f)
	f.StringVar(&cfg.CADir, "ca-dir", "", "directory with the CA (ca.crt, ca.key) instead of --data; the controllers of a cluster share one CA: copy the first controller's there (docs/ha.md)")
	f.StringVar(&cfg.ID, "id", "", "controller ID, in its certificate and the cluster (default: DATA/controller.id, made on first start)")
	f.StringVar(&relaySecret, "relay-secret-file", "", "file with the relay's shared secret, coturn's static-auth-secret (default: DATA/relay.secret, created on first start)")
	return cmd
}

// displayAddr turns a wildcard listen address into one a person on this
// machine can use in a URL.
func displayAddr(a net.Addr) string {
	tcp, ok := a.(*net.TCPAddr)
	if !ok {
		return a.String()
	}
	if tcp.IP == nil || tcp.IP.IsUnspecified() {
		return net.JoinHostPort("127.0.0.1", fmt.Sprint(tcp.Port))
	}
	return tcp.String()
}
