package client

import (
	"time"

	"github.com/keyhole-net/keyhole/internal/api"
)

// Keepalives. A WireGuard persistent keepalive keeps the NAT mappings on
// the way to a gateway open, so that an app can send on a quiet connection
// at any time; but it also keeps the gateway's WireGuard peer for this
// client alive, and a gateway with thousands of clients holds ~30 KiB per
// live peer against under 1 KiB for one it has let go (lazy peers,
// docs/gateway.md). So in userspace mode, where the client knows every
// connection it carries, a peer keeps its keepalive only while a
// connection through that gateway is open. Between connections the client
// is silent, the gateway drops the peer once WireGuard's session has
// expired, and the next connection's first packet starts a handshake that
// adds it back; a connection opened before the keepalive comes back on is
// carried by its own packets, which open the mappings as they go.
//
// TUN mode keeps the keepalive on while a peer is configured: the kernel's
// connections are not the client's to count, and an idle TUN grant is
// given back after Config.IdleRelease anyway, which removes the peer.

// defaultKeepalive is Config.Keepalive's default: below the 30 s after
// which the shortest-lived NAT mappings for UDP expire.
const defaultKeepalive = 25 * time.Second

// keepaliveLocked is the persistent keepalive gateway gw's peer should have
// now. c.mu must be held.
func (c *Client) keepaliveLocked(gw api.GatewayID) time.Duration {
	if c.tun != nil || c.keepalive[gw] {
		return c.cfg.Keepalive
	}
	return 0
}

// tuneKeepalives turns each peer's keepalive on while a connection through
// its gateway is open and off when the last one closes (userspace mode).
func (c *Client) tuneKeepalives() {
	if c.tun != nil {
		return
	}
	c.mu.Lock()
	open := make(map[api.GatewayID]bool, len(c.peers))
	for _, lg := range c.grants {
		if len(lg.conns) > 0 {
			open[lg.resp.Peer.GatewayID] = true
		}
	}
	// Under c.mu, as path.go does: a peer built from the grants must not
	// overtake a later change of them on its way to WireGuard.
	defer c.mu.Unlock()
	for gw := range c.peers {
		if open[gw] == c.keepalive[gw] {
			continue
		}
		if open[gw] {
			c.keepalive[gw] = true
		} else {
			delete(c.keepalive, gw)
		}
		peer := c.peerLocked(gw)
		if err := c.net.UpsertPeer(peer); err != nil {
			c.log.Warn("setting the keepalive", "gateway_id", gw, "keepalive", peer.PersistentKeepalive, "err", err)
		}
	}
}
