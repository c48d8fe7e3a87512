package onebox

import (
	"fmt"
	"net/netip"
	"runtime"
	"syscall"
	"time"

	"github.com/keyhole-net/keyhole/gateway"
	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/key"
	"github.com/keyhole-net/keyhole/internal/nat"
	"github.com/keyhole-net/keyhole/internal/wg"
)

// PeerFigures are a gateway's costs per client peer, idle and active.
type PeerFigures struct {
	// Peers is the number of clients holding a grant; Active of them
	// have a WireGuard peer configured (they handshook recently).
	Peers, Active int
	// BytesPerPeer is the Go heap the gateway holds per idle client: its
	// grant table entry. With lazy peers (the default) an idle client has
	// no wireguard-go peer.
	BytesPerPeer float64
	// BytesPerActivePeer is the heap an active client adds on top: the
	// wireguard-go peer (its queues are most of it), its allowed IP and
	// the lazy-peer bookkeeping.
	BytesPerActivePeer float64
	// IdleCPU is the process's CPU time per second of wall time with the
	// grants and active peers configured and no traffic (1.0 = one core).
	IdleCPU float64
	// ChurnCPU is the same while grants come and go at ChurnRate a
	// second (each a new grant for a client and the removal of an old
	// one, applied as the gateway applies pushed grants and revocations).
	ChurnCPU, ChurnRate float64
	// GrantRate is grants added to the table per second; AddRate is
	// WireGuard peers configured per second (what a client's first
	// handshake waits for).
	GrantRate, AddRate float64
}

// PeerMemory builds what a gateway holds for n clients with a grant, of
// which active have handshaken recently: n grants in its grant table
// (added the way the gateway applies pushed grants; with lazy peers that
// configures no WireGuard peer), then active WireGuard peers on its
// netstack device (added the way the gateway adds a peer on a client's
// first handshake). It measures the heap per idle client, the heap per
// active peer, and the CPU the whole costs over idle.
func PeerMemory(n, active int, idle time.Duration) (PeerFigures, error) {
	return PeerMemoryChurn(n, active, idle, 0)
}

