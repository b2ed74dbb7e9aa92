package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/precache/precache/internal/cache"
	"github.com/precache/precache/internal/manifest"
	"github.com/precache/precache/test/testenv"
)

// The recovery set of a Kubespray node (testdata/kubespray, rendered from Kubespray's
// templates: see its README): besides Calico, what the cluster runs for Services and DNS,
// and what the node's own files name.
var (
	addonImages = map[string]manifest.Part{
		"registry.k8s.io/kube-proxy:v1.36.1":              manifest.PartKubeProxy,
		"registry.k8s.io/dns/k8s-dns-node-cache:1.25.0":   manifest.PartNodeLocalDNS,
		"registry.k8s.io/coredns/coredns:v1.14.2":         manifest.PartCoreDNS,
		"registry.k8s.io/pause:3.10.2":                    manifest.PartSandbox,
		"docker.io/library/nginx:1.30.1-alpine":           manifest.PartAPIServerProxy,
		"registry.k8s.io/kube-apiserver:v1.36.1":          manifest.PartControlPlane,
		"registry.k8s.io/kube-controller-manager:v1.36.1": manifest.PartControlPlane,
		"registry.k8s.io/kube-scheduler:v1.36.1":          manifest.PartControlPlane,
		"registry.k8s.io/etcd:3.6.5-0":                    manifest.PartControlPlane,
	}
	// The images each node root adds to the cluster's (kube-proxy, nodelocaldns, CoreDNS).
	workerImages       = []string{"docker.io/library/nginx:1.30.1-alpine", "registry.k8s.io/pause:3.10.2"}
	controlPlaneImages = []string{"registry.k8s.io/etcd:3.6.5-0", "registry.k8s.io/kube-apiserver:v1.36.1", "registry.k8s.io/kube-controller-manager:v1.36.1",
		"registry.k8s.io/kube-scheduler:v1.36.1", "registry.k8s.io/pause:3.10.2"}
	clusterAddonImages = []string{"registry.k8s.io/coredns/coredns:v1.14.2", "registry.k8s.io/dns/k8s-dns-node-cache:1.25.0", "registry.k8s.io/kube-proxy:v1.36.1"}

	pushAddonsOnce sync.Once
	addonDigests   map[string]string
	pushAddonsErr  error
)

// pushAddons pushes a small multi-platform image under each name of addonImages, once.
func pushAddons(t testing.TB) map[string]string {
	t.Helper()
	pushAddonsOnce.Do(func() {
		addonDigests = map[string]string{}
		for i, ref := range slices.Sorted(maps.Keys(addonImages)) {
			r := manifest.MustParseRef(ref)
			d, err := reg.Push(testContext(), r.Path(), r.Tag, testenv.ImageSpec{Seed: uint64(7000 + i)})
			if err != nil {
				pushAddonsErr = fmt.Errorf("%s: %w", ref, err)
				return
			}
			addonDigests[ref] = d.String()
		}
	})
	if pushAddonsErr != nil {
		t.Fatal(pushAddonsErr)
	}
	return addonDigests
}

// kubesprayCluster creates a Kubespray-shaped cluster: Calico's calico-typha.yaml (at
// dockerVersion, docker.io) and the ClusterInformation calico-node writes, and the
// kube-proxy, nodelocaldns and CoreDNS workloads of testdata/kubespray/cluster.
func kubesprayCluster(t testing.TB, addons ...string) {
	t.Helper()
	manifestInstall(t, "docker.io", dockerVersion)
	for _, name := range addons {
		createFromFile(t, filepath.Join("testdata", "kubespray", "cluster", name+".yaml"))
	}
}

// createFromFile creates the apps/v1 objects of a YAML file and deletes them when the test ends.
func createFromFile(t testing.TB, file string) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
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

// nodeRootCopy copies testdata/kubespray/<role> to a fresh directory: a node's root the
// test may change.
func nodeRootCopy(t testing.TB, role string) string {
	t.Helper()
	src := filepath.Join("testdata", "kubespray", role)
	dst := t.TempDir()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), data, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}

