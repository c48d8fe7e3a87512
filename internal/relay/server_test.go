package relay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pion/transport/v4"
	"github.com/pion/transport/v4/stdnet"
	"github.com/pion/turn/v4"

	"github.com/keyhole-net/keyhole/internal/pionlog"
)

// waitFor polls cond until it returns "" or 10s pass; the last non-empty
// answer says what was wrong.
func waitFor(t *testing.T, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		msg := cond()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 10s: %s", msg)
		}
		<-tick.C
	}
}

// syncBuffer is a bytes.Buffer the relay may log to while a test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// tapped is one payload the relay forwarded.
type tapped struct {
	from, to netip.AddrPort
	payload  string
}

// testRelay is a Server serving on loopback for one test.
type testRelay struct {
	*Server
	logs *syncBuffer

	mu  sync.Mutex
	tap []tapped
}

// startRelay starts a relay with testSecret, on 127.0.0.1 unless cfg says
// otherwise. t.Cleanup stops it after the test's clients are gone.
func startRelay(t *testing.T, cfg Config, tune ...func(*Server)) *testRelay {
	t.Helper()
	r := &testRelay{logs: &syncBuffer{}}
	if !cfg.Listen.IsValid() {
		cfg.Listen = netip.MustParseAddrPort("127.0.0.1:0")
	}
	cfg.Secret = testSecret
	cfg.Logger = slog.New(slog.NewJSONHandler(r.logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	cfg.Tap = func(from, to netip.AddrPort, payload []byte) {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.tap = append(r.tap, tapped{from, to, string(payload)})
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range tune {
		f(s)
	}
	r.Server = s
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Serve did not return within 10s of cancel")
		}
	})
	return r
}

func (r *testRelay) tapped() []tapped {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]tapped(nil), r.tap...)
}

// turnClient is a pion TURN client on its own loopback socket.
type turnClient struct {
	*turn.Client
	conn net.PacketConn
}

// udp6Net is the standard network, except that it resolves the TURN
// server's address as IPv6: pion's client resolves "udp4" only.
type udp6Net struct{ *stdnet.Net }

func (udp6Net) ResolveUDPAddr(_, address string) (*net.UDPAddr, error) {
	return net.ResolveUDPAddr("udp6", address)
}

func newTURNClient(t *testing.T, r *testRelay, username, password string) *turnClient {
	t.Helper()
	network, local := "udp4", "127.0.0.1:0"
	var tn transport.Net
	if r.Addr().Addr().Is6() {
		std, err := stdnet.NewNet()
		if err != nil {
			t.Fatal(err)
		}
		network, local, tn = "udp6", "[::1]:0", udp6Net{std}
	}
	conn, err := net.ListenPacket(network, local)
	if err != nil {
		t.Fatal(err)
	}
	c, err := turn.NewClient(&turn.ClientConfig{
		STUNServerAddr: r.Addr().String(),
		TURNServerAddr: r.Addr().String(),
		Conn:           conn,
		Net:            tn,
		Username:       username,
		Password:       password,
		LoggerFactory:  pionlog.Factory(nil),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Listen(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		conn.Close()
	})
	return &turnClient{Client: c, conn: conn}
}

// allocate allocates on r with credentials for claims. The allocation is
// released (without waiting) before the relay stops.
func allocate(t *testing.T, r *testRelay, claims Claims) (*turnClient, net.PacketConn, error) {
	t.Helper()
	user, pass, err := Issue(testSecret, claims)
	if err != nil {
		t.Fatal(err)
	}
	c := newTURNClient(t, r, user, pass)
	relayed, err := c.Allocate()
	if err != nil {
		return c, nil, err
	}
	t.Cleanup(func() { relayed.Close() })
	return c, relayed, nil
}

func mustAllocate(t *testing.T, r *testRelay, claims Claims) (*turnClient, net.PacketConn, netip.AddrPort) {
	t.Helper()
	c, relayed, err := allocate(t, r, claims)
	if err != nil {
		t.Fatalf("allocate as %s %s: %v", claims.Role, claims.Subject, err)
	}
	return c, relayed, addrPort(relayed.LocalAddr())
}

func gatewayClaims(id string) Claims {
	return Claims{Expires: time.Now().Add(time.Hour), Role: RoleGateway, Subject: id}
}

func clientClaims(grant string, peer netip.AddrPort) Claims {
	return Claims{Expires: time.Now().Add(time.Minute), Role: RoleClient, Subject: grant, Peer: peer}
}

// read returns the next datagram on pc within 10s.
func read(t *testing.T, pc net.PacketConn) (string, netip.AddrPort) {
	t.Helper()
	pc.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 2048)
	n, from, err := pc.ReadFrom(buf)
	if err != nil {
		t.Fatalf("read on %v: %v", pc.LocalAddr(), err)
	}
	return string(buf[:n]), addrPort(from)
}

