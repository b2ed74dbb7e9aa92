package integration

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
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

	"github.com/precache/precache/internal/cache"
	"github.com/precache/precache/internal/cluster"
	"github.com/precache/precache/internal/manifest"
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

// releaseImage matches the image references of the release manifests in testdata/calico.
var releaseImage = regexp.MustCompile(`(docker\.io|quay\.io)/calico/([a-z0-9-]+):v3\.[0-9]+\.[0-9]+`)

// applyRelease creates the workloads of a release manifest kept in testdata/calico (the
// DaemonSets and Deployments of projectcalico/calico's manifests/calico.yaml or
// calico-typha.yaml at the release in the file's name, verbatim), their images moved to
// registry and version as Kubespray's calico_*_image_repo and calico_version would, and
// deletes them when the test ends.
func applyRelease(t testing.TB, file, registry, version string) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "calico", file))
	if err != nil {
		t.Fatal(err)
	}
	data = releaseImage.ReplaceAll(data, []byte(registry+"/calico/${2}:"+version))
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for {
		var u unstructured.Unstructured
		if err := dec.Decode(&u.Object); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			t.Fatalf("%s: %v", file, err)
		}
		if len(u.Object) == 0 {
			continue
		}
		gvr := schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: strings.ToLower(u.GetKind()) + "s"}
		ri := dynamicClient.Resource(gvr).Namespace(u.GetNamespace())
		if _, err := ri.Create(t.Context(), &u, metav1.CreateOptions{}); err != nil {
			t.Fatalf("%s: %s %s: %v", file, u.GetKind(), u.GetName(), err)
		}
		name := u.GetName()
		t.Cleanup(func() { _ = ri.Delete(testContext(), name, metav1.DeleteOptions{}) })
	}
}

// manifestInstall creates what calico-typha.yaml (calico.yaml plus a typha Deployment)
// creates in kube-system, at registry and version, and the ClusterInformation calico-node
// writes when it starts.
func manifestInstall(t testing.TB, registry, version string) {
	t.Helper()
	applyRelease(t, "calico-typha-v3.30.2.yaml", registry, version)
	createCR(t, cluster.ClusterInformationV1, "default", map[string]any{"spec": map[string]any{"calicoVersion": version}})
}

// container is one container of a rendered pod template.
type container struct{ name, image string }

func podTemplate(app string, init, main []container) corev1.PodTemplateSpec {
	var spec corev1.PodSpec
	for _, c := range init {
		spec.InitContainers = append(spec.InitContainers, corev1.Container{Name: c.name, Image: c.image})
	}
	for _, c := range main {
		spec.Containers = append(spec.Containers, corev1.Container{Name: c.name, Image: c.image})
	}
	return corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"k8s-app": app}}, Spec: spec}
}

func daemonSet(ns, name string, init, main []container) *appsv1.DaemonSet {
	return &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"k8s-app": name}},
			Template: podTemplate(name, init, main),
		},
	}
}

func deployment(ns, name string, main ...container) *appsv1.Deployment {
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: appsv1.DeploymentSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"k8s-app": name}},
			Template: podTemplate(name, nil, main),
		},
	}
}

// operatorWorkloads creates what tigera-operator renders in calico-system for a default
// Installation (no BPF, no certificate management), with the names its renderers use
// (tigera/operator pkg/render/node.go, csi.go, typha.go, kubecontrollers at v1.38.3);
// ref gives each component's image reference.
func operatorWorkloads(t *testing.T, ref func(component string) string) {
	t.Helper()
	createDS(t, daemonSet("calico-system", "calico-node",
		[]container{{"flexvol-driver", ref("pod2daemon-flexvol")}, {"install-cni", ref("cni")}},
		[]container{{"calico-node", ref("node")}}))
	createDS(t, daemonSet("calico-system", "csi-node-driver", nil,
		[]container{{"calico-csi", ref("csi")}, {"csi-node-driver-registrar", ref("node-driver-registrar")}}))
	createDeploy(t, deployment("calico-system", "calico-kube-controllers", container{"calico-kube-controllers", ref("kube-controllers")}))
	createDeploy(t, deployment("calico-system", "calico-typha", container{"calico-typha", ref("typha")}))
}

// operatorComponents are the images operatorWorkloads runs.
var operatorComponents = []string{"cni", "csi", "kube-controllers", "node", "node-driver-registrar", "pod2daemon-flexvol", "typha"}

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

