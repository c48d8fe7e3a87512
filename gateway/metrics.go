package gateway

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the gateway's Prometheus metrics on a registry of its own.
type metrics struct {
	reg      *prometheus.Registry
	refused  *prometheus.CounterVec
	conns    *prometheus.CounterVec
	bytes    *prometheus.CounterVec
	active   prometheus.Gauge
	grants   prometheus.Gauge
	peers    prometheus.Gauge
	streamUp prometheus.Gauge
	// materialize counts handshake initiations from clients without a
	// configured peer, by outcome (lazy peers).
	materialize *prometheus.CounterVec
	// materializeSeconds is what adding a peer on demand adds to the
	// client's first handshake: from the initiation's arrival to its
	// delivery to wireguard-go.
	materializeSeconds prometheus.Histogram
}

func newMetrics() *metrics {
	m := &metrics{
		reg:      prometheus.NewRegistry(),
		refused:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "keyhole_gateway_refused_total", Help: "Connections refused, by protocol and reason."}, []string{"proto", "reason"}),
		conns:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "keyhole_gateway_connections_total", Help: "Connections proxied to apps."}, []string{"proto"}),
		bytes:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "keyhole_gateway_bytes_total", Help: "Bytes proxied, up (client to app) and down."}, []string{"direction"}),
		active:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "keyhole_gateway_active_connections", Help: "Connections open now."}),
		grants:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "keyhole_gateway_grants", Help: "Live grants held."}),
		peers:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "keyhole_gateway_peers", Help: "WireGuard client peers configured in wireguard-go (with lazy peers, the active clients only)."}),
		streamUp: prometheus.NewGauge(prometheus.GaugeOpts{Name: "keyhole_gateway_control_stream_up", Help: "1 while the control stream is connected."}),
	}
	m.materialize = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "keyhole_gateway_peer_materializations_total", Help: "Handshake initiations examined to add a client peer on demand, by outcome (added, no_grant, busy, over_budget)."}, []string{"outcome"})
	m.materializeSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "keyhole_gateway_peer_materialize_seconds", Help: "Delay added to a client's first handshake by adding its peer on demand.", Buckets: prometheus.ExponentialBuckets(50e-6, 2, 14)})
	m.reg.MustRegister(m.refused, m.conns, m.bytes, m.active, m.grants, m.peers, m.streamUp, m.materialize, m.materializeSeconds)
	return m
}

// MetricsHandler serves the gateway's metrics. The gateway listens on
// nothing by default; a caller that wants /metrics mounts this on a
// listener of its choice (keyhole gateway --metrics-listen).
func (g *Gateway) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(g.metrics.reg, promhttp.HandlerOpts{})
}

// Refused returns the number of refused connections so far (all reasons).
func (g *Gateway) Refused() float64 {
	mfs, err := g.metrics.reg.Gather()
	if err != nil {
		return 0
	}
	var n float64
	for _, mf := range mfs {
		if mf.GetName() == "keyhole_gateway_refused_total" {
			for _, m := range mf.GetMetric() {
				n += m.GetCounter().GetValue()
			}
		}
	}
	return n
}
