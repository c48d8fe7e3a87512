package gateway

import (
	"context"
	"sync"
	"time"

	"github.com/keyhole-net/keyhole/internal/api"
)

// flowQueue buffers flow records for the controller. When the controller is
// unreachable for long, the oldest records are dropped (and counted) rather
// than letting memory grow without bound.
type flowQueue struct {
	max int

	mu      sync.Mutex // guards recs, dropped
	recs    []api.FlowRecord
	dropped uint64
}

func newFlowQueue(max int) *flowQueue { return &flowQueue{max: max} }

func (q *flowQueue) add(r api.FlowRecord) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.recs) >= q.max {
		q.recs = q.recs[1:]
		q.dropped++
	}
	q.recs = append(q.recs, r)
}

// take removes up to n records.
func (q *flowQueue) take(n int) []api.FlowRecord {
	q.mu.Lock()
	defer q.mu.Unlock()
	n = min(n, len(q.recs))
	out := append([]api.FlowRecord(nil), q.recs[:n]...)
	q.recs = q.recs[n:]
	return out
}

// putBack returns records that could not be sent to the front.
func (q *flowQueue) putBack(rs []api.FlowRecord) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.recs = append(rs, q.recs...)
	if over := len(q.recs) - q.max; over > 0 {
		q.recs = q.recs[over:]
		q.dropped += uint64(over)
	}
}

func (q *flowQueue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.recs)
}

// flowLoop sends flow records to the controller every FlowInterval, and
// once more on shutdown.
func (g *Gateway) flowLoop(ctx context.Context) {
	t := time.NewTicker(g.cfg.FlowInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			g.sendFlows(sctx)
			cancel()
			return
		case <-t.C:
			g.sendFlows(ctx)
		}
	}
}

func (g *Gateway) sendFlows(ctx context.Context) {
	for ctx.Err() == nil && g.flows.len() > 0 {
		batch := g.flows.take(256)
		if err := g.api.Do(ctx, "POST", "/v1/gateway/flows", api.FlowBatch{Records: batch}, nil); err != nil {
			g.flows.putBack(batch)
			g.log.Debug("flow records not sent; will retry", "records", len(batch), "err", err)
			return
		}
	}
}
