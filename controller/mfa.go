package controller

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"time"

	"github.com/keyhole-net/keyhole/controller/auth"
	"github.com/keyhole-net/keyhole/controller/store"
	"github.com/keyhole-net/keyhole/internal/api"
)

const (
	// mfaIssuer names the account in authenticator apps.
	mfaIssuer = "Keyhole"
	// mfaEnrolTTL is how long a new enrolment waits for its first code.
	mfaEnrolTTL = 10 * time.Minute
	// maxMFACodeBytes bounds a code or recovery code in a request.
	maxMFACodeBytes = 64
)

// loadMFASealer returns the sealer of TOTP secrets: cfg.MFAKey, or the key
// in DATA/mfa.key (hex), created on first start.
func loadMFASealer(cfg Config) (*auth.Sealer, error) {
	key := cfg.MFAKey
	if len(key) == 0 {
		path := filepath.Join(cfg.DataDir, "mfa.key")
		s, err := loadOrCreateSecret(path)
		if err != nil {
			return nil, fmt.Errorf("mfa key: %w", err)
		}
		if key, err = hex.DecodeString(s); err != nil {
			return nil, fmt.Errorf("mfa key %s: want %d bytes in hex", path, auth.SealKeyBytes)
		}
	}
	s, err := auth.NewSealer(key)
	if err != nil {
		return nil, fmt.Errorf("mfa key: %w", err)
	}
	return s, nil
}

// mfaSecret opens m's sealed TOTP secret. The user name is the seal's
// context: a secret copied to another user's row does not open there.
func (c *Controller) mfaSecret(m store.MFA) (auth.Token, error) {
	b, err := c.mfaSealer.Open(m.Secret, m.User)
	if err != nil {
		return "", fmt.Errorf("mfa secret of %s (is mfa.key the one it was sealed with?): %w", m.User, err)
	}
	return auth.Token(b), nil
}

// handleMFAEnrol starts a TOTP enrolment for the device's user. It stays
// pending, and logins do not ask for codes, until handleMFAConfirm sees
// a first code: an enrolment nobody can produce codes for must not lock
// the user out.
func (c *Controller) handleMFAEnrol(w http.ResponseWriter, r *http.Request, d deviceCaller) error {
	now := c.now()
	secret, uri, err := auth.NewTOTP(mfaIssuer, d.user.Name)
	if err != nil {
		return err
	}
	m := store.MFA{User: d.user.Name, Secret: c.mfaSealer.Seal([]byte(secret.Reveal()), d.user.Name), CreatedAt: now}
	err = c.store.CreateMFA(r.Context(), m)
	if errors.Is(err, store.ErrConflict) {
		return conflict("user %s already has MFA; to move to a new authenticator, an admin resets it first (keyhole admin user mfa-reset %s)", d.user.Name, d.user.Name)
	}
	if err != nil {
		return storeErr("user "+d.user.Name, err)
	}
	c.deviceAudit(r, d, "mfa.enrol", "pending until a first code confirms it")
	c.log.Info("mfa enrolment started", "user", d.user.Name, "device_id", d.device.ID)
	writeJSON(w, http.StatusCreated, api.MFAEnrolment{URI: uri.Reveal(), Secret: secret.Reveal(), ExpiresAt: now.Add(mfaEnrolTTL)})
	return nil
}