// wireGuardData returns a fake WireGuard transport-data message: type 4,
// three zero bytes, then n-4 bytes of "ciphertext".
func wireGuardData(n int) []byte {
	p := make([]byte, n)
	p[0] = 4
	for i := 4; i < n; i++ {
		p[i] = byte(i)
	}
	return p
}

func TestSTUNBinding(t *testing.T) {
	for _, listen := range []string{"127.0.0.1:0", "[::1]:0"} {
		t.Run(listen, func(t *testing.T) {
			r := startRelay(t, Config{Listen: loopback(t, listen)})
			c := newTURNClient(t, r, "", "")
			mapped, err := c.SendBindingRequest()
			if err != nil {
				t.Fatal(err)
			}
			if got, want := addrPort(mapped), addrPort(c.conn.LocalAddr()); got != want {
				t.Errorf("mapped address %v, want %v", got, want)
			}
		})
	}
}

// loopback returns listen, skipping the test if this host has no such
// loopback address (IPv6 is off in some containers).
func loopback(t *testing.T, listen string) netip.AddrPort {
	t.Helper()
	ap := netip.MustParseAddrPort(listen)
	pc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(ap))
	if err != nil {
		t.Skipf("no loopback %v: %v", ap.Addr(), err)
	}
	pc.Close()
	return ap
}

// A client allocation reaches the gateway's allocation on the same relay
// and back, whether or not the public IP is an address of the host.
func TestRelayToRelay(t *testing.T) {
	for _, tc := range []struct {
		name     string
		listen   string
		publicIP netip.Addr
	}{
		{"public IP on the host", "127.0.0.1:0", netip.Addr{}},
		{"public IP behind 1:1 NAT", "127.0.0.1:0", netip.MustParseAddr("192.0.2.1")},
		{"IPv6", "[::1]:0", netip.Addr{}},
		{"IPv6 behind 1:1 NAT", "[::1]:0", netip.MustParseAddr("2001:db8::1")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := startRelay(t, Config{Listen: loopback(t, tc.listen), PublicIP: tc.publicIP})
			wantIP := r.PublicIP()
			if tc.publicIP.IsValid() && wantIP != tc.publicIP {
				t.Fatalf("PublicIP() = %v, want %v", wantIP, tc.publicIP)
			}

			gw, gwRelay, gwAddr := mustAllocate(t, r, gatewayClaims("gw_test"))
			if gwAddr.Addr() != wantIP {
				t.Errorf("gateway relayed address %v, want IP %v", gwAddr, wantIP)
			}
			_, clRelay, clAddr := mustAllocate(t, r, clientClaims("grt_test", gwAddr))
			if st := r.Stats(); st.Allocations != 2 {
				t.Errorf("Allocations = %d, want 2", st.Allocations)
			}

			// The gateway is told the client's relayed address and
			// opens a permission for it, as it would for a candidate.
			if err := gw.CreatePermission(net.UDPAddrFromAddrPort(clAddr)); err != nil {
				t.Fatalf("gateway permission for %v: %v", clAddr, err)
			}
			toGateway := wireGuardData(96)
			if _, err := clRelay.WriteTo(toGateway, net.UDPAddrFromAddrPort(gwAddr)); err != nil {
				t.Fatal(err)
			}
			if got, from := read(t, gwRelay); got != string(toGateway) || from != clAddr {
				t.Fatalf("gateway got %q from %v, want the client's packet from %v", got, from, clAddr)
			}
			// A handshake initiation (type 1) back: forwarded, but not
			// transport data.
			toClient := make([]byte, 148)
			toClient[0] = 1
			if _, err := gwRelay.WriteTo(toClient, net.UDPAddrFromAddrPort(clAddr)); err != nil {
				t.Fatal(err)
			}
			if got, from := read(t, clRelay); got != string(toClient) || from != gwAddr {
				t.Fatalf("client got %q from %v, want the gateway's packet from %v", got, from, gwAddr)
			}

			want := Stats{Allocations: 2, Packets: 2, Bytes: 96 + 148, WireGuardData: 96}
			waitFor(t, func() string {
				if st := r.Stats(); st != want {
					return fmt.Sprintf("stats %+v, want %+v", st, want)
				}
				return ""
			})
			wantTap := []tapped{{clAddr, gwAddr, string(toGateway)}, {gwAddr, clAddr, string(toClient)}}
			if got := r.tapped(); fmt.Sprint(got) != fmt.Sprint(wantTap) {
				t.Errorf("tap saw %v\nwant %v", got, wantTap)
			}
		})
	}
}

