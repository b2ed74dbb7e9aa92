// Package agent is `precache agent`, the DaemonSet: it follows the objects that say which
// Calico the cluster runs, and the rest of the node's recovery set (kube-proxy, node-local
// DNS, CoreDNS, tigera-operator; the node's static pods and sandbox image), and keeps this
// node's images right — the running version's and, as soon as an upgrade is applied to the
// workload, the new version's, before the rollout reaches the node. Images of the old
// version stay pinned until this node's calico-node runs the new one (Calico), until the
// workload's rollout is done (the others), or until the files on disk name the new one
// (static pods, sandbox).
package agent

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/pprof"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
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
// precache pinned earlier, so it can unpin those no longer wanted, and the store's own
// news of its records.
type Store interface {
	pcache.Store
	// Managed lists the records marked io.precache.managed=true.
	Managed(ctx context.Context) ([]pcache.Image, error)
	Watcher
}

// Watcher reports changes to the store's image records. The agent reconciles when a
// record of a wanted image changes or goes (crictl rmi, the kubelet's image GC on a
// containerd that ignores pins, someone removing the pin), instead of leaving it wrong
// until the next resync.
type Watcher interface {
	// Events sends the name of each record created, updated or deleted, and "" when
	// changes may have been missed (the stream broke and was set up again); errors say
	// the stream broke. Both channels close when ctx is done.
	Events(ctx context.Context) (<-chan string, <-chan error)
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
	// Parts of the recovery set to keep (--only); empty: every part.
	Parts []manifest.Part
	// ContainerdConfig is containerd's config file, a node path under Root, for the
	// sandbox image ("": nodefiles.DefaultContainerdConfig).
	ContainerdConfig string
	// MetricsAddr serves /metrics, /healthz and /readyz.
	MetricsAddr string
	// Root is the node's root filesystem (the DaemonSet mounts it at /host), for the DNS loop
	// check: its resolvers, and the kubelet's config (clusterDNS, resolvConf).
	Root string
	// KubeletConfig is the kubelet's config file, a node path under Root ("": the first of
	// doctor.KubeletConfigPaths that exists).
	KubeletConfig string
	// Profiling serves net/http/pprof under /debug/pprof/ on MetricsAddr.
	Profiling bool
	// OnSetRight, if set, is called after each reconcile that left every wanted image
	// right, with the set (the state file a node reads after a reboot: it must never
	// record a set that was not made right).
	OnSetRight func([]pcache.Result, *cluster.Discovery)
	Log        *zap.Logger
}

// Agent keeps a node's image cache right.
type Agent struct {
	cfg     Config
	log     *zap.Logger
	metrics *metrics

	dsListers  []cacheLister
	podListers []cacheLister
	// addonStores are the watches of the recovery set's other workloads.
	addonStores []cache.Store
	trigger     chan struct{}
	recorder    record.EventRecorder

	// backoff is the first wait after a failed reconcile (doubling up to a minute);
	// settle is how long store events are collected before they trigger one reconcile.
	backoff, settle time.Duration

	mu        sync.Mutex
	dnsFail   bool
	ready     bool
	failing   bool
	lastError string
	// watched are the record names of the set last made right: a store event about one
	// of them triggers a reconcile.
	watched map[string]bool
	// operator is what was last read to version digest-only references.
	operator *operatorFacts
	// workloads are Calico's workloads besides calico-node, as last read.
	workloads *workloadFacts
	// dns is what the API said of the cluster's DNS, as last read.
	dns *dnsObjects
	// nodeWarnings are the node files last found unusable (logged when they change).
	nodeWarnings []string
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
	return &Agent{cfg: cfg, log: cfg.Log, metrics: newMetrics(), trigger: make(chan struct{}, 1),
		backoff: time.Second, settle: 200 * time.Millisecond}
}

