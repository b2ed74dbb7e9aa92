package integration

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/precache/precache/internal/cluster"
	"github.com/precache/precache/test/testenv"
)

// The API server every cluster test shares (kube-apiserver + etcd built from the module
// proxy, started by envtest with RBAC on), and an admin kubeconfig for the CLI.
var (
	apiEnv        *envtest.Environment
	adminConfig   *rest.Config
	adminKubecfg  string
	saKubecfg     string
	saConfig      *rest.Config
	kubeClient    kubernetes.Interface
	dynamicClient dynamic.Interface
)

const saUser = "system:serviceaccount:kube-system:precache"

func startAPIServer(dir string) (func(), error) {
	apiEnv = &envtest.Environment{
		BinaryAssetsDirectory: testenv.KubeAssets(),
		CRDDirectoryPaths:     []string{filepath.Join("testdata", "crds")},
		ErrorIfCRDPathMissing: true,
	}
	cfg, err := apiEnv.Start()
	if err != nil {
		return nil, fmt.Errorf("starting kube-apiserver + etcd from %s: %w (run `make tools`)", testenv.KubeAssets(), err)
	}
	stop := func() { _ = apiEnv.Stop() }
	adminConfig = cfg
	if kubeClient, err = kubernetes.NewForConfig(cfg); err != nil {
		return stop, err
	}
	if dynamicClient, err = dynamic.NewForConfig(cfg); err != nil {
		return stop, err
	}
	admin, err := apiEnv.AddUser(envtest.User{Name: "precache-admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return stop, err
	}
	if adminKubecfg, err = writeKubeconfig(dir, "admin", admin); err != nil {
		return stop, err
	}
	sa, err := apiEnv.AddUser(envtest.User{Name: saUser, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"}}, nil)
	if err != nil {
		return stop, err
	}
	saConfig = sa.Config()
	if saKubecfg, err = writeKubeconfig(dir, "sa", sa); err != nil {
		return stop, err
	}
	ctx := testContext()
	for _, ns := range []string{"calico-system", "tigera-operator"} {
		if _, err := kubeClient.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			return stop, err
		}
	}
	// The RBAC precache ships, applied as a user would.
	base := filepath.Join("..", "..", "deploy", "base")
	if err := applyYAML(filepath.Join(base, "serviceaccount.yaml"), filepath.Join(base, "rbac.yaml"), filepath.Join(base, "daemonset.yaml")); err != nil {
		return stop, err
	}
	return stop, nil
}

func writeKubeconfig(dir, name string, u *envtest.AuthenticatedUser) (string, error) {
	data, err := u.KubeConfig()
	if err != nil {
		return "", err
	}
	p := filepath.Join(dir, name+".kubeconfig")
	return p, os.WriteFile(p, data, 0o600)
}

func applyYAML(files ...string) error {
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
		for {
			var u unstructured.Unstructured
			if err := dec.Decode(&u.Object); err != nil {
				if errors.Is(err, io.EOF) {
					break
				}
				return fmt.Errorf("%s: %w", f, err)
			}
			if len(u.Object) == 0 {
				continue
			}
			gvk := u.GroupVersionKind()
			gvr := schema.GroupVersionResource{Group: gvk.Group, Version: gvk.Version, Resource: strings.ToLower(gvk.Kind) + "s"}
			var ri dynamic.ResourceInterface = dynamicClient.Resource(gvr)
			if ns := u.GetNamespace(); ns != "" {
				ri = dynamicClient.Resource(gvr).Namespace(ns)
			}
			if _, err := ri.Create(testContext(), &u, metav1.CreateOptions{}); err != nil {
				return fmt.Errorf("%s: %s %s: %w", f, gvk.Kind, u.GetName(), err)
			}
		}
	}
	return nil
}

// ---- Calico-shaped objects -------------------------------------------------------------

func podSpec(init, main map[string]string) corev1.PodTemplateSpec {
	var spec corev1.PodSpec
	for _, name := range sortedKeys(init) {
		spec.InitContainers = append(spec.InitContainers, corev1.Container{Name: name, Image: init[name]})
	}
	for _, name := range sortedKeys(main) {
		spec.Containers = append(spec.Containers, corev1.Container{Name: name, Image: main[name]})
	}
	return corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"k8s-app": "calico"}}, Spec: spec}
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func daemonSet(ns, name string, init, main map[string]string) *appsv1.DaemonSet {
	return &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"k8s-app": "calico"}},
			Template: podSpec(init, main),
		},
	}
}

