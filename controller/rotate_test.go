package controller

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/apiclient"
	"github.com/keyhole-net/keyhole/internal/key"
	"github.com/keyhole-net/keyhole/internal/trust"
)

// TestKeyRotation: a device replaces its device key and WireGuard key;
// its live grant moves to the new WireGuard key on the gateway before the
// answer, the old certificate stops working at once, and bad rotations
// are refused.
func TestKeyRotation(t *testing.T) {
	e := newTestEnv(t, Config{}, 0)
	gw := e.setupCorp()
	ctx := context.Background()
	d := e.login("alice")
	g := d.mustGrant("wiki.corp.internal")
	oldWG := g.Grant // the grant carries no key; read the device's
	dev, err := e.c.store.Device(ctx, d.id)
	if err != nil {
		t.Fatal(err)
	}
	if !gw.Table().HasPeer(dev.WGPublicKey) {
		t.Fatal("gateway has no peer for the device's key before rotation")
	}

	newKey, err := trust.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := trust.NewCSR(newKey, string(d.id))
	if err != nil {
		t.Fatal(err)
	}
	oldCSR, err := trust.NewCSR(d.key, string(d.id))
	if err != nil {
		t.Fatal(err)
	}
	wgPriv, err := key.NewWGPrivate()
	if err != nil {
		t.Fatal(err)
	}
	rotate := func(req api.KeyRotation) (api.CertificateResponse, error) {
		var resp api.CertificateResponse
		err := d.api.Do(ctx, "POST", "/v1/device/rotate", req, &resp)
		return resp, err
	}
	for name, req := range map[string]api.KeyRotation{
		"same device key":    {CSR: oldCSR, WGPublicKey: wgPriv.Public()},
		"no WireGuard key":   {CSR: csr},
		"same WireGuard key": {CSR: csr, WGPublicKey: dev.WGPublicKey},
		"not a CSR":          {CSR: "-----BEGIN nonsense", WGPublicKey: wgPriv.Public()},
	} {
		if _, err := rotate(req); !apiclient.IsCode(err, api.CodeBadRequest) {
			t.Errorf("%s: %v; want bad_request", name, err)
		}
	}

	resp, err := rotate(api.KeyRotation{CSR: csr, WGPublicKey: wgPriv.Public()})
	if err != nil {
		t.Fatalf("rotate: %v", err)
	}
	cert, err := trust.ParseCertPEM(resp.Certificate)
	if err != nil || !trust.SameKey(cert, newKey) {
		t.Fatalf("rotated certificate: %v (for the new key: %v)", err, err == nil && trust.SameKey(cert, newKey))
	}
	// The gateway moved the grant before the answer.
	if !gw.Table().HasPeer(wgPriv.Public()) || gw.Table().HasPeer(dev.WGPublicKey) {
		t.Errorf("gateway peers after rotation: new %v, old %v", gw.Table().HasPeer(wgPriv.Public()), gw.Table().HasPeer(dev.WGPublicKey))
	}
	sg, err := e.c.store.Grant(ctx, oldWG.ID)
	if err != nil || !sg.RevokedAt.IsZero() || !sg.ClientWGKey.Equal(wgPriv.Public()) {
		t.Errorf("grant after rotation: %+v, %v; want live with the new key", sg, err)
	}

	// The old certificate is retired; the new one works.
	err = d.api.Do(ctx, "GET", "/v1/device/domains", nil, nil)
	if !apiclient.IsCode(err, api.CodeUnauthorized) {
		t.Errorf("request with the retired certificate: %v; want unauthorized", err)
	}
	d.api.SetCredentials(&trust.Credentials{Key: newKey, Cert: cert, CA: d.creds.CA})
	d.api.CloseIdle()
	if err := d.api.Do(ctx, "GET", "/v1/device/domains", nil, nil); err != nil {
		t.Errorf("request with the new certificate: %v", err)
	}
	evs, err := e.admin.Audit(ctx, apiclient.AuditFilter{Type: "device.rotate"})
	if err != nil || len(evs) != 1 || evs[0].DeviceID != d.id {
		t.Errorf("device.rotate audit: %+v, %v", evs, err)
	}
}

