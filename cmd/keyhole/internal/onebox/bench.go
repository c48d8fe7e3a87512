package onebox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/netstack"

	"github.com/keyhole-net/keyhole/client"
	"github.com/keyhole-net/keyhole/controller/auth"
	"github.com/keyhole-net/keyhole/controller/store"
	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/apiclient"
	"github.com/keyhole-net/keyhole/internal/key"
	"github.com/keyhole-net/keyhole/internal/trust"
)

// Throughput is a measured one-way transfer.
type Throughput struct {
	Bytes    int64
	Duration time.Duration
}

// Mbps returns megabits per second.
func (t Throughput) Mbps() float64 {
	if t.Duration <= 0 {
		return 0
	}
	return float64(t.Bytes) * 8 / t.Duration.Seconds() / 1e6
}

// sendAll writes size bytes to c, half-closes, and waits for the peer to
// close (it does once it has read everything), so the time covers delivery.
func sendAll(c net.Conn, size int64) (Throughput, error) {
	buf := make([]byte, 128<<10)
	start := time.Now()
	var sent int64
	for sent < size {
		n, err := c.Write(buf[:min(int64(len(buf)), size-sent)])
		sent += int64(n)
		if err != nil {
			return Throughput{}, fmt.Errorf("after %d bytes: %w", sent, err)
		}
	}
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.Copy(io.Discard, c); err != nil {
		return Throughput{}, fmt.Errorf("waiting for the receiver: %w", err)
	}
	return Throughput{Bytes: sent, Duration: time.Since(start)}, nil
}

// StockThroughput measures one TCP stream between two stock wireguard-go
// tun/netstack devices peered over loopback: the reference Keyhole's data
// plane is compared with.
func StockThroughput(ctx context.Context, size int64) (Throughput, error) {
	ipA, ipB := netip.MustParseAddr("100.127.0.1"), netip.MustParseAddr("100.127.0.2")
	kA, _ := key.NewWGPrivate()
	kB, _ := key.NewWGPrivate()
	quiet := &device.Logger{Verbosef: device.DiscardLogf, Errorf: device.DiscardLogf}
	tunA, netA, err := netstack.CreateNetTUN([]netip.Addr{ipA}, nil, 1420)
	if err != nil {
		return Throughput{}, err
	}
	tunB, netB, err := netstack.CreateNetTUN([]netip.Addr{ipB}, nil, 1420)
	if err != nil {
		return Throughput{}, err
	}
	devA := device.NewDevice(tunA, conn.NewDefaultBind(), quiet)
	defer devA.Close()
	devB := device.NewDevice(tunB, conn.NewDefaultBind(), quiet)
	defer devB.Close()
	const portB = 0
	if err := devB.IpcSet(fmt.Sprintf("private_key=%s\nlisten_port=%d\npublic_key=%s\nallowed_ip=%s/32\n", kB.UAPIHex(), portB, kA.Public().UAPIHex(), ipA)); err != nil {
		return Throughput{}, err
	}
	if err := devB.Up(); err != nil {
		return Throughput{}, err
	}
	port, err := uapiListenPort(devB)
	if err != nil {
		return Throughput{}, err
	}
	if err := devA.IpcSet(fmt.Sprintf("private_key=%s\npublic_key=%s\nendpoint=127.0.0.1:%d\nallowed_ip=%s/32\n", kA.UAPIHex(), kB.Public().UAPIHex(), port, ipB)); err != nil {
		return Throughput{}, err
	}
	if err := devA.Up(); err != nil {
		return Throughput{}, err
	}
	l, err := netB.ListenTCPAddrPort(netip.AddrPortFrom(ipB, 9000))
	if err != nil {
		return Throughput{}, err
	}
	defer l.Close()
	go discardOne(l)
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := netA.DialContextTCPAddrPort(dctx, netip.AddrPortFrom(ipB, 9000))
	if err != nil {
		return Throughput{}, err
	}
	defer c.Close()
	return sendAll(c, size)
}

func uapiListenPort(d *device.Device) (int, error) {
	s, err := d.IpcGet()
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(s, "\n") {
		if v, ok := strings.CutPrefix(line, "listen_port="); ok {
			var p int
			_, err := fmt.Sscan(v, &p)
			return p, err
		}
	}
	return 0, errors.New("no listen_port")
}

// discardOne accepts one connection, reads it to EOF and closes it.
func discardOne(l net.Listener) {
	c, err := l.Accept()
	if err != nil {
		return
	}
	_, _ = io.Copy(io.Discard, c)
	c.Close()
}

// Bench is a system set up for benchmarks: a controller, one gateway in
// group "site", a discard sink app, a web app, and user "bench" allowed
// to every app.
type Bench struct {
	Box  *Box
	Sink *EchoServer
	Web  *WebApp
	dir  string
}

// NewBench starts the benchmark system in a temporary directory, on the
// default store (SQLite).
func NewBench(ctx context.Context, log *slog.Logger) (*Bench, error) {
	return NewBenchOn(ctx, log, "")
}

