package client

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/key"
	"github.com/keyhole-net/keyhole/internal/wg"
)

// ExportOptions says what keyhole export asks for.
type ExportOptions struct {
	// DataDir holds the logged-in device whose session asks.
	DataDir string
	// App is an app name, one of its domains, or an address inside it.
	App string
	// TTL is how long the export lives (0: the controller's default, 1h).
	TTL time.Duration
	// Endpoint, when set, replaces the gateway address the controller
	// suggests: "host:port", e.g. a port forward to the gateway or a name
	// the stock client resolves.
	Endpoint string
}

// WireGuardConfig is an export for a stock WireGuard client, ready to be
// written out. It holds the client's private key, which exists nowhere
// else; the render methods reveal it on purpose.
type WireGuardConfig struct {
	// User is who exported it.
	User string
	// PrivateKey is the stock client's key, made by Export.
	PrivateKey key.WGPrivate
	// Export is the controller's answer.
	Export api.ExportResponse
	// Endpoint is where the stock client sends WireGuard ("host:port").
	Endpoint string
	// MTU is the inner MTU (wg.DefaultMTU: room for the path's headers).
	MTU int
}

// keepaliveSeconds keeps the stock client's NAT mapping (and the gateway's
// knowledge of its endpoint) alive; 25 s is what wg-quick users know.
const keepaliveSeconds = 25

// Export makes a fresh WireGuard key pair, asks the controller (with this
// device's session) for an export grant for its public key, and returns the
// config. The private key never leaves this process except in what the
// caller writes out.
func Export(ctx context.Context, o ExportOptions) (*WireGuardConfig, error) {
	if o.Endpoint != "" {
		if err := checkEndpoint(o.Endpoint); err != nil {
			return nil, fmt.Errorf("export: %w", err)
		}
	}
	s, err := loadSession(o.DataDir)
	if err != nil {
		return nil, err
	}
	priv, err := key.NewWGPrivate()
	if err != nil {
		return nil, fmt.Errorf("export: %w", err)
	}
	var resp api.ExportResponse
	err = s.api.Do(ctx, "POST", "/v1/exports", api.ExportRequest{App: o.App, PublicKey: priv.Public(), TTL: api.Duration(o.TTL)}, &resp)
	if err != nil {
		return nil, fmt.Errorf("export %s: %w", o.App, err)
	}
	cfg := &WireGuardConfig{User: s.profile.User, PrivateKey: priv, Export: resp, Endpoint: o.Endpoint, MTU: wg.DefaultMTU}
	if cfg.Endpoint == "" {
		if len(resp.Peer.Endpoints) == 0 {
			return nil, fmt.Errorf("export %s: the controller offered no gateway address a stock client can reach directly (relays need the Keyhole client); revoke grant %s and give --endpoint HOST:PORT if you know one", o.App, resp.Grant.ID)
		}
		cfg.Endpoint = resp.Peer.Endpoints[0].String()
	}
	if !resp.Address.IsValid() || len(resp.Peer.AllowedIPs) == 0 || resp.Peer.PublicKey.IsZero() {
		return nil, fmt.Errorf("export %s: the controller's answer lacks the address, allowed IPs or gateway key (grant %s)", o.App, resp.Grant.ID)
	}
	return cfg, nil
}