func deployment(ns, name string, main map[string]string) *appsv1.Deployment {
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: appsv1.DeploymentSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"k8s-app": "calico"}},
			Template: podSpec(nil, main),
		},
	}
}

// manifestInstall creates what calico.yaml (and Kubespray) creates in kube-system.
func manifestInstall(t *testing.T, registry, version string) {
	t.Helper()
	img := func(c string) string { return registry + "/calico/" + c + ":" + version }
	createDS(t, daemonSet("kube-system", "calico-node",
		map[string]string{"upgrade-ipam": img("cni"), "install-cni": img("cni"), "mount-bpffs": img("node")},
		map[string]string{"calico-node": img("node")}))
	createDeploy(t, deployment("kube-system", "calico-kube-controllers", map[string]string{"calico-kube-controllers": img("kube-controllers")}))
	createDeploy(t, deployment("kube-system", "calico-typha", map[string]string{"calico-typha": img("typha")}))
	createCR(t, cluster.ClusterInformationV1, "default", map[string]any{"spec": map[string]any{"calicoVersion": version}})
}

func createDS(t *testing.T, ds *appsv1.DaemonSet) {
	t.Helper()
	if _, err := kubeClient.AppsV1().DaemonSets(ds.Namespace).Create(t.Context(), ds, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = kubeClient.AppsV1().DaemonSets(ds.Namespace).Delete(testContext(), ds.Name, metav1.DeleteOptions{})
	})
}

func createDeploy(t *testing.T, d *appsv1.Deployment) {
	t.Helper()
	if _, err := kubeClient.AppsV1().Deployments(d.Namespace).Create(t.Context(), d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = kubeClient.AppsV1().Deployments(d.Namespace).Delete(testContext(), d.Name, metav1.DeleteOptions{})
	})
}

func createCR(t *testing.T, gvr schema.GroupVersionResource, name string, fields map[string]any) {
	t.Helper()
	kinds := map[string]string{"clusterinformations": "ClusterInformation", "installations": "Installation", "imagesets": "ImageSet"}
	obj := map[string]any{"apiVersion": gvr.Group + "/" + gvr.Version, "kind": kinds[gvr.Resource], "metadata": map[string]any{"name": name}}
	for k, v := range fields {
		obj[k] = v
	}
	if _, err := dynamicClient.Resource(gvr).Create(t.Context(), &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dynamicClient.Resource(gvr).Delete(testContext(), name, metav1.DeleteOptions{}) })
}

// discovered is `precache images -o json` with a kubeconfig.
type discoveredJSON struct {
	Version       string   `json:"version"`
	Variant       string   `json:"variant"`
	Disagreements []string `json:"disagreements"`
	Images        []struct {
		Ref          string `json:"ref"`
		Source       string `json:"source"`
		DigestSource string `json:"digestSource"`
	} `json:"images"`
}

func discover(t *testing.T, kubeconfig string) discoveredJSON {
	t.Helper()
	n := &node{t: t, Containerd: &testenv.Containerd{Address: "/nonexistent"}}
	r := n.precache(nil, "images", "--kubeconfig", kubeconfig, "-o", "json")
	if r.code != 0 {
		t.Fatalf("precache images --kubeconfig: exit %d\n%s", r.code, r.stderr)
	}
	var d discoveredJSON
	if err := json.Unmarshal([]byte(r.stdout), &d); err != nil {
		t.Fatalf("%v\n%s", err, r.stdout)
	}
	return d
}

func imageRefs(d discoveredJSON) []string {
	var out []string
	for _, img := range d.Images {
		out = append(out, img.Ref)
	}
	slices.Sort(out)
	return out
}

// ---- tests -------------------------------------------------------------------------------

