package onebox

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/client"
	"github.com/keyhole-net/keyhole/controller"
	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/apiclient"
	"github.com/keyhole-net/keyhole/internal/key"
	"github.com/keyhole-net/keyhole/internal/trust"
)

// apiDevice is a logged-in device talking to the controller API directly
// (as keyhole export does, or a modified client would).
type apiDevice struct {
	api    *apiclient.Client
	dir    string
	wgPriv key.WGPrivate // the device's own WireGuard key
	wgKey  key.WGPublic
}

// loginDevice logs user in on a new device.
func (f *fixture) loginDevice(t *testing.T, user string) *apiDevice {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	if _, err := client.Login(ctx, client.LoginConfig{ControllerURL: f.box.URL, CAFingerprint: f.box.Fingerprint, User: user, Password: password, DataDir: dir}); err != nil {
		t.Fatal(err)
	}
	return openDevice(t, dir)
}

// openDevice opens the logged-in device in dir.
func openDevice(t *testing.T, dir string) *apiDevice {
	t.Helper()
	p, err := client.LoadProfile(dir)
	if err != nil {
		t.Fatal(err)
	}
	creds, err := trust.LoadCredentials(dir)
	if err != nil {
		t.Fatal(err)
	}
	sess, err := os.ReadFile(filepath.Join(dir, "session.token"))
	if err != nil {
		t.Fatal(err)
	}
	ac, err := apiclient.New(apiclient.Config{URL: p.ControllerURL, Credentials: creds, Bearer: strings.TrimSpace(string(sess))})
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "wg.key"))
	if err != nil {
		t.Fatal(err)
	}
	priv, err := key.ParseWGPrivate(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return &apiDevice{api: ac, dir: dir, wgPriv: priv, wgKey: priv.Public()}
}

func freshKey(t *testing.T) key.WGPublic {
	t.Helper()
	k, err := key.NewWGPrivate()
	if err != nil {
		t.Fatal(err)
	}
	return k.Public()
}

func (d *apiDevice) export(app string, k key.WGPublic, ttl time.Duration) (api.ExportResponse, error) {
	var resp api.ExportResponse
	err := d.api.Do(context.Background(), "POST", "/v1/exports", api.ExportRequest{App: app, PublicKey: k, TTL: api.Duration(ttl)}, &resp)
	return resp, err
}

// wantCode fails unless err is an API error with code.
func wantCode(t *testing.T, what string, err error, code string) {
	t.Helper()
	if !apiclient.IsCode(err, code) {
		t.Fatalf("%s: err = %v; want code %s", what, err, code)
	}
}