// NewBenchOn starts the benchmark system with the controller's store at
// storeURL (see controller.Config.StoreURL; "" is SQLite in the
// temporary directory).
func NewBenchOn(ctx context.Context, log *slog.Logger, storeURL string) (*Bench, error) {
	dir, err := os.MkdirTemp("", "keyhole-bench-")
	if err != nil {
		return nil, err
	}
	b := &Bench{dir: dir}
	ok := false
	defer func() {
		if !ok {
			b.Close()
		}
	}()
	if b.Box, err = Start(ctx, Config{Dir: dir, Logger: log, FastPasswords: true, StoreURL: storeURL}); err != nil {
		return nil, err
	}
	if b.Sink, err = StartEcho(true); err != nil {
		return nil, err
	}
	if b.Web, err = StartWebApp("web"); err != nil {
		return nil, err
	}
	a := b.Box.Admin
	steps := []func() error{
		func() error { _, err := a.AddGatewayGroup(ctx, "site"); return err },
		func() error { _, err := a.AddGroup(ctx, "bench"); return err },
		func() error {
			_, err := a.AddUser(ctx, api.UserCreate{Name: "bench", Password: "bench-password", Groups: []string{"bench"}})
			return err
		},
		func() error {
			_, err := a.AddApp(ctx, api.AppCreate{Name: "sink", Domains: []string{"sink.corp.internal"}, GatewayGroup: "site",
				Ports: []api.PortRange{{Proto: "tcp", First: b.Sink.Port(), Last: b.Sink.Port()}}})
			return err
		},
		func() error {
			_, err := a.AddApp(ctx, api.AppCreate{Name: "web", Domains: []string{"web.corp.internal"}, GatewayGroup: "site",
				Ports: []api.PortRange{{Proto: "tcp", First: b.Web.Port(), Last: b.Web.Port()}}})
			return err
		},
		func() error {
			_, err := a.AddPolicy(ctx, api.PolicyRuleCreate{Action: api.Allow, Groups: []string{"bench"}, Apps: []string{"*"}})
			return err
		},
	}
	for _, s := range steps {
		if err := s(); err != nil {
			return nil, err
		}
	}
	if _, err := b.Box.AddGateway(ctx, GatewayOptions{Group: "site", Name: "gw", Hosts: map[string]netip.Addr{
		"sink.corp.internal": Loopback, "web.corp.internal": Loopback,
	}}); err != nil {
		return nil, err
	}
	ok = true
	return b, nil
}

// Close stops everything and removes the directory.
func (b *Bench) Close() {
	if b.Box != nil {
		b.Box.Close()
	}
	if b.Sink != nil {
		b.Sink.Close()
	}
	if b.Web != nil {
		b.Web.Close()
	}
	os.RemoveAll(b.dir)
}

// Client logs the bench user in and starts a client.
func (b *Bench) Client(ctx context.Context) (*Client, error) {
	return b.Box.Login(ctx, ClientOptions{User: "bench", Password: "bench-password"})
}

// TunnelThroughput sends size bytes over one TCP stream client → gateway
// → sink app, through the whole product.
func (b *Bench) TunnelThroughput(ctx context.Context, c *Client, size int64) (Throughput, error) {
	conn, err := c.Dial(ctx, "tcp", "sink.corp.internal", b.Sink.Port())
	if err != nil {
		return Throughput{}, err
	}
	defer conn.Close()
	return sendAll(conn, size)
}

// ParallelThroughput sends size bytes from each of clients at once, one
// TCP stream each, through the one gateway: the aggregate is the bytes of
// all over the time from the first start to the last finish.
func (b *Bench) ParallelThroughput(ctx context.Context, clients []*Client, size int64) (Throughput, error) {
	conns := make([]net.Conn, len(clients))
	for i, c := range clients {
		conn, err := c.Dial(ctx, "tcp", "sink.corp.internal", b.Sink.Port())
		if err != nil {
			for _, o := range conns[:i] {
				o.Close()
			}
			return Throughput{}, fmt.Errorf("client %d: %w", i, err)
		}
		conns[i] = conn
	}
	errs := make([]error, len(conns))
	var wg sync.WaitGroup
	start := time.Now()
	for i, conn := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer conn.Close()
			_, errs[i] = sendAll(conn, size)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return Throughput{}, err
	}
	return Throughput{Bytes: size * int64(len(conns)), Duration: time.Since(start)}, nil
}

// Latencies are sorted durations.
type Latencies []time.Duration

// Quantile returns the q-quantile (0..1).
func (l Latencies) Quantile(q float64) time.Duration {
	if len(l) == 0 {
		return 0
	}
	i := int(q * float64(len(l)-1))
	return l[i]
}

