package client

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/nat"
)

const (
	// directGrace is how long path selection waits for a direct path once
	// the relay has answered: a direct path is worth a short wait, a
	// relayed first byte is not worth a long one.
	directGrace = 300 * time.Millisecond
	// selectTimeout bounds one path selection.
	selectTimeout = 2500 * time.Millisecond
	// upgradeEvery is how often a relayed peer tries to go direct.
	upgradeEvery = 5 * time.Second
	// liveEvery is how often the path in use is checked.
	liveEvery = 5 * time.Second
	// stunEvery is how often the client re-learns its reflexive address.
	stunEvery = 25 * time.Second
)

// ErrNoPath means no candidate of the gateway answered.
var ErrNoPath = errors.New("no path to the gateway answered (direct or relayed)")

// path is the way WireGuard reaches one gateway.
type path struct {
	cand      nat.Candidate
	chosen    time.Time
	lastCheck time.Time // last liveness or upgrade attempt
	// moved: our own addresses changed since the path was chosen, so it
	// is chosen afresh without waiting for a check to fail.
	moved bool
}

// pathName is api.PathDirect or api.PathRelayed.
func (p path) name() string {
	if p.cand.Kind == nat.Relayed {
		return api.PathRelayed
	}
	return api.PathDirect
}

// candidates returns the client's own candidates: the reflexive address
// and the host addresses with the WireGuard port.
func (c *Client) candidates() []nat.Candidate {
	c.mu.Lock()
	srflx := c.srflx
	c.mu.Unlock()
	var out []nat.Candidate
	if srflx.IsValid() {
		out = append(out, nat.Candidate{Kind: nat.ServerReflexive, Addr: srflx})
	}
	port := c.net.Port()
	hosts := c.cfg.HostAddrs
	if len(hosts) == 0 && c.stunServer().Addr().IsLoopback() {
		// Everything runs on this machine (a demo or a test): other
		// addresses would only leak traffic off loopback.
		hosts = []netip.Addr{c.stunServer().Addr()}
	}
	for _, a := range hosts {
		if len(out) < nat.MaxCandidates {
			out = append(out, nat.Candidate{Kind: nat.Host, Addr: netip.AddrPortFrom(a, port)})
		}
	}
	if len(hosts) > 0 {
		return out
	}
	c.mu.Lock()
	ifaddrs := c.ifaddrs
	c.mu.Unlock()
	for _, ip := range ifaddrs {
		if len(out) == nat.MaxCandidates {
			break
		}
		out = append(out, nat.Candidate{Kind: nat.Host, Addr: netip.AddrPortFrom(ip, port)})
	}
	return out
}

// apiCandidates converts candidates for the wire.
func apiCandidates(cs []nat.Candidate) []api.Candidate {
	out := make([]api.Candidate, 0, len(cs))
	for _, c := range cs {
		out = append(out, api.Candidate{Type: c.Kind.String(), Addr: c.Addr})
	}
	return out
}

// natCandidates converts candidates from the wire, dropping unknown types.
func natCandidates(cs []api.Candidate) []nat.Candidate {
	out := make([]nat.Candidate, 0, len(cs))
	for _, c := range cs {
		var k nat.CandidateKind
		switch c.Type {
		case api.CandidateHost:
			k = nat.Host
		case api.CandidateSrflx:
			k = nat.ServerReflexive
		case api.CandidateRelay:
			k = nat.Relayed
		default:
			continue
		}
		out = append(out, nat.Candidate{Kind: k, Addr: c.Addr})
	}
	return out
}

// hostAddrs are the interfaces' addresses, without our own overlay address
// (on the TUN device in TUN mode).
func (c *Client) hostAddrs() []netip.Addr {
	ov := c.sess.profile.OverlayIP
	return slices.DeleteFunc(nat.InterfaceAddrs(), func(a netip.Addr) bool { return a == ov })
}

