package client

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/keyhole-net/keyhole/internal/api"
)

// A grant moves to another gateway of its app's group when its gateway
// drains or dies. The client learns it three ways, all ending in adopt:
//   - the device event grant.moved (the controller re-issued the grant of
//     a dead gateway): the client renews the new grant, which gives it the
//     new peer and hands the new gateway the client's candidates;
//   - a renewal answered with another grant (its gateway drains or is
//     gone);
//   - with the event stream down, the next use of a cached grant checks it
//     with the controller first (revalidate), and a grant that was moved
//     and revoked meanwhile is requested anew.

// revalidateEvery bounds how often a cached grant is checked with the
// controller while the event stream is down.
const revalidateEvery = 2 * time.Second

// revalidateTimeout bounds that check: an unreachable controller must not
// hold up every new connection.
const revalidateTimeout = 2 * time.Second

// followMove acts on grant.moved: grant old was re-issued as grant moved.
func (c *Client) followMove(ctx context.Context, old, moved api.GrantID) {
	c.mu.Lock()
	_, have := c.grants[old]
	_, already := c.grants[moved]
	c.mu.Unlock()
	if !have || already {
		if already {
			c.drop(old, "moved to grant "+string(moved))
		}
		return
	}
	dests, held := c.destsOf(old)
	var resp api.GrantResponse
	req := api.GrantRenewal{Candidates: apiCandidates(c.candidates()), Posture: c.posture(ctx)}
	if err := c.sess.api.Do(ctx, "POST", "/v1/grants/"+string(moved)+"/renew", req, &resp); err != nil {
		// The next use requests a grant anew.
		c.log.Warn("moved grant not taken; dropping the old one", "grant_id", old, "new_grant_id", moved, "err", err)
		c.drop(old, "gateway gone")
		return
	}
	if err := c.adopt(ctx, old, dests, held, resp); err != nil {
		c.log.Warn("installing moved grant", "grant_id", old, "new_grant_id", resp.Grant.ID, "err", err)
	}
}

// destsOf returns the destinations that name grant id, and whether the
// agent holds it.
func (c *Client) destsOf(id api.GrantID) (dests []string, held bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	lg := c.grants[id]
	if lg == nil {
		return nil, false
	}
	for d, x := range c.byDest {
		if x == lg {
			dests = append(dests, d)
		}
	}
	return dests, lg.held
}

// adopt installs resp, the grant that replaces grant old (through another
// gateway), for old's destinations, and drops old. dests and held are
// old's, taken before the controller was asked: a grant.revoked for old
// may have dropped it since.
func (c *Client) adopt(ctx context.Context, old api.GrantID, dests []string, held bool, resp api.GrantResponse) error {
	id := resp.Grant.ID
	if err := c.install(resp); err != nil {
		c.drop(old, "moved, but the new grant could not be installed")
		return fmt.Errorf("grant %s moved to %s: %w", old, id, err)
	}
	if err := c.connectPeer(ctx, resp.Peer.GatewayID); err != nil {
		c.drop(old, "moved, but the new gateway is unreachable")
		c.drop(id, "gateway unreachable")
		return fmt.Errorf("grant %s moved to %s: %w", old, id, err)
	}
	c.mu.Lock()
	if lg := c.grants[id]; lg != nil {
		for _, d := range dests {
			if cur := c.byDest[d]; cur == nil || cur.resp.Grant.ID == old {
				c.byDest[d] = lg
			}
		}
		lg.active = c.now()
	}
	c.mu.Unlock()
	if held {
		c.hold(id)
	}
	c.drop(old, fmt.Sprintf("moved to grant %s through gateway %s", id, resp.Peer.GatewayID))
	c.syncRoutes()
	c.log.Info("grant moved", "grant_id", old, "new_grant_id", id, "app", resp.Grant.App, "gateway_id", resp.Peer.GatewayID)
	return nil
}

// revalidate checks cached grant resp (for dest) with the controller
// before it is used while the event stream is down, and so could not have
// said that the grant's gateway is gone. It returns the grant to use — the
// same, renewed, or the one it moved to — or ok false when the grant ended
// and a new one must be requested. An unreachable controller leaves the
// cached grant in use.
func (c *Client) revalidate(ctx context.Context, resp api.GrantResponse) (api.GrantResponse, bool) {
	id := resp.Grant.ID
	c.mu.Lock()
	lg := c.grants[id]
	if lg == nil {
		c.mu.Unlock()
		return api.GrantResponse{}, false
	}
	if c.now().Sub(lg.checked) < revalidateEvery {
		c.mu.Unlock()
		return resp, true
	}
	lg.checked = c.now()
	c.mu.Unlock()
	dests, held := c.destsOf(id)
	rctx, cancel := context.WithTimeout(ctx, revalidateTimeout)
	defer cancel()
	var got api.GrantResponse
	err := c.sess.api.Do(rctx, "POST", "/v1/grants/"+string(id)+"/renew", api.GrantRenewal{Posture: c.posture(rctx)}, &got)
	var ae *api.Error
	switch {
	case err == nil && got.Grant.ID == id:
		if err := c.install(got); err != nil {
			c.log.Warn("installing renewed grant", "grant_id", id, "err", err)
			return resp, true
		}
		return got, true
	case err == nil:
		if err := c.adopt(ctx, id, dests, held, got); err != nil {
			c.log.Warn("grant moved, new one not installed", "grant_id", id, "err", err)
			return api.GrantResponse{}, false
		}
		return got, true
	case errors.As(err, &ae) && ae.Code != api.CodeRateLimited && ae.Code != api.CodeInternal:
		// Revoked (for instance moved while the stream was down), denied,
		// or its gateway is gone with no other: ask afresh.
		c.drop(id, ae.Message)
		return api.GrantResponse{}, false
	default:
		c.log.Debug("grant not revalidated; using it as cached", "grant_id", id, "err", err)
		return resp, true
	}
}

// renewed installs the answer to grant id's renewal, adopting it when the
// controller moved the grant to another gateway.
func (c *Client) renewed(ctx context.Context, id api.GrantID, dests []string, held bool, resp api.GrantResponse) error {
	if resp.Grant.ID != id {
		return c.adopt(ctx, id, dests, held, resp)
	}
	return c.install(resp)
}
