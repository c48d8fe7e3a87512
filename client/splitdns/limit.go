package splitdns

import (
	"container/list"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// lru is a map bounded to size entries that forgets the least recently
// used one first. It is not safe for concurrent use.
type lru[K comparable, V any] struct {
	size int
	ll   list.List // of *lruEntry[K, V], most recent at the front
	m    map[K]*list.Element
}

type lruEntry[K comparable, V any] struct {
	key K
	val V
}

func newLRU[K comparable, V any](size int) *lru[K, V] {
	return &lru[K, V]{size: size, m: make(map[K]*list.Element)}
}

func (l *lru[K, V]) get(k K) (V, bool) {
	e, ok := l.m[k]
	if !ok {
		var zero V
		return zero, false
	}
	l.ll.MoveToFront(e)
	return e.Value.(*lruEntry[K, V]).val, true
}

func (l *lru[K, V]) put(k K, v V) {
	if e, ok := l.m[k]; ok {
		e.Value.(*lruEntry[K, V]).val = v
		l.ll.MoveToFront(e)
		return
	}
	l.m[k] = l.ll.PushFront(&lruEntry[K, V]{key: k, val: v})
	for l.ll.Len() > l.size {
		oldest := l.ll.Back()
		l.ll.Remove(oldest)
		delete(l.m, oldest.Value.(*lruEntry[K, V]).key)
	}
}

func (l *lru[K, V]) remove(k K) {
	if e, ok := l.m[k]; ok {
		l.ll.Remove(e)
		delete(l.m, k)
	}
}

func (l *lru[K, V]) len() int { return l.ll.Len() }

// sourceLimits holds one token bucket per source address. The map is
// bounded: a flood from many (spoofed) sources evicts the least recently
// seen ones, which then start again with a full bucket. That is no worse
// than never having seen them, and memory stays fixed.
type sourceLimits struct {
	limit rate.Limit
	burst int

	mu      sync.Mutex // guards sources
	sources *lru[netip.Addr, *rate.Limiter]
}

func newSourceLimits(limit rate.Limit, burst, maxSources int) *sourceLimits {
	return &sourceLimits{limit: limit, burst: burst, sources: newLRU[netip.Addr, *rate.Limiter](maxSources)}
}

// allow takes one token from src's bucket.
func (s *sourceLimits) allow(src netip.Addr, now time.Time) bool {
	if s.limit == rate.Inf {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	lim, ok := s.sources.get(src)
	if !ok {
		lim = rate.NewLimiter(s.limit, s.burst)
		s.sources.put(src, lim)
	}
	return lim.AllowN(now, 1)
}
