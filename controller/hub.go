package controller

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"sync"
	"time"

	"github.com/keyhole-net/keyhole/controller/store"
	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/key"
)

// errNotConnected means the gateway holds no control stream right now.
var errNotConnected = errors.New("gateway not connected")

// errStreamClosed means the stream ended before the gateway acknowledged.
var errStreamClosed = errors.New("gateway stream closed before it acknowledged")

// streamHub holds the one live control stream of each connected gateway and
// delivers pushes to it, waiting for the gateway's cumulative ack.
type streamHub struct {
	log     *slog.Logger
	metrics *metrics
	// remote, when set, returns the gateways of a group whose streams other
	// controllers of the cluster hold (Controller.remoteGateways).
	remote func(group string) []store.Gateway

	mu      sync.Mutex // guards streams, live
	streams map[api.GatewayID]*gwStream
	// live is what each gateway last reported: candidates (hello, which
	// comes before its stream) and per-peer paths (peer reports).
	live map[api.GatewayID]gwLive
	// load counts each connected gateway's live grants (grantLoad).
	load *grantLoad
}

// gwStream is one gateway's control stream. The handler goroutine serving
// GET /v1/gateway/stream owns it and is the only writer to the wire.
type gwStream struct {
	id   string // names this stream in acks
	info store.Gateway
	out  *outbox[api.StreamEvent]

	// mu guards the fields below; enqueue holds it around out.put, so
	// sequence numbers follow the queue's order.
	mu      sync.Mutex
	nextSeq uint64
	acked   uint64
	waiters map[uint64]chan struct{}
	// held is what the events queued so far leave the gateway holding:
	// the last sync, then every push after it. The store re-sync compares
	// the store's live grants with it.
	held map[api.GrantID]heldGrant
	// suspect is when each grant the store and held disagreed on was
	// first seen to (see diff).
	suspect map[api.GrantID]time.Time
}

// heldGrant is what a gateway was last told of one grant.
type heldGrant struct {
	notAfter time.Time
	key      key.WGPublic
}

// trackLocked applies ev to s.held; s.mu is held.
func (s *gwStream) trackLocked(ev api.StreamEvent) {
	switch ev.Type {
	case api.EventSync:
		s.held = make(map[api.GrantID]heldGrant, len(ev.Grants))
		fallthrough
	case api.EventGrant:
		if s.held == nil {
			s.held = make(map[api.GrantID]heldGrant)
		}
		for _, g := range ev.Grants {
			s.held[g.ID] = heldGrant{notAfter: g.NotAfter, key: g.ClientWGKey}
		}
	case api.EventRevoke:
		for _, id := range ev.GrantIDs {
			delete(s.held, id)
		}
	}
}

// opened records the sync the stream opens with (sequence 1, written by
// the handler, not queued).
func (s *gwStream) opened(sync api.StreamEvent) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.trackLocked(sync)
}

// diff compares live (the store's live grants for the gateway) with what
// the gateway was told, leaving out grants the gateway expires on its own
// clock by now. It reports whether they differ, and whether some grant
// they differ in already did grace ago or more (a grant in flight — in
// the store, its push not yet queued — differs only for a moment).
func (s *gwStream) diff(live []store.Grant, now time.Time, grace time.Duration) (differs, confirmed bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var bad []api.GrantID
	inLive := make(map[api.GrantID]struct{}, len(live))
	for _, g := range live {
		inLive[g.ID] = struct{}{}
		h, ok := s.held[g.ID]
		if !ok || !h.notAfter.Equal(g.NotAfter) || !h.key.Equal(g.ClientWGKey) {
			bad = append(bad, g.ID)
		}
	}
	for id, h := range s.held {
		if _, ok := inLive[id]; !ok && h.notAfter.After(now) {
			bad = append(bad, id)
		}
	}
	if len(bad) == 0 {
		s.suspect = nil
		return false, false
	}
	seen := make(map[api.GrantID]time.Time, len(bad))
	for _, id := range bad {
		first, ok := s.suspect[id]
		if !ok {
			first = now
		}
		seen[id] = first
		if !now.Before(first.Add(grace)) {
			confirmed = true
		}
	}
	s.suspect = seen
	return true, confirmed
}

// gwLive is a connected gateway's self-reported, in-memory state.
type gwLive struct {
	candidates []api.Candidate
	peers      []api.PeerReport
}

func newStreamHub(log *slog.Logger, m *metrics) *streamHub {
	return &streamHub{log: log, metrics: m, streams: make(map[api.GatewayID]*gwStream), live: make(map[api.GatewayID]gwLive), load: newGrantLoad()}
}

// open registers a new stream for gw, closing any older one. Sequence 1 is
// reserved for the sync event the handler sends first; pushes get 2 and up,
// so anything pushed while the snapshot is read is applied after it.
func (h *streamHub) open(gw store.Gateway) *gwStream {
	var b [8]byte
	_, _ = rand.Read(b[:])
	s := &gwStream{
		id:      hex.EncodeToString(b[:]),
		info:    gw,
		out:     newOutbox[api.StreamEvent](),
		nextSeq: 2,
		waiters: make(map[uint64]chan struct{}),
	}
	h.mu.Lock()
	old := h.streams[gw.ID]
	h.streams[gw.ID] = s
	h.mu.Unlock()
	if old != nil {
		h.log.Info("gateway reconnected; closing its older stream", "gateway_id", gw.ID)
		old.close()
	}
	h.metrics.streams.Inc()
	return s
}

