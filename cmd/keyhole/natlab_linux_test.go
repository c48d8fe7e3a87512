package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/client"
	"github.com/keyhole-net/keyhole/controller"
	"github.com/keyhole-net/keyhole/controller/auth"
	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/apiclient"
	"github.com/keyhole-net/keyhole/internal/lab"
)

// The NAT lab tests (issue 3) run the controller with its embedded relay
// in-process in the lab's internet namespace, and the gateway and client as
// real keyhole processes (this test binary, see envExec) behind their NATs.

const (
	labPassword = "correct horse battery staple"
	labAppPort  = 80
	labEchoPort = 7
)

// natLab is a lab with Keyhole running in it.
type natLab struct {
	*lab.Lab
	t     *testing.T
	ctx   context.Context
	ctrl  *controller.Controller
	url   string
	fp    string
	admin *apiclient.Admin
	// marker is in every page the app serves; sawMarker counts relayed
	// payloads that contained it (there must be none: ciphertext only).
	marker    string
	sawMarker atomic.Int64
	relayAddr netip.AddrPort
	dataDir   string // the controller's

	cfg      controller.Config
	ctrlStop context.CancelFunc
	ctrlDone chan struct{}
}

// startController runs the controller (and its relay) in the internet
// namespace.
func (nl *natLab) startController() {
	t := nl.t
	t.Helper()
	ctx, cancel := context.WithCancel(nl.ctx)
	if err := nl.Run(lab.Internet, func() error {
		var err error
		if nl.ctrl, err = controller.New(ctx, nl.cfg); err != nil {
			return err
		}
		_, err = nl.ctrl.Listen()
		return err
	}); err != nil {
		cancel()
		t.Fatalf("controller: %v", err)
	}
	done := make(chan struct{})
	ctrl := nl.ctrl
	go func() {
		defer close(done)
		if err := ctrl.Run(ctx); err != nil {
			t.Errorf("controller: %v", err)
		}
	}()
	nl.ctrlStop, nl.ctrlDone = cancel, done
}

// stopController stops the controller and its relay and waits for them.
func (nl *natLab) stopController() {
	if nl.ctrlStop == nil {
		return
	}
	nl.ctrlStop()
	<-nl.ctrlDone
	nl.ctrl.Close()
	nl.ctrlStop = nil
}

type natLabOpts struct {
	lab    lab.Config
	coturn bool // use coturn on Internet2 instead of the embedded relay
	// grantLifetime is the controller's (0: its default).
	grantLifetime time.Duration
}

