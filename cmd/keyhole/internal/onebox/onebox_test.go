package onebox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/client"
	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/apiclient"
)

// fixture is a running system with one gateway, the wiki app and users.
type fixture struct {
	box    *Box
	gw     *Gateway
	wiki   *WebApp
	echo   *EchoServer
	logBuf *syncBuffer
}

// syncBuffer collects every log line of the system for secret checks.
type syncBuffer struct {
	mu  chan struct{}
	buf bytes.Buffer
}

func newSyncBuffer() *syncBuffer { return &syncBuffer{mu: make(chan struct{}, 1)} }

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu <- struct{}{}
	defer func() { <-s.mu }()
	return s.buf.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu <- struct{}{}
	defer func() { <-s.mu }()
	return s.buf.String()
}

const password = "correct horse battery"

type fixtureOpts struct {
	lifetime        time.Duration
	postureInterval time.Duration
	gatewayGrace    time.Duration
	peerIdle        time.Duration // the gateway's lazy peer idle time
}

func newFixture(t *testing.T, o fixtureOpts) *fixture {
	t.Helper()
	ctx := context.Background()
	f := &fixture{logBuf: newSyncBuffer()}
	var w io.Writer = f.logBuf
	if testing.Verbose() {
		w = io.MultiWriter(f.logBuf, os.Stderr)
	}
	log := slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
	box, err := Start(ctx, Config{Dir: t.TempDir(), Logger: log, FastPasswords: true, GrantLifetime: o.lifetime, PostureInterval: o.postureInterval, GatewayGrace: o.gatewayGrace})
	if err != nil {
		t.Fatal(err)
	}
	f.box = box
	t.Cleanup(box.Close)
	if f.wiki, err = StartWebApp("wiki"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.wiki.Close)
	if f.echo, err = StartEcho(false); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.echo.Close)

	a := box.Admin
	noErr(t)(a.AddGatewayGroup(ctx, "site"))
	noErr(t)(a.AddGroup(ctx, "eng"))
	noErr(t)(a.AddUser(ctx, api.UserCreate{Name: "alice", Password: password, Groups: []string{"eng"}}))
	noErr(t)(a.AddUser(ctx, api.UserCreate{Name: "bob", Password: password}))
	noErr(t)(a.AddApp(ctx, api.AppCreate{
		Name: "wiki", Domains: []string{"wiki.corp.internal"}, GatewayGroup: "site",
		Ports: []api.PortRange{{Proto: "tcp", First: f.wiki.Port(), Last: f.wiki.Port()}},
	}))
	noErr(t)(a.AddApp(ctx, api.AppCreate{
		Name: "echo", Domains: []string{"echo.corp.internal"}, GatewayGroup: "site",
		Ports: []api.PortRange{{Proto: "tcp", First: f.echo.Port(), Last: f.echo.Port()}, {Proto: "udp", First: f.echo.Port(), Last: f.echo.Port()}},
	}))
	noErr(t)(a.AddPolicy(ctx, api.PolicyRuleCreate{Action: api.Allow, Groups: []string{"eng"}, Apps: []string{"wiki", "echo"}}))
	f.gw, err = box.AddGateway(ctx, GatewayOptions{Group: "site", Name: "gw1", MaxBackoff: 500 * time.Millisecond, PeerIdle: o.peerIdle, Hosts: map[string]netip.Addr{
		"wiki.corp.internal": Loopback, "echo.corp.internal": Loopback,
	}})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// noErr fails the test on the error of a (value, error) call.
func noErr(t *testing.T) func(any, error) {
	return func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
}

func (f *fixture) login(t *testing.T, user string, noRenew bool) *Client {
	t.Helper()
	c, err := f.box.Login(context.Background(), ClientOptions{User: user, Password: password, NoRenew: noRenew})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// httpVia fetches url with an HTTP client whose connections go through dial.
func httpGet(t *testing.T, dial func(ctx context.Context, network, addr string) (net.Conn, error), rawURL string) (string, error) {
	t.Helper()
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}}
	resp, err := hc.Get(rawURL)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func TestAllowedViaForwardAndSOCKS(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	c := f.login(t, "alice", false)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// keyhole connect wiki.corp.internal:PORT --listen 127.0.0.1:0
	ready := make(chan net.Addr, 1)
	errc := make(chan error, 1)
	go func() { errc <- c.Forward(ctx, "127.0.0.1:0", "wiki.corp.internal", f.wiki.Port(), ready) }()
	var laddr net.Addr
	select {
	case laddr = <-ready:
	case err := <-errc:
		t.Fatalf("forward: %v", err)
	}
	body, err := httpGet(t, (&net.Dialer{}).DialContext, "http://"+laddr.String()+"/")
	if err != nil || !strings.Contains(body, "Hello from the private app wiki") {
		t.Fatalf("through forward: body %q, err %v", body, err)
	}

	// keyhole up --socks5 127.0.0.1:0, with remote name resolution.
	sready := make(chan net.Addr, 1)
	go func() { errc <- c.ServeSOCKS(ctx, "127.0.0.1:0", sready) }()
	saddr := <-sready
	proxy, _ := url.Parse("socks5h://" + saddr.String())
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: http.ProxyURL(proxy)}}
	resp, err := hc.Get(fmt.Sprintf("http://wiki.corp.internal:%d/", f.wiki.Port()))
	if err != nil {
		t.Fatalf("through socks: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), "wiki") {
		t.Fatalf("through socks: %q", b)
	}
	// The gateway reported the flows: who, which app, where it dialled,
	// bytes each way.
	eventually(t, 5*time.Second, func() error {
		recs, err := f.box.Admin.Flows(context.Background(), "", 10)
		if err != nil {
			return err
		}
		for _, r := range recs {
			if r.App == "wiki" && r.Proto == "tcp" && r.BytesUp > 0 && r.BytesDown > 0 && r.DeviceID != "" && r.GatewayID != "" &&
				strings.HasPrefix(r.Destination, "wiki.corp.internal:") && !r.End.Before(r.Start) {
				return nil
			}
		}
		return fmt.Errorf("no complete flow record for wiki yet: %+v", recs)
	})
	// A denied destination through SOCKS fails at once with a refusal.
	start := time.Now()
	_, err = hc.Get("http://payroll.corp.internal:80/")
	if err == nil || time.Since(start) > 3*time.Second {
		t.Fatalf("unknown app through socks: err %v after %v", err, time.Since(start))
	}
	cancel()
}

func TestDefaultDeny(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	c := f.login(t, "bob", false)
	_, err := c.Dial(context.Background(), "tcp", "wiki.corp.internal", f.wiki.Port())
	if !errors.Is(err, client.ErrDenied) {
		t.Fatalf("bob reached wiki: %v", err)
	}
	if !strings.Contains(err.Error(), `no policy rule allows user "bob"`) {
		t.Fatalf("denial does not explain itself: %v", err)
	}
	evs, err := f.box.Admin.Audit(context.Background(), apiclient.AuditFilter{Type: "grant.deny", User: "bob"})
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 1 || evs[0].App != "wiki" || evs[0].Reason == "" || evs[0].DeviceID == "" {
		t.Fatalf("audit for the denial: %+v", evs)
	}
}
