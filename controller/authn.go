package controller

import (
	"errors"
	"net/http"
	"net/netip"
	"time"

	"github.com/keyhole-net/keyhole/controller/auth"
	"github.com/keyhole-net/keyhole/controller/store"
	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/trust"
)

// adminCaller is an authenticated admin.
type adminCaller struct {
	tokenID string
}

func (a adminCaller) actor() string { return "admin:" + a.tokenID }

// deviceCaller is an authenticated device with a live session.
type deviceCaller struct {
	device store.Device
	user   store.User
	// MFAAt is when the session's login checked a second factor (zero:
	// password only), for rules that want MFA within N minutes.
	MFAAt time.Time
	// posture is the posture report the request is judged on (see
	// Controller.posture); nil for none.
	posture *api.Posture
	// sessionEnd is when the session expires: no grant outlives it.
	sessionEnd time.Time
}

func (d deviceCaller) actor() string { return "user:" + d.user.Name }

// gatewayCaller is an authenticated gateway.
type gatewayCaller struct {
	gateway store.Gateway
}

func (c *Controller) admin(fn func(http.ResponseWriter, *http.Request, adminCaller) error) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		a, err := c.authAdmin(r)
		if err != nil {
			return err
		}
		return fn(w, r, a)
	}
}

func (c *Controller) authAdmin(r *http.Request) (adminCaller, error) {
	tok := bearer(r)
	if tok == "" {
		return adminCaller{}, unauthorized("admin API needs an admin token: --token or KEYHOLE_ADMIN_TOKEN (the first one is in the controller's data directory, admin.token)")
	}
	t, err := c.store.AdminTokenByHash(r.Context(), auth.HashToken(tok))
	if errors.Is(err, store.ErrNotFound) || (err == nil && !t.RevokedAt.IsZero()) {
		return adminCaller{}, unauthorized("admin token not valid")
	}
	if err != nil {
		return adminCaller{}, err
	}
	return adminCaller{tokenID: t.ID}, nil
}

// peerIdentity verifies the mTLS client certificate and returns its identity.
func (c *Controller) peerIdentity(r *http.Request, wantKind string) (string, error) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return "", unauthorized("this endpoint needs the %s certificate (mTLS); log in or enrol first", wantKind)
	}
	kind, id, err := c.ca.VerifyClient(r.TLS.PeerCertificates[0], c.now())
	if err != nil {
		return "", unauthorized("client certificate not valid: %v", err)
	}
	if kind != wantKind {
		return "", errf(http.StatusForbidden, api.CodeForbidden, "a %s certificate cannot call this endpoint", kind)
	}
	return id, nil
}

func (c *Controller) device(fn func(http.ResponseWriter, *http.Request, deviceCaller) error) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		d, err := c.authDevice(r)
		if err != nil {
			return err
		}
		return fn(w, r, d)
	}
}

// authDevice needs both the device certificate and a session issued to that
// device: a stolen session token is useless without the device key.
func (c *Controller) authDevice(r *http.Request) (deviceCaller, error) {
	id, err := c.peerIdentity(r, trust.KindDevice)
	if err != nil {
		return deviceCaller{}, err
	}
	tok := bearer(r)
	if tok == "" {
		return deviceCaller{}, unauthorized("no session; run keyhole login")
	}
	// The session, its device and the device's user in one read: every
	// grant request (and renewal, posture report…) starts here.
	ds, err := c.store.DeviceSession(r.Context(), auth.HashToken(tok))
	s := ds.Session
	if errors.Is(err, store.ErrNotFound) {
		return deviceCaller{}, unauthorized("session not valid; run keyhole login")
	}
	if err != nil {
		return deviceCaller{}, err
	}
	if s.DeviceID != api.DeviceID(id) {
		c.log.Warn("session presented with another device's certificate", "device_id", id, "session_device_id", s.DeviceID)
		return deviceCaller{}, unauthorized("session belongs to another device")
	}
	if !c.now().Before(s.ExpiresAt) {
		return deviceCaller{}, errf(http.StatusUnauthorized, api.CodeExpired, "session expired; run keyhole login")
	}
	d := ds.Device
	if err := ds.DeviceErr; err != nil {
		return deviceCaller{}, storeErr("device", err)
	}
	if d.Disabled {
		return deviceCaller{}, errf(http.StatusForbidden, api.CodeForbidden, "device %s is disabled; ask an admin", d.ID)
	}
	if d.KeyPin != "" && trust.KeyPin(r.TLS.PeerCertificates[0].PublicKey) != d.KeyPin {
		c.log.Warn("device certificate for a retired key", "device_id", d.ID, "source", remoteAddr(r))
		return deviceCaller{}, unauthorized("this device's key was replaced (a key rotation or a newer login); run keyhole login")
	}
	u := ds.User
	if ds.UserErr != nil {
		return deviceCaller{}, unauthorized("user of this device no longer exists")
	}
	if u.Disabled {
		return deviceCaller{}, errf(http.StatusForbidden, api.CodeForbidden, "user %s is disabled; ask an admin", u.Name)
	}
	return deviceCaller{device: d, user: u, MFAAt: s.MFAAt, sessionEnd: s.ExpiresAt}, nil
}

// streamGateway is gateway for the calls a gateway makes about its open
// control stream (acks, one per push): while the stream is held here, the
// gateway it was opened for (read from the store when the stream opened,
// and kept up to date by its hellos and drains) stands in for a store
// read per call. The certificate is checked on every call all the same.
func (c *Controller) streamGateway(fn func(http.ResponseWriter, *http.Request, gatewayCaller) error) handler {
	slow := c.gateway(fn)
	return func(w http.ResponseWriter, r *http.Request) error {
		id, err := c.peerIdentity(r, trust.KindGateway)
		if err != nil {
			return err
		}
		if g, ok := c.hub.info(api.GatewayID(id)); ok {
			return fn(w, r, gatewayCaller{gateway: g})
		}
		return slow(w, r)
	}
}

func (c *Controller) gateway(fn func(http.ResponseWriter, *http.Request, gatewayCaller) error) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		id, err := c.peerIdentity(r, trust.KindGateway)
		if err != nil {
			return err
		}
		g, err := c.store.Gateway(r.Context(), api.GatewayID(id))
		if errors.Is(err, store.ErrNotFound) {
			return unauthorized("gateway %s is not enrolled (removed?)", id)
		}
		if err != nil {
			return err
		}
		return fn(w, r, gatewayCaller{gateway: g})
	}
}

// remoteAddr returns the client's address as the controller saw it.
func remoteAddr(r *http.Request) string {
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		return ap.Addr().Unmap().String()
	}
	return r.RemoteAddr
}
