package controller

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/keyhole-net/keyhole/controller/store"
	"github.com/keyhole-net/keyhole/internal/api"
)

// Names under wildcard domains ("a.corp.internal" under "*.corp.internal")
// get their virtual IPs on demand, from the same pool as exact domains and
// kept as long: a name keeps its address for good. Two bounds keep a
// client that asks for random names from using up the pool:
//
//   - a wildcard app holds at most Config.MaxWildcardNames names
//     (DefaultMaxWildcardNames); past it, new names are refused with 409
//     limit_reached until an admin removes the app;
//   - one device adds at most newNameBurst new names at once, then one per
//     newNameInterval (429 rate_limited with Retry-After). Names that
//     exist already cost nothing, so only the first device to ask for a
//     name pays; the buckets live in memory and start full after a restart.
//
// A name is added only after the policy allowed the device the app, and
// each addition is an audit event (app.name.add) naming device and user.

// DefaultMaxWildcardNames is the default cap on the names one wildcard
// domain app serves.
const DefaultMaxWildcardNames = 4096

const (
	newNameBurst    = 64
	newNameInterval = 10 * time.Second
	// maxNameBuckets bounds the limiter's memory; past it, the buckets of
	// devices that are full again (idle long enough) are dropped.
	maxNameBuckets = 16384
)

// validHostName reports whether name (lowercase, no trailing dot) is a DNS
// host name: at most 253 characters, labels of 1–63 letters, digits and
// '-', no label starting or ending with '-'.
func validHostName(name string) bool {
	if len(name) == 0 || len(name) > 253 {
		return false
	}
	for label := range strings.SplitSeq(name, ".") {
		if len(label) == 0 || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			if b := label[i]; (b < 'a' || b > 'z') && (b < '0' || b > '9') && b != '-' {
				return false
			}
		}
	}
	return true
}

// checkDomain validates an app domain: a lowercase DNS name of at least two
// labels, or a wildcard pattern, "*." and such a name.
func checkDomain(d string) error {
	name, wild := strings.CutPrefix(d, "*.")
	if validHostName(name) && strings.Contains(name, ".") {
		return nil
	}
	if wild {
		return badRequest("domain %q: want a wildcard such as *.corp.internal: \"*.\" and a lowercase DNS name of at least two labels", d)
	}
	return badRequest("domain %q: want a lowercase DNS name such as wiki.corp.internal, or a wildcard such as *.corp.internal", d)
}

// nameKey is a name under one app's wildcards.
type nameKey struct {
	app  api.AppID
	name string
}

// wildcardNames caches the store's wildcard names, so a grant for a known
// name needs no store write, and an on-demand virtual IP resolves back to
// its name. Loaded at start, filled as names are added, pruned of removed
// apps with every catalog reload.
type wildcardNames struct {
	mu     sync.Mutex // guards byName, byVIP
	byName map[nameKey]netip.Addr
	byVIP  map[netip.Addr]string
}

func newWildcardNames() *wildcardNames {
	return &wildcardNames{byName: make(map[nameKey]netip.Addr), byVIP: make(map[netip.Addr]string)}
}

func (w *wildcardNames) add(ns ...store.WildcardName) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, n := range ns {
		w.byName[nameKey{n.AppID, n.Name}] = n.VirtualIP
		w.byVIP[n.VirtualIP] = n.Name
	}
}

// lookup returns the virtual IP of name under app, if the app holds it.
func (w *wildcardNames) lookup(app api.AppID, name string) (netip.Addr, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	ip, ok := w.byName[nameKey{app, name}]
	return ip, ok
}

// nameOf returns the name whose virtual IP is ip.
func (w *wildcardNames) nameOf(ip netip.Addr) (string, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	name, ok := w.byVIP[ip]
	return name, ok
}

// retain drops the names of apps keep rejects.
func (w *wildcardNames) retain(keep func(api.AppID) bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	dropped := false
	for k := range w.byName {
		if !keep(k.app) {
			delete(w.byName, k)
			dropped = true
		}
	}
	if !dropped {
		return
	}
	clear(w.byVIP)
	for k, ip := range w.byName {
		w.byVIP[ip] = k.name
	}
}

