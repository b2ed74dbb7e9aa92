package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"

	pcache "github.com/precache/precache/internal/cache"
	"github.com/precache/precache/internal/cache/cachetest"
	"github.com/precache/precache/internal/cluster"
	"github.com/precache/precache/internal/manifest"
)

const running = "v3.28.1"

// fakeStore is the core's in-memory store plus what the agent needs on top: the list of
// records precache manages, and events it sends when told to.
type fakeStore struct {
	*cachetest.Fake
	mu     sync.Mutex
	names  map[string]bool // every record name ever written through the store
	events chan string
	closed atomic.Bool
}

var _ Store = (*fakeStore)(nil)

func newFakeStore() *fakeStore {
	return &fakeStore{Fake: cachetest.NewFake(), names: map[string]bool{}, events: make(chan string, 16)}
}

func (s *fakeStore) Put(ctx context.Context, img pcache.Image) error {
	s.mu.Lock()
	s.names[img.Name] = true
	s.mu.Unlock()
	return s.Fake.Put(ctx, img)
}

func (s *fakeStore) Managed(ctx context.Context) ([]pcache.Image, error) {
	s.mu.Lock()
	names := make([]string, 0, len(s.names))
	for n := range s.names {
		names = append(names, n)
	}
	s.mu.Unlock()
	slices.Sort(names)
	var out []pcache.Image
	for _, n := range names {
		img, err := s.Image(ctx, n)
		if err == nil && img.Labels[pcache.LabelManaged] == "true" {
			out = append(out, img)
		}
	}
	return out, nil
}

func (s *fakeStore) Events(context.Context) (<-chan string, <-chan error) { return s.events, nil }

func (s *fakeStore) Close() error {
	s.closed.Store(true)
	return nil
}

// publish puts ref in the fake's registry and returns the target and its image ID.
func (s *fakeStore) publish(ref string) (ocispec.Descriptor, digest.Digest) {
	desc := s.Publish(ref)
	return desc, s.ConfigOf(desc.Digest)
}

// ensure makes refs right, as an earlier run of precache would have.
func (s *fakeStore) ensure(t *testing.T, refs ...string) {
	t.Helper()
	var set []manifest.Image
	for _, r := range refs {
		ref := manifest.MustParseRef(r)
		set = append(set, manifest.Image{Ref: ref, ByDigest: ref.Digest != ""})
	}
	if _, err := pcache.NewEnsurer(s, pcache.Options{}).Ensure(t.Context(), set); err != nil {
		t.Fatal(err)
	}
}

func (s *fakeStore) labels(t *testing.T, name string) map[string]string {
	t.Helper()
	img, err := s.Image(t.Context(), name)
	if err != nil {
		t.Fatal(err)
	}
	return img.Labels
}

// deadStore answers every call as a containerd that went away answers.
type deadStore struct {
	*fakeStore
	err error
}

func (s *deadStore) Image(context.Context, string) (pcache.Image, error) {
	return pcache.Image{}, s.err
}
func (s *deadStore) Check(context.Context, ocispec.Descriptor) (pcache.Health, error) {
	return pcache.Health{}, s.err
}
func (s *deadStore) Resolve(context.Context, string) (ocispec.Descriptor, error) {
	return ocispec.Descriptor{}, s.err
}
func (s *deadStore) Fetch(context.Context, string, ocispec.Descriptor) error { return s.err }
func (s *deadStore) Unpack(context.Context, ocispec.Descriptor) error        { return s.err }
func (s *deadStore) Put(context.Context, pcache.Image) error                 { return s.err }
func (s *deadStore) Unlabel(context.Context, string, ...string) error        { return s.err }
func (s *deadStore) Managed(context.Context) ([]pcache.Image, error)         { return nil, s.err }
func (s *deadStore) WithLease(context.Context) (context.Context, func(context.Context) error, error) {
	return nil, nil, s.err
}

func calicoNode(ns, version string) *appsv1.DaemonSet {
	img := func(c string) string { return "docker.io/calico/" + c + ":" + version }
	return &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "calico-node"},
		Spec: appsv1.DaemonSetSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{{Name: "install-cni", Image: img("cni")}},
			Containers:     []corev1.Container{{Name: "calico-node", Image: img("node")}},
		}}},
	}
}

func kubeControllers(ns, version string) *appsv1.Deployment {
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "calico-kube-controllers"},
		Spec: appsv1.DeploymentSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
			Containers: []corev1.Container{{Name: "calico-kube-controllers", Image: "docker.io/calico/kube-controllers:" + version}},
		}}},
	}
}

