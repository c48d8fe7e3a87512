package gateway

import (
	"errors"
	"io"
	"net/netip"
	"sync"
	"time"

	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/key"
)

// Reasons a connection is refused; also the "reason" label of the
// refused-connections metric.
var (
	ErrNoGrant     = errors.New("no grant for this client")
	ErrExpired     = errors.New("grant expired")
	ErrDestination = errors.New("destination not covered by any grant of this client")
	ErrPort        = errors.New("port not covered by the grant")
)

// GrantTable is the gateway's view of live grants: what each client overlay
// address may reach, until when. It is consulted once per new connection
// (never per packet: the TUN mode's packet filter follows it through
// Observe instead) and enforces expiry on the gateway's own clock, so a
// gateway that loses its controller still closes access at NotAfter.
type GrantTable struct {
	now func() time.Time

	mu       sync.Mutex // guards grants, byClient, peers, observe
	grants   map[api.GrantID]*grantEntry
	byClient map[netip.Addr][]*grantEntry
	peers    map[key.WGPublic]*peerRef
	// observe, if set, is told every client whose grants changed, with
	// its grants now (removed: a grant went away), under mu: the TUN
	// mode's packet filter follows the table this way, so a revocation
	// holds from the next packet on.
	observe func(client netip.Addr, grants []api.GatewayGrant, removed bool)
}

// Observe makes fn see every change of a client's grants, under the
// table's lock (fn must not call the table). The current grants are
// replayed to it first.
func (t *GrantTable) Observe(fn func(client netip.Addr, grants []api.GatewayGrant, removed bool)) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.observe = fn
	for ip := range t.byClient {
		t.notifyLocked(ip, false)
	}
}

// notifyLocked tells the observer about client ip's grants.
func (t *GrantTable) notifyLocked(ip netip.Addr, removed bool) {
	if t.observe == nil {
		return
	}
	list := t.byClient[ip]
	gs := make([]api.GatewayGrant, len(list))
	for i, e := range list {
		gs[i] = e.g
	}
	t.observe(ip, gs, removed)
}

type grantEntry struct {
	g     api.GatewayGrant
	conns map[io.Closer]struct{}
}

// peerRef counts the grants that need a client's WireGuard peer.
type peerRef struct {
	ip   netip.Addr
	refs int
}

// PeerChange is a WireGuard peer to add (Add) or remove.
type PeerChange struct {
	Add      bool
	Key      key.WGPublic
	ClientIP netip.Addr
}

// Authorized is the answer to an allowed connection.
type Authorized struct {
	Grant api.GatewayGrant
	// Host is the name to dial (a domain app), or "" to dial the destination
	// address itself (an address app).
	Host string
}

// NewGrantTable returns an empty table on clock now.
func NewGrantTable(now func() time.Time) *GrantTable {
	return &GrantTable{
		now:      now,
		grants:   make(map[api.GrantID]*grantEntry),
		byClient: make(map[netip.Addr][]*grantEntry),
		peers:    make(map[key.WGPublic]*peerRef),
	}
}

// Upsert adds a grant or updates one (renewal: a new NotAfter). It returns
// the peer changes the caller must apply to WireGuard.
func (t *GrantTable) Upsert(g api.GatewayGrant) []PeerChange {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.upsertLocked(g)
}

func (t *GrantTable) upsertLocked(g api.GatewayGrant) []PeerChange {
	var changes []PeerChange
	if e, ok := t.grants[g.ID]; ok {
		if e.g.ClientIP == g.ClientIP {
			if len(g.ClientCandidates) == 0 {
				g.ClientCandidates = e.g.ClientCandidates // a renewal does not repeat them
			}
			if !e.g.ClientWGKey.Equal(g.ClientWGKey) {
				// The device rotated its WireGuard key: the grant moves to
				// the new peer and keeps its connections (the overlay
				// address, which they are bound to, stays).
				changes = t.rekeyLocked(e.g.ClientWGKey, g.ClientWGKey, g.ClientIP)
			}
			e.g = g
			t.notifyLocked(g.ClientIP, false)
			return changes
		}
		// A grant's client address never changes in practice; treat it as
		// a replacement so peers stay consistent if it ever does.
		changes = t.removeLocked(g.ID, nil)
	}
	e := &grantEntry{g: g, conns: make(map[io.Closer]struct{})}
	t.grants[g.ID] = e
	t.byClient[g.ClientIP] = append(t.byClient[g.ClientIP], e)
	p := t.peers[g.ClientWGKey]
	if p == nil {
		p = &peerRef{ip: g.ClientIP}
		t.peers[g.ClientWGKey] = p
		changes = append(changes, PeerChange{Add: true, Key: g.ClientWGKey, ClientIP: g.ClientIP})
	}
	p.refs++
	t.notifyLocked(g.ClientIP, false)
	return changes
}

