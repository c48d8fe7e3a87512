package storetest

import (
	"context"
	"testing"

	"github.com/keyhole-net/keyhole/controller/store"
)

// testGatewayDraining checks that draining is stored per gateway, listed,
// undone, and refused for an unknown gateway.
func testGatewayDraining(t *testing.T, s store.Store) {
	ctx := context.Background()
	seed(t, s)
	g1 := mustGateway(t, s, "site-a", "gw1")
	g2 := mustGateway(t, s, "site-a", "gw2")
	if g1.Draining {
		t.Fatal("new gateway is draining")
	}
	mustOK(t, s.SetGatewayDraining(ctx, g1.ID, true))
	got, err := s.Gateway(ctx, g1.ID)
	mustOK(t, err)
	wantEqual(t, "Gateway draining", got.Draining, true)
	all, err := s.Gateways(ctx)
	mustOK(t, err)
	g1.Draining = true
	wantEqual(t, "Gateways", all, []store.Gateway{g1, g2})
	mustOK(t, s.SetGatewayDraining(ctx, g1.ID, false))
	got, err = s.Gateway(ctx, g1.ID)
	mustOK(t, err)
	wantEqual(t, "Gateway undrained", got.Draining, false)
	wantErr(t, "SetGatewayDraining unknown", s.SetGatewayDraining(ctx, "gw_nope", true), store.ErrNotFound)
}
