package wg

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl"
)

// inNewNetns moves the calling goroutine, locked to its thread for good, into
// a fresh network namespace with loopback up; the thread dies with the
// goroutine, so the namespace goes away when the test ends. Sockets, TUN
// devices and netlink handles created from this goroutine live there.
func inNewNetns(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace and a TUN device")
	}
	runtime.LockOSThread() // never unlocked: the thread must not serve other goroutines
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		t.Skipf("unshare network namespace: %v", err)
	}
	lo, err := netlink.LinkByName("lo")
	if err == nil {
		err = netlink.LinkSetUp(lo)
	}
	if err != nil {
		t.Fatalf("loopback up: %v", err)
	}
}

// tunPair is a client TUN and a gateway Net peered over loopback in a fresh
// namespace; the gateway echoes TCP to appAddr.
func tunPair(t *testing.T, name string) (*TUN, *Net) {
	t.Helper()
	inNewNetns(t)
	gwKey, clKey := mustKey(t), mustKey(t)
	gw, err := New(Config{PrivateKey: gwKey, Addresses: []netip.Addr{gatewayAddr}, Forward: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gw.Close() })
	echoTCP(t, gw)
	gw.SetEchoHandler(func(src, dst netip.Addr) bool { return src == clientAddr && dst == appAddr.Addr() })
	tn, err := NewTUN(TUNConfig{Name: name, PrivateKey: clKey, Address: clientAddr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tn.Close() })
	if err := gw.UpsertPeer(Peer{PublicKey: clKey.Public(), AllowedIPs: []netip.Prefix{netip.PrefixFrom(clientAddr, 32)}}); err != nil {
		t.Fatal(err)
	}
	if err := tn.UpsertPeer(Peer{
		PublicKey:  gwKey.Public(),
		Endpoint:   netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), gw.Port()),
		AllowedIPs: []netip.Prefix{netip.PrefixFrom(appAddr.Addr(), 32)},
	}); err != nil {
		t.Fatal(err)
	}
	return tn, gw
}

func kernelRoutes(t *testing.T, link string) []netip.Prefix {
	t.Helper()
	l, err := netlink.LinkByName(link)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := netlink.RouteList(l, unix.AF_INET)
	if err != nil {
		t.Fatal(err)
	}
	var ps []netip.Prefix
	for _, r := range rs {
		if r.Dst == nil || r.Protocol != routeProtocol {
			continue
		}
		a, _ := netip.AddrFromSlice(r.Dst.IP.To4())
		bits, _ := r.Dst.Mask.Size()
		ps = append(ps, netip.PrefixFrom(a, bits))
	}
	slices.SortFunc(ps, netip.Prefix.Compare)
	return ps
}

func TestTUNRoutesCarryKernelTCP(t *testing.T) {
	tn, _ := tunPair(t, "khtest0")

	// No route yet: the kernel has no way to the app.
	if _, err := net.DialTimeout("tcp", appAddr.String(), 300*time.Millisecond); err == nil {
		t.Fatal("dial before any route succeeded")
	}
	app := netip.PrefixFrom(appAddr.Addr(), 32)
	if _, err := tn.SetRoutes([]netip.Prefix{app}); err != nil {
		t.Fatal(err)
	}
	if got := kernelRoutes(t, "khtest0"); !slices.Equal(got, []netip.Prefix{app}) {
		t.Fatalf("kernel routes = %v, want [%v]", got, app)
	}
	c, err := net.DialTimeout("tcp", appAddr.String(), 5*time.Second)
	if err != nil {
		t.Fatalf("dial through the TUN: %v", err)
	}
	defer c.Close()
	if got := c.LocalAddr().(*net.TCPAddr).AddrPort().Addr(); got != clientAddr {
		t.Errorf("source address = %v, want the overlay address %v", got, clientAddr)
	}
	msg := []byte("through the kernel and WireGuard")
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != string(msg) {
		t.Fatalf("echo = %q, %v", buf, err)
	}

	// The gateway answers ping to the granted address.
	if out, err := exec.Command("ping", "-c", "1", "-W", "3", appAddr.Addr().String()).CombinedOutput(); err != nil {
		t.Errorf("ping %s: %v\n%s", appAddr.Addr(), err, out)
	}

	// wg show / wgctrl see the device through its UAPI socket.
	wc, err := wgctrl.New()
	if err != nil {
		t.Fatal(err)
	}
	defer wc.Close()
	dev, err := wc.Device("khtest0")
	if err != nil {
		t.Fatalf("wgctrl: %v", err)
	}
	if len(dev.Peers) != 1 || dev.Peers[0].LastHandshakeTime.IsZero() {
		t.Fatalf("wgctrl peers = %+v, want one peer with a handshake", dev.Peers)
	}

	// Killing the connections aborts the open one at once.
	n, err := tn.KillConnections([]netip.Prefix{app})
	if err != nil || n != 1 {
		t.Fatalf("KillConnections = %d, %v; want 1", n, err)
	}
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, err = c.Read(buf)
	if !errors.Is(err, unix.ECONNABORTED) {
		t.Fatalf("read after kill = %v, want ECONNABORTED", err)
	}

	removed, err := tn.SetRoutes(nil)
	if err != nil || !slices.Equal(removed, []netip.Prefix{app}) {
		t.Fatalf("SetRoutes(nil) = %v, %v", removed, err)
	}
	if got := kernelRoutes(t, "khtest0"); len(got) != 0 {
		t.Fatalf("kernel routes after removal = %v", got)
	}
}

func TestTUNCloseRemovesEverything(t *testing.T) {
	tn, _ := tunPair(t, "khtest1")
	if _, err := tn.SetRoutes([]netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat("/var/run/wireguard/khtest1.sock"); err != nil {
		t.Fatalf("UAPI socket: %v", err)
	}
	if err := tn.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := netlink.LinkByName("khtest1"); err == nil {
		t.Fatal("interface still exists after Close")
	}
	if _, err := os.Stat("/var/run/wireguard/khtest1.sock"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("UAPI socket after Close: %v", err)
	}
	if _, err := tn.SetRoutes(nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("SetRoutes after Close = %v, want ErrClosed", err)
	}
}

func TestTUNRejectsBadRoutes(t *testing.T) {
	tn, _ := tunPair(t, "khtest2")
	for _, p := range []netip.Prefix{{}, netip.MustParsePrefix("2001:db8::/32")} {
		if _, err := tn.SetRoutes([]netip.Prefix{p}); err == nil {
			t.Errorf("SetRoutes(%v) succeeded", p)
		}
	}
	if got := tn.Routes(); len(got) != 0 {
		t.Fatalf("routes after rejected calls = %v", got)
	}
}