// strip keeps only what discovery reads, so the informer caches stay small (SetTransform).
func strip(obj any) (any, error) {
	switch o := obj.(type) {
	case *appsv1.DaemonSet:
		// The status stays: the recovery set's workloads are unpinned by their rollout.
		o.ManagedFields, o.Annotations, o.Status.Conditions = nil, nil, nil
	case *appsv1.Deployment:
		o.ManagedFields, o.Annotations, o.Status.Conditions = nil, nil, nil
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

	// Watches, restricted to the objects that change first in an upgrade and on this node:
	// the calico-node DaemonSet (by name) and this node's calico-node pod (by node and
	// label), in each namespace. The other workloads are read (withWorkloads).
	var factories []informers.SharedInformerFactory
	onChange := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { a.kick() },
		UpdateFunc: func(any, any) { a.kick() },
		DeleteFunc: func(any) { a.kick() },
	}
	for _, ns := range cluster.Namespaces {
		// A namespace the ServiceAccount is granted nothing in (an overlay for one kind of
		// install) is left out rather than watched by an informer that never syncs.
		probe := cluster.AddonWatch{Kind: "DaemonSet", Namespace: ns, Name: "calico-node"}
		if err := a.mayWatch(ctx, probe, func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", "calico-node").String()
		}); err != nil {
			a.log.Warn("Calico's namespace not watched", zap.String("namespace", ns), zap.Error(err))
			continue
		}
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
	more, err := a.addonInformers(ctx, onChange)
	if err != nil {
		return err
	}
	factories = append(factories, more...)
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
	err = a.loop(ctx, srvErr)
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

// loop reconciles on change, on the jittered resync, on the store's events about wanted
// records, and with backoff after a failure. A failure that says containerd is gone drops
// the connection: the next try dials afresh, rather than waiting on a connection that
// redials a restarted daemon at its own pace.
func (a *Agent) loop(ctx context.Context, srvErr <-chan error) error {
	var (
		store   Store
		closeFn func() error
		unwatch func()
		backoff = a.backoff
	)
	drop := func() {
		if unwatch != nil {
			unwatch()
		}
		if closeFn != nil {
			_ = closeFn()
		}
		store, closeFn, unwatch = nil, nil, nil
	}
	defer drop()
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
				if ctx.Err() != nil {
					continue
				}
				a.failed(ctx, "ContainerdUnreachable", err)
				timer.Reset(backoff)
				backoff = min(backoff*2, time.Minute)
				continue
			}
			store, closeFn, unwatch = s, c, a.startWatch(ctx, s)
		}
		err := a.reconcile(ctx, store)
		if err != nil && ctx.Err() == nil {
			if errors.Is(err, errStore) {
				a.log.Info("containerd is gone; connecting afresh on the next try")
				drop()
			}
			timer.Reset(backoff)
			backoff = min(backoff*2, time.Minute)
			continue
		}
		backoff = a.backoff
		timer.Reset(jitter(a.cfg.Resync))
	}
}

// startWatch runs watch until the returned function is called, which waits for it to end.
func (a *Agent) startWatch(ctx context.Context, w Watcher) func() {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.watch(ctx, w)
	}()
	return func() {
		cancel()
		<-done
	}
}

// watch turns the store's events into reconciles: an event about a record of the set
// last made right (or "": events may have been missed) triggers one reconcile, after
// the events of the next moment are collected (crictl rmi deletes three records). The
// agent's own writes come back as events too; the reconcile they trigger finds
// everything right and does nothing.
func (a *Agent) watch(ctx context.Context, w Watcher) {
	names, errs := w.Events(ctx)
	var settled <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case name, ok := <-names:
			if !ok {
				return
			}
			if name != "" && !a.isWatched(name) {
				continue
			}
			if settled == nil {
				a.log.Debug("image record changed", zap.String("image", name))
				settled = time.After(a.settle)
			}
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			a.log.Info("containerd's image events interrupted; subscribing again", zap.Error(err))
		case <-settled:
			settled = nil
			a.kick()
		}
	}
}

func (a *Agent) isWatched(name string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.watched[name]
}

// errStore marks a reconcile failure that says the store itself is gone.
var errStore = errors.New("image store")

// storeGone reports whether err says containerd cannot be reached (the daemon stopped or
// restarted; the adapter maps gRPC's Unavailable to errdefs.ErrUnavailable), as opposed
// to what is wrong with one image or its registry.
func storeGone(err error) bool {
	return errdefs.IsUnavailable(err) || status.Code(err) == codes.Unavailable
}