// checkEndpoint accepts "host:port" with a port from 1 to 65535.
func checkEndpoint(ep string) error {
	host, port, err := net.SplitHostPort(ep)
	if err != nil {
		return fmt.Errorf("endpoint %q: want HOST:PORT ([ADDR]:PORT for IPv6): %w", ep, err)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 || host == "" {
		return fmt.Errorf("endpoint %q: want HOST:PORT with a port from 1 to 65535", ep)
	}
	return nil
}

// WGQuick renders the config for wg-quick(8) and the WireGuard apps
// (import from file), with comments that say what it is and how to end it.
func (c *WireGuardConfig) WGQuick() string { return c.render(true, true) }

// WG renders only the keys wg(8) setconf accepts, as `wg-quick strip`
// would, with comments saying how to set the address, MTU and routes that
// wg(8) leaves to the caller.
func (c *WireGuardConfig) WG() string { return c.render(false, true) }

// QRPayload is the wg-quick config without comments: what a phone scans.
// Dropping the comments keeps the code small enough for an 80-column
// terminal; Summary and HostsLines are shown beside it instead.
func (c *WireGuardConfig) QRPayload() string { return c.render(true, false) }

// Summary is the one-line description the configs start with.
func (c *WireGuardConfig) Summary() string {
	g := c.Export.Grant
	return fmt.Sprintf("Keyhole export: app %s for %s, grant %s, valid until %s; revoke with: keyhole admin grant revoke %s",
		g.App, c.User, g.ID, g.NotAfter.UTC().Format(time.RFC3339), g.ID)
}

// String describes the export without its private key, for logs.
func (c *WireGuardConfig) String() string { return c.Summary() }

// HostsLines are hosts-file lines ("ADDRESS NAME") for the app's names,
// sorted by name; none for an app of addresses only.
func (c *WireGuardConfig) HostsLines() []string {
	var lines []string
	for _, t := range c.Export.Grant.Targets {
		if t.Host != "" {
			lines = append(lines, t.Prefix.Addr().String()+" "+t.Host)
		}
	}
	return lines
}

// render writes the config. wgQuick adds the keys only wg-quick knows
// (Address, MTU); comments adds the explanations.
//
// There is deliberately no DNS line: a stock client has no split resolver,
// so DNS = would send every lookup of the device to a server that knows
// only the app's names (and is not reachable through a tunnel that
// carries only the app's addresses). The names go into the hosts file.
func (c *WireGuardConfig) render(wgQuick, comments bool) string {
	var b strings.Builder
	line := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	comment := func(format string, args ...any) {
		if comments {
			line("# "+format, args...)
		}
	}
	e := c.Export
	allowed := make([]string, len(e.Peer.AllowedIPs))
	for i, p := range e.Peer.AllowedIPs {
		allowed[i] = p.String()
	}
	addr := netip.PrefixFrom(e.Address, e.Address.BitLen()).String()

	comment("%s", c.Summary())
	comment("This file holds a private key: whoever has it reaches %s until then.", e.Grant.App)
	if !wgQuick {
		comment("For wg setconf: set the interface address, MTU and routes yourself, e.g.")
		comment("  ip address add %s dev wg0", addr)
		comment("  ip link set wg0 mtu %d up", c.MTU)
		for _, a := range allowed {
			comment("  ip route add %s dev wg0", a)
		}
	}
	line("[Interface]")
	line("PrivateKey = %s", c.PrivateKey.Base64Secret())
	if wgQuick {
		line("Address = %s", addr)
		line("MTU = %d", c.MTU)
	}
	if hosts := c.HostsLines(); len(hosts) > 0 {
		comment("DNS: none; the app's names are not in public DNS. Add to the hosts file:")
		for _, h := range hosts {
			comment("  %s", h)
		}
	}
	line("")
	line("[Peer]")
	line("PublicKey = %s", e.Peer.PublicKey)
	line("AllowedIPs = %s", strings.Join(allowed, ", "))
	line("Endpoint = %s", c.Endpoint)
	if others := c.otherEndpoints(); len(others) > 0 {
		comment("Other gateway addresses, if this one is not reachable from the client: %s", strings.Join(others, ", "))
	}
	line("PersistentKeepalive = %d", keepaliveSeconds)
	return b.String()
}

// otherEndpoints are the direct gateway candidates not used as Endpoint.
func (c *WireGuardConfig) otherEndpoints() []string {
	var out []string
	for _, cand := range c.Export.Peer.Candidates {
		if s := cand.Addr.String(); s != c.Endpoint {
			out = append(out, s+" ("+cand.Type+")")
		}
	}
	return out
}