func TestDiscoveryManifestInstall(t *testing.T) {
	for _, tc := range []struct{ registry, want string }{
		{"docker.io", "docker.io"},
		{"registry.local:5000/kubespray", "registry.local:5000/kubespray"},
	} {
		t.Run(tc.registry, func(t *testing.T) {
			manifestInstall(t, tc.registry, "v3.28.1")
			d := discover(t, adminKubecfg)
			want := []string{tc.want + "/calico/cni:v3.28.1", tc.want + "/calico/kube-controllers:v3.28.1", tc.want + "/calico/node:v3.28.1", tc.want + "/calico/typha:v3.28.1"}
			if got := imageRefs(d); d.Version != "v3.28.1" || d.Variant != "manifest" || !slices.Equal(got, want) {
				t.Fatalf("discovered %s %s %v\nwant v3.28.1 manifest %v", d.Version, d.Variant, got, want)
			}
			for _, img := range d.Images {
				if !strings.Contains(img.Source, "kube-system/calico-") {
					t.Errorf("%s: source %q, want the spec it was read from", img.Ref, img.Source)
				}
			}
		})
	}
}

func TestDiscoveryOperatorInstall(t *testing.T) {
	for _, registry := range []string{"quay.io", "registry.local:5000/tigera-mirror"} {
		t.Run(registry, func(t *testing.T) { operatorInstall(t, registry) })
	}
}

func operatorInstall(t *testing.T, registry string) {
	const v = "v3.30.2"
	q := func(c string) string { return registry + "/calico/" + c + ":" + v }
	createDS(t, daemonSet("calico-system", "calico-node",
		map[string]string{"flexvol-driver": q("pod2daemon-flexvol"), "install-cni": q("cni")},
		map[string]string{"calico-node": q("node")}))
	createDS(t, daemonSet("calico-system", "csi-node-driver", nil, map[string]string{"calico-csi": q("csi"), "csi-node-driver-registrar": q("node-driver-registrar")}))
	createDeploy(t, deployment("calico-system", "calico-kube-controllers", map[string]string{"calico-kube-controllers": q("kube-controllers")}))
	createDeploy(t, deployment("calico-system", "calico-typha", map[string]string{"calico-typha": q("typha")}))
	createDeploy(t, deployment("tigera-operator", "tigera-operator", map[string]string{"tigera-operator": "quay.io/tigera/operator:v1.38.3"}))
	createCR(t, cluster.Installations, "default", map[string]any{"spec": map[string]any{}, "status": map[string]any{
		"calicoVersion": v, "variant": "Calico", "computed": map[string]any{"registry": registry + "/", "imagePath": "calico"}}})
	nodeDigest := "sha256:" + strings.Repeat("a", 64)
	csiDigest := "sha256:" + strings.Repeat("b", 64)
	createCR(t, cluster.ImageSets, "calico-"+v, map[string]any{"spec": map[string]any{"images": []any{
		map[string]any{"image": "calico/node", "digest": nodeDigest},
		map[string]any{"image": "calico/csi", "digest": csiDigest},
	}}})

	d := discover(t, adminKubecfg)
	if d.Version != v || d.Variant != "operator" {
		t.Fatalf("discovered %s %s, want %s operator", d.Version, d.Variant, v)
	}
	// The specs' images, the rest of the operator's set from the catalog under the same
	// registry, and the ImageSet's digests.
	want := []string{
		q("cni"), q("csi") + "@" + csiDigest, q("goldmane"), q("key-cert-provisioner"), q("kube-controllers"),
		q("node") + "@" + nodeDigest, q("node-driver-registrar"), q("pod2daemon-flexvol"), q("typha"),
		q("apiserver"), q("whisker"), q("whisker-backend"),
	}
	slices.Sort(want)
	if got := imageRefs(d); !slices.Equal(got, want) {
		t.Fatalf("images\n got %v\nwant %v", got, want)
	}
}

