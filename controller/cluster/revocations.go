package cluster

import (
	"cmp"
	"slices"
	"sync"
	"time"
)

// revocationSet holds the signed KindRevoke events this node knows of,
// its own and others', until each expires. It is what LocalState sends, so
// a node that missed a revocation broadcast (a partition, a restart, a
// full queue) learns it at the next full-state exchange.
type revocationSet struct {
	mu     sync.Mutex // guards events
	events map[eventKey]revocation
}

type revocation struct {
	raw     []byte // the signed event, verbatim
	expires time.Time
}

func newRevocationSet() *revocationSet {
	return &revocationSet{events: make(map[eventKey]revocation)}
}

// add records a revocation event. When the set is full, expired entries
// go first, then the one that expires soonest (its grants are the closest
// to expiring on the gateways' own clocks anyway).
func (r *revocationSet) add(k eventKey, raw []byte, expires, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.events[k]; ok {
		return
	}
	if len(r.events) >= maxStateEvents {
		r.dropExpiredLocked(now)
	}
	if len(r.events) >= maxStateEvents {
		var (
			soonest  eventKey
			soonestT time.Time
		)
		for k, v := range r.events {
			if soonestT.IsZero() || v.expires.Before(soonestT) {
				soonest, soonestT = k, v.expires
			}
		}
		if !expires.After(soonestT) {
			return
		}
		delete(r.events, soonest)
	}
	r.events[k] = revocation{raw: raw, expires: expires}
}

// snapshot drops expired entries and returns the rest, oldest origin run
// and sequence first so that receivers see each origin's events in order.
func (r *revocationSet) snapshot(now time.Time) [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.dropExpiredLocked(now)
	keys := make([]eventKey, 0, len(r.events))
	for k := range r.events {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b eventKey) int {
		return cmp.Or(cmp.Compare(a.origin, b.origin), cmp.Compare(a.epoch, b.epoch), cmp.Compare(a.seq, b.seq))
	})
	out := make([][]byte, 0, len(keys))
	for _, k := range keys {
		out = append(out, r.events[k].raw)
	}
	return out
}

func (r *revocationSet) dropExpiredLocked(now time.Time) {
	for k, v := range r.events {
		if !now.Before(v.expires) {
			delete(r.events, k)
		}
	}
}