// recoverySet is the set a node with root's files should keep: Calico's four images, the
// cluster's addons, and nodeImages; ref → index digest.
func recoverySet(t *testing.T, nodeImages []string) map[string]string {
	t.Helper()
	pushed := pushAddons(t)
	want := map[string]string{}
	for _, img := range calicoSet(t, dockerVersion) {
		want[img.Ref.String()] = calico[img.Ref.String()]
	}
	for _, ref := range append(slices.Clone(clusterAddonImages), nodeImages...) {
		want[ref] = pushed[ref]
	}
	return want
}

type recoveryJSON struct {
	Version  string           `json:"version"`
	Parts    []manifest.Part  `json:"parts"`
	Warnings []string         `json:"warnings"`
	Images   []manifest.Image `json:"images"`
	Facts    []struct{ What, Value, Source string }
}

func discoverRecovery(t *testing.T, kubeconfig, root string, args ...string) recoveryJSON {
	t.Helper()
	n := &node{t: t, Containerd: &testenv.Containerd{Address: "/nonexistent"}}
	r := n.precache(nil, append([]string{"images", "--kubeconfig", kubeconfig, "--root", root, "-o", "json"}, args...)...)
	if r.code != 0 {
		t.Fatalf("precache images: exit %d\n%s", r.code, r.stderr)
	}
	var d recoveryJSON
	if err := json.Unmarshal([]byte(r.stdout), &d); err != nil {
		t.Fatalf("%v\n%s", err, r.stdout)
	}
	return d
}

func refsOf(images []manifest.Image) []string {
	var out []string
	for _, img := range images {
		out = append(out, img.Ref.String())
	}
	slices.Sort(out)
	return out
}

// assertSetRight checks every image of want on n: present under its tag with the
// registry's digest, unpacked, pinned in the CRI's view (assertRight).
func (n *node) assertSetRight(want map[string]string) {
	n.t.Helper()
	for ref, dg := range want {
		n.assertRight(manifest.MustParseRef(ref).TagName(), dg)
	}
}

// TestDiscoveryRecoverySet: on a Kubespray-shaped cluster, `precache images` finds the
// whole recovery set — Calico, kube-proxy, nodelocaldns, CoreDNS from the cluster, the
// static pods and the sandbox image from the node's files — each with its part, its role
// and the object or file and line it comes from; as precache's ServiceAccount too.
func TestDiscoveryRecoverySet(t *testing.T) {
	needAPI(t)
	kubesprayCluster(t, "kube-proxy", "nodelocaldns", "coredns")
	worker, cp := nodeRootCopy(t, "worker"), nodeRootCopy(t, "control-plane")
	for _, tc := range []struct {
		name, kubeconfig, root string
		node                   []string
	}{
		{"worker", adminKubecfg, worker, workerImages},
		{"control plane", adminKubecfg, cp, controlPlaneImages},
		{"worker, as the ServiceAccount", saKubecfg, worker, workerImages},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := discoverRecovery(t, tc.kubeconfig, tc.root)
			want := recoverySet(t, tc.node)
			if got := refsOf(d.Images); !slices.Equal(got, slices.Sorted(maps.Keys(want))) {
				t.Fatalf("discovered %v\nwant %v", got, slices.Sorted(maps.Keys(want)))
			}
			sources := map[string]string{
				"registry.k8s.io/kube-proxy:v1.36.1":            "DaemonSet kube-system/kube-proxy container kube-proxy",
				"registry.k8s.io/dns/k8s-dns-node-cache:1.25.0": "DaemonSet kube-system/nodelocaldns container node-cache",
				"registry.k8s.io/coredns/coredns:v1.14.2":       "Deployment kube-system/coredns container coredns",
				"docker.io/library/nginx:1.30.1-alpine":         "static pod nginx-proxy, /etc/kubernetes/manifests/nginx-proxy.yml:19",
				"registry.k8s.io/kube-apiserver:v1.36.1":        "static pod kube-apiserver, /etc/kubernetes/manifests/kube-apiserver.yaml:19",
				"registry.k8s.io/etcd:3.6.5-0":                  "static pod etcd, /etc/kubernetes/manifests/etcd.yaml:18",
				"registry.k8s.io/pause:3.10.2":                  `/etc/containerd/config.toml:49 [plugins."io.containerd.cri.v1.images".pinned_images] sandbox`,
			}
			for _, img := range d.Images {
				ref := img.Ref.String()
				if part, ok := addonImages[ref]; ok && img.Part != part {
					t.Errorf("%s: part %q, want %q", ref, img.Part, part)
				}
				if _, ok := addonImages[ref]; !ok && img.Part != manifest.PartCalico {
					t.Errorf("%s: part %q, want calico", ref, img.Part)
				}
				if img.Role == "" || img.Component == "" {
					t.Errorf("%s: role %q, component %q", ref, img.Role, img.Component)
				}
				if want, ok := sources[ref]; ok && img.Source != want {
					t.Errorf("%s: source %q\nwant %q", ref, img.Source, want)
				}
			}
			if len(d.Warnings) != 0 {
				t.Errorf("warnings %v", d.Warnings)
			}
		})
	}
}

