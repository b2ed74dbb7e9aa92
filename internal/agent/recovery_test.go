package agent

import (
	"os"
	"path/filepath"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"

	"github.com/precache/precache/internal/cluster"
	"github.com/precache/precache/internal/manifest"
)

// kubeProxy is kubeadm's kube-proxy DaemonSet (cmd/kubeadm/app/phases/addons/proxy/
// manifests.go at v1.37.2: kube-system/kube-proxy, k8s-app: kube-proxy, one container),
// at generation gen, with a status that says whether the rollout of that generation is done.
func kubeProxy(version string, gen int64, rolledOut bool) *appsv1.DaemonSet {
	ds := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "kube-proxy", Generation: gen, Labels: map[string]string{"k8s-app": "kube-proxy"}},
		Spec: appsv1.DaemonSetSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
			Containers: []corev1.Container{{Name: "kube-proxy", Image: "registry.k8s.io/kube-proxy:" + version}},
		}}},
		Status: appsv1.DaemonSetStatus{ObservedGeneration: gen, DesiredNumberScheduled: 3, UpdatedNumberScheduled: 3, NumberAvailable: 3},
	}
	if !rolledOut {
		ds.Status.UpdatedNumberScheduled = 1 // one node of three runs the new pod
	}
	return ds
}

// coreDNS is Kubespray's coredns Deployment (coredns-deployment.yml.j2: kube-system/coredns,
// k8s-app: kube-dns, two replicas).
func coreDNS(version string, gen int64, rolledOut bool) *appsv1.Deployment {
	two := int32(2)
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "coredns", Generation: gen, Labels: map[string]string{"k8s-app": "kube-dns"}},
		Spec: appsv1.DeploymentSpec{Replicas: &two, Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
			Containers: []corev1.Container{{Name: "coredns", Image: "registry.k8s.io/coredns/coredns:" + version}},
		}}},
		Status: appsv1.DeploymentStatus{ObservedGeneration: gen, Replicas: 2, UpdatedReplicas: 2, AvailableReplicas: 2},
	}
	if !rolledOut {
		d.Status.Replicas, d.Status.UpdatedReplicas = 3, 1 // surge: one new, two old
	}
	return d
}

