package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/keyhole-net/keyhole/gateway"
)

func (c *cli) gatewayCmd() *cobra.Command {
	var (
		cfg           gateway.Config
		port          uint16
		endpoints     []string
		hosts         []string
		metricsListen string
		tokenFile     string
	)
	cmd := &cobra.Command{
		Use:   "gateway",
		Short: "Run an app connector beside private apps (no inbound port)",
		Long: `Run a gateway. The first start enrols it with a one-time token
(keyhole admin gateway token --group G); later starts reuse the identity in
--data and need no token. The gateway listens on nothing but its one
outbound WireGuard UDP socket (and --metrics-listen if you ask for it).

By default the gateway needs no root: WireGuard runs on a userspace network
stack that proxies each granted connection to the app. With --tun (Linux,
root or CAP_NET_ADMIN) WireGuard runs on a kernel TUN device instead; every
packet is checked against the grants and the kernel forwards and NATs what
passes (IPv4 forwarding on, an nftables table of the gateway's own). Faster;
see docs/gateway.md for the trade-off.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			controllerTarget(cmd, &cfg.CAFingerprint, nil)
			if !cmd.Flags().Changed("controller") && gateway.Enrolled(cfg.DataDir) {
				// Not the flag's default: the controller it enrolled with.
				cfg.ControllerURL = ""
			}
			cfg.ListenPort = port
			var err error
			if tokenFile != "" && cfg.Token == "" {
				// A missing file is fine once enrolled (a pod's volume
				// keeps the identity; its token secret may be gone).
				if b, err := os.ReadFile(tokenFile); err == nil {
					cfg.Token = strings.TrimSpace(string(b))
				} else if !errors.Is(err, fs.ErrNotExist) {
					return fmt.Errorf("--token-file: %w", err)
				}
			}
			if cfg.Endpoints, err = parseEndpoints(endpoints); err != nil {
				return err
			}
			if cfg.Hosts, err = parseHosts(hosts); err != nil {
				return err
			}
			if metricsListen != "" {
				if _, _, err := net.SplitHostPort(metricsListen); err != nil {
					return fmt.Errorf("--metrics-listen %q: want HOST:PORT, e.g. 127.0.0.1:9100", metricsListen)
				}
			}
			cfg.Logger = c.log.With("role", "gateway")
			gw, err := gateway.New(cfg)
			if err != nil {
				return err
			}
			return c.runGateway(cmd.Context(), gw, metricsListen)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.ControllerURL, "controller", defaultControllerURL, "controller URL (needed to enrol; later starts remember it)")
	f.StringSliceVar(&cfg.ControllerURLs, "controller-fallback", nil, "another controller of the same cluster to reconnect to when the stream drops (repeatable; later starts remember them)")
	f.StringVar(&cfg.Token, "token", "", "one-time enrolment token (first start only)")
	f.StringVar(&tokenFile, "token-file", "", "file holding the one-time enrolment token (first start only; a missing file is fine once enrolled)")
	f.StringVar(&cfg.CAFingerprint, "ca-fingerprint", "", "controller CA fingerprint, sha256:… (printed by keyhole controller)")
	f.StringVar(&cfg.DataDir, "data", defaultDataDir("gateway"), "data directory (identity, WireGuard key)")
	f.StringVar(&cfg.Name, "name", "", "gateway name (default: host name)")
	f.Uint16Var(&port, "port", 0, "WireGuard UDP port (0: random on first start, then kept)")
	f.StringSliceVar(&endpoints, "endpoint", nil, "ADDR:PORT clients send WireGuard to (repeatable; default: this host's addresses)")
	f.StringArrayVar(&hosts, "host", nil, "NAME=IP static name for apps on this site, used before DNS (repeatable)")
	f.BoolVar(&cfg.EagerPeers, "eager-peers", false, "configure every granted client's WireGuard peer at once instead of at its first handshake (more memory per idle client; docs/gateway.md)")
	f.StringVar(&metricsListen, "metrics-listen", "", "serve Prometheus /metrics on this address (default: off)")
	f.BoolVar(&cfg.TUN, "tun", false, "run WireGuard on a kernel TUN device and let the kernel forward granted packets (Linux, root; see docs/gateway.md)")
	f.StringVar(&cfg.TUNName, "tun-name", gateway.DefaultTUNName, "TUN interface name with --tun")
	return cmd
}

// runGateway runs gw, and a metrics server beside it if asked, until ctx
// is done.
func (c *cli) runGateway(ctx context.Context, gw *gateway.Gateway, metricsListen string) error {
	var wg sync.WaitGroup
	defer wg.Wait() // after cancel: deferred calls run last-in first-out
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if metricsListen != "" {
		l, err := net.Listen("tcp", metricsListen)
		if err != nil {
			return fmt.Errorf("--metrics-listen: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", gw.MetricsHandler())
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		wg.Add(2)
		go func() {
			defer wg.Done()
			if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				c.log.Warn("metrics server stopped", "err", err)
			}
		}()
		go func() {
			defer wg.Done()
			<-ctx.Done()
			shut, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			_ = srv.Shutdown(shut)
		}()
		c.log.Info("metrics listening", "addr", l.Addr().String())
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		select {
		case <-gw.Ready():
			fmt.Fprintf(c.stdout, "Gateway %s up: WireGuard on UDP port %d; no inbound TCP port.\n", gw.ID(), gw.Port())
		case <-ctx.Done():
		}
	}()
	return gw.Run(ctx)
}

// parseEndpoints parses --endpoint values.
func parseEndpoints(ss []string) ([]netip.AddrPort, error) {
	var out []netip.AddrPort
	for _, s := range ss {
		ap, err := netip.ParseAddrPort(strings.TrimSpace(s))
		if err != nil {
			return nil, fmt.Errorf("--endpoint %q: want IP:PORT, e.g. 203.0.113.7:51820", s)
		}
		out = append(out, ap)
	}
	return out, nil
}

// parseHosts parses --host NAME=IP values.
func parseHosts(ss []string) (map[string]netip.Addr, error) {
	if len(ss) == 0 {
		return nil, nil
	}
	out := make(map[string]netip.Addr, len(ss))
	for _, s := range ss {
		name, ip, ok := strings.Cut(s, "=")
		name = strings.ToLower(strings.TrimSpace(name))
		addr, err := netip.ParseAddr(strings.TrimSpace(ip))
		if !ok || name == "" || err != nil {
			return nil, fmt.Errorf("--host %q: want NAME=IP, e.g. wiki.corp.internal=10.0.0.5", s)
		}
		out[name] = addr.Unmap()
	}
	return out, nil
}
