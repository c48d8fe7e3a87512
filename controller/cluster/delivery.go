package cluster

import (
	"maps"
	"slices"
	"time"
)

const (
	// maxSeenEvents bounds the events remembered for de-duplication. An
	// event is remembered until it expires; past the bound, new events are
	// refused (and a revocation among them heals through the state
	// exchange once older ones expire).
	maxSeenEvents = 1 << 16

	// maxHeldPerStream bounds the events held back, per origin run,
	// waiting for an earlier one; past it, the gap is given up at once.
	maxHeldPerStream = 256

	// maxHoldFactor × holdFor bounds how long an event is held back.
	maxHoldFactor = 8
)

// streamKey names one run of one origin.
type streamKey struct {
	origin string
	epoch  uint64
}

// stream is the delivery state of one origin run.
type stream struct {
	next uint64               // the lowest sequence number not yet delivered in order
	seen map[uint64]time.Time // every sequence number taken, until its event expires
	held map[uint64]heldEvent // taken, waiting for next to reach it
	last time.Time            // when the stream last brought a new event
}

type heldEvent struct {
	ev    signedEvent
	since time.Time
}

// tracker decides which events to deliver and when: each event at most
// once, and the events of one origin run in sequence order. An event that
// arrives ahead of a gap is held, waiting for the gap to fill, until the
// stream has brought nothing new for holdFor (a burst drains newest first
// from memberlist's transmit queue, so the gap usually fills within it), or
// for at most maxHoldFactor × holdFor in all; then the gap is skipped. An
// event that fills a skipped gap later (from a partition's state exchange,
// say) is still delivered, once, out of order. tracker is pure logic; the
// event worker owns it.
type tracker struct {
	holdFor time.Duration
	streams map[streamKey]*stream
	seen    int // total entries in all streams' seen
}

func newTracker(holdFor time.Duration) *tracker {
	return &tracker{holdFor: holdFor, streams: make(map[streamKey]*stream)}
}

// offerResult says what became of an offered event.
type offerResult int

const (
	offerDuplicate offerResult = iota // seen before (or expired): drop
	offerFull                         // too many events remembered: drop
	offerTaken                        // first sight: spread it; it is in ready or held
)

// offer takes ev, received at now. It returns whether ev is new and the
// events now ready for delivery, in order.
func (t *tracker) offer(ev signedEvent, now time.Time) (offerResult, []signedEvent) {
	if !now.Before(ev.Expires) {
		return offerDuplicate, nil
	}
	k := streamKey{ev.Origin, ev.Epoch}
	s := t.streams[k]
	if s == nil {
		s = &stream{next: 1, seen: make(map[uint64]time.Time), held: make(map[uint64]heldEvent)}
		t.streams[k] = s
	}
	if _, dup := s.seen[ev.Seq]; dup {
		return offerDuplicate, nil
	}
	if t.seen >= maxSeenEvents {
		return offerFull, nil
	}
	s.seen[ev.Seq] = ev.Expires
	s.last = now
	t.seen++
	switch {
	case ev.Seq < s.next:
		return offerTaken, []signedEvent{ev}
	case ev.Seq == s.next:
		s.next++
		return offerTaken, s.drain([]signedEvent{ev})
	}
	s.held[ev.Seq] = heldEvent{ev: ev, since: now}
	if len(s.held) > maxHeldPerStream {
		return offerTaken, s.skip(nil)
	}
	return offerTaken, nil
}

// release gives up gaps that have been waited on for holdFor and returns
// the events that become ready.
func (t *tracker) release(now time.Time) []signedEvent {
	var out []signedEvent
	for _, s := range t.streams {
		for len(s.held) > 0 {
			first := slices.Min(slices.Collect(maps.Keys(s.held)))
			quiet := now.Sub(s.last) >= t.holdFor
			tooLong := now.Sub(s.held[first].since) >= maxHoldFactor*t.holdFor
			if !quiet && !tooLong {
				break
			}
			out = s.skip(out)
		}
	}
	return out
}

// held returns how many events are held back.
func (t *tracker) held() int {
	n := 0
	for _, s := range t.streams {
		n += len(s.held)
	}
	return n
}

// sweep forgets expired events, and streams with nothing left.
func (t *tracker) sweep(now time.Time) {
	for k, s := range t.streams {
		for seq, exp := range s.seen {
			if _, held := s.held[seq]; held {
				continue
			}
			if !now.Before(exp) {
				delete(s.seen, seq)
				t.seen--
			}
		}
		if len(s.seen) == 0 && len(s.held) == 0 {
			delete(t.streams, k)
		}
	}
}

// skip moves next to the lowest held event and drains from there.
func (s *stream) skip(out []signedEvent) []signedEvent {
	s.next = slices.Min(slices.Collect(maps.Keys(s.held)))
	return s.drain(out)
}

// drain appends held events from next on, in order, while there is no gap.
func (s *stream) drain(out []signedEvent) []signedEvent {
	for {
		h, ok := s.held[s.next]
		if !ok {
			return out
		}
		delete(s.held, s.next)
		out = append(out, h.ev)
		s.next++
	}
}
