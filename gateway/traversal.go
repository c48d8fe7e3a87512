package gateway

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/nat"
)

const (
	// pathInterval is how often the gateway re-learns its reflexive address
	// (noticing a NAT rebind), checks its relay allocation and refreshes
	// the relay permissions of its clients.
	pathInterval = 10 * time.Second
	// relayRenewBefore is how long before its credentials run out the
	// gateway moves to a fresh allocation.
	relayRenewBefore = time.Hour
	// punchEvery rate-limits the punching triggered by one grant's checks.
	punchEvery = 500 * time.Millisecond
	// maxPunches bounds concurrent punch rounds.
	maxPunches = 32
	// permitRefresh is how often every live grant's relay permission is
	// renewed (they last five minutes).
	permitRefresh = 2 * time.Minute
	// permitTimeout bounds one permission request to the relay.
	permitTimeout = 2 * time.Second
	// peerReportInterval is how often per-peer paths go to the controller.
	peerReportInterval = 5 * time.Second
)

// traversal is the gateway's NAT traversal state: where its STUN server and
// relay are, what it learned from them, and the candidates it advertises.
type traversal struct {
	wake  chan struct{} // cap 1: the hello brought news
	punch chan struct{} // semaphore for punch rounds

	mu         sync.Mutex // guards the fields below
	stun       netip.AddrPort
	relay      *api.Relay // credentials from the last hello
	srflx      netip.AddrPort
	relayed    netip.AddrPort
	relayExp   time.Time // expiry of the allocation's credentials
	advertised []api.Candidate
	lastPunch  map[api.GrantID]time.Time
	selfFails  int // consecutive failed self-checks of the allocation
	// permittedAt and permittedFor: when, and for which allocation, the
	// permissions of all live grants were last refreshed.
	permittedAt  time.Time
	permittedFor netip.AddrPort

	// selfUser and selfKey authenticate the gateway's checks of its own
	// relayed address (see relayAlive).
	selfUser string
	selfKey  []byte
}

func newTraversal() *traversal {
	var k [16]byte
	_, _ = rand.Read(k[:])
	return &traversal{
		selfUser:  "self-" + hex.EncodeToString(k[:4]),
		selfKey:   k[:],
		wake:      make(chan struct{}, 1),
		punch:     make(chan struct{}, maxPunches),
		lastPunch: make(map[api.GrantID]time.Time),
	}
}

// hello says hello to the controller with the current candidates and takes
// in what it answers.
func (g *Gateway) hello(ctx context.Context) error {
	var cands []api.Candidate
	if g.stunServer().IsValid() {
		// Before the first answer the gateway does not know which of its
		// addresses are worth advertising.
		cands = g.candidates()
	}
	req := api.GatewayHello{WGPublicKey: g.wgKey.Public(), Endpoints: g.endpoints(), Candidates: cands, Version: "keyhole/1"}
	var resp api.GatewayHelloResponse
	if err := g.api.Do(ctx, "POST", "/v1/gateway/hello", req, &resp); err != nil {
		return err
	}
	t := g.trav
	t.mu.Lock()
	news := t.stun != resp.STUN || (t.relay == nil) != (resp.Relay == nil) ||
		(resp.Relay != nil && t.relay != nil && t.relay.Addr != resp.Relay.Addr)
	t.stun, t.relay, t.advertised = resp.STUN, resp.Relay, cands
	t.mu.Unlock()
	if news {
		select {
		case t.wake <- struct{}{}:
		default:
		}
	}
	return nil
}

// stunServer is the STUN server the controller named in its last answer.
func (g *Gateway) stunServer() netip.AddrPort {
	g.trav.mu.Lock()
	defer g.trav.mu.Unlock()
	return g.trav.stun
}

// candidates returns the gateway's candidates for the controller.
func (g *Gateway) candidates() []api.Candidate {
	var out []api.Candidate
	for _, c := range g.natCandidates() {
		typ := api.CandidateHost
		switch c.Kind {
		case nat.ServerReflexive:
			typ = api.CandidateSrflx
		case nat.Relayed:
			typ = api.CandidateRelay
		}
		out = append(out, api.Candidate{Type: typ, Addr: c.Addr})
	}
	return out
}

