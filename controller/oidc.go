package controller

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"

	"github.com/keyhole-net/keyhole/controller/auth"
	"github.com/keyhole-net/keyhole/controller/store"
	"github.com/keyhole-net/keyhole/internal/api"
)

// Defaults for OIDCConfig fields left zero.
const (
	DefaultOIDCUserClaim    = "preferred_username"
	DefaultOIDCGroupsClaim  = "groups"
	DefaultOIDCLoginTimeout = 10 * time.Minute
)

// DefaultOIDCScopes are the scopes asked for when OIDCConfig.Scopes is empty.
var DefaultOIDCScopes = []string{oidc.ScopeOpenID, "profile", "email"}

// maxPendingOIDC caps logins started and not finished: each holds a little
// memory and, for the device flow, a goroutine polling the IdP.
// maxPendingOIDCPerSource keeps one address from taking all of them (or
// from making the controller poll the IdP on its behalf at scale).
const (
	maxPendingOIDC          = 1024
	maxPendingOIDCPerSource = 8
)

// OIDCConfig makes the controller an OpenID Connect relying party: users log
// in at the identity provider (keyhole login --oidc) and are provisioned on
// their first login, with groups from a claim refreshed at every login.
type OIDCConfig struct {
	// Issuer is the provider's issuer URL (https, or http on loopback).
	Issuer string
	// ClientID and ClientSecret are the controller's registration at the
	// provider (a confidential client; the CLI never sees the secret).
	ClientID     string
	ClientSecret auth.Token
	// Scopes asked for (default DefaultOIDCScopes; "openid" is added).
	Scopes []string
	// UserClaim names the claim that becomes the Keyhole user name of a
	// new user: "preferred_username" (default), "email" (must be verified
	// when the IdP says whether it is) or "sub".
	UserClaim string
	// GroupsClaim names the claim with the user's groups (default
	// "groups"). Groups that do not exist in Keyhole are ignored.
	GroupsClaim string
	// MFAMethods are the authentication methods (RFC 8176 "amr" values)
	// that count as a second factor: an ID token whose amr holds one of
	// them makes the session count as MFA at its auth_time (default
	// DefaultOIDCMFAMethods). Without such a value the session has no MFA,
	// and rules with mfa_within deny it.
	MFAMethods []string
	// LoginTimeout bounds a login from start to finish (default 10m; the
	// IdP's device code expiry when shorter).
	LoginTimeout time.Duration
	// HTTPClient talks to the provider (nil: a client with a 30s timeout).
	HTTPClient *http.Client
}

func (cfg *OIDCConfig) setDefaults() error {
	u, err := url.Parse(cfg.Issuer)
	if err != nil || u.Host == "" || (u.Scheme != "https" && !(u.Scheme == "http" && isLoopbackHost(u.Hostname()))) {
		return fmt.Errorf("oidc issuer %q: want an https URL (http only on loopback)", cfg.Issuer)
	}
	if cfg.ClientID == "" {
		return errors.New("oidc: a client ID is required with an issuer")
	}
	if len(cfg.Scopes) == 0 {
		cfg.Scopes = DefaultOIDCScopes
	}
	if !slices.Contains(cfg.Scopes, oidc.ScopeOpenID) {
		cfg.Scopes = append([]string{oidc.ScopeOpenID}, cfg.Scopes...)
	}
	if cfg.UserClaim == "" {
		cfg.UserClaim = DefaultOIDCUserClaim
	}
	if cfg.GroupsClaim == "" {
		cfg.GroupsClaim = DefaultOIDCGroupsClaim
	}
	if cfg.LoginTimeout <= 0 {
		cfg.LoginTimeout = DefaultOIDCLoginTimeout
	}
	if len(cfg.MFAMethods) == 0 {
		cfg.MFAMethods = DefaultOIDCMFAMethods
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: 30 * time.Second}
	}
	return nil
}

func isLoopbackHost(h string) bool {
	if h == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(h)
	return err == nil && a.IsLoopback()
}

