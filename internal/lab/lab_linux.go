package lab

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// Host names of a lab. Run, Exec, Namespace and Addr take them; every host is
// its own network namespace except Internet2, which is a second address in
// the Internet namespace.
const (
	Internet  = "internet"  // the public side: controller and relay live here
	Internet2 = "internet2" // a second internet address, in the Internet namespace
	Home      = "home"      // the client's NAT router
	Client    = "client"    // a device behind the home NAT
	Site      = "site"      // the site's NAT router and firewall
	Gateway   = "gateway"   // the Keyhole gateway behind the site NAT
	App       = "app"       // a private app on the site LAN
)

// AppName is the private app's name, resolvable only in the site
// namespaces unless Config.Hosts says otherwise.
const AppName = "wiki.corp.internal"

// EnvE2E is the environment variable that enables lab tests; they also need
// root.
const EnvE2E = "KEYHOLE_E2E"

// NATMode is how a router maps its LAN's connections to its WAN address.
type NATMode int

const (
	// EndpointIndependent is plain MASQUERADE: a LAN socket keeps one
	// mapping (usually its own port) for every destination. Linux filters
	// inbound by address and port, so a peer must have been sent to before
	// it can send in: hole punching works, unsolicited packets do not.
	EndpointIndependent NATMode = iota
	// Symmetric is MASQUERADE --random-fully: every destination gets its own
	// random mapping, so a port learnt via STUN is useless to other peers.
	Symmetric
)

// String returns the mode's name.
func (m NATMode) String() string {
	switch m {
	case EndpointIndependent:
		return "endpoint-independent"
	case Symmetric:
		return "symmetric"
	}
	return fmt.Sprintf("NATMode(%d)", int(m))
}

// NAT configures one router.
type NAT struct {
	// Mode is the mapping behaviour.
	Mode NATMode
	// BlockUDPExceptTo, when valid, drops every UDP packet from the LAN to
	// the internet except those to this address: a network that lets UDP
	// through only to the relay. The zero Addr blocks nothing.
	BlockUDPExceptTo netip.Addr
}

// Config describes a lab. The zero value is two endpoint-independent NATs and
// AppName resolving to the app.
type Config struct {
	// Home and Site configure the two routers.
	Home, Site NAT
	// Hosts are the names written to /etc/hosts of the site namespaces
	// (Gateway and App). Nil means AppName → Addr(App).
	Hosts map[string]netip.Addr
}

// Lab is a running lab. Its methods may be called from any goroutine.
type Lab struct {
	t      testing.TB
	prefix string // "kh" + random suffix, starts every namespace name
	hosts  map[string]netip.Addr

	mu  sync.Mutex // guards nat
	nat map[string]NAT
}

// Interface names inside the routers; the firewall rules refer to them.
const (
	wanIf = "wan0"
	lanIf = "lan0"
)

var addrs = map[string]string{
	Internet:  "203.0.113.10",
	Internet2: "203.0.113.11",
	Home:      "203.0.113.2",
	Client:    "192.0.2.10",
	Site:      "203.0.113.3",
	Gateway:   "198.51.100.10",
	App:       "198.51.100.20",
}

// namespaces lists the hosts that are namespaces, in creation order.
var namespaces = []string{Internet, Home, Client, Site, Gateway, App}

// setupTimeout bounds building and tearing down a lab.
const setupTimeout = 30 * time.Second

// Enabled reports whether lab tests may run here, and if not, why.
func Enabled() (ok bool, reason string) {
	if os.Getenv(EnvE2E) != "1" {
		return false, "lab tests need " + EnvE2E + "=1 (and root)"
	}
	if os.Geteuid() != 0 {
		return false, "lab tests need root (" + EnvE2E + " is set)"
	}
	return true, ""
}

// New builds a lab and registers its teardown with t.Cleanup. It skips t
// unless Enabled, and fails t if the lab cannot be built.
func New(t testing.TB, cfg Config) *Lab {
	t.Helper()
	if ok, reason := Enabled(); !ok {
		t.Skip(reason)
	}
	for _, tool := range []string{"ip", "iptables-restore", "iptables", "sysctl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("lab: %s not found (apt-get install -y iproute2 iptables procps): %v", tool, err)
		}
	}
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("lab: %v", err)
	}
	l := &Lab{
		t:      t,
		prefix: "kh" + hex.EncodeToString(b[:]),
		hosts:  cfg.Hosts,
		nat:    map[string]NAT{Home: cfg.Home, Site: cfg.Site},
	}
	if l.hosts == nil {
		l.hosts = map[string]netip.Addr{AppName: l.Addr(App)}
	}
	t.Cleanup(l.teardown)
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	if err := l.build(ctx); err != nil {
		t.Fatalf("lab %s: %v", l.prefix, err)
	}
	return l
}

