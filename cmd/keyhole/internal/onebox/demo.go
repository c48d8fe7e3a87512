package onebox

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/keyhole-net/keyhole/client"
	"github.com/keyhole-net/keyhole/internal/api"
)

// DemoConfig configures RunDemo.
type DemoConfig struct {
	// Out receives the narration.
	Out io.Writer
	// Dir keeps every component's data after the demo; "" uses a temporary
	// directory removed when RunDemo returns. A given Dir must be empty or
	// absent: the demo builds its system from scratch.
	Dir string
	// Listen is the controller's API address; "" tries 127.0.0.1:8443 and
	// takes a free port if that one is in use.
	Listen string
	// ForwardListen is where alice's wiki forward listens once the tour is
	// over; "" tries 127.0.0.1:8080, then a free port.
	ForwardListen string
	// Command is how the printed commands call keyhole (default "keyhole").
	Command string
	// Logger receives the components' logs (nil: discard).
	Logger *slog.Logger
	// Ready, if set, is called once the tour is over and the demo keeps
	// running, with what a person (or a test) can use next.
	Ready func(DemoInfo)
}

// DemoInfo is what a running demo offers once its tour is over.
type DemoInfo struct {
	URL         string // controller API
	Fingerprint string // controller CA
	AdminToken  string
	Dir         string
	// WikiForward is alice's forward to the wiki, e.g. "127.0.0.1:8080".
	WikiForward string
	// Password is the password of both demo users, alice and bob.
	Password string
}

// Names the demo builds.
const (
	demoSite       = "site"
	demoWikiHost   = "wiki.corp.internal"
	demoPayrollHst = "payroll.corp.internal"
)

// demo is one run of RunDemo: what it started, to stop on the way out.
type demo struct {
	cfg  DemoConfig
	out  io.Writer
	step int
	ctx  context.Context // RunDemo's: once done, failures are just the stop

	dir       string
	removeDir bool
	box       *Box
	apps      []*WebApp
	forwards  []*demoForward
}