// FirstByte measures, n times, the time from a fresh grant request to the
// first byte of the web app's answer through the tunnel; each grant is
// released afterwards so the next one is fresh.
func (b *Bench) FirstByte(ctx context.Context, c *Client, n int) (Latencies, error) {
	var out Latencies
	req := "GET / HTTP/1.1\r\nHost: web.corp.internal\r\nConnection: close\r\n\r\n"
	for range n {
		start := time.Now()
		conn, err := c.Dial(ctx, "tcp", "web.corp.internal", b.Web.Port())
		if err != nil {
			return nil, err
		}
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(conn, req); err != nil {
			conn.Close()
			return nil, err
		}
		if _, err := conn.Read(make([]byte, 1)); err != nil {
			conn.Close()
			return nil, err
		}
		out = append(out, time.Since(start))
		conn.Close()
		if err := c.Release(ctx, "web.corp.internal"); err != nil {
			return nil, err
		}
	}
	slices.Sort(out)
	return out, nil
}

// GrantRate is the outcome of a grant issue rate run.
type GrantRate struct {
	Grants    int
	Duration  time.Duration
	Latencies Latencies
}

// PerSecond returns grants per second.
func (g GrantRate) PerSecond() float64 { return float64(g.Grants) / g.Duration.Seconds() }

// SeedStore adds devices and apps straight into the store (a bulk import:
// the API would take minutes for 10,000 devices), then reloads the
// controller's view.
func (b *Bench) SeedStore(ctx context.Context, devices, apps int) error {
	st := b.Box.Controller.Store()
	now := time.Now().UTC()
	for i := range devices {
		k, _ := key.NewWGPrivate()
		if _, err := st.CreateDevice(ctx, store.Device{ID: api.DeviceID(auth.NewID("dev")), User: "bench", Name: fmt.Sprintf("seed-%d", i), WGPublicKey: k.Public(), CreatedAt: now}); err != nil {
			return fmt.Errorf("seed device %d: %w", i, err)
		}
	}
	for i := range apps {
		if _, err := st.CreateApp(ctx, store.App{ID: api.AppID(auth.NewID("app")), Name: fmt.Sprintf("app-%d", i), Domains: []string{fmt.Sprintf("app-%d.corp.internal", i)},
			Ports: []api.PortRange{{Proto: "tcp", First: 443, Last: 443}}, GatewayGroup: "site", CreatedAt: now}); err != nil {
			return fmt.Errorf("seed app %d: %w", i, err)
		}
	}
	return b.Box.Controller.Reload(ctx)
}

// deviceAPI logs in a fresh device and returns an API client that speaks
// as it (mTLS device certificate and session).
func (b *Bench) deviceAPI(ctx context.Context) (*apiclient.Client, error) {
	dir, err := os.MkdirTemp(b.dir, "dev-")
	if err != nil {
		return nil, err
	}
	if _, err := client.Login(ctx, client.LoginConfig{ControllerURL: b.Box.URL, CAFingerprint: b.Box.Fingerprint, User: "bench", Password: "bench-password", DataDir: dir}); err != nil {
		return nil, err
	}
	creds, err := trust.LoadCredentials(dir)
	if err != nil {
		return nil, err
	}
	tok, err := os.ReadFile(filepath.Join(dir, "session.token"))
	if err != nil {
		return nil, err
	}
	return apiclient.New(apiclient.Config{URL: b.Box.URL, Credentials: creds, Bearer: strings.TrimSpace(string(tok))})
}

// IssueGrants issues total fresh grants over HTTPS from workers devices in
// parallel, cycling through the seeded apps; every grant is pushed to the
// gateway and acknowledged before it counts.
func (b *Bench) IssueGrants(ctx context.Context, workers, total, apps int) (GrantRate, error) {
	cls := make([]*apiclient.Client, workers)
	for i := range cls {
		var err error
		if cls[i], err = b.deviceAPI(ctx); err != nil {
			return GrantRate{}, err
		}
		// Warm the connection (TLS handshake) outside the measurement.
		if err := cls[i].Do(ctx, "GET", "/v1/health", nil, nil); err != nil {
			return GrantRate{}, err
		}
	}
	var next atomic.Int64
	lat := make([][]time.Duration, workers)
	errs := make([]error, workers)
	var wg sync.WaitGroup
	start := time.Now()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; k < apps; k++ {
				if next.Add(1) > int64(total) {
					return
				}
				// Each worker is its own device and walks the apps in
				// order: every request is a new (device, app) pair, so
				// every grant is fresh.
				app := fmt.Sprintf("app-%d", k)
				t0 := time.Now()
				if err := cls[w].Do(ctx, "POST", "/v1/grants", api.GrantRequest{App: app}, nil); err != nil {
					errs[w] = err
					return
				}
				lat[w] = append(lat[w], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	d := time.Since(start)
	if err := errors.Join(errs...); err != nil {
		return GrantRate{}, err
	}
	var all Latencies
	for _, l := range lat {
		all = append(all, l...)
	}
	slices.Sort(all)
	return GrantRate{Grants: len(all), Duration: d, Latencies: all}, nil
}