// oidcRP is the relying party: provider discovery, token exchange and ID
// token validation (all by go-oidc and x/oauth2), and the logins under way.
type oidcRP struct {
	cfg OIDCConfig
	log *slog.Logger
	now func() time.Time

	// ctx outlives requests: discovery and the JWKS key set keep it, and
	// device-flow pollers run under it. close cancels it and waits for them.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex // guards provider, pending
	provider *oidc.Provider
	pending  map[string]*oidcPending // by auth.HashToken(handle)
}

// oidcPending is a login started and not yet finished.
type oidcPending struct {
	flow    string // "device" or "code"
	expires time.Time
	source  string // client address, for the per-source cap

	// Authorization code flow.
	state, nonce, redirectURI, challenge string

	// Device flow: set by the poller when it ends.
	interval time.Duration
	done     bool
	identity oidcIdentity
	err      error
}

// oidcIdentity is what a valid ID token says about the user.
type oidcIdentity struct {
	issuer, subject string
	user            string
	groups          []string
	// mfaAt is when the IdP checked a second factor (its amr names one of
	// MFAMethods), at auth_time; zero for none.
	mfaAt time.Time
}

func newOIDCRP(cfg OIDCConfig, log *slog.Logger, now func() time.Time) (*oidcRP, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(oidc.ClientContext(context.Background(), cfg.HTTPClient))
	return &oidcRP{cfg: cfg, log: log, now: now, ctx: ctx, cancel: cancel, pending: make(map[string]*oidcPending)}, nil
}

// close stops the device-flow pollers and waits for them.
func (rp *oidcRP) close() {
	rp.cancel()
	rp.wg.Wait()
}

// getProvider discovers the provider on first use (the controller starts
// even when the IdP is down; a failed discovery is retried on the next login).
func (rp *oidcRP) getProvider() (*oidc.Provider, error) {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	if rp.provider != nil {
		return rp.provider, nil
	}
	p, err := oidc.NewProvider(rp.ctx, rp.cfg.Issuer)
	if err != nil {
		return nil, errf(http.StatusServiceUnavailable, api.CodeUnavailable, "identity provider %s not reachable or not valid: %v", rp.cfg.Issuer, err)
	}
	rp.provider = p
	return p, nil
}

func (rp *oidcRP) oauth2Config(p *oidc.Provider, redirectURI string) *oauth2.Config {
	return &oauth2.Config{
		ClientID: rp.cfg.ClientID, ClientSecret: rp.cfg.ClientSecret.Reveal(),
		Endpoint: p.Endpoint(), RedirectURL: redirectURI, Scopes: rp.cfg.Scopes,
	}
}

// httpCtx carries the provider HTTP client for x/oauth2 and go-oidc.
func (rp *oidcRP) httpCtx(ctx context.Context) context.Context {
	return oidc.ClientContext(context.WithValue(ctx, oauth2.HTTPClient, rp.cfg.HTTPClient), rp.cfg.HTTPClient)
}

// verify validates an ID token with go-oidc (signature against the
// provider's JWKS, issuer, audience, expiry) and, for the code flow, the
// nonce; it returns the identity the token carries.
func (rp *oidcRP) verify(ctx context.Context, rawIDToken, nonce string) (oidcIdentity, error) {
	p, err := rp.getProvider()
	if err != nil {
		return oidcIdentity{}, err
	}
	tok, err := p.VerifierContext(rp.ctx, &oidc.Config{ClientID: rp.cfg.ClientID, Now: rp.now}).Verify(rp.httpCtx(ctx), rawIDToken)
	if err != nil {
		return oidcIdentity{}, fmt.Errorf("id token not valid: %w", err)
	}
	if nonce != "" && subtle.ConstantTimeCompare([]byte(tok.Nonce), []byte(nonce)) != 1 {
		return oidcIdentity{}, errors.New("id token not valid: nonce does not match this login (replayed token?)")
	}
	var claims map[string]any
	if err := tok.Claims(&claims); err != nil {
		return oidcIdentity{}, fmt.Errorf("id token claims: %w", err)
	}
	id := oidcIdentity{issuer: tok.Issuer, subject: tok.Subject}
	switch rp.cfg.UserClaim {
	case "sub":
		id.user = tok.Subject
	default:
		id.user, _ = claims[rp.cfg.UserClaim].(string)
		if v, ok := claims["email_verified"].(bool); rp.cfg.UserClaim == "email" && ok && !v {
			return oidcIdentity{}, errors.New("the identity provider has not verified the user's email address")
		}
	}
	if id.user == "" {
		return oidcIdentity{}, fmt.Errorf("id token has no %q claim to name the user; check --oidc-user-claim and the scopes", rp.cfg.UserClaim)
	}
	id.mfaAt = mfaTime(claims, rp.cfg.MFAMethods, tok.IssuedAt, rp.now())
	switch g := claims[rp.cfg.GroupsClaim].(type) {
	case []any:
		for _, v := range g {
			if s, ok := v.(string); ok && namePattern.MatchString(s) {
				id.groups = append(id.groups, s)
			}
		}
	case string:
		if namePattern.MatchString(g) {
			id.groups = []string{g}
		}
	}
	return id, nil
}

