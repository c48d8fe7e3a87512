package controller

import (
	"context"
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"github.com/keyhole-net/keyhole/controller/policy"
	"github.com/keyhole-net/keyhole/controller/store"
	"github.com/keyhole-net/keyhole/internal/api"
)

// DefaultPools are the overlay prefixes addresses come from: devices,
// app virtual IPs and gateways each get a slice of 100.64.0.0/10.
var DefaultPools = store.Pools{
	Devices:  netip.MustParsePrefix("100.64.0.0/11"),
	Apps:     netip.MustParsePrefix("100.96.0.0/12"),
	Gateways: netip.MustParsePrefix("100.112.0.0/12"),
}

// catalog is an immutable in-memory view of apps and policy, rebuilt after
// every admin change, so the grant path does no store reads for them.
type catalog struct {
	apps     map[string]store.App  // by name
	byID     map[api.AppID]string  // app ID → name
	byDomain map[string]string     // exact domain → app name
	byVIP    map[netip.Addr]string // virtual IP → app name
	prefixes []appPrefix           // address apps, most specific first
	policy   *policy.Set
}

type appPrefix struct {
	prefix netip.Prefix
	app    string
}

func buildCatalog(apps []store.App, rules []api.PolicyRule) (*catalog, error) {
	set, err := policy.Compile(rules)
	if err != nil {
		return nil, fmt.Errorf("compile policy: %w", err)
	}
	c := &catalog{
		apps:     make(map[string]store.App, len(apps)),
		byID:     make(map[api.AppID]string, len(apps)),
		byDomain: make(map[string]string),
		byVIP:    make(map[netip.Addr]string),
		policy:   set,
	}
	for _, a := range apps {
		c.apps[a.Name] = a
		c.byID[a.ID] = a.Name
		for _, d := range a.Domains {
			c.byDomain[d] = a.Name
		}
		for _, ip := range a.VirtualIPs {
			c.byVIP[ip] = a.Name
		}
		for _, p := range a.Addresses {
			c.prefixes = append(c.prefixes, appPrefix{p.Masked(), a.Name})
		}
	}
	sort.SliceStable(c.prefixes, func(i, j int) bool { return c.prefixes[i].prefix.Bits() > c.prefixes[j].prefix.Bits() })
	return c, nil
}

// resolve finds the app a destination names: an app name, one of its
// domains, one of its virtual IPs, or an address inside one of its prefixes.
func (c *catalog) resolve(dest string) (store.App, bool) {
	if a, ok := c.apps[dest]; ok {
		return a, true
	}
	d := strings.TrimSuffix(strings.ToLower(dest), ".")
	if name, ok := c.byDomain[d]; ok {
		return c.apps[name], true
	}
	ip, err := netip.ParseAddr(dest)
	if err != nil {
		return store.App{}, false
	}
	ip = ip.Unmap()
	if name, ok := c.byVIP[ip]; ok {
		return c.apps[name], true
	}
	for _, p := range c.prefixes {
		if p.prefix.Contains(ip) {
			return c.apps[p.app], true
		}
	}
	return store.App{}, false
}

// reloadCatalog rebuilds the catalog from the store.
func (c *Controller) reloadCatalog(ctx context.Context) error {
	c.catalogMu.Lock()
	defer c.catalogMu.Unlock()
	apps, err := c.store.Apps(ctx)
	if err != nil {
		return fmt.Errorf("load apps: %w", err)
	}
	rules, err := c.store.PolicyRules(ctx)
	if err != nil {
		return fmt.Errorf("load policy: %w", err)
	}
	cat, err := buildCatalog(apps, rules)
	if err != nil {
		return err
	}
	c.catalog.Store(cat)
	return nil
}

// grantTargets is what a grant for app covers.
func grantTargets(a store.App) []api.GrantTarget {
	var ts []api.GrantTarget
	for _, p := range a.Addresses {
		ts = append(ts, api.GrantTarget{Prefix: p.Masked()})
	}
	for _, d := range a.Domains {
		if ip, ok := a.VirtualIPs[d]; ok {
			ts = append(ts, api.GrantTarget{Prefix: netip.PrefixFrom(ip, ip.BitLen()), Host: d})
		}
	}
	return ts
}
