package storetest

import (
	"context"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/controller/store"
	"github.com/keyhole-net/keyhole/internal/api"
)

// testPostureProfiles: profiles come back whole and ordered by name; names
// are unique; update and delete need an existing profile.
func testPostureProfiles(t *testing.T, s store.Store) {
	ctx := context.Background()
	laptop := api.PostureProfile{
		Name: "laptop", Description: "corporate laptops", OS: []string{"linux", "darwin"}, MinClientVersion: "0.7.0",
		DiskEncryption: true, Firewall: true,
		Checks: []api.PostureCheck{
			{Name: "edr", Kind: api.CheckProcess, Process: "falcon-sensor"},
			{Name: "cfg", Kind: api.CheckFile, Path: "/etc/edr.conf", SHA256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"},
		},
	}
	basic := api.PostureProfile{Name: "basic", ScreenLock: true}
	mustOK(t, s.CreatePostureProfile(ctx, laptop))
	mustOK(t, s.CreatePostureProfile(ctx, basic))
	wantErr(t, "duplicate profile", s.CreatePostureProfile(ctx, basic), store.ErrConflict)
	got, err := s.PostureProfiles(ctx)
	mustOK(t, err)
	wantEqual(t, "profiles", got, []api.PostureProfile{basic, laptop})

	laptop.Checks, laptop.ScreenLock = nil, true
	mustOK(t, s.UpdatePostureProfile(ctx, laptop))
	wantErr(t, "update missing", s.UpdatePostureProfile(ctx, api.PostureProfile{Name: "nope"}), store.ErrNotFound)
	mustOK(t, s.DeletePostureProfile(ctx, "basic"))
	wantErr(t, "delete missing", s.DeletePostureProfile(ctx, "basic"), store.ErrNotFound)
	got, err = s.PostureProfiles(ctx)
	mustOK(t, err)
	wantEqual(t, "after update and delete", got, []api.PostureProfile{laptop})
}

// testDevicePosture: a device's latest report comes back whole; a report
// collected before the stored one is refused with ErrConflict (the same
// collection time is accepted again); an unknown device is ErrNotFound.
func testDevicePosture(t *testing.T, s store.Store) {
	ctx := context.Background()
	seed(t, s)
	dev := mustDevice(t, s, "alice", "laptop")
	got, err := s.Device(ctx, dev.ID)
	mustOK(t, err)
	if got.Posture != nil || !got.PostureAt.IsZero() {
		t.Fatalf("new device has posture %+v at %v, want none", got.Posture, got.PostureAt)
	}
	p := api.Posture{
		DeviceID: dev.ID, CollectedAt: t0, OS: "linux", OSVersion: "Debian GNU/Linux 13 (trixie)", Kernel: "6.12.48", ClientVersion: "0.7.0",
		DiskEncryption: api.Yes, Firewall: api.No, ScreenLock: api.Unknown,
		Details: map[string]string{"screen_lock": "no graphical session"},
		Checks:  []api.CheckResult{{Name: "edr", Pass: api.Yes}, {Name: "agent", Pass: api.Unknown, Detail: "not defined"}},
	}
	at := t0.Add(time.Second)
	mustOK(t, s.SetDevicePosture(ctx, dev.ID, p, at))
	got, err = s.Device(ctx, dev.ID)
	mustOK(t, err)
	wantEqual(t, "posture", *got.Posture, p)
	wantEqual(t, "posture_at", got.PostureAt, at)
	devs, err := s.Devices(ctx)
	mustOK(t, err)
	wantEqual(t, "posture in the device list", *devs[0].Posture, p)

	mustOK(t, s.SetDevicePosture(ctx, dev.ID, p, at.Add(time.Second))) // the same report again
	old := p
	old.CollectedAt, old.DiskEncryption = t0.Add(-time.Minute), api.No
	wantErr(t, "older report", s.SetDevicePosture(ctx, dev.ID, old, at.Add(2*time.Second)), store.ErrConflict)
	newer := p
	newer.CollectedAt, newer.DiskEncryption = t0.Add(time.Minute), api.No
	mustOK(t, s.SetDevicePosture(ctx, dev.ID, newer, at.Add(time.Minute)))
	got, err = s.Device(ctx, dev.ID)
	mustOK(t, err)
	wantEqual(t, "newer posture", *got.Posture, newer)
	// UpdateDevice leaves the posture alone, and replaces the key pin.
	got.Approved, got.KeyPin = !got.Approved, "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
	mustOK(t, s.UpdateDevice(ctx, got))
	again, err := s.Device(ctx, dev.ID)
	mustOK(t, err)
	wantEqual(t, "posture after UpdateDevice", *again.Posture, newer)
	wantEqual(t, "key pin after UpdateDevice", again.KeyPin, got.KeyPin)
	wantErr(t, "unknown device", s.SetDevicePosture(ctx, "dev_nope", p, at), store.ErrNotFound)
}

// testDeleteDevice: a removed device and its sessions are gone, its
// grants stay as records, and removing it again is ErrNotFound.
func testDeleteDevice(t *testing.T, s store.Store) {
	ctx := context.Background()
	seed(t, s)
	dev := mustDevice(t, s, "alice", "laptop")
	gw := mustGateway(t, s, "site-a", "gw1")
	mustOK(t, s.CreateSession(ctx, store.Session{Hash: "h1", DeviceID: dev.ID, User: "alice", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}))
	g := grantFixture(t, "grt_rm", dev, gw.ID, t0.Add(time.Hour))
	mustOK(t, s.CreateGrant(ctx, g, allowEvent(g.ID)))
	mustOK(t, s.DeleteDevice(ctx, dev.ID))
	_, err := s.Device(ctx, dev.ID)
	wantErr(t, "removed device", err, store.ErrNotFound)
	_, err = s.Session(ctx, "h1")
	wantErr(t, "its session", err, store.ErrNotFound)
	_, err = s.Grant(ctx, g.ID)
	mustOK(t, err)
	wantErr(t, "removing again", s.DeleteDevice(ctx, dev.ID), store.ErrNotFound)
}

// testRekeyGrants: a key rotation changes the client key of the device's
// live grants only: not its exports, not its revoked or expired grants,
// not other devices' grants.
func testRekeyGrants(t *testing.T, s store.Store) {
	ctx := context.Background()
	seed(t, s)
	dev, other := mustDevice(t, s, "alice", "laptop"), mustDevice(t, s, "alice", "phone")
	gw := mustGateway(t, s, "site-a", "gw1")
	live := grantFixture(t, "grt_live", dev, gw.ID, t0.Add(time.Hour))
	expired := grantFixture(t, "grt_old", dev, gw.ID, t0.Add(-time.Minute))
	revoked := grantFixture(t, "grt_rev", dev, gw.ID, t0.Add(time.Hour))
	others := grantFixture(t, "grt_other", other, gw.ID, t0.Add(time.Hour))
	for _, g := range []store.Grant{live, expired, revoked, others} {
		mustOK(t, s.CreateGrant(ctx, g, allowEvent(g.ID)))
	}
	_, err := s.RevokeGrants(ctx, []api.GrantID{revoked.ID}, "test", t0, api.AuditEvent{Type: "grant.revoke", Time: t0})
	mustOK(t, err)
	exp := grantFixture(t, "grt_exp", dev, gw.ID, t0.Add(time.Hour))
	exp.Export, exp.ClientWGKey = true, wgKey(t)
	_, err = s.CreateExport(ctx, exp, allowEvent(exp.ID), 10)
	mustOK(t, err)

	k := wgKey(t)
	got, err := s.RekeyGrants(ctx, dev.ID, k, t0)
	mustOK(t, err)
	if len(got) != 1 || got[0].ID != live.ID || !got[0].ClientWGKey.Equal(k) {
		t.Fatalf("RekeyGrants = %+v; want only %s, with the new key", got, live.ID)
	}
	for id, want := range map[api.GrantID]bool{live.ID: true, expired.ID: false, revoked.ID: false, others.ID: false, exp.ID: false} {
		g, err := s.Grant(ctx, id)
		mustOK(t, err)
		if g.ClientWGKey.Equal(k) != want {
			t.Errorf("grant %s has the new key: %v, want %v", id, !want, want)
		}
	}
}
