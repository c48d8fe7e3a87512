package controller

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/keyhole-net/keyhole/controller/auth"
	"github.com/keyhole-net/keyhole/controller/store"
	"github.com/keyhole-net/keyhole/internal/api"
)

// loginProof is how a login proved who the user is.
type loginProof struct {
	how   string    // for the audit trail: "password", "password and TOTP code", …
	mfaAt time.Time // when a second factor was checked; zero for none
}

// checkLogin authenticates a password login and, for a user with
// confirmed MFA, its second factor, under the failed-login throttle.
// Every refusal is audited (login.fail, login.locked, login.mfa_required)
// with user, source and reason, never with what was typed; finishLogin
// audits the success.
func (c *Controller) checkLogin(r *http.Request, req api.LoginRequest, now time.Time) (store.User, loginProof, error) {
	ctx, src := r.Context(), remoteAddr(r)
	refuse := func(typ, reason string, err error) (store.User, loginProof, error) {
		c.audit(ctx, api.AuditEvent{Type: typ, Time: now, Actor: "user:" + req.User, User: req.User, Source: src, Reason: reason})
		c.log.Info("login refused", "user", req.User, "source", src, "reason", reason)
		return store.User{}, loginProof{}, err
	}
	// While locked, credentials are not even looked at: guessing stops,
	// and the answer cannot tell a right guess from a wrong one.
	wait, why, err := c.logins.admit(ctx, req.User, src, now)
	if err != nil {
		// Fail closed: a guess the cluster cannot count is not checked.
		c.log.Error("login refused: failed-login counts unreadable", "user", req.User, "source", src, "err", err)
		return store.User{}, loginProof{}, errf(http.StatusServiceUnavailable, api.CodeUnavailable, "logins are unavailable: the controller cannot read its store; try again")
	}
	if wait > 0 {
		e := errf(http.StatusTooManyRequests, api.CodeRateLimited, "too many failed logins: %s; try again in %s", why, wait.Round(time.Second))
		e.retryAfter = wait
		return refuse("login.locked", why, e)
	}
	done := false
	end := func(o attemptOutcome) time.Duration {
		done = true
		d, err := c.logins.done(ctx, req.User, src, now, o)
		if err != nil {
			c.log.Error("failed-login count not stored; this controller still counts it", "user", req.User, "source", src, "err", err)
		}
		return d
	}
	defer func() {
		if !done { // an internal error
			end(attemptOther)
		}
	}()
	fail := func(reason string, err error) (store.User, loginProof, error) {
		if d := end(attemptFailed); d > 0 {
			reason += fmt.Sprintf("; locked out for %s", d)
		}
		return refuse("login.fail", reason, err)
	}
	wrong := unauthorized("wrong user name or password")
	u, err := c.store.User(ctx, req.User)
	if errors.Is(err, store.ErrNotFound) {
		auth.DummyVerify(req.Password, c.cfg.Password)
		return fail("unknown user", wrong)
	}
	if err != nil {
		return store.User{}, loginProof{}, err
	}
	if u.PasswordHash == "" {
		auth.DummyVerify(req.Password, c.cfg.Password)
		return fail("no password set", wrong)
	}
	ok, err := auth.VerifyPassword(u.PasswordHash, req.Password)
	if err != nil {
		return store.User{}, loginProof{}, err
	}
	if !ok {
		return fail("wrong password", wrong)
	}
	if u.Disabled {
		end(attemptOther)
		return refuse("login.fail", "user disabled", errf(http.StatusForbidden, api.CodeForbidden, "user %s is disabled; ask an admin", u.Name))
	}
	m, err := c.store.MFA(ctx, u.Name)
	if errors.Is(err, store.ErrNotFound) || (err == nil && m.ConfirmedAt.IsZero()) {
		end(attemptSucceeded)
		return u, loginProof{how: "password"}, nil
	}
	if err != nil {
		return store.User{}, loginProof{}, err
	}
	if req.MFACode == "" {
		// Neither a failure (it is how a client learns to ask for the
		// code) nor a success: forgetting the user's failures here would
		// let code guesses go on for ever between password-only logins.
		end(attemptOther)
		return refuse("login.mfa_required", "password right; MFA code required",
			errf(http.StatusUnauthorized, api.CodeMFARequired, "user %s has MFA: give the code the authenticator app shows, or a recovery code (keyhole login --totp CODE)", u.Name))
	}
	how, err := c.checkMFACode(ctx, m, req.MFACode, now)
	var bad errMFA
	if errors.As(err, &bad) {
		return fail(string(bad), errf(http.StatusUnauthorized, api.CodeMFAInvalid, "wrong or already used MFA code; wait for the next code, or use a recovery code"))
	}
	if err != nil {
		return store.User{}, loginProof{}, err
	}
	end(attemptSucceeded)
	return u, loginProof{how: how, mfaAt: now}, nil
}
