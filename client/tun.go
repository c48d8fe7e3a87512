package client

import (
	"context"
	"net/netip"
	"slices"
	"time"

	"github.com/keyhole-net/keyhole/internal/api"
)

// TUN mode: the tunnel is a kernel TUN device, and what reaches it is decided
// by routes. A route exists exactly for each target of a live grant (an app
// virtual IP, or a CIDR app's prefix), so nothing else of the company network
// is reachable, and the route goes the moment its grant does: expiry,
// revocation, release or exit. Connections to a prefix that loses its route
// are aborted on the spot.
//
// No program holds a grant open in TUN mode the way a forwarded connection
// does in userspace mode, so the agent holds each grant it was asked for (by
// a DNS lookup or keyhole connect) and renews it while it is used: while its
// gateway's peer carries traffic or its name is looked up again. After
// Config.IdleRelease without either it gives the grant back.

// defaultIdleRelease is Config.IdleRelease's default.
const defaultIdleRelease = 10 * time.Minute

// keepaliveBytes is how much a peer may carry between idle checks without
// counting as used: keepalives (32 bytes every 25 s each way) and handshake
// renewals (240 bytes every 2 minutes) are not use.
const keepaliveBytes = 512

// idleCheckEvery is how often held grants are checked for traffic.
const idleCheckEvery = 5 * time.Second

// syncRoutes makes the TUN's routes the union of the live grants' targets,
// and aborts the connections to every prefix that lost its route.
func (c *Client) syncRoutes() {
	if c.tun == nil {
		return
	}
	c.routesMu.Lock()
	defer c.routesMu.Unlock()
	c.mu.Lock()
	var want []netip.Prefix
	for _, lg := range c.grants {
		for _, t := range lg.resp.Grant.Targets {
			if !slices.Contains(want, t.Prefix) {
				want = append(want, t.Prefix)
			}
		}
	}
	c.mu.Unlock()
	removed, err := c.tun.SetRoutes(want)
	if err != nil {
		c.log.Warn("updating routes", "interface", c.tun.Name(), "err", err)
	}
	if len(removed) == 0 {
		return
	}
	n, err := c.tun.KillConnections(removed)
	if err != nil {
		c.log.Warn("aborting connections to addresses no longer granted", "prefixes", removed, "err", err)
	}
	c.log.Info("routes removed", "interface", c.tun.Name(), "prefixes", removed, "connections_aborted", n)
}

// hold marks a grant as held by the agent (TUN mode) and used now.
func (c *Client) hold(id api.GrantID) {
	if c.tun == nil {
		return
	}
	c.mu.Lock()
	if lg := c.grants[id]; lg != nil {
		lg.held = true
		lg.active = c.now()
	}
	c.mu.Unlock()
}

// releaseIdle gives back held grants that saw neither traffic through their
// gateway's peer nor a lookup for Config.IdleRelease.
func (c *Client) releaseIdle(ctx context.Context) {
	if c.tun == nil {
		return
	}
	now := c.now()
	if now.Sub(c.lastIdleCheck) < idleCheckEvery {
		return
	}
	c.lastIdleCheck = now
	traffic := make(map[string]uint64) // peer public key → rx+tx bytes
	if ps, err := c.net.Peers(); err == nil {
		for _, p := range ps {
			traffic[p.PublicKey.String()] = p.RxBytes + p.TxBytes
		}
	}
	var idle []api.GrantID
	c.mu.Lock()
	for gw, p := range c.peers {
		n := traffic[p.PublicKey.String()]
		if n < c.peerBytes[gw] || n-c.peerBytes[gw] > keepaliveBytes {
			c.peerBytes[gw] = n
			for _, lg := range c.grants {
				if lg.resp.Peer.GatewayID == gw {
					lg.active = now
				}
			}
		}
	}
	for id, lg := range c.grants {
		if lg.held && lg.uses == 0 && now.Sub(lg.active) >= c.cfg.IdleRelease {
			idle = append(idle, id)
		}
	}
	c.mu.Unlock()
	for _, id := range idle {
		if err := c.sess.api.Do(ctx, "DELETE", "/v1/grants/"+string(id), nil, nil); err != nil {
			c.log.Debug("releasing idle grant", "grant_id", id, "err", err)
		}
		c.drop(id, "idle")
	}
}

// dnsAddr is the split resolver's address, if one runs.
func (c *Client) dnsAddr() netip.AddrPort {
	if d := c.dns.Load(); d != nil {
		return d.Addr()
	}
	return netip.AddrPort{}
}
