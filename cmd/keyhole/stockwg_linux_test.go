package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/internal/lab"
)

// Stock wireguard-go, the reference Keyhole's data plane is measured
// against and the client a user without Keyhole runs: the daemon built from
// the very module version in go.mod, one process per TUN interface inside a
// lab namespace, configured with wg(8) through its UAPI socket as on any
// Linux host without the kernel module.

// stockWGSocketDir is where wireguard-go puts its UAPI sockets. It is not
// per network namespace: interfaces in different namespaces of one host
// need different names.
const stockWGSocketDir = "/var/run/wireguard"

// stockWGTimeout bounds one wg(8) or ip(8) command, a daemon's start and
// its stop.
const stockWGTimeout = 10 * time.Second

// buildStockWG builds the stock wireguard-go daemon into a directory of t
// and returns its path. Building per test rather than once per test binary
// run keeps nothing behind (TestMain has no teardown hook for a shared
// copy); the Go build cache makes a rebuild a link step of about a second.
// It fails t without the go tool or wg(8).
func buildStockWG(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("wg"); err != nil {
		t.Fatalf("stock wireguard-go is configured with wg(8) (apt-get install -y wireguard-tools): %v", err)
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("building stock wireguard-go needs the go tool in PATH: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "wireguard-go")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// The test runs in the package directory, inside this module: the
	// build takes wireguard-go's version from go.mod.
	out, err := exec.CommandContext(ctx, goTool, "build", "-o", bin, "golang.zx2c4.com/wireguard").CombinedOutput()
	if err != nil {
		t.Fatalf("go build golang.zx2c4.com/wireguard: %v\n%s", err, out)
	}
	return bin
}

// stockWG is one stock wireguard-go daemon and its TUN interface, running
// in a lab host's namespace.
type stockWG struct {
	t    *testing.T
	lab  *lab.Lab
	host string
	name string
	cmd  *exec.Cmd
	log  *syncBuffer
	done chan struct{} // closed when the daemon has exited
}

// startStockWG runs `wireguard-go -f name` (bin from buildStockWG) in
// host's namespace and returns once its UAPI socket answers. The interface
// is down, without address, key or peer. t.Cleanup stops the daemon
// (SIGTERM, then SIGKILL) and fails t if the interface outlives it.
func startStockWG(t *testing.T, l *lab.Lab, bin, host, name string) *stockWG {
	t.Helper()
	if len(name) > 15 {
		t.Fatalf("interface name %q is longer than 15 bytes", name)
	}
	s := &stockWG{t: t, lab: l, host: host, name: name, log: &syncBuffer{}, done: make(chan struct{})}
	logf := testLogFile(t, "wireguard-go-"+name)
	// "ip netns exec" execs the daemon: the process we signal is
	// wireguard-go itself.
	s.cmd = exec.Command("ip", "netns", "exec", l.Namespace(host), bin, "-f", name)
	s.cmd.Env = append(os.Environ(), "LOG_LEVEL=error")
	s.cmd.Stdout = io.MultiWriter(s.log, logf)
	s.cmd.Stderr = io.MultiWriter(s.log, logf)
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start wireguard-go %s: %v", name, err)
	}
	go func() { _ = s.cmd.Wait(); close(s.done) }()
	t.Cleanup(s.stop)
	waitFor(t, stockWGTimeout, func() string {
		select {
		case <-s.done:
			t.Fatalf("wireguard-go %s exited: %s", name, s.log)
		default:
		}
		if out, err := s.run("wg", "show", name, "listen-port"); err != nil {
			return fmt.Sprintf("wireguard-go %s not answering yet: %v %s", name, err, out)
		}
		return ""
	})
	return s
}

// stop stops the daemon and checks that the kernel removed its interface
// and wireguard-go its socket.
func (s *stockWG) stop() {
	t := s.t
	select {
	case <-s.done:
	default:
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.done:
		case <-time.After(stockWGTimeout):
			t.Errorf("wireguard-go %s ignored SIGTERM; killing it", s.name)
			_ = s.cmd.Process.Kill()
			<-s.done
		}
	}
	// A TUN device goes with the last descriptor on it, so the interface
	// disappears with the process; poll briefly for the kernel to finish.
	deadline := time.Now().Add(stockWGTimeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		out, err := s.run("ip", "link", "show", s.name)
		if err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("interface %s still in %s after wireguard-go exited:\n%s", s.name, s.host, out)
			break
		}
		<-tick.C
	}
	// A daemon killed with SIGKILL leaves its socket behind.
	sock := filepath.Join(stockWGSocketDir, s.name+".sock")
	if err := os.Remove(sock); err == nil {
		t.Logf("removed %s left by wireguard-go", sock)
	} else if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("remove %s: %v", sock, err)
	}
}

