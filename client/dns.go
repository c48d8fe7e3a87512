package client

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/keyhole-net/keyhole/client/splitdns"
	"github.com/keyhole-net/keyhole/client/sysdns"
	"github.com/keyhole-net/keyhole/internal/api"
)

// Split DNS (TUN mode): a resolver on the overlay address answers app names
// with their virtual IPs, requesting the grant on the query, and passes every
// other name to the resolvers the system used before. The system is pointed
// at it for app domains only (systemd-resolved routing domains) or, without
// systemd-resolved, for everything through resolv.conf; both are undone on
// exit, and after a crash by the next start.

// dnsPort is where the split resolver listens on the overlay address.
const dnsPort = 53

// runDNS serves split DNS until ctx is done, then restores the system's
// resolver configuration.
func (c *Client) runDNS(ctx context.Context, ready chan<- error) error {
	if err := sysdns.Repair(c.cfg.DataDir, c.log); err != nil {
		c.log.Warn("repairing DNS settings left by an earlier run", "err", err)
	}
	doms, err := c.fetchDomains(ctx)
	if err != nil {
		// Without the list every name is forwarded; the domains-changed
		// event or the next start fills it in.
		c.log.Warn("loading app domains; app names will not resolve until the controller answers", "err", err)
	}
	overlay := c.sess.profile.OverlayIP
	routing := routingDomains(doms.Domains)
	upstreams, restore, err := sysdns.Apply(c.cfg.DataDir, sysdns.Setting{
		Interface: c.tun.Name(), Server: overlay, Domains: routing,
	}, c.log)
	if err != nil {
		ready <- fmt.Errorf("configure the system resolver: %w", err)
		return err
	}
	c.sysDNS = &sysDNSState{routing: routing, restore: restore}
	defer func() {
		st := c.sysDNS
		st.mu.Lock()
		defer st.mu.Unlock()
		if err := st.restore(); err != nil {
			c.log.Error("restoring the system resolver configuration", "err", err)
		}
		st.restore = func() error { return nil }
	}()
	srv, err := splitdns.New(splitdns.Config{
		Listen:    netip.AddrPortFrom(overlay, dnsPort),
		Upstreams: upstreams,
		Resolve:   c.resolveApp,
		Logger:    c.log.With("component", "dns"),
	})
	if err != nil {
		ready <- err
		return err
	}
	srv.SetDomains(doms.Domains)
	c.setDomainsVersion(doms.Version)
	c.dns.Store(srv)
	defer c.dns.Store(nil)
	c.log.Info("split DNS up", "listen", srv.Addr(), "app_domains", len(doms.Domains), "upstreams", upstreams)
	ready <- nil
	return srv.Run(ctx)
}

// fetchDomains asks the controller for every app domain.
func (c *Client) fetchDomains(ctx context.Context) (api.DeviceDomains, error) {
	var d api.DeviceDomains
	if err := c.sess.api.Do(ctx, "GET", "/v1/device/domains", nil, &d); err != nil {
		return api.DeviceDomains{}, fmt.Errorf("app domains: %w", err)
	}
	return d, nil
}

// sysDNSState is the system resolver setting runDNS applied.
type sysDNSState struct {
	mu      sync.Mutex // guards routing, restore
	routing []string
	restore func() error
}

func (c *Client) setDomainsVersion(v string) {
	c.mu.Lock()
	c.domainsVersion = v
	c.mu.Unlock()
}

// refreshDomains reloads the app domains into the running resolver, and
// points the system at it for new domains too.
func (c *Client) refreshDomains(ctx context.Context) {
	srv := c.dns.Load()
	if srv == nil {
		return
	}
	d, err := c.fetchDomains(ctx)
	if err != nil {
		c.log.Warn("reloading app domains", "err", err)
		return
	}
	srv.SetDomains(d.Domains)
	c.setDomainsVersion(d.Version)
	c.log.Info("app domains reloaded", "app_domains", len(d.Domains), "version", d.Version)
	st := c.sysDNS
	routing := routingDomains(d.Domains)
	st.mu.Lock()
	defer st.mu.Unlock()
	if slices.Equal(routing, st.routing) {
		return
	}
	// Apply undoes the current setting from its saved state, then sets
	// the new one (only systemd-resolved's routing domains differ).
	_, restore, err := sysdns.Apply(c.cfg.DataDir, sysdns.Setting{Interface: c.tun.Name(), Server: c.sess.profile.OverlayIP, Domains: routing}, c.log)
	if err != nil {
		c.log.Error("updating the system resolver's app domains", "err", err)
		return
	}
	st.routing, st.restore = routing, restore
}

// resolveApp is the resolver's answer for an app name: the grant, then the
// name's virtual IP. The route is in place before the answer leaves.
func (c *Client) resolveApp(ctx context.Context, name string) (netip.Addr, error) {
	resp, err := c.Grant(ctx, name, "tcp", 0)
	var ae *api.Error
	switch {
	case errors.Is(err, ErrDenied):
		return netip.Addr{}, fmt.Errorf("%w: %v", splitdns.ErrDenied, err)
	case errors.As(err, &ae) && ae.Code == api.CodeNotFound:
		return netip.Addr{}, fmt.Errorf("%w: %v", splitdns.ErrNotApp, err)
	case err != nil:
		return netip.Addr{}, err
	}
	for _, t := range resp.Grant.Targets {
		if strings.EqualFold(t.Host, name) && t.Prefix.Addr().Is4() {
			return t.Prefix.Addr(), nil
		}
	}
	ip, err := dialAddr(resp, name)
	if err != nil {
		return netip.Addr{}, err
	}
	return ip, nil
}

// routingDomains are the DNS suffixes to send to the split resolver: a
// wildcard's parent ("*.corp.internal" → "corp.internal") and each exact
// name, without the ones a shorter suffix already covers.
func routingDomains(patterns []string) []string {
	var ds []string
	for _, p := range patterns {
		d := strings.TrimSuffix(strings.ToLower(strings.TrimPrefix(p, "*.")), ".")
		if d != "" && !slices.Contains(ds, d) {
			ds = append(ds, d)
		}
	}
	slices.SortFunc(ds, func(a, b string) int { return len(a) - len(b) })
	var out []string
	for _, d := range ds {
		if !slices.ContainsFunc(out, func(s string) bool { return strings.HasSuffix(d, "."+s) }) {
			out = append(out, d)
		}
	}
	slices.Sort(out)
	return out
}