// networkChanged reacts to new local addresses (the laptop moved to another
// network, or got a new address on this one): the controller connections
// and the event stream may be dead, our public address is new, and the
// gateways' NATs have never seen it. So: a fresh event stream, a fresh
// public address, and every path chosen afresh with an early renewal that
// tells each gateway where to punch.
func (c *Client) networkChanged(ctx context.Context, addrs []netip.Addr) {
	c.log.Info("local addresses changed; reconnecting", "addresses", addrs)
	c.sess.api.Reconnect()
	c.restartEvents()
	c.learnReflexive(ctx)
	c.mu.Lock()
	for _, p := range c.paths {
		p.moved, p.lastCheck = true, time.Time{}
	}
	c.mu.Unlock()
}

// learnReflexive asks the STUN server for our public address, and takes
// a fresh look at the interfaces' addresses (candidates() is called for
// every check answered, so it uses this copy).
func (c *Client) learnReflexive(ctx context.Context) {
	ifaddrs := c.hostAddrs()
	c.mu.Lock()
	c.ifaddrs = ifaddrs
	c.mu.Unlock()
	stun := c.stunServer()
	if !stun.IsValid() {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	addr, err := c.net.Bind().Reflexive(ctx, stun)
	if err != nil {
		c.log.Debug("reflexive address query failed", "stun", stun, "err", err)
		return
	}
	c.mu.Lock()
	old := c.srflx
	c.srflx = addr
	c.mu.Unlock()
	if old != addr {
		c.log.Debug("public address learned", "addr", addr, "stun", stun)
	}
}

func (c *Client) stunServer() netip.AddrPort {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stun.IsValid() {
		return c.stun
	}
	return c.sess.profile.STUN
}

// checkCreds returns a live grant's ID and check key for gateway gw.
func (c *Client) checkCreds(gw api.GatewayID) (api.GrantID, []byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	for id, lg := range c.grants {
		if lg.resp.Peer.GatewayID == gw && len(lg.resp.Peer.CheckKey) > 0 && now.Before(lg.resp.Grant.NotAfter) {
			return id, lg.resp.Peer.CheckKey, true
		}
	}
	return "", nil, false
}

// checkConfig answers the gateway's connectivity checks (its punches) with
// the key of the grant they name.
func (c *Client) checkConfig() *nat.CheckConfig {
	return &nat.CheckConfig{
		Key: func(user string) ([]byte, bool) {
			c.mu.Lock()
			defer c.mu.Unlock()
			lg := c.grants[api.GrantID(user)]
			if lg == nil || len(lg.resp.Peer.CheckKey) == 0 {
				return nil, false
			}
			return lg.resp.Peer.CheckKey, true
		},
		Local: c.candidates,
	}
}

// selectPath runs connectivity checks against every candidate of gw at
// once and returns the best that answered: the first direct one, or the
// relayed one if no direct one answers within directGrace of it. Candidates
// the gateway advertises in its answers are checked too.
func (c *Client) selectPath(ctx context.Context, gw api.GatewayID, cands []nat.Candidate, directOnly bool) (nat.Candidate, error) {
	id, key, ok := c.checkCreds(gw)
	if !ok {
		return nat.Candidate{}, fmt.Errorf("gateway %s: no live grant to check paths with", gw)
	}
	ctx, cancel := context.WithTimeout(ctx, selectTimeout)
	defer cancel()
	local := c.candidates()

	type answer struct {
		cand nat.Candidate
		res  nat.CheckResult
		err  error
	}
	answers := make(chan answer, 4*nat.MaxCandidates)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	seen := make(map[netip.AddrPort]bool)
	launch := func(cand nat.Candidate) bool {
		if seen[cand.Addr] || len(seen) >= 4*nat.MaxCandidates || !cand.Addr.IsValid() || cand.Addr.Port() == 0 {
			return false
		}
		seen[cand.Addr] = true
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := c.net.Bind().Check(ctx, cand.Addr, string(id), key, local)
			answers <- answer{cand, res, err}
		}()
		return true
	}
	for _, cand := range cands {
		// The relay is checked on upgrades too: its check is what makes
		// the gateway punch towards us again.
		launch(cand)
	}
	pending := len(seen)
	ch := chooser{directOnly: directOnly, grace: directGrace}
	var grace <-chan time.Time
	for pending > 0 {
		select {
		case a := <-answers:
			pending--
			if a.err != nil {
				continue
			}
			for _, rc := range a.res.Remote { // trickled candidates: check them too
				if rc.Kind != nat.Relayed && launch(rc) {
					pending++
				}
			}
			if cand, done := ch.answered(a.cand); done {
				return cand, nil
			}
			if grace == nil && ch.waiting() {
				grace = time.After(ch.grace)
			}
		case <-grace:
			if cand, ok := ch.best(); ok {
				return cand, nil
			}
		case <-ctx.Done():
			pending = 0
		}
	}
	if cand, ok := ch.best(); ok {
		return cand, nil
	}
	return nat.Candidate{}, fmt.Errorf("gateway %s: %w", gw, ErrNoPath)
}

