package client

import (
	"context"
	"errors"

	"github.com/keyhole-net/keyhole/internal/api"
)

// A client logged in with controller fallbacks (keyhole login
// --controller-fallback) moves to the next controller of the cluster when
// the one it talks to does not answer: a grant request tries the next one
// at once, and the event stream, renewals and posture reports move on
// their next attempt (with their backoff and jitter).

// unreachable reports whether err means the controller did not answer (no
// API error came back), rather than that it refused.
func unreachable(err error) bool {
	var ae *api.Error
	return err != nil && !errors.As(err, &ae) && !errors.Is(err, context.Canceled)
}

// failover moves to the next controller after err showed this one
// unreachable; it reports whether there was another to move to.
func (c *Client) failover(err error) bool {
	if !unreachable(err) {
		return false
	}
	from := c.sess.api.URL()
	to := c.sess.api.Failover()
	if to == from {
		return false
	}
	c.log.Warn("controller unreachable; moving to the next one", "from", from, "to", to, "err", err)
	return true
}