// TestExportAPI drives POST /v1/exports against a real controller and
// gateway: the decision, the peer a stock client gets, and that revocation
// and re-evaluation treat an export like any grant.
func TestExportAPI(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	ctx := context.Background()
	alice := f.loginDevice(t, "alice")
	bob := f.loginDevice(t, "bob")
	vip := map[string]netip.Addr{}
	apps, err := f.box.Admin.Apps(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range apps {
		for _, ip := range a.VirtualIPs {
			vip[a.Name] = ip
		}
	}
	devices, err := f.box.Admin.Devices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	overlay := map[netip.Addr]bool{}
	for _, d := range devices {
		overlay[d.OverlayIP] = true
	}
	table := f.gw.Table()

	k := freshKey(t)
	exp, err := alice.export("wiki.corp.internal", k, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("allowed", func(t *testing.T) {
		g := exp.Grant
		if !g.Export || g.App != "wiki" || g.User != "alice" || g.DeviceID == "" {
			t.Errorf("grant %+v: want an export of wiki for alice's device", g)
		}
		if want := []netip.Prefix{netip.PrefixFrom(vip["wiki"], 32)}; !slices.Equal(exp.Peer.AllowedIPs, want) {
			t.Errorf("AllowedIPs %v; want only the wiki's %v", exp.Peer.AllowedIPs, want)
		}
		if want := map[string]netip.Addr{"wiki.corp.internal": vip["wiki"]}; fmt.Sprint(exp.Names) != fmt.Sprint(want) {
			t.Errorf("Names %v; want %v", exp.Names, want)
		}
		if exp.Address != g.ClientIP || !controller.DefaultPools.Devices.Contains(exp.Address) || overlay[exp.Address] {
			t.Errorf("address %v (grant client IP %v): want its own, from the devices pool, no device's", exp.Address, g.ClientIP)
		}
		if got := g.NotAfter.Sub(g.CreatedAt); got != controller.DefaultExportTTL {
			t.Errorf("lifetime %v; want the default %v", got, controller.DefaultExportTTL)
		}
		if len(exp.Peer.Endpoints) == 0 || exp.Peer.PublicKey.IsZero() || len(exp.Peer.CheckKey) != 0 {
			t.Errorf("peer %+v: want the gateway's key and direct endpoints, no check key", exp.Peer)
		}
		for _, c := range exp.Peer.Candidates {
			if c.Type == api.CandidateRelay {
				t.Errorf("relay candidate %v offered to a stock client", c)
			}
		}
		// The gateway acked before the answer: the peer is there now.
		gg, ok := table.Lookup(g.ID)
		if !ok || !gg.ClientWGKey.Equal(k) || gg.ClientIP != exp.Address || !table.HasPeer(k) {
			t.Errorf("gateway holds %+v (ok %v); want the export's key and address", gg, ok)
		}
		evs, err := f.box.Admin.Audit(ctx, apiclient.AuditFilter{Type: "export.allow", User: "alice"})
		if err != nil || len(evs) != 1 || evs[0].GrantID != g.ID || evs[0].App != "wiki" || evs[0].Rule == "" || evs[0].GatewayID == "" {
			t.Errorf("audit: %+v, %v; want one export.allow with grant, rule and gateway", evs, err)
		}
	})
	t.Run("denied by policy", func(t *testing.T) {
		_, err := bob.export("wiki", freshKey(t), 0)
		wantCode(t, "bob", err, api.CodeDenied)
		evs, aerr := f.box.Admin.Audit(ctx, apiclient.AuditFilter{Type: "export.deny", User: "bob"})
		if aerr != nil || len(evs) != 1 || evs[0].App != "wiki" || !strings.Contains(evs[0].Reason, "bob") {
			t.Errorf("audit: %+v, %v; want one export.deny for bob and wiki", evs, aerr)
		}
		_, err = alice.export("payroll", freshKey(t), 0)
		wantCode(t, "unknown app", err, api.CodeNotFound)
	})
	t.Run("bad requests", func(t *testing.T) {
		zeroB64 := base64.StdEncoding.EncodeToString(make([]byte, 32))
		for _, tc := range []struct {
			name string
			body any
			code string
		}{
			{"no key", map[string]any{"app": "wiki"}, api.CodeBadRequest},
			{"zero key", map[string]any{"app": "wiki", "public_key": zeroB64}, api.CodeBadRequest},
			{"short key", map[string]any{"app": "wiki", "public_key": "AAAA"}, api.CodeBadRequest},
			{"no app", api.ExportRequest{PublicKey: freshKey(t)}, api.CodeBadRequest},
			{"key of an earlier export", api.ExportRequest{App: "wiki", PublicKey: k}, api.CodeConflict},
			{"the device's own key", api.ExportRequest{App: "wiki", PublicKey: alice.wgKey}, api.CodeConflict},
			{"another user's device key", api.ExportRequest{App: "wiki", PublicKey: bob.wgKey}, api.CodeConflict},
			{"ttl over the maximum", api.ExportRequest{App: "wiki", PublicKey: freshKey(t), TTL: api.Duration(controller.MaxExportTTL + time.Second)}, api.CodeBadRequest},
			{"ttl under the minimum", api.ExportRequest{App: "wiki", PublicKey: freshKey(t), TTL: api.Duration(30 * time.Second)}, api.CodeBadRequest},
			{"negative ttl", api.ExportRequest{App: "wiki", PublicKey: freshKey(t), TTL: api.Duration(-time.Hour)}, api.CodeBadRequest},
		} {
			err := alice.api.Do(ctx, "POST", "/v1/exports", tc.body, nil)
			if !apiclient.IsCode(err, tc.code) {
				t.Errorf("%s: err = %v; want %s", tc.name, err, tc.code)
			}
		}
	})
	t.Run("not renewed", func(t *testing.T) {
		err := alice.api.Do(ctx, "POST", "/v1/grants/"+string(exp.Grant.ID)+"/renew", nil, nil)
		wantCode(t, "renew", err, api.CodeForbidden)
		if !strings.Contains(err.Error(), "keyhole export") {
			t.Errorf("renewal refusal does not say what to do: %v", err)
		}
	})
	t.Run("names under a wildcard", func(t *testing.T) {
		// They get addresses on demand, for grants; an export holds only
		// what an app has for good.
		if _, err := f.box.Admin.AddApp(ctx, api.AppCreate{Name: "devboxes", Domains: []string{"*.dev.internal"}, GatewayGroup: "site",
			Ports: []api.PortRange{{Proto: "tcp", First: 22, Last: 22}}}); err != nil {
			t.Fatal(err)
		}
		if _, err := f.box.Admin.AddPolicy(ctx, api.PolicyRuleCreate{Action: api.Allow, Users: []string{"alice"}, Apps: []string{"devboxes"}}); err != nil {
			t.Fatal(err)
		}
		for _, dest := range []string{"a.dev.internal", "devboxes"} {
			_, err := alice.export(dest, freshKey(t), 0)
			wantCode(t, dest, err, api.CodeBadRequest)
		}
	})
	t.Run("a grant beside an export", func(t *testing.T) {
		// The device's own grant for the same app is a grant of its own,
		// not the export extended.
		var gr api.GrantResponse
		if err := alice.api.Do(ctx, "POST", "/v1/grants", api.GrantRequest{App: "wiki"}, &gr); err != nil {
			t.Fatal(err)
		}
		if gr.Grant.ID == exp.Grant.ID || gr.Grant.Export || gr.Grant.ClientIP == exp.Address || !overlay[gr.Grant.ClientIP] {
			t.Errorf("grant %+v; want the device's own, beside export %s", gr.Grant, exp.Grant.ID)
		}
	})
	t.Run("revoked by the device", func(t *testing.T) {
		if err := alice.api.Do(ctx, "DELETE", "/v1/grants/"+string(exp.Grant.ID), nil, nil); err != nil {
			t.Fatal(err)
		}
		if _, ok := table.Lookup(exp.Grant.ID); ok {
			t.Error("gateway still holds the revoked export")
		}
		_, err := alice.export("wiki", k, 0)
		wantCode(t, "a revoked export's key", err, api.CodeConflict)
	})
	t.Run("re-login keeps exports; disabling the device revokes them", func(t *testing.T) {
		e, err := alice.export("wiki", freshKey(t), 0)
		if err != nil {
			t.Fatal(err)
		}
		p, err := client.LoadProfile(alice.dir)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := client.Login(ctx, client.LoginConfig{ControllerURL: f.box.URL, CAFingerprint: f.box.Fingerprint, User: "alice", Password: password, DataDir: alice.dir}); err != nil {
			t.Fatal(err)
		}
		if _, ok := table.Lookup(e.Grant.ID); !ok {
			t.Error("a re-login (device key rotation) revoked the export, whose key is its own")
		}
		disabled := true
		if _, err := f.box.Admin.UpdateDevice(ctx, p.DeviceID, api.DeviceUpdate{Disabled: &disabled}); err != nil {
			t.Fatal(err)
		}
		if _, ok := table.Lookup(e.Grant.ID); ok {
			t.Error("disabling the exporting device left its export at the gateway")
		}
	})
	t.Run("logout revokes the device's exports", func(t *testing.T) {
		if _, err := f.box.Admin.AddUser(ctx, api.UserCreate{Name: "dave", Password: password, Groups: []string{"eng"}}); err != nil {
			t.Fatal(err)
		}
		dave := f.loginDevice(t, "dave")
		e, err := dave.export("wiki", freshKey(t), 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := client.Logout(ctx, dave.dir); err != nil {
			t.Fatal(err)
		}
		if _, ok := table.Lookup(e.Grant.ID); ok {
			t.Error("logout left the device's export at the gateway")
		}
	})
	t.Run("cap per user", func(t *testing.T) {
		carol := "carol"
		if _, err := f.box.Admin.AddUser(ctx, api.UserCreate{Name: carol, Password: password, Groups: []string{"eng"}}); err != nil {
			t.Fatal(err)
		}
		laptop, phone := f.loginDevice(t, carol), f.loginDevice(t, carol)
		var first api.GrantID
		for i := range controller.MaxExportsPerUser {
			d := laptop
			if i%2 == 1 {
				d = phone // the cap is per user, across devices
			}
			e, err := d.export("echo", freshKey(t), 0)
			if err != nil {
				t.Fatalf("export %d: %v", i+1, err)
			}
			if i == 0 {
				first = e.Grant.ID
			}
		}
		_, err := laptop.export("wiki", freshKey(t), 0)
		wantCode(t, "one over the cap", err, api.CodeLimitReached)
		if err := f.box.Admin.RevokeGrant(ctx, first); err != nil {
			t.Fatal(err)
		}
		if _, err := laptop.export("wiki", freshKey(t), 0); err != nil {
			t.Fatalf("after an admin revoked one: %v", err)
		}
	})
	t.Run("a policy change revokes exports", func(t *testing.T) {
		live := func() (n int) {
			for _, g := range table.Grants() {
				if g.User == "carol" {
					n++
				}
			}
			return n
		}
		if live() != controller.MaxExportsPerUser {
			t.Fatalf("gateway holds %d of carol's exports; want %d", live(), controller.MaxExportsPerUser)
		}
		if _, err := f.box.Admin.AddPolicy(ctx, api.PolicyRuleCreate{Position: 1, Action: api.Deny, Users: []string{"carol"}, Apps: []string{"*"}}); err != nil {
			t.Fatal(err)
		}
		if n := live(); n != 0 {
			t.Errorf("gateway still holds %d of carol's exports after a rule denied her everything", n)
		}
	})
}