// chooser is path selection's decision, apart from the I/O: direct beats
// relayed, the first direct answer decides at once, and a relayed answer
// wins only if no direct one follows within grace (or ever, when the
// checks run out). With directOnly (an upgrade attempt) relayed answers
// count for nothing.
type chooser struct {
	directOnly bool
	grace      time.Duration
	relayed    *nat.Candidate
}

// answered records a successful check and reports whether it decides.
func (ch *chooser) answered(c nat.Candidate) (nat.Candidate, bool) {
	if c.Kind != nat.Relayed {
		return c, true
	}
	if !ch.directOnly && ch.relayed == nil {
		ch.relayed = &c
	}
	return nat.Candidate{}, false
}

// waiting reports whether a relayed answer waits out the grace period.
func (ch *chooser) waiting() bool { return ch.relayed != nil }

// best is the choice once the grace period or the checks are over.
func (ch *chooser) best() (nat.Candidate, bool) {
	if ch.relayed != nil {
		return *ch.relayed, true
	}
	return nat.Candidate{}, false
}

// connectPeer picks the path to a gateway the client has no path to yet
// and points WireGuard at it.
func (c *Client) connectPeer(ctx context.Context, gw api.GatewayID) error {
	c.mu.Lock()
	_, has := c.paths[gw]
	p := c.peers[gw]
	c.mu.Unlock()
	if has {
		return nil
	}
	cands := natCandidates(p.Candidates)
	if len(cands) == 0 {
		// A controller or gateway without NAT traversal: the endpoints
		// are all there is.
		for _, ep := range p.Endpoints {
			cands = append(cands, nat.Candidate{Kind: nat.Host, Addr: ep})
		}
		if len(cands) == 0 {
			return fmt.Errorf("gateway %s has no address", gw)
		}
		c.setPath(gw, cands[0])
		return nil
	}
	start := time.Now()
	cand, err := c.selectPath(ctx, gw, cands, false)
	if err != nil {
		return err
	}
	c.log.Info("path chosen", "gateway_id", gw, "path", path{cand: cand}.name(), "endpoint", cand.Addr, "took", time.Since(start).Round(time.Millisecond))
	c.setPath(gw, cand)
	return nil
}

// setPath records the path to gw and reconfigures its WireGuard peer.
func (c *Client) setPath(gw api.GatewayID, cand nat.Candidate) {
	c.mu.Lock()
	c.paths[gw] = &path{cand: cand, chosen: c.now(), lastCheck: c.now()}
	_, live := c.peers[gw]
	var peerErr error
	if live {
		peerErr = c.net.UpsertPeer(c.peerLocked(gw))
	}
	c.mu.Unlock()
	if peerErr != nil {
		c.log.Warn("pointing the peer at its new path", "gateway_id", gw, "err", peerErr)
	}
	c.writeStatus() // keyhole status shows the new path at once
}