func TestRefusedCredentials(t *testing.T) {
	r := startRelay(t, Config{})
	hour := time.Now().Add(time.Hour).Unix()
	// signed returns username with its correct password: only the shape
	// or the expiry can be wrong.
	signed := func(username string) func() (string, string) {
		return func() (string, string) { return username, password64(testSecret, username) }
	}
	issued := func(secret []byte, c Claims) func() (string, string) {
		return func() (string, string) {
			u, p, err := Issue(secret, c)
			if err != nil {
				t.Fatal(err)
			}
			return u, p
		}
	}
	for _, tc := range []struct {
		name   string
		creds  func() (username, password string)
		reason string // logged
	}{
		{"wrong secret", issued([]byte("another secret of 32 bytes......"), gatewayClaims("gw_1")), "bad password"},
		{"expired", issued(testSecret, Claims{Expires: time.Now().Add(-time.Second), Role: RoleGateway, Subject: "gw_1"}), "expired"},
		{"garbage username", signed("hello"), "want EXPIRY"},
		{"plain TURN REST user", signed(fmt.Sprintf("%d:alice", hour)), "unknown role"},
		{"unknown role", signed(fmt.Sprintf("%d:xx/foo", hour)), "unknown role"},
		{"client without peer", signed(fmt.Sprintf("%d:cl/grt_1", hour)), "want EXPIRY:cl/GRANT/PEER"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			username, password := tc.creds()
			before := r.Stats().AuthFailures
			c := newTURNClient(t, r, username, password)
			if relayed, err := c.Allocate(); err == nil {
				relayed.Close()
				t.Fatal("allocation succeeded")
			}
			if st := r.Stats(); st.AuthFailures <= before || st.Allocations != 0 {
				t.Errorf("stats %+v, want more than %d auth failures and no allocation", st, before)
			}
			logs := r.logs.String()
			if !strings.Contains(logs, tc.reason) {
				t.Errorf("no refusal with reason %q logged:\n%s", tc.reason, logs)
			}
			if strings.Contains(logs, password) {
				t.Errorf("password logged:\n%s", logs)
			}
		})
	}
}

func TestRefusedPeers(t *testing.T) {
	for _, tc := range []struct {
		name     string
		publicIP netip.Addr
	}{
		{"public IP on the host", netip.Addr{}},
		{"public IP behind 1:1 NAT", netip.MustParseAddr("192.0.2.1")},
	} {
		t.Run(tc.name, func(t *testing.T) { testRefusedPeers(t, tc.publicIP) })
	}
}