// TestRecoverySetUpgrades: the agent keeps the cluster's kube-proxy and CoreDNS and the
// node's static pods; a new image named by a workload's spec is pulled and pinned at once,
// the old one stays pinned until the workload's rollout is done; a static pod's old image
// is let go as soon as the manifest on disk names the new one.
func TestRecoverySetUpgrades(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	write := func(rel, content string) {
		t.Helper()
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// Kubespray's worker: its kubelet config and nginx-proxy static pod
	// (roles/kubernetes/node/templates/manifests/nginx-proxy.manifest.j2, abridged).
	write("etc/kubernetes/kubelet-config.yaml", "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nstaticPodPath: /etc/kubernetes/manifests\n")
	nginx := func(tag string) string {
		return "apiVersion: v1\nkind: Pod\nmetadata:\n  name: nginx-proxy\n  namespace: kube-system\n  labels:\n    addonmanager.kubernetes.io/mode: Reconcile\n    k8s-app: kube-nginx\nspec:\n  hostNetwork: true\n  containers:\n  - name: nginx-proxy\n    image: docker.io/library/nginx:" + tag + "\n"
	}
	write("etc/kubernetes/manifests/nginx-proxy.yml", nginx("1.28.0-alpine"))

	a, s, _ := newTestAgent(t, Config{Root: root, KubeletConfig: "/etc/kubernetes/kubelet-config.yaml"}, running, "docker.io/calico/node:"+running)
	dsStore := cache.NewStore(cache.MetaNamespaceKeyFunc)
	depStore := cache.NewStore(cache.MetaNamespaceKeyFunc)
	a.addonStores = []cache.Store{dsStore, depStore}
	for _, ref := range []string{"registry.k8s.io/kube-proxy:v1.36.1", "registry.k8s.io/kube-proxy:v1.37.2",
		"registry.k8s.io/coredns/coredns:v1.14.2", "registry.k8s.io/coredns/coredns:v1.14.3",
		"docker.io/library/nginx:1.28.0-alpine", "docker.io/library/nginx:1.30.1-alpine"} {
		s.Publish(ref)
	}
	set := func(objs ...any) {
		t.Helper()
		for _, o := range objs {
			st := dsStore
			if _, ok := o.(*appsv1.Deployment); ok {
				st = depStore
			}
			if err := st.Update(o); err != nil {
				t.Fatal(err)
			}
		}
	}
	reconcile := func() {
		t.Helper()
		if err := a.reconcile(t.Context(), s); err != nil {
			t.Fatal(err)
		}
	}
	pinned := func(ref string, want bool) {
		t.Helper()
		img, err := s.Image(t.Context(), ref)
		if err != nil {
			if want {
				t.Errorf("%s: %v", ref, err)
			}
			return
		}
		if got := pinnedByUs(img.Labels); got != want {
			t.Errorf("%s pinned by precache = %v, want %v (labels %v)", ref, got, want, img.Labels)
		}
	}

	set(kubeProxy("v1.36.1", 1, true), coreDNS("v1.14.2", 1, true))
	reconcile()
	for _, ref := range []string{"registry.k8s.io/kube-proxy:v1.36.1", "registry.k8s.io/coredns/coredns:v1.14.2", "docker.io/library/nginx:1.28.0-alpine", "docker.io/calico/node:" + running} {
		pinned(ref, true)
	}

	// The upgrades are applied: the specs name the new images; no pod runs them yet.
	set(kubeProxy("v1.37.2", 2, false), coreDNS("v1.14.3", 2, false))
	write("etc/kubernetes/manifests/nginx-proxy.yml", nginx("1.30.1-alpine"))
	reconcile()
	pinned("registry.k8s.io/kube-proxy:v1.37.2", true)
	pinned("registry.k8s.io/coredns/coredns:v1.14.3", true)
	pinned("docker.io/library/nginx:1.30.1-alpine", true)
	pinned("registry.k8s.io/kube-proxy:v1.36.1", true)      // pods still run it
	pinned("registry.k8s.io/coredns/coredns:v1.14.2", true) // two old replicas left
	pinned("docker.io/library/nginx:1.28.0-alpine", false)  // the kubelet starts what is on disk
	pinned("docker.io/calico/node:"+running, true)

	// kube-proxy's rollout is done; CoreDNS's is not.
	set(kubeProxy("v1.37.2", 2, true))
	reconcile()
	pinned("registry.k8s.io/kube-proxy:v1.36.1", false)
	pinned("registry.k8s.io/coredns/coredns:v1.14.2", true)

	// A controller that has not seen the new spec yet says nothing of its rollout.
	stale := coreDNS("v1.14.3", 3, true)
	stale.Status.ObservedGeneration = 2
	set(stale)
	reconcile()
	pinned("registry.k8s.io/coredns/coredns:v1.14.2", true)

	set(coreDNS("v1.14.3", 3, true))
	reconcile()
	pinned("registry.k8s.io/coredns/coredns:v1.14.2", false)
	pinned("registry.k8s.io/coredns/coredns:v1.14.3", true)
}

// TestOnlyNarrowsTheAgent: --only calico keeps the cluster's kube-proxy out of the set, and
// leaves what bootstrap pinned of it alone.
func TestOnlyNarrowsTheAgent(t *testing.T) {
	t.Parallel()
	a, s, _ := newTestAgent(t, Config{Parts: []manifest.Part{manifest.PartCalico}}, running, "docker.io/calico/node:"+running)
	st := cache.NewStore(cache.MetaNamespaceKeyFunc)
	if err := st.Add(kubeProxy("v1.37.2", 1, true)); err != nil {
		t.Fatal(err)
	}
	a.addonStores = []cache.Store{st}
	s.Publish("registry.k8s.io/kube-proxy:v1.36.1")
	s.ensure(t, "registry.k8s.io/kube-proxy:v1.36.1")
	if err := a.reconcile(t.Context(), s); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Image(t.Context(), "registry.k8s.io/kube-proxy:v1.37.2"); err == nil {
		t.Error("kube-proxy pulled under --only calico")
	}
	if l := s.labels(t, "registry.k8s.io/kube-proxy:v1.36.1"); !pinnedByUs(l) {
		t.Errorf("bootstrap's kube-proxy pin was removed: %v", l)
	}
}

func TestRolledOut(t *testing.T) {
	t.Parallel()
	if !daemonSetRolledOut(kubeProxy("v1", 4, true)) || daemonSetRolledOut(kubeProxy("v1", 4, false)) {
		t.Error("DaemonSet rollout misjudged")
	}
	ds := kubeProxy("v1", 4, true)
	ds.Status.NumberAvailable = 2
	if daemonSetRolledOut(ds) {
		t.Error("a DaemonSet with an updated pod not available yet counted as rolled out")
	}
	if !deploymentRolledOut(coreDNS("v1", 2, true)) || deploymentRolledOut(coreDNS("v1", 2, false)) {
		t.Error("Deployment rollout misjudged")
	}
	d := coreDNS("v1", 2, true)
	d.Spec.Replicas = nil // defaulted to 1 by the API server
	d.Status = appsv1.DeploymentStatus{ObservedGeneration: 2, Replicas: 1, UpdatedReplicas: 1, AvailableReplicas: 1}
	if !deploymentRolledOut(d) {
		t.Error("a one-replica Deployment rolled out not seen as such")
	}
}

// TestEveryFailureCounts: a reconcile that stops before the images (no Calico in the
// cluster) counts as failed, as one that fails on an image does: the alert on failed
// reconciles sees both.
func TestEveryFailureCounts(t *testing.T) {
	t.Parallel()
	a := New(Config{Clients: cluster.Clients{Kube: fake.NewClientset()}})
	a.dsListers = []cacheLister{{ns: "kube-system", store: cache.NewStore(cache.MetaNamespaceKeyFunc)}}
	if err := a.reconcile(t.Context(), newFakeStore()); err == nil {
		t.Fatal("reconcile without Calico succeeded")
	}
	if got := reconciles(t, a, "failed"); got != 1 {
		t.Errorf("failed reconciles = %v, want 1", got)
	}
}