// TestDiscoveryAbsentParts: a cluster without kube-proxy, nodelocaldns or CoreDNS, a node
// without static pods or a containerd config: those parts are reported absent, and the
// set is Calico's, as the admin and as the ServiceAccount.
func TestDiscoveryAbsentParts(t *testing.T) {
	needAPI(t)
	kubesprayCluster(t)
	for _, kubeconfig := range []string{adminKubecfg, saKubecfg} {
		d := discoverRecovery(t, kubeconfig, t.TempDir())
		if len(d.Images) != 4 {
			t.Fatalf("discovered %v, want Calico's four images", refsOf(d.Images))
		}
		absent := map[string]string{}
		for _, f := range d.Facts {
			if f.Value == "absent" || f.Value == "not looked up by label" {
				absent[f.What] += f.Value + ": " + f.Source + "; "
			}
		}
		for _, part := range []string{"operator", "kube-proxy", "nodelocaldns", "coredns", "apiserver-proxy", "control-plane", "sandbox"} {
			if !strings.Contains(absent[part], "absent") {
				t.Errorf("%s: %s not reported absent: %q", kubeconfig, part, absent[part])
			}
		}
		// The ServiceAccount may list kube-system's DaemonSets and Deployments (the agent
		// watches them), so the lookup by label is made as for the admin.
		if !strings.Contains(absent["kube-proxy"], "absent: no DaemonSet kube-system/kube-proxy, none labelled k8s-app=kube-proxy") {
			t.Errorf("%s: kube-proxy %q", kubeconfig, absent["kube-proxy"])
		}
	}
}

