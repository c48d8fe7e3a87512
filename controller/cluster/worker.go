package cluster

import (
	"slices"
	"time"

	"github.com/hashicorp/memberlist"
)

// eventWorker decodes, verifies, de-duplicates, re-gossips and delivers
// events. It owns the tracker and the pending list.
func (c *Cluster) eventWorker(reorderWait time.Duration) {
	defer c.wg.Done()
	w := &worker{c: c, tr: newTracker(reorderWait)}
	tick := time.NewTicker(max(reorderWait/2, 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case in := <-c.inbound:
			for _, m := range in.msgs {
				w.receive(m, in.viaState)
			}
		case <-c.peers.changed:
			w.retryPending()
		case <-tick.C:
			now := time.Now()
			w.deliver(w.tr.release(now))
			w.expirePending(now)
			if now.Sub(w.swept) >= sweepEvery {
				w.tr.sweep(now)
				w.swept = now
			}
		}
		c.stats.held.Store(int64(w.tr.held()))
		c.stats.pending.Store(int64(len(w.pending)))
	}
}

// worker is the event worker's state.
type worker struct {
	c       *Cluster
	tr      *tracker
	pending []pendingEvent // events whose origin's certificate is not known yet
	swept   time.Time      // when tr last forgot expired events
}

type pendingEvent struct {
	ev signedEvent
	at time.Time
}

func (w *worker) receive(raw []byte, viaState bool) {
	c := w.c
	ev, err := decodeEvent(raw)
	if err != nil {
		c.stats.dropped.Add(1)
		c.log.Debug("cluster: dropped malformed message", "err", err, "bytes", len(raw))
		return
	}
	ev.viaState = viaState
	w.take(ev, time.Now())
}

// take handles a well-formed event.
func (w *worker) take(ev signedEvent, now time.Time) {
	c := w.c
	if ev.Origin == c.cfg.NodeName && ev.Epoch == c.epoch {
		return // our own, back from a relay
	}
	if !now.Before(ev.Expires) || ev.Expires.After(now.Add(maxEventLifetime+time.Hour)) {
		c.stats.dropped.Add(1)
		return
	}
	cert, ok := c.peers.cert(ev.Origin, now)
	if !ok {
		// Its origin has not shown us its certificate yet (it joined a
		// moment ago, or it is no controller of ours). Wait a while.
		if slices.ContainsFunc(w.pending, func(p pendingEvent) bool { return p.ev.key() == ev.key() }) {
			return
		}
		if len(w.pending) >= maxPending {
			c.stats.dropped.Add(1)
			w.pending = w.pending[1:]
		}
		w.pending = append(w.pending, pendingEvent{ev: ev, at: now})
		return
	}
	if err := verifyEvent(ev, cert); err != nil {
		c.stats.dropped.Add(1)
		c.log.Warn("cluster: dropped event with a bad signature", "origin", ev.Origin, "seq", ev.Seq, "err", err)
		return
	}
	res, ready := w.tr.offer(ev, now)
	switch res {
	case offerDuplicate:
		return
	case offerFull:
		c.stats.dropped.Add(1)
		c.log.Warn("cluster: too many events remembered; dropped one", "origin", ev.Origin, "kind", ev.Kind)
		return
	}
	// First sight: spread it further, since memberlist does not.
	c.enqueue(ev.raw)
	if ev.Kind == KindRevoke {
		c.revs.add(ev.key(), ev.raw, ev.Expires, now)
	}
	w.deliver(ready)
}

func (w *worker) deliver(evs []signedEvent) {
	c := w.c
	for _, ev := range evs {
		c.stats.delivered.Add(1)
		if ev.viaState {
			c.stats.viaState.Add(1)
		}
		if c.cfg.Handler != nil && c.ctx.Err() == nil {
			c.cfg.Handler(c.ctx, ev.Event)
		}
	}
}

func (w *worker) retryPending() {
	if len(w.pending) == 0 {
		return
	}
	now := time.Now()
	ps := w.pending
	w.pending = nil
	for _, p := range ps {
		if _, ok := w.c.peers.cert(p.ev.Origin, now); !ok {
			w.pending = append(w.pending, p)
			continue
		}
		w.take(p.ev, now)
	}
}

func (w *worker) expirePending(now time.Time) {
	i := 0
	for i < len(w.pending) && now.Sub(w.pending[i].at) > pendingTTL {
		w.c.stats.dropped.Add(1)
		w.c.log.Debug("cluster: dropped event from an unverified origin", "origin", w.pending[i].ev.Origin)
		i++
	}
	w.pending = w.pending[i:]
}

// memberWorker calls OnMember, off memberlist's goroutines.
func (c *Cluster) memberWorker() {
	defer c.wg.Done()
	for {
		select {
		case <-c.ctx.Done():
			return
		case ev := <-c.members:
			if c.cfg.OnMember != nil {
				c.cfg.OnMember(ev)
			}
		}
	}
}

// connector introduces nodes that memberlist heard of but that have not
// proved their identity here yet (by joining them: a mutual-TLS state
// exchange at the address they claim), and rejoins the seeds and failed
// members so partitions heal.
func (c *Cluster) connector(every time.Duration) {
	defer c.wg.Done()
	lastTry := make(map[memberlist.Address]time.Time)
	backoff := min(every, 5*time.Second)
	c.rejoin() // the initial join
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case a := <-c.intro:
			if t, ok := lastTry[a]; ok && time.Since(t) < backoff {
				continue
			}
			lastTry[a] = time.Now()
			if _, err := c.ml.Join([]string{a.Name + "/" + a.Addr}); err != nil {
				c.log.Debug("cluster: could not verify node", "peer", a.Name, "addr", a.Addr, "err", err)
			}
		case <-tick.C:
			for a, t := range lastTry {
				if time.Since(t) > backoff {
					delete(lastTry, a)
				}
			}
			c.rejoin()
		}
	}
}

// rejoin joins the seeds while this node is alone, and the members that
// failed (not left) within rejoinFor and are not back.
func (c *Cluster) rejoin() {
	if c.ctx.Err() != nil || c.leaving.Load() {
		return
	}
	if len(c.cfg.Join) > 0 && c.numMembers() <= 1 {
		if n, err := c.ml.Join(c.cfg.Join); err != nil {
			c.log.Debug("cluster: join failed; will retry", "join", c.cfg.Join, "err", err)
		} else {
			c.log.Info("cluster joined", "reached", n)
		}
	}
	alive := make(map[string]bool)
	for _, m := range c.Members() {
		alive[m.Name] = true
	}
	var targets []string
	c.failedMu.Lock()
	for name, f := range c.failed {
		switch {
		case alive[name]:
			delete(c.failed, name)
		case time.Since(f.since) > rejoinFor:
			delete(c.failed, name)
		default:
			targets = append(targets, name+"/"+f.addr)
		}
	}
	c.failedMu.Unlock()
	for _, t := range targets {
		if c.ctx.Err() != nil {
			return
		}
		if _, err := c.ml.Join([]string{t}); err != nil {
			c.log.Debug("cluster: rejoin failed member", "member", t, "err", err)
		}
	}
}