// Prefix returns the prefix of every namespace name of this lab.
func (l *Lab) Prefix() string { return l.prefix }

// Namespace returns the name of host's network namespace (as listed by
// "ip netns list"), or "" for an unknown host. Internet2 is in Internet's.
func (l *Lab) Namespace(host string) string {
	if host == Internet2 {
		host = Internet
	}
	for _, h := range namespaces {
		if h == host {
			return l.prefix + "-" + host
		}
	}
	return ""
}

// Addr returns host's address: a router's WAN address, a LAN host's LAN
// address. It returns the zero Addr for an unknown host.
func (l *Lab) Addr(host string) netip.Addr {
	a, err := netip.ParseAddr(addrs[host])
	if err != nil {
		return netip.Addr{}
	}
	return a
}

// Exec runs args as a command in host's namespace with "ip netns exec", which
// also bind-mounts /etc/netns/<namespace>/* (the site's hosts file) over /etc.
// It returns the combined output; the error includes it. ctx bounds the
// command.
func (l *Lab) Exec(ctx context.Context, host string, args ...string) ([]byte, error) {
	ns := l.Namespace(host)
	if ns == "" {
		return nil, fmt.Errorf("lab: unknown host %q", host)
	}
	return run(ctx, append([]string{"ip", "netns", "exec", ns}, args...)...)
}

// run runs a host command, returning its combined output.
func run(ctx context.Context, args ...string) ([]byte, error) {
	return runInput(ctx, nil, args...)
}

// runInput runs a host command with stdin, returning its combined output.
func runInput(ctx context.Context, stdin []byte, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	cmd.WaitDelay = time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return out, nil
}

// build creates the namespaces, links, addresses, routes, firewalls and
// hosts files.
func (l *Lab) build(ctx context.Context) error {
	ns := l.Namespace
	for _, h := range namespaces {
		if _, err := run(ctx, "ip", "netns", "add", ns(h)); err != nil {
			return err
		}
		// No IPv6: a lab sends nothing but the TEST-NET IPv4 it was given,
		// not even link-local router solicitations.
		if _, err := l.Exec(ctx, h, "sysctl", "-qw",
			"net.ipv6.conf.all.disable_ipv6=1",
			"net.ipv6.conf.default.disable_ipv6=1"); err != nil {
			return err
		}
	}
	for _, h := range []string{Home, Site} {
		if _, err := l.Exec(ctx, h, "sysctl", "-qw", "net.ipv4.ip_forward=1"); err != nil {
			return err
		}
	}
	// Every veth is created with both ends already inside lab namespaces:
	// nothing ever appears in the host's namespace.
	cmds := [][]string{
		{"-n", ns(Internet), "link", "add", "br0", "type", "bridge", "forward_delay", "0"},
		{"-n", ns(Internet), "link", "add", Home, "type", "veth", "peer", "name", wanIf, "netns", ns(Home)},
		{"-n", ns(Internet), "link", "add", Site, "type", "veth", "peer", "name", wanIf, "netns", ns(Site)},
		{"-n", ns(Internet), "link", "set", Home, "master", "br0"},
		{"-n", ns(Internet), "link", "set", Site, "master", "br0"},
		{"-n", ns(Internet), "addr", "add", addrs[Internet] + "/24", "dev", "br0"},
		{"-n", ns(Internet), "addr", "add", addrs[Internet2] + "/24", "dev", "br0"},

		{"-n", ns(Home), "link", "add", lanIf, "type", "veth", "peer", "name", "eth0", "netns", ns(Client)},
		{"-n", ns(Home), "addr", "add", addrs[Home] + "/24", "dev", wanIf},
		{"-n", ns(Home), "addr", "add", "192.0.2.1/24", "dev", lanIf},
		{"-n", ns(Client), "addr", "add", addrs[Client] + "/24", "dev", "eth0"},

		{"-n", ns(Site), "link", "add", lanIf, "type", "bridge", "forward_delay", "0"},
		{"-n", ns(Site), "link", "add", Gateway, "master", lanIf, "type", "veth", "peer", "name", "eth0", "netns", ns(Gateway)},
		{"-n", ns(Site), "link", "add", App, "master", lanIf, "type", "veth", "peer", "name", "eth0", "netns", ns(App)},
		{"-n", ns(Site), "addr", "add", addrs[Site] + "/24", "dev", wanIf},
		{"-n", ns(Site), "addr", "add", "198.51.100.1/24", "dev", lanIf},
		{"-n", ns(Gateway), "addr", "add", addrs[Gateway] + "/24", "dev", "eth0"},
		{"-n", ns(App), "addr", "add", addrs[App] + "/24", "dev", "eth0"},
	}
	up := map[string][]string{
		Internet: {"lo", "br0", Home, Site},
		Home:     {"lo", wanIf, lanIf},
		Client:   {"lo", "eth0"},
		Site:     {"lo", wanIf, lanIf, Gateway, App},
		Gateway:  {"lo", "eth0"},
		App:      {"lo", "eth0"},
	}
	for _, h := range namespaces {
		for _, dev := range up[h] {
			cmds = append(cmds, []string{"-n", ns(h), "link", "set", dev, "up"})
		}
	}
	cmds = append(cmds,
		[]string{"-n", ns(Client), "route", "add", "default", "via", "192.0.2.1"},
		[]string{"-n", ns(Gateway), "route", "add", "default", "via", "198.51.100.1"},
		[]string{"-n", ns(App), "route", "add", "default", "via", "198.51.100.1"},
	)
	for _, c := range cmds {
		if _, err := run(ctx, append([]string{"ip"}, c...)...); err != nil {
			return err
		}
	}
	for _, r := range []string{Home, Site} {
		if _, err := runInput(ctx, []byte(routerRules(l.nat[r])), "ip", "netns", "exec", ns(r), "iptables-restore"); err != nil {
			return err
		}
	}
	if err := l.writeHosts(); err != nil {
		return err
	}
	return l.waitReachable(ctx)
}