// RunDemo runs the whole product on this machine and narrates it: a
// controller, two private web apps, a gateway, users, apps and a policy;
// then alice reaching the wiki through her tunnel, bob and alice being
// denied what policy does not allow, a grant revoked with a connection
// open, and a fresh grant. It then keeps the controller and a forward for
// alice running, prints commands to try, and waits for ctx to end. It
// returns nil when stopped by ctx, and only after everything it started
// has stopped.
func RunDemo(ctx context.Context, cfg DemoConfig) error {
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	if cfg.Command == "" {
		cfg.Command = "keyhole"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	d := &demo{cfg: cfg, out: cfg.Out, ctx: ctx}
	err := d.run(ctx)
	d.close()
	if ctx.Err() != nil {
		fmt.Fprintln(d.out, "\nStopped.")
		return nil
	}
	return err
}

func (d *demo) ok(format string, args ...any) {
	d.step++
	fmt.Fprintf(d.out, "%2d ✓ %s\n", d.step, fmt.Sprintf(format, args...))
}

func (d *demo) no(format string, args ...any) {
	d.step++
	fmt.Fprintf(d.out, "%2d ✗ %s\n", d.step, fmt.Sprintf(format, args...))
}

func (d *demo) detail(format string, args ...any) {
	fmt.Fprintf(d.out, "     %s\n", fmt.Sprintf(format, args...))
}

// fail reports the step that could not be done and returns err. After
// Ctrl-C a step cut short is not a failure and is not reported.
func (d *demo) fail(what string, err error) error {
	if d.ctx.Err() != nil {
		return err
	}
	d.step++
	fmt.Fprintf(d.out, "%2d ✗ %s: %v\n", d.step, what, err)
	return fmt.Errorf("demo: %s: %w", what, err)
}

func (d *demo) run(ctx context.Context) error {
	if err := d.makeDir(); err != nil {
		return err
	}
	fmt.Fprintf(d.out, "Keyhole demo: the whole product on this machine, on loopback only.\n\n")

	// 1. Controller.
	listen, fallback := d.cfg.Listen, d.cfg.Listen == ""
	if fallback {
		listen = "127.0.0.1:8443"
	}
	box, err := Start(ctx, Config{Dir: d.dir, Listen: listen, Logger: d.cfg.Logger})
	if err != nil && fallback && errors.Is(err, syscall.EADDRINUSE) {
		box, err = Start(ctx, Config{Dir: d.dir, Listen: "127.0.0.1:0", Logger: d.cfg.Logger})
	}
	if err != nil {
		return d.fail("start the controller", err)
	}
	d.box = box
	d.ok("Controller up on %s (embedded SQLite in %s)", box.URL, filepath.Join(d.dir, "controller"))
	d.detail("CA fingerprint: %s", box.Fingerprint)

	// 2. Private apps.
	wiki, err := d.startApp("wiki")
	if err != nil {
		return d.fail("start the wiki", err)
	}
	payroll, err := d.startApp("payroll")
	if err != nil {
		return d.fail("start payroll", err)
	}
	d.ok("Private web apps on loopback: wiki on %s, payroll on %s", wiki.Addr, payroll.Addr)
	d.detail("only the gateway is told where they are; clients know them as %s and %s", demoWikiHost, demoPayrollHst)

	// 3. Gateway.
	a := box.Admin
	if _, err := a.AddGatewayGroup(ctx, demoSite); err != nil {
		return d.fail("create gateway group", err)
	}
	gw, err := box.AddGateway(ctx, GatewayOptions{Group: demoSite, Name: "gw1", Hosts: map[string]netip.Addr{
		demoWikiHost: Loopback, demoPayrollHst: Loopback,
	}})
	if err != nil {
		return d.fail("enrol the gateway", err)
	}
	d.ok("Gateway group %q; gateway gw1 (%s) enrolled with a one-time token and connected out to the controller", demoSite, gw.ID())
	d.detail("it opened no inbound port, only one WireGuard UDP socket (port %d); on its site %s and %s resolve to 127.0.0.1", gw.Port(), demoWikiHost, demoPayrollHst)

	// 4. People.
	password := demoPassword()
	if _, err := a.AddGroup(ctx, "eng"); err != nil {
		return d.fail("create group eng", err)
	}
	if _, err := a.AddUser(ctx, api.UserCreate{Name: "alice", Password: password, Groups: []string{"eng"}}); err != nil {
		return d.fail("create alice", err)
	}
	if _, err := a.AddUser(ctx, api.UserCreate{Name: "bob", Password: password}); err != nil {
		return d.fail("create bob", err)
	}
	d.ok("Group eng; users alice (in eng) and bob (not), both with password %q", password)

	// 5. Apps.
	for _, app := range []api.AppCreate{
		{Name: "wiki", Domains: []string{demoWikiHost}, Ports: tcpPort(wiki.Port()), GatewayGroup: demoSite},
		{Name: "payroll", Domains: []string{demoPayrollHst}, Ports: tcpPort(payroll.Port()), GatewayGroup: demoSite},
	} {
		if _, err := a.AddApp(ctx, app); err != nil {
			return d.fail("create app "+app.Name, err)
		}
	}
	d.ok("Apps: wiki = %s tcp/%d, payroll = %s tcp/%d, both served by gateway group %s", demoWikiHost, wiki.Port(), demoPayrollHst, payroll.Port(), demoSite)

	// 6. Policy.
	rule, err := a.AddPolicy(ctx, api.PolicyRuleCreate{Action: api.Allow, Groups: []string{"eng"}, Apps: []string{"wiki"}, Description: "engineers use the wiki"})
	if err != nil {
		return d.fail("add the policy rule", err)
	}
	d.ok("Policy: rule %s allows group eng → wiki; nothing else is allowed (default deny)", rule.ID)

	// 7. alice logs in.
	alice, err := box.Login(ctx, ClientOptions{User: "alice", Password: password})
	if err != nil {
		return d.fail("log alice in", err)
	}
	p := alice.Profile()
	d.ok("alice logged in: device %s, overlay IP %s (the device key was made here and never sent)", p.DeviceID, p.OverlayIP)

	// 8. alice reads the wiki through her tunnel.
	grant, err := alice.Grant(ctx, demoWikiHost, "tcp", wiki.Port())
	if err != nil {
		return d.fail("grant alice the wiki", err)
	}
	wikiURL := fmt.Sprintf("http://%s:%d/", demoWikiHost, wiki.Port())
	page, err := fetchVia(ctx, alice.Client, wikiURL)
	if err != nil {
		return d.fail("fetch the wiki through the tunnel", err)
	}
	d.ok("alice fetched %s through her tunnel (grant %s via gw1, until %s):", wikiURL, grant.Grant.ID, clock(grant.Grant.NotAfter))
	for _, line := range strings.Split(strings.TrimSpace(page), "\n") {
		d.detail("  %s", line)
	}

	// 9. bob is denied: no rule allows him.
	bob, err := box.Login(ctx, ClientOptions{User: "bob", Password: password})
	if err != nil {
		return d.fail("log bob in", err)
	}
	_, err = bob.Grant(ctx, demoWikiHost, "tcp", wiki.Port())
	bob.Stop()
	if !errors.Is(err, client.ErrDenied) {
		return d.fail("deny bob the wiki", fmt.Errorf("want a denial, got %v", err))
	}
	d.no("bob → wiki: denied. The controller said: %s", reason(err))

	// 10. alice is denied payroll: the rule names the wiki only.
	_, err = alice.Grant(ctx, demoPayrollHst, "tcp", payroll.Port())
	if !errors.Is(err, client.ErrDenied) {
		return d.fail("deny alice payroll", fmt.Errorf("want a denial, got %v", err))
	}
	d.no("alice → payroll: denied. The controller said: %s", reason(err))

	// 11–12. A forward with a connection open, then the grant revoked.
	fwd, err := d.forward(ctx, alice.Client, "127.0.0.1:0", demoWikiHost, wiki.Port())
	if err != nil {
		return d.fail("open a forward for alice", err)
	}
	conn, br, err := openHTTP(ctx, fwd.addr)
	if err != nil {
		return d.fail("use the forward", err)
	}
	d.ok("alice opened a forward %s → wiki and keeps an HTTP connection open through it (grant %s)", fwd.addr, grant.Grant.ID)
	start := time.Now()
	if err := a.RevokeGrant(ctx, grant.Grant.ID); err != nil {
		conn.Close()
		return d.fail("revoke the grant", err)
	}
	_ = conn.SetReadDeadline(start.Add(5 * time.Second))
	_, rerr := br.ReadByte()
	took := time.Since(start)
	conn.Close()
	var ne net.Error
	switch {
	case errors.As(rerr, &ne) && ne.Timeout():
		d.no("Admin revoked grant %s, but the open connection was still open 5s later", grant.Grant.ID)
	case took > time.Second:
		d.no("Admin revoked grant %s: the open connection closed after %s, over the 1s target", grant.Grant.ID, took.Round(time.Millisecond))
	default:
		d.ok("Admin revoked grant %s: the open connection closed %s later", grant.Grant.ID, took.Round(time.Millisecond))
	}
	if err := fwd.stop(); err != nil {
		return d.fail("close the forward", err)
	}

	// 13. A new request is decided afresh. The running client still holds
	// the revoked grant until its renewal finds out, so alice starts anew.
	if err := alice.Stop(); err != nil {
		return d.fail("stop alice's client", err)
	}
	alice, err = box.Login(ctx, ClientOptions{User: "alice", Dir: alice.Dir})
	if err != nil {
		return d.fail("restart alice's client", err)
	}
	grant2, err := alice.Grant(ctx, demoWikiHost, "tcp", wiki.Port())
	if err != nil {
		return d.fail("grant alice the wiki again", err)
	}
	d.ok("alice asked again: the policy, evaluated afresh, still allows her: new grant %s (until %s)", grant2.Grant.ID, clock(grant2.Grant.NotAfter))

	// 14. A forward that stays for the person to use.
	flisten, ffallback := d.cfg.ForwardListen, d.cfg.ForwardListen == ""
	if ffallback {
		flisten = "127.0.0.1:8080"
	}
	fwd, err = d.forward(ctx, alice.Client, flisten, demoWikiHost, wiki.Port())
	if err != nil && ffallback && errors.Is(err, syscall.EADDRINUSE) {
		fwd, err = d.forward(ctx, alice.Client, "127.0.0.1:0", demoWikiHost, wiki.Port())
	}
	if err != nil {
		return d.fail("open alice's forward", err)
	}
	d.ok("alice's forward is running: http://%s/ → wiki (renewed while it runs)", fwd.addr)

	info := DemoInfo{URL: box.URL, Fingerprint: box.Fingerprint, AdminToken: box.AdminToken, Dir: d.dir, WikiForward: fwd.addr, Password: password}
	d.tryNext(info)
	if d.cfg.Ready != nil {
		d.cfg.Ready(info)
	}
	<-ctx.Done()
	return nil
}

// tryNext prints commands a person can run in another terminal, with the
// real addresses and secrets of this run.
func (d *demo) tryNext(in DemoInfo) {
	k := d.cfg.Command
	admin := fmt.Sprintf("--controller %s --token %s --ca-fingerprint %s", in.URL, in.AdminToken, in.Fingerprint)
	bobDir := shellQuote(filepath.Join(in.Dir, "bob"))
	lines := []string{
		"",
		"Try next, in another terminal (the demo runs until Ctrl-C):",
		"",
		"  # The wiki through alice's forward (her tunnel reaches that one app only):",
		"  curl http://" + in.WikiForward + "/",
		"",
		"  # Look around as an admin (or export KEYHOLE_CONTROLLER, KEYHOLE_ADMIN_TOKEN, KEYHOLE_CA_FINGERPRINT):",
		fmt.Sprintf("  %s admin grant list %s", k, admin),
		fmt.Sprintf("  %s admin audit list --limit 10 %s", k, admin),
		fmt.Sprintf("  %s admin flow list %s", k, admin),
		fmt.Sprintf("  %s admin policy list %s", k, admin),
		"",
		"  # Be bob on a second device: denied until you allow him:",
		fmt.Sprintf("  echo %s | %s login --controller %s --ca-fingerprint %s --user bob --password-stdin --data %s", shellQuote(in.Password), k, in.URL, in.Fingerprint, bobDir),
		fmt.Sprintf("  %s connect wiki --listen 127.0.0.1:9090 --data %s", k, bobDir),
		fmt.Sprintf("  %s admin policy add --allow --user bob --app wiki %s", k, admin),
		fmt.Sprintf("  %s connect wiki --listen 127.0.0.1:9090 --data %s   # then: curl http://127.0.0.1:9090/", k, bobDir),
		fmt.Sprintf("  %s status --data %s", k, bobDir),
		"",
		"  # Cut alice off: her grants are revoked and open connections close within a second:",
		fmt.Sprintf("  %s admin user disable alice %s", k, admin),
		"",
		"Ctrl-C stops everything.",
	}
	if d.removeDir {
		lines = append(lines, fmt.Sprintf("(Data in %s is removed on exit; keyhole demo --dir DIR keeps it.)", in.Dir))
	}
	fmt.Fprintln(d.out, strings.Join(lines, "\n"))
}

func (d *demo) makeDir() error {
	if d.cfg.Dir == "" {
		dir, err := os.MkdirTemp("", "keyhole-demo-")
		if err != nil {
			return fmt.Errorf("demo: %w", err)
		}
		d.dir, d.removeDir = dir, true
		return nil
	}
	if ents, err := os.ReadDir(d.cfg.Dir); err == nil && len(ents) > 0 {
		return fmt.Errorf("demo: --dir %s is not empty; give a new directory (the demo builds its system from scratch)", d.cfg.Dir)
	}
	if err := os.MkdirAll(d.cfg.Dir, 0o700); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	d.dir = d.cfg.Dir
	return nil
}

func (d *demo) startApp(name string) (*WebApp, error) {
	app, err := StartWebApp(name)
	if err != nil {
		return nil, err
	}
	d.apps = append(d.apps, app)
	return app, nil
}

// close stops everything the demo started, newest first.
func (d *demo) close() {
	for i := len(d.forwards) - 1; i >= 0; i-- {
		_ = d.forwards[i].stop()
	}
	if d.box != nil {
		d.box.Close()
	}
	for _, app := range d.apps {
		app.Close()
	}
	if d.removeDir {
		_ = os.RemoveAll(d.dir)
	}
}

// demoForward is a running client.Forward.
type demoForward struct {
	addr    string
	cancel  context.CancelFunc
	done    chan error
	once    sync.Once
	stopErr error
}

// forward starts c.Forward and returns once it listens (or failed to).
func (d *demo) forward(ctx context.Context, c *client.Client, listen, dest string, port uint16) (*demoForward, error) {
	fctx, cancel := context.WithCancel(ctx)
	f := &demoForward{cancel: cancel, done: make(chan error, 1)}
	ready := make(chan net.Addr, 1)
	go func() { f.done <- c.Forward(fctx, listen, dest, port, ready) }()
	select {
	case a := <-ready:
		f.addr = a.String()
		d.forwards = append(d.forwards, f)
		return f, nil
	case err := <-f.done:
		cancel()
		if err == nil {
			err = ctx.Err()
		}
		return nil, err
	}
}

// stop ends the forward and waits for it; safe to call more than once.
func (f *demoForward) stop() error {
	f.once.Do(func() {
		f.cancel()
		f.stopErr = <-f.done
	})
	return f.stopErr
}

// fetchVia GETs url with connections dialled through c's tunnel.
func fetchVia(ctx context.Context, c *client.Client, url string) (string, error) {
	tr := &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, port, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			n, err := strconv.ParseUint(port, 10, 16)
			if err != nil {
				return nil, err
			}
			return c.Dial(ctx, "tcp", host, uint16(n))
		},
	}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(b), nil
}

// openHTTP connects to addr, makes one keep-alive request and leaves the
// connection open, so its closing can be observed.
func openHTTP(ctx context.Context, addr string) (net.Conn, *bufio.Reader, error) {
	conn, err := (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, "GET / HTTP/1.1\r\nHost: "+demoWikiHost+"\r\n\r\n"); err != nil {
		conn.Close()
		return nil, nil, err
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	_ = conn.SetDeadline(time.Time{})
	return conn, br, nil
}

func tcpPort(p uint16) []api.PortRange { return []api.PortRange{{Proto: "tcp", First: p, Last: p}} }

// reason is the controller's explanation inside a client.ErrDenied.
func reason(err error) string {
	return strings.TrimPrefix(err.Error(), client.ErrDenied.Error()+": ")
}

func clock(t time.Time) string { return t.Local().Format("15:04:05") }

// demoPassword returns a fresh password for the demo users.
func demoPassword() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return "demo-" + hex.EncodeToString(b)
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:=@,+", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
