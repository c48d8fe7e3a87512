package controller

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/keyhole-net/keyhole/controller/store"
)

// Failed logins are throttled per user name and per source address, each
// with a lockout that doubles with every failure past a free allowance.
// A login is refused without looking at its credentials while either is
// locked, so guesses cannot continue during a lockout, and a locked
// answer says nothing about whether the guess was right.
//
// The user's count is what stops guessing one account's password or MFA
// code (it counts unknown names too, so lockouts do not tell which names
// exist). The source's count stops one address spraying guesses over many
// accounts; it allows more failures, because many people may share an
// office NAT. A success forgets the user's failures but not the source's:
// otherwise anyone with one account of their own could wipe their
// address's count between guesses at others. Counts fade after a day
// without failures.
//
// The counts live in the store (sharedCounts), so every controller of a
// cluster sees every failure and a restart forgets nothing; this
// controller's memory adds what the store cannot: the attempts under way
// here. A store that cannot be read refuses the login: no guess goes
// uncounted.
//
// The policies are variables only because Go has no struct constants.
var (
	userLockout   = lockoutPolicy{free: 5, base: time.Second, max: 15 * time.Minute}
	sourceLockout = lockoutPolicy{free: 20, base: time.Second, max: 15 * time.Minute}
)

const (
	// loginFailuresForget is how long a count lasts without a new failure.
	loginFailuresForget = 24 * time.Hour
	// loginPruneInterval is how often the store's faded counts are
	// deleted (every controller does it; a delete that finds nothing is
	// cheap).
	loginPruneInterval = time.Hour
	// maxLoginCounts bounds the table (a count is under 100 bytes). When it
	// is full of locked keys, new keys go uncounted rather than refused:
	// an attacker who fills it must not lock everyone else out.
	maxLoginCounts = 100_000
)

// lockoutPolicy says how long a key is locked after each failure.
type lockoutPolicy struct {
	free int           // failures without a lockout
	base time.Duration // the lockout after failure free+1; each next one doubles
	max  time.Duration
}

// lockout is the lockout that the failures-th failure starts.
func (p lockoutPolicy) lockout(failures int) time.Duration {
	n := failures - p.free
	if n <= 0 {
		return 0
	}
	if n > 32 {
		return p.max
	}
	d := p.base << (n - 1)
	if d <= 0 || d > p.max {
		return p.max
	}
	return d
}

// throttleKey is a user name or a source, kept apart so that a user named
// like an address is not mixed up with the address.
type throttleKey struct {
	source bool
	id     string
}

type failureCount struct {
	failures    int
	inflight    int       // attempts admitted and not yet done
	last        time.Time // the latest failure
	lockedUntil time.Time
}

// sharedCounts keeps failed-login counts for every controller of a
// cluster: the store.
type sharedCounts interface {
	LoginFailures(ctx context.Context, keys ...string) ([]store.LoginFailures, error)
	AddLoginFailure(ctx context.Context, key string, at, fadeBefore time.Time) (store.LoginFailures, error)
	LockLogin(ctx context.Context, key string, until time.Time) error
	ClearLoginFailures(ctx context.Context, key string) error
}

// loginThrottle counts failed logins. Safe for concurrent use.
type loginThrottle struct {
	shared sharedCounts // nil: this controller's memory only

	mu     sync.Mutex // guards counts
	counts map[throttleKey]*failureCount
}

// newLoginThrottle returns a throttle that keeps its counts in shared as
// well as in memory; nil shared counts in memory only.
func newLoginThrottle(shared sharedCounts) *loginThrottle {
	return &loginThrottle{shared: shared, counts: make(map[throttleKey]*failureCount)}
}

// sourceID is the throttling identity of a client address: the address,
// or its /64 for IPv6, since one subscriber usually holds a whole /64.
func sourceID(source string) string {
	a, err := netip.ParseAddr(source)
	if err != nil {
		return source
	}
	if a = a.Unmap(); a.Is6() {
		p, _ := a.WithZone("").Prefix(64)
		return p.String()
	}
	return a.String()
}

func loginKeys(user, source string) [2]throttleKey {
	return [2]throttleKey{{id: user}, {source: true, id: sourceID(source)}}
}

func (k throttleKey) String() string {
	if k.source {
		return "source " + k.id
	}
	return "user " + k.id
}

func policyOf(k throttleKey) lockoutPolicy {
	if k.source {
		return sourceLockout
	}
	return userLockout
}

// attemptOutcome is how an admitted login attempt ended.
type attemptOutcome int

const (
	attemptFailed    attemptOutcome = iota // wrong credentials: counts
	attemptSucceeded                       // forgets the user's failures
	attemptOther                           // neither (MFA code asked for, user disabled, internal error)
)

