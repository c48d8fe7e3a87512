package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.zx2c4.com/wireguard/wgctrl"

	"github.com/keyhole-net/keyhole/client"
	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/key"
	"github.com/keyhole-net/keyhole/internal/trust"
)

// statusReport is what keyhole status --json prints.
type statusReport struct {
	DataDir  string          `json:"data_dir"`
	LoggedIn bool            `json:"logged_in"`
	Profile  *client.Profile `json:"profile,omitempty"`
	// CertificateExpiresAt is the device certificate's NotAfter; a running
	// client renews it.
	CertificateExpiresAt time.Time `json:"certificate_expires_at,omitzero"`
	// Running is true when a client (connect or up) is running on this
	// data directory; Client is then its own report.
	Running bool `json:"running"`
	// Agent says a `keyhole up` agent answered on its control socket.
	Agent  bool           `json:"agent,omitempty"`
	Client *client.Status `json:"client,omitempty"`
	// WGError says why the TUN device's peers could not be read through
	// wgctrl (the agent's own report is shown instead).
	WGError string `json:"wg_error,omitempty"`
}

// wgctrlPeers replaces st.Peers' WireGuard figures with what wgctrl reads
// from the TUN device's UAPI socket, keeping the agent's gateway and path
// for each peer.
func wgctrlPeers(st *client.Status) error {
	wc, err := wgctrl.New()
	if err != nil {
		return fmt.Errorf("wgctrl: %w", err)
	}
	defer wc.Close()
	dev, err := wc.Device(st.Interface)
	if err != nil {
		return fmt.Errorf("wgctrl: device %s: %w", st.Interface, err)
	}
	known := make(map[string]client.PeerStatus, len(st.Peers))
	for _, p := range st.Peers {
		known[p.PublicKey] = p
	}
	peers := make([]client.PeerStatus, 0, len(dev.Peers))
	for _, p := range dev.Peers {
		k, err := key.ParseWGPublic(p.PublicKey.String())
		if err != nil {
			continue
		}
		ps := known[k.String()]
		ps.PublicKey = k.String()
		ps.Endpoint = ""
		if p.Endpoint != nil {
			ps.Endpoint = p.Endpoint.String()
		}
		ps.AllowedIPs = ps.AllowedIPs[:0]
		for _, n := range p.AllowedIPs {
			if pfx, err := netip.ParsePrefix(n.String()); err == nil {
				ps.AllowedIPs = append(ps.AllowedIPs, pfx)
			}
		}
		ps.LastHandshake = p.LastHandshakeTime.UTC()
		ps.RxBytes, ps.TxBytes = uint64(p.ReceiveBytes), uint64(p.TransmitBytes)
		ps.KeepaliveSeconds = int(p.PersistentKeepaliveInterval / time.Second)
		peers = append(peers, ps)
	}
	st.Peers = peers
	return nil
}

func (c *cli) statusCmd() *cobra.Command {
	var (
		dir    string
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show this device's login, grants and tunnel peers",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rep, err := readStatus(dir)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(c.stdout, rep)
			}
			return printStatus(c.stdout, rep)
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "data", defaultDataDir(""), "client data directory")
	f.BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// readStatus gathers the report from dir.
