package storetest

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/controller/store"
	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/key"
)

// exportFixture is an export by dev through gw_1 with a fresh key, live
// from t0 until notAfter.
func exportFixture(t *testing.T, id api.GrantID, dev store.Device, notAfter time.Time) store.Grant {
	g := grantFixture(t, id, dev, "gw_1", notAfter)
	g.Export, g.ClientIP, g.ClientWGKey = true, netip.Addr{}, wgKey(t)
	return g
}

func exportEvent(id api.GrantID) api.AuditEvent {
	ev := allowEvent(id)
	ev.Type = "export.allow"
	return ev
}

func testCreateExport(t *testing.T, s store.Store) {
	ctx := context.Background()
	seed(t, s)
	dev := mustDevice(t, s, "alice", "laptop")
	bobDev := mustDevice(t, s, "bob", "laptop")
	hour := t0.Add(time.Hour)

	e1, err := s.CreateExport(ctx, exportFixture(t, "exp_1", dev, hour), exportEvent("exp_1"), 2)
	mustOK(t, err)
	if !Pools().Devices.Contains(e1.ClientIP) || e1.ClientIP == dev.OverlayIP || e1.ClientIP == bobDev.OverlayIP {
		t.Fatalf("export address %v: want its own, inside %v", e1.ClientIP, Pools().Devices)
	}
	got, err := s.Grant(ctx, e1.ID)
	mustOK(t, err)
	wantEqual(t, "Grant", got, e1)
	evs, err := s.Audit(ctx, store.AuditQuery{Type: "export.allow"})
	mustOK(t, err)
	if len(evs) != 1 || evs[0].GrantID != e1.ID {
		t.Fatalf("audit after CreateExport = %+v; want one export.allow event for %s", evs, e1.ID)
	}
	// The store does not tell exports from grants in its lists; the
	// controller does, by Export.
	live, err := s.LiveGrantsFor(ctx, t0, dev.ID, e1.AppID)
	mustOK(t, err)
	wantEqual(t, "LiveGrantsFor", live, []store.Grant{e1})

	dupKey := exportFixture(t, "exp_dup", dev, hour)
	dupKey.ClientWGKey = e1.ClientWGKey
	devKey := exportFixture(t, "exp_devkey", dev, hour)
	devKey.ClientWGKey = bobDev.WGPublicKey
	notExport := exportFixture(t, "exp_not", dev, hour)
	notExport.Export = false
	zero := exportFixture(t, "exp_zero", dev, hour)
	zero.ClientWGKey = key.WGPublic{}
	for _, tt := range []struct {
		name string
		g    store.Grant
		want error // nil: any error
	}{
		{"key of another export", dupKey, store.ErrConflict},
		{"key of a device", devKey, store.ErrConflict},
		{"same grant ID", exportFixture(t, e1.ID, dev, hour), store.ErrConflict},
		{"not an export", notExport, nil},
		{"zero key", zero, nil},
	} {
		_, err := s.CreateExport(ctx, tt.g, exportEvent(tt.g.ID), 0)
		if err == nil || (tt.want != nil && !errors.Is(err, tt.want)) {
			t.Errorf("CreateExport with %s: err = %v; want %v", tt.name, err, tt.want)
		}
	}

	// The cap counts the user's live exports only.
	_, err = s.CreateExport(ctx, exportFixture(t, "exp_old", dev, t0), exportEvent("exp_old"), 2) // expires at once
	mustOK(t, err)
	_, err = s.CreateExport(ctx, exportFixture(t, "exp_bob", bobDev, hour), exportEvent("exp_bob"), 2)
	mustOK(t, err)
	_, err = s.CreateExport(ctx, exportFixture(t, "exp_2", dev, hour), exportEvent("exp_2"), 2)
	mustOK(t, err)
	e3 := exportFixture(t, "exp_3", dev, hour)
	_, err = s.CreateExport(ctx, e3, exportEvent(e3.ID), 2)
	wantErr(t, "third live export with limit 2", err, store.ErrLimit)
	_, err = s.RevokeGrants(ctx, []api.GrantID{e1.ID}, "test", t0, api.AuditEvent{Type: "grant.revoke"})
	mustOK(t, err)
	_, err = s.CreateExport(ctx, e3, exportEvent(e3.ID), 2)
	mustOK(t, err)

	// A revoked export's key stays used.
	again := exportFixture(t, "exp_again", dev, hour)
	again.ClientWGKey = e1.ClientWGKey
	_, err = s.CreateExport(ctx, again, exportEvent(again.ID), 0)
	wantErr(t, "key of a revoked export", err, store.ErrConflict)
}
