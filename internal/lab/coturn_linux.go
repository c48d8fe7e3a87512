package lab

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pion/stun/v3"
)

// Coturn's settings in a lab. Keyhole's relay credentials are TURN REST API
// credentials: username "<unix-expiry>:<user>", password
// base64(HMAC-SHA1(secret, username)), checked in CoturnRealm.
const (
	CoturnRealm = "keyhole"
	// CoturnMinPort and CoturnMaxPort bound the relayed ports. They lie
	// above Linux's ephemeral range (32768-60999), so no socket a test
	// opens can take one.
	CoturnMinPort = 61000
	CoturnMaxPort = 61999

	coturnPort = 3478
	// coturnStartTimeout bounds the wait for the first STUN answer.
	coturnStartTimeout = 10 * time.Second
	// coturnStopTimeout bounds the wait for a killed turnserver to exit.
	coturnStopTimeout = 5 * time.Second
)

// coturnPeers is the only peer range coturn relays to: the lab's internet,
// where the routers' mappings and the relayed addresses live. Everything
// else is denied, so a lab relay is never an open relay into the LANs, the
// loopback or the host.
const coturnPeers = "203.0.113.0-203.0.113.255"

// StartCoturn runs coturn's turnserver (the Debian package's binary, in the
// foreground, not its service) in the namespace of host, Internet or
// Internet2, and returns its address: UDP (and TCP) port 3478 on host's
// address. It accepts TURN REST API credentials made with secret in realm
// CoturnRealm, relays UDP only, from host's address on ports CoturnMinPort
// to CoturnMaxPort, and only to peers in the lab's internet 203.0.113.0/24
// (which includes its own relayed addresses: an allocation may send to
// another allocation on the same relay, as Keyhole's clients and gateways
// do). TLS, DTLS, the CLI and the configuration files in /etc are off.
//
// StartCoturn returns once turnserver answers a STUN Binding request, and
// registers its stop with t.Cleanup. Its log goes to the test log if t
// fails. It fails t if turnserver is not installed (apt-get install -y
// coturn), does not start, or stops before the cleanup.
func (l *Lab) StartCoturn(t testing.TB, host, secret string) netip.AddrPort {
	t.Helper()
	if host != Internet && host != Internet2 {
		t.Fatalf("lab: coturn runs on %s or %s, not %q", Internet, Internet2, host)
	}
	bin, err := exec.LookPath("turnserver")
	if err != nil {
		t.Fatalf("lab: turnserver not found (apt-get install -y coturn): %v", err)
	}
	addr := netip.AddrPortFrom(l.Addr(host), coturnPort)
	dir := t.TempDir()
	logPath := filepath.Join(dir, "turnserver.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatalf("lab: coturn log: %v", err)
	}
	defer logFile.Close() // the child has its own copy

	ip := addr.Addr().String()
	args := []string{
		"-n", // no turnserver.conf: every setting is below
		"--log-file=stdout",
		"--verbose",
		"--listening-ip=" + ip,
		"--listening-port=" + strconv.Itoa(coturnPort),
		"--relay-ip=" + ip,
		"--min-port=" + strconv.Itoa(CoturnMinPort),
		"--max-port=" + strconv.Itoa(CoturnMaxPort),
		"--realm=" + CoturnRealm,
		"--use-auth-secret",
		"--static-auth-secret=" + secret,
		// Whitelist beats blacklist in coturn's peer check: the lab's
		// internet is allowed, every other IPv4 and IPv6 address denied.
		// Loopback peers are denied by default (no --allow-loopback-peers).
		"--allowed-peer-ip=" + coturnPeers,
		"--denied-peer-ip=0.0.0.0-255.255.255.255",
		"--denied-peer-ip=::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
		"--no-multicast-peers",
		"--no-tcp-relay",
		"--no-tls",
		"--no-dtls",
		"--no-cli",
		"--no-rfc5780",
		// Keep parallel instances apart and off the package's files.
		"--pidfile=" + filepath.Join(dir, "turnserver.pid"),
		"--db=" + filepath.Join(dir, "turndb"),
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", l.Namespace(host), bin}, args...)...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	// If the test binary dies without running cleanups (a test timeout),
	// turnserver goes with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	started := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("lab: start turnserver: %v", err)
	}
	// exited is closed when turnserver has exited, with waitErr set.
	exited := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(exited)
	}()
	failedToStart := false
	t.Cleanup(func() {
		select {
		case <-exited:
			if !failedToStart {
				t.Errorf("lab: turnserver on %v stopped before the test ended: %v", addr, waitErr)
			}
		default:
			cmd.Process.Kill()
			select {
			case <-exited:
			case <-time.After(coturnStopTimeout):
				t.Errorf("lab: turnserver on %v (pid %d) did not exit within %v of SIGKILL", addr, cmd.Process.Pid, coturnStopTimeout)
			}
		}
		if t.Failed() {
			dumpLog(t, "turnserver on "+addr.String(), logPath)
		}
	})

	// The probe runs in host's namespace: the internet namespace the relay
	// lives in, so no router's NAT or firewall can hide a ready server.
	var last error
	deadline := time.Now().Add(coturnStartTimeout)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			failedToStart = true
			t.Fatalf("lab: turnserver exited while starting: %v (args %s)", waitErr, redact(args, secret))
		default:
		}
		if last = l.Run(host, func() error { return stunPing(addr, 50*time.Millisecond) }); last == nil {
			t.Logf("lab: coturn on %v answered STUN after %v", addr, time.Since(started).Round(time.Millisecond))
			return addr
		}
	}
	t.Fatalf("lab: turnserver on %v gave no STUN answer within %v: %v", addr, coturnStartTimeout, last)
	return netip.AddrPort{}
}

// stunPing sends one STUN Binding request to addr from a fresh socket in the
// calling thread's namespace, and waits up to wait for its success response.
func stunPing(addr netip.AddrPort, wait time.Duration) error {
	c, err := net.ListenUDP("udp4", nil)
	if err != nil {
		return err
	}
	defer c.Close()
	req, err := stun.Build(stun.TransactionID, stun.BindingRequest)
	if err != nil {
		return err
	}
	if _, err := c.WriteToUDPAddrPort(req.Raw, addr); err != nil {
		return err
	}
	c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 1500)
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			return err
		}
		res := &stun.Message{Raw: buf[:n]}
		if from != addr || res.Decode() != nil || res.TransactionID != req.TransactionID {
			continue
		}
		if res.Type != stun.BindingSuccess {
			return fmt.Errorf("STUN answer %v, want %v", res.Type, stun.BindingSuccess)
		}
		return nil
	}
}

// dumpLog writes the file at path to t's log under a title.
func dumpLog(t testing.TB, title, path string) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	if err != nil {
		t.Logf("%s log: %v", title, err)
		return
	}
	t.Logf("%s log:\n%s", title, bytes.TrimSpace(b))
}

// redact returns args as one string with secret replaced.
func redact(args []string, secret string) string {
	s := strings.Join(args, " ")
	if secret != "" {
		s = strings.ReplaceAll(s, secret, "[redacted]")
	}
	return s
}
