package onebox

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/apiclient"
)

// corpHosts is where the fixture's apps run, as a gateway resolves them.
func corpHosts() map[string]netip.Addr {
	return map[string]netip.Addr{"wiki.corp.internal": Loopback, "echo.corp.internal": Loopback}
}

// TestGatewayFailover runs two gateways in group site. A client's
// connection goes through gw1; gw1 stops; a new connection from the same
// client to the same app must work through gw2 within 5 s, with nothing
// done on the client: the controller moves the grant after the grace and
// tells the client (grant.moved), which installs gw2's peer.
func TestGatewayFailover(t *testing.T) {
	const grace = 500 * time.Millisecond
	f := newFixture(t, fixtureOpts{gatewayGrace: grace})
	ctx := context.Background()
	gw2, err := f.box.AddGateway(ctx, GatewayOptions{Group: "site", Name: "gw2", MaxBackoff: 500 * time.Millisecond, Hosts: corpHosts()})
	if err != nil {
		t.Fatal(err)
	}
	a := f.box.Admin
	drain, undrain := true, false
	// The first grant must go through gw1: drain gw2 meanwhile.
	noErr(t)(a.UpdateGateway(ctx, gw2.ID(), api.GatewayUpdate{Draining: &drain}))
	c := f.login(t, "alice", false)
	conn, err := c.Dial(ctx, "tcp", "echo.corp.internal", f.echo.Port())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := echoOnce(conn, "through gw1"); err != nil {
		t.Fatal(err)
	}
	if f.gw.Table().Len() != 1 || gw2.Table().Len() != 0 {
		t.Fatalf("grants: gw1 %d, gw2 %d; want the one through gw1", f.gw.Table().Len(), gw2.Table().Len())
	}
	noErr(t)(a.UpdateGateway(ctx, gw2.ID(), api.GatewayUpdate{Draining: &undrain}))

	start := time.Now()
	if err := f.gw.Stop(); err != nil {
		t.Fatal(err)
	}
	attempts := 0
	eventually(t, 5*time.Second, func() error {
		attempts++
		dctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		nc, err := c.Dial(dctx, "tcp", "echo.corp.internal", f.echo.Port())
		if err != nil {
			return err
		}
		defer nc.Close()
		return echoOnce(nc, "through gw2")
	})
	took := time.Since(start)
	t.Logf("new connection through gw2 %v after gw1 stopped (grace %v, %d attempts)", took.Round(time.Millisecond), grace, attempts)
	if took > 5*time.Second {
		t.Fatalf("failover took %v; want under 5 s", took)
	}
	if gw2.Table().Len() != 1 {
		t.Fatalf("gw2 holds %d grants; want the moved one", gw2.Table().Len())
	}
	st := c.Status()
	if len(st.Grants) != 1 || st.Grants[0].GatewayID != gw2.ID() {
		t.Fatalf("client grants %+v; want one through %s", st.Grants, gw2.ID())
	}
	audit, err := a.Audit(ctx, apiclient.AuditFilter{Type: "grant.move"})
	if err != nil {
		t.Fatal(err)
	}
	if len(audit) != 1 || audit[0].GatewayID != gw2.ID() {
		t.Fatalf("grant.move audit %+v; want one to %s", audit, gw2.ID())
	}
}

// TestDrainMovesOnRenewal drains the gateway of a client's grant: new
// grants avoid it, and the client's renewal moves it to gw2 (the renewal
// answer carries the new grant and peer) with nothing done on the client.
func TestDrainMovesOnRenewal(t *testing.T) {
	f := newFixture(t, fixtureOpts{lifetime: 3 * time.Second})
	ctx := context.Background()
	gw2, err := f.box.AddGateway(ctx, GatewayOptions{Group: "site", Name: "gw2", MaxBackoff: 500 * time.Millisecond, Hosts: corpHosts()})
	if err != nil {
		t.Fatal(err)
	}
	a := f.box.Admin
	drain := true
	noErr(t)(a.UpdateGateway(ctx, gw2.ID(), api.GatewayUpdate{Draining: &drain}))
	c := f.login(t, "alice", false)
	conn, err := c.Dial(ctx, "tcp", "echo.corp.internal", f.echo.Port())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := echoOnce(conn, "through gw1"); err != nil {
		t.Fatal(err)
	}
	undrain := false
	noErr(t)(a.UpdateGateway(ctx, gw2.ID(), api.GatewayUpdate{Draining: &undrain}))
	noErr(t)(a.UpdateGateway(ctx, f.gw.ID(), api.GatewayUpdate{Draining: &drain}))
	// The open connection keeps the grant in use, so the client renews it
	// at 2/3 of its 3 s lifetime; the renewal moves it.
	eventually(t, 5*time.Second, func() error {
		st := c.Status()
		if len(st.Grants) != 1 || st.Grants[0].GatewayID != gw2.ID() {
			return fmt.Errorf("client grants %+v", st.Grants)
		}
		return nil
	})
	nc, err := c.Dial(ctx, "tcp", "echo.corp.internal", f.echo.Port())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if err := echoOnce(nc, "through gw2"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Second, func() error {
		if n := f.gw.Table().Len(); n != 0 {
			return fmt.Errorf("draining gw1 still holds %d grants", n)
		}
		return nil
	})
}

// TestFailoverWhileClientStreamDown: gw1 dies while the controller is
// down, so the client's event stream is down too and no grant.moved can
// reach it. The restarted controller moves gw1's grants after the grace,
// and the client's next use of the app checks its cached grant with the
// controller (revoked: moved), asks again and gets the grant through gw2.
func TestFailoverWhileClientStreamDown(t *testing.T) {
	const grace = 500 * time.Millisecond
	f := newFixture(t, fixtureOpts{gatewayGrace: grace})
	ctx := context.Background()
	gw2, err := f.box.AddGateway(ctx, GatewayOptions{Group: "site", Name: "gw2", MaxBackoff: 500 * time.Millisecond, Hosts: corpHosts()})
	if err != nil {
		t.Fatal(err)
	}
	a := f.box.Admin
	drain, undrain := true, false
	noErr(t)(a.UpdateGateway(ctx, gw2.ID(), api.GatewayUpdate{Draining: &drain}))
	c := f.login(t, "alice", false)
	conn, err := c.Dial(ctx, "tcp", "echo.corp.internal", f.echo.Port())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := echoOnce(conn, "through gw1"); err != nil {
		t.Fatal(err)
	}
	noErr(t)(a.UpdateGateway(ctx, gw2.ID(), api.GatewayUpdate{Draining: &undrain}))
	old := c.Status().Grants[0].ID

	if err := f.box.StopController(); err != nil {
		t.Fatal(err)
	}
	if err := f.gw.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := f.box.RestartController(ctx); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	// The restarted controller's relay (the STUN server) has a new port,
	// so the client's address lookups time out for a while: allow each
	// attempt more than the lookup takes.
	eventually(t, 20*time.Second, func() error {
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		nc, err := c.Dial(dctx, "tcp", "echo.corp.internal", f.echo.Port())
		if err != nil {
			return err
		}
		defer nc.Close()
		return echoOnce(nc, "through gw2")
	})
	t.Logf("new connection through gw2 %v after the controller restarted without gw1 (grace %v)", time.Since(start).Round(time.Millisecond), grace)
	st := c.Status()
	if len(st.Grants) != 1 || st.Grants[0].GatewayID != gw2.ID() || st.Grants[0].ID == old {
		t.Fatalf("client grants %+v; want one new grant through %s", st.Grants, gw2.ID())
	}
}
