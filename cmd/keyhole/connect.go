package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/keyhole-net/keyhole/client"
)

func (c *cli) connectCmd() *cobra.Command {
	var (
		cfg    client.Config
		listen string
	)
	cmd := &cobra.Command{
		Use:   "connect APP[:PORT]",
		Short: "Forward a local port to one private app",
		Long: `Request a grant for APP (an app name, one of its domains, or an address
inside it) and forward --listen to it through the tunnel until interrupted.
Without :PORT the app's first TCP port is used.

When a keyhole up --tun agent runs, connect without --listen asks it to
grant the app and route its addresses into the TUN device instead (the way
to reach CIDR apps, which have no name to look up).`,
		Example: "  keyhole connect wiki.corp.internal:443 --listen 127.0.0.1:8443",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dest, port, err := client.ParseTarget(args[0])
			if err != nil {
				return err
			}
			// A running agent (keyhole up) holds the tunnel: ask it. In
			// TUN mode it routes the app unless a forward is asked for.
			if st, err := client.Control(cmd.Context(), cfg.DataDir, client.ControlRequest{Op: client.OpStatus}); err == nil && st.Status != nil && st.Status.Interface != "" && !cmd.Flags().Changed("listen") {
				resp, err := client.Control(cmd.Context(), cfg.DataDir, client.ControlRequest{Op: client.OpRoute, Target: args[0]})
				if err != nil {
					return fmt.Errorf("%s: %w", args[0], err)
				}
				g := resp.Grant
				fmt.Fprintf(c.stdout, "%s is routed through %s: %s (grant %s until %s, renewed while in use).\n",
					g.App, st.Status.Interface, targets(g.Targets), g.ID, g.NotAfter.Local().Format("15:04:05"))
				return nil
			}
			if resp, err := client.Control(cmd.Context(), cfg.DataDir, client.ControlRequest{Op: client.OpConnect, Target: args[0], Listen: listen}); err == nil {
				f := resp.Forward
				fmt.Fprintf(c.stdout, "Forwarding %s → %s through the running agent (grant %s until %s); keyhole down stops it.\n",
					f.Listen, f.Target, f.Grant.ID, f.Grant.NotAfter.Local().Format("15:04:05"))
				return nil
			} else if !errors.Is(err, client.ErrNoAgent) {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			cfg.Logger = c.log.With("role", "client")
			if cfg.Posture, err = c.postureConfig(); err != nil {
				return err
			}
			cl, err := client.New(cfg)
			if err != nil {
				return err
			}
			return runClient(cmd.Context(), cl, func(ctx context.Context) error {
				resp, err := cl.Grant(ctx, dest, "tcp", port)
				if err != nil {
					return fmt.Errorf("%s: %w", args[0], err)
				}
				shown := args[0]
				if port == 0 {
					for _, p := range resp.Grant.Ports {
						if p.Proto == "tcp" {
							shown = net.JoinHostPort(dest, strconv.Itoa(int(p.First)))
							break
						}
					}
				}
				return forwardAndReport(func(ready chan<- net.Addr) error {
					return cl.Forward(ctx, listen, dest, port, ready)
				}, func(a net.Addr) {
					fmt.Fprintf(c.stdout, "Forwarding %s → %s (grant %s until %s)\n",
						a, shown, resp.Grant.ID, resp.Grant.NotAfter.Local().Format("15:04:05"))
				})
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&listen, "listen", "127.0.0.1:0", "local loopback address to forward from (port 0: any free port)")
	f.StringVar(&cfg.DataDir, "data", defaultDataDir(""), "client data directory")
	f.BoolVar(&cfg.NoRenew, "no-renew", false, "do not renew the grant (access ends at its expiry)")
	return cmd
}

func (c *cli) upCmd() *cobra.Command {
	var (
		cfg    client.Config
		listen string
		apps   []string
	)
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Run the client agent: TUN mode with split DNS, or a SOCKS5 proxy, granting apps on demand",
		Long: `Run the client as a long-lived agent with a control socket (DATA/agent.sock,
owner only) through which keyhole status, connect, down and logout talk to it.

Userspace mode (the default, no root): a SOCKS5 proxy that requests a grant
on the first use of each app.

TUN mode (--tun, root or CAP_NET_ADMIN): a WireGuard TUN device with the
device's overlay address. Looking up an app name (curl http://wiki.corp.internal/)
requests the grant and routes that app's virtual IP into the device; every
other name goes to the resolvers the system used before, and every other
address follows the normal routes. Routes and DNS settings are removed on
exit, and repaired by the next start after a crash.`,
		Example: `  keyhole up                       # SOCKS5 proxy on 127.0.0.1:1080
  sudo keyhole up --tun            # TUN device keyhole0 with split DNS
  sudo keyhole up --tun --app office-lan   # and route a CIDR app from the start`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := client.Control(cmd.Context(), cfg.DataDir, client.ControlRequest{Op: client.OpStatus}); err == nil {
				return fmt.Errorf("an agent is already running for %s (keyhole down stops it)", cfg.DataDir)
			}
			socks := !cfg.TUN || cmd.Flags().Changed("socks5")
			cfg.Logger = c.log.With("role", "client")
			var err error
			if cfg.Posture, err = c.postureConfig(); err != nil {
				return err
			}
			cl, err := client.New(cfg)
			if err != nil {
				return err
			}
			return runClient(cmd.Context(), cl, func(ctx context.Context) error {
				ctx, stop := context.WithCancel(ctx)
				defer stop()
				select {
				case <-cl.Started():
				case <-ctx.Done():
					return nil
				}
				ctlErr := make(chan error, 1)
				go func() {
					err := cl.ServeControl(ctx, stop)
					if err != nil {
						stop() // no control socket, no agent
					}
					ctlErr <- err
				}()
				if cfg.TUN {
					st := cl.Status()
					fmt.Fprintf(c.stdout, "TUN device %s up with %s for %s; apps are granted and routed on first use.\n", st.Interface, st.OverlayIP, cl.Profile().User)
					if st.DNS.IsValid() {
						fmt.Fprintf(c.stdout, "Split DNS on %s: app names resolve to their virtual IPs, others as before.\n", st.DNS)
					}
					for _, a := range apps {
						g, err := cl.Route(ctx, a)
						if err != nil {
							fmt.Fprintf(c.stderr, "%s: %v\n", a, err)
							continue
						}
						fmt.Fprintf(c.stdout, "%s routed: %s (grant %s)\n", g.App, targets(g.Targets), g.ID)
					}
				}
				var err error
				if socks {
					err = forwardAndReport(func(ready chan<- net.Addr) error {
						return cl.ServeSOCKS(ctx, listen, ready)
					}, func(a net.Addr) {
						fmt.Fprintf(c.stdout, "SOCKS5 proxy on %s for %s; each app is granted on first use.\n", a, cl.Profile().User)
						fmt.Fprintf(c.stdout, "Try: curl --socks5-hostname %s http://APP-DOMAIN:PORT/\n", a)
					})
				} else {
					<-ctx.Done()
				}
				stop()
				if cerr := <-ctlErr; cerr != nil {
					return cerr
				}
				return err
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&listen, "socks5", "127.0.0.1:1080", "loopback address of the SOCKS5 proxy (in TUN mode only when given)")
	f.StringVar(&cfg.DataDir, "data", defaultDataDir(""), "client data directory")
	f.BoolVar(&cfg.NoRenew, "no-renew", false, "do not renew grants")
	f.BoolVar(&cfg.TUN, "tun", false, "run on a kernel TUN device with split DNS (root or CAP_NET_ADMIN)")
	f.StringVar(&cfg.TUNName, "tun-name", "keyhole0", "TUN device name")
	f.BoolVar(&cfg.NoDNS, "no-dns", false, "TUN mode without split DNS: apps only by address (keyhole connect APP routes them)")
	f.DurationVar(&cfg.IdleRelease, "idle-release", 10*time.Minute, "TUN mode: give a grant back after this long without traffic or lookups")
	f.StringArrayVar(&apps, "app", nil, "TUN mode: grant and route this app at start (repeatable; e.g. a CIDR app)")
	return cmd
}

// runClient runs cl in the background while fn runs, then stops it (which
// releases its grants) and waits for it. fn's context ends when cl stops on
// its own, and then cl's error is what counts.
func runClient(ctx context.Context, cl *client.Client, fn func(context.Context) error) error {
	runCtx, cancel := context.WithCancel(ctx)
	fnCtx, fnCancel := context.WithCancel(ctx)
	defer fnCancel()
	done := make(chan error, 1)
	go func() {
		err := cl.Run(runCtx)
		fnCancel()
		done <- err
	}()
	err := fn(fnCtx)
	cancel()
	if rerr := <-done; rerr != nil {
		return rerr
	}
	return err
}

// forwardAndReport runs serve, which sends its bound address on ready once
// it listens, and calls report with that address.
func forwardAndReport(serve func(ready chan<- net.Addr) error, report func(net.Addr)) error {
	ready := make(chan net.Addr, 1)
	served := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		select {
		case a := <-ready:
			report(a)
		case <-served:
			select { // it may have listened and stopped at once
			case a := <-ready:
				report(a)
			default:
			}
		}
	}()
	err := serve(ready)
	close(served)
	wg.Wait()
	return err
}