// newTestAgent is an agent on a manifest install without typha (calico.yaml): its informer
// caches hold the calico-node DaemonSet at version and this node's calico-node pod running
// runs (no pod if empty), the API the calico-kube-controllers Deployment; and a store whose
// registry serves the discovered set.
func newTestAgent(t *testing.T, cfg Config, version, runs string) (*Agent, *fakeStore, *cluster.Discovery) {
	t.Helper()
	if cfg.Clients.Kube == nil {
		cfg.Clients.Kube = fake.NewClientset(kubeControllers("kube-system", version))
	}
	a := New(cfg)
	a.backoff, a.settle = 10*time.Millisecond, 10*time.Millisecond
	ds := cache.NewStore(cache.MetaNamespaceKeyFunc)
	if err := ds.Add(calicoNode("kube-system", version)); err != nil {
		t.Fatal(err)
	}
	pods := cache.NewStore(cache.MetaNamespaceKeyFunc)
	if runs != "" {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "calico-node-x", Labels: map[string]string{"k8s-app": "calico-node"}},
			Spec:       corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Name: "calico-node", Image: runs}}},
		}
		if err := pods.Add(pod); err != nil {
			t.Fatal(err)
		}
	}
	a.dsListers = []cacheLister{{ns: "kube-system", store: ds}}
	a.podListers = []cacheLister{{ns: "kube-system", store: pods}}
	d, err := a.discover(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	s := newFakeStore()
	for _, img := range d.Images {
		s.Publish(img.Ref.String())
	}
	return a, s, d
}

func pinnedByUs(l map[string]string) bool {
	return l[pcache.LabelCRIPinned] == "pinned" && l[pcache.LabelManaged] == "true" && l[pcache.LabelPinnedBy] == "true"
}

func unpinned(l map[string]string) bool {
	return l[pcache.LabelCRIPinned] == "" && l[pcache.LabelManaged] == "" && l[pcache.LabelPinnedBy] == ""
}