// rekeyLocked moves one grant's reference from peer old to peer k (both
// for ip), adding k and removing old as their counts say.
func (t *GrantTable) rekeyLocked(old, k key.WGPublic, ip netip.Addr) []PeerChange {
	var changes []PeerChange
	p := t.peers[k]
	if p == nil {
		p = &peerRef{ip: ip}
		t.peers[k] = p
		changes = append(changes, PeerChange{Add: true, Key: k, ClientIP: ip})
	}
	p.refs++
	if op := t.peers[old]; op != nil {
		op.refs--
		if op.refs <= 0 {
			delete(t.peers, old)
			changes = append(changes, PeerChange{Key: old, ClientIP: op.ip})
		}
	}
	return changes
}

// Remove drops grants and closes their live connections. It returns the
// removed grants and the peer changes to apply.
func (t *GrantTable) Remove(ids ...api.GrantID) ([]api.GatewayGrant, []PeerChange) {
	t.mu.Lock()
	var removed []api.GatewayGrant
	var changes []PeerChange
	var toClose []io.Closer
	for _, id := range ids {
		if e, ok := t.grants[id]; ok {
			removed = append(removed, e.g)
			changes = append(changes, t.removeLocked(id, &toClose)...)
		}
	}
	t.mu.Unlock()
	closeAll(toClose)
	return removed, changes
}

