package controller

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/controller/store/sqlite"
	"github.com/keyhole-net/keyhole/controller/store/storetest"
)

func TestLockoutPolicy(t *testing.T) {
	p := lockoutPolicy{free: 5, base: time.Second, max: 15 * time.Minute}
	for _, tc := range []struct {
		failures int
		want     time.Duration
	}{
		{0, 0}, {1, 0}, {5, 0},
		{6, time.Second}, {7, 2 * time.Second}, {8, 4 * time.Second},
		{15, 512 * time.Second}, {16, 15 * time.Minute}, {40, 15 * time.Minute},
		{100, 15 * time.Minute}, {1 << 30, 15 * time.Minute},
	} {
		if got := p.lockout(tc.failures); got != tc.want {
			t.Errorf("lockout after %d failures = %v, want %v", tc.failures, got, tc.want)
		}
	}
}

func TestSourceID(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"192.0.2.7", "192.0.2.7"},
		{"::ffff:192.0.2.7", "192.0.2.7"},
		{"2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"},
		{"2001:db8:1:2::99", "2001:db8:1:2::/64"},
		{"fe80::1%eth0", "fe80::/64"},
		{"not an address", "not an address"},
	} {
		if got := sourceID(tc.in); got != tc.want {
			t.Errorf("sourceID(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestLoginThrottle(t *testing.T) {
	ctx := context.Background()
	t0 := time.Date(2026, 11, 23, 9, 0, 0, 0, time.UTC)
	later := 16*time.Second + loginFailuresForget
	type step struct {
		name     string
		at       time.Duration // after t0
		user     string
		source   string
		outcome  attemptOutcome
		wantWait time.Duration // refused: how long to wait
		wantWhy  string        // refused: why
		wantLock time.Duration // admitted: the lockout its end started
	}
	const a, b = "192.0.2.1", "198.51.100.9"
	steps := []step{
		{name: "five free failures", user: "alice", source: a},
		{user: "alice", source: a}, {user: "alice", source: a}, {user: "alice", source: a}, {user: "alice", source: a},
		{name: "the sixth locks 1s", user: "alice", source: a, wantLock: time.Second},
		{name: "locked from anywhere", at: 500 * time.Millisecond, user: "alice", source: b, outcome: attemptSucceeded,
			wantWait: 500 * time.Millisecond, wantWhy: "user alice locked out after repeated failures"},
		{name: "other users are not", at: 500 * time.Millisecond, user: "bob", source: a, outcome: attemptOther},
		{name: "the seventh locks 2s", at: time.Second, user: "alice", source: a, wantLock: 2 * time.Second},
		{name: "the eighth locks 4s", at: 3 * time.Second, user: "alice", source: a, wantLock: 4 * time.Second},
		{name: "MFA asked for: no change", at: 7 * time.Second, user: "alice", source: a, outcome: attemptOther},
		{name: "the ninth locks 8s", at: 7 * time.Second, user: "alice", source: a, wantLock: 8 * time.Second},
		{name: "success forgets", at: 15 * time.Second, user: "alice", source: a, outcome: attemptSucceeded},
		{name: "free again", at: 15 * time.Second, user: "alice", source: a},
		{name: "a day later, counts fade", at: later, user: "alice", source: a},
	}
	// The source's count faded before the last failure, which made it 1;
	// 20 more across as many names lock it.
	for i := range sourceLockout.free - 1 {
		steps = append(steps, step{name: "spray", at: later, user: fmt.Sprintf("u%d", i), source: a})
	}
	steps = append(steps,
		step{name: "the 21st locks the source", at: later, user: "u99", source: a, wantLock: time.Second},
		step{name: "source locked for everyone", at: later, user: "carol", source: a, outcome: attemptSucceeded,
			wantWait: time.Second, wantWhy: "source 192.0.2.1 locked out after repeated failures"},
		step{name: "other sources are not", at: later, user: "carol", source: "192.0.2.2", outcome: attemptSucceeded},
		step{name: "a success elsewhere does not forgive the source", at: later, user: "carol", source: a, outcome: attemptSucceeded,
			wantWait: time.Second, wantWhy: "source 192.0.2.1 locked out after repeated failures"},
		step{name: "an IPv6 /64 is one source", at: later, user: "dave", source: "2001:db8::1", outcome: attemptOther},
	)
	th := newLoginThrottle(nil)
	for i, s := range steps {
		now := t0.Add(s.at)
		wait, why, _ := th.admit(ctx, s.user, s.source, now)
		if wait != s.wantWait || why != s.wantWhy {
			t.Fatalf("step %d (%s): admit = %v %q, want %v %q", i, s.name, wait, why, s.wantWait, s.wantWhy)
		}
		if wait > 0 {
			continue
		}
		if lock, _ := th.done(ctx, s.user, s.source, now, s.outcome); lock != s.wantLock {
			t.Fatalf("step %d (%s): done started a %v lockout, want %v", i, s.name, lock, s.wantLock)
		}
	}
	if n := len(th.counts); n != 22 { // alice, the 20 names that failed once, the source
		t.Errorf("%d counts left, want 22: done must drop what holds nothing", n)
	}
}

// TestLoginThrottleParallel: a burst of parallel attempts gets no more
// checks before the lockout than one after another would.
func TestLoginThrottleParallel(t *testing.T) {
	ctx := context.Background()
	t0 := time.Date(2026, 11, 23, 9, 0, 0, 0, time.UTC)
	th := newLoginThrottle(nil)
	admitted := 0
	for range 50 {
		if wait, _, _ := th.admit(ctx, "alice", "192.0.2.1", t0); wait == 0 {
			admitted++
		}
	}
	if admitted != userLockout.free {
		t.Fatalf("%d of a burst admitted, want %d (the free failures)", admitted, userLockout.free)
	}
	wait, why, _ := th.admit(ctx, "alice", "192.0.2.1", t0)
	if wait != time.Second || why != "user alice has another login under way after repeated failures" {
		t.Errorf("admit during the burst = %v %q", wait, why)
	}
	for range admitted {
		th.done(ctx, "alice", "192.0.2.1", t0, attemptFailed)
	}
	// Past the free failures: one at a time.
	if wait, _, _ := th.admit(ctx, "alice", "192.0.2.1", t0); wait != 0 {
		t.Fatalf("the attempt after the burst refused for %v", wait)
	}
	if wait, _, _ := th.admit(ctx, "alice", "192.0.2.1", t0); wait == 0 {
		t.Fatal("a second attempt at once admitted past the free failures")
	}
	if lock, _ := th.done(ctx, "alice", "192.0.2.1", t0, attemptFailed); lock != time.Second {
		t.Fatalf("lockout after free+1 failures = %v", lock)
	}
}

// TestLoginThrottleFull: a table full of unlocked counts makes room; one
// full of locked counts leaves new keys uncounted rather than refused.
func TestLoginThrottleFull(t *testing.T) {
	ctx := context.Background()
	t0 := time.Date(2026, 11, 23, 9, 0, 0, 0, time.UTC)
	th := newLoginThrottle(nil)
	for i := range maxLoginCounts {
		th.counts[throttleKey{id: fmt.Sprint(i)}] = &failureCount{failures: 1, last: t0}
	}
	th.admit(ctx, "alice", "192.0.2.1", t0)
	th.done(ctx, "alice", "192.0.2.1", t0, attemptFailed)
	if len(th.counts) != 2 {
		t.Fatalf("after pruning unlocked counts: %d counts, want alice's and the source's", len(th.counts))
	}
	for i := range maxLoginCounts {
		th.counts[throttleKey{id: fmt.Sprint(i)}] = &failureCount{failures: 9, last: t0, lockedUntil: t0.Add(time.Hour)}
	}
	if wait, _, _ := th.admit(ctx, "bob", "192.0.2.9", t0); wait != 0 {
		t.Errorf("bob refused (%v) in a table full of others' counts", wait)
	}
	th.done(ctx, "bob", "192.0.2.9", t0, attemptFailed)
	if _, ok := th.counts[throttleKey{id: "bob"}]; ok {
		t.Error("bob counted in a table full of locked counts")
	}
	if wait, why, _ := th.admit(ctx, "7", "192.0.2.9", t0); wait != time.Hour || why != "user 7 locked out after repeated failures" {
		t.Errorf("a locked count was dropped: %v %q", wait, why)
	}
}

// TestLoginThrottleShared: controllers sharing a store count each other's
// failures, a lockout started on one holds on the others and after a
// restart, and a store that cannot be read refuses the login.
func TestLoginThrottleShared(t *testing.T) {
	ctx := context.Background()
	s, err := sqlite.Open(ctx, sqlite.Config{Path: filepath.Join(t.TempDir(), "store.db"), Pools: storetest.Pools()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	t0 := time.Date(2026, 11, 23, 9, 0, 0, 0, time.UTC)
	const src = "192.0.2.1"
	a, b := newLoginThrottle(s), newLoginThrottle(s)
	for i := range userLockout.free {
		th := []*loginThrottle{a, b}[i%2] // spread over two controllers
		if wait, why, err := th.admit(ctx, "alice", src, t0); wait != 0 || err != nil {
			t.Fatalf("failure %d refused: %v %q %v", i+1, wait, why, err)
		}
		if lock, err := th.done(ctx, "alice", src, t0, attemptFailed); lock != 0 || err != nil {
			t.Fatalf("failure %d started a %v lockout (%v): the free failures are counted for the cluster", i+1, lock, err)
		}
	}
	if _, _, err := a.admit(ctx, "alice", src, t0); err != nil {
		t.Fatal(err)
	}
	if lock, err := a.done(ctx, "alice", src, t0, attemptFailed); lock != time.Second || err != nil {
		t.Fatalf("the cluster's sixth failure locked %v (%v), want 1s", lock, err)
	}
	restarted := newLoginThrottle(s)
	for name, th := range map[string]*loginThrottle{"the other controller": b, "a restarted controller": restarted} {
		wait, why, err := th.admit(ctx, "alice", "198.51.100.9", t0.Add(200*time.Millisecond))
		if wait != 800*time.Millisecond || why != "user alice locked out after repeated failures" || err != nil {
			t.Errorf("%s: admit = %v %q %v, want the lockout", name, wait, why, err)
		}
	}

	// A success anywhere forgets the user's count everywhere.
	later := t0.Add(2 * time.Second)
	if _, _, err := b.admit(ctx, "alice", src, later); err != nil {
		t.Fatal(err)
	}
	if _, err := b.done(ctx, "alice", src, later, attemptSucceeded); err != nil {
		t.Fatal(err)
	}
	for i := range userLockout.free {
		if _, _, err := a.admit(ctx, "alice", src, later); err != nil {
			t.Fatal(err)
		}
		if lock, _ := a.done(ctx, "alice", src, later, attemptFailed); lock != 0 {
			t.Fatalf("failure %d after a success elsewhere locked %v: the old count was not forgotten", i+1, lock)
		}
	}

	// Fail closed.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if wait, _, err := a.admit(ctx, "bob", src, later); err == nil {
		t.Fatalf("admit with a closed store = %v, nil error: a login must not go uncounted", wait)
	}
}
