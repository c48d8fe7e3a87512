package controller

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/keyhole-net/keyhole/controller/auth"
	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/apiclient"
	"github.com/keyhole-net/keyhole/internal/key"
	"github.com/keyhole-net/keyhole/internal/oidctest"
	"github.com/keyhole-net/keyhole/internal/trust"
)

// The tests below run a real OpenID provider (zitadel's op package with its
// example storage and login UI) on loopback, and log in to it as a browser
// would: no fake of our own stands in for the IdP.

// oidcEnv is a controller that trusts op, with a log captured for the
// no-secrets check.
type oidcEnv struct {
	*testEnv
	op     *oidctest.OP
	logBuf *syncBuffer
	clock  *atomic.Int64 // nanoseconds added to the real time
	pinned *apiclient.Client
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newOIDCEnv(t *testing.T) *oidcEnv {
	t.Helper()
	o := oidctest.NewOP(t, oidctest.ClientID)
	buf := &syncBuffer{}
	clock := &atomic.Int64{}
	e := newTestEnv(t, Config{
		OIDC: &OIDCConfig{
			Issuer: o.Issuer, ClientID: oidctest.ClientID, ClientSecret: auth.Token(oidctest.ClientSecret),
			Scopes: []string{"openid", "profile", "email", "groups"},
		},
		Logger: slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Now:    func() time.Time { return time.Now().Add(time.Duration(clock.Load())) },
	}, 0)
	pinned, err := apiclient.New(apiclient.Config{URL: e.url, Fingerprint: e.fp})
	if err != nil {
		t.Fatal(err)
	}
	return &oidcEnv{testEnv: e, op: o, logBuf: buf, clock: clock, pinned: pinned}
}

// newLoginDevice makes a device key, CSR and WireGuard key as the client
// does.
func newLoginDevice(t *testing.T) (api.LoginDevice, *trust.Credentials) {
	t.Helper()
	k, err := trust.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := trust.NewCSR(k, "laptop")
	if err != nil {
		t.Fatal(err)
	}
	wg, err := key.NewWGPrivate()
	if err != nil {
		t.Fatal(err)
	}
	return api.LoginDevice{DeviceName: "laptop", CSR: csr, WGPublicKey: wg.Public()}, &trust.Credentials{Key: k}
}

// deviceFromLogin turns a LoginResponse into a testDevice.
func (e *oidcEnv) deviceFromLogin(creds *trust.Credentials, resp api.LoginResponse) *testDevice {
	t := e.t
	t.Helper()
	cs, err := e.pinned.ConnectionState(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if creds.CA, err = trust.CAFromChain(cs, e.fp); err != nil {
		t.Fatal(err)
	}
	if creds.Cert, err = trust.ParseCertPEM(resp.Certificate); err != nil {
		t.Fatal(err)
	}
	c, err := apiclient.New(apiclient.Config{URL: e.url, Credentials: creds, Bearer: resp.Session})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.CloseIdle)
	return &testDevice{t: t, id: resp.DeviceID, api: c}
}

// codeLogin runs the code + PKCE flow for user and returns what the finish
// call answered, along with the code used.
func (e *oidcEnv) codeLogin(user string) (api.LoginResponse, *trust.Credentials, string, error) {
	t := e.t
	t.Helper()
	ctx := context.Background()
	verifier := oauth2.GenerateVerifier()
	var start api.OIDCAuth
	redirect := "http://127.0.0.1:9/callback"
	if err := e.pinned.Do(ctx, "POST", "/v1/login/oidc/auth", api.OIDCAuthStart{
		RedirectURI: redirect, CodeChallenge: oauth2.S256ChallengeFromVerifier(verifier),
	}, &start); err != nil {
		t.Fatal(err)
	}
	cb := oidctest.BrowserLogin(t, start.AuthURL, user)
	if got := cb.Query().Get("state"); got != start.State {
		t.Fatalf("callback state %q, want %q", got, start.State)
	}
	code := cb.Query().Get("code")
	dev, creds := newLoginDevice(t)
	var resp api.LoginResponse
	err := e.pinned.Do(ctx, "POST", "/v1/login/oidc/auth/finish", api.OIDCAuthFinish{
		Handle: start.Handle, Code: code, State: start.State, CodeVerifier: verifier, LoginDevice: dev,
	}, &resp)
	return resp, creds, code, err
}

// setupWiki creates gateway group site with a gateway, group eng (no
// users: they come from the IdP), app wiki and a rule allowing eng the
// wiki under conds.
func (e *oidcEnv) setupWiki(conds api.RuleConditions) {
	e.t.Helper()
	ctx := context.Background()
	e.must(e.admin.AddGatewayGroup(ctx, "site"))
	e.must(e.admin.AddGroup(ctx, "eng"))
	tcp443 := []api.PortRange{{Proto: "tcp", First: 443, Last: 443}}
	e.must(e.admin.AddApp(ctx, api.AppCreate{Name: "wiki", Domains: []string{"wiki.corp.internal"}, Ports: tcp443, GatewayGroup: "site"}))
	e.must(e.admin.AddPolicy(ctx, api.PolicyRuleCreate{Action: api.Allow, Groups: []string{"eng"}, Apps: []string{"wiki"}, RuleConditions: conds}))
	e.addGateway("site")
}

func TestOIDCCodeFlowLoginAndGroupPolicy(t *testing.T) {
	e := newOIDCEnv(t)
	ctx := context.Background()
	e.setupWiki(api.RuleConditions{})

	resp, creds, code, err := e.codeLogin("alice")
	if err != nil {
		t.Fatalf("code flow login: %v", err)
	}
	if resp.User != "alice" || resp.Session == "" || !resp.OverlayIP.IsValid() {
		t.Fatalf("login response %+v", resp)
	}
	u, err := e.c.store.User(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	// eng exists here and is applied; idp-only does not and is ignored.
	if !slices.Equal(u.Groups, []string{"eng"}) || u.PasswordHash != "" {
		t.Fatalf("provisioned user %+v", u)
	}
	alice := e.deviceFromLogin(creds, resp)
	if g := alice.mustGrant("wiki.corp.internal"); g.Grant.ID == "" {
		t.Fatalf("grant %+v", g)
	}

	// Groups are refreshed at each login: out of eng at the IdP, no grant.
	e.op.SetGroups("alice")
	resp2, creds2, _, err := e.codeLogin("alice")
	if err != nil {
		t.Fatal(err)
	}
	alice2 := e.deviceFromLogin(creds2, resp2)
	if _, err := alice2.grant("wiki.corp.internal"); !apiclient.IsCode(err, api.CodeDenied) {
		t.Fatalf("grant after leaving eng: %v, want denied", err)
	}

	// bob, not in eng, is provisioned but denied.
	bresp, bcreds, _, err := e.codeLogin("bob")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.deviceFromLogin(bcreds, bresp).grant("wiki.corp.internal"); !apiclient.IsCode(err, api.CodeDenied) {
		t.Fatalf("bob's grant: %v, want denied", err)
	}

	// An OIDC user has no password: the password login refuses it.
	pw, _ := newLoginDevice(t)
	if err := e.pinned.Do(ctx, "POST", "/v1/login", api.LoginRequest{User: "alice", Password: "x", CSR: pw.CSR, WGPublicKey: pw.WGPublicKey}, nil); !apiclient.IsCode(err, api.CodeUnauthorized) {
		t.Fatalf("password login of an OIDC user: %v", err)
	}

	e.checkNoSecrets(code, resp.Session, resp2.Session, bresp.Session)
	evs, err := e.admin.Audit(ctx, apiclient.AuditFilter{Type: "login", User: "alice", Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) == 0 || !strings.Contains(evs[0].Reason, "issuer "+e.op.Issuer) || !strings.Contains(evs[0].Reason, "subject alice") {
		t.Fatalf("login audit %+v", evs)
	}
}

func TestOIDCDeviceFlowLogin(t *testing.T) {
	e := newOIDCEnv(t)
	ctx := context.Background()
	e.must(e.admin.AddGroup(ctx, "eng"))
	var start api.OIDCDeviceStart
	if err := e.pinned.Do(ctx, "POST", "/v1/login/oidc/device", nil, &start); err != nil {
		t.Fatal(err)
	}
	if start.UserCode == "" || start.VerificationURI == "" || !strings.Contains(start.VerificationURIComplete, start.UserCode) {
		t.Fatalf("device start %+v", start)
	}
	dev, creds := newLoginDevice(t)
	poll := func() (api.LoginResponse, error) {
		var resp api.LoginResponse
		err := e.pinned.Do(ctx, "POST", "/v1/login/oidc/device/poll", api.OIDCDevicePoll{Handle: start.Handle, LoginDevice: dev}, &resp)
		return resp, err
	}
	if _, err := poll(); !apiclient.IsCode(err, api.CodeAuthorizationPending) {
		t.Fatalf("poll before approval: %v, want %s", err, api.CodeAuthorizationPending)
	}
	oidctest.ApproveDevice(t, start.VerificationURI, start.UserCode, "alice")
	var resp api.LoginResponse
	eventually(t, 30*time.Second, func() error {
		var err error
		resp, err = poll()
		return err
	})
	if resp.User != "alice" || resp.Session == "" {
		t.Fatalf("login %+v", resp)
	}
	e.deviceFromLogin(creds, resp)
	u, err := e.c.store.User(ctx, "alice")
	if err != nil || !slices.Equal(u.Groups, []string{"eng"}) {
		t.Fatalf("user %+v, %v", u, err)
	}
	// The handle is good for one login.
	if _, err := poll(); !apiclient.IsCode(err, api.CodeNotFound) {
		t.Fatalf("second poll: %v, want not_found", err)
	}
	e.checkNoSecrets(start.Handle, resp.Session)
}

func TestOIDCRefusesReplayedCodeAndBadState(t *testing.T) {
	e := newOIDCEnv(t)
	ctx := context.Background()
	verifier := oauth2.GenerateVerifier()
	challenge := oauth2.S256ChallengeFromVerifier(verifier)
	startLogin := func() api.OIDCAuth {
		var s api.OIDCAuth
		if err := e.pinned.Do(ctx, "POST", "/v1/login/oidc/auth", api.OIDCAuthStart{RedirectURI: "http://127.0.0.1:9/callback", CodeChallenge: challenge}, &s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	finish := func(s api.OIDCAuth, code, state string) error {
		dev, _ := newLoginDevice(t)
		return e.pinned.Do(ctx, "POST", "/v1/login/oidc/auth/finish", api.OIDCAuthFinish{
			Handle: s.Handle, Code: code, State: state, CodeVerifier: verifier, LoginDevice: dev,
		}, nil)
	}

	s1 := startLogin()
	code := oidctest.BrowserLogin(t, s1.AuthURL, "alice").Query().Get("code")
	if err := finish(s1, code, s1.State); err != nil {
		t.Fatalf("first use of the code: %v", err)
	}
	// The same code again, in a new login with the same PKCE verifier: the
	// IdP refuses it, and we say so.
	s2 := startLogin()
	err := finish(s2, code, s2.State)
	if !apiclient.IsCode(err, api.CodeUnauthorized) || !strings.Contains(err.Error(), "invalid_grant") {
		t.Fatalf("replayed code: %v, want unauthorized invalid_grant", err)
	}
	// A finished login cannot be finished again.
	if err := finish(s1, code, s1.State); !apiclient.IsCode(err, api.CodeNotFound) {
		t.Fatalf("second finish: %v", err)
	}
	// State mismatch: refused before the code is used.
	s3 := startLogin()
	code3 := oidctest.BrowserLogin(t, s3.AuthURL, "alice").Query().Get("code")
	if err := finish(s3, code3, "st_forged"); !apiclient.IsCode(err, api.CodeUnauthorized) || !strings.Contains(err.Error(), "state") {
		t.Fatalf("state mismatch: %v", err)
	}
	// A redirect that is not loopback is refused.
	if err := e.pinned.Do(ctx, "POST", "/v1/login/oidc/auth", api.OIDCAuthStart{RedirectURI: "http://evil.example/callback", CodeChallenge: challenge}, nil); !apiclient.IsCode(err, api.CodeBadRequest) {
		t.Fatalf("non-loopback redirect: %v", err)
	}
	evs, err := e.admin.Audit(ctx, apiclient.AuditFilter{Type: "login.fail", Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) < 2 {
		t.Fatalf("failures not audited: %+v", evs)
	}
	e.checkNoSecrets(code, code3)
}

// idToken runs a code flow at o for client clientID and returns the raw ID
// token and the nonce it carries (the test plays the relying party).
func idToken(t *testing.T, o *oidctest.OP, clientID string) (string, string) {
	t.Helper()
	verifier := oauth2.GenerateVerifier()
	conf := &oauth2.Config{
		ClientID: clientID, ClientSecret: oidctest.ClientSecret, RedirectURL: "http://127.0.0.1:9/callback",
		Endpoint: oauth2.Endpoint{AuthURL: o.Issuer + "/auth", TokenURL: o.Issuer + "/oauth/token"},
		Scopes:   []string{"openid", "profile", "groups"},
	}
	nonce := "n_" + oauth2.GenerateVerifier()
	cb := oidctest.BrowserLogin(t, conf.AuthCodeURL("st", oauth2.S256ChallengeOption(verifier), oauth2.SetAuthURLParam("nonce", nonce)), "mallory")
	tok, err := conf.Exchange(context.Background(), cb.Query().Get("code"), oauth2.VerifierOption(verifier))
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := tok.Extra("id_token").(string)
	if raw == "" {
		t.Fatal("no id_token")
	}
	return raw, nonce
}

func TestOIDCTokenValidation(t *testing.T) {
	e := newOIDCEnv(t)
	other := oidctest.NewOP(t, oidctest.ClientID) // same client ID, another issuer
	wrongAud := oidctest.NewOP(t, "another-client")
	good, nonce := idToken(t, e.op, oidctest.ClientID)
	ctx := context.Background()

	id, err := e.c.oidc.verify(ctx, good, nonce)
	if err != nil || id.user != "mallory" || id.issuer != e.op.Issuer {
		t.Fatalf("good token: %+v, %v", id, err)
	}

	fromOther, otherNonce := idToken(t, other, oidctest.ClientID)
	// Another client's token at our issuer: build it at an OP whose issuer
	// is ours is not possible, so the wrong-audience case uses a third OP
	// configured as a relying party of its own.
	wrongAudTok, wrongAudNonce := idToken(t, wrongAud, "another-client")
	rpWrongAud, err := newOIDCRP(OIDCConfig{Issuer: wrongAud.Issuer, ClientID: oidctest.ClientID}, slog.New(slog.DiscardHandler), time.Now)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rpWrongAud.close)

	parts := strings.Split(good, ".")
	sig, _ := base64.RawURLEncoding.DecodeString(parts[2])
	sig[len(sig)/2] ^= 0x55
	badSig := parts[0] + "." + parts[1] + "." + base64.RawURLEncoding.EncodeToString(sig)
	// A payload that says something else under the original signature.
	payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
	forged := parts[0] + "." + base64.RawURLEncoding.EncodeToString(bytes.Replace(payload, []byte(`"mallory"`), []byte(`"admin00"`), 1)) + "." + parts[2]

	for _, tc := range []struct {
		name  string
		rp    *oidcRP
		token string
		nonce string
		want  string
	}{
		// go-oidc checks the signature against our issuer's keys first.
		{"other issuer", e.c.oidc, fromOther, otherNonce, "signature"},
		{"wrong audience", rpWrongAud, wrongAudTok, wrongAudNonce, "audience"},
		{"bad signature", e.c.oidc, badSig, nonce, "signature"},
		{"forged payload", e.c.oidc, forged, nonce, "signature"},
		{"wrong nonce", e.c.oidc, good, "n_other", "nonce"},
		{"not a JWT", e.c.oidc, "abc", "", "malformed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.rp.verify(ctx, tc.token, tc.nonce)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want one saying %q", err, tc.want)
			}
		})
	}
	t.Run("expired", func(t *testing.T) {
		e.clock.Store(int64(2 * time.Hour))
		defer e.clock.Store(0)
		if _, err := e.c.oidc.verify(ctx, good, nonce); err == nil || !strings.Contains(err.Error(), "expired") {
			t.Fatalf("expired token: %v", err)
		}
	})
	e.checkNoSecrets(good, fromOther)
}

// checkNoSecrets fails if the controller's log or audit holds any of
// secrets, or the client secret.
func (e *oidcEnv) checkNoSecrets(secrets ...string) {
	t := e.t
	t.Helper()
	evs, err := e.admin.Audit(context.Background(), apiclient.AuditFilter{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	text := e.logBuf.String() + fmt.Sprintf("%+v", evs)
	for _, s := range append(secrets, oidctest.ClientSecret) {
		if s == "" {
			continue
		}
		if strings.Contains(text, s) {
			t.Errorf("log or audit holds a secret %.12s…", s)
		}
	}
}

func TestOIDCLocalNameAndDisabledUser(t *testing.T) {
	e := newOIDCEnv(t)
	ctx := context.Background()
	// A local user named like the IdP's user: refused, never taken over.
	e.must(e.admin.AddUser(ctx, api.UserCreate{Name: "bob", Password: testPassword}))
	if _, _, _, err := e.codeLogin("bob"); !apiclient.IsCode(err, api.CodeUnauthorized) || !strings.Contains(err.Error(), "taken") {
		t.Fatalf("IdP bob over local bob: %v", err)
	}
	// A disabled OIDC user cannot log in again.
	if _, _, _, err := e.codeLogin("alice"); err != nil {
		t.Fatal(err)
	}
	disabled := true
	e.must(e.admin.UpdateUser(ctx, "alice", api.UserUpdate{Disabled: &disabled}))
	if _, _, _, err := e.codeLogin("alice"); !apiclient.IsCode(err, api.CodeForbidden) {
		t.Fatalf("disabled alice: %v", err)
	}
}

func TestOIDCNotConfigured(t *testing.T) {
	e := newTestEnv(t, Config{}, 0)
	pinned, err := apiclient.New(apiclient.Config{URL: e.url, Fingerprint: e.fp})
	if err != nil {
		t.Fatal(err)
	}
	if err := pinned.Do(context.Background(), "POST", "/v1/login/oidc/device", nil, nil); !apiclient.IsCode(err, api.CodeNotFound) || !strings.Contains(err.Error(), "--oidc-issuer") {
		t.Fatalf("device start without OIDC: %v", err)
	}
}

func TestOIDCPendingLoginsCappedPerSource(t *testing.T) {
	e := newOIDCEnv(t)
	start := func() error {
		return e.pinned.Do(context.Background(), "POST", "/v1/login/oidc/auth", api.OIDCAuthStart{
			RedirectURI: "http://127.0.0.1:9/callback", CodeChallenge: oauth2.S256ChallengeFromVerifier(oauth2.GenerateVerifier()),
		}, nil)
	}
	for i := range maxPendingOIDCPerSource {
		if err := start(); err != nil {
			t.Fatalf("login %d: %v", i, err)
		}
	}
	if err := start(); !apiclient.IsCode(err, api.CodeRateLimited) {
		t.Fatalf("login past the cap: %v, want %s", err, api.CodeRateLimited)
	}
}

// TestOIDCMFAFromAMR: a login whose ID token says the IdP checked a second
// factor (amr) counts as MFA at its auth_time, so rules with mfa_within
// allow it; a password-only IdP login does not.
func TestOIDCMFAFromAMR(t *testing.T) {
	e := newOIDCEnv(t)
	ctx := context.Background()
	e.setupWiki(api.RuleConditions{MFAWithin: api.Duration(15 * time.Minute)})

	resp, creds, _, err := e.codeLogin("alice")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.deviceFromLogin(creds, resp).grant("wiki.corp.internal"); !apiclient.IsCode(err, api.CodeDenied) {
		t.Fatalf("password-only IdP login: %v; want denied (no MFA)", err)
	}
	e.op.SetAMR("alice", "pwd", "otp")
	resp, creds, _, err = e.codeLogin("alice")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.deviceFromLogin(creds, resp).grant("wiki.corp.internal"); err != nil {
		t.Fatalf("IdP login with otp: %v", err)
	}
	evs, err := e.admin.Audit(ctx, apiclient.AuditFilter{Type: "login", User: "alice", Limit: 1})
	if err != nil || len(evs) != 1 || !strings.Contains(evs[0].Reason, "MFA at the identity provider") {
		t.Errorf("login audit: %+v, %v", evs, err)
	}
}

func TestMFATimeFromClaims(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	iat := now.Add(-time.Minute)
	authTime := float64(now.Add(-10 * time.Minute).Unix())
	tests := []struct {
		name   string
		claims map[string]any
		want   time.Time
	}{
		{"no amr", map[string]any{"auth_time": authTime}, time.Time{}},
		{"password only", map[string]any{"amr": []any{"pwd"}, "auth_time": authTime}, time.Time{}},
		{"otp at auth_time", map[string]any{"amr": []any{"pwd", "otp"}, "auth_time": authTime}, now.Add(-10 * time.Minute)},
		{"mfa without auth_time uses iat", map[string]any{"amr": []any{"mfa"}}, iat},
		{"auth_time in the future is now", map[string]any{"amr": []any{"hwk"}, "auth_time": float64(now.Add(time.Hour).Unix())}, now},
		{"amr not a list", map[string]any{"amr": "otp"}, time.Time{}},
		{"amr with junk", map[string]any{"amr": []any{7, nil, "otp"}}, iat},
	}
	for _, tt := range tests {
		if got := mfaTime(tt.claims, DefaultOIDCMFAMethods, iat, now); !got.Equal(tt.want) {
			t.Errorf("%s: mfaTime = %v, want %v", tt.name, got, tt.want)
		}
	}
}
