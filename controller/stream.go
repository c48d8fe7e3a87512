package controller

import (
	"bufio"
	"encoding/json"
	"net/http"
	"sync"
	"time"
)

// What the gateway control streams and the device event streams share: an
// outbox between the goroutines that push events and the one handler
// goroutine that writes them, and the NDJSON writer.

// streamPingInterval keeps idle streams alive through proxies and lets both
// sides notice a dead connection.
const streamPingInterval = 15 * time.Second

// streamWriteTimeout bounds one write to a stream: a peer that stops
// reading loses its stream rather than holding the handler forever.
const streamWriteTimeout = 10 * time.Second

// outbox queues events for one stream. put never blocks; the writer wakes on
// wake, takes everything queued with drain, and stops once done is closed.
type outbox[E any] struct {
	wake chan struct{} // cap 1: events queued
	done chan struct{} // closed once, when the stream ends

	mu     sync.Mutex // guards queue, closed
	queue  []E
	closed bool
}

func newOutbox[E any]() *outbox[E] {
	return &outbox[E]{wake: make(chan struct{}, 1), done: make(chan struct{})}
}

// put queues ev unless the outbox is closed or already holds limit events
// (0: no limit); it reports whether it queued ev.
func (o *outbox[E]) put(limit int, ev E) bool {
	o.mu.Lock()
	if o.closed || (limit > 0 && len(o.queue) >= limit) {
		o.mu.Unlock()
		return false
	}
	o.queue = append(o.queue, ev)
	o.mu.Unlock()
	select {
	case o.wake <- struct{}{}:
	default:
	}
	return true
}

// drain takes the queued events.
func (o *outbox[E]) drain() []E {
	o.mu.Lock()
	defer o.mu.Unlock()
	q := o.queue
	o.queue = nil
	return q
}

// close ends the stream once; it reports whether this call closed it.
// Events still queued stay for a last drain.
func (o *outbox[E]) close() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return false
	}
	o.closed = true
	close(o.done)
	return true
}

// ndjsonWriter writes a streaming response of newline-delimited JSON.
type ndjsonWriter struct {
	rc      *http.ResponseController
	bw      *bufio.Writer
	enc     *json.Encoder
	timeout time.Duration // for each writeEvents
}

// startNDJSON answers 200 with an NDJSON stream; headers the caller set on
// w before are sent too.
func startNDJSON(w http.ResponseWriter) *ndjsonWriter {
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	bw := bufio.NewWriter(w)
	return &ndjsonWriter{rc: http.NewResponseController(w), bw: bw, enc: json.NewEncoder(bw), timeout: streamWriteTimeout}
}

// writeEvents writes evs, one line each, and flushes them to the peer at
// once, within s.timeout.
func writeEvents[E any](s *ndjsonWriter, evs ...E) error {
	// Without deadline support (not the case for net/http's HTTP/1 and
	// HTTP/2 servers) a write can only block for as long as TCP does.
	_ = s.rc.SetWriteDeadline(time.Now().Add(s.timeout))
	for _, ev := range evs {
		if err := s.enc.Encode(ev); err != nil {
			return err
		}
	}
	if err := s.bw.Flush(); err != nil {
		return err
	}
	if err := s.rc.Flush(); err != nil {
		return err
	}
	// HTTP/2 resets a stream whose deadline passes even while it is idle.
	_ = s.rc.SetWriteDeadline(time.Time{})
	return nil
}
