package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/keyhole-net/keyhole/cmd/keyhole/internal/onebox"
)

// benchCmd runs the whole-system benchmarks on loopback and prints each
// figure next to the reference it is measured against in the same run.
func (c *cli) benchCmd() *cobra.Command {
	var (
		sizeMiB            int
		runs               int
		firstByte          int
		devices, apps, num int
		workers            int
		tunnels, tunnelMiB int
	)
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure tunnel throughput, time to first byte and grant issue rate on this machine",
		Long: `Runs a controller, a gateway and a client in this process on loopback and
measures, in one run:

  - one TCP stream client → gateway → app against the stock wireguard-go
    tun/netstack ↔ tun/netstack reference (ratio "x stock");
  - grant request → first byte through the tunnel over fresh grants (p50, p99);
  - fresh grants per second over HTTPS with the store seeded with --devices
    devices and --apps apps (each grant pushed to the gateway and acked).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			out := c.stdout
			b, err := onebox.NewBench(ctx, c.log)
			if err != nil {
				return err
			}
			defer b.Close()
			cl, err := b.Client(ctx)
			if err != nil {
				return err
			}
			size := int64(sizeMiB) << 20
			fmt.Fprintf(out, "Tunnel throughput, one TCP stream, %d MiB × %d runs\n", sizeMiB, runs)
			var best float64
			for i := range runs {
				s, err := onebox.StockThroughput(ctx, size)
				if err != nil {
					return fmt.Errorf("stock reference: %w", err)
				}
				o, err := b.TunnelThroughput(ctx, cl, size)
				if err != nil {
					return fmt.Errorf("keyhole tunnel: %w", err)
				}
				r := o.Mbps() / s.Mbps()
				best = max(best, r)
				fmt.Fprintf(out, "  run %d: stock netstack↔netstack %7.0f Mbit/s   keyhole client→gateway→app %7.0f Mbit/s   %.2f× stock\n", i+1, s.Mbps(), o.Mbps(), r)
			}
			if tunnels > 0 {
				if err := c.benchTunnels(cmd, b, cl, tunnels, int64(tunnelMiB)<<20); err != nil {
					return err
				}
			}
			lat, err := b.FirstByte(ctx, cl, firstByte)
			if err != nil {
				return fmt.Errorf("first byte: %w", err)
			}
			fmt.Fprintf(out, "Grant request → first byte, %d fresh grants: p50 %s  p99 %s\n", firstByte, ms(lat.Quantile(0.5)), ms(lat.Quantile(0.99)))
			t0 := time.Now()
			if err := b.SeedStore(ctx, devices, apps); err != nil {
				return err
			}
			fmt.Fprintf(out, "Seeded %d devices and %d apps in %s\n", devices, apps, time.Since(t0).Round(time.Millisecond))
			r, err := b.IssueGrants(ctx, workers, num, apps)
			if err != nil {
				return fmt.Errorf("grant issue: %w", err)
			}
			fmt.Fprintf(out, "Grant issue rate (SQLite, %d workers): %.0f grants/s  p50 %s  p99 %s\n", workers, r.PerSecond(), ms(r.Latencies.Quantile(0.5)), ms(r.Latencies.Quantile(0.99)))
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&sizeMiB, "size", 512, "MiB sent per throughput run")
	f.IntVar(&runs, "runs", 3, "throughput runs (each: reference, then keyhole)")
	f.IntVar(&firstByte, "first-byte", 200, "fresh grants for the first-byte figure")
	f.IntVar(&devices, "devices", 10000, "devices seeded into the store")
	f.IntVar(&apps, "apps", 1000, "apps seeded into the store")
	f.IntVar(&num, "grants", 3000, "grants issued for the rate figure")
	f.IntVar(&workers, "workers", 16, "parallel devices requesting grants")
	f.IntVar(&tunnels, "tunnels", 50, "client tunnels sending at once through the one gateway, for the aggregate figure (0: skip)")
	f.IntVar(&tunnelMiB, "tunnel-size", 32, "MiB each of --tunnels sends")
	argumentsOnly(cmd)
	cmd.AddCommand(c.benchControlCmd())
	return cmd
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }

// benchControlCmd measures the control plane alone: grant issue rate and
// latency, on SQLite and, given --store, on PostgreSQL, in one run.
func (c *cli) benchControlCmd() *cobra.Command {
	var (
		storeURL           string
		devices, apps, num int
		workers            int
	)
	cmd := &cobra.Command{
		Use:   "control",
		Short: "Measure grant issue rate and latency on SQLite and PostgreSQL",
		Long: `Runs a controller and a gateway in this process on loopback, seeds the
store with --devices devices and --apps apps, and issues --grants fresh
grants over HTTPS from --workers devices at once (each grant evaluated,
stored, pushed to the gateway and acknowledged before it counts). It runs
on embedded SQLite and, with --store postgres://…, again on that
PostgreSQL database (which must be empty: the run creates its own users,
apps and grants), and prints both.`,
		Example: "  keyhole bench control --store postgres://keyhole@127.0.0.1/keyhole_bench",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			stores := []struct{ name, url string }{{"SQLite", ""}}
			if storeURL != "" {
				stores = append(stores, struct{ name, url string }{"PostgreSQL", storeURL})
			}
			fmt.Fprintf(c.stdout, "Grant issue, 1 controller, %d workers, %d grants, store seeded with %d devices and %d apps\n", workers, num, devices, apps)
			for _, s := range stores {
				r, err := c.benchGrants(cmd, s.url, devices, apps, num, workers)
				if err != nil {
					return fmt.Errorf("%s: %w", s.name, err)
				}
				fmt.Fprintf(c.stdout, "  %-10s %6.0f grants/s   p50 %s   p99 %s\n", s.name, r.PerSecond(), ms(r.Latencies.Quantile(0.5)), ms(r.Latencies.Quantile(0.99)))
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&storeURL, "store", "", "an empty PostgreSQL database to measure as well, postgres://…")
	f.IntVar(&devices, "devices", 10000, "devices seeded into the store")
	f.IntVar(&apps, "apps", 1000, "apps seeded into the store")
	f.IntVar(&num, "grants", 3000, "grants issued")
	f.IntVar(&workers, "workers", 16, "parallel devices requesting grants")
	argumentsOnly(cmd)
	return cmd
}

// benchTunnels prints the aggregate throughput of n clients, each with
// its own tunnel and one TCP stream, through the one gateway, next to one
// stream of one client in the same run.
func (c *cli) benchTunnels(cmd *cobra.Command, b *onebox.Bench, one *onebox.Client, n int, size int64) error {
	ctx := cmd.Context()
	single, err := b.TunnelThroughput(ctx, one, size)
	if err != nil {
		return fmt.Errorf("one tunnel: %w", err)
	}
	clients := make([]*onebox.Client, n)
	for i := range clients {
		if clients[i], err = b.Client(ctx); err != nil {
			return fmt.Errorf("client %d: %w", i, err)
		}
		defer clients[i].Stop()
	}
	agg, err := b.ParallelThroughput(ctx, clients, size)
	if err != nil {
		return fmt.Errorf("%d tunnels: %w", n, err)
	}
	fmt.Fprintf(c.stdout, "Aggregate through one gateway, %d client tunnels × %d MiB at once: %.0f Mbit/s (one tunnel alone: %.0f Mbit/s, %.2f×)\n",
		n, size>>20, agg.Mbps(), single.Mbps(), agg.Mbps()/single.Mbps())
	return nil
}

// benchGrants runs one grant issue measurement on the store at url.
func (c *cli) benchGrants(cmd *cobra.Command, url string, devices, apps, num, workers int) (onebox.GrantRate, error) {
	ctx := cmd.Context()
	b, err := onebox.NewBenchOn(ctx, c.log, url)
	if err != nil {
		return onebox.GrantRate{}, err
	}
	defer b.Close()
	if err := b.SeedStore(ctx, devices, apps); err != nil {
		return onebox.GrantRate{}, err
	}
	return b.IssueGrants(ctx, workers, num, apps)
}