// run runs a command in the daemon's namespace, bounded by stockWGTimeout.
func (s *stockWG) run(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), stockWGTimeout)
	defer cancel()
	out, err := s.lab.Exec(ctx, s.host, args...)
	return string(out), err
}

// must runs a command in the daemon's namespace and fails t if it fails.
func (s *stockWG) must(args ...string) string {
	s.t.Helper()
	out, err := s.run(args...)
	if err != nil {
		s.t.Fatalf("%s on %s: %v", strings.Join(args, " "), s.host, err)
	}
	return out
}

// wg runs `wg <sub> <interface> args…`, e.g. s.wg("set", "peer", pub, …).
func (s *stockWG) wg(sub string, args ...string) string {
	s.t.Helper()
	return s.must(append([]string{"wg", sub, s.name}, args...)...)
}

// setConf applies a wg(8) configuration file (`wg setconf`): keys, port
// and peers, but not what only wg-quick knows (Address, MTU, DNS).
func (s *stockWG) setConf(file string) {
	s.t.Helper()
	s.wg("setconf", file)
}

// up assigns addr to the interface, sets its MTU (0 keeps wireguard-go's
// default) and brings it up. Only the routes added later lead into it.
func (s *stockWG) up(addr netip.Prefix, mtu int) {
	s.t.Helper()
	s.must("ip", "address", "add", addr.String(), "dev", s.name)
	if mtu > 0 {
		s.must("ip", "link", "set", s.name, "mtu", strconv.Itoa(mtu))
	}
	s.must("ip", "link", "set", s.name, "up")
}

// routeAllowedIPs routes every peer's allowed IPs into the interface, as
// wg-quick does, and returns them. The interface must be up.
func (s *stockWG) routeAllowedIPs() []netip.Prefix {
	s.t.Helper()
	var routed []netip.Prefix
	for line := range strings.Lines(s.wg("show", "allowed-ips")) {
		f := strings.Fields(line)
		for _, a := range f[min(1, len(f)):] { // after the peer's key
			p, err := netip.ParsePrefix(a)
			if err != nil { // "(none)"
				continue
			}
			s.must("ip", "route", "replace", p.Masked().String(), "dev", s.name)
			routed = append(routed, p.Masked())
		}
	}
	return routed
}

// listenPort returns the UDP port the daemon bound.
func (s *stockWG) listenPort() uint16 {
	s.t.Helper()
	out := strings.TrimSpace(s.wg("show", "listen-port"))
	p, err := strconv.ParseUint(out, 10, 16)
	if err != nil || p == 0 {
		s.t.Fatalf("wg show %s listen-port: %q", s.name, out)
	}
	return uint16(p)
}

// waitHandshake waits until every peer of the interface has completed a
// handshake.
func (s *stockWG) waitHandshake(timeout time.Duration) {
	s.t.Helper()
	waitFor(s.t, timeout, func() string {
		out, err := s.run("wg", "show", s.name, "latest-handshakes")
		if err != nil {
			return fmt.Sprintf("wg show %s latest-handshakes: %v", s.name, err)
		}
		n := 0
		for line := range strings.Lines(out) {
			f := strings.Fields(line)
			if len(f) != 2 {
				continue
			}
			if f[1] == "0" {
				return fmt.Sprintf("%s: no handshake with %s yet", s.name, f[0])
			}
			n++
		}
		if n == 0 {
			return fmt.Sprintf("%s has no peer", s.name)
		}
		return ""
	})
}

// rxBytes returns the bytes received from all peers (`wg show transfer`).
func (s *stockWG) rxBytes() uint64 {
	s.t.Helper()
	return wgRxBytes(s.t, s.wg("show", "transfer"))
}

// wgRxBytes sums the received column of `wg show IF transfer`.
func wgRxBytes(t *testing.T, out string) uint64 {
	t.Helper()
	var sum uint64
	for line := range strings.Lines(out) {
		f := strings.Fields(line)
		if len(f) != 3 {
			continue
		}
		n, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			t.Fatalf("wg show transfer: %q: %v", line, err)
		}
		sum += n
	}
	return sum
}
