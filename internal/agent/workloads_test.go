package agent

import (
	"errors"
	"slices"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"

	pcache "github.com/precache/precache/internal/cache"
	"github.com/precache/precache/internal/cluster"
)

// releaseNode is calico-node as the release manifest calico.yaml renders it: cni in the
// upgrade-ipam and install-cni init containers, node in mount-bpffs and the main container.
func releaseNode(ns, node, cni string) *appsv1.DaemonSet {
	return &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "calico-node", UID: "ds-" + types.UID(ns), Generation: 1},
		Spec: appsv1.DaemonSetSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{{Name: "upgrade-ipam", Image: cni}, {Name: "install-cni", Image: cni}, {Name: "mount-bpffs", Image: node}},
			Containers:     []corev1.Container{{Name: "calico-node", Image: node}},
		}}},
	}
}

func deploy(ns, name, image string) *appsv1.Deployment {
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: appsv1.DeploymentSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
			Containers: []corev1.Container{{Name: name, Image: image}},
		}}},
	}
}

// agentOn is an agent whose informer caches hold ds and whose API serves objs.
func agentOn(t *testing.T, ds *appsv1.DaemonSet, objs ...runtime.Object) (*Agent, *fake.Clientset) {
	t.Helper()
	kube := fake.NewClientset(objs...)
	a := New(Config{Clients: cluster.Clients{Kube: kube}, NodeName: "n1"})
	dsStore := cache.NewStore(cache.MetaNamespaceKeyFunc)
	if err := dsStore.Add(ds); err != nil {
		t.Fatal(err)
	}
	a.dsListers = []cacheLister{{ns: ds.Namespace, store: dsStore}}
	a.podListers = []cacheLister{{ns: ds.Namespace, store: cache.NewStore(cache.MetaNamespaceKeyFunc)}}
	return a, kube
}

func refsOf(t *testing.T, d *cluster.Discovery) []string {
	t.Helper()
	var out []string
	for _, img := range d.Images {
		out = append(out, img.Ref.TagName())
	}
	slices.Sort(out)
	return out
}