// DefaultOIDCMFAMethods are the RFC 8176 authentication methods that count
// as a second factor: "mfa" itself, one-time codes, hardware and software
// keys (passkeys), smart cards and biometrics.
var DefaultOIDCMFAMethods = []string{"mfa", "otp", "hwk", "swk", "sc", "fpt", "face", "iris", "retina"}

// mfaTime is when an ID token's login passed MFA: its auth_time (else its
// iat), if its amr claim holds one of methods, and never after now; zero
// otherwise.
func mfaTime(claims map[string]any, methods []string, issuedAt, now time.Time) time.Time {
	amr, _ := claims["amr"].([]any)
	if !slices.ContainsFunc(amr, func(v any) bool { s, ok := v.(string); return ok && slices.Contains(methods, s) }) {
		return time.Time{}
	}
	at := issuedAt
	if f, ok := claims["auth_time"].(float64); ok && f > 0 && f < 1<<40 {
		at = time.Unix(int64(f), 0)
	}
	if at.IsZero() || at.After(now) {
		at = now // an IdP clock ahead of ours must not stretch MFA's age
	}
	return at.UTC()
}

// add records a pending login under a new handle.
func (rp *oidcRP) add(p *oidcPending) (string, error) {
	h, err := auth.NewToken("khoidc")
	if err != nil {
		return "", err
	}
	now := rp.now()
	rp.mu.Lock()
	defer rp.mu.Unlock()
	for k, q := range rp.pending {
		if !now.Before(q.expires) {
			delete(rp.pending, k)
		}
	}
	fromSource := 0
	for _, q := range rp.pending {
		if q.source == p.source {
			fromSource++
		}
	}
	if len(rp.pending) >= maxPendingOIDC || fromSource >= maxPendingOIDCPerSource {
		e := errf(http.StatusTooManyRequests, api.CodeRateLimited, "too many OIDC logins under way; finish one or try again in a minute")
		e.retryAfter = time.Minute
		return "", e
	}
	rp.pending[auth.HashToken(h.Reveal())] = p
	return h.Reveal(), nil
}

// take returns the pending login of handle and removes it, unless keep
// says it must stay (a device login the user has not approved yet).
func (rp *oidcRP) take(handle, flow string, keep func(*oidcPending) bool) (*oidcPending, error) {
	k := auth.HashToken(handle)
	rp.mu.Lock()
	defer rp.mu.Unlock()
	p, ok := rp.pending[k]
	if !ok || p.flow != flow || !rp.now().Before(p.expires) {
		delete(rp.pending, k)
		return nil, notFound("login unknown, finished or expired; run keyhole login --oidc again")
	}
	if keep != nil && keep(p) {
		// Copy under the lock: the poller writes p.
		q := *p
		return &q, nil
	}
	delete(rp.pending, k)
	return p, nil
}