// natCandidates returns host, server-reflexive and relayed candidates, at
// most nat.MaxCandidates: the relayed and reflexive ones first, as they
// are the ones a remote client can use.
func (g *Gateway) natCandidates() []nat.Candidate {
	t := g.trav
	t.mu.Lock()
	srflx, relayed := t.srflx, t.relayed
	t.mu.Unlock()
	var out []nat.Candidate
	if relayed.IsValid() {
		out = append(out, nat.Candidate{Kind: nat.Relayed, Addr: relayed})
	}
	if srflx.IsValid() {
		out = append(out, nat.Candidate{Kind: nat.ServerReflexive, Addr: srflx})
	}
	for _, ep := range g.endpoints() {
		if len(out) == nat.MaxCandidates {
			break
		}
		if ep != srflx && (!ep.Addr().IsLoopback() || len(g.cfg.HostAddrs) > 0 || g.stunServer().Addr().IsLoopback()) {
			out = append(out, nat.Candidate{Kind: nat.Host, Addr: ep})
		}
	}
	return out
}

// checkConfig is how the gateway answers connectivity checks: the key is
// the check key of a live grant (USERNAME is its ID), and every answered
// check makes the gateway punch back towards the client.
func (g *Gateway) checkConfig(ctx context.Context, bg *sync.WaitGroup) *nat.CheckConfig {
	return &nat.CheckConfig{
		Key: func(user string) ([]byte, bool) {
			if user == g.trav.selfUser {
				return g.trav.selfKey, true
			}
			gr, ok := g.table.Lookup(api.GrantID(user))
			if !ok || len(gr.CheckKey) == 0 {
				return nil, false
			}
			return gr.CheckKey, true
		},
		Local: g.natCandidates,
		OnCheck: func(user string, from netip.AddrPort, relayed bool, remote []nat.Candidate) {
			targets := make([]netip.AddrPort, 0, len(remote)+1)
			targets = append(targets, from)
			for _, c := range remote {
				if c.Kind != nat.Relayed {
					targets = append(targets, c.Addr)
				}
			}
			g.punch(ctx, bg, api.GrantID(user), targets, false)
		},
	}
}

// punch sends connectivity checks from the WireGuard socket to targets, so
// that the site's NAT and firewall let the client's checks (and then its
// WireGuard packets) in: outbound first is what opens a stateful firewall.
// Rounds are rate-limited per grant and bounded overall; with permit, the
// relay is also told to let the targets' addresses in.
func (g *Gateway) punch(ctx context.Context, bg *sync.WaitGroup, id api.GrantID, targets []netip.AddrPort, permit bool) {
	gr, ok := g.table.Lookup(id)
	if !ok || len(gr.CheckKey) == 0 || len(targets) == 0 {
		return
	}
	t := g.trav
	now := time.Now()
	t.mu.Lock()
	if now.Sub(t.lastPunch[id]) < punchEvery {
		t.mu.Unlock()
		return
	}
	t.lastPunch[id] = now
	if len(t.lastPunch) > 4096 {
		for k, at := range t.lastPunch {
			if now.Sub(at) > time.Minute {
				delete(t.lastPunch, k)
			}
		}
	}
	t.mu.Unlock()
	select {
	case t.punch <- struct{}{}:
	default:
		return // busy: the client's retransmitted checks trigger another round
	}
	targets = slices.Compact(targets)
	bg.Add(1)
	go func() {
		defer bg.Done()
		defer func() { <-t.punch }()
		if permit {
			gr, _ := g.table.Lookup(id)
			g.permit(ctx, publicCandidates(gr.ClientCandidates))
		}
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		local := g.natCandidates()
		var wg sync.WaitGroup
		for _, to := range targets {
			if !to.IsValid() || to.Port() == 0 {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := g.net.Bind().Check(ctx, to, string(id), gr.CheckKey, local); err == nil {
					g.log.Debug("punch answered", "grant_id", id, "to", to)
				}
			}()
		}
		wg.Wait()
	}()
}