// TestSetIsWhatTheClusterRuns: the agent's set is what the Calico workloads run — the
// watched calico-node DaemonSet and the Deployments and csi-node-driver it reads — not the
// catalog's list: a manifest install without a calico-typha Deployment gets no typha, and a
// component from its own repository is kept from there. Only when they cannot be read does
// the catalog stand in.
func TestSetIsWhatTheClusterRuns(t *testing.T) {
	t.Parallel()
	const v = "v3.30.2"
	dh := func(c string) string { return "docker.io/calico/" + c + ":" + v }
	quay := func(c string) string { return "quay.io/calico/" + c + ":" + v }
	forbidden := func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Group: "apps", Resource: "deployments"}, "calico-kube-controllers", errors.New("RBAC"))
	}
	tests := []struct {
		name    string
		ds      *appsv1.DaemonSet
		objs    []runtime.Object
		reactor k8stesting.ReactionFunc
		want    []string
	}{
		{
			name: "calico.yaml: no calico-typha Deployment, no typha",
			ds:   releaseNode("kube-system", dh("node"), dh("cni")),
			objs: []runtime.Object{deploy("kube-system", "calico-kube-controllers", dh("kube-controllers"))},
			want: []string{dh("cni"), dh("kube-controllers"), dh("node")},
		},
		{
			name: "calico-typha.yaml: typha",
			ds:   releaseNode("kube-system", dh("node"), dh("cni")),
			objs: []runtime.Object{deploy("kube-system", "calico-kube-controllers", dh("kube-controllers")), deploy("kube-system", "calico-typha", dh("typha"))},
			want: []string{dh("cni"), dh("kube-controllers"), dh("node"), dh("typha")},
		},
		{
			name: "kube-controllers from a repository of its own (Kubespray's calico_kube_controllers_image_repo)",
			ds:   releaseNode("kube-system", "registry.local:5000/kubespray/calico/node:"+v, "registry.local:5000/kubespray/calico/cni:"+v),
			objs: []runtime.Object{deploy("kube-system", "calico-kube-controllers", "registry.local:5000/controllers/kube-controllers:"+v)},
			want: []string{"registry.local:5000/controllers/kube-controllers:" + v, "registry.local:5000/kubespray/calico/cni:" + v, "registry.local:5000/kubespray/calico/node:" + v},
		},
		{
			name: "the operator: csi-node-driver and the Deployments in calico-system",
			ds: &appsv1.DaemonSet{
				ObjectMeta: metav1.ObjectMeta{Namespace: "calico-system", Name: "calico-node", Generation: 1},
				Spec: appsv1.DaemonSetSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
					InitContainers: []corev1.Container{{Name: "flexvol-driver", Image: quay("pod2daemon-flexvol")}, {Name: "install-cni", Image: quay("cni")}},
					Containers:     []corev1.Container{{Name: "calico-node", Image: quay("node")}},
				}}},
			},
			objs: []runtime.Object{
				&appsv1.DaemonSet{
					ObjectMeta: metav1.ObjectMeta{Namespace: "calico-system", Name: "csi-node-driver"},
					Spec: appsv1.DaemonSetSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{
						{Name: "calico-csi", Image: quay("csi")}, {Name: "csi-node-driver-registrar", Image: quay("node-driver-registrar")}}}}},
				},
				deploy("calico-system", "calico-kube-controllers", quay("kube-controllers")),
				deploy("calico-system", "calico-typha", quay("typha")),
			},
			want: []string{quay("cni"), quay("csi"), quay("kube-controllers"), quay("node"), quay("node-driver-registrar"), quay("pod2daemon-flexvol"), quay("typha")},
		},
		{
			name:    "the Deployments cannot be read: the catalog stands in",
			ds:      releaseNode("kube-system", dh("node"), dh("cni")),
			objs:    []runtime.Object{deploy("kube-system", "calico-kube-controllers", dh("kube-controllers"))},
			reactor: forbidden,
			want:    []string{dh("cni"), dh("kube-controllers"), dh("node"), dh("typha")},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			slices.Sort(tt.want)
			a, kube := agentOn(t, tt.ds, tt.objs...)
			if tt.reactor != nil {
				kube.PrependReactor("get", "deployments", tt.reactor)
			}
			var got []string
			a.cfg.OnSetRight = func(results []pcache.Result, _ *cluster.Discovery) {
				for _, r := range results {
					got = append(got, r.Image.Ref.TagName())
				}
			}
			d, err := a.discover(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if refs := refsOf(t, d); !slices.Equal(refs, tt.want) {
				t.Fatalf("the agent wants %v\nwant %v", refs, tt.want)
			}
			s := newFakeStore()
			for _, r := range tt.want {
				s.Publish(r)
			}
			s.Publish(dh("typha")) // the registry has it: only the set decides
			if err := a.reconcile(t.Context(), s); err != nil {
				t.Fatal(err)
			}
			slices.Sort(got)
			if !slices.Equal(got, tt.want) {
				t.Errorf("made right %v, want %v", got, tt.want)
			}
			if !slices.Contains(tt.want, dh("typha")) {
				if _, err := s.Image(t.Context(), dh("typha")); !errors.Is(err, pcache.ErrNotFound) {
					t.Errorf("a record of %s: %v", dh("typha"), err)
				}
			}
		})
	}
}