// TestUnpinStale: once this node's calico-node runs the wanted version, what precache
// pinned and no longer wants loses precache's labels, and only those; everything the set
// was made right under (its tag, its current digest, its image ID) stays pinned.
func TestUnpinStale(t *testing.T) {
	t.Parallel()
	const self = "docker.io/precache/precache"
	tests := []struct {
		name string
		runs string // this node's calico-node image
		// setup prepares the store and returns the agent's config changes and the checks.
		setup func(t *testing.T, s *fakeStore, cfg *Config) (keep, drop []string)
		// check runs extra assertions after the reconcile.
		check func(t *testing.T, s *fakeStore)
	}{
		{
			name: "a digest-only self image keeps only the wanted digest pinned",
			runs: "docker.io/calico/node:" + running,
			setup: func(t *testing.T, s *fakeStore, cfg *Config) ([]string, []string) {
				old, oldID := s.publish(self + ":v1")
				cur, curID := s.publish(self + ":v2")
				s.ensure(t, self+"@"+old.Digest.String())
				cfg.SelfImage = self + "@" + cur.Digest.String()
				return []string{self + "@" + cur.Digest.String(), curID.String()},
					[]string{self + "@" + old.Digest.String(), oldID.String()}
			},
		},
		{
			name: "a digest-only extra image keeps only the wanted digest pinned",
			runs: "docker.io/calico/node:" + running,
			setup: func(t *testing.T, s *fakeStore, cfg *Config) ([]string, []string) {
				const repo = "quay.io/example/agent-sidecar"
				old, oldID := s.publish(repo + ":a")
				cur, curID := s.publish(repo + ":b")
				s.ensure(t, repo+"@"+old.Digest.String(), repo+"@"+cur.Digest.String())
				cfg.Extra = []manifest.Image{{Ref: manifest.MustParseRef(repo + "@" + cur.Digest.String()), ByDigest: true}}
				return []string{repo + "@" + cur.Digest.String(), curID.String()},
					[]string{repo + "@" + old.Digest.String(), oldID.String()}
			},
		},
		{
			name: "the previous version is unpinned once calico-node runs the new one, image IDs included",
			runs: "docker.io/calico/node:" + running,
			setup: func(t *testing.T, s *fakeStore, _ *Config) ([]string, []string) {
				old, oldID := s.publish("docker.io/calico/node:v3.27.0")
				s.ensure(t, "docker.io/calico/node:v3.27.0")
				return nil, []string{"docker.io/calico/node:v3.27.0", "docker.io/calico/node@" + old.Digest.String(), oldID.String()}
			},
		},
		{
			name: "the rest of the recovery set, pinned by bootstrap, is not the agent's to unpin",
			runs: "docker.io/calico/node:" + running,
			setup: func(t *testing.T, s *fakeStore, _ *Config) ([]string, []string) {
				// bootstrap keeps the whole recovery set; this agent keeps Calico's part.
				kp, kpID := s.publish("registry.k8s.io/kube-proxy:v1.33.0")
				cd, cdID := s.publish("registry.k8s.io/coredns/coredns:v1.12.0")
				s.ensure(t, "registry.k8s.io/kube-proxy:v1.33.0", "registry.k8s.io/coredns/coredns:v1.12.0")
				return []string{"registry.k8s.io/kube-proxy:v1.33.0", "registry.k8s.io/kube-proxy@" + kp.Digest.String(), kpID.String(),
					"registry.k8s.io/coredns/coredns:v1.12.0", "registry.k8s.io/coredns/coredns@" + cd.Digest.String(), cdID.String()}, nil
			},
		},
		{
			name: "an upgrade that moved Calico's registry unpins the old registry's images",
			runs: "docker.io/calico/node:" + running,
			setup: func(t *testing.T, s *fakeStore, _ *Config) ([]string, []string) {
				old, oldID := s.publish("quay.io/calico/node:v3.27.0")
				s.ensure(t, "quay.io/calico/node:v3.27.0")
				return nil, []string{"quay.io/calico/node:v3.27.0", "quay.io/calico/node@" + old.Digest.String(), oldID.String()}
			},
		},
		{
			name: "the previous version stays pinned while calico-node runs it",
			runs: "docker.io/calico/node:v3.27.0",
			setup: func(t *testing.T, s *fakeStore, _ *Config) ([]string, []string) {
				old, oldID := s.publish("docker.io/calico/node:v3.27.0")
				s.ensure(t, "docker.io/calico/node:v3.27.0")
				return []string{"docker.io/calico/node:v3.27.0", "docker.io/calico/node@" + old.Digest.String(), oldID.String()}, nil
			},
		},
		{
			name: "calico-node by digest only: the old version goes once the pod runs the wanted digest",
			setup: func(t *testing.T, s *fakeStore, _ *Config) ([]string, []string) {
				old, oldID := s.publish("docker.io/calico/node:v3.27.0")
				s.ensure(t, "docker.io/calico/node:v3.27.0")
				return nil, []string{"docker.io/calico/node:v3.27.0", "docker.io/calico/node@" + old.Digest.String(), oldID.String()}
			},
		},
		{
			name: "a pin someone else set stays when precache stops wanting the image",
			runs: "docker.io/calico/node:" + running,
			setup: func(t *testing.T, s *fakeStore, cfg *Config) ([]string, []string) {
				const pause = "docker.io/library/pause:3.10"
				desc, id := s.publish(pause)
				// The agent keeps the repository (another tag now), so 3.10 is its to let go.
				s.publish("docker.io/library/pause:3.11")
				cfg.Extra = []manifest.Image{{Ref: manifest.MustParseRef("docker.io/library/pause:3.11")}}
				// The CRI pinned its sandbox image; precache wanted it too, earlier.
				if err := s.Put(t.Context(), pcache.Image{Name: pause, Target: desc, Labels: map[string]string{
					pcache.LabelCRIManaged: "managed", pcache.LabelCRIPinned: "pinned"}}); err != nil {
					t.Fatal(err)
				}
				s.ensure(t, pause)
				if l := s.labels(t, pause); l[pcache.LabelManaged] != "true" || l[pcache.LabelPinnedBy] != "" {
					t.Fatalf("set up: %s labels %v", pause, l)
				}
				// The names precache created itself are precache's pins.
				return nil, []string{"docker.io/library/pause@" + desc.Digest.String(), id.String()}
			},
			check: func(t *testing.T, s *fakeStore) {
				l := s.labels(t, "docker.io/library/pause:3.10")
				if l[pcache.LabelCRIPinned] != "pinned" || l[pcache.LabelCRIManaged] != "managed" {
					t.Errorf("the CRI's pin was removed: %v", l)
				}
				if l[pcache.LabelManaged] != "" {
					t.Errorf("still marked as kept by precache: %v", l)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var cfg Config
			a, s, d := newTestAgent(t, cfg, running, tt.runs)
			keepNames, dropNames := tt.setup(t, s, &a.cfg)
			if tt.runs == "" {
				// The operator with an ImageSet: the pod names calico/node by digest only.
				node, _ := s.Resolve(t.Context(), "docker.io/calico/node:"+running)
				a.podListers[0].store.Add(&corev1.Pod{
					ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "calico-node-x"},
					Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "calico-node", Image: "docker.io/calico/node@" + node.Digest.String()}}},
				})
			}
			if err := a.reconcile(t.Context(), s); err != nil {
				t.Fatal(err)
			}
			// Everything discovered is pinned under all three names.
			for _, img := range d.Images {
				rec, err := s.Image(t.Context(), img.Ref.TagName())
				if err != nil {
					t.Fatal(err)
				}
				keepNames = append(keepNames, rec.Name, img.Ref.DigestName(rec.Target.Digest), s.ConfigOf(rec.Target.Digest).String())
			}
			for _, n := range keepNames {
				if l := s.labels(t, n); !pinnedByUs(l) {
					t.Errorf("%s: not pinned: %v", n, l)
				}
			}
			for _, n := range dropNames {
				if l := s.labels(t, n); !unpinned(l) {
					t.Errorf("%s: still pinned: %v", n, l)
				}
			}
			if tt.check != nil {
				tt.check(t, s)
			}
		})
	}
}