// admit starts a login attempt of user from source at now, unless either
// is locked out: then it returns how long to wait and why. Past its free
// failures a key takes one attempt at a time, and while it is within them
// no more at once than it has left: otherwise a burst of parallel guesses
// would all be checked before the first failure locked anything. Every
// admitted attempt must be ended with done.
func (t *loginThrottle) admit(ctx context.Context, user, source string, now time.Time) (time.Duration, string, error) {
	keys := loginKeys(user, source)
	var shared [len(keys)]store.LoginFailures
	if t.shared != nil {
		fs, err := t.shared.LoginFailures(ctx, keys[0].String(), keys[1].String())
		if err != nil {
			return 0, "", fmt.Errorf("failed-login counts: %w", err)
		}
		for _, f := range fs {
			for i, k := range keys {
				if f.Key == k.String() {
					shared[i] = f
				}
			}
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	var wait time.Duration
	var why string
	for i, k := range keys {
		// The shared count is the cluster's; a lockout this controller
		// started holds even if storing it failed.
		failures, inflight, lockedUntil := 0, 0, shared[i].LockedUntil
		if now.Sub(shared[i].Last) <= loginFailuresForget {
			failures = shared[i].Failures
		}
		if c := t.counts[k]; c != nil {
			if now.Sub(c.last) > loginFailuresForget && c.inflight == 0 {
				c.failures = 0
			}
			if t.shared == nil {
				failures = c.failures
			}
			inflight = c.inflight
			if c.lockedUntil.After(lockedUntil) {
				lockedUntil = c.lockedUntil
			}
		}
		if now.Before(lockedUntil) && lockedUntil.Sub(now) > wait {
			wait, why = lockedUntil.Sub(now), k.String()+" locked out after repeated failures"
		}
		if inflight > 0 && failures+inflight >= policyOf(k).free && wait < time.Second {
			wait, why = time.Second, k.String()+" has another login under way after repeated failures"
		}
	}
	if wait > 0 {
		return wait, why, nil
	}
	for _, k := range keys {
		c := t.counts[k]
		if c == nil {
			if len(t.counts) >= maxLoginCounts && !t.pruneLocked(now) {
				continue // uncounted rather than refused; see maxLoginCounts
			}
			c = &failureCount{}
			t.counts[k] = c
		}
		c.inflight++
	}
	return 0, "", nil
}

// done ends an attempt admit let in. A failure is counted, and the
// longest lockout it started is returned (0: none). An error says the
// shared counts missed the outcome; this controller's count has it.
func (t *loginThrottle) done(ctx context.Context, user, source string, now time.Time, o attemptOutcome) (time.Duration, error) {
	keys := loginKeys(user, source)
	// What the shared counts say with this failure; 0 when not known.
	var clusterFailures [len(keys)]int
	var errs []error
	if t.shared != nil {
		switch o {
		case attemptFailed:
			for i, k := range keys {
				f, err := t.shared.AddLoginFailure(ctx, k.String(), now, now.Add(-loginFailuresForget))
				errs = append(errs, err)
				if err == nil {
					clusterFailures[i] = f.Failures
				}
			}
		case attemptSucceeded:
			errs = append(errs, t.shared.ClearLoginFailures(ctx, keys[0].String()))
		}
	}
	var locks [len(keys)]time.Time
	longest := t.doneHere(keys, clusterFailures, now, o, &locks)
	for i, k := range keys {
		if t.shared != nil && !locks[i].IsZero() {
			errs = append(errs, t.shared.LockLogin(ctx, k.String(), locks[i]))
		}
	}
	return longest, errors.Join(errs...)
}

// doneHere is done's part in this controller's memory: a failure makes
// each key's count its clusterFailures where known (this controller's
// count plus one where not), and locks gets the lockouts it starts.
func (t *loginThrottle) doneHere(keys [2]throttleKey, clusterFailures [2]int, now time.Time, o attemptOutcome, locks *[2]time.Time) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	var longest time.Duration
	for i, k := range keys {
		c := t.counts[k]
		if c == nil {
			// Not counted here (the table was full): the cluster's count
			// still locks.
			if d := policyOf(k).lockout(clusterFailures[i]); o == attemptFailed && d > 0 {
				locks[i] = now.Add(d)
				longest = max(longest, d)
			}
			continue
		}
		c.inflight = max(0, c.inflight-1)
		switch {
		case o == attemptFailed:
			if clusterFailures[i] > 0 {
				c.failures = clusterFailures[i]
			} else {
				c.failures++
			}
			c.last = now
			if d := policyOf(k).lockout(c.failures); d > 0 {
				c.lockedUntil = now.Add(d)
				locks[i] = c.lockedUntil
				longest = max(longest, d)
			}
		case o == attemptSucceeded && !k.source:
			// Not the source's: see above.
			c.failures, c.lockedUntil = 0, time.Time{}
		}
		if c.failures == 0 && c.inflight == 0 && !now.Before(c.lockedUntil) {
			delete(t.counts, k)
		}
	}
	return longest
}

// pruneLocked makes room: first it drops counts that have faded, then,
// if that was not enough, every count not locked now. Counts of attempts
// under way stay. It reports whether there is room.
func (t *loginThrottle) pruneLocked(now time.Time) bool {
	for k, c := range t.counts {
		if c.inflight == 0 && now.Sub(c.last) > loginFailuresForget {
			delete(t.counts, k)
		}
	}
	if len(t.counts) >= maxLoginCounts {
		for k, c := range t.counts {
			if c.inflight == 0 && !now.Before(c.lockedUntil) {
				delete(t.counts, k)
			}
		}
	}
	return len(t.counts) < maxLoginCounts
}

// pruneLoginFailures deletes the store's faded, unlocked failed-login
// counts every loginPruneInterval until ctx is done. They are ignored
// once faded anyway; this only keeps the table small.
func (c *Controller) pruneLoginFailures(ctx context.Context) {
	t := time.NewTicker(loginPruneInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			now := c.now()
			n, err := c.store.PruneLoginFailures(ctx, now.Add(-loginFailuresForget), now)
			switch {
			case err != nil && ctx.Err() == nil:
				c.log.Error("pruning faded failed-login counts failed; retrying in an hour", "err", err)
			case n > 0:
				c.log.Debug("pruned faded failed-login counts", "count", n)
			}
		}
	}
}
