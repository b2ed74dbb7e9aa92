package agent

import (
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
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
	dnsLoop     prometheus.Gauge
}

// apiRequests counts the agent's requests to the API server, by method and kind of
// request (list, watch, get, create…), to show what it costs the control plane.
var apiRequests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "precache_api_requests_total",
	Help: "Requests this process made to the Kubernetes API server."}, []string{"method", "kind"})

// CountRequests wraps a client-go transport so every API request is counted.
func CountRequests(rt http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(req *http.Request) (*http.Response, error) {
		kind := "get"
		q := req.URL.Query()
		switch {
		case q.Get("watch") == "true" || q.Get("watch") == "1":
			kind = "watch"
		case req.Method != http.MethodGet:
			kind = strings.ToLower(req.Method)
		case !strings.Contains(strings.TrimPrefix(req.URL.Path, "/"), "/") || q.Has("labelSelector") || q.Has("fieldSelector") || q.Has("limit"):
			kind = "list"
		}
		apiRequests.WithLabelValues(req.Method, kind).Inc()
		return rt.RoundTrip(req)
	})
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

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
		dnsLoop: prometheus.NewGauge(prometheus.GaugeOpts{Name: "precache_dns_depends_on_cluster",
			Help: "1 when the node's name resolution depends on the cluster (precache doctor's dns-loop FAIL: its only resolver is the CoreDNS service, or node-local DNS that sends names outside the cluster back into it), 0 when not, -1 when unknown."}),
	}
	m.dnsLoop.Set(-1)
	m.reg.MustRegister(m.desired, m.present, m.pinned, m.pull, m.failures, m.lastSuccess, m.reconciles, m.dnsLoop, apiRequests,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}
