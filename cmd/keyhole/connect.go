package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"

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
Without :PORT the app's first TCP port is used.`,
		Example: "  keyhole connect wiki.corp.internal:443 --listen 127.0.0.1:8443",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dest, port, err := client.ParseTarget(args[0])
			if err != nil {
				return err
			}
			// A running agent (keyhole up) holds the tunnel: ask it.
			if resp, err := client.Control(cmd.Context(), cfg.DataDir, client.ControlRequest{Op: client.OpConnect, Target: args[0], Listen: listen}); err == nil {
				f := resp.Forward
				fmt.Fprintf(c.stdout, "Forwarding %s → %s through the running agent (grant %s until %s); keyhole down stops it.\n",
					f.Listen, f.Target, f.Grant.ID, f.Grant.NotAfter.Local().Format("15:04:05"))
				return nil
			} else if !errors.Is(err, client.ErrNoAgent) {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			cfg.Logger = c.log.With("role", "client")
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
	)
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Run the client agent: a SOCKS5 proxy that requests grants on demand, and a control socket",
		Long: `Run the client as a long-lived agent: a SOCKS5 proxy that requests a grant
on the first use of each app, and a control socket (DATA/agent.sock, owner
only) through which keyhole status, connect, down and logout talk to it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := client.Control(cmd.Context(), cfg.DataDir, client.ControlRequest{Op: client.OpStatus}); err == nil {
				return fmt.Errorf("an agent is already running for %s (keyhole down stops it)", cfg.DataDir)
			}
			cfg.Logger = c.log.With("role", "client")
			cl, err := client.New(cfg)
			if err != nil {
				return err
			}
			return runClient(cmd.Context(), cl, func(ctx context.Context) error {
				ctx, stop := context.WithCancel(ctx)
				defer stop()
				ctlErr := make(chan error, 1)
				go func() {
					err := cl.ServeControl(ctx, stop)
					if err != nil {
						stop() // no control socket, no agent
					}
					ctlErr <- err
				}()
				err := forwardAndReport(func(ready chan<- net.Addr) error {
					return cl.ServeSOCKS(ctx, listen, ready)
				}, func(a net.Addr) {
					fmt.Fprintf(c.stdout, "SOCKS5 proxy on %s for %s; each app is granted on first use.\n", a, cl.Profile().User)
					fmt.Fprintf(c.stdout, "Try: curl --socks5-hostname %s http://APP-DOMAIN:PORT/\n", a)
				})
				stop()
				if cerr := <-ctlErr; cerr != nil {
					return cerr
				}
				return err
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&listen, "socks5", "127.0.0.1:1080", "loopback address of the SOCKS5 proxy")
	f.StringVar(&cfg.DataDir, "data", defaultDataDir(""), "client data directory")
	f.BoolVar(&cfg.NoRenew, "no-renew", false, "do not renew grants")
	return cmd
}

// runClient runs cl in the background while fn runs, then stops it (which
// releases its grants) and waits for it.
func runClient(ctx context.Context, cl *client.Client, fn func(context.Context) error) error {
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- cl.Run(runCtx) }()
	err := fn(ctx)
	cancel()
	if rerr := <-done; err == nil {
		err = rerr
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