// handleMFAConfirm activates the pending enrolment with its first code and
// answers with the recovery codes, which exist in clear only in this
// answer.
func (c *Controller) handleMFAConfirm(w http.ResponseWriter, r *http.Request, d deviceCaller) error {
	var req api.MFAConfirm
	if err := decode(w, r, &req); err != nil {
		return err
	}
	now := c.now()
	m, err := c.store.MFA(r.Context(), d.user.Name)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return notFound("no MFA enrolment to confirm; start one with keyhole mfa enroll")
	case err != nil:
		return err
	case !m.ConfirmedAt.IsZero():
		return conflict("MFA of user %s is already confirmed", d.user.Name)
	case now.Sub(m.CreatedAt) > mfaEnrolTTL:
		return errf(http.StatusGone, api.CodeExpired, "the MFA enrolment expired (%s to confirm it); start again with keyhole mfa enroll", mfaEnrolTTL)
	}
	secret, err := c.mfaSecret(m)
	if err != nil {
		return err
	}
	step, ok := auth.CheckTOTP(secret, req.Code, now)
	if !ok {
		c.deviceAudit(r, d, "mfa.confirm.fail", "wrong code")
		return errf(http.StatusBadRequest, api.CodeMFAInvalid, "that is not the current code of the new enrolment; check the app's entry and the phone's clock, and give the code it shows now")
	}
	codes := make([]string, auth.RecoveryCodeCount)
	hashes := make([]string, auth.RecoveryCodeCount)
	for i := range codes {
		codes[i] = auth.NewRecoveryCode().Reveal()
		if hashes[i], err = auth.HashRecoveryCode(d.user.Name, codes[i]); err != nil {
			return err
		}
	}
	err = c.store.ConfirmMFA(r.Context(), d.user.Name, m.Secret, step, now, hashes)
	if errors.Is(err, store.ErrNotFound) {
		return conflict("the MFA enrolment changed meanwhile (a new one, or an admin reset); start again with keyhole mfa enroll")
	}
	if err != nil {
		return err
	}
	c.deviceAudit(r, d, "mfa.confirm", fmt.Sprintf("MFA active; %d recovery codes issued", len(codes)))
	c.log.Info("mfa enrolled", "user", d.user.Name, "device_id", d.device.ID)
	writeJSON(w, http.StatusOK, api.MFAConfirmation{RecoveryCodes: codes})
	return nil
}

// handleUserMFAReset removes a user's MFA (lost phone): logins need only
// the password until the user enrols again.
func (c *Controller) handleUserMFAReset(w http.ResponseWriter, r *http.Request, a adminCaller) error {
	name := r.PathValue("name")
	if _, err := c.store.User(r.Context(), name); err != nil {
		return storeErr("user "+name, err)
	}
	if err := c.store.DeleteMFA(r.Context(), name); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return notFound("user %s has no MFA enrolment", name)
		}
		return err
	}
	c.adminAudit(r, a, "admin.user.mfa_reset", api.AuditEvent{User: name, Reason: "MFA and recovery codes removed"})
	c.log.Info("mfa reset", "user", name, "actor", a.actor())
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (c *Controller) deviceAudit(r *http.Request, d deviceCaller, typ, reason string) {
	c.audit(r.Context(), api.AuditEvent{Type: typ, Actor: d.actor(), User: d.user.Name, DeviceID: d.device.ID, Source: remoteAddr(r), Reason: reason})
}

// errMFA is why a second factor was refused, for the audit trail; the
// answer to the client is the same for every kind.
type errMFA string

func (e errMFA) Error() string { return string(e) }

// checkMFACode checks a login's second factor for user, whose enrolment
// is m: a TOTP code for a time step not used before, or an unused recovery
// code. It returns how the user authenticated, for the audit trail, or an
// errMFA saying why not.
func (c *Controller) checkMFACode(ctx context.Context, m store.MFA, code string, now time.Time) (string, error) {
	if auth.IsTOTPCode(code) {
		secret, err := c.mfaSecret(m)
		if err != nil {
			return "", err
		}
		step, ok := auth.CheckTOTP(secret, code, now)
		if !ok {
			return "", errMFA("wrong MFA code")
		}
		fresh, err := c.store.UseMFAStep(ctx, m.User, step)
		if err != nil {
			return "", err
		}
		if !fresh {
			return "", errMFA("MFA code already used")
		}
		return "password and TOTP code", nil
	}
	hash, err := auth.HashRecoveryCode(m.User, code)
	if err != nil {
		return "", errMFA("malformed MFA code")
	}
	left, err := c.store.UseRecoveryCode(ctx, m.User, hash, now)
	if errors.Is(err, store.ErrNotFound) {
		return "", errMFA("recovery code not valid or already used")
	}
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("password and recovery code (%d left)", left), nil
}
