package controller

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/controller/auth"
	"github.com/keyhole-net/keyhole/gateway"
	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/apiclient"
	"github.com/keyhole-net/keyhole/internal/trust"
)

// testEnv is a real controller (SQLite in a temporary directory) on
// loopback, with real gateways and devices that log in over the API.
type testEnv struct {
	t     *testing.T
	cfg   Config
	ping  time.Duration // 0: the default
	c     *Controller
	url   string
	fp    string
	admin *apiclient.Admin
	stop  func() // stops the running controller and waits for it
}

const testPassword = "correct horse battery"

// newTestEnv starts a controller; cfg may set limits, the rest is filled in.
func newTestEnv(t *testing.T, cfg Config, ping time.Duration) *testEnv {
	t.Helper()
	e := startTestEnv(t, cfg, ping)
	tok, err := os.ReadFile(filepath.Join(e.cfg.DataDir, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	if e.admin, err = apiclient.NewAdmin(e.url, e.fp, strings.TrimSpace(string(tok))); err != nil {
		t.Fatal(err)
	}
	return e
}

// startTestEnv starts a controller without an admin client (a controller
// that joins a cluster has no admin token file of its own).
func startTestEnv(t *testing.T, cfg Config, ping time.Duration) *testEnv {
	t.Helper()
	cfg.DataDir = filepath.Join(t.TempDir(), "controller")
	cfg.Listen = "127.0.0.1:0"
	// Explicit: a restart listens on the concrete API port, and the relay
	// must not then fall back to the shared default 3478.
	cfg.RelayListen = "127.0.0.1:0"
	cfg.Names = []string{"localhost", "127.0.0.1"}
	cfg.Password = auth.Params{MemoryKiB: 64, Iterations: 1, Parallelism: 1}
	e := &testEnv{t: t, cfg: cfg, ping: ping}
	e.start()
	t.Cleanup(func() { e.stop() })
	return e
}

// start runs a controller on e.cfg (the same directory and address on a
// restart).
func (e *testEnv) start() {
	t := e.t
	t.Helper()
	c, err := New(context.Background(), e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if e.ping > 0 {
		c.pingInterval = e.ping
	}
	addr, err := c.Listen()
	if err != nil {
		c.Close()
		t.Fatal(err)
	}
	e.cfg.Listen = addr.String()
	e.c, e.url, e.fp = c, "https://"+addr.String(), c.Fingerprint()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	stopped := false
	e.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("controller Run: %v", err)
		}
		if err := c.Close(); err != nil {
			t.Errorf("controller Close: %v", err)
		}
	}
}

// restart stops the controller and starts it again on the same data.
func (e *testEnv) restart() {
	e.t.Helper()
	e.stop()
	e.start()
}

func (e *testEnv) must(_ any, err error) {
	e.t.Helper()
	if err != nil {
		e.t.Fatal(err)
	}
}

// addGateway enrols and runs a gateway of group and waits for its stream.
func (e *testEnv) addGateway(group string) *gateway.Gateway {
	e.t.Helper()
	return e.addGatewayWith(group, nil)
}

// addGatewayWith is addGateway for a gateway that fails over to the
// controllers at fallbacks.
func (e *testEnv) addGatewayWith(group string, fallbacks []string) *gateway.Gateway {
	t := e.t
	t.Helper()
	ctx := context.Background()
	tok, err := e.admin.GatewayToken(ctx, group, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	gw, err := gateway.New(gateway.Config{
		ControllerURL: e.url, ControllerURLs: fallbacks, CAFingerprint: e.fp, Token: tok.Token, DataDir: t.TempDir(), Name: "gw",
		MaxBackoff: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	gctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- gw.Run(gctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("gateway Run: %v", err)
		}
	})
	e.waitGateway(gw)
	return gw
}

// waitGateway waits until gw holds a control stream to the controller.
func (e *testEnv) waitGateway(gw *gateway.Gateway) {
	e.t.Helper()
	eventually(e.t, 10*time.Second, func() error {
		if !gw.Connected() || !e.c.hub.connected(gw.ID()) {
			return errors.New("gateway stream not up")
		}
		return nil
	})
}

// testDevice is a logged-in device talking to the controller as a client
// does (device certificate + session).
type testDevice struct {
	t   *testing.T
	id  api.DeviceID
	api *apiclient.Client
	key *ecdsa.PrivateKey // the device key
	// creds and session are what the device logged in with.
	creds   *trust.Credentials
	session string
}

// login enrols a new device for user.
func (e *testEnv) login(user string) *testDevice {
	e.t.Helper()
	d, _, err := e.tryLogin(api.LoginRequest{User: user, Password: testPassword})
	if err != nil {
		e.t.Fatalf("login %s: %v", user, err)
	}
	return d
}

// tryLogin completes req with a new device's keys and CSR, sends it and
// returns the logged-in device, or the error.
func (e *testEnv) tryLogin(req api.LoginRequest) (*testDevice, api.LoginResponse, error) {
	t := e.t
	t.Helper()
	ctx := context.Background()
	pinned, err := apiclient.New(apiclient.Config{URL: e.url, Fingerprint: e.fp})
	if err != nil {
		t.Fatal(err)
	}
	cs, err := pinned.ConnectionState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := trust.CAFromChain(cs, e.fp)
	if err != nil {
		t.Fatal(err)
	}
	dev, creds := newLoginDevice(t)
	k := creds.Key
	var resp api.LoginResponse
	req.DeviceName, req.CSR, req.WGPublicKey = dev.DeviceName, dev.CSR, dev.WGPublicKey
	if err := pinned.Do(ctx, "POST", "/v1/login", req, &resp); err != nil {
		return nil, resp, err
	}
	cert, err := trust.ParseCertPEM(resp.Certificate)
	if err != nil {
		t.Fatal(err)
	}
	creds = &trust.Credentials{Key: k, Cert: cert, CA: caCert}
	c, err := apiclient.New(apiclient.Config{URL: e.url, Credentials: creds, Bearer: resp.Session})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.CloseIdle)
	return &testDevice{t: t, id: resp.DeviceID, api: c, key: k, creds: creds, session: resp.Session}, resp, nil
}

// grant asks for a grant for dest.
func (d *testDevice) grant(dest string) (api.GrantResponse, error) {
	var resp api.GrantResponse
	err := d.api.Do(context.Background(), "POST", "/v1/grants", api.GrantRequest{App: dest}, &resp)
	return resp, err
}

// mustGrant asks for a grant for dest that must be given.
func (d *testDevice) mustGrant(dest string) api.GrantResponse {
	d.t.Helper()
	resp, err := d.grant(dest)
	if err != nil {
		d.t.Fatalf("grant %s: %v", dest, err)
	}
	return resp
}

// eventStream reads a device's GET /v1/device/events.
type eventStream struct {
	events chan api.DeviceEvent // closed when the stream ends
	cancel context.CancelFunc
}

// events opens the device's event stream; the test's end closes it.
func (d *testDevice) events() *eventStream {
	d.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	resp, err := d.api.Stream(ctx, "/v1/device/events")
	if err != nil {
		cancel()
		d.t.Fatalf("open events: %v", err)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/x-ndjson" {
		d.t.Errorf("events Content-Type %q", ct)
	}
	s := &eventStream{events: make(chan api.DeviceEvent, 64), cancel: cancel}
	go func() {
		defer close(s.events)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			var ev api.DeviceEvent
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				ev = api.DeviceEvent{Type: "malformed: " + sc.Text()}
			}
			s.events <- ev
		}
	}()
	d.t.Cleanup(cancel)
	return s
}

