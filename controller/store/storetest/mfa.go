package storetest

import (
	"context"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/controller/store"
)

func testSessionMFAAt(t *testing.T, s store.Store) {
	ctx := context.Background()
	seed(t, s)
	d := mustDevice(t, s, "alice", "laptop")
	ss := store.Session{Hash: "s1", DeviceID: d.ID, User: "alice", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour), MFAAt: t0.Add(time.Second)}
	mustOK(t, s.CreateSession(ctx, ss))
	got, err := s.Session(ctx, "s1")
	mustOK(t, err)
	wantEqual(t, "Session with MFAAt", got, ss)
}

// mfaUser reads alice's User.MFA flag.
func mfaUser(t *testing.T, s store.Store) bool {
	t.Helper()
	u, err := s.User(context.Background(), "alice")
	mustOK(t, err)
	return u.MFA
}

func testMFA(t *testing.T, s store.Store) {
	ctx := context.Background()
	seed(t, s)
	_, err := s.MFA(ctx, "alice")
	wantErr(t, "MFA before enrolment", err, store.ErrNotFound)
	wantErr(t, "CreateMFA unknown user", s.CreateMFA(ctx, store.MFA{User: "nobody", Secret: "v1.x", CreatedAt: t0}), store.ErrNotFound)

	// A pending enrolment is replaced by a new one, and does not count.
	mustOK(t, s.CreateMFA(ctx, store.MFA{User: "alice", Secret: "v1.first", CreatedAt: t0}))
	pending := store.MFA{User: "alice", Secret: "v1.second", CreatedAt: t0.Add(time.Minute)}
	mustOK(t, s.CreateMFA(ctx, pending))
	got, err := s.MFA(ctx, "alice")
	mustOK(t, err)
	wantEqual(t, "pending MFA", got, pending)
	if mfaUser(t, s) {
		t.Error("User.MFA true for a pending enrolment")
	}
	if ok, err := s.UseMFAStep(ctx, "alice", 5); err != nil || ok {
		t.Errorf("UseMFAStep on a pending enrolment = %v, %v; want false", ok, err)
	}

	// Confirmation must name the pending secret.
	wantErr(t, "ConfirmMFA replaced secret", s.ConfirmMFA(ctx, "alice", "v1.first", 100, t0, nil), store.ErrNotFound)
	confirmedAt := t0.Add(2 * time.Minute)
	mustOK(t, s.ConfirmMFA(ctx, "alice", "v1.second", 100, confirmedAt, []string{"h1", "h2"}))
	wantErr(t, "ConfirmMFA twice", s.ConfirmMFA(ctx, "alice", "v1.second", 101, confirmedAt, nil), store.ErrNotFound)
	got, err = s.MFA(ctx, "alice")
	mustOK(t, err)
	wantEqual(t, "confirmed MFA", got, store.MFA{User: "alice", Secret: "v1.second", CreatedAt: pending.CreatedAt, ConfirmedAt: confirmedAt, LastStep: 100})
	if !mfaUser(t, s) {
		t.Error("User.MFA false after confirmation")
	}
	wantErr(t, "CreateMFA over a confirmed one", s.CreateMFA(ctx, store.MFA{User: "alice", Secret: "v1.third", CreatedAt: t0}), store.ErrConflict)

	// Steps only move forward.
	for _, tc := range []struct {
		step int64
		want bool
	}{{100, false}, {99, false}, {101, true}, {101, false}, {103, true}, {102, false}} {
		if ok, err := s.UseMFAStep(ctx, "alice", tc.step); err != nil || ok != tc.want {
			t.Errorf("UseMFAStep(%d) = %v, %v; want %v", tc.step, ok, err, tc.want)
		}
	}
	if ok, err := s.UseMFAStep(ctx, "bob", 1000); err != nil || ok {
		t.Errorf("UseMFAStep for a user without MFA = %v, %v; want false", ok, err)
	}

	mustOK(t, s.DeleteMFA(ctx, "alice"))
	wantErr(t, "DeleteMFA twice", s.DeleteMFA(ctx, "alice"), store.ErrNotFound)
	_, err = s.MFA(ctx, "alice")
	wantErr(t, "MFA after DeleteMFA", err, store.ErrNotFound)
	if mfaUser(t, s) {
		t.Error("User.MFA true after DeleteMFA")
	}
	_, err = s.UseRecoveryCode(ctx, "alice", "h1", t0)
	wantErr(t, "recovery code after DeleteMFA", err, store.ErrNotFound)

	// Deleting the user deletes the enrolment.
	mustOK(t, s.CreateMFA(ctx, store.MFA{User: "bob", Secret: "v1.bob", CreatedAt: t0}))
	mustOK(t, s.DeleteUser(ctx, "bob"))
	_, err = s.MFA(ctx, "bob")
	wantErr(t, "MFA of a deleted user", err, store.ErrNotFound)
}

func testRecoveryCodes(t *testing.T, s store.Store) {
	ctx := context.Background()
	seed(t, s)
	for _, u := range []string{"alice", "bob"} {
		mustOK(t, s.CreateMFA(ctx, store.MFA{User: u, Secret: "v1." + u, CreatedAt: t0}))
	}
	mustOK(t, s.ConfirmMFA(ctx, "alice", "v1.alice", 1, t0, []string{"h1", "h2", "h3"}))
	mustOK(t, s.ConfirmMFA(ctx, "bob", "v1.bob", 1, t0, []string{"b1"}))

	left, err := s.UseRecoveryCode(ctx, "alice", "h2", t0)
	if err != nil || left != 2 {
		t.Fatalf("UseRecoveryCode h2 = %d, %v; want 2 left", left, err)
	}
	_, err = s.UseRecoveryCode(ctx, "alice", "h2", t0)
	wantErr(t, "recovery code used twice", err, store.ErrNotFound)
	_, err = s.UseRecoveryCode(ctx, "alice", "b1", t0)
	wantErr(t, "another user's recovery code", err, store.ErrNotFound)
	_, err = s.UseRecoveryCode(ctx, "alice", "nope", t0)
	wantErr(t, "unknown recovery code", err, store.ErrNotFound)
	for i, h := range []string{"h1", "h3"} {
		if left, err := s.UseRecoveryCode(ctx, "alice", h, t0); err != nil || left != 1-i {
			t.Errorf("UseRecoveryCode %s = %d, %v; want %d left", h, left, err, 1-i)
		}
	}
	if left, err := s.UseRecoveryCode(ctx, "bob", "b1", t0); err != nil || left != 0 {
		t.Errorf("bob's UseRecoveryCode = %d, %v", left, err)
	}
}
