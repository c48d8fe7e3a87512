package controller

import (
	"net/http"

	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/trust"
)

// handleDeviceRotate serves POST /v1/device/rotate: the device replaces its
// device key (a new certificate for the new key, same identity) and its
// WireGuard key. The device's live grants are re-keyed on their gateways
// before the answer, so the device switches to the new keys and its open
// connections go on. Clients rotate at about two thirds of their
// certificate's lifetime, so keys change at least twice a day by default.
func (c *Controller) handleDeviceRotate(w http.ResponseWriter, r *http.Request, d deviceCaller) error {
	var req api.KeyRotation
	if err := decode(w, r, &req); err != nil {
		return err
	}
	csr, err := trust.ParseCSR(req.CSR)
	if err != nil {
		return badRequest("%v", err)
	}
	if publicKeysEqual(r.TLS.PeerCertificates[0].PublicKey, csr.PublicKey) {
		return badRequest("the csr is for the current device key; rotation needs a new key (POST /v1/device/certificate renews the certificate of the same key)")
	}
	if req.WGPublicKey.IsZero() || req.WGPublicKey.Equal(d.device.WGPublicKey) {
		return badRequest("wg_public_key must be a new WireGuard key")
	}
	now := c.now()
	cert, err := c.ca.Sign(req.CSR, trust.KindDevice, string(d.device.ID), c.cfg.CertLifetime, now)
	if err != nil {
		return badRequest("%v", err)
	}
	dev := d.device
	dev.WGPublicKey, dev.LastSeen, dev.KeyPin = req.WGPublicKey, now, trust.KeyPin(csr.PublicKey)
	if err := c.store.UpdateDevice(r.Context(), dev); err != nil {
		return err
	}
	grants, err := c.store.RekeyGrants(r.Context(), dev.ID, req.WGPublicKey, now)
	if err != nil {
		return err
	}
	for _, g := range grants {
		// A gateway that does not ack learns the new key from its sync
		// on reconnect; until then the device's traffic through it waits.
		if err := c.pushGrant(r.Context(), g, nil); err != nil {
			c.log.Warn("re-keyed grant not acknowledged by its gateway", "grant_id", g.ID, "gateway_id", g.GatewayID, "err", err)
		}
	}
	c.audit(r.Context(), api.AuditEvent{Type: "device.rotate", Actor: d.actor(), User: d.user.Name, DeviceID: dev.ID, Source: remoteAddr(r),
		Reason: "device key and WireGuard key rotated; new WireGuard key " + req.WGPublicKey.String()})
	c.log.Info("device keys rotated", "user", d.user.Name, "device_id", dev.ID, "grants", len(grants))
	writeJSON(w, http.StatusOK, api.CertificateResponse{Certificate: trust.CertPEM(cert.Raw)})
	return nil
}
