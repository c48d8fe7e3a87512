package gateway

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/keyhole-net/keyhole/internal/api"
)

// The TUN mode's glue, common to every platform (the kernel side is in
// kernel_linux.go).

// flowStartQueue bounds the new flows waiting to become flow records.
const flowStartQueue = 4096

// kernelResync is how often the TUN mode re-resolves app hosts and
// rewrites the DNAT map, besides after every grant change; kernelRetry how
// often it retries hosts that did not resolve.
const (
	kernelResync = 30 * time.Second
	kernelRetry  = time.Second
)

// grantResolveBudget bounds what resolving a new grant's app host may add
// to the grant's ack (and so to the client's first connection): a host
// that takes longer is resolved in the background, and the client's first
// packets may go unanswered until it is (TCP retransmits its SYN).
const grantResolveBudget = 100 * time.Millisecond

// startKernel creates the packet filter, hooks it to the grant table and
// brings the kernel data plane up.
func (g *Gateway) startKernel() (*kernelPlane, error) {
	g.filter = newPacketFilter(g.now, g.log.With("component", "packet_filter"), g.metrics.refused, flowStartQueue)
	k, err := newKernelPlane(kernelConfig{
		Name:        g.cfg.TUNName,
		PrivateKey:  g.wgKey,
		Address:     g.st.OverlayIP,
		MTU:         g.cfg.MTU,
		ListenPort:  g.st.ListenPort,
		ClientRange: g.cfg.TUNClientRange,
		Filter:      g.filter,
		Resolve:     g.resolveHost,
		Logger:      g.log,
	})
	if err != nil {
		return nil, err
	}
	g.table.Observe(func(client netip.Addr, gs []api.GatewayGrant, removed bool) {
		g.filter.setClient(client, gs)
		if removed {
			k.noteRemoved(client)
		}
	})
	return k, nil
}

// resolveHost finds an app host's site address: Config.Hosts first, then
// the system resolver (IPv4: the TUN mode NATs IPv4 only).
func (g *Gateway) resolveHost(ctx context.Context, host string) (netip.Addr, error) {
	if a, ok := g.cfg.Hosts[strings.ToLower(host)]; ok {
		if !a.Is4() {
			return netip.Addr{}, fmt.Errorf("host %s maps to %s: the TUN mode needs IPv4", host, a)
		}
		return a, nil
	}
	if a, err := netip.ParseAddr(host); err == nil {
		return a.Unmap(), nil
	}
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip4", host)
	if err != nil {
		return netip.Addr{}, err
	}
	if len(addrs) == 0 {
		return netip.Addr{}, fmt.Errorf("host %s has no IPv4 address", host)
	}
	return addrs[0].Unmap(), nil
}

// syncKernel brings the kernel in line with the grant table after a
// change: DNAT map, conntrack entries of revoked flows. A no-op in the
// userspace mode. Without refresh (a grant change) host resolution gets
// grantResolveBudget.
func (g *Gateway) syncKernel(ctx context.Context, refresh bool) {
	if g.kernel == nil {
		return
	}
	if !refresh {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, grantResolveBudget)
		defer cancel()
	}
	if err := g.kernel.sync(ctx, g.table.Grants(), g.filter.allows, refresh); err != nil {
		g.log.Warn("tun mode: kernel not fully in line with the grants", "err", err)
	}
}

// kernelLoop retries app hosts that did not resolve every kernelRetry and
// re-resolves every host every kernelResync.
func (g *Gateway) kernelLoop(ctx context.Context) {
	t := time.NewTicker(kernelRetry)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if time.Since(last) >= kernelResync || g.kernel.unresolved() {
			last = time.Now()
			g.syncKernel(ctx, true)
		}
	}
}

// flowStartLoop turns the new flows the packet filter saw into flow
// records. In the TUN mode the kernel carries the bytes, so a record marks
// a flow's start, without byte counts or end.
func (g *Gateway) flowStartLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case fs := <-g.filter.flows:
			g.recordFlowStart(fs)
		}
	}
}

func (g *Gateway) recordFlowStart(fs flowStart) {
	proto := protoName(fs.proto)
	src := addr4(fs.src)
	dst := netip.AddrPortFrom(addr4(fs.dst), fs.dport)
	a, err := g.table.Authorize(src, dst, proto)
	if err != nil {
		return // revoked since
	}
	at := time.Unix(0, fs.at).UTC()
	g.metrics.conns.WithLabelValues(proto).Inc()
	g.flows.add(api.FlowRecord{
		GrantID: a.Grant.ID, DeviceID: a.Grant.DeviceID, ClientIP: src, App: a.Grant.App, Proto: proto,
		Destination: target(a, dst), Start: at, End: at,
	})
}
