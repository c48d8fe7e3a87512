package client

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/keyhole-net/keyhole/client/posture"
	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/trust"
)

// The client collects its device's posture (client/posture), signs it with
// the device key and sends it with every grant request and renewal; a
// background loop collects again every interval the controller names and
// reports a change at once (POST /v1/device/posture), so a device that
// falls out of policy loses its grants within an interval, not at the next
// renewal.

const (
	// postureFresh is how old a collected report may be and still go with
	// a request; the loop collects well within it.
	postureFresh = 2 * time.Minute
	// defaultPostureInterval applies until the controller names one.
	defaultPostureInterval = time.Minute
	// maxReportString keeps every string of a report inside what the
	// controller accepts.
	maxReportString = 200
)

// reporter holds the device's latest signed posture report.
type reporter struct {
	cfg posture.Config

	collectMu sync.Mutex // one collection at a time

	mu       sync.Mutex // guards the rest
	checks   []api.PostureCheck
	fetched  bool // checks came from the controller at least once
	interval time.Duration
	last     api.Posture // latest collected
	signed   *api.SignedPosture
	sent     *api.Posture // latest the controller accepted on its own (POST /v1/device/posture)
	kick     chan struct{}
}

func newReporter(cfg posture.Config) *reporter {
	return &reporter{cfg: cfg, interval: defaultPostureInterval, kick: make(chan struct{}, 1)}
}

// posture returns a signed report for a request: the latest one while it is
// fresh, else a new one. It returns nil (the request then goes without, and
// posture conditions fail) only when signing fails, which is logged.
func (c *Client) posture(ctx context.Context) *api.SignedPosture {
	r := c.reporter
	r.mu.Lock()
	sp, at := r.signed, r.last.CollectedAt
	r.mu.Unlock()
	if sp != nil && c.now().Sub(at) < postureFresh {
		return sp
	}
	sp, _ = c.collectPosture(ctx, false)
	return sp
}

// collectPosture collects, signs and keeps a new report; with force unset
// it reuses one another caller collected while this one waited.
func (c *Client) collectPosture(ctx context.Context, force bool) (*api.SignedPosture, api.Posture) {
	r := c.reporter
	r.collectMu.Lock()
	defer r.collectMu.Unlock()
	r.mu.Lock()
	sp, last, fetched := r.signed, r.last, r.fetched
	r.mu.Unlock()
	if !force && sp != nil && c.now().Sub(last.CollectedAt) < postureFresh {
		return sp, last
	}
	if !fetched {
		// A report without the admin's checks fails every profile that
		// has some: learn them first.
		if err := c.refreshPostureChecks(ctx); err != nil {
			c.log.Warn("cannot fetch the posture checks; reporting without them", "err", err)
		}
	}
	r.mu.Lock()
	checks := r.checks
	r.mu.Unlock()
	p := posture.Collect(ctx, r.cfg, checks)
	p.DeviceID = c.sess.profile.DeviceID
	fit(&p)
	creds, _ := c.sess.identity()
	signed, err := trust.SignPosture(p, creds.Key)
	if err != nil {
		c.log.Error("cannot sign the posture report; requests go without one", "err", err)
		return nil, p
	}
	r.mu.Lock()
	r.last, r.signed = p, &signed
	r.mu.Unlock()
	return &signed, p
}

// forget drops the latest signed report: the device key changed.
func (r *reporter) forget() {
	r.mu.Lock()
	r.signed = nil
	r.mu.Unlock()
}

// fit bounds and cleans every string of p to what the controller accepts:
// a detail too long or with a control character must not cost the device
// its access.
func fit(p *api.Posture) {
	clean := func(s string) string {
		s = strings.Map(func(r rune) rune {
			if r < 0x20 || r == 0x7f || r == utf8.RuneError {
				return ' '
			}
			return r
		}, strings.ToValidUTF8(s, " "))
		if len(s) > maxReportString {
			cut := maxReportString
			for cut > 0 && !utf8.RuneStart(s[cut]) {
				cut--
			}
			s = s[:cut] + "…"
		}
		return s
	}
	p.OS, p.OSVersion, p.Kernel, p.ClientVersion = clean(p.OS), clean(p.OSVersion), clean(p.Kernel), clean(p.ClientVersion)
	for k, v := range p.Details {
		p.Details[k] = clean(v)
	}
	for i := range p.Checks {
		p.Checks[i].Name, p.Checks[i].Detail = clean(p.Checks[i].Name), clean(p.Checks[i].Detail)
	}
}

// refreshPostureChecks fetches the admin-defined checks and the interval.
func (c *Client) refreshPostureChecks(ctx context.Context) error {
	var pc api.PostureChecks
	if err := c.sess.api.Do(ctx, "GET", "/v1/device/posture/checks", nil, &pc); err != nil {
		return err
	}
	r := c.reporter
	r.mu.Lock()
	r.checks, r.fetched = pc.Checks, true
	if pc.Interval > 0 {
		r.interval = max(time.Duration(pc.Interval), 100*time.Millisecond)
	}
	r.mu.Unlock()
	return nil
}

// postureChecksChanged is the posture.changed event: fetch the checks and
// report at once.
func (c *Client) postureChecksChanged() {
	select {
	case c.reporter.kick <- struct{}{}:
	default:
	}
}

// postureLoop collects the posture every interval until ctx is done and
// reports it when it changed since the controller last heard it.
func (c *Client) postureLoop(ctx context.Context) {
	r := c.reporter
	refetch := true
	for round := 1; ; round++ {
		// The checks change rarely, and a posture.changed event says so;
		// fetching them every tenth round covers a missed event.
		if refetch || round%10 == 0 {
			r.collectMu.Lock()
			err := c.refreshPostureChecks(ctx)
			r.collectMu.Unlock()
			if err != nil && ctx.Err() == nil {
				c.log.Debug("fetching posture checks failed; keeping the old ones", "err", err)
			}
		}
		sp, p := c.collectPosture(ctx, true)
		r.mu.Lock()
		changed := r.sent == nil || posture.Changed(*r.sent, p)
		interval := r.interval
		r.mu.Unlock()
		if sp != nil && changed {
			err := c.sess.api.Do(ctx, "POST", "/v1/device/posture", sp, nil)
			var ae *api.Error
			switch {
			case err == nil:
				r.mu.Lock()
				first := r.sent == nil
				r.sent = &p
				r.mu.Unlock()
				level := slog.LevelInfo // a change is news
				if first {
					level = slog.LevelDebug
				}
				c.log.Log(ctx, level, "posture reported", "disk_encryption", p.DiskEncryption, "firewall", p.Firewall, "screen_lock", p.ScreenLock, "checks", len(p.Checks))
			case errors.As(err, &ae) && ae.Code == api.CodePostureRefused:
				c.log.Warn("the controller refused this device's posture report", "reason", ae.Message)
			case ctx.Err() == nil:
				c.log.Debug("posture report not delivered; retrying next interval", "err", err)
				c.failover(err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
			refetch = false
		case <-r.kick:
			refetch = true
		}
	}
}