// TestSessionBoundsGrants: no grant outlives the session it was issued
// under; once the session ends, renewals and new grants are refused with
// "session expired; run keyhole login".
func TestSessionBoundsGrants(t *testing.T) {
	clk := newTestClock()
	e := newTestEnv(t, Config{Now: clk.Now, SessionLifetime: time.Hour, GrantLifetime: 10 * time.Minute}, 0)
	e.setupCorp()
	ctx := context.Background()
	d := e.login("alice")
	loginAt := clk.Now().UTC()
	g := d.mustGrant("wiki.corp.internal")
	if want := clk.Now().UTC().Add(10 * time.Minute); !g.Grant.NotAfter.Equal(want) {
		t.Fatalf("grant early in the session ends %v; want a full lifetime, %v", g.Grant.NotAfter, want)
	}
	// Renew every 8 minutes: each renewal gets a full lifetime until the
	// session's end caps it.
	end := loginAt.Add(time.Hour)
	for range 7 {
		clk.Add(8 * time.Minute)
		var resp api.GrantResponse
		if err := d.api.Do(ctx, "POST", "/v1/grants/"+string(g.Grant.ID)+"/renew", nil, &resp); err != nil {
			t.Fatalf("renewal at %v: %v", clk.Now().Sub(loginAt), err)
		}
		want := clk.Now().UTC().Add(10 * time.Minute)
		if want.After(end) {
			want = end
		}
		if !resp.Grant.NotAfter.Equal(want) {
			t.Fatalf("renewal at %v: NotAfter %v; want %v", clk.Now().Sub(loginAt), resp.Grant.NotAfter, want)
		}
	}
	clk.Add(5 * time.Minute)
	err := d.api.Do(ctx, "POST", "/v1/grants/"+string(g.Grant.ID)+"/renew", nil, nil)
	if !apiclient.IsCode(err, api.CodeExpired) || !strings.Contains(err.Error(), "run keyhole login") {
		t.Fatalf("renewal after the session ended: %v", err)
	}
	if _, err := d.grant("wiki.corp.internal"); !apiclient.IsCode(err, api.CodeExpired) {
		t.Fatalf("new grant after the session ended: %v", err)
	}
}

// TestDeviceRemove: removing a device revokes its grants at once (the
// gateway drops them), ends its session and its event stream, and it is
// gone from the list; a second removal is 404.
func TestDeviceRemove(t *testing.T) {
	e := newTestEnv(t, Config{}, 100*time.Millisecond)
	gw := e.setupCorp()
	ctx := context.Background()
	d := e.login("alice")
	events := d.events()
	events.next(t, 2*time.Second) // hello
	g := d.mustGrant("wiki.corp.internal")
	if err := e.admin.RemoveDevice(ctx, d.id); err != nil {
		t.Fatal(err)
	}
	if _, ok := gw.Table().Lookup(g.Grant.ID); ok {
		t.Error("the gateway still holds the removed device's grant")
	}
	evs := events.waitEnd(t, 2*time.Second)
	if len(evs) == 0 || evs[0].Type != api.DeviceEventGrantRevoked {
		t.Errorf("events before the stream ended: %+v", evs)
	}
	if _, err := d.grant("wiki.corp.internal"); !apiclient.IsCode(err, api.CodeUnauthorized) {
		t.Errorf("grant request of a removed device: %v; want unauthorized", err)
	}
	devs, err := e.admin.Devices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, dv := range devs {
		if dv.ID == d.id {
			t.Error("removed device still listed")
		}
	}
	wantCode(t, "second removal", e.admin.RemoveDevice(ctx, d.id), api.CodeNotFound)
	audit, err := e.admin.Audit(ctx, apiclient.AuditFilter{Type: "admin.device.remove"})
	if err != nil || len(audit) != 1 || audit[0].DeviceID != d.id {
		t.Errorf("audit: %+v, %v", audit, err)
	}
}
