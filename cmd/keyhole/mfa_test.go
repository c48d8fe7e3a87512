package main

import (
	"context"
	"fmt"
	"io"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/cmd/keyhole/internal/onebox"
	"github.com/keyhole-net/keyhole/controller/auth"
	"github.com/keyhole-net/keyhole/internal/api"
)

var (
	mfaSecretRE    = regexp.MustCompile(`(?m)^Secret: ([A-Z2-7]+)$`)
	recoveryCodeRE = regexp.MustCompile(`(?m)^  ([a-z2-7]{4}-[a-z2-7]{4}-[a-z2-7]{4}-[a-z2-7]{4})$`)
)

// TestMFAEnrollAndLogin runs keyhole mfa enroll (pending, then confirmed
// with --code; after an admin reset, confirmed at the prompt in one run)
// and keyhole login with --totp, with the code on the line after the
// password, and with a recovery code.
func TestMFAEnrollAndLogin(t *testing.T) {
	isolate(t)
	// The controller's clock runs offset ahead of the real one, so the
	// test moves to the next TOTP step without sleeping.
	var offset atomic.Int64
	now := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	nextStep := func() { offset.Add(int64(auth.TOTPPeriod)) }
	s := newBox(t, func(c *onebox.Config) { c.Now = now })
	if _, err := s.box.Admin.AddUser(context.Background(), api.UserCreate{Name: "alice", Password: testPassword}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	login := []string{"login", "--controller", s.box.URL, "--ca-fingerprint", s.box.Fingerprint, "--user", "alice", "--password-stdin", "--data", dir}
	mustRun(t, testPassword+"\n", login...)
	code := func(secret string) string {
		c, err := auth.TOTPCode(auth.Token(secret), auth.TOTPStep(now()))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}

	// Without a code on standard input, the enrolment stays pending.
	out := mustRun(t, "", "mfa", "enroll", "--data", dir)
	m := mfaSecretRE.FindStringSubmatch(out)
	if m == nil || !strings.Contains(out, "URI:    otpauth://totp/Keyhole:alice?") || !strings.Contains(out, "▀") || !strings.Contains(out, "Not confirmed yet") {
		t.Fatalf("mfa enroll output:\n%s", out)
	}
	secret := m[1]
	mustRun(t, testPassword+"\n", login...) // pending: no code asked for
	r := keyhole(t, "", "mfa", "enroll", "--code", "12345", "--data", dir)
	if r.code != 1 || !strings.Contains(r.stderr, "not the current code") {
		t.Errorf("confirm with a bad code: exit %d, stderr %q", r.code, r.stderr)
	}
	out = mustRun(t, "", "mfa", "enroll", "--code", code(secret), "--data", dir)
	recovery := recoveryCodeRE.FindAllStringSubmatch(out, -1)
	if !strings.Contains(out, "MFA is active") || len(recovery) != auth.RecoveryCodeCount {
		t.Fatalf("mfa enroll --code output:\n%s", out)
	}
	if out := mustRun(t, "", append([]string{"admin", "user", "list"}, s.adminFlags()...)...); !regexp.MustCompile(`(?m)^alice .* totp `).MatchString(out) {
		t.Errorf("user list does not show alice's MFA:\n%s", out)
	}

	// The password alone is refused, saying how to give the code.
	r = keyhole(t, testPassword+"\n", login...)
	if r.code != 1 || !strings.Contains(r.stderr, "--totp") {
		t.Errorf("login without a code: exit %d, stderr %q", r.code, r.stderr)
	}
	r = keyhole(t, testPassword+"\n", append(login, "--totp", "000000")...)
	if r.code != 1 || !strings.Contains(r.stderr, "wrong or already used MFA code") {
		t.Errorf("login with a wrong code: exit %d, stderr %q", r.code, r.stderr)
	}
	nextStep()
	if out := mustRun(t, testPassword+"\n", append(login, "--totp", code(secret))...); !strings.Contains(out, "Logged in as alice") {
		t.Errorf("login --totp output:\n%s", out)
	}
	nextStep()
	mustRun(t, testPassword+"\n"+code(secret)+"\n", login...)
	mustRun(t, testPassword+"\n"+recovery[0][1]+"\n", login...)
	r = keyhole(t, testPassword+"\n"+recovery[0][1]+"\n", login...)
	if r.code != 1 || !strings.Contains(r.stderr, "wrong or already used MFA code") {
		t.Errorf("login with a used recovery code: exit %d, stderr %q", r.code, r.stderr)
	}

	// After an admin reset, enrol again, typing the code at the prompt.
	out = mustRun(t, "", append([]string{"admin", "user", "mfa-reset", "alice"}, s.adminFlags()...)...)
	if !strings.Contains(out, "Removed the MFA of user alice") {
		t.Errorf("mfa-reset output: %s", out)
	}
	stdin, typed := io.Pipe()
	defer typed.Close()
	var stdout, stderr syncBuffer
	root := newRootCmd(&stdout, &stderr)
	root.SetIn(stdin)
	done := make(chan int, 1)
	go func() { done <- execute(context.Background(), root, []string{"mfa", "enroll", "--data", dir}, &stderr) }()
	waitFor(t, 10*time.Second, func() string {
		if m = mfaSecretRE.FindStringSubmatch(stdout.String()); m == nil {
			return "no secret shown yet: " + stdout.String() + stderr.String()
		}
		return ""
	})
	fmt.Fprintln(typed, code(m[1]))
	if exit := <-done; exit != 0 || !strings.Contains(stdout.String(), "MFA is active") || m[1] == secret {
		t.Fatalf("mfa enroll at the prompt: exit %d\n%s\n%s", exit, stdout.String(), stderr.String())
	}
	nextStep()
	mustRun(t, testPassword+"\n", append(login, "--totp", code(m[1]))...)
}