// remove unregisters s if it is still gw's current stream, and closes it.
func (h *streamHub) remove(s *gwStream) {
	h.mu.Lock()
	if h.streams[s.info.ID] == s {
		delete(h.streams, s.info.ID)
	}
	h.mu.Unlock()
	if s.close() {
		h.metrics.streams.Dec()
	}
}

func (h *streamHub) closeAll() {
	h.mu.Lock()
	all := make([]*gwStream, 0, len(h.streams))
	for _, s := range h.streams {
		all = append(all, s)
	}
	h.mu.Unlock()
	for _, s := range all {
		h.remove(s)
	}
}

func (h *streamHub) get(gw api.GatewayID) *gwStream {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.streams[gw]
}

// info returns what the hub knows of a connected gateway.
func (h *streamHub) info(gw api.GatewayID) (store.Gateway, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if s := h.streams[gw]; s != nil {
		return s.info, true
	}
	return store.Gateway{}, false
}

// liveInfo returns a connected gateway's reported candidates and peers.
func (h *streamHub) liveInfo(gw api.GatewayID) gwLive {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.live[gw]
}

// setCandidates records a connected gateway's candidates (after a hello).
func (h *streamHub) setCandidates(gw api.GatewayID, cs []api.Candidate) {
	h.mu.Lock()
	defer h.mu.Unlock()
	l := h.live[gw]
	l.candidates = cs
	h.live[gw] = l
}

// setPeers records a connected gateway's peer report.
func (h *streamHub) setPeers(gw api.GatewayID, ps []api.PeerReport) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.streams[gw] == nil {
		return false
	}
	l := h.live[gw]
	l.peers = ps
	h.live[gw] = l
	return true
}

// connected reports whether gw holds a stream.
func (h *streamHub) connected(gw api.GatewayID) bool { return h.get(gw) != nil }

// pick returns the connected, not draining gateway of group with the
// fewest live grants, ties broken at random (see chooseGateway).
func (h *streamHub) pick(group string) (store.Gateway, bool) {
	c, ok := chooseGateway(h.candidates(group, time.Now()), "", mrand.IntN)
	return c.gw, ok
}

// candidates lists the gateways of group that could take a grant: those
// whose stream this controller holds, with their live grant count from
// the hub's own view, and those other controllers of the cluster hold
// (h.remote), whose load this controller does not know.
func (h *streamHub) candidates(group string, now time.Time) []candidate {
	var remote []store.Gateway
	if h.remote != nil {
		remote = h.remote(group)
	}
	h.mu.Lock()
	cands := make([]candidate, 0, len(h.streams)+len(remote))
	for _, s := range h.streams {
		if s.info.Group == group {
			cands = append(cands, candidate{gw: s.info, draining: s.info.Draining, local: true})
		}
	}
	for _, g := range remote {
		if h.streams[g.ID] == nil {
			cands = append(cands, candidate{gw: g, draining: g.Draining, load: loadUnknown})
		}
	}
	h.mu.Unlock()
	for i := range cands {
		if cands[i].local {
			cands[i].load = h.load.count(cands[i].gw.ID, now)
		}
	}
	return cands
}

// setDraining records an admin's drain (or undrain) of a connected gateway.
func (h *streamHub) setDraining(gw api.GatewayID, draining bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if s := h.streams[gw]; s != nil {
		s.info.Draining = draining
	}
}

// updateInfo refreshes what the hub knows of a connected gateway (after a hello).
func (h *streamHub) updateInfo(gw store.Gateway) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if s := h.streams[gw.ID]; s != nil {
		s.info = gw
	}
}

// push queues ev for gw and waits until the gateway acknowledges it, ctx
// ends, or the stream closes.
func (h *streamHub) push(ctx context.Context, gw api.GatewayID, ev api.StreamEvent) error {
	s := h.get(gw)
	if s == nil {
		return fmt.Errorf("push to %s: %w", gw, errNotConnected)
	}
	wait, err := s.enqueue(ev)
	if err != nil {
		return fmt.Errorf("push to %s: %w", gw, err)
	}
	h.load.note(gw, ev)
	select {
	case <-wait:
		return nil
	case <-s.out.done:
		// The ack may have raced with the close.
		select {
		case <-wait:
			return nil
		default:
		}
		return fmt.Errorf("push to %s: %w", gw, errStreamClosed)
	case <-ctx.Done():
		return fmt.Errorf("push to %s: waiting for ack: %w", gw, ctx.Err())
	}
}

// ack releases every waiter up to seq on stream id of gw. Acks for an older
// stream are ignored: its events were superseded by the new stream's sync.
func (h *streamHub) ack(gw api.GatewayID, id string, seq uint64) bool {
	s := h.get(gw)
	if s == nil || s.id != id {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if seq >= s.nextSeq {
		// Acking what was never sent is a broken or lying gateway.
		return false
	}
	if seq > s.acked {
		s.acked = seq
	}
	for q, ch := range s.waiters {
		if q <= seq {
			close(ch)
			delete(s.waiters, q)
		}
	}
	return true
}

func (s *gwStream) enqueue(ev api.StreamEvent) (<-chan struct{}, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ev.Seq = s.nextSeq
	if !s.out.put(0, ev) {
		return nil, errStreamClosed
	}
	s.nextSeq++
	s.trackLocked(ev)
	ch := make(chan struct{})
	s.waiters[ev.Seq] = ch
	return ch, nil
}

// close ends the stream once; it reports whether this call closed it.
func (s *gwStream) close() bool { return s.out.close() }
