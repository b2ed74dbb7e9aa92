// Package agent is `precache agent`, the DaemonSet: it watches the few objects that say
// which Calico the cluster runs and keeps this node's images right — the running
// version's and, as soon as an upgrade is applied to the calico-node DaemonSet, the new
// version's, before the rollout reaches the node. Images of the old version stay pinned
// until this node's calico-node runs the new one.
package agent

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/pprof"
	"runtime"
	"runtime/debug"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	pcache "github.com/precache/precache/internal/cache"
	"github.com/precache/precache/internal/cluster"
	"github.com/precache/precache/internal/doctor"
	"github.com/precache/precache/internal/manifest"
)

// Store is what the agent needs of the node's image store: the core's, plus the images
// precache pinned earlier, so it can unpin those no longer wanted.
type Store interface {
	pcache.Store
	Managed(ctx context.Context) ([]pcache.Image, error)
}

// Config configures an Agent.
type Config struct {
	NodeName string
	Clients  cluster.Clients
	// Open connects to the image store; it is called again after a failure (containerd restarted).
	Open func(ctx context.Context) (Store, func() error, error)
	// Resync is the periodic reconcile interval (jittered ±10 %).
	Resync time.Duration
	// SelfImage is the agent's own image, kept too so a restarted agent is never stuck.
	SelfImage string
	// Extra images to keep (--image).
	Extra []manifest.Image
	// MetricsAddr serves /metrics, /healthz and /readyz.
	MetricsAddr string
	// Root is the node's root filesystem (the DaemonSet mounts it at /host), for the DNS loop check.
	Root string
	// ClusterDNS are the cluster DNS service IPs (the kubelet's clusterDNS or the kube-dns Service).
	ClusterDNS []string
	// Profiling serves net/http/pprof under /debug/pprof/ on MetricsAddr.
	Profiling bool
	// OnReconcile, if set, is told each reconcile's outcome (state file, tests).
	OnReconcile func([]pcache.Result, *cluster.Discovery)
	Log         *zap.Logger
}

// Agent keeps a node's image cache right.
type Agent struct {
	cfg     Config
	log     *zap.Logger
	metrics *metrics

	dsListers  []cacheLister
	podListers []cacheLister
	trigger    chan struct{}
	recorder   record.EventRecorder

	mu        sync.Mutex
	dnsFail   bool
	ready     bool
	failing   bool
	lastError string
}

type cacheLister struct {
	ns    string
	store cache.Store
}