// pollDevice polls the IdP's token endpoint for a device login until the
// user approves, refuses, or the code expires. x/oauth2 keeps the interval
// and adds 5s at each slow_down (RFC 8628 §3.5).
func (rp *oidcRP) pollDevice(key string, conf *oauth2.Config, da *oauth2.DeviceAuthResponse, deadline time.Time) {
	defer rp.wg.Done()
	ctx, cancel := context.WithDeadline(rp.ctx, deadline)
	defer cancel()
	var id oidcIdentity
	tok, err := conf.DeviceAccessToken(rp.httpCtx(ctx), da)
	if err == nil {
		raw, _ := tok.Extra("id_token").(string)
		if raw == "" {
			err = errors.New("the identity provider answered without an id_token; is the openid scope allowed for this client?")
		} else {
			id, err = rp.verify(ctx, raw, "")
		}
	} else {
		err = describeTokenError(err)
	}
	rp.mu.Lock()
	defer rp.mu.Unlock()
	if p := rp.pending[key]; p != nil {
		p.done, p.identity, p.err = true, id, err
	}
}

// describeTokenError turns a token endpoint error into a message without
// the response body (error codes and descriptions only; never a token).
func describeTokenError(err error) error {
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) {
		if errors.Is(err, context.DeadlineExceeded) {
			return errors.New("the login expired before the user approved it")
		}
		return err
	}
	switch re.ErrorCode {
	case "invalid_grant":
		return fmt.Errorf("the identity provider refused the authorization code (invalid_grant: %s): it was used already, expired, or belongs to another login", re.ErrorDescription)
	case "access_denied":
		return errors.New("the user denied the login at the identity provider")
	case "expired_token":
		return errors.New("the device code expired before the user approved it")
	case "":
		return fmt.Errorf("the identity provider's token endpoint answered HTTP %d", re.Response.StatusCode)
	}
	return fmt.Errorf("the identity provider refused the token request (%s: %s)", re.ErrorCode, re.ErrorDescription)
}

// oidcRoutes registers the OIDC login endpoints.
func (c *Controller) oidcRoutes(h func(string, handler)) {
	h("POST /v1/login/oidc/device", c.handleOIDCDeviceStart)
	h("POST /v1/login/oidc/device/poll", c.handleOIDCDevicePoll)
	h("POST /v1/login/oidc/auth", c.handleOIDCAuthStart)
	h("POST /v1/login/oidc/auth/finish", c.handleOIDCAuthFinish)
}

func (c *Controller) oidcOrError() (*oidcRP, error) {
	if c.oidc == nil {
		return nil, errf(http.StatusNotFound, api.CodeNotFound, "this controller has no OIDC provider configured (--oidc-issuer); log in with --user and a password")
	}
	return c.oidc, nil
}

func (c *Controller) handleOIDCDeviceStart(w http.ResponseWriter, r *http.Request) error {
	rp, err := c.oidcOrError()
	if err != nil {
		return err
	}
	p, err := rp.getProvider()
	if err != nil {
		return err
	}
	if p.Endpoint().DeviceAuthURL == "" {
		return badRequest("the identity provider offers no device authorization endpoint; use keyhole login --oidc --browser")
	}
	conf := rp.oauth2Config(p, "")
	da, err := conf.DeviceAuth(rp.httpCtx(r.Context()))
	if err != nil {
		return errf(http.StatusBadGateway, api.CodeUnavailable, "identity provider: %v", describeTokenError(err))
	}
	now := rp.now()
	deadline := now.Add(rp.cfg.LoginTimeout)
	if !da.Expiry.IsZero() && da.Expiry.Before(deadline) {
		deadline = da.Expiry
	}
	interval := time.Duration(da.Interval) * time.Second
	if interval <= 0 {
		interval = 5 * time.Second
	}
	pend := &oidcPending{flow: "device", expires: deadline, interval: interval, source: remoteAddr(r)}
	handle, err := rp.add(pend)
	if err != nil {
		return err
	}
	rp.wg.Add(1)
	go rp.pollDevice(auth.HashToken(handle), conf, da, deadline)
	writeJSON(w, http.StatusOK, api.OIDCDeviceStart{
		Handle: handle, VerificationURI: da.VerificationURI, VerificationURIComplete: da.VerificationURIComplete,
		UserCode: da.UserCode, ExpiresAt: deadline, Interval: api.Duration(interval),
	})
	return nil
}