func testRefusedPeers(t *testing.T, publicIP netip.Addr) {
	r := startRelay(t, Config{PublicIP: publicIP})
	gw, gwRelay, gwAddr := mustAllocate(t, r, gatewayClaims("gw_1"))
	_, _, otherGW := mustAllocate(t, r, gatewayClaims("gw_2"))
	cl, clRelay, clAddr := mustAllocate(t, r, clientClaims("grt_1", gwAddr))
	if err := gw.CreatePermission(net.UDPAddrFromAddrPort(clAddr)); err != nil {
		t.Fatal(err)
	}
	// A plain socket on the relay host, at the relay's public IP.
	outsider, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	defer outsider.Close()
	hostPort := netip.AddrPortFrom(r.PublicIP(), outsider.LocalAddr().(*net.UDPAddr).AddrPort().Port())

	denied := func(what string, act func() error, wantErr bool) {
		t.Helper()
		before := r.Stats().PeerDenied
		err := act()
		if wantErr != (err != nil) {
			t.Errorf("%s: error %v, want error %v", what, err, wantErr)
		}
		waitFor(t, func() string {
			if got := r.Stats().PeerDenied; got <= before {
				return fmt.Sprintf("%s: PeerDenied still %d", what, got)
			}
			return ""
		})
	}
	send := func(pc net.PacketConn, to netip.AddrPort) func() error {
		return func() error {
			_, err := pc.WriteTo(wireGuardData(64), net.UDPAddrFromAddrPort(to))
			return err
		}
	}

	// The client may reach exactly its gateway: another allocation at
	// the same IP passes the permission but not the relay socket, and
	// neither does any other port on the relay host.
	denied("client to another gateway", send(clRelay, otherGW), false)
	denied("client to a non-relay port on the relay IP", send(clRelay, hostPort), false)
	// Another IP is refused at CreatePermission.
	denied("client to another IP", send(clRelay, netip.MustParseAddrPort("192.0.2.99:51820")), true)
	denied("client permission for another IP", func() error {
		return cl.CreatePermission(net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.2:51820")))
	}, true)
	// A gateway reaches clients on the internet and other allocations,
	// but nothing else on the relay host and no special address.
	denied("gateway permission for a loopback address", func() error {
		return gw.CreatePermission(net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.2:9")))
	}, true)
	denied("gateway permission for a multicast address", func() error {
		return gw.CreatePermission(net.UDPAddrFromAddrPort(netip.MustParseAddrPort("224.0.0.1:9")))
	}, true)
	if err := gw.CreatePermission(net.UDPAddrFromAddrPort(netip.MustParseAddrPort("192.0.2.99:9"))); err != nil {
		t.Errorf("gateway permission for a client on the internet: %v", err)
	}
	denied("gateway to a non-relay port on the relay IP", send(gwRelay, hostPort), false)
	// Nothing but allocations reaches an allocation from the relay host.
	denied("host socket to the gateway", func() error {
		_, err := outsider.WriteToUDPAddrPort([]byte("hello"), localRelay(r, gwAddr))
		return err
	}, false)

	// What is allowed still flows, and nothing refused was forwarded.
	if _, err := clRelay.WriteTo([]byte("allowed"), net.UDPAddrFromAddrPort(gwAddr)); err != nil {
		t.Fatal(err)
	}
	if got, from := read(t, gwRelay); got != "allowed" || from != clAddr {
		t.Errorf("gateway got %q from %v", got, from)
	}
	if got := r.tapped(); len(got) != 1 || got[0].payload != "allowed" {
		t.Errorf("tap saw %v, want only the allowed datagram", got)
	}
	if st := r.Stats(); st.AuthFailures != 0 || st.Allocations != 3 {
		t.Errorf("stats %+v", st)
	}
}

// localRelay is where a relayed address's socket is bound on this host.
func localRelay(r *testRelay, relayed netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(r.localIP, relayed.Port())
}

func TestQuota(t *testing.T) {
	r := startRelay(t, Config{}, func(s *Server) { s.maxPerSubject = 1 })
	mustAllocate(t, r, gatewayClaims("gw_1"))
	if _, _, err := allocate(t, r, gatewayClaims("gw_1")); err == nil || !strings.Contains(err.Error(), "486") {
		t.Errorf("second allocation for gw_1: %v, want 486 (Allocation Quota Reached)", err)
	}
	mustAllocate(t, r, gatewayClaims("gw_2"))
	if st := r.Stats(); st.Allocations != 2 {
		t.Errorf("Allocations = %d, want 2", st.Allocations)
	}
}

func TestAuthenticate(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	s, err := New(Config{Listen: netip.MustParseAddrPort("127.0.0.1:0"), Secret: testSecret, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	src := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5}
	user, pass, _ := Issue(testSecret, Claims{Expires: now.Add(time.Second), Role: RoleGateway, Subject: "gw_1"})
	key, ok := s.authenticate(user, DefaultRealm, src)
	if !ok || !bytes.Equal(key, turn.GenerateAuthKey(user, DefaultRealm, pass)) {
		t.Errorf("valid credential: ok %v", ok)
	}
	if _, ok := s.authenticate(user, "other", src); ok {
		t.Error("accepted another realm")
	}
	expired, _, _ := Issue(testSecret, Claims{Expires: now, Role: RoleGateway, Subject: "gw_1"})
	if _, ok := s.authenticate(expired, DefaultRealm, src); ok {
		t.Error("accepted a credential expiring now")
	}
	if got := s.Stats().AuthFailures; got != 2 {
		t.Errorf("AuthFailures = %d, want 2", got)
	}
}

func TestRules(t *testing.T) {
	public := netip.MustParseAddr("2001:db8::10")
	gw := &Claims{Role: RoleGateway, Subject: "gw_1"}
	cl := &Claims{Role: RoleClient, Subject: "grt_1", Peer: netip.MustParseAddrPort("[2001:db8::10]:50000")}
	for _, tc := range []struct {
		name    string
		c       *Claims
		ip      netip.Addr
		allowed bool
	}{
		{"gateway to relay IP", gw, public, true},
		{"gateway to a client", gw, netip.MustParseAddr("2001:db8::11"), true},
		{"gateway to loopback", gw, netip.MustParseAddr("::1"), false},
		{"gateway to multicast", gw, netip.MustParseAddr("ff02::1"), false},
		{"gateway to link-local", gw, netip.MustParseAddr("fe80::1"), false},
		{"client to peer IP", cl, public, true},
		{"client elsewhere", cl, netip.MustParseAddr("203.0.113.1"), false},
		{"unknown role", &Claims{Role: "xx"}, public, false},
	} {
		if got := permitIP(tc.c, tc.ip, public); got != tc.allowed {
			t.Errorf("permitIP %s: %v, want %v", tc.name, got, tc.allowed)
		}
	}
	for _, tc := range []struct {
		name    string
		c       *Claims
		peer    string
		isRelay bool
		allowed bool
	}{
		{"gateway to an allocation", gw, "[2001:db8::10]:50001", true, true},
		{"gateway to a client", gw, "[2001:db8::11]:50001", false, true},
		{"gateway to loopback", gw, "[::1]:50001", false, false},
		{"client to its peer", cl, "[2001:db8::10]:50000", true, true},
		{"client to another port", cl, "[2001:db8::10]:50001", true, false},
		{"unknown role", &Claims{Role: "xx"}, "[2001:db8::10]:50000", true, false},
	} {
		if got := permitPeer(tc.c, netip.MustParseAddrPort(tc.peer), tc.isRelay); got != tc.allowed {
			t.Errorf("permitPeer %s: %v, want %v", tc.name, got, tc.allowed)
		}
	}
}

func TestNewRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"no listen address", Config{Secret: testSecret}},
		{"short secret", Config{Listen: netip.MustParseAddrPort("127.0.0.1:0"), Secret: testSecret[:8]}},
		{"wildcard without public IP", Config{Listen: netip.MustParseAddrPort("0.0.0.0:0"), Secret: testSecret}},
		{"unspecified public IP", Config{Listen: netip.MustParseAddrPort("127.0.0.1:0"), PublicIP: netip.IPv4Unspecified(), Secret: testSecret}},
		{"families differ", Config{Listen: netip.MustParseAddrPort("127.0.0.1:0"), PublicIP: netip.MustParseAddr("2001:db8::1"), Secret: testSecret}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if s, err := New(tc.cfg); err == nil {
				s.Close()
				t.Fatal("New succeeded")
			}
		})
	}
}