// New returns an agent; Run starts it.
func New(cfg Config) *Agent {
	if cfg.Resync <= 0 {
		cfg.Resync = 10 * time.Minute
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	return &Agent{cfg: cfg, log: cfg.Log, metrics: newMetrics(), trigger: make(chan struct{}, 1)}
}

// strip keeps only what discovery reads, so the informer caches stay small (SetTransform).
func strip(obj any) (any, error) {
	switch o := obj.(type) {
	case *appsv1.DaemonSet:
		o.ManagedFields, o.Annotations, o.Status = nil, nil, appsv1.DaemonSetStatus{}
	case *corev1.Pod:
		o.ManagedFields, o.Annotations = nil, nil
		o.Spec.Volumes, o.Status.Conditions = nil, nil
	}
	return obj, nil
}

// Run watches and reconciles until ctx is cancelled, then shuts down cleanly.
func (a *Agent) Run(ctx context.Context) error {
	kube := a.cfg.Clients.Kube
	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: kube.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	a.recorder = broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "precache", Host: a.cfg.NodeName})

	// Watches, restricted to the few objects discovery needs: the calico-node DaemonSet
	// (by name) and this node's calico-node pod (by node and label), in each namespace.
	var factories []informers.SharedInformerFactory
	onChange := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { a.kick() },
		UpdateFunc: func(any, any) { a.kick() },
		DeleteFunc: func(any) { a.kick() },
	}
	for _, ns := range cluster.Namespaces {
		dsf := informers.NewSharedInformerFactoryWithOptions(kube, 0, informers.WithNamespace(ns),
			informers.WithTweakListOptions(func(o *metav1.ListOptions) {
				o.FieldSelector = fields.OneTermEqualSelector("metadata.name", "calico-node").String()
			}))
		dsInf := dsf.Apps().V1().DaemonSets().Informer()
		_ = dsInf.SetTransform(strip)
		if _, err := dsInf.AddEventHandler(onChange); err != nil {
			return err
		}
		a.dsListers = append(a.dsListers, cacheLister{ns: ns, store: dsInf.GetStore()})

		pf := informers.NewSharedInformerFactoryWithOptions(kube, 0, informers.WithNamespace(ns),
			informers.WithTweakListOptions(func(o *metav1.ListOptions) {
				o.LabelSelector = "k8s-app=calico-node"
				if a.cfg.NodeName != "" {
					o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", a.cfg.NodeName).String()
				}
			}))
		pInf := pf.Core().V1().Pods().Informer()
		_ = pInf.SetTransform(strip)
		if _, err := pInf.AddEventHandler(onChange); err != nil {
			return err
		}
		a.podListers = append(a.podListers, cacheLister{ns: ns, store: pInf.GetStore()})
		factories = append(factories, dsf, pf)
	}
	for _, f := range factories {
		f.Start(ctx.Done())
	}

	srv := &http.Server{Addr: a.cfg.MetricsAddr, Handler: a.handler(), ReadHeaderTimeout: 5 * time.Second}
	srvErr := make(chan error, 1)
	if a.cfg.MetricsAddr != "" {
		go func() {
			if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				srvErr <- err
			}
		}()
	}

	for _, f := range factories {
		for typ, ok := range f.WaitForCacheSync(ctx.Done()) {
			if !ok && ctx.Err() == nil {
				return fmt.Errorf("informer for %v did not sync", typ)
			}
		}
	}
	a.log.Info("watching", zap.String("node", a.cfg.NodeName), zap.Duration("resync", a.cfg.Resync))
	a.kick()
	err := a.loop(ctx, srvErr)
	for _, f := range factories {
		f.Shutdown()
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	return err
}

func (a *Agent) kick() {
	select {
	case a.trigger <- struct{}{}:
	default:
	}
}

func jitter(d time.Duration) time.Duration {
	return d - d/10 + time.Duration(rand.Int64N(int64(d/5)+1))
}

// loop reconciles on change, on the jittered resync, and with backoff after a failure.
func (a *Agent) loop(ctx context.Context, srvErr <-chan error) error {
	var (
		store   Store
		closeFn func() error
		backoff = time.Second
	)
	defer func() {
		if closeFn != nil {
			_ = closeFn()
		}
	}()
	timer := time.NewTimer(jitter(a.cfg.Resync))
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			a.log.Info("shutting down")
			return nil
		case err := <-srvErr:
			return fmt.Errorf("metrics server: %w", err)
		case <-a.trigger:
		case <-timer.C:
		}
		if store == nil {
			s, c, err := a.cfg.Open(ctx)
			if err != nil {
				a.failed(ctx, "ContainerdUnreachable", err)
				timer.Reset(backoff)
				backoff = min(backoff*2, time.Minute)
				continue
			}
			store, closeFn = s, c
		}
		err := a.reconcile(ctx, store)
		if err != nil && ctx.Err() == nil {
			if errors.Is(err, errStore) {
				_ = closeFn()
				store, closeFn = nil, nil // reconnect next time: containerd may have restarted
			}
			timer.Reset(backoff)
			backoff = min(backoff*2, time.Minute)
			continue
		}
		backoff = time.Second
		timer.Reset(jitter(a.cfg.Resync))
	}
}

var errStore = errors.New("image store")

