package controller

import (
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/key"
)

// TestResyncSeesPushesSinceTheLastSync: the store re-sync must compare the
// store with what the gateway was told since — the last sync and every
// push after it — not with the last sync alone. Otherwise a grant pushed
// after a sync and revoked while gossip was down (the store back to the
// synced set) is never re-synced away: the gateway keeps it until expiry.
func TestResyncSeesPushesSinceTheLastSync(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	k1, _ := key.NewWGPrivate()
	g := func(id string, k key.WGPrivate, end time.Duration) api.GatewayGrant {
		return api.GatewayGrant{ID: api.GrantID(id), ClientWGKey: k.Public(), NotAfter: now.Add(end)}
	}
	s := &gwStream{out: newOutbox[api.StreamEvent](), waiters: map[uint64]chan struct{}{}, nextSeq: 2}
	s.opened(api.StreamEvent{Type: api.EventSync, Seq: 1, Grants: []api.GatewayGrant{g("a", k1, time.Hour)}})
	synced := []api.GatewayGrant{g("a", k1, time.Hour)}
	if s.differs(synced, now) {
		t.Fatal("fresh sync differs from itself")
	}
	if _, err := s.enqueue(api.StreamEvent{Type: api.EventGrant, Grants: []api.GatewayGrant{g("b", k1, time.Hour)}}); err != nil {
		t.Fatal(err)
	}
	// The store lost b (revoked elsewhere); the gateway still has it.
	if !s.differs(synced, now) {
		t.Fatal("a grant pushed after the sync and gone from the store does not count as a difference")
	}
	if _, err := s.enqueue(api.StreamEvent{Type: api.EventRevoke, GrantIDs: []api.GrantID{"b"}}); err != nil {
		t.Fatal(err)
	}
	if s.differs(synced, now) {
		t.Fatal("after the revocation the gateway holds what the store does")
	}
	// A renewal (new NotAfter) or a re-key is a difference too.
	if !s.differs([]api.GatewayGrant{g("a", k1, 2*time.Hour)}, now) {
		t.Error("a renewed grant does not count as a difference")
	}
	k2, _ := key.NewWGPrivate()
	if !s.differs([]api.GatewayGrant{g("a", k2, time.Hour)}, now) {
		t.Error("a re-keyed grant does not count as a difference")
	}
	// Grants the gateway expires on its own clock are no difference.
	if s.differs(nil, now.Add(2*time.Hour)) {
		t.Error("an expired grant counts as a difference")
	}
}