// WriteEtc writes /etc/netns/<namespace>/name for host: "ip netns exec"
// (Exec, and processes a test starts that way) sees it as /etc/name, e.g. a
// resolv.conf. Teardown removes it.
func (l *Lab) WriteEtc(host, name string, content []byte) error {
	ns := l.Namespace(host)
	if ns == "" {
		return fmt.Errorf("lab: unknown host %q", host)
	}
	dir := filepath.Join("/etc/netns", ns)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), content, 0o644); err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	return nil
}

// ReadEtc reads what WriteEtc wrote (or a process in the namespace changed
// since).
func (l *Lab) ReadEtc(host, name string) ([]byte, error) {
	b, err := os.ReadFile(filepath.Join("/etc/netns", l.Namespace(host), name))
	if err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	return b, nil
}

// writeHosts writes /etc/netns/<ns>/hosts for the site namespaces.
func (l *Lab) writeHosts() error {
	var b strings.Builder
	b.WriteString("127.0.0.1\tlocalhost\n")
	names := make([]string, 0, len(l.hosts))
	for n := range l.hosts {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(&b, "%s\t%s\n", l.hosts[n], n)
	}
	for _, h := range []string{Gateway, App} {
		dir := filepath.Join("/etc/netns", l.Namespace(h))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, "hosts"), []byte(b.String()), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// waitReachable polls until the client and the gateway reach the internet
// host through their NATs (a refused TCP connection proves the path), so
// tests never race link setup.
func (l *Lab) waitReachable(ctx context.Context) error {
	for _, h := range []string{Client, Gateway} {
		var last error
		for {
			last = l.Run(h, func() error { return probe(l.Addr(Internet)) })
			if last == nil {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("%s cannot reach %s: %w", h, Internet, last)
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	return nil
}

// teardown deletes the namespaces and hosts files, then checks that none of
// this lab's namespaces is left.
func (l *Lab) teardown() {
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	var errs []error
	for i := len(namespaces) - 1; i >= 0; i-- {
		name := l.Namespace(namespaces[i])
		if _, err := os.Stat(filepath.Join("/run/netns", name)); errors.Is(err, os.ErrNotExist) {
			continue // never created
		}
		if _, err := run(ctx, "ip", "netns", "del", name); err != nil {
			errs = append(errs, err)
		}
		if err := os.RemoveAll(filepath.Join("/etc/netns", name)); err != nil {
			errs = append(errs, err)
		}
	}
	left, err := Leftovers(ctx, l.prefix)
	if err != nil {
		errs = append(errs, err)
	}
	if len(left) > 0 {
		errs = append(errs, fmt.Errorf("namespaces left after teardown: %v", left))
	}
	if err := errors.Join(errs...); err != nil {
		l.t.Errorf("lab %s teardown: %v", l.prefix, err)
	}
}

// Leftovers returns the namespaces whose name starts with prefix.
func Leftovers(ctx context.Context, prefix string) ([]string, error) {
	out, err := run(ctx, "ip", "netns", "list")
	if err != nil {
		return nil, err
	}
	var left []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], prefix) {
			left = append(left, f[0])
		}
	}
	return left, nil
}
