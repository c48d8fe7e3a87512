package onebox

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/gateway"
)

// envGatewayDir makes the test binary run as a gateway process instead of
// running tests: the socket test needs the gateway alone in a process.
const envGatewayDir = "KEYHOLE_TEST_GATEWAY_DIR"

func TestMain(m *testing.M) {
	if dir := os.Getenv(envGatewayDir); dir != "" {
		os.Exit(runGatewayProcess(dir))
	}
	os.Exit(m.Run())
}

func runGatewayProcess(dir string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	g, err := gateway.New(gateway.Config{DataDir: dir, Hosts: map[string]netip.Addr{"wiki.corp.internal": Loopback, "echo.corp.internal": Loopback},
		Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	go func() {
		<-g.Ready()
		fmt.Println("ready")
	}()
	if err := g.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// socketInodes returns the inodes of the sockets process pid holds.
func socketInodes(t *testing.T, pid int) map[string]bool {
	t.Helper()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, fd := range fds {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(l, "socket:[") {
			out[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	return out
}

// procSocket is one line of /proc/net/{tcp,udp}{,6}.
type procSocket struct {
	proto, local, state string
	port                int
}

func procSockets(t *testing.T, pid int, inodes map[string]bool) []procSocket {
	t.Helper()
	var out []procSocket
	for _, proto := range []string{"tcp", "tcp6", "udp", "udp6"} {
		f, err := os.Open(fmt.Sprintf("/proc/%d/net/%s", pid, proto))
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		sc.Scan() // header
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 10 || !inodes[fields[9]] {
				continue
			}
			_, portHex, _ := strings.Cut(fields[1], ":")
			port, _ := strconv.ParseInt(portHex, 16, 32)
			out = append(out, procSocket{proto: proto, local: fields[1], state: fields[3], port: int(port)})
		}
		f.Close()
	}
	return out
}

// TestGatewayProcessListensOnNothing runs the gateway as its own process and
// checks its sockets: no listening TCP socket, and no UDP socket except
// WireGuard's; then proves that process really serves the app.
func TestGatewayProcessListensOnNothing(t *testing.T) {
	if _, err := os.Stat("/proc/self/net/tcp"); err != nil {
		t.Skip("needs Linux /proc")
	}
	f := newFixture(t, fixtureOpts{})
	ctx := context.Background()
	dir := f.gw.Dir
	if err := f.gw.Stop(); err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), envGatewayDir+"="+dir)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	})
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if sc.Text() == "ready" {
				close(ready)
			}
		}
	}()
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		t.Fatalf("gateway process not ready: %s", stderr.String())
	}
	eventually(t, 10*time.Second, func() error {
		gws, err := f.box.Admin.Gateways(ctx)
		if err != nil || len(gws) != 1 || !gws[0].Connected {
			return errors.New("gateway process not connected")
		}
		return nil
	})
	// Use it for real, so every socket it will ever open is open now.
	c := f.login(t, "alice", false)
	conn, err := c.Dial(ctx, "tcp", "echo.corp.internal", f.echo.Port())
	if err != nil {
		t.Fatalf("through the gateway process: %v\n%s", err, stderr.String())
	}
	defer conn.Close()
	if err := echoOnce(conn, "hello"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "gateway.json"))
	if err != nil {
		t.Fatal(err)
	}
	var wgPort int
	if _, err := fmt.Sscanf(string(b[strings.Index(string(b), `"listen_port"`):]), `"listen_port": %d`, &wgPort); err != nil {
		t.Fatalf("listen_port in %s: %v", b, err)
	}
	socks := procSockets(t, cmd.Process.Pid, socketInodes(t, cmd.Process.Pid))
	if len(socks) == 0 {
		t.Fatal("found no sockets at all; the check is broken")
	}
	var udp int
	for _, s := range socks {
		switch {
		case strings.HasPrefix(s.proto, "tcp") && s.state == "0A": // TCP_LISTEN
			t.Errorf("gateway listens on TCP %s (port %d)", s.local, s.port)
		case strings.HasPrefix(s.proto, "udp"):
			udp++
			if s.port != wgPort {
				t.Errorf("gateway has a UDP socket on port %d besides WireGuard's %d", s.port, wgPort)
			}
		}
	}
	if udp == 0 {
		t.Error("no WireGuard UDP socket found; the check is broken")
	}
	t.Logf("gateway process sockets: %+v", socks)
}

// TestNoSecretsInLogs runs the main flows and then searches every log line
// of every component for the secrets they handled.
func TestNoSecretsInLogs(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	ctx := context.Background()
	tok, err := f.box.Admin.GatewayToken(ctx, "site", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	gw2, err := f.box.AddGateway(ctx, GatewayOptions{Group: "site", Name: "gw2", Hosts: map[string]netip.Addr{"wiki.corp.internal": Loopback}})
	if err != nil {
		t.Fatal(err)
	}
	c := f.login(t, "alice", false)
	conn, err := c.Dial(ctx, "tcp", "wiki.corp.internal", f.wiki.Port())
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	if _, err := f.box.Login(ctx, ClientOptions{User: "alice", Password: "wrong password!"}); err == nil {
		t.Fatal("wrong password accepted")
	}
	secrets := map[string]string{
		"password":          password,
		"wrong password":    "wrong password!",
		"admin token":       f.box.AdminToken,
		"enrolment token":   tok.Token,
		"session":           readTrim(t, filepath.Join(c.Dir, "session.token")),
		"client wg key":     readTrim(t, filepath.Join(c.Dir, "wg.key")),
		"gateway wg key":    readTrim(t, filepath.Join(f.gw.Dir, "wg.key")),
		"gateway2 wg key":   readTrim(t, filepath.Join(gw2.Dir, "wg.key")),
		"client device key": pemBody(t, filepath.Join(c.Dir, "identity.key")),
		"gateway key":       pemBody(t, filepath.Join(f.gw.Dir, "identity.key")),
	}
	logs := f.logBuf.String()
	if len(logs) < 1000 {
		t.Fatalf("only %d bytes of logs; the check is broken", len(logs))
	}
	for what, s := range secrets {
		if len(s) < 8 {
			t.Fatalf("%s: empty secret; the check is broken", what)
		}
		if strings.Contains(logs, s) {
			t.Errorf("%s appears in the logs", what)
		}
	}
}

func readTrim(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// pemBody returns a line from the middle of a PEM key file.
func pemBody(t *testing.T, path string) string {
	lines := strings.Split(readTrim(t, path), "\n")
	return lines[1]
}
