package gateway

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/wg"
)

// udpIdle closes a UDP flow after this long without packets either way.
const udpIdle = 60 * time.Second

// copyBufBytes is the splice buffer; large enough for a TSO-sized segment.
const copyBufBytes = 64 << 10

var copyBufs = sync.Pool{New: func() any { b := make([]byte, copyBufBytes); return &b }}

// refuse logs and counts a refused connection.
func (g *Gateway) refuse(proto string, src, dst netip.AddrPort, err error) {
	reason := reasonLabel(err)
	g.metrics.refused.WithLabelValues(proto, reason).Inc()
	g.log.Info("connection refused", "proto", proto, "client", src.String(), "destination", dst.String(), "reason", err.Error())
}

func reasonLabel(err error) string {
	switch {
	case errors.Is(err, ErrNoGrant):
		return "no_grant"
	case errors.Is(err, ErrExpired):
		return "expired"
	case errors.Is(err, ErrPort):
		return "port"
	case errors.Is(err, ErrDestination):
		return "destination"
	}
	return "dial"
}

// target is where to dial for an authorised connection.
func target(a Authorized, dst netip.AddrPort) string {
	if a.Host != "" {
		return net.JoinHostPort(a.Host, strconv.Itoa(int(dst.Port())))
	}
	return dst.String()
}

func (g *Gateway) handleTCP(ctx context.Context, r *wg.TCPRequest) {
	a, err := g.table.Authorize(r.Src.Addr(), r.Dst, "tcp")
	if err != nil {
		r.Reject()
		g.refuse("tcp", r.Src, r.Dst, err)
		return
	}
	dest := target(a, r.Dst)
	dctx, cancel := context.WithTimeout(ctx, g.cfg.DialTimeout)
	up, err := g.cfg.Dialer.DialContext(dctx, "tcp", dest)
	cancel()
	if err != nil {
		// Refuse the client rather than accept and hang up: the client
		// sees "connection refused" at once.
		r.Reject()
		g.metrics.refused.WithLabelValues("tcp", "dial").Inc()
		g.log.Warn("app unreachable", "grant_id", a.Grant.ID, "app", a.Grant.App, "destination", dest, "err", err)
		return
	}
	down, err := r.Accept()
	if err != nil {
		up.Close()
		g.log.Debug("client went away during accept", "grant_id", a.Grant.ID, "err", err)
		return
	}
	g.splice(a.Grant, "tcp", r.Src, dest, down, up)
}

func (g *Gateway) handleUDP(ctx context.Context, r *wg.UDPRequest) {
	a, err := g.table.Authorize(r.Src.Addr(), r.Dst, "udp")
	if err != nil {
		r.Reject()
		g.refuse("udp", r.Src, r.Dst, err)
		return
	}
	dest := target(a, r.Dst)
	dctx, cancel := context.WithTimeout(ctx, g.cfg.DialTimeout)
	up, err := g.cfg.Dialer.DialContext(dctx, "udp", dest)
	cancel()
	if err != nil {
		r.Reject()
		g.metrics.refused.WithLabelValues("udp", "dial").Inc()
		g.log.Warn("app unreachable", "grant_id", a.Grant.ID, "app", a.Grant.App, "destination", dest, "err", err)
		return
	}
	down, err := r.Accept()
	if err != nil {
		up.Close()
		return
	}
	g.splice(a.Grant, "udp", r.Src, dest, idleConn{down}, idleConn{up})
}

// pair closes both sides of a spliced connection once.
type pair struct {
	once    sync.Once
	a, b    net.Conn
	revoked atomic.Bool // closed by the grant table (revoked or expired)
}

func (p *pair) Close() error {
	p.revoked.Store(true)
	p.close()
	return nil
}

func (p *pair) close() {
	p.once.Do(func() {
		p.a.Close()
		p.b.Close()
	})
}

// splice copies both ways until either side ends, the grant is revoked or
// expires (the table closes the pair), then records the flow.
func (g *Gateway) splice(gr api.GatewayGrant, proto string, src netip.AddrPort, dest string, down, up net.Conn) {
	p := &pair{a: down, b: up}
	release, ok := g.table.Track(gr.ID, p)
	if !ok {
		p.close()
		g.refuse(proto, src, netip.AddrPort{}, ErrExpired)
		return
	}
	defer release()
	g.metrics.conns.WithLabelValues(proto).Inc()
	g.metrics.active.Inc()
	defer g.metrics.active.Dec()
	start := time.Now()
	var upBytes, downBytes int64
	var wgr sync.WaitGroup
	wgr.Add(1)
	go func() {
		defer wgr.Done()
		downBytes = copyHalf(down, up)
		closeWrite(down)
		if proto == "udp" {
			p.close()
		}
	}()
	upBytes = copyHalf(up, down)
	closeWrite(up)
	if proto == "udp" {
		p.close()
	}
	wgr.Wait()
	p.close()
	g.metrics.bytes.WithLabelValues("up").Add(float64(upBytes))
	g.metrics.bytes.WithLabelValues("down").Add(float64(downBytes))
	rec := api.FlowRecord{
		GrantID: gr.ID, DeviceID: gr.DeviceID, ClientIP: src.Addr(), App: gr.App, Proto: proto,
		Destination: dest, BytesUp: uint64(upBytes), BytesDown: uint64(downBytes),
		Start: start.UTC(), End: time.Now().UTC(),
	}
	if p.revoked.Load() {
		rec.Error = "grant revoked or expired"
	}
	g.flows.add(rec)
}

// copyHalf copies src to dst and returns the bytes copied.
func copyHalf(dst io.Writer, src io.Reader) int64 {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	n, _ := io.CopyBuffer(dst, onlyReader{src}, *bp)
	return n
}

// onlyReader hides WriterTo/ReaderFrom so CopyBuffer uses our buffer.
type onlyReader struct{ io.Reader }

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		return
	}
	if ic, ok := c.(idleConn); ok {
		closeWrite(ic.Conn)
	}
}

// idleConn ends a UDP flow after udpIdle without traffic.
type idleConn struct{ net.Conn }

func (c idleConn) Read(b []byte) (int, error) {
	_ = c.Conn.SetReadDeadline(time.Now().Add(udpIdle))
	return c.Conn.Read(b)
}
