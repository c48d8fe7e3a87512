package controller

import (
	"errors"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/keyhole-net/keyhole/internal/api"
)

// Device event streams (GET /v1/device/events) tell clients at once what
// changed for them: revoked grants and a changed list of app names. They are
// a fast path only: the gateway enforces every revocation whether or not a
// client listens, and a client that missed an event learns of it when its
// renewal fails.

const (
	// maxDeviceStreams bounds the event streams of one device; opening one
	// more closes its oldest (a client that reconnects before the old
	// connection is seen dead must not be locked out).
	maxDeviceStreams = 4
	// maxQueuedDeviceEvents bounds what waits for one stream's writer. A
	// reader that falls this far behind loses its stream; it reconnects.
	maxQueuedDeviceEvents = 1024
	// lastWriteTimeout bounds writing what is still queued when a stream
	// is closed (logout, shutdown).
	lastWriteTimeout = time.Second
)

// errHubClosed refuses new streams once the controller is shutting down.
var errHubClosed = errors.New("controller shutting down")

// deviceHub holds the event streams of connected devices and fans events
// out to them. Nothing it does blocks on a stream's reader.
type deviceHub struct {
	metrics *metrics

	mu      sync.Mutex                       // guards streams, closed
	streams map[api.DeviceID][]*deviceStream // oldest first
	closed  bool
}

// deviceStream is one open GET /v1/device/events. The handler goroutine
// serving it is its only writer to the wire.
type deviceStream struct {
	device api.DeviceID
	user   string
	out    *outbox[api.DeviceEvent]
}

func newDeviceHub(m *metrics) *deviceHub {
	return &deviceHub{metrics: m, streams: make(map[api.DeviceID][]*deviceStream)}
}

// open registers a stream for a device of user, closing the device's
// oldest stream when it holds maxDeviceStreams already.
func (h *deviceHub) open(dev api.DeviceID, user string) (*deviceStream, error) {
	s := &deviceStream{device: dev, user: user, out: newOutbox[api.DeviceEvent]()}
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil, errHubClosed
	}
	list := append(h.streams[dev], s)
	var oldest *deviceStream
	if len(list) > maxDeviceStreams {
		oldest, list = list[0], list[1:]
	}
	h.streams[dev] = list
	h.mu.Unlock()
	h.metrics.deviceStreams.Inc()
	if oldest != nil {
		h.closeStream(oldest)
	}
	return s, nil
}

// remove unregisters s and closes it.
func (h *deviceHub) remove(s *deviceStream) {
	h.mu.Lock()
	list := slices.DeleteFunc(h.streams[s.device], func(x *deviceStream) bool { return x == s })
	if len(list) == 0 {
		delete(h.streams, s.device)
	} else {
		h.streams[s.device] = list
	}
	h.mu.Unlock()
	h.closeStream(s)
}

// closeStream closes s; the metric counts each stream down once.
func (h *deviceHub) closeStream(s *deviceStream) {
	if s.out.close() {
		h.metrics.deviceStreams.Dec()
	}
}

// publish queues ev for every stream of dev. A stream too far behind is
// closed instead: its reader reconnects.
func (h *deviceHub) publish(dev api.DeviceID, ev api.DeviceEvent) {
	h.mu.Lock()
	list := slices.Clone(h.streams[dev])
	h.mu.Unlock()
	h.deliver(list, ev)
}

// broadcast queues ev for every stream.
func (h *deviceHub) broadcast(ev api.DeviceEvent) {
	h.deliver(h.matching(func(*deviceStream) bool { return true }), ev)
}

func (h *deviceHub) deliver(list []*deviceStream, ev api.DeviceEvent) {
	for _, s := range list {
		if !s.out.put(maxQueuedDeviceEvents, ev) {
			h.metrics.deviceStreamsDropped.Inc()
			h.remove(s)
		}
	}
}

