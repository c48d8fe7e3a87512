package controller

import (
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/controller/store"
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
	differs := func(gs []api.GatewayGrant, now time.Time) bool {
		d, _ := s.diff(storeGrants(gs), now, 0)
		return d
	}
	s.opened(api.StreamEvent{Type: api.EventSync, Seq: 1, Grants: []api.GatewayGrant{g("a", k1, time.Hour)}})
	synced := []api.GatewayGrant{g("a", k1, time.Hour)}
	if differs(synced, now) {
		t.Fatal("fresh sync differs from itself")
	}
	if _, err := s.enqueue(api.StreamEvent{Type: api.EventGrant, Grants: []api.GatewayGrant{g("b", k1, time.Hour)}}); err != nil {
		t.Fatal(err)
	}
	// The store lost b (revoked elsewhere); the gateway still has it.
	if !differs(synced, now) {
		t.Fatal("a grant pushed after the sync and gone from the store does not count as a difference")
	}
	if _, err := s.enqueue(api.StreamEvent{Type: api.EventRevoke, GrantIDs: []api.GrantID{"b"}}); err != nil {
		t.Fatal(err)
	}
	if differs(synced, now) {
		t.Fatal("after the revocation the gateway holds what the store does")
	}
	// A renewal (new NotAfter) or a re-key is a difference too.
	if !differs([]api.GatewayGrant{g("a", k1, 2*time.Hour)}, now) {
		t.Error("a renewed grant does not count as a difference")
	}
	k2, _ := key.NewWGPrivate()
	if !differs([]api.GatewayGrant{g("a", k2, time.Hour)}, now) {
		t.Error("a re-keyed grant does not count as a difference")
	}
	// Grants the gateway expires on its own clock are no difference.
	if differs(nil, now.Add(2*time.Hour)) {
		t.Error("an expired grant counts as a difference")
	}
}

func storeGrants(gs []api.GatewayGrant) []store.Grant {
	out := make([]store.Grant, 0, len(gs))
	for _, g := range gs {
		out = append(out, store.Grant{Grant: api.Grant{ID: g.ID, NotAfter: g.NotAfter}, ClientWGKey: g.ClientWGKey})
	}
	return out
}

// TestResyncWaitsOutGrantsInFlight: a grant in the store whose push is
// not queued yet (in flight) differs only for a moment; the re-sync sends
// a full sync for it only when it still differs grace later, and a grant
// that was never pushed (the push lost) is re-synced then.
func TestResyncWaitsOutGrantsInFlight(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	k, _ := key.NewWGPrivate()
	g := func(id string) api.GatewayGrant {
		return api.GatewayGrant{ID: api.GrantID(id), ClientWGKey: k.Public(), NotAfter: now.Add(time.Hour)}
	}
	s := &gwStream{out: newOutbox[api.StreamEvent](), waiters: map[uint64]chan struct{}{}, nextSeq: 2}
	s.opened(api.StreamEvent{Type: api.EventSync, Seq: 1, Grants: []api.GatewayGrant{g("a")}})
	const grace = 500 * time.Millisecond

	// b committed, its push not yet queued: a difference, not confirmed.
	if d, ok := s.diff(storeGrants([]api.GatewayGrant{g("a"), g("b")}), now, grace); !d || ok {
		t.Fatalf("in-flight grant: differs %v, confirmed %v; want true, false", d, ok)
	}
	// The push lands: nothing differs, and b is forgotten.
	if _, err := s.enqueue(api.StreamEvent{Type: api.EventGrant, Grants: []api.GatewayGrant{g("b")}}); err != nil {
		t.Fatal(err)
	}
	if d, _ := s.diff(storeGrants([]api.GatewayGrant{g("a"), g("b")}), now.Add(grace), grace); d {
		t.Fatal("pushed grant still differs")
	}
	// c's push is lost: new at first, confirmed grace later.
	live := storeGrants([]api.GatewayGrant{g("a"), g("b"), g("c")})
	if d, ok := s.diff(live, now.Add(2*grace), grace); !d || ok {
		t.Fatalf("lost push, first look: differs %v, confirmed %v; want true, false", d, ok)
	}
	if d, ok := s.diff(live, now.Add(3*grace-time.Millisecond), grace); !d || ok {
		t.Fatalf("lost push, before grace: differs %v, confirmed %v; want true, false", d, ok)
	}
	if d, ok := s.diff(live, now.Add(3*grace), grace); !d || !ok {
		t.Fatalf("lost push, after grace: differs %v, confirmed %v; want true, true", d, ok)
	}
	// A revocation whose push is lost (the gateway still holds b) too.
	live = storeGrants([]api.GatewayGrant{g("a"), g("c")})
	if _, err := s.enqueue(api.StreamEvent{Type: api.EventGrant, Grants: []api.GatewayGrant{g("c")}}); err != nil {
		t.Fatal(err)
	}
	if d, ok := s.diff(live, now.Add(4*grace), grace); !d || ok {
		t.Fatalf("lost revocation, first look: differs %v, confirmed %v; want true, false", d, ok)
	}
	if d, ok := s.diff(live, now.Add(5*grace), grace); !d || !ok {
		t.Fatalf("lost revocation, after grace: differs %v, confirmed %v; want true, true", d, ok)
	}
}