// nameLimiter is a token bucket per device: burst tokens, one more every
// interval.
type nameLimiter struct {
	burst float64
	every time.Duration

	mu      sync.Mutex // guards buckets
	buckets map[api.DeviceID]*tokenBucket
}

type tokenBucket struct {
	tokens float64
	at     time.Time
}

func newNameLimiter(burst int, every time.Duration) *nameLimiter {
	return &nameLimiter{burst: float64(burst), every: every, buckets: make(map[api.DeviceID]*tokenBucket)}
}

// allow takes one of dev's tokens at now. Without one it returns false
// and how long until there is one.
func (l *nameLimiter) allow(dev api.DeviceID, now time.Time) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[dev]
	if b == nil {
		if len(l.buckets) >= maxNameBuckets {
			l.pruneLocked(now)
		}
		b = &tokenBucket{tokens: l.burst, at: now}
		l.buckets[dev] = b
	}
	b.tokens = l.refill(b, now)
	if now.After(b.at) {
		b.at = now
	}
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	return false, time.Duration(math.Ceil((1 - b.tokens) * float64(l.every)))
}

// refill is b's token count at now (a clock that went back adds none).
func (l *nameLimiter) refill(b *tokenBucket, now time.Time) float64 {
	if !now.After(b.at) {
		return b.tokens
	}
	return min(l.burst, b.tokens+float64(now.Sub(b.at))/float64(l.every))
}

// pruneLocked drops the buckets that are full at now: forgetting them
// changes nothing.
func (l *nameLimiter) pruneLocked(now time.Time) {
	for dev, b := range l.buckets {
		if l.refill(b, now) >= l.burst {
			delete(l.buckets, dev)
		}
	}
}

// nameVIP returns the virtual IP of m.name under wildcard app m.app, adding
// the name to the app the first time any device asks for it. ev is the
// request's audit event, for the app.name.add event.
func (c *Controller) nameVIP(ctx context.Context, d deviceCaller, m match, ev api.AuditEvent) (netip.Addr, error) {
	if ip, ok := c.names.lookup(m.app.ID, m.name); ok {
		return ip, nil
	}
	if ok, wait := c.nameLimit.allow(d.device.ID, c.now()); !ok {
		e := errf(http.StatusTooManyRequests, api.CodeRateLimited,
			"device %s asked for too many new names under wildcard domains (%d at once, then one every %s); try %s again in %s",
			d.device.ID, newNameBurst, newNameInterval, m.name, wait.Round(time.Second))
		e.retryAfter = wait
		return netip.Addr{}, e
	}
	n, added, err := c.store.AddWildcardName(ctx, store.WildcardName{AppID: m.app.ID, Name: m.name, CreatedAt: c.now()}, c.cfg.MaxWildcardNames)
	switch {
	case errors.Is(err, store.ErrLimit):
		c.log.Warn("wildcard app is full; new names refused", "app", m.app.Name, "name", m.name, "max_names", c.cfg.MaxWildcardNames, "device_id", d.device.ID)
		return netip.Addr{}, errf(http.StatusConflict, api.CodeLimitReached,
			"app %s serves the most names it may under its wildcard domains (%d); %s cannot be added; ask an admin", m.app.Name, c.cfg.MaxWildcardNames, m.name)
	case errors.Is(err, store.ErrNotFound):
		return netip.Addr{}, notFound("app %s was removed; try again", m.app.Name)
	case err != nil:
		return netip.Addr{}, fmt.Errorf("name %s of app %s: %w", m.name, m.app.Name, err)
	}
	c.names.add(n)
	if added {
		ev.Type, ev.Reason = "app.name.add", fmt.Sprintf("name %s, virtual IP %s", n.Name, n.VirtualIP)
		c.audit(ctx, ev)
		c.log.Info("wildcard name added", "app", m.app.Name, "name", n.Name, "vip", n.VirtualIP, "device_id", d.device.ID)
	}
	return n.VirtualIP, nil
}
