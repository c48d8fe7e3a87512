package client

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"time"

	"github.com/keyhole-net/keyhole/internal/api"
)

// The device's event stream (GET /v1/device/events) is how a revocation
// reaches the client within a second: the gateway stops forwarding at once
// anyway, and the stream lets the client drop the grant, its routes and its
// connections too, instead of finding out at the next renewal.

const (
	// eventsIdle is how long the stream may stay silent (the controller
	// pings every 15 s) before the client reconnects.
	eventsIdle = 45 * time.Second
	// maxEventLine bounds one event.
	maxEventLine = 64 << 10
	// eventsRetryMax caps the reconnect backoff.
	eventsRetryMax = 30 * time.Second
)

// eventLoop holds the event stream until ctx is done, reconnecting with
// exponential backoff, or at once after restartEvents.
func (c *Client) eventLoop(ctx context.Context) {
	wait := time.Second
	for {
		sctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		c.evMu.Lock()
		c.evCancel, c.evDone = cancel, done
		c.evMu.Unlock()
		start := time.Now()
		err := c.runEvents(sctx)
		kicked := sctx.Err() != nil
		cancel()
		close(done)
		if ctx.Err() != nil {
			return
		}
		if !kicked && c.failover(err) {
			wait = time.Second // a fresh controller: no reason to back off
		}
		if time.Since(start) > time.Minute || kicked {
			wait = time.Second
		}
		if kicked {
			continue
		}
		// Jitter spreads the reconnects of many clients after an outage.
		sleep := wait/2 + rand.N(wait/2+1)
		c.log.Debug("event stream down; reconnecting", "err", err, "retry_in", sleep)
		select {
		case <-ctx.Done():
			return
		case <-time.After(sleep):
		}
		wait = min(2*wait, eventsRetryMax)
	}
}

// restartEvents ends the current event stream (its connection may be dead
// after a network change) and waits, briefly, until it has ended; the loop
// opens a new one at once.
func (c *Client) restartEvents() {
	c.evMu.Lock()
	cancel, done := c.evCancel, c.evDone
	c.evMu.Unlock()
	if cancel == nil {
		return
	}
	cancel()
	select {
	case <-done:
	case <-time.After(time.Second):
	}
}

// runEvents reads one stream until it ends.
func (c *Client) runEvents(ctx context.Context) error {
	defer c.evUp.Store(false)
	opened := func(*http.Response) { c.evUp.Store(true) }
	return c.sess.api.ReadLines(ctx, "/v1/device/events", eventsIdle, maxEventLine, opened, func(line []byte) error {
		var ev api.DeviceEvent
		if err := json.Unmarshal(line, &ev); err != nil {
			return fmt.Errorf("malformed device event: %w", err)
		}
		c.applyEvent(ctx, ev)
		return nil
	})
}

// applyEvent acts on one device event.
func (c *Client) applyEvent(ctx context.Context, ev api.DeviceEvent) {
	switch ev.Type {
	case api.DeviceEventHello:
		// Events are not replayed: a domain change while the stream was
		// down shows as a new version here.
		c.mu.Lock()
		stale := ev.Version != "" && ev.Version != c.domainsVersion
		c.mu.Unlock()
		if stale {
			c.refreshDomains(ctx)
		}
	case api.DeviceEventGrantRevoked:
		reason := "revoked"
		if ev.Reason != "" {
			reason = "revoked: " + ev.Reason
		}
		c.drop(ev.GrantID, reason)
	case api.DeviceEventGrantMoved:
		c.followMove(ctx, ev.GrantID, ev.NewGrantID)
	case api.DeviceEventDomainsChanged:
		c.refreshDomains(ctx)
	case api.DeviceEventPostureChanged:
		c.postureChecksChanged()
	}
}
