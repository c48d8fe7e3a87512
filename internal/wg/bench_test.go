package wg

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/netstack"
)

// benchBytesPerOp is what one benchmark iteration sends through the tunnel.
const benchBytesPerOp = 32 << 20

// tunnel is one TCP stream through a WireGuard tunnel whose receiving end
// discards; received reports the byte count when the receiver sees EOF.
type tunnel struct {
	conn     net.Conn
	received <-chan int64
	close    func()
}

// BenchmarkTunnelTCP measures one TCP stream through a netstack↔netstack
// WireGuard tunnel over loopback: wireguard-go's stock tun/netstack, and ours
// (client dial → gateway Forward handler).
func BenchmarkTunnelTCP(b *testing.B) {
	b.Run("stock", func(b *testing.B) { benchTunnel(b, newStockTunnel) })
	b.Run("keyhole", func(b *testing.B) { benchTunnel(b, newKeyholeTunnel) })
}

// BenchmarkTunnelTCPRatio runs both tunnels in turn in one process and
// reports ours as a multiple of stock ("x-stock").
func BenchmarkTunnelTCPRatio(b *testing.B) {
	stock := runTunnel(b, newStockTunnel, int64(b.N)*benchBytesPerOp)
	ours := runTunnel(b, newKeyholeTunnel, int64(b.N)*benchBytesPerOp)
	b.ReportMetric(stock, "stock-Mbit/s")
	b.ReportMetric(ours, "keyhole-Mbit/s")
	b.ReportMetric(ours/stock, "x-stock")
}

func benchTunnel(b *testing.B, newTunnel func(testing.TB) tunnel) {
	size := int64(b.N) * benchBytesPerOp
	b.SetBytes(benchBytesPerOp)
	b.ReportMetric(runTunnel(b, newTunnel, size), "Mbit/s")
}

// runTunnel sends size bytes through a new tunnel and returns Mbit/s,
// timing from the first write to the receiver's EOF.
func runTunnel(b *testing.B, newTunnel func(testing.TB) tunnel, size int64) float64 {
	b.StopTimer()
	t := newTunnel(b)
	defer t.close()
	buf := make([]byte, 256<<10)
	b.StartTimer()
	start := time.Now()
	for sent := int64(0); sent < size; {
		n := min(int64(len(buf)), size-sent)
		if _, err := t.conn.Write(buf[:n]); err != nil {
			b.Fatalf("write after %d bytes: %v", sent, err)
		}
		sent += n
	}
	t.conn.(interface{ CloseWrite() error }).CloseWrite()
	got := <-t.received
	elapsed := time.Since(start)
	b.StopTimer()
	if got != size {
		b.Fatalf("received %d bytes, want %d", got, size)
	}
	return float64(size) * 8 / elapsed.Seconds() / 1e6
}

// discard reads c to EOF and reports the count.
func discard(c net.Conn, received chan<- int64) {
	n, _ := io.Copy(io.Discard, c)
	c.Close()
	received <- n
}

func newKeyholeTunnel(tb testing.TB) tunnel {
	tb.Helper()
	p := newPair(tb)
	received := make(chan int64, 1)
	p.gateway.SetTCPHandler(func(r *TCPRequest) {
		c, err := r.Accept()
		if err != nil {
			tb.Errorf("accept: %v", err)
			return
		}
		discard(c, received)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := p.client.DialContext(ctx, "tcp", appAddr)
	if err != nil {
		tb.Fatal(err)
	}
	return tunnel{conn: c, received: received, close: func() {
		c.Close()
		p.client.Close()
		p.gateway.Close()
	}}
}

// newStockTunnel builds the reference: wireguard-go's tun/netstack on both
// ends, with the same UDP bind.
func newStockTunnel(tb testing.TB) tunnel {
	tb.Helper()
	ck, gk := mustKey(tb), mustKey(tb)
	gtun, gnet, err := netstack.CreateNetTUN([]netip.Addr{gatewayAddr}, nil, DefaultMTU)
	if err != nil {
		tb.Fatal(err)
	}
	ctun, cnet, err := netstack.CreateNetTUN([]netip.Addr{clientAddr}, nil, DefaultMTU)
	if err != nil {
		tb.Fatal(err)
	}
	silent := &device.Logger{Verbosef: device.DiscardLogf, Errorf: device.DiscardLogf}
	gdev := device.NewDevice(gtun, conn.NewDefaultBind(), silent)
	cdev := device.NewDevice(ctun, conn.NewDefaultBind(), silent)
	if err := gdev.IpcSet(fmt.Sprintf("private_key=%s\nlisten_port=0\npublic_key=%s\nallowed_ip=%s/32\n",
		gk.UAPIHex(), ck.Public().UAPIHex(), clientAddr)); err != nil {
		tb.Fatal(err)
	}
	if err := gdev.Up(); err != nil {
		tb.Fatal(err)
	}
	uapi, err := gdev.IpcGet()
	if err != nil {
		tb.Fatal(err)
	}
	var port int
	for line := range strings.Lines(uapi) {
		fmt.Sscanf(line, "listen_port=%d", &port)
	}
	if err := cdev.IpcSet(fmt.Sprintf("private_key=%s\npublic_key=%s\nendpoint=127.0.0.1:%d\nallowed_ip=0.0.0.0/0\n",
		ck.UAPIHex(), gk.Public().UAPIHex(), port)); err != nil {
		tb.Fatal(err)
	}
	if err := cdev.Up(); err != nil {
		tb.Fatal(err)
	}

	l, err := gnet.ListenTCPAddrPort(netip.AddrPortFrom(gatewayAddr, 80))
	if err != nil {
		tb.Fatal(err)
	}
	received := make(chan int64, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			received <- -1
			return
		}
		discard(c, received)
	}()
	c, err := cnet.DialContextTCPAddrPort(context.Background(), netip.AddrPortFrom(gatewayAddr, 80))
	if err != nil {
		tb.Fatal(err)
	}
	return tunnel{conn: c, received: received, close: func() {
		c.Close()
		l.Close()
		cdev.Close()
		gdev.Close()
	}}
}
