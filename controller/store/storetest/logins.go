package storetest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/controller/store"
)

// testLoginFailures checks the shared failed-login counts: counting,
// fading, lockouts that only grow, clearing, pruning, and concurrent
// failures each counted.
func testLoginFailures(t *testing.T, s store.Store) {
	ctx := context.Background()
	t0 := time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)
	fade := func(at time.Time) time.Time { return at.Add(-24 * time.Hour) }
	const u, src = "user alice", "source 192.0.2.7"

	got, err := s.LoginFailures(ctx, u, src)
	mustOK(t, err)
	wantEqual(t, "LoginFailures before any", len(got), 0)
	wantErr(t, "LockLogin uncounted", s.LockLogin(ctx, u, t0.Add(time.Minute)), store.ErrNotFound)

	for i := 1; i <= 3; i++ {
		at := t0.Add(time.Duration(i) * time.Second)
		f, err := s.AddLoginFailure(ctx, u, at, fade(at))
		mustOK(t, err)
		wantEqual(t, fmt.Sprintf("failure %d", i), f, store.LoginFailures{Key: u, Failures: i, Last: at})
	}
	mustOK(t, s.LockLogin(ctx, u, t0.Add(time.Hour)))
	mustOK(t, s.LockLogin(ctx, u, t0.Add(time.Minute))) // never shortens
	mustOK(t, s.LockLogin(ctx, u, time.Time{}))         // nothing
	f, err := s.AddLoginFailure(ctx, src, t0, fade(t0))
	mustOK(t, err)
	wantEqual(t, "source failure", f.Failures, 1)
	got, err = s.LoginFailures(ctx, u, src, "user nobody")
	mustOK(t, err)
	wantEqual(t, "LoginFailures", got, []store.LoginFailures{
		{Key: src, Failures: 1, Last: t0},
		{Key: u, Failures: 3, Last: t0.Add(3 * time.Second), LockedUntil: t0.Add(time.Hour)},
	})

	// A day without failures: the count starts again, the lockout stays.
	later := t0.Add(25 * time.Hour)
	f, err = s.AddLoginFailure(ctx, u, later, fade(later))
	mustOK(t, err)
	wantEqual(t, "faded count", f, store.LoginFailures{Key: u, Failures: 1, Last: later, LockedUntil: t0.Add(time.Hour)})

	mustOK(t, s.ClearLoginFailures(ctx, u))
	mustOK(t, s.ClearLoginFailures(ctx, u)) // idempotent
	got, err = s.LoginFailures(ctx, u)
	mustOK(t, err)
	wantEqual(t, "cleared", len(got), 0)

	// Prune: faded and unlocked counts go; a locked one stays.
	mustOK(t, s.LockLogin(ctx, src, later.Add(time.Hour)))
	_, err = s.AddLoginFailure(ctx, "user bob", t0, fade(t0))
	mustOK(t, err)
	n, err := s.PruneLoginFailures(ctx, fade(later), later)
	mustOK(t, err)
	wantEqual(t, "pruned", n, 1)
	got, err = s.LoginFailures(ctx, src, "user bob")
	mustOK(t, err)
	wantEqual(t, "after prune", len(got), 1)

	// Failures from many controllers at once each count.
	const workers, each = 8, 5
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				if _, err := s.AddLoginFailure(ctx, "user carol", t0, fade(t0)); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	got, err = s.LoginFailures(ctx, "user carol")
	mustOK(t, err)
	wantEqual(t, "concurrent failures", got[0].Failures, workers*each)
}