// Serve closes every allocation and its socket when it stops; Close is
// idempotent and a closed Server does not serve.
func TestLifecycle(t *testing.T) {
	s, err := New(Config{Listen: netip.MustParseAddrPort("127.0.0.1:0"), Secret: testSecret})
	if err != nil {
		t.Fatal(err)
	}
	r := &testRelay{Server: s}
	served := make(chan error, 1)
	go func() { served <- s.Serve(context.Background()) }()

	_, _, gwAddr := mustAllocate(t, r, gatewayClaims("gw_1"))
	if got := s.Stats().Allocations; got != 1 {
		t.Fatalf("Allocations = %d, want 1", got)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if got := s.Stats().Allocations; got != 0 {
		t.Errorf("Allocations after Close = %d", got)
	}
	// The relay socket and the TURN socket are released.
	for _, a := range []netip.AddrPort{gwAddr, s.Addr()} {
		pc, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(a))
		if err != nil {
			t.Errorf("%v still bound: %v", a, err)
			continue
		}
		pc.Close()
	}
	if err := s.Serve(context.Background()); err == nil {
		t.Error("Serve after Close succeeded")
	}

	never, err := New(Config{Listen: netip.MustParseAddrPort("127.0.0.1:0"), Secret: testSecret})
	if err != nil {
		t.Fatal(err)
	}
	if err := never.Close(); err != nil {
		t.Errorf("Close before Serve: %v", err)
	}
	if err := never.Serve(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("Serve after Close = %v, want ErrClosed", err)
	}
}