func readStatus(dir string) (*statusReport, error) {
	rep := &statusReport{DataDir: dir}
	p, err := client.LoadProfile(dir)
	if errors.Is(err, client.ErrNotLoggedIn) {
		return rep, nil
	}
	if err != nil {
		return nil, err
	}
	rep.Profile = p
	rep.LoggedIn = client.LoggedIn(dir)
	if creds, err := trust.LoadCredentials(dir); err == nil {
		rep.CertificateExpiresAt = creds.Cert.NotAfter.UTC()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if resp, err := client.Control(ctx, dir, client.ControlRequest{Op: client.OpStatus}); err == nil && resp.Status != nil {
		rep.Running, rep.Agent, rep.Client = true, true, resp.Status
		if st := rep.Client; st.Interface != "" {
			// TUN mode: read the peers the way wg show does.
			if err := wgctrlPeers(st); err != nil {
				rep.WGError = err.Error()
			}
		}
	} else if st, err := client.ReadStatus(dir); err == nil {
		rep.Running = true
		rep.Client = st
	}
	return rep, nil
}

func printStatus(w io.Writer, rep *statusReport) error {
	if rep.Profile == nil {
		fmt.Fprintf(w, "Not logged in (data directory %s). Run keyhole login.\n", rep.DataDir)
		return nil
	}
	p := rep.Profile
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "User:\t%s\n", p.User)
	fmt.Fprintf(tw, "Device:\t%s\n", p.DeviceID)
	fmt.Fprintf(tw, "Controller:\t%s\n", p.ControllerURL)
	fmt.Fprintf(tw, "Overlay IP:\t%s\n", p.OverlayIP)
	if rep.LoggedIn {
		fmt.Fprintf(tw, "Session:\texpires %s\n", fmtTime(p.SessionExpiresAt))
	} else {
		fmt.Fprintf(tw, "Session:\tlogged out (keyhole login to start one)\n")
	}
	fmt.Fprintf(tw, "Certificate:\texpires %s\n", fmtTime(rep.CertificateExpiresAt))
	if rep.Running && rep.Agent {
		fmt.Fprintf(tw, "Client:\tagent running (pid %d; control socket %s)\n", rep.Client.PID, client.ControlPath(rep.DataDir))
	} else if rep.Running {
		fmt.Fprintf(tw, "Client:\trunning (pid %d)\n", rep.Client.PID)
	} else {
		fmt.Fprintf(tw, "Client:\tnot running (keyhole connect or keyhole up starts one)\n")
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if !rep.Running {
		return nil
	}
	st := rep.Client
	fmt.Fprintln(w)
	if st.Interface != "" {
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "Tunnel:\tTUN %s (peers read through wgctrl; wg show %s works too)\n", st.Interface, st.Interface)
		rs := make([]string, len(st.Routes))
		for i, r := range st.Routes {
			rs[i] = r.String()
		}
		fmt.Fprintf(tw, "Routes:\t%s\n", orDash(strings.Join(rs, ", ")))
		if st.DNS.IsValid() {
			fmt.Fprintf(tw, "Split DNS:\t%s\n", st.DNS)
		}
		if rep.WGError != "" {
			fmt.Fprintf(tw, "WireGuard:\t%s\n", rep.WGError)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintln(w)
	}
	if len(st.Grants) == 0 {
		fmt.Fprintln(w, "No grants.")
	} else {
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "GRANT\tAPP\tGATEWAY\tPORTS\tTARGETS\tEXPIRES")
		for _, g := range st.Grants {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", g.ID, g.App, g.GatewayID, api.FormatPortRanges(g.Ports), targets(g.Targets), fmtTime(g.NotAfter))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if len(st.Peers) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "GATEWAY\tPATH\tENDPOINT\tLAST HANDSHAKE\tRX\tTX")
		for _, p := range st.Peers {
			hs := "never"
			if !p.LastHandshake.IsZero() {
				hs = fmtRel(p.LastHandshake)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", p.GatewayID, orDash(p.Path), p.Endpoint, hs, fmtBytes(p.RxBytes), fmtBytes(p.TxBytes))
		}
		return tw.Flush()
	}
	return nil
}

// targets prints what a grant routes: "wiki.corp.internal (100.80.0.1)".
func targets(ts []api.GrantTarget) string {
	s := make([]string, len(ts))
	for i, t := range ts {
		if t.Host != "" {
			s[i] = fmt.Sprintf("%s (%s)", t.Host, t.Prefix.Addr())
		} else {
			s[i] = t.Prefix.String()
		}
	}
	return strings.Join(s, ", ")
}

// writeJSON prints v as indented JSON.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// orDash prints "-" for an empty string.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func (c *cli) downCmd() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Stop the running agent (keyhole up); its grants are released",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := stopAgent(cmd.Context(), dir); err != nil {
				return err
			}
			fmt.Fprintln(c.stdout, "Agent stopped; its grants are released.")
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "data", defaultDataDir(""), "client data directory")
	return cmd
}

// stopAgent asks the agent for dir to stop and waits (up to 15 s) until its
// control socket is gone.
func stopAgent(ctx context.Context, dir string) error {
	if _, err := client.Control(ctx, dir, client.ControlRequest{Op: client.OpDown}); err != nil {
		return err
	}
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := client.Control(ctx, dir, client.ControlRequest{Op: client.OpStatus}); errors.Is(err, client.ErrNoAgent) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return errors.New("the agent did not stop within 15 s")
}