func (a *Agent) reconcile(ctx context.Context, store Store) error {
	start := time.Now()
	snap := a.snapshot()
	d, err := cluster.Resolve(snap)
	if err != nil {
		a.failed(ctx, "NoCalico", err)
		return err
	}
	for _, msg := range d.Disagreements {
		a.log.Info("sources disagree", zap.String("detail", msg))
	}
	want := append([]manifest.Image{}, d.Images...)
	if a.cfg.SelfImage != "" {
		if ref, err := manifest.ParseRef(a.cfg.SelfImage); err == nil {
			want = append(want, manifest.Image{Ref: ref, Source: "the agent's own image"})
		}
	}
	want = append(want, a.cfg.Extra...)
	a.metrics.desired.Set(float64(len(want)))

	e := pcache.NewEnsurer(store, pcache.Options{Logger: a.log})
	results, err := e.Ensure(ctx, want)
	present, pinned := 0, 0
	for _, r := range results {
		if r.Err != nil {
			a.metrics.failures.WithLabelValues(reason(r.Err)).Inc()
			continue
		}
		present++
		pinned++
		for _, act := range r.Actions {
			if act == pcache.ActionPulled {
				a.metrics.pull.Observe(r.Duration.Seconds())
			}
		}
	}
	a.metrics.present.Set(float64(present))
	a.metrics.pinned.Set(float64(pinned))
	if a.cfg.OnReconcile != nil {
		a.cfg.OnReconcile(results, d)
	}
	if err != nil {
		a.metrics.reconciles.WithLabelValues("failed").Inc()
		a.failed(ctx, "ImagesNotRight", err)
		var se *pcache.SetError
		if !errors.As(err, &se) {
			return fmt.Errorf("%w: %w", errStore, err)
		}
		return err
	}

	// Unpin what precache pinned earlier and is no longer wanted, once this node's
	// calico-node runs the version now wanted (until then the old images are its lifeline).
	if running := a.runningVersion(); running == d.Version {
		if err := a.unpinStale(ctx, store, want); err != nil {
			a.log.Warn("unpinning", zap.Error(err))
		}
	} else {
		a.log.Info("keeping the previous version pinned until calico-node runs the new one", zap.String("running", running), zap.String("wanted", d.Version))
	}
	a.checkDNS()
	a.metrics.reconciles.WithLabelValues("ok").Inc()
	a.metrics.lastSuccess.SetToCurrentTime()
	a.recovered(ctx, fmt.Sprintf("%d images of Calico %s present, verified, unpacked and pinned", len(want), d.Version))
	// A pull's buffers are garbage now; give the memory back rather than keep it for an
	// agent that will mostly sit idle until the next upgrade. The first collection moves
	// the copy buffers pooled by containerd's content package and gRPC (sync.Pool: ~30 MiB
	// after a pull) to the pools' victim caches, the second frees them.
	runtime.GC()
	debug.FreeOSMemory()
	a.log.Info("reconciled", zap.String("version", d.Version), zap.Int("images", len(want)), zap.Duration("took", time.Since(start)))
	return nil
}

func reason(err error) string {
	switch {
	case errors.Is(err, pcache.ErrDigestMismatch):
		return "digest_mismatch"
	case errors.Is(err, pcache.ErrUnavailable):
		return "registry_unavailable"
	case errors.Is(err, pcache.ErrUnauthorized):
		return "unauthorized"
	case errors.Is(err, pcache.ErrNotFound):
		return "not_found"
	}
	return "other"
}

// snapshot builds discovery's input from the informer caches: no API call.
func (a *Agent) snapshot() cluster.Snapshot {
	var s cluster.Snapshot
	for _, l := range a.dsListers {
		for _, obj := range l.store.List() {
			if ds, ok := obj.(*appsv1.DaemonSet); ok {
				s.Workloads = append(s.Workloads, cluster.FromDaemonSet(ds))
			}
		}
	}
	for _, l := range a.podListers {
		for _, obj := range l.store.List() {
			if p, ok := obj.(*corev1.Pod); ok {
				s.Running = append(s.Running, cluster.FromPod(p)...)
			}
		}
	}
	return s
}

// runningVersion is the tag of calico/node in this node's calico-node pod ("" if none).
func (a *Agent) runningVersion() string {
	for _, l := range a.podListers {
		for _, obj := range l.store.List() {
			p, ok := obj.(*corev1.Pod)
			if !ok {
				continue
			}
			for _, c := range p.Spec.Containers {
				if ref, err := manifest.ParseRef(c.Image); err == nil && ref.Base() == "node" {
					return ref.Tag
				}
			}
		}
	}
	return ""
}

