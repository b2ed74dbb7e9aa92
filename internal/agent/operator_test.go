package agent

import (
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/tools/cache"

	"github.com/precache/precache/internal/cluster"
	"github.com/precache/precache/internal/manifest"
)

// TestOperatorImageSet: the operator with an ImageSet runs calico-node by digest only; the
// agent learns the release from the Installation and the ImageSet (read once, not per
// reconcile), pins the images under "repo:tag" and "repo@sha256:…", and reads again when
// they did not say (the ImageSet may come after the DaemonSet's change).
func TestOperatorImageSet(t *testing.T) {
	t.Parallel()
	const v = "v3.30.2"
	s := newFakeStore()
	set, err := manifest.Build(manifest.Options{Version: v, Variant: manifest.VariantOperator})
	if err != nil {
		t.Fatal(err)
	}
	digests := map[string]string{} // "calico/node" → digest
	refs := map[string]string{}    // component → repo@digest
	for _, img := range set {
		d := s.Publish(img.Ref.String()).Digest
		digests[img.Ref.Path()] = d.String()
		refs[img.Ref.Base()] = img.Ref.DigestName(d)
	}

	a := New(Config{})
	ds := cache.NewStore(cache.MetaNamespaceKeyFunc)
	if err := ds.Add(&appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: "calico-system", Name: "calico-node"},
		Spec: appsv1.DaemonSetSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{{Name: "install-cni", Image: refs["cni"]}},
			Containers:     []corev1.Container{{Name: "calico-node", Image: refs["node"]}},
		}}},
	}); err != nil {
		t.Fatal(err)
	}
	a.dsListers = []cacheLister{{ns: "calico-system", store: ds}}
	a.podListers = []cacheLister{{ns: "calico-system", store: cache.NewStore(cache.MetaNamespaceKeyFunc)}}
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{
		cluster.Installations: "InstallationList", cluster.ImageSets: "ImageSetList",
	})
	a.cfg.Clients.Dynamic = dyn

	// The DaemonSet changed before the operator's objects say which release it is.
	if err := a.reconcile(t.Context(), s); err == nil {
		t.Fatal("reconcile without a version source succeeded")
	}
	var images []any
	for path, d := range digests {
		images = append(images, map[string]any{"image": path, "digest": d})
	}
	for gvr, obj := range map[schema.GroupVersionResource]map[string]any{
		cluster.ImageSets: {"apiVersion": "operator.tigera.io/v1", "kind": "ImageSet", "metadata": map[string]any{"name": "calico-" + v},
			"spec": map[string]any{"images": images}},
		cluster.Installations: {"apiVersion": "operator.tigera.io/v1", "kind": "Installation", "metadata": map[string]any{"name": "default"},
			"status": map[string]any{"calicoVersion": v, "imageSet": "calico-" + v}},
	} {
		if _, err := dyn.Resource(gvr).Create(t.Context(), &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.reconcile(t.Context(), s); err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"node", "cni"} {
		for _, name := range []string{"quay.io/calico/" + c + ":" + v, refs[c]} {
			if l := s.labels(t, name); !pinnedByUs(l) {
				t.Errorf("%s: labels %v", name, l)
			}
		}
	}
	reads := len(dyn.Actions())
	if err := a.reconcile(t.Context(), s); err != nil {
		t.Fatal(err)
	}
	if n := len(dyn.Actions()) - reads; n != 0 {
		t.Errorf("a reconcile with the same workload images read the operator's objects again (%d requests)", n)
	}
}