// nsDial returns a dialer whose sockets are created inside host's
// namespace.
func nsDial(l *lab.Lab, host string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := l.Run(host, func() error {
			var err error
			c, err = (&net.Dialer{Timeout: 10 * time.Second}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// testLogFile returns a file for a component's log, shown when t fails.
func testLogFile(t *testing.T, name string) *os.File {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			if b, err := os.ReadFile(f.Name()); err == nil {
				const max = 40 << 10
				if len(b) > max {
					b = b[len(b)-max:]
				}
				t.Logf("--- %s log (tail) ---\n%s", name, b)
			}
		}
		f.Close()
	})
	return f
}

func newNATLab(t *testing.T, o natLabOpts) *natLab {
	t.Helper()
	l := lab.New(t, o.lab)
	ctx, cancel := context.WithCancel(context.Background())
	var mark [8]byte
	_, _ = rand.Read(mark[:])
	nl := &natLab{Lab: l, t: t, ctx: ctx, marker: "keyhole-lab-page-" + hex.EncodeToString(mark[:])}

	logf := testLogFile(t, "controller")
	cfg := controller.Config{
		DataDir:     t.TempDir(),
		Listen:      netip.AddrPortFrom(l.Addr(lab.Internet), 8443).String(),
		Names:       []string{l.Addr(lab.Internet).String()},
		Password:    auth.Params{MemoryKiB: 64, Iterations: 1, Parallelism: 1},
		Logger:      slog.New(slog.NewTextHandler(logf, &slog.HandlerOptions{Level: slog.LevelDebug})),
		RelayListen: netip.AddrPortFrom(l.Addr(lab.Internet), 3478).String(),
		RelayListenUDP: func(network string, laddr *net.UDPAddr) (*net.UDPConn, error) {
			var c *net.UDPConn
			err := l.Run(lab.Internet, func() error {
				var err error
				c, err = net.ListenUDP(network, laddr)
				return err
			})
			return c, err
		},
		RelayTap: func(_, _ netip.AddrPort, payload []byte) {
			if strings.Contains(string(payload), nl.marker) {
				nl.sawMarker.Add(1)
			}
		},
	}
	cfg.GrantLifetime = o.grantLifetime
	if o.coturn {
		secret := "lab-relay-secret-" + hex.EncodeToString(mark[:])
		cfg.RelayListen = controller.RelayOff
		cfg.RelayAddr = l.StartCoturn(t, lab.Internet2, secret)
		cfg.RelaySecret = []byte(secret)
	}
	nl.cfg = cfg
	nl.startController()
	t.Cleanup(func() {
		nl.stopController()
		cancel()
	})
	nl.url = "https://" + cfg.Listen
	nl.dataDir = cfg.DataDir
	nl.fp = nl.ctrl.Fingerprint()
	nl.relayAddr = nl.ctrl.RelayAddr()
	tok, err := os.ReadFile(filepath.Join(cfg.DataDir, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	ac, err := apiclient.New(apiclient.Config{URL: nl.url, Fingerprint: nl.fp, Bearer: strings.TrimSpace(string(tok)), DialContext: nsDial(l, lab.Internet)})
	if err != nil {
		t.Fatal(err)
	}
	nl.admin = apiclient.AdminFor(ac)
	nl.setupPolicy()
	nl.startApp()
	return nl
}

func (nl *natLab) setupPolicy() {
	t, ctx, a := nl.t, nl.ctx, nl.admin
	t.Helper()
	steps := []func() error{
		func() error { _, err := a.AddGatewayGroup(ctx, "site"); return err },
		func() error { _, err := a.AddGroup(ctx, "eng"); return err },
		func() error {
			_, err := a.AddUser(ctx, api.UserCreate{Name: "alice", Password: labPassword, Groups: []string{"eng"}})
			return err
		},
		func() error {
			_, err := a.AddApp(ctx, api.AppCreate{Name: "wiki", Domains: []string{lab.AppName}, GatewayGroup: "site",
				Ports: []api.PortRange{{Proto: "tcp", First: labAppPort, Last: labAppPort}, {Proto: "tcp", First: labEchoPort, Last: labEchoPort}}})
			return err
		},
		func() error {
			_, err := a.AddPolicy(ctx, api.PolicyRuleCreate{Action: api.Allow, Groups: []string{"eng"}, Apps: []string{"wiki"}})
			return err
		},
	}
	for _, s := range steps {
		if err := s(); err != nil {
			t.Fatalf("lab policy: %v", err)
		}
	}
}

// startApp serves the private app on the site LAN: a page with the
// marker, /bytes?n=N for throughput, and a TCP echo.
func (nl *natLab) startApp() {
	t := nl.t
	t.Helper()
	var web, echo net.Listener
	if err := nl.Run(lab.App, func() error {
		var err error
		ip := nl.Addr(lab.App).String()
		if web, err = net.Listen("tcp", net.JoinHostPort(ip, fmt.Sprint(labAppPort))); err != nil {
			return err
		}
		echo, err = net.Listen("tcp", net.JoinHostPort(ip, fmt.Sprint(labEchoPort)))
		return err
	}); err != nil {
		t.Fatalf("app: %v", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "<h1>wiki</h1><p>%s</p>\n", nl.marker)
	})
	mux.HandleFunc("/bytes", func(w http.ResponseWriter, r *http.Request) {
		var n int64
		fmt.Sscan(r.URL.Query().Get("n"), &n)
		buf := make([]byte, 64<<10)
		for n > 0 {
			k := min(n, int64(len(buf)))
			if _, err := w.Write(buf[:k]); err != nil {
				return
			}
			n -= k
		}
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(web)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() {
		srv.Close()
		echo.Close()
		wg.Wait()
	})
}

// proc is a keyhole process running in a lab namespace.
type proc struct {
	cmd  *exec.Cmd
	out  *syncBuffer // stdout
	log  *syncBuffer // stderr
	done chan struct{}
}

// spawn starts `keyhole args…` inside host's namespace; t.Cleanup stops it
// (SIGTERM, then SIGKILL after 5 s).
func (nl *natLab) spawn(name, host string, stdin string, args ...string) *proc {
	t := nl.t
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	logf := testLogFile(t, name)
	p := &proc{out: &syncBuffer{}, log: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command("ip", append([]string{"netns", "exec", nl.Namespace(host), exe}, args...)...)
	p.cmd.Env = append(os.Environ(), envExec+"=1", "HOME="+t.TempDir())
	p.cmd.Stdout = io.MultiWriter(p.out, logf)
	p.cmd.Stderr = io.MultiWriter(p.log, logf)
	p.cmd.Stdin = strings.NewReader(stdin)
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() { p.stop() })
	return p
}

func (p *proc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// runCmd runs `keyhole args…` in host's namespace to completion.
func (nl *natLab) runCmd(host, stdin string, args ...string) (string, error) {
	p := nl.spawn(args[0], host, stdin, args...)
	select {
	case <-p.done:
	case <-time.After(60 * time.Second):
		p.stop()
		return p.out.String(), errors.New("timed out")
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		return p.out.String(), fmt.Errorf("exit %d", code)
	}
	return p.out.String(), nil
}

// startGateway enrols and runs a gateway on the Gateway host and waits
// until the controller has its candidates, relay included.
func (nl *natLab) startGateway(extra ...string) *proc {
	nl.t.Helper()
	return nl.startGatewayData(nl.t.TempDir(), extra...)
}

// startGatewayData is startGateway with the gateway's data directory: a
// directory it enrolled in before restarts that gateway.
func (nl *natLab) startGatewayData(dir string, extra ...string) *proc {
	t := nl.t
	t.Helper()
	tok, err := nl.admin.GatewayToken(nl.ctx, "site", 0)
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{"gateway", "--controller", nl.url, "--token", tok.Token,
		"--ca-fingerprint", nl.fp, "--data", dir, "--name", "site-gw", "--log-level", "debug"}, extra...)
	p := nl.spawn("gateway", lab.Gateway, "", args...)
	waitFor(t, 20*time.Second, func() string {
		gs, err := nl.admin.Gateways(nl.ctx)
		if err != nil || len(gs) == 0 || !gs[0].Connected {
			return fmt.Sprintf("gateway not connected (%v)", err)
		}
		for _, c := range gs[0].Candidates {
			if c.Type == api.CandidateRelay {
				return ""
			}
		}
		return fmt.Sprintf("gateway has no relay candidate yet: %v", gs[0].Candidates)
	})
	return p
}

// loginClient logs alice in on the Client host and returns the data dir.
func (nl *natLab) loginClient() string {
	t := nl.t
	t.Helper()
	dir := t.TempDir()
	if out, err := nl.runCmd(lab.Client, labPassword+"\n", "login", "--controller", nl.url, "--ca-fingerprint", nl.fp,
		"--user", "alice", "--password-stdin", "--data", dir); err != nil {
		t.Fatalf("login: %v\n%s", err, out)
	}
	return dir
}

// connect runs `keyhole connect` for target on the Client host and returns
// the process and the local address it forwards, once it says so.
func (nl *natLab) connect(dir, target string, port int) (*proc, string) {
	t := nl.t
	t.Helper()
	listen := fmt.Sprintf("127.0.0.1:%d", port)
	p := nl.spawn("connect", lab.Client, "", "connect", target, "--listen", listen, "--data", dir, "--log-level", "debug")
	waitFor(t, 15*time.Second, func() string {
		select {
		case <-p.done:
			t.Fatalf("connect exited: %s%s", p.out, p.log)
		default:
		}
		if !strings.Contains(p.out.String(), "Forwarding") {
			return "connect has not started forwarding"
		}
		return ""
	})
	return p, listen
}

// httpClient fetches through the Client host's loopback.
func (nl *natLab) httpClient() *http.Client {
	return &http.Client{
		Timeout:   20 * time.Second,
		Transport: &http.Transport{DialContext: nsDial(nl.Lab, lab.Client), DisableKeepAlives: true},
	}
}

// fetch gets the page through the forward at addr.
func (nl *natLab) fetch(addr string) (string, error) {
	resp, err := nl.httpClient().Get("http://" + addr + "/")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// status reads `keyhole status --json` on the Client host.
func (nl *natLab) status(dir string) client.Status {
	t := nl.t
	t.Helper()
	out, err := nl.runCmd(lab.Client, "", "status", "--json", "--data", dir)
	if err != nil {
		t.Fatalf("status: %v\n%s", err, out)
	}
	var rep statusReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("status output %q: %v", out, err)
	}
	if rep.Client == nil {
		return client.Status{}
	}
	return *rep.Client
}

// path returns the client's path to its (only) gateway, "" if none.
func (nl *natLab) path(dir string) string {
	st := nl.status(dir)
	for _, p := range st.Peers {
		if p.Path != "" {
			return p.Path
		}
	}
	return ""
}

// waitPath waits until the client's path is want.
func (nl *natLab) waitPath(dir, want string, timeout time.Duration) {
	nl.t.Helper()
	waitFor(nl.t, timeout, func() string {
		if got := nl.path(dir); got != want {
			return fmt.Sprintf("path is %q, want %q", got, want)
		}
		return ""
	})
}

// stream is an open TCP connection to the app's echo through a forward.
type stream struct {
	c  net.Conn
	rd *bufio.Reader
}

func (nl *natLab) openStream(addr string) *stream {
	nl.t.Helper()
	c, err := nsDial(nl.Lab, lab.Client)(nl.ctx, "tcp", addr)
	if err != nil {
		nl.t.Fatalf("open stream: %v", err)
	}
	nl.t.Cleanup(func() { c.Close() })
	s := &stream{c: c, rd: bufio.NewReader(c)}
	if err := s.echo("hello", 10*time.Second); err != nil {
		nl.t.Fatalf("stream: %v", err)
	}
	return s
}

// echo sends one line and waits for it to come back.
func (s *stream) echo(line string, wait time.Duration) error {
	_ = s.c.SetDeadline(time.Now().Add(wait))
	if _, err := fmt.Fprintln(s.c, line); err != nil {
		return err
	}
	got, err := s.rd.ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(got) != line {
		return fmt.Errorf("echo %q came back as %q", line, got)
	}
	return nil
}