// removeLocked unlinks grant id; its connections are appended to toClose
// (or closed by the caller of upsert when nil is passed — replacement keeps
// no connections).
func (t *GrantTable) removeLocked(id api.GrantID, toClose *[]io.Closer) []PeerChange {
	e := t.grants[id]
	delete(t.grants, id)
	list := t.byClient[e.g.ClientIP]
	for i, x := range list {
		if x == e {
			list = append(list[:i:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(t.byClient, e.g.ClientIP)
	} else {
		t.byClient[e.g.ClientIP] = list
	}
	for c := range e.conns {
		if toClose != nil {
			*toClose = append(*toClose, c)
		} else {
			go c.Close()
		}
	}
	e.conns = nil
	var changes []PeerChange
	if p := t.peers[e.g.ClientWGKey]; p != nil {
		p.refs--
		if p.refs <= 0 {
			delete(t.peers, e.g.ClientWGKey)
			changes = append(changes, PeerChange{Key: e.g.ClientWGKey, ClientIP: p.ip})
		}
	}
	t.notifyLocked(e.g.ClientIP, true)
	return changes
}

// Replace makes the table hold exactly gs (a sync from the controller):
// grants not in gs are removed and their connections closed.
func (t *GrantTable) Replace(gs []api.GatewayGrant) (removed []api.GatewayGrant, changes []PeerChange) {
	keep := make(map[api.GrantID]bool, len(gs))
	for _, g := range gs {
		keep[g.ID] = true
	}
	t.mu.Lock()
	var drop []api.GrantID
	for id := range t.grants {
		if !keep[id] {
			drop = append(drop, id)
		}
	}
	t.mu.Unlock()
	removed, changes = t.Remove(drop...)
	t.mu.Lock()
	for _, g := range gs {
		changes = append(changes, t.upsertLocked(g)...)
	}
	t.mu.Unlock()
	return removed, changes
}

// Expire removes every grant whose NotAfter has passed on the table's clock
// and closes their connections.
func (t *GrantTable) Expire() ([]api.GatewayGrant, []PeerChange) {
	now := t.now()
	t.mu.Lock()
	var ids []api.GrantID
	for id, e := range t.grants {
		if !now.Before(e.g.NotAfter) {
			ids = append(ids, id)
		}
	}
	t.mu.Unlock()
	return t.Remove(ids...)
}

// NextExpiry returns the earliest NotAfter, or the zero time when empty.
func (t *GrantTable) NextExpiry() time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	var next time.Time
	for _, e := range t.grants {
		if next.IsZero() || e.g.NotAfter.Before(next) {
			next = e.g.NotAfter
		}
	}
	return next
}

// Authorize decides a new connection from client src to dst over proto.
// The returned error is one of the Err* reasons.
func (t *GrantTable) Authorize(src netip.Addr, dst netip.AddrPort, proto string) (Authorized, error) {
	now := t.now()
	src, dstIP := src.Unmap(), dst.Addr().Unmap()
	t.mu.Lock()
	defer t.mu.Unlock()
	list := t.byClient[src]
	if len(list) == 0 {
		return Authorized{}, ErrNoGrant
	}
	reason := ErrDestination
	for _, e := range list {
		for _, tg := range e.g.Targets {
			if !tg.Prefix.Contains(dstIP) {
				continue
			}
			if !now.Before(e.g.NotAfter) {
				reason = ErrExpired
				continue
			}
			if !api.PortsContain(e.g.Ports, proto, dst.Port()) {
				if reason != ErrExpired {
					reason = ErrPort
				}
				continue
			}
			return Authorized{Grant: e.g, Host: tg.Host}, nil
		}
	}
	return Authorized{}, reason
}

// Reachable reports whether client src holds a live grant with a target
// covering dst, whatever the port: the gateway answers ping to such
// addresses.
func (t *GrantTable) Reachable(src, dst netip.Addr) bool {
	now := t.now()
	src, dst = src.Unmap(), dst.Unmap()
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, e := range t.byClient[src] {
		if !now.Before(e.g.NotAfter) {
			continue
		}
		for _, tg := range e.g.Targets {
			if tg.Prefix.Contains(dst) {
				return true
			}
		}
	}
	return false
}

// Track registers a live connection of grant id so revocation or expiry
// closes it. It fails (false) if the grant is gone, in which case the
// caller must close c itself. release unregisters c.
func (t *GrantTable) Track(id api.GrantID, c io.Closer) (release func(), ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.grants[id]
	if e == nil || !t.now().Before(e.g.NotAfter) {
		return nil, false
	}
	e.conns[c] = struct{}{}
	return func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		if e.conns != nil {
			delete(e.conns, c)
		}
	}, true
}

// Len returns the number of grants held.
func (t *GrantTable) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.grants)
}

// Peers returns the number of client peers the grants need.
func (t *GrantTable) Peers() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.peers)
}

// HasPeer reports whether any grant needs the client peer k.
func (t *GrantTable) HasPeer(k key.WGPublic) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.peers[k] != nil
}

// Lookup returns a grant that has not expired.
func (t *GrantTable) Lookup(id api.GrantID) (api.GatewayGrant, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.grants[id]
	if e == nil || !t.now().Before(e.g.NotAfter) {
		return api.GatewayGrant{}, false
	}
	return e.g, true
}

// Grants returns a snapshot of the grants held.
func (t *GrantTable) Grants() []api.GatewayGrant {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]api.GatewayGrant, 0, len(t.grants))
	for _, e := range t.grants {
		out = append(out, e.g)
	}
	return out
}

func closeAll(cs []io.Closer) {
	for _, c := range cs {
		_ = c.Close()
	}
}

// PeerAddr returns the overlay address of client peer k if a grant that
// has not expired needs it: the test a lazily added WireGuard peer must
// pass (fail closed: no live grant, no peer).
func (t *GrantTable) PeerAddr(k key.WGPublic) (netip.Addr, bool) {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	p := t.peers[k]
	if p == nil {
		return netip.Addr{}, false
	}
	for _, e := range t.byClient[p.ip] {
		if e.g.ClientWGKey.Equal(k) && now.Before(e.g.NotAfter) {
			return p.ip, true
		}
	}
	return netip.Addr{}, false
}

// OpenConns returns the number of live proxied connections under the
// grants of client peer k.
func (t *GrantTable) OpenConns(k key.WGPublic) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	p := t.peers[k]
	if p == nil {
		return 0
	}
	n := 0
	for _, e := range t.byClient[p.ip] {
		if e.g.ClientWGKey.Equal(k) {
			n += len(e.conns)
		}
	}
	return n
}