func TestDiscoveryMidUpgrade(t *testing.T) {
	img := func(c string) string { return "docker.io/calico/" + c + ":v3.29.1" }
	createDS(t, daemonSet("kube-system", "calico-node", map[string]string{"install-cni": img("cni")}, map[string]string{"calico-node": img("node")}))
	createCR(t, cluster.ClusterInformationV1, "default", map[string]any{"spec": map[string]any{"calicoVersion": "v3.28.1"}})
	d := discover(t, adminKubecfg)
	if d.Version != "v3.29.1" || len(d.Disagreements) != 1 || !strings.Contains(d.Disagreements[0], "v3.28.1") {
		t.Fatalf("version %s, disagreements %v: want v3.29.1 (the DaemonSet) and the ClusterInformation's v3.28.1 reported", d.Version, d.Disagreements)
	}
	n := &node{t: t, Containerd: &testenv.Containerd{Address: "/nonexistent"}}
	r := n.precache(nil, "images", "--kubeconfig", adminKubecfg)
	if !strings.Contains(r.stdout, "DISAGREEMENT") {
		t.Errorf("table output does not show the disagreement:\n%s", r.stdout)
	}
}

// TestDiscoveryAsServiceAccount: with deploy/'s RBAC, the agent's ServiceAccount can read
// everything discovery needs, and cannot read Secrets.
func TestDiscoveryAsServiceAccount(t *testing.T) {
	manifestInstall(t, "docker.io", "v3.28.1")
	d := discover(t, saKubecfg)
	if d.Version != "v3.28.1" || len(d.Images) != 4 {
		t.Fatalf("as the ServiceAccount: %s %v", d.Version, imageRefs(d))
	}
	sa, err := kubernetes.NewForConfig(saConfig)
	if err != nil {
		t.Fatal(err)
	}
	_, err = sa.CoreV1().Secrets("kube-system").List(t.Context(), metav1.ListOptions{})
	if !apierrors.IsForbidden(err) {
		t.Fatalf("listing secrets as the ServiceAccount: %v, want Forbidden", err)
	}
	_, err = sa.CoreV1().Secrets("kube-system").Get(t.Context(), "anything", metav1.GetOptions{})
	if !apierrors.IsForbidden(err) {
		t.Fatalf("getting a secret as the ServiceAccount: %v, want Forbidden", err)
	}
	// Nor other DaemonSets than Calico's.
	_, err = sa.AppsV1().DaemonSets("kube-system").Get(t.Context(), "kube-proxy", metav1.GetOptions{})
	if !apierrors.IsForbidden(err) {
		t.Fatalf("getting DaemonSet kube-proxy as the ServiceAccount: %v, want Forbidden", err)
	}
}

// TestBootstrapFromCluster: bootstrap reads the set from the API, pulls, records state;
// without the API it falls back to the flags, then to the recorded state, and says so.
func TestBootstrapFromCluster(t *testing.T) {
	manifestInstall(t, "docker.io", dockerVersion)
	n := newNode(t)
	r := n.precache(nil, "bootstrap", "--kubeconfig", adminKubecfg)
	if r.code != 0 || !strings.Contains(r.stdout, "image set: cluster") || !strings.Contains(r.stdout, "4 pulled") {
		t.Fatalf("bootstrap from the cluster: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	for _, img := range calicoSet(t, dockerVersion) {
		n.assertRight(img.Ref.TagName(), calico[img.Ref.String()])
	}

	dead := []string{"KUBECONFIG=/nonexistent/kubeconfig"}
	r = n.precache(dead, "bootstrap", "--calico-version", dockerVersion, "--from-cluster")
	if r.code != 0 || !strings.Contains(r.stdout, "image set: flags, because the cluster could not be read") {
		t.Fatalf("fallback to flags: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	r = n.precache(dead, "bootstrap")
	if r.code != 0 || !strings.Contains(r.stdout, "image set: state recorded on this node") || !strings.Contains(r.stdout, "4 already right") {
		t.Fatalf("fallback to the state file: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}

	// No API, no flags, no state: the lock inside the bundle.
	bundleFile := filepath.Join(t.TempDir(), "calico.tar.zst")
	if r := n.precache(nil, "bundle", "--calico-version", dockerVersion, "-o", bundleFile); r.code != 0 {
		t.Fatalf("bundle: %s", r.stderr)
	}
	fresh := newNode(t)
	r = fresh.precache(append(dead, "PRECACHE_STATE_FILE="+filepath.Join(t.TempDir(), "none.json")), "bootstrap", "--bundle", bundleFile)
	if r.code != 0 || !strings.Contains(r.stdout, "image set: the lock inside "+bundleFile) || !strings.Contains(r.stdout, "4 pulled") {
		t.Fatalf("fallback to the bundle's lock: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
}
