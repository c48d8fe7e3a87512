package controller

import (
	"crypto/ecdsa"
	"errors"
	"net/http"

	"github.com/keyhole-net/keyhole/controller/auth"
	"github.com/keyhole-net/keyhole/controller/store"
	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/trust"
)

// maxPasswordBytes caps passwords before hashing: argon2 over an unbounded
// input is a denial of service.
const maxPasswordBytes = 1024

func (c *Controller) handleHealth(w http.ResponseWriter, r *http.Request) error {
	writeJSON(w, http.StatusOK, api.Health{Version: api.Version, ControllerID: c.id, CAFingerprint: c.Fingerprint()})
	return nil
}

// handleLogin authenticates a user by password and enrols (or re-keys) the
// device: the answer is a device certificate for the CSR's key and a
// session bound to that device.
func (c *Controller) handleLogin(w http.ResponseWriter, r *http.Request) error {
	var req api.LoginRequest
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if err := checkUserName(req.User); err != nil {
		return err
	}
	if len(req.Password) > maxPasswordBytes {
		return badRequest("password longer than %d bytes", maxPasswordBytes)
	}
	if len(req.MFACode) > maxMFACodeBytes {
		return badRequest("mfa_code longer than %d bytes", maxMFACodeBytes)
	}
	device := api.LoginDevice{DeviceID: req.DeviceID, DeviceName: req.DeviceName, CSR: req.CSR, WGPublicKey: req.WGPublicKey}
	if err := checkLoginDevice(&device); err != nil {
		return err
	}
	u, proof, err := c.checkLogin(r, req, c.now())
	if err != nil {
		return err
	}
	return c.finishLogin(w, r, u, device, proof)
}

// checkLoginDevice checks the device part of a login request, defaulting
// its name.
func checkLoginDevice(d *api.LoginDevice) error {
	if d.DeviceName == "" {
		d.DeviceName = "device"
	}
	if len(d.DeviceName) > 64 {
		return badRequest("device_name longer than 64 characters")
	}
	if d.WGPublicKey.IsZero() {
		return badRequest("wg_public_key is required")
	}
	if _, err := trust.ParseCSR(d.CSR); err != nil {
		return badRequest("%v", err)
	}
	return nil
}

// finishLogin completes the login of an authenticated user u (password or
// OIDC): it enrols (or re-keys) the device, signs its certificate, opens a
// session bound to it (with the MFA time of proof), audits (with proof.how,
// if set, as the reason) and answers with the LoginResponse.
func (c *Controller) finishLogin(w http.ResponseWriter, r *http.Request, u store.User, req api.LoginDevice, proof loginProof) error {
	now := c.now()
	csr, err := trust.ParseCSR(req.CSR)
	if err != nil {
		return badRequest("%v", err)
	}
	// Only the key of this login's CSR is the device from now on.
	pin := trust.KeyPin(csr.PublicKey)
	var dev store.Device
	if req.DeviceID != "" {
		dev, err = c.store.Device(r.Context(), req.DeviceID)
		if errors.Is(err, store.ErrNotFound) || (err == nil && dev.User != u.Name) {
			return notFound("device %s not found for user %s; log in without it to enrol a new device", req.DeviceID, u.Name)
		}
		if err != nil {
			return err
		}
		if dev.Disabled {
			return errf(http.StatusForbidden, api.CodeForbidden, "device %s is disabled; ask an admin", dev.ID)
		}
		// Login rotates the device's WireGuard key.
		dev.WGPublicKey, dev.Name, dev.LastSeen, dev.KeyPin = req.WGPublicKey, req.DeviceName, now, pin
		if err := c.store.UpdateDevice(r.Context(), dev); err != nil {
			return err
		}
		// Grants carry the old key; drop them so the gateway forgets it.
		// Exports carry keys of their own and stay.
		if live, err := c.store.LiveGrants(r.Context(), now, "", dev.ID); err == nil && len(live) > 0 {
			var ids []api.GrantID
			for _, g := range live {
				if !g.Export {
					ids = append(ids, g.ID)
				}
			}
			if _, err := c.revoke(r.Context(), ids, "device logged in again (key rotated)", "user:"+u.Name); err != nil {
				return err
			}
		}
	} else {
		dev, err = c.store.CreateDevice(r.Context(), store.Device{
			ID: api.DeviceID(auth.NewID("dev")), User: u.Name, Name: req.DeviceName,
			WGPublicKey: req.WGPublicKey, KeyPin: pin, CreatedAt: now, LastSeen: now,
			Approved: !c.cfg.RequireDeviceApproval,
		})
		if err != nil {
			return storeErr("device", err)
		}
	}
	cert, err := c.ca.Sign(req.CSR, trust.KindDevice, string(dev.ID), c.cfg.CertLifetime, now)
	if err != nil {
		return badRequest("%v", err)
	}
	tok, err := auth.NewToken(auth.PrefixSession)
	if err != nil {
		return err
	}
	sess := store.Session{Hash: auth.HashToken(tok.Reveal()), DeviceID: dev.ID, User: u.Name, CreatedAt: now, ExpiresAt: now.Add(c.cfg.SessionLifetime), MFAAt: proof.mfaAt}
	if err := c.store.CreateSession(r.Context(), sess); err != nil {
		return err
	}
	c.audit(r.Context(), api.AuditEvent{Type: "login", Time: now, Actor: "user:" + u.Name, User: u.Name, DeviceID: dev.ID, Source: remoteAddr(r), Reason: proof.how})
	c.log.Info("login", "user", u.Name, "device_id", dev.ID, "source", remoteAddr(r), "how", proof.how)
	writeJSON(w, http.StatusOK, api.LoginResponse{
		DeviceID: dev.ID, User: u.Name, Session: tok.Reveal(), SessionExpiresAt: sess.ExpiresAt,
		Certificate: trust.CertPEM(cert.Raw), OverlayIP: dev.OverlayIP, STUN: c.relayAddr,
	})
	return nil
}

func (c *Controller) handleLogout(w http.ResponseWriter, r *http.Request, d deviceCaller) error {
	live, err := c.store.LiveGrants(r.Context(), c.now(), "", d.device.ID)
	if err != nil {
		return err
	}
	ids := make([]api.GrantID, len(live))
	for i, g := range live {
		ids[i] = g.ID
	}
	if _, err := c.revoke(r.Context(), ids, "logout", d.actor()); err != nil {
		return err
	}
	if err := c.store.DeleteSessions(r.Context(), d.device.ID); err != nil {
		return err
	}
	// After the revocations queued above: the streams send them, then end.
	c.devices.closeDevice(d.device.ID)
	c.audit(r.Context(), api.AuditEvent{Type: "logout", Actor: d.actor(), User: d.user.Name, DeviceID: d.device.ID, Source: remoteAddr(r)})
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (c *Controller) handleDeviceCert(w http.ResponseWriter, r *http.Request, d deviceCaller) error {
	return c.renewCert(w, r, trust.KindDevice, string(d.device.ID))
}

func publicKeysEqual(a, b any) bool {
	ea, ok1 := a.(*ecdsa.PublicKey)
	eb, ok2 := b.(*ecdsa.PublicKey)
	return ok1 && ok2 && ea.Equal(eb)
}