func (c *Controller) handleOIDCDevicePoll(w http.ResponseWriter, r *http.Request) error {
	rp, err := c.oidcOrError()
	if err != nil {
		return err
	}
	var req api.OIDCDevicePoll
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if err := checkLoginDevice(&req.LoginDevice); err != nil {
		return err
	}
	p, err := rp.take(req.Handle, "device", func(p *oidcPending) bool { return !p.done })
	if err != nil {
		return err
	}
	if !p.done {
		e := errf(http.StatusBadRequest, api.CodeAuthorizationPending, "waiting for the user to approve the login at the identity provider")
		e.retryAfter = p.interval
		return e
	}
	if p.err != nil {
		return c.oidcFail(r, "device", p.identity, p.err)
	}
	return c.oidcFinish(w, r, "device", p.identity, req.LoginDevice)
}

func (c *Controller) handleOIDCAuthStart(w http.ResponseWriter, r *http.Request) error {
	rp, err := c.oidcOrError()
	if err != nil {
		return err
	}
	var req api.OIDCAuthStart
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if err := checkLoopbackRedirect(req.RedirectURI); err != nil {
		return err
	}
	if len(req.CodeChallenge) != 43 || strings.ContainsFunc(req.CodeChallenge, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_')
	}) {
		return badRequest("code_challenge: want the 43-character base64url SHA-256 of the PKCE verifier (S256)")
	}
	p, err := rp.getProvider()
	if err != nil {
		return err
	}
	state, err := auth.NewToken("st")
	if err != nil {
		return err
	}
	nonce, err := auth.NewToken("n")
	if err != nil {
		return err
	}
	pend := &oidcPending{
		flow: "code", expires: rp.now().Add(rp.cfg.LoginTimeout), source: remoteAddr(r),
		state: state.Reveal(), nonce: nonce.Reveal(), redirectURI: req.RedirectURI, challenge: req.CodeChallenge,
	}
	handle, err := rp.add(pend)
	if err != nil {
		return err
	}
	authURL := rp.oauth2Config(p, req.RedirectURI).AuthCodeURL(pend.state, oidc.Nonce(pend.nonce),
		oauth2.SetAuthURLParam("code_challenge", req.CodeChallenge),
		oauth2.SetAuthURLParam("code_challenge_method", "S256"))
	writeJSON(w, http.StatusOK, api.OIDCAuth{Handle: handle, AuthURL: authURL, State: pend.state, ExpiresAt: pend.expires})
	return nil
}

// checkLoopbackRedirect accepts only http://127.0.0.1:PORT/… or
// http://[::1]:PORT/… (RFC 8252 §7.3, §8.3: an IP literal, not localhost).
func checkLoopbackRedirect(s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "http" || u.User != nil || u.Fragment != "" || u.Port() == "" {
		return badRequest("redirect_uri %q: want http://127.0.0.1:PORT/PATH (the CLI's loopback listener)", s)
	}
	a, err := netip.ParseAddr(u.Hostname())
	if err != nil || !a.IsLoopback() {
		return badRequest("redirect_uri %q: want a loopback IP literal (127.0.0.1 or [::1])", s)
	}
	return nil
}

func (c *Controller) handleOIDCAuthFinish(w http.ResponseWriter, r *http.Request) error {
	rp, err := c.oidcOrError()
	if err != nil {
		return err
	}
	var req api.OIDCAuthFinish
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if err := checkLoginDevice(&req.LoginDevice); err != nil {
		return err
	}
	if req.Code == "" || req.CodeVerifier == "" {
		return badRequest("code and code_verifier are required")
	}
	// One try per login, whatever the outcome: a second finish, a
	// replayed code included, needs a new start.
	p, err := rp.take(req.Handle, "code", nil)
	if err != nil {
		return err
	}
	if subtle.ConstantTimeCompare([]byte(req.State), []byte(p.state)) != 1 {
		return c.oidcFail(r, "code", oidcIdentity{}, errors.New("state does not match this login (a forged or crossed redirect)"))
	}
	if subtle.ConstantTimeCompare([]byte(oauth2.S256ChallengeFromVerifier(req.CodeVerifier)), []byte(p.challenge)) != 1 {
		return c.oidcFail(r, "code", oidcIdentity{}, errors.New("code_verifier does not match the PKCE challenge of this login"))
	}
	prov, err := rp.getProvider()
	if err != nil {
		return err
	}
	tok, err := rp.oauth2Config(prov, p.redirectURI).Exchange(rp.httpCtx(r.Context()), req.Code, oauth2.VerifierOption(req.CodeVerifier))
	if err != nil {
		return c.oidcFail(r, "code", oidcIdentity{}, describeTokenError(err))
	}
	raw, _ := tok.Extra("id_token").(string)
	if raw == "" {
		return c.oidcFail(r, "code", oidcIdentity{}, errors.New("the identity provider answered without an id_token; is the openid scope allowed for this client?"))
	}
	id, err := rp.verify(r.Context(), raw, p.nonce)
	if err != nil {
		return c.oidcFail(r, "code", oidcIdentity{}, err)
	}
	return c.oidcFinish(w, r, "code", id, req.LoginDevice)
}