// maintainPaths checks the paths in use: a relayed one tries to go direct
// every upgradeEvery, and one that stops answering is chosen afresh (with
// the gateway's current candidates, from a renewal). It runs one gateway
// at a time; each step is bounded by selectTimeout.
func (c *Client) maintainPaths(ctx context.Context) {
	now := c.now()
	type job struct {
		gw  api.GatewayID
		cur path
	}
	var jobs []job
	c.mu.Lock()
	for gw, p := range c.paths {
		if _, ok := c.peers[gw]; !ok {
			delete(c.paths, gw)
			continue
		}
		every := liveEvery
		if p.cand.Kind == nat.Relayed {
			every = upgradeEvery
		}
		if now.Sub(p.lastCheck) >= every {
			p.lastCheck = now
			jobs = append(jobs, job{gw, *p})
		}
	}
	c.mu.Unlock()
	for _, j := range jobs {
		id, key, ok := c.checkCreds(j.gw)
		if !ok {
			continue
		}
		c.mu.Lock()
		peer := c.peers[j.gw]
		c.mu.Unlock()
		cands := natCandidates(peer.Candidates)
		if j.cur.cand.Kind == nat.Relayed {
			if cand, err := c.selectPath(ctx, j.gw, cands, true); err == nil {
				c.log.Info("path upgraded to direct", "gateway_id", j.gw, "endpoint", cand.Addr)
				c.setPath(j.gw, cand)
				continue
			}
		}
		if !j.cur.moved {
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			_, err := c.net.Bind().Check(cctx, j.cur.cand.Addr, string(id), key, c.candidates())
			cancel()
			if err == nil {
				continue
			}
			c.log.Warn("path stopped answering; choosing again", "gateway_id", j.gw, "path", j.cur.name(), "endpoint", j.cur.cand.Addr)
		}
		c.learnReflexive(ctx)
		// The gateway may have moved (NAT rebinding, new relay
		// allocation): a renewal brings its current candidates.
		c.refreshPeer(ctx, id)
		c.mu.Lock()
		peer = c.peers[j.gw]
		c.mu.Unlock()
		if cand, err := c.selectPath(ctx, j.gw, natCandidates(peer.Candidates), false); err == nil {
			c.log.Info("path chosen", "gateway_id", j.gw, "path", path{cand: cand}.name(), "endpoint", cand.Addr)
			c.setPath(j.gw, cand)
		}
	}
}

// refreshPeer renews grant id now, for the gateway's current candidates.
func (c *Client) refreshPeer(ctx context.Context, id api.GrantID) {
	var resp api.GrantResponse
	req := api.GrantRenewal{Candidates: apiCandidates(c.candidates()), Posture: c.posture(ctx)}
	if err := c.sess.api.Do(ctx, "POST", "/v1/grants/"+string(id)+"/renew", req, &resp); err != nil {
		c.log.Debug("renewal for fresh candidates failed", "grant_id", id, "err", err)
		return
	}
	if err := c.install(resp); err != nil {
		c.log.Warn("installing renewed grant", "grant_id", id, "err", err)
	}
}

// pathLoop keeps the reflexive address fresh and the paths in use working
// until ctx is done.
func (c *Client) pathLoop(ctx context.Context) {
	c.learnReflexive(ctx)
	lastSTUN := time.Now()
	addrs := c.hostAddrs()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		// Polling the addresses every second costs one getifaddrs and
		// works everywhere; a change is handled within the second.
		if now := c.hostAddrs(); !slices.Equal(now, addrs) {
			addrs = now
			c.networkChanged(ctx, now)
			lastSTUN = time.Now()
		}
		if time.Since(lastSTUN) >= stunEvery {
			c.learnReflexive(ctx)
			lastSTUN = time.Now()
		}
		c.maintainPaths(ctx)
	}
}