// permit asks the relay to let the given client addresses in. Relays
// refuse a whole request over one address they deny (coturn denies
// private ranges, for one), so a refused batch is retried address by
// address.
func (g *Gateway) permit(ctx context.Context, addrs []netip.AddrPort) {
	bind := g.net.Bind()
	if _, ok := bind.Relayed(); !ok {
		return
	}
	var ips []netip.Addr
	for _, a := range addrs {
		if ip := a.Addr().Unmap(); ip.IsValid() && !slices.Contains(ips, ip) {
			ips = append(ips, ip)
		}
	}
	try := func(ips ...netip.Addr) error {
		pctx, cancel := context.WithTimeout(ctx, permitTimeout)
		defer cancel()
		return bind.Permit(pctx, ips...)
	}
	for len(ips) > 0 {
		n := min(len(ips), 32)
		err := try(ips[:n]...)
		if errors.Is(err, context.DeadlineExceeded) {
			g.log.Debug("relay did not answer a permission request", "err", err)
			return // an unresponsive relay: the self-check deals with it
		}
		if err != nil {
			for _, ip := range ips[:n] {
				if err := try(ip); err != nil {
					g.log.Debug("relay refused a permission", "peer", ip, "err", err)
				}
			}
		}
		ips = ips[n:]
	}
}

// publicCandidates are the candidates a relay can see packets from: a host
// candidate is a LAN address behind the client's NAT.
func publicCandidates(cs []api.Candidate) []netip.AddrPort {
	var out []netip.AddrPort
	for _, c := range cs {
		if c.Type == api.CandidateSrflx {
			out = append(out, c.Addr)
		}
	}
	return out
}

// onGrants punches towards (and permits on the relay) the candidates of
// grants just pushed.
func (g *Gateway) onGrants(ctx context.Context, bg *sync.WaitGroup, gs []api.GatewayGrant) {
	for _, gr := range gs {
		var targets []netip.AddrPort
		for _, c := range gr.ClientCandidates {
			if c.Type != api.CandidateRelay {
				targets = append(targets, c.Addr)
			}
		}
		g.punch(ctx, bg, gr.ID, targets, true)
	}
}

// pathLoop keeps the gateway reachable: it re-learns its reflexive address,
// holds a relay allocation, refreshes relay permissions and tells the
// controller when its candidates change.
func (g *Gateway) pathLoop(ctx context.Context) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-g.trav.wake:
		}
		g.refreshPaths(ctx)
		timer.Reset(pathInterval)
	}
}

func (g *Gateway) refreshPaths(ctx context.Context) {
	t := g.trav
	t.mu.Lock()
	stun, relay, oldSrflx, relayExp := t.stun, t.relay, t.srflx, t.relayExp
	t.mu.Unlock()
	bind := g.net.Bind()

	rebound := false
	if stun.IsValid() {
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		srflx, err := bind.Reflexive(qctx, stun)
		cancel()
		switch {
		case err != nil:
			g.log.Debug("reflexive address query failed", "stun", stun, "err", err)
		case srflx != oldSrflx:
			if oldSrflx.IsValid() {
				g.log.Info("public address changed (NAT rebinding); re-learning paths", "old", oldSrflx, "new", srflx)
				rebound = true
			}
			t.mu.Lock()
			t.srflx = srflx
			t.mu.Unlock()
		}
	}

	if relay != nil {
		cur, ok := bind.Relayed()
		stale := time.Until(relayExp) < relayRenewBefore
		if stale && time.Until(relay.ExpiresAt) < relayRenewBefore {
			// The credentials we hold are old too: ask for new ones.
			if err := g.hello(ctx); err == nil {
				t.mu.Lock()
				relay = t.relay
				t.mu.Unlock()
			}
		}
		dead := false
		if ok && !rebound && !stale && !g.relayAlive(ctx, cur) {
			t.mu.Lock()
			t.selfFails++
			dead = t.selfFails >= 1 // ten checks in a second went unanswered
			t.mu.Unlock()
			if dead {
				g.log.Warn("relay allocation stopped answering (relay restarted?); allocating again", "relay", relay.Addr, "relayed", cur)
			}
		}
		if relay != nil && (!ok || rebound || stale || dead) {
			actx, cancel := context.WithTimeout(ctx, 10*time.Second)
			addr, err := bind.Allocate(actx, nat.RelayConfig{
				Server: relay.Addr, Username: relay.Username, Password: relay.Password, Realm: relay.Realm,
				Logger: g.log.With("component", "turn"),
			})
			cancel()
			if err != nil {
				g.log.Warn("relay allocation failed; clients behind strict NATs cannot reach this gateway until it works", "relay", relay.Addr, "err", err)
				addr = netip.AddrPort{}
			} else if addr != cur {
				g.log.Info("relay allocation ready", "relay", relay.Addr, "relayed", addr)
			}
			t.mu.Lock()
			t.relayed, t.relayExp, t.selfFails = addr, relay.ExpiresAt, 0
			t.mu.Unlock()
		}
	}

	// Refresh the relay permissions of every live grant's client: they
	// last five minutes at the relay, and a new allocation has none.
	t.mu.Lock()
	relayedNow := t.relayed
	due := time.Since(t.permittedAt) >= permitRefresh || relayedNow != t.permittedFor
	t.mu.Unlock()
	if due && relayedNow.IsValid() {
		var addrs []netip.AddrPort
		for _, gr := range g.table.Grants() {
			addrs = append(addrs, publicCandidates(gr.ClientCandidates)...)
		}
		g.permit(ctx, addrs)
		t.mu.Lock()
		t.permittedAt, t.permittedFor = time.Now(), relayedNow
		t.mu.Unlock()
	}

	cands := g.candidates()
	t.mu.Lock()
	changed := !slices.Equal(cands, t.advertised)
	t.mu.Unlock()
	if changed && g.Connected() {
		if err := g.hello(ctx); err != nil {
			g.log.Warn("telling the controller our new addresses failed; retrying", "err", err)
			t.mu.Lock()
			t.advertised = nil
			t.mu.Unlock()
		} else {
			g.log.Info("candidates updated", "candidates", cands)
		}
	}
}