// closeDevice closes every stream of dev, after what is queued for them
// (logout, device disabled).
func (h *deviceHub) closeDevice(dev api.DeviceID) {
	for _, s := range h.matching(func(s *deviceStream) bool { return s.device == dev }) {
		h.remove(s)
	}
}

// closeUser closes every stream of user's devices (user disabled or removed).
func (h *deviceHub) closeUser(user string) {
	for _, s := range h.matching(func(s *deviceStream) bool { return s.user == user }) {
		h.remove(s)
	}
}

// closeAll closes every stream and refuses new ones (shutdown).
func (h *deviceHub) closeAll() {
	h.mu.Lock()
	h.closed = true
	h.mu.Unlock()
	for _, s := range h.matching(func(*deviceStream) bool { return true }) {
		h.remove(s)
	}
}

// select_ returns the streams keep accepts.
func (h *deviceHub) matching(keep func(*deviceStream) bool) []*deviceStream {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []*deviceStream
	for _, list := range h.streams {
		for _, s := range list {
			if keep(s) {
				out = append(out, s)
			}
		}
	}
	return out
}

// handleDeviceDomains serves GET /v1/device/domains: every app's domains
// and prefixes, with the version as ETag so a client can poll cheaply.
func (c *Controller) handleDeviceDomains(w http.ResponseWriter, r *http.Request, _ deviceCaller) error {
	dd := c.catalog.Load().domains
	etag := `"` + dd.Version + `"`
	w.Header().Set("ETag", etag)
	if r.Header.Get("If-None-Match") == etag {
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	writeJSON(w, http.StatusOK, dd)
	return nil
}

// handleDeviceEvents holds GET /v1/device/events: hello, then the device's
// events as they come, and a ping every pingInterval, as NDJSON. With every
// ping the caller's credentials are checked again, so a stream does not
// outlive its session, device or user.
func (c *Controller) handleDeviceEvents(w http.ResponseWriter, r *http.Request, d deviceCaller) error {
	s, err := c.devices.open(d.device.ID, d.user.Name)
	if err != nil {
		return errf(http.StatusServiceUnavailable, api.CodeUnavailable, "%v; reconnect to another controller or try again shortly", err)
	}
	defer c.devices.remove(s)
	out := startNDJSON(w)
	hello := api.DeviceEvent{Type: api.DeviceEventHello, Version: c.catalog.Load().domains.Version, Time: c.now()}
	if err := writeEvents(out, hello); err != nil {
		return nil
	}
	c.log.Debug("device stream open", "device_id", d.device.ID, "user", d.user.Name)
	defer c.log.Debug("device stream closed", "device_id", d.device.ID, "user", d.user.Name)
	ping := time.NewTicker(c.pingInterval)
	defer ping.Stop()
	authFailed := false
	for {
		select {
		case <-r.Context().Done():
			return nil
		case <-s.out.done:
			// Closed by logout, a newer stream or shutdown: send what was
			// queued before (the revocations of a logout), briefly.
			if evs := s.out.drain(); len(evs) > 0 {
				out.timeout = lastWriteTimeout
				_ = writeEvents(out, evs...)
			}
			return nil
		case <-s.out.wake:
			if err := writeEvents(out, s.out.drain()...); err != nil {
				return nil
			}
		case <-ping.C:
			if _, err := c.authDevice(r); err != nil {
				// The device or user was disabled or removed, or the
				// session ended. Where that happened here, the handler
				// revokes the grants, which queues their events, then
				// closes this stream, and the done case sends them; give
				// it until the next ping before ending on our own
				// (a change made on another controller of a cluster).
				if authFailed {
					if evs := s.out.drain(); len(evs) > 0 {
						out.timeout = lastWriteTimeout
						_ = writeEvents(out, evs...)
					}
					return nil
				}
				authFailed = true
				continue
			}
			if err := writeEvents(out, api.DeviceEvent{Type: api.DeviceEventPing, Time: c.now()}); err != nil {
				return nil
			}
		}
	}
}