func (a *Agent) reconcile(ctx context.Context, store Store) error {
	start := time.Now()
	var (
		d    *cluster.Discovery
		want []manifest.Image
	)
	if a.wants(manifest.PartCalico) {
		var err error
		if d, err = a.discover(ctx); err != nil {
			a.failed(ctx, "NoCalico", err)
			return err
		}
		for _, msg := range d.Disagreements {
			a.log.Info("sources disagree", zap.String("detail", msg))
		}
		want = append(want, d.Images...)
	}
	addons, err := a.addons()
	if err != nil {
		a.failed(ctx, "BadImageReference", err)
		return err
	}
	files, err := a.nodeFiles()
	if err != nil {
		a.failed(ctx, "BadImageReference", err)
		return err
	}
	want = manifest.Merge(want, addons.images, files)
	if a.cfg.SelfImage != "" {
		if ref, err := manifest.ParseRef(a.cfg.SelfImage); err == nil {
			self := manifest.Image{Ref: ref, Source: "the agent's own image"}
			if ref.Digest != "" {
				self.DigestSource, self.ByDigest = self.Source, true // pulled by the digest it names, as the kubelet does
			}
			want = append(want, self)
		}
	}
	want = append(want, a.cfg.Extra...)
	a.metrics.desired.Set(float64(len(want)))

	e := pcache.NewEnsurer(store, pcache.Options{Logger: a.log})
	results, err := e.Ensure(ctx, want)
	present := 0
	for _, r := range results {
		if r.Err != nil {
			a.metrics.failures.WithLabelValues(reason(r.Err)).Inc()
			continue
		}
		present++
		for _, act := range r.Actions {
			if act == pcache.ActionPulled {
				a.metrics.pull.Observe(r.Duration.Seconds())
			}
		}
	}
	a.metrics.present.Set(float64(present))
	a.metrics.pinned.Set(float64(present))
	if err != nil {
		a.failed(ctx, "ImagesNotRight", err)
		if storeGone(err) {
			return fmt.Errorf("%w: %w", errStore, err)
		}
		return err
	}
	if a.cfg.OnSetRight != nil {
		a.cfg.OnSetRight(results, d)
	}

	managed, err := store.Managed(ctx)
	if err != nil {
		a.failed(ctx, "ImagesNotRight", fmt.Errorf("listing the images precache pinned: %w", err))
		if storeGone(err) {
			return fmt.Errorf("%w: %w", errStore, err)
		}
		return err
	}
	// Unpin what precache pinned earlier and is no longer wanted, part by part, once the
	// node no longer needs the old image (settled): until then it is the node's lifeline.
	k := keepOf(results, managed, a.settled(d, results, addons))
	a.mu.Lock()
	a.watched = k.names
	a.mu.Unlock()
	if err := a.unpinStale(ctx, store, managed, k); err != nil {
		if storeGone(err) {
			a.failed(ctx, "ImagesNotRight", err)
			return fmt.Errorf("%w: %w", errStore, err)
		}
		a.log.Warn("unpinning", zap.Error(err))
	}
	a.checkDNS(ctx)
	a.metrics.reconciles.WithLabelValues("ok").Inc()
	a.metrics.lastSuccess.SetToCurrentTime()
	a.recovered(ctx, describeSet(len(want), d, want)+" present, verified, unpacked and pinned")
	if err := releaseMemory(); err != nil {
		a.log.Debug("returning the binary's pages", zap.Error(err))
	}
	version := ""
	if d != nil {
		version = d.Version
	}
	a.log.Info("reconciled", zap.String("version", version), zap.Int("images", len(want)), zap.Duration("took", time.Since(start)))
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

// discover decides what the cluster runs: the watched objects, the other workloads and,
// for digest-only references, the operator's objects.
func (a *Agent) discover(ctx context.Context) (*cluster.Discovery, error) {
	snap := a.snapshot()
	a.withWorkloads(ctx, &snap)
	if err := a.withOperatorFacts(ctx, &snap); err != nil {
		return nil, err
	}
	d, err := cluster.Resolve(snap)
	if err != nil {
		a.forgetOperatorFacts()
		return nil, err
	}
	return d, nil
}

// snapshot builds discovery's input from the informer caches: no API call. It covers
// calico-node only; withWorkloads adds the rest.
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

// runningNode is the calico/node reference of this node's calico-node pod (zero if none).
func (a *Agent) runningNode() manifest.Ref {
	for _, l := range a.podListers {
		for _, obj := range l.store.List() {
			p, ok := obj.(*corev1.Pod)
			if !ok {
				continue
			}
			for _, c := range p.Spec.Containers {
				if ref, err := manifest.ParseRef(c.Image); err == nil && ref.Base() == "node" {
					return ref
				}
			}
		}
	}
	return manifest.Ref{}
}

// runsWanted reports whether this node's calico-node runs the wanted version: by its tag,
// or, for a digest-only reference (the operator with an ImageSet), by the digest the wanted
// calico/node image was made right with.
func runsWanted(running manifest.Ref, d *cluster.Discovery, results []pcache.Result) bool {
	if running.Tag != "" {
		return running.Tag == d.Version
	}
	if running.Digest == "" {
		return false
	}
	for _, r := range results {
		if r.Image.Ref.Name == running.Name && r.Digest == running.Digest {
			return true
		}
	}
	return false
}

// keep is what stays pinned: the record names of the set made right, and its targets.
type keep struct {
	names   map[string]bool
	targets map[digest.Digest]bool
}

// keepOf lists the names the set was made right under: "repo:tag" and "repo@<the digest
// it has now>" of each image (not every digest the repository ever had), and the image-ID
// records ("sha256:<config>") that point at one of those targets. Of the other records
// precache marked, those of a repository in the set whose part is not settled yet (an
// upgrade not rolled out) are kept too.
func keepOf(results []pcache.Result, managed []pcache.Image, settled func(manifest.Part) bool) keep {
	k := keep{names: map[string]bool{}, targets: map[digest.Digest]bool{}}
	for _, r := range results {
		ref := r.Image.Ref
		if tn := ref.TagName(); tn != "" {
			k.names[tn] = true
		}
		for _, d := range []digest.Digest{r.Digest, ref.Digest} {
			if d != "" {
				k.names[ref.DigestName(d)] = true
				k.targets[d] = true
			}
		}
	}
	// Records of repositories the agent does not keep are not the agent's to unpin: what
	// bootstrap keeps beyond the agent's parts (--only), a part gone from the cluster.
	// Repositories are compared without their registry, so a Calico upgrade that moves
	// docker.io → quay.io still unpins the old.
	paths := map[string]manifest.Part{}
	for _, r := range results {
		paths[r.Image.Ref.Path()] = r.Image.Part
	}
	for _, img := range managed {
		if isImageID(img.Name) {
			continue
		}
		ref, err := manifest.ParseRef(img.Name)
		if err == nil {
			if part, ok := keptPath(paths, ref.Path()); ok && (settled == nil || settled(part)) {
				continue
			}
		}
		k.names[img.Name] = true
		k.targets[img.Target.Digest] = true
	}
	for _, img := range managed {
		if isImageID(img.Name) && k.targets[img.Target.Digest] {
			k.names[img.Name] = true
		}
	}
	return k
}

// isImageID: the CRI's image-ID record, named after the config digest ("sha256:…"). It
// also parses as an image reference (docker.io/library/sha256:…), so look at it first.
func isImageID(name string) bool {
	_, err := digest.Parse(name)
	return err == nil
}

// unpinStale drops precache's mark from the records not in k, and their pin when precache
// set it: a pin someone else set (the CRI pins its sandbox image) stays theirs. Only those
// labels are removed; the rest of the record, as it is now in the store, is left alone.
func (a *Agent) unpinStale(ctx context.Context, store Store, managed []pcache.Image, k keep) error {
	for _, img := range managed {
		if k.names[img.Name] {
			continue
		}
		labels := []string{pcache.LabelManaged}
		ours := img.Labels[pcache.LabelPinnedBy] == "true"
		if ours {
			labels = append(labels, pcache.LabelCRIPinned, pcache.LabelPinnedBy)
		}
		if err := store.Unlabel(ctx, img.Name, labels...); err != nil {
			if errors.Is(err, pcache.ErrNotFound) {
				continue // deleted meanwhile: nothing to unpin
			}
			return fmt.Errorf("unpinning %s: %w", img.Name, err)
		}
		if ours {
			a.log.Info("unpinned", zap.String("image", img.Name))
		} else {
			a.log.Info("no longer kept; its pin is not precache's and stays", zap.String("image", img.Name))
		}
	}
	return nil
}

// checkDNS runs doctor's DNS-loop check with doctor's inputs — the node's resolvers, the
// kubelet's clusterDNS and resolvConf, the CoreDNS Service and node-local DNS's ConfigMap —
// so it tells the CoreDNS service IP from node-local DNS and sees where node-local DNS
// forwards: the metric, and an Event when the node becomes (or stops being) one calico-node
// loss away from the loop.
func (a *Agent) checkDNS(ctx context.Context) {
	if a.cfg.Root == "" {
		return
	}
	r, err := doctor.ReadResolvers(a.cfg.Root)
	if err != nil {
		a.metrics.dnsLoop.Set(-1)
		return
	}
	res := doctor.Loop(r, a.clusterDNS(ctx), []string{"precache bootstrap --dns-fallback IP", "a bundle on disk"})
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

// failed records a reconcile that did not make the set right, whatever stopped it
// (containerd unreachable, Calico not found, an image not right): the metric, the log, and
// an Event on the first failure of its kind.
func (a *Agent) failed(_ context.Context, why string, err error) {
	a.metrics.reconciles.WithLabelValues("failed").Inc()
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