// next returns the next event that is not a ping, failing the test when
// none arrives within timeout or the stream ends.
func (s *eventStream) next(t *testing.T, timeout time.Duration) api.DeviceEvent {
	t.Helper()
	ev, err := s.nextOrEnd(timeout, true)
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

// nextOrEnd returns the next event (pings skipped when skipPings), or an
// error for a timeout or the end of the stream (errStreamEnded).
func (s *eventStream) nextOrEnd(timeout time.Duration, skipPings bool) (api.DeviceEvent, error) {
	deadline := time.After(timeout)
	for {
		select {
		case ev, ok := <-s.events:
			if !ok {
				return api.DeviceEvent{}, errStreamEnded
			}
			if skipPings && ev.Type == api.DeviceEventPing {
				continue
			}
			return ev, nil
		case <-deadline:
			return api.DeviceEvent{}, fmt.Errorf("no event within %v", timeout)
		}
	}
}

var errStreamEnded = errors.New("stream ended")

// waitEnd waits for the stream to end, with events before it returned.
func (s *eventStream) waitEnd(t *testing.T, timeout time.Duration) []api.DeviceEvent {
	t.Helper()
	var evs []api.DeviceEvent
	for {
		ev, err := s.nextOrEnd(timeout, true)
		if errors.Is(err, errStreamEnded) {
			return evs
		}
		if err != nil {
			t.Fatalf("stream still open after %v (events %+v)", timeout, evs)
		}
		evs = append(evs, ev)
	}
}

// eventually polls fn until it returns nil or timeout passes, then fails
// with the last error.
func eventually(t *testing.T, timeout time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %v", timeout, err)
		}
		<-tick.C
	}
}

// wantCode fails unless err is an API error with code.
func wantCode(t *testing.T, what string, err error, code string) {
	t.Helper()
	if !apiclient.IsCode(err, code) {
		t.Fatalf("%s: err %v; want code %s", what, err, code)
	}
}

// setupCorp creates gateway group site with one gateway, group eng, users
// alice (eng) and bob, apps corp (*.corp.internal) and wiki
// (wiki.corp.internal), and a rule allowing eng both.
func (e *testEnv) setupCorp() *gateway.Gateway {
	e.t.Helper()
	ctx := context.Background()
	a := e.admin
	e.must(a.AddGatewayGroup(ctx, "site"))
	e.must(a.AddGroup(ctx, "eng"))
	e.must(a.AddUser(ctx, api.UserCreate{Name: "alice", Password: testPassword, Groups: []string{"eng"}}))
	e.must(a.AddUser(ctx, api.UserCreate{Name: "bob", Password: testPassword}))
	tcp443 := []api.PortRange{{Proto: "tcp", First: 443, Last: 443}}
	e.must(a.AddApp(ctx, api.AppCreate{Name: "corp", Domains: []string{"*.corp.internal"}, Ports: tcp443, GatewayGroup: "site"}))
	e.must(a.AddApp(ctx, api.AppCreate{Name: "wiki", Domains: []string{"wiki.corp.internal"}, Ports: tcp443, GatewayGroup: "site"}))
	e.must(a.AddPolicy(ctx, api.PolicyRuleCreate{Action: api.Allow, Groups: []string{"eng"}, Apps: []string{"*"}}))
	return e.addGateway("site")
}