// TestRecoveryBootstrap: `precache bootstrap --kubeconfig … --root …` on a worker and a
// control-plane node makes every image of the recovery set present, unpacked, with the
// registry's digest and pinned in the CRI's view, records the whole set in state.json,
// and a second run touches nothing.
func TestRecoveryBootstrap(t *testing.T) {
	needAPI(t)
	kubesprayCluster(t, "kube-proxy", "nodelocaldns", "coredns")
	for _, tc := range []struct {
		role string
		node []string
	}{{"worker", workerImages}, {"control-plane", controlPlaneImages}} {
		t.Run(tc.role, func(t *testing.T) {
			want := recoverySet(t, tc.node)
			root := nodeRootCopy(t, tc.role)
			n := newNode(t)
			r := n.precache(nil, "bootstrap", "--kubeconfig", adminKubecfg, "--root", root)
			if r.code != 0 || !strings.Contains(r.stdout, fmt.Sprintf("%d pulled", len(want))) ||
				!strings.Contains(r.stdout, "Calico "+dockerVersion+" (manifest), node files under "+root) {
				t.Fatalf("bootstrap: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
			}
			n.assertSetRight(want)

			data, err := os.ReadFile(filepath.Join(n.Dir, "state.json"))
			if err != nil {
				t.Fatal(err)
			}
			var st struct{ Images []string }
			if err := json.Unmarshal(data, &st); err != nil {
				t.Fatal(err)
			}
			var recorded []string
			for _, s := range st.Images {
				ref := manifest.MustParseRef(s)
				if want[ref.TagName()] != ref.Digest.String() {
					t.Errorf("state.json: %s, want the digest %s", s, want[ref.TagName()])
				}
				recorded = append(recorded, ref.TagName())
			}
			if slices.Sort(recorded); !slices.Equal(recorded, slices.Sorted(maps.Keys(want))) {
				t.Errorf("state.json records %v\nwant the whole set %v", recorded, slices.Sorted(maps.Keys(want)))
			}

			r = n.precache(nil, "bootstrap", "--kubeconfig", adminKubecfg, "--root", root)
			if r.code != 0 || !strings.Contains(r.stdout, fmt.Sprintf("%d images in", len(want))) || !strings.Contains(r.stdout, fmt.Sprintf(": %d already right", len(want))) {
				t.Errorf("second bootstrap: exit %d\n%s", r.code, r.stdout)
			}
			st2 := n.precache(nil, "status", "--kubeconfig", adminKubecfg, "--root", root)
			if st2.code != 0 || !strings.Contains(st2.stdout, "registry.k8s.io/pause:3.10.2") || !strings.Contains(st2.stdout, " sandbox ") {
				t.Errorf("status: exit %d\n%s\n%s", st2.code, st2.stdout, st2.stderr)
			}
		})
	}
}

// TestRecoveryOnly: --only narrows the discovered set, for images and for bootstrap; the
// parts left out are neither read nor recorded.
func TestRecoveryOnly(t *testing.T) {
	needAPI(t)
	kubesprayCluster(t, "kube-proxy", "nodelocaldns", "coredns")
	root := nodeRootCopy(t, "worker")
	d := discoverRecovery(t, adminKubecfg, root, "--only", "calico")
	var want []string
	for _, img := range calicoSet(t, dockerVersion) {
		want = append(want, img.Ref.String())
	}
	slices.Sort(want)
	if got := refsOf(d.Images); !slices.Equal(got, want) {
		t.Fatalf("--only calico: %v, want %v", got, want)
	}
	d = discoverRecovery(t, adminKubecfg, root, "--only", "kube-proxy,sandbox")
	if got := refsOf(d.Images); !slices.Equal(got, []string{"registry.k8s.io/kube-proxy:v1.36.1", "registry.k8s.io/pause:3.10.2"}) || d.Version != "" {
		t.Fatalf("--only kube-proxy,sandbox: %v (Calico %q)", got, d.Version)
	}

	pushAddons(t)
	n := newNode(t)
	r := n.precache([]string{"PRECACHE_ONLY=calico"}, "bootstrap", "--kubeconfig", adminKubecfg, "--root", root)
	if r.code != 0 || !strings.Contains(r.stdout, "4 pulled") {
		t.Fatalf("bootstrap with PRECACHE_ONLY=calico: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	for _, name := range n.imageNames() {
		if !strings.Contains(name, "/calico/") && !strings.HasPrefix(name, "sha256:") {
			t.Errorf("--only calico recorded %s", name)
		}
	}
}

// TestRecoveryBrokenStaticPod: a static pod manifest that does not parse is a warning
// naming the file; the rest of the set is built and made right. An image reference that
// does not parse is an error naming the file and line.
func TestRecoveryBrokenStaticPod(t *testing.T) {
	needAPI(t)
	kubesprayCluster(t, "kube-proxy", "nodelocaldns", "coredns")
	root := nodeRootCopy(t, "worker")
	broken := filepath.Join(root, "etc/kubernetes/manifests/haproxy.yml")
	if err := os.WriteFile(broken, []byte("apiVersion: v1\nkind: Pod\nspec:\n  containers: [\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d := discoverRecovery(t, adminKubecfg, root)
	want := recoverySet(t, workerImages)
	if got := refsOf(d.Images); !slices.Equal(got, slices.Sorted(maps.Keys(want))) {
		t.Fatalf("discovered %v\nwant %v", got, slices.Sorted(maps.Keys(want)))
	}
	if len(d.Warnings) != 1 || !strings.HasPrefix(d.Warnings[0], "/etc/kubernetes/manifests/haproxy.yml: ") {
		t.Fatalf("warnings %q, want one naming /etc/kubernetes/manifests/haproxy.yml", d.Warnings)
	}

	n := newNode(t)
	r := n.precache(nil, "bootstrap", "--kubeconfig", adminKubecfg, "--root", root)
	if r.code != 0 || !strings.Contains(r.stderr, `"file":"/etc/kubernetes/manifests/haproxy.yml"`) || !strings.Contains(r.stdout, "WARNING") {
		t.Fatalf("bootstrap: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	n.assertSetRight(want)

	if err := os.WriteFile(broken, []byte("apiVersion: v1\nkind: Pod\nmetadata:\n  name: haproxy\nspec:\n  containers:\n  - name: haproxy\n    image: docker.io/library/HAProxy:3.2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	m := &node{t: t, Containerd: &testenv.Containerd{Address: "/nonexistent"}}
	r = m.precache(nil, "images", "--kubeconfig", adminKubecfg, "--root", root)
	if r.code != 1 || !strings.Contains(r.stderr, "static pod haproxy, /etc/kubernetes/manifests/haproxy.yml:8: invalid image reference") {
		t.Errorf("a reference that does not parse: exit %d\n%s", r.code, r.stderr)
	}
}

// TestRecoveryBundle: a bundle of the recovery set, made from the registry with the
// cluster and a worker's files, imports on a fresh node with no registry at all: every
// image right, pinned, and status (reading the set from the cluster) agrees.
func TestRecoveryBundle(t *testing.T) {
	needAPI(t)
	kubesprayCluster(t, "kube-proxy", "nodelocaldns", "coredns")
	root := nodeRootCopy(t, "worker")
	want := recoverySet(t, workerImages)
	file := filepath.Join(t.TempDir(), "recovery.tar.zst")
	maker := &node{t: t, Containerd: &testenv.Containerd{Address: "/nonexistent"}}
	if r := maker.precache(nil, "bundle", "--kubeconfig", adminKubecfg, "--root", root, "--platform", "linux/amd64,linux/arm64", "-o", file); r.code != 0 {
		t.Fatalf("bundle: exit %d\n%s", r.code, r.stderr)
	}
	n := newNode(t)
	dead := filepath.Join(t.TempDir(), "certs.d")
	writeDeadHosts(t, dead)
	env := []string{"PRECACHE_HOSTS_DIR=" + dead}
	r := n.precache(env, "import", file)
	if r.code != 0 {
		t.Fatalf("import: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	n.assertSetRight(want)
	if st := n.precache(env, "status", "--kubeconfig", adminKubecfg, "--root", root); st.code != 0 {
		t.Errorf("status after import: exit %d\n%s\n%s", st.code, st.stdout, st.stderr)
	}
}

// TestRecoverySandboxPinStaysTheCRIs: the CRI pins its sandbox image itself when it pulls
// it (containerd ≥ 1.7.3, pinned_images.sandbox). A bootstrap of the recovery set after
// that leaves the pin the CRI's — no io.precache.pinned on the sandbox's records, so
// nothing precache does later removes it — while the images precache pinned carry it.
func TestRecoverySandboxPinStaysTheCRIs(t *testing.T) {
	needAPI(t)
	kubesprayCluster(t, "kube-proxy", "nodelocaldns", "coredns")
	want := recoverySet(t, workerImages)
	root := nodeRootCopy(t, "worker")
	n := newNode(t)
	if !n.PinningSupported() {
		t.Skipf("containerd %s's CRI does not pin its sandbox image (1.7.3 and later do)", n.Version)
	}
	const sandbox = "registry.k8s.io/pause:3.10.2" // containerd 2.4.2's default pinned_images.sandbox, and the node's config's
	criPull(t, n.Address, sandbox)
	if rec := n.image(sandbox); rec.Labels[cache.LabelCRIPinned] != "pinned" || rec.Labels[cache.LabelPinnedBy] != "" {
		t.Fatalf("after the CRI's pull: labels %v, want the CRI's pin", rec.Labels)
	}
	r := n.precache(nil, "bootstrap", "--kubeconfig", adminKubecfg, "--root", root)
	if r.code != 0 {
		t.Fatalf("bootstrap: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	n.assertSetRight(want)
	for _, name := range n.imageNames() {
		rec := n.image(name)
		isSandbox := rec.Target.Digest.String() == want[sandbox]
		switch {
		case isSandbox && rec.Labels[cache.LabelPinnedBy] != "":
			t.Errorf("%s: %s=%s — precache took over the CRI's pin", name, cache.LabelPinnedBy, rec.Labels[cache.LabelPinnedBy])
		case isSandbox && rec.Labels[cache.LabelCRIPinned] != "pinned":
			t.Errorf("%s: the CRI's pin is gone: %v", name, rec.Labels)
		case !isSandbox && rec.Labels[cache.LabelPinnedBy] != "true":
			t.Errorf("%s: precache pinned it, but %s is %q", name, cache.LabelPinnedBy, rec.Labels[cache.LabelPinnedBy])
		}
	}
}

// criPull pulls ref through the CRI ImageService, as the kubelet does.
func criPull(t *testing.T, address, ref string) {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if _, err := runtimeapi.NewImageServiceClient(conn).PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}}); err != nil {
		t.Fatalf("CRI PullImage %s: %v", ref, err)
	}
}

// TestRecoverySandboxUnpinnedTheCRIRepins: on a node where precache pulled the sandbox image
// first, it is precache's pin (io.precache.pinned). Were precache to drop that pin from
// every name — as the agent does for images it no longer keeps — containerd's CRI pins the
// name its config lists (pinned_images.sandbox) again as soon as that record changes: the
// sandbox stays pinned in the kubelet's view.
func TestRecoverySandboxUnpinnedTheCRIRepins(t *testing.T) {
	needAPI(t)
	kubesprayCluster(t, "kube-proxy", "nodelocaldns", "coredns")
	recoverySet(t, workerImages)
	n := newNode(t)
	if !n.PinningSupported() {
		t.Skipf("containerd %s's CRI does not pin its sandbox image (1.7.3 and later do)", n.Version)
	}
	const sandbox = "registry.k8s.io/pause:3.10.2"
	r := n.precache(nil, "bootstrap", "--kubeconfig", adminKubecfg, "--root", nodeRootCopy(t, "worker"), "--only", "sandbox")
	if r.code != 0 {
		t.Fatalf("bootstrap: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	rec := n.image(sandbox)
	if rec.Labels[cache.LabelPinnedBy] != "true" {
		t.Fatalf("precache pulled the sandbox first: labels %v", rec.Labels)
	}
	// What the agent's unpinning does to a record it no longer keeps.
	store := n.store()
	id := n.criImages(sandbox)[sandbox].ID // the image-ID record, sha256:<config>
	for _, name := range []string{sandbox, "registry.k8s.io/pause@" + rec.Target.Digest.String(), id} {
		if err := store.Unlabel(t.Context(), name, cache.LabelManaged, cache.LabelCRIPinned, cache.LabelPinnedBy); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		view := n.criImages(sandbox)
		if img, ok := view[sandbox]; ok && img.Pinned {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the CRI did not pin %s again: %+v; labels %v", sandbox, view[sandbox], n.image(sandbox).Labels)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The CRI pins the name its config lists (one pinned name pins the image for the
	// kubelet); the other names stay as they were left.
	if got := n.image(sandbox).Labels[cache.LabelCRIPinned]; got != "pinned" {
		t.Errorf("%s: %s=%q after the CRI's update", sandbox, cache.LabelCRIPinned, got)
	}
}

// BenchmarkRecovery times the binary, one process per operation, on the harness's daemons
// with the Kubespray-shaped cluster and a worker's files: discovery of the whole recovery
// set and of its parts, and a bootstrap of the whole set on a node where it is already
// right (the no-op every boot pays). Run:
//
//	go test -run '^$' -bench Recovery -benchtime 25x ./test/integration/
func BenchmarkRecovery(b *testing.B) {
	if envErr != nil || apiErr != nil {
		b.Skipf("no containerd/registry or kube-apiserver: %v %v — run `make tools`", envErr, apiErr)
	}
	kubesprayCluster(b, "kube-proxy", "nodelocaldns", "coredns")
	pushed := pushAddons(b)
	worker, empty := nodeRootCopy(b, "worker"), b.TempDir()
	c, err := testenv.StartContainerd(b.Context(), testenv.ContainerdOptions{CRI: true, HostsDir: hostsDir})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = c.Stop() })
	run := func(b *testing.B, args ...string) {
		b.Helper()
		cmd := exec.CommandContext(b.Context(), binary, args...)
		cmd.Env = append(os.Environ(), "CONTAINERD_ADDRESS="+c.Address, "PRECACHE_HOSTS_DIR="+hostsDir, "PRECACHE_LOG_FORMAT=json",
			"PRECACHE_STATE_FILE="+filepath.Join(c.Dir, "state.json"))
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("precache %v: %v\n%s", args, err, out)
		}
	}
	run(b, "bootstrap", "--kubeconfig", adminKubecfg, "--root", worker)
	images := []string{"bootstrap"}
	set, err := manifest.Build(manifest.Options{Version: dockerVersion})
	if err != nil {
		b.Fatal(err)
	}
	for _, img := range set {
		images = append(images, "--image", img.Ref.String()+"@"+calico[img.Ref.String()])
	}
	for _, ref := range append(slices.Clone(clusterAddonImages), workerImages...) {
		images = append(images, "--image", ref+"@"+pushed[ref])
	}
	for _, bc := range []struct {
		name string
		args []string
	}{
		{"discovery/whole set", []string{"images", "--kubeconfig", adminKubecfg, "--root", worker, "-o", "json"}},
		{"discovery/calico only", []string{"images", "--kubeconfig", adminKubecfg, "--root", empty, "--only", "calico", "-o", "json"}},
		{"discovery/node files only", []string{"images", "--from-cluster", "--root", worker, "--only", "apiserver-proxy,control-plane,sandbox", "-o", "json"}},
		{"bootstrap no-op/whole set, discovered", []string{"bootstrap", "--kubeconfig", adminKubecfg, "--root", worker}},
		{"bootstrap no-op/whole set, from --image", images},
	} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				run(b, bc.args...)
			}
		})
	}
}

// TestAgentRecoverySetUpgrade: the agent, as its ServiceAccount with the RBAC of deploy/,
// keeps a Kubespray worker's whole recovery set; when kube-proxy and nodelocaldns are
// upgraded (their DaemonSets name new images; Kubespray's upgrade does exactly this), it
// pulls and pins the new images before any pod runs them, keeps the old ones pinned while
// the rollout is under way, and lets them go once the DaemonSets say it is done.
func TestAgentRecoverySetUpgrade(t *testing.T) {
	needAPI(t)
	kubesprayCluster(t, "kube-proxy", "nodelocaldns", "coredns")
	want := recoverySet(t, workerImages)
	const (
		oldProxy = "registry.k8s.io/kube-proxy:v1.36.1"
		newProxy = "registry.k8s.io/kube-proxy:v1.37.2"
		oldCache = "registry.k8s.io/dns/k8s-dns-node-cache:1.25.0"
		newCache = "registry.k8s.io/dns/k8s-dns-node-cache:1.26.0"
	)
	next := map[string]string{}
	for i, ref := range []string{newProxy, newCache} {
		r := manifest.MustParseRef(ref)
		d, err := reg.Push(t.Context(), r.Path(), r.Tag, testenv.ImageSpec{Seed: uint64(7100 + i)})
		if err != nil {
			t.Fatal(err)
		}
		next[ref] = d.String()
	}
	root := nodeRootCopy(t, "worker")
	n := newNode(t)
	p := startAgent(t, n, nil, "--kubeconfig", saKubecfg, "--node-name", "worker-1", "--root", root)
	eventually(t, 90*time.Second, "the whole recovery set right", func() error {
		for ref := range want {
			if !n.pinnedByPrecache(manifest.MustParseRef(ref).TagName()) {
				return fmt.Errorf("%s not pinned yet", ref)
			}
		}
		return nil
	})
	n.assertSetRight(want)
	if body := httpGet(t, "http://"+p.addr+"/metrics"); !strings.Contains(body, fmt.Sprintf("precache_images_desired %d\n", len(want))) {
		t.Errorf("/metrics: want precache_images_desired %d (the whole set)\n%s", len(want), grepLines(body, "precache_images_"))
	}

	// The upgrade: the DaemonSets' specs change; the API server bumps their generation, and
	// no controller runs here, so their status says the new generation is not rolled out.
	setImage := func(name, container, image string) {
		t.Helper()
		dss := kubeClient.AppsV1().DaemonSets("kube-system")
		ds, err := dss.Get(t.Context(), name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for i := range ds.Spec.Template.Spec.Containers {
			if ds.Spec.Template.Spec.Containers[i].Name == container {
				ds.Spec.Template.Spec.Containers[i].Image = image
			}
		}
		if _, err := dss.Update(t.Context(), ds, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	setImage("kube-proxy", "kube-proxy", newProxy)
	setImage("nodelocaldns", "node-cache", newCache)
	eventually(t, 60*time.Second, "the new kube-proxy and node-local DNS pulled and pinned", func() error {
		for _, ref := range []string{newProxy, newCache} {
			if !n.pinnedByPrecache(ref) {
				return fmt.Errorf("%s not pinned yet", ref)
			}
		}
		return nil
	})
	t.Logf("the upgrades pulled and pinned %s after the DaemonSets changed", time.Since(start).Round(time.Millisecond))
	n.assertSetRight(next)
	time.Sleep(time.Second) // a reconcile more, triggered by the agent's own writes
	for _, ref := range []string{oldProxy, oldCache} {
		if !n.pinnedByPrecache(ref) {
			t.Errorf("%s unpinned while the rollout is under way: %v", ref, n.image(ref).Labels)
		}
	}

	// The rollout is done, as the DaemonSet controller would record it.
	for _, name := range []string{"kube-proxy", "nodelocaldns"} {
		dss := kubeClient.AppsV1().DaemonSets("kube-system")
		ds, err := dss.Get(t.Context(), name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ds.Status = appsv1.DaemonSetStatus{ObservedGeneration: ds.Generation, DesiredNumberScheduled: 1, CurrentNumberScheduled: 1,
			UpdatedNumberScheduled: 1, NumberReady: 1, NumberAvailable: 1}
		if _, err := dss.UpdateStatus(t.Context(), ds, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 30*time.Second, "the old kube-proxy and node-local DNS unpinned", func() error {
		for _, ref := range []string{oldProxy, oldCache} {
			if n.pinnedByPrecache(ref) {
				return fmt.Errorf("%s still pinned", ref)
			}
		}
		return nil
	})
	for _, ref := range []string{newProxy, newCache, "docker.io/library/nginx:1.30.1-alpine", "registry.k8s.io/coredns/coredns:v1.14.2"} {
		if !n.pinnedByPrecache(ref) {
			t.Errorf("%s: not pinned after the rollout: %v", ref, n.image(ref).Labels)
		}
	}
	p.stop(t)
}

// pinnedByPrecache reports whether name is recorded, pinned and marked as precache's.
func (n *node) pinnedByPrecache(name string) bool {
	img, err := n.store().Image(n.t.Context(), name)
	if err != nil {
		return false
	}
	l := img.Labels
	return l[cache.LabelCRIPinned] == "pinned" && l[cache.LabelManaged] == "true"
}