// TestWorkloadsAreReadWhenTheyMayHaveChanged: Calico's Deployments are read at the first
// reconcile, when calico-node's spec changes (an upgrade), when this node's calico-node pod
// is replaced (the rollout reaching the node, before old images are unpinned) and at each
// resync — so a kube-controllers upgrade reaches the set — and not on the other
// reconciles (a DaemonSet status update during a rollout, a containerd event).
func TestWorkloadsAreReadWhenTheyMayHaveChanged(t *testing.T) {
	t.Parallel()
	kc := func(v string) string { return "docker.io/calico/kube-controllers:" + v }
	ds := releaseNode("kube-system", "docker.io/calico/node:v3.30.2", "docker.io/calico/cni:v3.30.2")
	a, kube := agentOn(t, ds, deploy("kube-system", "calico-kube-controllers", kc("v3.30.2")))
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "calico-node-a", UID: "pod-1"},
		Spec:       corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Name: "calico-node", Image: "docker.io/calico/node:v3.30.2"}}},
	}
	if err := a.podListers[0].store.Add(pod); err != nil {
		t.Fatal(err)
	}
	seen := 0
	step := func(what string, reads bool, want, notWant string) {
		t.Helper()
		d, err := a.discover(t.Context())
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		n := len(kube.Actions()) - seen
		seen = len(kube.Actions())
		if reads != (n > 0) {
			t.Errorf("%s: %d API requests, want reads: %t", what, n, reads)
		}
		refs := refsOf(t, d)
		if !slices.Contains(refs, want) || slices.Contains(refs, notWant) {
			t.Errorf("%s: the set %v, want %s and not %s", what, refs, want, notWant)
		}
	}
	setDeployment := func(image string) {
		t.Helper()
		if _, err := kube.AppsV1().Deployments("kube-system").Update(t.Context(), deploy("kube-system", "calico-kube-controllers", image), metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		seen = len(kube.Actions())
	}
	setDS := func(change func(*appsv1.DaemonSet)) {
		t.Helper()
		ds = ds.DeepCopy()
		change(ds)
		if err := a.dsListers[0].store.Update(ds); err != nil {
			t.Fatal(err)
		}
	}

	step("the first reconcile", true, kc("v3.30.2"), "docker.io/calico/typha:v3.30.2")
	step("nothing changed", false, kc("v3.30.2"), "")
	setDS(func(ds *appsv1.DaemonSet) { ds.ResourceVersion = "2"; ds.Status.NumberReady = 3 })
	step("calico-node's status changed", false, kc("v3.30.2"), "")

	setDeployment(kc("v3.30.3"))
	step("kube-controllers upgraded alone, before the resync", false, kc("v3.30.2"), "")
	a.mu.Lock()
	a.workloads.readAt = time.Now().Add(-a.cfg.Resync)
	a.mu.Unlock()
	step("kube-controllers upgraded alone, at the resync", true, kc("v3.30.3"), kc("v3.30.2"))

	// An upgrade applied as kubectl apply -f calico.yaml does: the DaemonSet first.
	setDS(func(ds *appsv1.DaemonSet) {
		ds.Generation = 2
		for i := range ds.Spec.Template.Spec.Containers {
			ds.Spec.Template.Spec.Containers[i].Image = "docker.io/calico/node:v3.30.4"
		}
	})
	step("calico-node's spec changed", true, kc("v3.30.3"), "")
	setDeployment(kc("v3.30.4"))
	step("kube-controllers changed a moment after calico-node", false, kc("v3.30.3"), "")
	pod = pod.DeepCopy()
	pod.UID, pod.Spec.Containers[0].Image = "pod-2", "docker.io/calico/node:v3.30.4"
	if err := a.podListers[0].store.Update(pod); err != nil {
		t.Fatal(err)
	}
	step("this node's calico-node replaced", true, kc("v3.30.4"), kc("v3.30.3"))

	// A failed read keeps what was read: the set does not fall back to the catalog.
	kube.PrependReactor("get", "deployments", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewServiceUnavailable("the API server is restarting")
	})
	a.mu.Lock()
	a.workloads.readAt = time.Now().Add(-a.cfg.Resync)
	a.mu.Unlock()
	step("a resync whose read fails", true, kc("v3.30.4"), "docker.io/calico/typha:v3.30.4")
	step("the next reconcile after the failed read", false, kc("v3.30.4"), "")
}
