package cluster

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestTracker(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	const hold = 100 * time.Millisecond
	type step struct {
		at      time.Duration // since t0
		origin  string        // "" means a release tick
		epoch   uint64
		seq     uint64
		expired bool
		want    string // delivered now, "origin/epoch/seq ..." or ""
	}
	ev := func(s step) signedEvent {
		exp := t0.Add(time.Hour)
		if s.expired {
			exp = t0
		}
		return signedEvent{Event: Event{Origin: s.origin, Epoch: s.epoch, Seq: s.seq, Expires: exp}}
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"in order", []step{
			{origin: "a", epoch: 1, seq: 1, want: "a/1/1"},
			{origin: "a", epoch: 1, seq: 2, want: "a/1/2"},
		}},
		{"duplicate", []step{
			{origin: "a", epoch: 1, seq: 1, want: "a/1/1"},
			{origin: "a", epoch: 1, seq: 1, want: ""},
			{at: time.Second, want: ""},
			{at: time.Second, origin: "a", epoch: 1, seq: 1, want: ""},
		}},
		{"reordered within the window", []step{
			{origin: "a", epoch: 1, seq: 3, want: ""},
			{at: 50 * time.Millisecond, origin: "a", epoch: 1, seq: 2, want: ""},
			{at: 60 * time.Millisecond, want: ""},
			{at: 90 * time.Millisecond, origin: "a", epoch: 1, seq: 1, want: "a/1/1 a/1/2 a/1/3"},
			{at: time.Second, origin: "a", epoch: 1, seq: 2, want: ""},
		}},
		{"gap given up when the origin goes quiet, filled late once", []step{
			{origin: "a", epoch: 1, seq: 1, want: "a/1/1"},
			{origin: "a", epoch: 1, seq: 3, want: ""},
			{at: 50 * time.Millisecond, origin: "a", epoch: 1, seq: 4, want: ""},
			{at: 100 * time.Millisecond, want: ""},
			{at: 150 * time.Millisecond, want: "a/1/3 a/1/4"},
			{at: 200 * time.Millisecond, origin: "a", epoch: 1, seq: 5, want: "a/1/5"},
			{at: 300 * time.Millisecond, origin: "a", epoch: 1, seq: 2, want: "a/1/2"},
			{at: 400 * time.Millisecond, origin: "a", epoch: 1, seq: 2, want: ""},
		}},
		{"a busy origin's gap is given up after 8 windows", []step{
			{origin: "a", epoch: 1, seq: 2, want: ""},
			{at: 90 * time.Millisecond, origin: "a", epoch: 1, seq: 3, want: ""},
			{at: 180 * time.Millisecond, origin: "a", epoch: 1, seq: 4, want: ""},
			{at: 270 * time.Millisecond, origin: "a", epoch: 1, seq: 5, want: ""},
			{at: 360 * time.Millisecond, origin: "a", epoch: 1, seq: 6, want: ""},
			{at: 450 * time.Millisecond, origin: "a", epoch: 1, seq: 7, want: ""},
			{at: 540 * time.Millisecond, origin: "a", epoch: 1, seq: 8, want: ""},
			{at: 630 * time.Millisecond, origin: "a", epoch: 1, seq: 9, want: ""},
			{at: 720 * time.Millisecond, origin: "a", epoch: 1, seq: 10, want: ""},
			{at: 800 * time.Millisecond, want: "a/1/2 a/1/3 a/1/4 a/1/5 a/1/6 a/1/7 a/1/8 a/1/9 a/1/10"},
		}},
		{"origins and epochs are separate", []step{
			{origin: "a", epoch: 1, seq: 1, want: "a/1/1"},
			{origin: "b", epoch: 1, seq: 1, want: "b/1/1"},
			{origin: "a", epoch: 2, seq: 1, want: "a/2/1"},
			{origin: "a", epoch: 1, seq: 2, want: "a/1/2"},
		}},
		{"expired", []step{
			{origin: "a", epoch: 1, seq: 1, expired: true, want: ""},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := newTracker(hold)
			for i, s := range tc.steps {
				now := t0.Add(s.at)
				var got []signedEvent
				if s.origin == "" {
					got = tr.release(now)
				} else {
					_, got = tr.offer(ev(s), now)
				}
				if g := names(got); g != s.want {
					t.Fatalf("step %d (%+v): delivered %q, want %q", i, s, g, s.want)
				}
			}
		})
	}
}

func names(evs []signedEvent) string {
	var s []string
	for _, e := range evs {
		s = append(s, fmt.Sprintf("%s/%d/%d", e.Origin, e.Epoch, e.Seq))
	}
	return strings.Join(s, " ")
}

func TestTrackerForgetsExpiredEvents(t *testing.T) {
	t0 := time.Now()
	tr := newTracker(time.Second)
	for seq := uint64(1); seq <= 10; seq++ {
		tr.offer(signedEvent{Event: Event{Origin: "a", Epoch: 1, Seq: seq, Expires: t0.Add(time.Duration(seq) * time.Minute)}}, t0)
	}
	tr.sweep(t0.Add(5 * time.Minute))
	if tr.seen != 5 {
		t.Errorf("remembers %d events after half expired, want 5", tr.seen)
	}
	tr.sweep(t0.Add(time.Hour))
	if tr.seen != 0 || len(tr.streams) != 0 {
		t.Errorf("remembers %d events in %d streams after all expired", tr.seen, len(tr.streams))
	}
}

func TestTrackerBoundsHeldEvents(t *testing.T) {
	t0 := time.Now()
	tr := newTracker(time.Hour)
	var delivered []uint64
	for seq := uint64(2); seq <= maxHeldPerStream+2; seq++ {
		_, got := tr.offer(signedEvent{Event: Event{Origin: "a", Epoch: 1, Seq: seq, Expires: t0.Add(time.Hour)}}, t0)
		for _, e := range got {
			delivered = append(delivered, e.Seq)
		}
	}
	if len(delivered) != maxHeldPerStream+1 || !slices.IsSorted(delivered) {
		t.Errorf("delivered %d events (sorted: %v) once the hold was full", len(delivered), slices.IsSorted(delivered))
	}
	if tr.held() != 0 {
		t.Errorf("still holds %d", tr.held())
	}
}