// relayAlive checks the allocation end to end: a connectivity check from
// the WireGuard socket to its own relayed address must come back through
// the relay. A relay that restarted has forgotten the allocation while the
// TURN client would notice only at its next refresh, minutes later.
func (g *Gateway) relayAlive(ctx context.Context, relayed netip.AddrPort) bool {
	t := g.trav
	t.mu.Lock()
	srflx := t.srflx
	t.mu.Unlock()
	if !srflx.IsValid() || relayed.Addr().IsLoopback() {
		return true // nothing to check from (a relay on loopback refuses its own host)
	}
	bind := g.net.Bind()
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if err := bind.Permit(cctx, srflx.Addr()); err != nil {
		return ctx.Err() != nil
	}
	_, err := bind.Check(cctx, relayed, t.selfUser, t.selfKey, nil)
	if err == nil {
		t.mu.Lock()
		t.selfFails = 0
		t.mu.Unlock()
	}
	return err == nil || ctx.Err() != nil
}

// peerReportLoop sends the per-peer paths to the controller.
func (g *Gateway) peerReportLoop(ctx context.Context) {
	tick := time.NewTicker(peerReportInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if !g.Connected() {
			continue
		}
		reports, err := g.PeerReports()
		if err != nil {
			continue
		}
		if err := g.api.Do(ctx, "POST", "/v1/gateway/peers", api.PeerReports{Peers: reports}, nil); err != nil {
			g.log.Debug("peer report failed", "err", err)
		}
	}
}

// PeerReports returns the gateway's WireGuard peers with their paths.
func (g *Gateway) PeerReports() ([]api.PeerReport, error) {
	peers, err := g.net.Peers()
	if err != nil {
		return nil, err
	}
	devices := make(map[string]api.DeviceID)
	for _, gr := range g.table.Grants() {
		devices[gr.ClientWGKey.String()] = gr.DeviceID
	}
	out := make([]api.PeerReport, 0, min(len(peers), 200))
	for _, p := range peers {
		if len(out) == 200 {
			break
		}
		r := api.PeerReport{
			PublicKey: p.PublicKey, DeviceID: devices[p.PublicKey.String()], Endpoint: p.Endpoint,
			LastHandshake: p.LastHandshake, RxBytes: p.RxBytes, TxBytes: p.TxBytes,
		}
		if p.Endpoint.IsValid() {
			r.Path = api.PathDirect
			if p.Relayed {
				r.Path = api.PathRelayed
			}
		}
		out = append(out, r)
	}
	return out, nil
}
