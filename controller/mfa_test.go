package controller

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/controller/auth"
	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/apiclient"
	"github.com/keyhole-net/keyhole/internal/trust"
)

// wrongPassword is a wrong password unlike any word in a log or audit
// reason, so the search for it means something.
const wrongPassword = "Tr0ub4dor&3-not-it"

// testClock is a controller clock that moves only when told to.
type testClock struct {
	mu sync.Mutex // guards t
	t  time.Time
}

// newTestClock starts at the real time, moved to 5 s into a TOTP step so
// that a test knows which step its codes are for.
func newTestClock() *testClock {
	now := time.Now().UTC().Truncate(auth.TOTPPeriod).Add(5 * time.Second)
	return &testClock{t: now}
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// mfaEnv is a controller with a test clock whose logs are kept.
type mfaEnv struct {
	*testEnv
	clock *testClock
	logs  *syncBuffer
}

func newMFAEnv(t *testing.T) *mfaEnv {
	t.Helper()
	clock, logs := newTestClock(), &syncBuffer{}
	e := newTestEnv(t, Config{
		Logger: slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Now:    clock.Now,
	}, 0)
	e.must(e.admin.AddUser(context.Background(), api.UserCreate{Name: "alice", Password: testPassword}))
	return &mfaEnv{testEnv: e, clock: clock, logs: logs}
}

// code is secret's code at the clock's step plus delta steps.
func (e *mfaEnv) code(secret string, delta int64) string {
	e.t.Helper()
	c, err := auth.TOTPCode(auth.Token(secret), auth.TOTPStep(e.clock.Now())+delta)
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

// enrol enrols a TOTP authenticator for d's user and returns the secret
// and the recovery codes.
func (e *mfaEnv) enrol(d *testDevice) (string, []string) {
	e.t.Helper()
	ctx := context.Background()
	var en api.MFAEnrolment
	if err := d.api.Do(ctx, "POST", "/v1/mfa/enrol", nil, &en); err != nil {
		e.t.Fatalf("enrol: %v", err)
	}
	var conf api.MFAConfirmation
	if err := d.api.Do(ctx, "POST", "/v1/mfa/confirm", api.MFAConfirm{Code: e.code(en.Secret, 0)}, &conf); err != nil {
		e.t.Fatalf("confirm: %v", err)
	}
	return en.Secret, conf.RecoveryCodes
}

// loginCode logs alice in with code; the error is the controller's answer.
func (e *mfaEnv) loginCode(code string) (api.LoginResponse, error) {
	e.t.Helper()
	_, resp, err := e.tryLogin(api.LoginRequest{User: "alice", Password: testPassword, MFACode: code})
	return resp, err
}

func (e *mfaEnv) userMFA(name string) bool {
	e.t.Helper()
	us, err := e.admin.Users(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	for _, u := range us {
		if u.Name == name {
			return u.MFA
		}
	}
	e.t.Fatalf("no user %s", name)
	return false
}

// TestMFAEnrolment: an enrolment counts only once a code confirms it, in
// time; a confirmed one cannot be replaced by the user.
func TestMFAEnrolment(t *testing.T) {
	e := newMFAEnv(t)
	ctx := context.Background()
	d := e.login("alice")

	var conf api.MFAConfirmation
	err := d.api.Do(ctx, "POST", "/v1/mfa/confirm", api.MFAConfirm{Code: "123456"}, &conf)
	wantCode(t, "confirm without enrolment", err, api.CodeNotFound)

	var en api.MFAEnrolment
	if err := d.api.Do(ctx, "POST", "/v1/mfa/enrol", nil, &en); err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(en.URI)
	if err != nil || u.Scheme != "otpauth" || u.Query().Get("secret") != en.Secret || !strings.Contains(u.Path, "alice") {
		t.Fatalf("enrolment URI %q (%v)", en.URI, err)
	}
	if want := e.clock.Now().Add(mfaEnrolTTL); !en.ExpiresAt.Equal(want) {
		t.Errorf("enrolment expires at %v, want %v", en.ExpiresAt, want)
	}
	// Pending: not shown as MFA, and logins need no code.
	if e.userMFA("alice") {
		t.Error("user list shows MFA for a pending enrolment")
	}
	if _, err := e.loginCode(""); err != nil {
		t.Fatalf("login with a pending enrolment: %v", err)
	}

	err = d.api.Do(ctx, "POST", "/v1/mfa/confirm", api.MFAConfirm{Code: e.code(en.Secret, 2)}, &conf)
	wantCode(t, "confirm with a code two steps ahead", err, api.CodeMFAInvalid)
	e.clock.Add(mfaEnrolTTL + time.Second)
	err = d.api.Do(ctx, "POST", "/v1/mfa/confirm", api.MFAConfirm{Code: e.code(en.Secret, 0)}, &conf)
	wantCode(t, "confirm after the enrolment expired", err, api.CodeExpired)

	// A new enrolment replaces the expired one; the old secret is dead.
	secret, codes := e.enrol(d)
	if secret == en.Secret {
		t.Fatal("a new enrolment re-used the secret")
	}
	if len(codes) != auth.RecoveryCodeCount {
		t.Fatalf("%d recovery codes, want %d", len(codes), auth.RecoveryCodeCount)
	}
	seen := map[string]bool{}
	for _, c := range codes {
		if seen[c] {
			t.Fatalf("recovery code %s twice", c)
		}
		seen[c] = true
	}
	if !e.userMFA("alice") {
		t.Error("user list does not show MFA after confirmation")
	}
	err = d.api.Do(ctx, "POST", "/v1/mfa/enrol", nil, &en)
	wantCode(t, "enrol over a confirmed enrolment", err, api.CodeConflict)
	err = d.api.Do(ctx, "POST", "/v1/mfa/confirm", api.MFAConfirm{Code: e.code(secret, 0)}, &conf)
	wantCode(t, "confirm twice", err, api.CodeConflict)
}

// TestMFALogin: with MFA, a password alone is refused with mfa_required;
// wrong and replayed codes are refused; a right code logs in and stamps
// the session; each recovery code works once; an admin reset turns MFA off.
// Neither logs nor audit hold a secret.
func TestMFALogin(t *testing.T) {
	e := newMFAEnv(t)
	ctx := context.Background()
	d := e.login("alice")
	secret, recovery := e.enrol(d)
	confirmCode := e.code(secret, 0) // used by the confirmation

	_, err := e.loginCode("")
	wantCode(t, "password alone", err, api.CodeMFARequired)
	_, _, err = e.tryLogin(api.LoginRequest{User: "alice", Password: wrongPassword, MFACode: e.code(secret, 1)})
	wantCode(t, "wrong password with a right code", err, api.CodeUnauthorized)
	wrong := fmt.Sprintf("%06d", (atoi(t, confirmCode)+1)%1000000)
	_, err = e.loginCode(wrong)
	wantCode(t, "wrong code", err, api.CodeMFAInvalid)
	_, err = e.loginCode(confirmCode)
	wantCode(t, "the confirmation's code again", err, api.CodeMFAInvalid)
	_, err = e.loginCode(e.code(secret, -1))
	wantCode(t, "an older step's code", err, api.CodeMFAInvalid)

	e.clock.Add(auth.TOTPPeriod)
	code := e.code(secret, 0)
	resp, err := e.loginCode(code)
	if err != nil {
		t.Fatalf("login with a fresh code: %v", err)
	}
	if dc := e.caller(resp); !dc.MFAAt.Equal(e.clock.Now()) {
		t.Errorf("session MFAAt = %v, want %v", dc.MFAAt, e.clock.Now())
	}
	_, err = e.loginCode(code)
	wantCode(t, "the same code twice", err, api.CodeMFAInvalid)
	// The next step's code (a phone clock a little ahead) works, and then
	// the current step's cannot follow it.
	if _, err := e.loginCode(e.code(secret, 1)); err != nil {
		t.Fatalf("login with the next step's code: %v", err)
	}
	e.clock.Add(auth.TOTPPeriod)
	_, err = e.loginCode(e.code(secret, 0))
	wantCode(t, "a code for a step already passed by a later one", err, api.CodeMFAInvalid)

	// Recovery codes: each once, typed loosely.
	if _, err := e.loginCode(recovery[0]); err != nil {
		t.Fatalf("login with a recovery code: %v", err)
	}
	_, err = e.loginCode(recovery[0])
	wantCode(t, "a recovery code twice", err, api.CodeMFAInvalid)
	if _, err := e.loginCode(strings.ToUpper(strings.ReplaceAll(recovery[1], "-", " "))); err != nil {
		t.Fatalf("login with a retyped recovery code: %v", err)
	}
	_, err = e.loginCode("abcd-efgh-ijkl-mnop")
	wantCode(t, "a made-up recovery code", err, api.CodeMFAInvalid)

	// A password login without MFA leaves MFAAt zero.
	if err := e.admin.ResetMFA(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	err = e.admin.ResetMFA(ctx, "alice")
	wantCode(t, "reset twice", err, api.CodeNotFound)
	err = e.admin.ResetMFA(ctx, "nobody")
	wantCode(t, "reset an unknown user", err, api.CodeNotFound)
	if e.userMFA("alice") {
		t.Error("user list shows MFA after the reset")
	}
	resp, err = e.loginCode("")
	if err != nil {
		t.Fatalf("password login after the reset: %v", err)
	}
	if dc := e.caller(resp); !dc.MFAAt.IsZero() {
		t.Errorf("password-only session has MFAAt %v", dc.MFAAt)
	}

	evs, err := e.admin.Audit(ctx, apiclient.AuditFilter{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	types := map[string]int{}
	for _, ev := range evs {
		types[ev.Type]++
		if ev.Type == "login.fail" && (ev.User != "alice" || ev.Source == "" || ev.Reason == "") {
			t.Errorf("login.fail event without user, source or reason: %+v", ev)
		}
	}
	for typ, n := range map[string]int{"mfa.enrol": 1, "mfa.confirm": 1, "login.mfa_required": 1, "login.fail": 8, "admin.user.mfa_reset": 1} {
		if types[typ] != n {
			t.Errorf("%d %s events, want %d (all: %v)", types[typ], typ, n, types)
		}
	}
	reasons := auditReasons(evs)
	for _, want := range []string{"password and TOTP code", "password and recovery code (9 left)", "MFA code already used", "wrong MFA code", "recovery code not valid or already used"} {
		if !strings.Contains(reasons, want) {
			t.Errorf("no audit reason %q in:\n%s", want, reasons)
		}
	}

	secrets := map[string]string{"password": testPassword, "wrong password": wrongPassword, "totp secret": secret, "session": resp.Session}
	for i, c := range recovery {
		secrets[fmt.Sprintf("recovery code %d", i)] = c
		secrets[fmt.Sprintf("recovery code %d, retyped", i)] = strings.ReplaceAll(c, "-", "")
	}
	noSecrets(t, secrets, map[string]string{"logs": e.logs.String(), "audit": mustJSON(t, evs)})
	// TOTP codes are short enough to match by chance in logs full of
	// numbers; the audit, whose fields are words, must not hold them.
	for _, c := range []string{confirmCode, code, wrong} {
		if strings.Contains(mustJSON(t, evs), c) {
			t.Errorf("TOTP code %s in the audit", c)
		}
	}
}

// TestLoginLockout: repeated failures lock the user out with doubling
// lockouts, answered 429 with Retry-After, during which even the right
// code is refused; after the lockout the right code works and the count
// starts again. A source spraying many names is locked out too.
func TestLoginLockout(t *testing.T) {
	e := newMFAEnv(t)
	ctx := context.Background()
	secret, _ := e.enrol(e.login("alice"))
	e.clock.Add(auth.TOTPPeriod)

	wrong := func() string { return fmt.Sprintf("%06d", (atoi(t, e.code(secret, 0))+500000)%1000000) }
	for i := range userLockout.free + 1 {
		_, err := e.loginCode(wrong())
		wantCode(t, fmt.Sprintf("wrong code %d", i+1), err, api.CodeMFAInvalid)
	}
	// Failure free+1 locked alice for a second: the right code is refused.
	status, retry, body := e.rawLogin(t, api.LoginRequest{User: "alice", Password: testPassword, MFACode: e.code(secret, 0)})
	if status != http.StatusTooManyRequests || retry != "1" || !strings.Contains(body, api.CodeRateLimited) {
		t.Fatalf("right code during the lockout: %d, Retry-After %q, %s", status, retry, body)
	}
	_, err := e.loginCode(e.code(secret, 0))
	wantCode(t, "right code during the lockout", err, api.CodeRateLimited)

	e.clock.Add(time.Second)
	_, err = e.loginCode(wrong())
	wantCode(t, "a wrong code after the lockout", err, api.CodeMFAInvalid)
	status, retry, _ = e.rawLogin(t, api.LoginRequest{User: "alice", Password: testPassword, MFACode: e.code(secret, 0)})
	if status != http.StatusTooManyRequests || retry != "2" {
		t.Fatalf("after the next failure: %d, Retry-After %q; want 429 and a doubled lockout of 2 s", status, retry)
	}
	e.clock.Add(2 * time.Second)
	if _, err := e.loginCode(e.code(secret, 0)); err != nil {
		t.Fatalf("right code after the lockout: %v", err)
	}
	// Success forgot alice's failures: one more is free again.
	e.clock.Add(auth.TOTPPeriod)
	_, err = e.loginCode(wrong())
	wantCode(t, "a wrong code after a success", err, api.CodeMFAInvalid)
	if _, err := e.loginCode(e.code(secret, 0)); err != nil {
		t.Fatalf("right code after one failure: %v", err)
	}

	// Password-only answers (mfa_required) neither count nor forgive:
	// with them between wrong codes, the lockout still comes.
	for range userLockout.free {
		_, err = e.loginCode(wrong())
		wantCode(t, "wrong code", err, api.CodeMFAInvalid)
		e.clock.Add(userLockout.max)
		_, err = e.loginCode("")
		wantCode(t, "password alone between wrong codes", err, api.CodeMFARequired)
	}
	_, err = e.loginCode(wrong())
	wantCode(t, "wrong code", err, api.CodeMFAInvalid)
	_, err = e.loginCode(e.code(secret, 0))
	wantCode(t, "right code after failures that password-only logins did not forgive", err, api.CodeRateLimited)

	// The source: wrong passwords for many names, none failing often,
	// once the failures above have faded.
	e.clock.Add(loginFailuresForget + time.Second)
	for i := range sourceLockout.free + 1 {
		_, _, err := e.tryLogin(api.LoginRequest{User: fmt.Sprintf("user%d", i), Password: "wrong password"})
		wantCode(t, "spraying", err, api.CodeUnauthorized)
	}
	e.must(e.admin.AddUser(ctx, api.UserCreate{Name: "bob", Password: testPassword}))
	_, _, err = e.tryLogin(api.LoginRequest{User: "bob", Password: testPassword})
	wantCode(t, "another user from the locked source", err, api.CodeRateLimited)

	evs, err := e.admin.Audit(ctx, apiclient.AuditFilter{Type: "login.locked", Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 5 || evs[0].User != "bob" || !strings.Contains(evs[0].Reason, "source 127.0.0.1") || evs[len(evs)-1].User != "alice" || !strings.Contains(evs[len(evs)-1].Reason, "user alice") {
		t.Errorf("login.locked events: %+v", evs)
	}
}

// TestLoginParallelBruteForce: a burst of parallel guesses gets no more
// codes checked than one guess after another would before the lockout.
func TestLoginParallelBruteForce(t *testing.T) {
	e := newMFAEnv(t)
	secret, _ := e.enrol(e.login("alice"))
	e.clock.Add(auth.TOTPPeriod)
	valid := map[string]bool{e.code(secret, -1): true, e.code(secret, 0): true, e.code(secret, 1): true}
	var guesses []string
	for n := 0; len(guesses) < 40; n += 24379 {
		if g := fmt.Sprintf("%06d", n%1000000); !valid[g] {
			guesses = append(guesses, g)
		}
	}
	errs := make(chan error, len(guesses))
	var wg sync.WaitGroup
	for _, g := range guesses {
		wg.Go(func() {
			_, err := e.loginCode(g)
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	checked, limited := 0, 0
	for err := range errs {
		switch {
		case apiclient.IsCode(err, api.CodeMFAInvalid):
			checked++
		case apiclient.IsCode(err, api.CodeRateLimited):
			limited++
		default:
			t.Errorf("guess answered %v", err)
		}
	}
	if checked == 0 || checked > userLockout.free+1 || checked+limited != len(guesses) {
		t.Fatalf("%d guesses checked, %d refused; want at most %d checked", checked, limited, userLockout.free+1)
	}
	t.Logf("%d parallel guesses: %d checked, %d refused", len(guesses), checked, limited)
	e.clock.Add(userLockout.max)
	if _, err := e.loginCode(e.code(secret, 0)); err != nil {
		t.Fatalf("right code after the burst and the lockout: %v", err)
	}
}

// rawLogin posts req (with a new device's CSR and keys) and returns the
// status, the Retry-After header and the body.
func (e *mfaEnv) rawLogin(t *testing.T, req api.LoginRequest) (int, string, string) {
	t.Helper()
	dev, _ := newLoginDevice(t)
	req.DeviceName, req.CSR, req.WGPublicKey = dev.DeviceName, dev.CSR, dev.WGPublicKey
	tlsCfg, err := trust.PinnedConfig(e.fp, "127.0.0.1", nil)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg}, Timeout: 10 * time.Second}
	defer hc.CloseIdleConnections()
	b, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Post(e.url+"/v1/login", "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body bytes.Buffer
	_, _ = body.ReadFrom(resp.Body)
	return resp.StatusCode, resp.Header.Get("Retry-After"), body.String()
}

// caller authenticates a request as the device of resp does, and returns
// what handlers see of it.
func (e *mfaEnv) caller(resp api.LoginResponse) deviceCaller {
	e.t.Helper()
	cert, err := trust.ParseCertPEM(resp.Certificate)
	if err != nil {
		e.t.Fatal(err)
	}
	r, err := http.NewRequest("GET", e.url+"/v1/device/domains", nil)
	if err != nil {
		e.t.Fatal(err)
	}
	r.Header.Set("Authorization", "Bearer "+resp.Session)
	r.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert}}
	d, err := e.c.authDevice(r)
	if err != nil {
		e.t.Fatalf("authDevice: %v", err)
	}
	return d
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	var n int
	if _, err := fmt.Sscan(s, &n); err != nil {
		t.Fatal(err)
	}
	return n
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func auditReasons(evs []api.AuditEvent) string {
	var b strings.Builder
	for _, ev := range evs {
		fmt.Fprintf(&b, "%s: %s\n", ev.Type, ev.Reason)
	}
	return b.String()
}

// noSecrets fails for every secret (by name) found in a text (by name).
func noSecrets(t *testing.T, secrets, texts map[string]string) {
	t.Helper()
	for where, text := range texts {
		if len(text) < 200 {
			t.Fatalf("only %d bytes of %s; the check is broken", len(text), where)
		}
		for what, s := range secrets {
			if len(s) < 8 {
				t.Fatalf("%s: %q is too short to look for", what, s)
			}
			if strings.Contains(text, s) {
				t.Errorf("%s holds the %s", where, what)
			}
		}
	}
}