// TestUnpinRemovesOnlyLabels: unpinning removes precache's labels and leaves whatever
// else the record has now, including labels set after the agent listed it.
func TestUnpinRemovesOnlyLabels(t *testing.T) {
	t.Parallel()
	a, s, _ := newTestAgent(t, Config{}, running, "docker.io/calico/node:"+running)
	old, _ := s.publish("docker.io/calico/node:v3.27.0")
	s.ensure(t, "docker.io/calico/node:v3.27.0")
	managed, err := s.Managed(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	// Someone labels the record between the agent's list and its unpin.
	if err := s.Put(t.Context(), pcache.Image{Name: "docker.io/calico/node:v3.27.0", Target: old, Labels: map[string]string{"example.com/note": "kept"}}); err != nil {
		t.Fatal(err)
	}
	if err := a.unpinStale(t.Context(), s, managed, keep{names: map[string]bool{}}); err != nil {
		t.Fatal(err)
	}
	l := s.labels(t, "docker.io/calico/node:v3.27.0")
	if !unpinned(l) || l["example.com/note"] != "kept" || l[pcache.LabelCRIManaged] != "managed" {
		t.Errorf("labels after unpin: %v", l)
	}
}

// TestReconnectsWhenContainerdIsGone: a reconcile whose store calls fail as a stopped
// containerd's do drops the connection and opens a new one, rather than retrying forever
// on the old one. A failure that is the image's or the registry's keeps the connection.
func TestReconnectsWhenContainerdIsGone(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		err       error
		reconnect bool
	}{
		{name: "errdefs unavailable (the adapter's mapping)", err: fmt.Errorf("%w: dial unix /run/containerd/containerd.sock: connect: connection refused", errdefs.ErrUnavailable), reconnect: true},
		{name: "gRPC Unavailable", err: status.Error(codes.Unavailable, "connection error: desc = \"transport: Error while dialing\""), reconnect: true},
		{name: "the registry refuses the credentials", err: fmt.Errorf("docker.io/calico/node: %w", pcache.ErrUnauthorized)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var opens, recorded atomic.Int32
			cfg := Config{Resync: time.Hour, OnSetRight: func([]pcache.Result, *cluster.Discovery) { recorded.Add(1) }}
			a, healthy, _ := newTestAgent(t, cfg, running, "docker.io/calico/node:"+running)
			dead := &deadStore{fakeStore: newFakeStore(), err: tt.err}
			a.cfg.Open = func(context.Context) (Store, func() error, error) {
				if opens.Add(1) == 1 {
					return dead, dead.Close, nil
				}
				return healthy, healthy.Close, nil
			}
			ctx, cancel := context.WithCancel(t.Context())
			done := make(chan error, 1)
			go func() { done <- a.loop(ctx, nil) }()
			a.kick()

			if tt.reconnect {
				waitFor(t, 5*time.Second, "a second Open after the store failed", func() bool { return opens.Load() >= 2 })
				if !dead.closed.Load() {
					t.Error("the failed connection was not closed")
				}
				waitFor(t, 5*time.Second, "the set made right on the new connection", func() bool { return recorded.Load() > 0 })
			} else {
				// Several failed reconciles (backoff 10 ms, 20 ms, …) on the same connection.
				waitFor(t, 5*time.Second, "failed reconciles", func() bool {
					return reconciles(t, a, "failed") >= 3
				})
				if n := opens.Load(); n != 1 {
					t.Errorf("Open called %d times for an error that is not the store's", n)
				}
			}
			if !tt.reconnect && (recorded.Load() != 0 || dead.closed.Load()) {
				t.Errorf("state recorded %d times, the connection closed: %t", recorded.Load(), dead.closed.Load())
			}
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestSetNotRightIsNotRecorded: the state file is only told about a set made right.
func TestSetNotRightIsNotRecorded(t *testing.T) {
	t.Parallel()
	var got [][]pcache.Result
	cfg := Config{OnSetRight: func(r []pcache.Result, _ *cluster.Discovery) { got = append(got, r) }}
	a, s, d := newTestAgent(t, cfg, running, "docker.io/calico/node:"+running)
	s.FailFetch = func(ref string, _ int) error {
		if manifest.MustParseRef(ref).Name == d.Images[0].Ref.Name {
			return fmt.Errorf("%s: %w", ref, pcache.ErrUnauthorized)
		}
		return nil
	}
	var se *pcache.SetError
	if err := a.reconcile(t.Context(), s); !errors.As(err, &se) {
		t.Fatalf("reconcile: %v, want a SetError", err)
	}
	if len(got) != 0 {
		t.Fatalf("OnSetRight called for a set that is not right: %v", got)
	}
	s.FailFetch = nil
	if err := a.reconcile(t.Context(), s); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || len(got[0]) != len(d.Images) {
		t.Fatalf("OnSetRight calls: %v", got)
	}
	for _, r := range got[0] {
		if r.Err != nil || r.Digest == "" {
			t.Errorf("recorded result %+v", r)
		}
	}
}

// TestStoreEventsTriggerReconcile: a wanted record deleted or changed in the store is put
// back at once, with the resync an hour away; events about other records do nothing.
func TestStoreEventsTriggerReconcile(t *testing.T) {
	t.Parallel()
	a, s, d := newTestAgent(t, Config{Resync: time.Hour}, running, "docker.io/calico/node:"+running)
	a.cfg.Open = func(context.Context) (Store, func() error, error) { return s, s.Close, nil }
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.loop(ctx, nil) }()
	a.kick()
	oks := func() float64 { return reconciles(t, a, "ok") }
	waitFor(t, 5*time.Second, "the first reconcile", func() bool { return oks() >= 1 })

	tag := d.Images[0].Ref.TagName()
	rec, err := s.Image(t.Context(), tag)
	if err != nil {
		t.Fatal(err)
	}
	id := s.ConfigOf(rec.Target.Digest).String()
	byDigest := d.Images[0].Ref.DigestName(rec.Target.Digest)
	for _, step := range []struct {
		what   string
		change func()
		name   string
	}{
		{"the tag record deleted (crictl rmi)", func() { s.Delete(tag) }, tag},
		{"the digest record deleted", func() { s.Delete(byDigest) }, byDigest},
		{"the image-ID record deleted", func() { s.Delete(id) }, id},
		{"the pin removed", func() { _ = s.Unlabel(t.Context(), tag, pcache.LabelCRIPinned) }, tag},
		{"events may have been missed", func() { s.Delete(tag) }, ""},
	} {
		before := oks()
		step.change()
		s.events <- step.name
		waitFor(t, 2*time.Second, step.what+": repaired", func() bool {
			for _, n := range []string{tag, byDigest, id} {
				img, err := s.Image(t.Context(), n)
				if err != nil || !pinnedByUs(img.Labels) {
					return false
				}
			}
			return oks() > before
		})
	}

	before := oks()
	s.events <- "docker.io/library/busybox:latest"
	s.events <- "sha256:" + digest.FromString("unrelated").Encoded()
	time.Sleep(100 * time.Millisecond)
	if got := oks(); got != before {
		t.Errorf("events about unwanted records triggered %v reconciles", got-before)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestIsImageID(t *testing.T) {
	t.Parallel()
	for name, want := range map[string]bool{
		"sha256:" + digest.FromString("x").Encoded():               true,
		"docker.io/calico/node:v3.28.1":                            false,
		"docker.io/calico/node@" + digest.FromString("x").String(): false,
		"sha256:short": false,
	} {
		if got := isImageID(name); got != want {
			t.Errorf("isImageID(%q) = %t, want %t", name, got, want)
		}
	}
}

// reconciles reads precache_reconciles_total{result=result}.
func reconciles(t *testing.T, a *Agent, result string) float64 {
	t.Helper()
	mfs, err := a.metrics.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "precache_reconciles_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

func waitFor(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, d)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