func createCR(t testing.TB, gvr schema.GroupVersionResource, name string, fields map[string]any) {
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

// imageSetCR creates the ImageSet calico-<version> (api/v1/imageset_types.go at
// tigera/operator v1.38.3: spec.images[] {image: "calico/node", digest}).
func imageSetCR(t *testing.T, version string, digests map[string]string) {
	t.Helper()
	var images []any
	for _, c := range sortedKeys(digests) {
		images = append(images, map[string]any{"image": "calico/" + c, "digest": digests[c]})
	}
	createCR(t, cluster.ImageSets, "calico-"+version, map[string]any{"spec": map[string]any{"images": images}})
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// discoveredJSON is `precache images -o json` with a kubeconfig.
type discoveredJSON struct {
	Version       string   `json:"version"`
	Variant       string   `json:"variant"`
	Disagreements []string `json:"disagreements"`
	Images        []struct {
		Ref          string `json:"ref"`
		Part         string `json:"part"`
		Source       string `json:"source"`
		DigestSource string `json:"digestSource"`
		TagSource    string `json:"tagSource"`
		ByDigest     bool   `json:"byDigest"`
	} `json:"images"`
}

// discover is `precache images --kubeconfig … -o json`, with args added (--root defaults to
// an empty node root: this machine's own files stay out of the set).
func discover(t *testing.T, kubeconfig string, args ...string) discoveredJSON {
	t.Helper()
	n := &node{t: t, Containerd: &testenv.Containerd{Address: "/nonexistent"}}
	args = append([]string{"images", "--kubeconfig", kubeconfig, "-o", "json", "--root", t.TempDir()}, args...)
	r := n.precache(nil, args...)
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

func sortedRefs(refs ...string) []string {
	slices.Sort(refs)
	return refs
}

// ---- tests -------------------------------------------------------------------------------

// TestDiscoveryManifestInstall: the workloads of the release manifests, as they are. The
// set is what they run: calico.yaml has no typha Deployment, so no typha.
func TestDiscoveryManifestInstall(t *testing.T) {
	needAPI(t)
	for _, tc := range []struct {
		name, file, registry, version string
		want                          []string
	}{
		{"calico.yaml v3.30.2", "calico-v3.30.2.yaml", "docker.io", "v3.30.2",
			[]string{"docker.io/calico/cni:v3.30.2", "docker.io/calico/kube-controllers:v3.30.2", "docker.io/calico/node:v3.30.2"}},
		{"calico.yaml v3.31.0", "calico-v3.31.0.yaml", "quay.io", "v3.31.0",
			[]string{"quay.io/calico/cni:v3.31.0", "quay.io/calico/kube-controllers:v3.31.0", "quay.io/calico/node:v3.31.0"}},
		{"Kubespray custom repos", "calico-v3.30.2.yaml", "registry.local:5000/kubespray", "v3.30.2",
			[]string{"registry.local:5000/kubespray/calico/cni:v3.30.2", "registry.local:5000/kubespray/calico/kube-controllers:v3.30.2", "registry.local:5000/kubespray/calico/node:v3.30.2"}},
		{"calico-typha.yaml v3.30.2", "calico-typha-v3.30.2.yaml", "docker.io", "v3.30.2",
			[]string{"docker.io/calico/cni:v3.30.2", "docker.io/calico/kube-controllers:v3.30.2", "docker.io/calico/node:v3.30.2", "docker.io/calico/typha:v3.30.2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			applyRelease(t, tc.file, tc.registry, tc.version)
			d := discover(t, adminKubecfg)
			if got := imageRefs(d); d.Version != tc.version || d.Variant != "manifest" || !slices.Equal(got, tc.want) {
				t.Fatalf("discovered %s %s %v\nwant %s manifest %v", d.Version, d.Variant, got, tc.version, tc.want)
			}
			for _, img := range d.Images {
				if !strings.Contains(img.Source, "kube-system/calico-") {
					t.Errorf("%s: source %q, want the spec it was read from", img.Ref, img.Source)
				}
			}
		})
	}
}

// TestDiscoveryOperatorInstall: what tigera-operator renders. Without an ImageSet its
// references carry the release's tag; with one they carry only the ImageSet's digest
// (GetReference in tigera/operator pkg/components/references.go at v1.38.3 appends
// ":<version>" only when there is no ImageSet). Either way discovery finds v3.30.2 and
// the seven images the workloads run; digest-only ones get the release's tag and are
// pulled by their digest.
func TestDiscoveryOperatorInstall(t *testing.T) {
	needAPI(t)
	const v = "v3.30.2"
	dg := func(c string) string { return digest.FromString(c + v).String() }
	for _, registry := range []string{"quay.io", "registry.local:5000/tigera-mirror"} {
		t.Run(registry+" tags", func(t *testing.T) {
			operatorWorkloads(t, func(c string) string { return registry + "/calico/" + c + ":" + v })
			createCR(t, cluster.Installations, "default", map[string]any{"spec": map[string]any{}, "status": map[string]any{
				"calicoVersion": v, "variant": "Calico", "computed": map[string]any{"registry": registry + "/", "imagePath": "calico"}}})
			d := discover(t, adminKubecfg)
			var want []string
			for _, c := range operatorComponents {
				want = append(want, registry+"/calico/"+c+":"+v)
			}
			slices.Sort(want)
			if got := imageRefs(d); d.Version != v || d.Variant != "operator" || !slices.Equal(got, want) {
				t.Fatalf("discovered %s %s %v\nwant %s operator %v", d.Version, d.Variant, got, v, want)
			}
		})
		t.Run(registry+" ImageSet", func(t *testing.T) {
			operatorWorkloads(t, func(c string) string { return registry + "/calico/" + c + "@" + dg(c) })
			createCR(t, cluster.Installations, "default", map[string]any{"spec": map[string]any{}, "status": map[string]any{
				"calicoVersion": v, "variant": "Calico", "imageSet": "calico-" + v}})
			digests := map[string]string{}
			for _, c := range operatorComponents {
				digests[c] = dg(c)
			}
			imageSetCR(t, v, digests)
			createDeploy(t, deployment("tigera-operator", "tigera-operator", container{"tigera-operator", "quay.io/tigera/operator:v1.38.3"}))
			d := discover(t, adminKubecfg)
			// Calico's images, and tigera-operator's own: the operator part of the recovery set.
			want := []string{"quay.io/tigera/operator:v1.38.3"}
			for _, c := range operatorComponents {
				want = append(want, registry+"/calico/"+c+":"+v+"@"+dg(c))
			}
			slices.Sort(want)
			if got := imageRefs(d); d.Version != v || d.Variant != "operator" || !slices.Equal(got, want) {
				t.Fatalf("discovered %s %s %v\nwant %s operator %v", d.Version, d.Variant, got, v, want)
			}
			for _, img := range d.Images {
				if img.Part == "operator" {
					if img.Source != "Deployment tigera-operator/tigera-operator container tigera-operator" {
						t.Errorf("%s: source %q", img.Ref, img.Source)
					}
					continue
				}
				if !img.ByDigest || !strings.Contains(img.TagSource, "calico-"+v) {
					t.Errorf("%s: byDigest %t, tag from %q; want by digest, the tag from the ImageSet", img.Ref, img.ByDigest, img.TagSource)
				}
			}
			// The table shows the tag name, the digest it is pulled by and where the tag comes from.
			n := &node{t: t, Containerd: &testenv.Containerd{Address: "/nonexistent"}}
			r := n.precache(nil, "images", "--kubeconfig", adminKubecfg)
			var row string
			for _, line := range strings.Split(r.stdout, "\n") {
				if strings.HasPrefix(line, registry+"/calico/node:"+v+" ") {
					row = line
				}
			}
			if r.code != 0 || !strings.Contains(row, dg("node")[:len("sha256:")+12]) || !strings.Contains(row, "tag from imagesets.operator.tigera.io calico-"+v) {
				t.Errorf("table row for calico/node %q; want the tag name, the digest and where the tag comes from:\n%s", row, r.stdout)
			}
		})
	}
}

// TestDiscoveryMidUpgrade: Kubespray applies calico-node first; the kube-controllers
// Deployment and the running pods still say the old release. The set is both releases'
// kube-controllers (the new one on the new default registry) and the new calico-node's
// images, never a typha nobody runs; the disagreement is shown.
func TestDiscoveryMidUpgrade(t *testing.T) {
	needAPI(t)
	applyRelease(t, "calico-v3.30.2.yaml", "docker.io", "v3.30.2")
	createCR(t, cluster.ClusterInformationV1, "default", map[string]any{"spec": map[string]any{"calicoVersion": "v3.30.2"}})
	ds, err := kubeClient.AppsV1().DaemonSets("kube-system").Get(t.Context(), "calico-node", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	move := func(cs []corev1.Container) {
		for i := range cs {
			cs[i].Image = strings.Replace(strings.Replace(cs[i].Image, "docker.io/", "quay.io/", 1), "v3.30.2", "v3.31.0", 1)
		}
	}
	move(ds.Spec.Template.Spec.InitContainers)
	move(ds.Spec.Template.Spec.Containers)
	if _, err := kubeClient.AppsV1().DaemonSets("kube-system").Update(t.Context(), ds, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	d := discover(t, adminKubecfg)
	want := sortedRefs("docker.io/calico/kube-controllers:v3.30.2",
		"quay.io/calico/cni:v3.31.0", "quay.io/calico/kube-controllers:v3.31.0", "quay.io/calico/node:v3.31.0")
	if got := imageRefs(d); d.Version != "v3.31.0" || !slices.Equal(got, want) {
		t.Fatalf("discovered %s %v\nwant v3.31.0 %v", d.Version, got, want)
	}
	if len(d.Disagreements) != 2 || !strings.Contains(strings.Join(d.Disagreements, "\n"), "clusterinformations") {
		t.Fatalf("disagreements %v: want the kube-controllers Deployment's and the ClusterInformation's v3.30.2", d.Disagreements)
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
	needAPI(t)
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
	// kube-system's DaemonSets and Deployments, which the agent watches for the recovery
	// set (kube-proxy, node-local DNS, CoreDNS, by name or by their k8s-app label); in
	// calico-system, Calico's workloads by name only; elsewhere, none.
	for _, w := range []struct{ kind, name string }{{"DaemonSet", "kube-proxy"}, {"DaemonSet", "nodelocaldns"}, {"DaemonSet", "node-local-dns"}, {"Deployment", "coredns"}, {"Deployment", "kube-dns"}} {
		if err := getAs(t, sa, "kube-system", w.kind, w.name); !apierrors.IsNotFound(err) {
			t.Errorf("getting %s kube-system/%s as the ServiceAccount: %v, want NotFound (allowed, absent)", w.kind, w.name, err)
		}
	}
	if _, err := sa.AppsV1().DaemonSets("kube-system").List(t.Context(), metav1.ListOptions{LabelSelector: "k8s-app=kube-proxy"}); err != nil {
		t.Errorf("listing DaemonSets by label as the ServiceAccount: %v, want allowed", err)
	}
	for _, w := range []struct{ ns, kind, name string }{{"calico-system", "DaemonSet", "fluent-bit"}, {"calico-system", "Deployment", "metrics-server"}, {"default", "DaemonSet", "kube-proxy"}, {"default", "Deployment", "coredns"}} {
		if err := getAs(t, sa, w.ns, w.kind, w.name); !apierrors.IsForbidden(err) {
			t.Errorf("getting %s %s/%s as the ServiceAccount: %v, want Forbidden", w.kind, w.ns, w.name, err)
		}
	}
	if _, err := sa.AppsV1().DaemonSets("calico-system").List(t.Context(), metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("listing calico-system's DaemonSets as the ServiceAccount: %v, want Forbidden (by name only there)", err)
	}
	// The DNS-loop check's objects, and no other ConfigMap.
	for _, name := range []string{"nodelocaldns", "node-local-dns"} {
		if _, err := sa.CoreV1().ConfigMaps("kube-system").Get(t.Context(), name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("getting ConfigMap kube-system/%s as the ServiceAccount: %v, want NotFound (allowed, absent)", name, err)
		}
	}
	for _, name := range []string{"kube-proxy", "coredns"} {
		if _, err := sa.CoreV1().ConfigMaps("kube-system").Get(t.Context(), name, metav1.GetOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("getting ConfigMap kube-system/%s as the ServiceAccount: %v, want Forbidden", name, err)
		}
	}
	if _, err := sa.CoreV1().ConfigMaps("kube-system").List(t.Context(), metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("listing ConfigMaps as the ServiceAccount: %v, want Forbidden", err)
	}
}

// getAs GETs a DaemonSet or Deployment in ns with client c.
func getAs(t *testing.T, c kubernetes.Interface, ns, kind, name string) error {
	t.Helper()
	var err error
	if kind == "DaemonSet" {
		_, err = c.AppsV1().DaemonSets(ns).Get(t.Context(), name, metav1.GetOptions{})
	} else {
		_, err = c.AppsV1().Deployments(ns).Get(t.Context(), name, metav1.GetOptions{})
	}
	return err
}

// TestBootstrapFromCluster: bootstrap reads the set from the API, pulls, records state;
// without the API it falls back to the flags, then to the recorded state, and says so.
func TestBootstrapFromCluster(t *testing.T) {
	needAPI(t)
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
	// The lock names the digests and the bundle carries them: local first, no registry.
	if r.code != 0 || !strings.Contains(r.stdout, "image set: the lock inside "+bundleFile) || !strings.Contains(r.stdout, "4 imported") || !strings.Contains(r.stdout, "path: bundle (it carries the wanted digests") {
		t.Fatalf("fallback to the bundle's lock: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
}

// TestBootstrapOperatorImageSet: an operator install with an ImageSet, whose workloads
// name every image by digest only (GetReference in tigera/operator
// pkg/components/references.go at v1.38.3). `precache images` finds the release, and a
// bootstrap pulls each image by its digest and records it under both names: "repo:tag"
// and "repo@sha256:…", the one the kubelet looks up for such a spec.
func TestBootstrapOperatorImageSet(t *testing.T) {
	needAPI(t)
	const v = "v3.30.2"
	pushed, err := reg.PushCalico(t.Context(), v, manifest.VariantOperator, testenv.ImageSpec{Seed: 60})
	if err != nil {
		t.Fatal(err)
	}
	digests := map[string]string{}
	for _, c := range operatorComponents {
		d, ok := pushed["quay.io/calico/"+c+":"+v]
		if !ok {
			t.Fatalf("calico/%s:%s not pushed; pushed %v", c, v, sortedKeys(pushed))
		}
		digests[c] = d
	}
	operatorWorkloads(t, func(c string) string { return "quay.io/calico/" + c + "@" + digests[c] })
	createCR(t, cluster.Installations, "default", map[string]any{"spec": map[string]any{}, "status": map[string]any{
		"calicoVersion": v, "variant": "Calico", "imageSet": "calico-" + v}})
	imageSetCR(t, v, digests)
	createDeploy(t, deployment("tigera-operator", "tigera-operator", container{"tigera-operator", "quay.io/tigera/operator:v1.38.3"}))
	// tigera-operator's own image is the recovery set's operator part.
	opDigest, err := reg.Push(t.Context(), "tigera/operator", "v1.38.3", testenv.ImageSpec{Seed: 61})
	if err != nil {
		t.Fatal(err)
	}

	d := discover(t, adminKubecfg)
	if d.Version != v || len(d.Images) != len(operatorComponents)+1 {
		t.Fatalf("discovered %s %v, want %s, the %d images the workloads run and the operator's", d.Version, imageRefs(d), v, len(operatorComponents))
	}

	n := newNode(t)
	r := n.precache(nil, "bootstrap", "--kubeconfig", adminKubecfg, "--root", t.TempDir())
	if r.code != 0 || !strings.Contains(r.stdout, "Calico "+v+" (operator)") || !strings.Contains(r.stdout, fmt.Sprintf("%d pulled", len(operatorComponents)+1)) {
		t.Fatalf("bootstrap: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	n.assertRight("quay.io/tigera/operator:v1.38.3", opDigest.String())
	names := n.imageNames()
	for _, c := range operatorComponents {
		tagName, digestName := "quay.io/calico/"+c+":"+v, "quay.io/calico/"+c+"@"+digests[c]
		n.assertRight(tagName, digests[c])
		if !slices.Contains(names, digestName) {
			t.Errorf("no record %s (what the kubelet looks up for the spec); records %v", digestName, names)
			continue
		}
		if rec := n.image(digestName); rec.Target.Digest.String() != digests[c] || rec.Labels[cache.LabelCRIPinned] != "pinned" {
			t.Errorf("%s: target %s labels %v, want %s pinned", digestName, rec.Target.Digest, rec.Labels, digests[c])
		}
	}
}
