package controller

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the controller's Prometheus metrics, on a registry of its own
// (no global registry: two controllers in one test process must not clash).
type metrics struct {
	reg             *prometheus.Registry
	grantsIssued    prometheus.Counter
	grantsRenewed   prometheus.Counter
	grantsDenied    prometheus.Counter
	grantsRevoked   prometheus.Counter
	streams         prometheus.Gauge
	decisionSeconds prometheus.Histogram
	// deviceStreams are the open device event streams; deviceStreamsDropped
	// counts those closed because their reader fell too far behind.
	deviceStreams        prometheus.Gauge
	deviceStreamsDropped prometheus.Counter
	// relayedPushes counts grant pushes sent to the controller holding the
	// gateway's stream, by the path that carried them ("link": the direct
	// channel; "gossip": the fallback) and whether the gateway took them.
	relayedPushes *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{
		reg:           prometheus.NewRegistry(),
		grantsIssued:  prometheus.NewCounter(prometheus.CounterOpts{Name: "keyhole_controller_grants_issued_total", Help: "Grants issued."}),
		grantsRenewed: prometheus.NewCounter(prometheus.CounterOpts{Name: "keyhole_controller_grants_renewed_total", Help: "Grants renewed."}),
		grantsDenied:  prometheus.NewCounter(prometheus.CounterOpts{Name: "keyhole_controller_grants_denied_total", Help: "Grant requests denied."}),
		grantsRevoked: prometheus.NewCounter(prometheus.CounterOpts{Name: "keyhole_controller_grants_revoked_total", Help: "Grants revoked."}),
		streams:       prometheus.NewGauge(prometheus.GaugeOpts{Name: "keyhole_controller_gateway_streams", Help: "Connected gateway control streams."}),
		deviceStreams: prometheus.NewGauge(prometheus.GaugeOpts{Name: "keyhole_controller_device_streams", Help: "Open device event streams."}),
		deviceStreamsDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "keyhole_controller_device_streams_dropped_total", Help: "Device event streams closed because their reader fell behind.",
		}),
		relayedPushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyhole_controller_relayed_pushes_total", Help: "Grant pushes relayed to the controller holding the gateway's stream, by path and result.",
		}, []string{"path", "result"}),
		decisionSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "keyhole_controller_grant_seconds", Help: "Time to decide and issue a grant, gateway ack included.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
	}
	m.reg.MustRegister(m.grantsIssued, m.grantsRenewed, m.grantsDenied, m.grantsRevoked, m.streams, m.decisionSeconds,
		m.deviceStreams, m.deviceStreamsDropped, m.relayedPushes,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}