// PeerMemoryChurn is PeerMemory, then churnFor of 1,000 grants a second
// (new grants for the clients, the same number of old ones removed) to
// measure the CPU that costs (PeerFigures.ChurnCPU).
func PeerMemoryChurn(n, active int, idle, churnFor time.Duration) (PeerFigures, error) {
	if active > n || active < 0 {
		return PeerFigures{}, fmt.Errorf("peer memory: %d active peers of %d", active, n)
	}
	priv, err := key.NewWGPrivate()
	if err != nil {
		return PeerFigures{}, err
	}
	gwIP := netip.MustParseAddr("100.112.0.1")
	net, err := wg.New(wg.Config{PrivateKey: priv, Addresses: []netip.Addr{gwIP}, Forward: true})
	if err != nil {
		return PeerFigures{}, err
	}
	defer net.Close()
	// The gateway's initiation hook and decoder: a fixed cost.
	dec := wg.NewInitiationDecoder(priv)
	net.Bind().SetInitiationHook(func(in *nat.Initiation) nat.Verdict {
		if dec.CheckMAC1(in.Packet) != nil {
			return nat.Drop
		}
		return nat.Pass
	})
	table := gateway.NewGrantTable(time.Now)
	keys := make([]key.WGPublic, n)
	for i := range keys {
		k, err := key.NewWGPrivate()
		if err != nil {
			return PeerFigures{}, err
		}
		keys[i] = k.Public()
	}
	before := liveHeap()
	start := time.Now()
	base := netip.MustParseAddr("100.64.0.0").As4()
	for i, k := range keys {
		ip := base
		ip[1] += byte(i >> 16)
		ip[2], ip[3] = byte(i>>8), byte(i)
		client := netip.AddrFrom4(ip)
		table.Upsert(api.GatewayGrant{
			ID: api.GrantID(fmt.Sprintf("grt_%d", i)), ClientIP: client, ClientWGKey: k, App: "wiki",
			Targets:  []api.GrantTarget{{Prefix: netip.MustParsePrefix("100.96.0.1/32"), Host: "wiki.corp.internal"}},
			Ports:    []api.PortRange{{Proto: "tcp", First: 443, Last: 443}},
			NotAfter: time.Now().Add(time.Hour),
		})
	}
	grantRate := float64(n) / time.Since(start).Seconds()
	afterGrants := liveHeap()

	// Active clients: the lazy-peer path (gateway/lazypeers.go add): look
	// the key up, configure the peer, keep a small record of it.
	type activePeer struct {
		lastActive, lastHandshake time.Time
		rx                        uint64
	}
	activeSet := make(map[key.WGPublic]*activePeer)
	start = time.Now()
	for i, k := range keys[:active] {
		ip, ok := table.PeerAddr(k)
		if !ok {
			return PeerFigures{}, fmt.Errorf("peer %d: no live grant", i)
		}
		if err := net.UpsertPeer(wg.Peer{PublicKey: k, AllowedIPs: []netip.Prefix{netip.PrefixFrom(ip, 32)}}); err != nil {
			return PeerFigures{}, fmt.Errorf("peer %d: %w", i, err)
		}
		now := time.Now()
		activeSet[k] = &activePeer{lastActive: now, lastHandshake: now, rx: 0}
	}
	var addRate float64
	if active > 0 {
		addRate = float64(active) / time.Since(start).Seconds()
	}
	afterPeers := liveHeap()
	cpu0, wall0 := processCPU(), time.Now()
	time.Sleep(idle)
	idleCPU := (processCPU() - cpu0).Seconds() / time.Since(wall0).Seconds()
	var churnCPU, churnRate float64
	if churnFor > 0 && n > 0 {
		const perTick, tick = 10, 10 * time.Millisecond // 1,000 a second
		cpu0, wall0 := processCPU(), time.Now()
		t := time.NewTicker(tick)
		done := 0
		for next := 0; time.Since(wall0) < churnFor; next++ {
			<-t.C
			for j := range perTick {
				i := (next*perTick + j) % n
				k := keys[i]
				ip, _ := table.PeerAddr(k)
				table.Upsert(api.GatewayGrant{
					ID: api.GrantID(fmt.Sprintf("grt_churn_%d_%d", next, j)), ClientIP: ip, ClientWGKey: k, App: "wiki",
					Targets:  []api.GrantTarget{{Prefix: netip.MustParsePrefix("100.96.0.1/32"), Host: "wiki.corp.internal"}},
					Ports:    []api.PortRange{{Proto: "tcp", First: 443, Last: 443}},
					NotAfter: time.Now().Add(time.Hour),
				})
				if next > 0 {
					table.Remove(api.GrantID(fmt.Sprintf("grt_churn_%d_%d", next-1, j)))
				}
				done++
			}
		}
		t.Stop()
		wall := time.Since(wall0).Seconds()
		churnCPU, churnRate = (processCPU()-cpu0).Seconds()/wall, float64(done)/wall
	}
	runtime.KeepAlive(table)
	runtime.KeepAlive(activeSet)
	f := PeerFigures{
		Peers: n, Active: active,
		BytesPerPeer: float64(int64(afterGrants)-int64(before)) / float64(max(n, 1)),
		IdleCPU:      idleCPU, GrantRate: grantRate, AddRate: addRate,
		ChurnCPU: churnCPU, ChurnRate: churnRate,
	}
	if active > 0 {
		f.BytesPerActivePeer = float64(int64(afterPeers)-int64(afterGrants)) / float64(active)
	}
	return f, nil
}

// liveHeap is the heap still reachable after two collections. HeapAlloc
// counts objects, where HeapInuse counts whole spans and moves by a span
// when unrelated garbage frees one.
func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// processCPU is the process's user+system CPU time so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
