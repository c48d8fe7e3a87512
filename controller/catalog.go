package controller

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
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
	apps       map[string]store.App  // by name
	byID       map[api.AppID]string  // app ID → name
	byDomain   map[string]string     // exact domain → app name
	byWildcard map[string]string     // "corp.internal" of "*.corp.internal" → app name
	byVIP      map[netip.Addr]string // exact domain's virtual IP → app name
	prefixes   []appPrefix           // address apps, most specific first
	domains    api.DeviceDomains     // GET /v1/device/domains
	policy     *policy.Set
	profiles   []api.PostureProfile // posture profiles, by name
	checks     []api.PostureCheck   // every profile's checks, by name
}

type appPrefix struct {
	prefix netip.Prefix
	app    string
}

func buildCatalog(apps []store.App, rules []api.PolicyRule, profiles []api.PostureProfile) (*catalog, error) {
	set, err := policy.Compile(rules, profiles...)
	if err != nil {
		return nil, fmt.Errorf("compile policy: %w", err)
	}
	c := &catalog{
		apps:       make(map[string]store.App, len(apps)),
		byID:       make(map[api.AppID]string, len(apps)),
		byDomain:   make(map[string]string),
		byWildcard: make(map[string]string),
		byVIP:      make(map[netip.Addr]string),
		policy:     set,
		profiles:   profiles,
		checks:     profileChecks(profiles),
	}
	for _, a := range apps {
		c.apps[a.Name] = a
		c.byID[a.ID] = a.Name
		for _, d := range a.Domains {
			if suffix, ok := strings.CutPrefix(d, "*."); ok {
				c.byWildcard[suffix] = a.Name
			} else {
				c.byDomain[d] = a.Name
			}
		}
		for _, ip := range a.VirtualIPs {
			c.byVIP[ip] = a.Name
		}
		for _, p := range a.Addresses {
			c.prefixes = append(c.prefixes, appPrefix{p.Masked(), a.Name})
		}
	}
	sort.SliceStable(c.prefixes, func(i, j int) bool { return c.prefixes[i].prefix.Bits() > c.prefixes[j].prefix.Bits() })
	c.domains = deviceDomains(apps)
	return c, nil
}

// deviceDomains lists every name and prefix of apps, sorted, with a version
// that is a hash of the lists.
func deviceDomains(apps []store.App) api.DeviceDomains {
	dd := api.DeviceDomains{Domains: []string{}, Prefixes: []netip.Prefix{}}
	for _, a := range apps {
		dd.Domains = append(dd.Domains, a.Domains...)
		for _, p := range a.Addresses {
			dd.Prefixes = append(dd.Prefixes, p.Masked())
		}
	}
	slices.Sort(dd.Domains)
	dd.Domains = slices.Compact(dd.Domains)
	slices.SortFunc(dd.Prefixes, func(a, b netip.Prefix) int {
		return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
	})
	dd.Prefixes = slices.Compact(dd.Prefixes)
	h := sha256.New()
	for _, d := range dd.Domains {
		fmt.Fprintf(h, "d %s\n", d)
	}
	for _, p := range dd.Prefixes {
		fmt.Fprintf(h, "p %s\n", p)
	}
	dd.Version = hex.EncodeToString(h.Sum(nil)[:16])
	return dd
}

// match is what a grant request's destination resolved to.
type match struct {
	app store.App
	// name is the concrete name under one of app's wildcard domains the
	// request is for; "" when it named the app, an exact domain or an
	// address (a grant for the whole app).
	name string
}

// resolve finds the app a destination names, for callers that give access
// to whole apps only (exports): like resolveDest, without the concrete name
// under a wildcard and without wildcard names' virtual IPs.
func (c *catalog) resolve(dest string) (store.App, bool) {
	m, ok, err := c.resolveDest(dest, func(netip.Addr) (string, bool) { return "", false })
	return m.app, ok && err == nil
}

// resolveDest finds the app a destination names: an app name, an address
// (an exact domain's virtual IP, a wildcard name's virtual IP as vipName
// knows it, or an address inside an app's prefixes) or a DNS name (see
// resolveName). A destination that is none of these fails with a 400.
func (c *catalog) resolveDest(dest string, vipName func(netip.Addr) (string, bool)) (match, bool, error) {
	if a, ok := c.apps[dest]; ok {
		return match{app: a}, true, nil
	}
	if ip, err := netip.ParseAddr(dest); err == nil {
		ip = ip.Unmap()
		if name, ok := c.byVIP[ip]; ok {
			return match{app: c.apps[name]}, true, nil
		}
		if name, ok := vipName(ip); ok {
			// Whichever app serves the name now.
			m, ok := c.resolveName(name)
			return m, ok, nil
		}
		for _, p := range c.prefixes {
			if p.prefix.Contains(ip) {
				return match{app: c.apps[p.app]}, true, nil
			}
		}
		return match{}, false, nil
	}
	name := strings.TrimSuffix(strings.ToLower(dest), ".")
	if !validHostName(name) {
		return match{}, false, badRequest("app %q: not an app name, an address or a valid DNS name (labels of letters, digits and '-', at most 63 characters each and 253 in all)", dest)
	}
	m, ok := c.resolveName(name)
	return m, ok, nil
}

// resolveName finds the app serving a DNS name (lowercase, no trailing dot):
// an exact domain wins; otherwise the longest wildcard suffix, which makes
// the match a grant for that one name.
func (c *catalog) resolveName(name string) (match, bool) {
	if app, ok := c.byDomain[name]; ok {
		return match{app: c.apps[app]}, true
	}
	// The first dot gives the longest suffix; "*.corp.internal" does not
	// match corp.internal itself, whose suffix is only "internal".
	for i := 0; i < len(name); i++ {
		if name[i] != '.' {
			continue
		}
		if app, ok := c.byWildcard[name[i+1:]]; ok {
			return match{app: c.apps[app], name: name}, true
		}
	}
	return match{}, false
}

// stillMatches says why grant g no longer belongs to its app as the catalog
// now stands, or "" if it does: a grant for a name under a wildcard loses
// the name when an exact domain or a longer wildcard of another app claims it.
func (c *catalog) stillMatches(g store.Grant) string {
	if g.Name == "" {
		return ""
	}
	m, ok := c.resolveName(g.Name)
	switch {
	case !ok:
		return fmt.Sprintf("no app serves %s any more", g.Name)
	case m.app.ID != g.AppID || m.name == "":
		return fmt.Sprintf("%s now belongs to app %s", g.Name, m.app.Name)
	}
	return ""
}

// reloadCatalog rebuilds the catalog from the store, and tells connected
// devices when the set of app names and prefixes changed.
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
	profiles, err := c.store.PostureProfiles(ctx)
	if err != nil {
		return fmt.Errorf("load posture profiles: %w", err)
	}
	cat, err := buildCatalog(apps, rules, profiles)
	if err != nil {
		return err
	}
	old := c.catalog.Swap(cat)
	c.names.retain(func(id api.AppID) bool { _, ok := cat.byID[id]; return ok })
	if old != nil && old.domains.Version != cat.domains.Version {
		c.devices.broadcast(api.DeviceEvent{Type: api.DeviceEventDomainsChanged, Version: cat.domains.Version, Time: c.now()})
	}
	return nil
}

// grantTargets is what a grant for the whole app covers: its prefixes and
// its exact domains' virtual IPs (names under its wildcards are granted one
// at a time).
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