// oidcFail audits and logs a refused OIDC login and answers 401 with why.
// Reasons name the issuer and subject, never a token or code.
func (c *Controller) oidcFail(r *http.Request, flow string, id oidcIdentity, why error) error {
	var ae *apiError
	if errors.As(why, &ae) && ae.status >= 500 {
		return why
	}
	issuer := id.issuer
	if issuer == "" {
		issuer = c.oidc.cfg.Issuer
	}
	reason := fmt.Sprintf("oidc %s flow: issuer %s", flow, issuer)
	if id.subject != "" {
		reason += ", subject " + id.subject
	}
	reason += ": " + why.Error()
	actor := "oidc:" + issuer
	if id.subject != "" {
		actor += "#" + id.subject
	}
	c.audit(r.Context(), api.AuditEvent{Type: "login.fail", Time: c.now(), Actor: actor, User: id.user, Source: remoteAddr(r), Reason: reason})
	c.log.Info("oidc login refused", "flow", flow, "issuer", issuer, "subject", id.subject, "source", remoteAddr(r), "reason", why.Error())
	return unauthorized("single sign-on failed: %v", why)
}

// oidcFinish provisions (or finds) the user of a verified identity, with
// the groups of this login, and completes the login as a password login
// does.
func (c *Controller) oidcFinish(w http.ResponseWriter, r *http.Request, flow string, id oidcIdentity, dev api.LoginDevice) error {
	if err := checkUserName(id.user); err != nil {
		return c.oidcFail(r, flow, id, fmt.Errorf("the %s claim %q is not a valid Keyhole user name", c.oidc.cfg.UserClaim, id.user))
	}
	u, err := c.store.ProvisionOIDCUser(r.Context(), store.OIDCLogin{
		Issuer: id.issuer, Subject: id.subject, User: id.user, Groups: id.groups, Now: c.now(),
	})
	if errors.Is(err, store.ErrConflict) {
		return c.oidcFail(r, flow, id, fmt.Errorf("user name %s is taken by a local user or another identity; an admin must rename or remove it", id.user))
	}
	if err != nil {
		return err
	}
	if u.Disabled {
		c.audit(r.Context(), api.AuditEvent{Type: "login.fail", Time: c.now(), Actor: "user:" + u.Name, User: u.Name, Source: remoteAddr(r),
			Reason: fmt.Sprintf("oidc %s flow: issuer %s, subject %s: user disabled", flow, id.issuer, id.subject)})
		return errf(http.StatusForbidden, api.CodeForbidden, "user %s is disabled; ask an admin", u.Name)
	}
	if dev.DeviceID != "" {
		// The client offers its previous device before it knows who signs
		// in at the IdP: another user's (or a removed) device is not an
		// error here, the login enrols a new one.
		if d, err := c.store.Device(r.Context(), dev.DeviceID); err != nil || d.User != u.Name {
			dev.DeviceID = ""
		}
	}
	how := fmt.Sprintf("oidc %s flow: issuer %s, subject %s, groups %v", flow, id.issuer, id.subject, u.Groups)
	if !id.mfaAt.IsZero() {
		how += ", MFA at the identity provider"
	}
	return c.finishLogin(w, r, u, dev, loginProof{how: how, mfaAt: id.mfaAt})
}