func (a *Agent) unpinStale(ctx context.Context, store Store, want []manifest.Image) error {
	keep := map[string]bool{}
	for _, img := range want {
		keep[img.Ref.Name] = true
	}
	managed, err := store.Managed(ctx)
	if err != nil {
		return err
	}
	wanted := map[string]bool{}
	for _, img := range want {
		wanted[img.Ref.TagName()] = true
	}
	for _, img := range managed {
		ref, err := manifest.ParseRef(img.Name)
		if err != nil {
			continue
		}
		if wanted[ref.TagName()] {
			continue
		}
		// Another digest name of a wanted tag (the same target) stays too.
		if ref.Tag == "" && keep[ref.Name] && a.targetWanted(ctx, store, img, want) {
			continue
		}
		labels := map[string]string{}
		for k, v := range img.Labels {
			if k != pcache.LabelCRIPinned && k != pcache.LabelManaged {
				labels[k] = v
			}
		}
		img.Labels = labels
		if err := store.Put(ctx, img); err != nil {
			return err
		}
		a.log.Info("unpinned", zap.String("image", img.Name))
	}
	return nil
}

func (a *Agent) targetWanted(ctx context.Context, store Store, img pcache.Image, want []manifest.Image) bool {
	for _, w := range want {
		if w.Ref.Name != manifest.MustParseRef(img.Name).Name {
			continue
		}
		rec, err := store.Image(ctx, w.Ref.TagName())
		if err == nil && rec.Target.Digest == img.Target.Digest {
			return true
		}
	}
	return false
}

// checkDNS runs doctor's DNS-loop check on the node's files: the metric, and an Event
// when the node becomes (or stops being) one calico-node loss away from the loop.
func (a *Agent) checkDNS() {
	if a.cfg.Root == "" {
		return
	}
	r, err := doctor.ReadResolvers(a.cfg.Root)
	if err != nil {
		a.metrics.dnsLoop.Set(-1)
		return
	}
	res := doctor.DNSLoop(r, a.cfg.ClusterDNS, []string{"precache bootstrap --dns-fallback IP", "a bundle on disk"})
	fail := res.Status == doctor.Fail
	switch res.Status {
	case doctor.Fail:
		a.metrics.dnsLoop.Set(1)
	case doctor.Skip:
		a.metrics.dnsLoop.Set(-1)
	default:
		a.metrics.dnsLoop.Set(0)
	}
	a.mu.Lock()
	changed := fail != a.dnsFail
	a.dnsFail = fail
	a.mu.Unlock()
	if !changed || a.recorder == nil || a.cfg.NodeName == "" {
		return
	}
	if fail {
		a.log.Warn("DNS depends on the cluster", zap.String("summary", res.Summary))
		a.recorder.Eventf(a.nodeRef(), corev1.EventTypeWarning, "PrecacheDNSLoop", "precache: %s; fix: %s", res.Summary, res.Fix)
	} else {
		a.recorder.Eventf(a.nodeRef(), corev1.EventTypeNormal, "PrecacheDNSLoopResolved", "precache: %s", res.Summary)
	}
}

func (a *Agent) nodeRef() *corev1.ObjectReference {
	return &corev1.ObjectReference{Kind: "Node", Name: a.cfg.NodeName, UID: "", APIVersion: "v1"}
}

func (a *Agent) failed(_ context.Context, why string, err error) {
	a.mu.Lock()
	first := !a.failing || a.lastError != err.Error()
	a.failing, a.lastError = true, err.Error()
	a.mu.Unlock()
	a.log.Warn("reconcile failed", zap.String("reason", why), zap.Error(err))
	if first && a.recorder != nil && a.cfg.NodeName != "" {
		a.recorder.Eventf(a.nodeRef(), corev1.EventTypeWarning, "Precache"+why, "precache: %s", firstLine(err.Error()))
	}
}

func (a *Agent) recovered(_ context.Context, msg string) {
	a.mu.Lock()
	was := a.failing
	a.failing, a.ready, a.lastError = false, true, ""
	a.mu.Unlock()
	if was && a.recorder != nil && a.cfg.NodeName != "" {
		a.recorder.Eventf(a.nodeRef(), corev1.EventTypeNormal, "PrecacheRecovered", "precache: %s", msg)
	}
}

func firstLine(s string) string {
	for i := range s {
		if s[i] == '\n' {
			return s[:i]
		}
	}
	return s
}

func (a *Agent) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(a.metrics.reg, promhttp.HandlerOpts{}))
	if a.cfg.Profiling {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	}
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		a.mu.Lock()
		ready, failing, last := a.ready, a.failing, a.lastError
		a.mu.Unlock()
		if !ready || failing {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "not ready: %s\n", last)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	return mux
}
