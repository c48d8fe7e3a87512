package client

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/key"
	"github.com/keyhole-net/keyhole/internal/trust"
)

// Key rotation: the agent replaces its device key and WireGuard key when
// its certificate has used two thirds of its lifetime (12 h by default, so
// about every 8 hours), through POST /v1/device/rotate. The controller
// re-keys the device's live grants on their gateways before it answers;
// the client then switches its tunnel to the new WireGuard key (a new
// handshake), its API connections to the new certificate and its posture
// signatures to the new device key, and saves the new keys.

// rotateRetry is how long the agent waits after a failed rotation.
const rotateRetry = time.Minute

// rotateDue reports whether the device certificate has used two thirds of
// its lifetime.
func (c *Client) rotateDue(now time.Time) bool {
	creds, _ := c.sess.identity()
	nb, na := creds.Cert.NotBefore, creds.Cert.NotAfter
	return !now.Before(nb.Add(na.Sub(nb) * 2 / 3))
}

// maybeRotate rotates the keys when due, at most once per rotateRetry
// after a failure. Run's goroutine only.
func (c *Client) maybeRotate(ctx context.Context) {
	now := c.now()
	if !c.rotateDue(now) || now.Before(c.nextRotate) {
		return
	}
	if err := c.RotateKeys(ctx); err != nil {
		c.nextRotate = now.Add(rotateRetry)
		creds, _ := c.sess.identity()
		c.log.Warn("key rotation failed; retrying", "err", err, "retry_in", rotateRetry, "certificate_expires", creds.Cert.NotAfter)
	}
}

// RotateKeys replaces the device key and the WireGuard key now.
func (c *Client) RotateKeys(ctx context.Context) error {
	c.rotateMu.Lock()
	defer c.rotateMu.Unlock()
	old, _ := c.sess.identity()
	dk, err := trust.NewKey()
	if err != nil {
		return fmt.Errorf("rotate keys: %w", err)
	}
	csr, err := trust.NewCSR(dk, string(c.sess.profile.DeviceID))
	if err != nil {
		return fmt.Errorf("rotate keys: %w", err)
	}
	wgKey, err := key.NewWGPrivate()
	if err != nil {
		return fmt.Errorf("rotate keys: %w", err)
	}
	var resp api.CertificateResponse
	if err := c.sess.api.Do(ctx, "POST", "/v1/device/rotate", api.KeyRotation{CSR: csr, WGPublicKey: wgKey.Public()}, &resp); err != nil {
		return fmt.Errorf("rotate keys: %w", err)
	}
	cert, err := trust.ParseCertPEM(resp.Certificate)
	if err != nil {
		return fmt.Errorf("rotate keys: controller's certificate: %w", err)
	}
	if !trust.SameKey(cert, dk) {
		return errors.New("rotate keys: the controller's certificate is not for the new key")
	}
	creds := &trust.Credentials{Key: dk, Cert: cert, CA: old.CA}
	// The controller now knows only the new keys: switch at once, then
	// save them (a crash in between costs a keyhole login, not access).
	if err := c.net.SetPrivateKey(wgKey); err != nil {
		return fmt.Errorf("rotate keys: %w", err)
	}
	c.sess.mu.Lock()
	c.sess.creds, c.sess.wgKey = creds, wgKey
	c.sess.mu.Unlock()
	c.sess.api.SetCredentials(creds)
	// Open connections authenticated with the retired key: every later
	// request must go on a new one. The event stream goes on as it is.
	c.sess.api.Reconnect()
	c.reporter.forget() // reports are signed with the device key
	if err := trust.WriteSecret(filepath.Join(c.cfg.DataDir, fileWGKey), []byte(wgKey.Base64Secret()+"\n")); err != nil {
		return fmt.Errorf("rotate keys: save WireGuard key: %w", err)
	}
	if err := creds.Save(c.cfg.DataDir); err != nil {
		return fmt.Errorf("rotate keys: save device key: %w", err)
	}
	c.log.Info("device keys rotated", "wg_public_key", wgKey.Public(), "certificate_expires", cert.NotAfter)
	return nil
}
