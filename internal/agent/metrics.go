package agent

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the agent's Prometheus metrics, on their own registry.
type metrics struct {
	reg         *prometheus.Registry
	desired     prometheus.Gauge
	present     prometheus.Gauge
	pinned      prometheus.Gauge
	pull        prometheus.Histogram
	failures    *prometheus.CounterVec
	lastSuccess prometheus.Gauge
	reconciles  *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{
		reg:     prometheus.NewRegistry(),
		desired: prometheus.NewGauge(prometheus.GaugeOpts{Name: "precache_images_desired", Help: "Images the node should hold, pinned."}),
		present: prometheus.NewGauge(prometheus.GaugeOpts{Name: "precache_images_present", Help: "Desired images present, complete and unpacked."}),
		pinned:  prometheus.NewGauge(prometheus.GaugeOpts{Name: "precache_images_pinned", Help: "Desired images pinned against kubelet image GC."}),
		pull: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "precache_pull_duration_seconds", Help: "Time to pull, verify, unpack and pin one image.",
			Buckets: prometheus.ExponentialBuckets(0.1, 2, 12)}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "precache_failures_total", Help: "Images that could not be made right, by reason."}, []string{"reason"}),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{Name: "precache_last_success_timestamp_seconds",
			Help: "Unix time of the last reconcile that left every desired image right."}),
		reconciles: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "precache_reconciles_total", Help: "Reconciles, by result."}, []string{"result"}),
	}
	m.reg.MustRegister(m.desired, m.present, m.pinned, m.pull, m.failures, m.lastSuccess, m.reconciles,
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}
