package integration

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	"github.com/precache/precache/test/testenv"
)

// access is one request the ServiceAccount makes, or must not be able to make.
type access struct {
	verb, group, resource, namespace, name string
}

func (a access) String() string {
	gr := a.resource
	if a.group != "" {
		gr += "." + a.group
	}
	where := a.namespace
	if where == "" {
		where = "(cluster)"
	}
	return fmt.Sprintf("%s %s %s/%s", a.verb, gr, where, a.name)
}

// agentNeeds lists what precache does as its ServiceAccount, namespace by namespace: the
// agent's watches (calico-node by name, this node's calico-node pods by label, in
// kube-system and, where the operator runs, calico-system; kube-system's DaemonSets and
// Deployments; tigera-operator's Deployment by name where the operator runs), its GETs (the
// kube-controllers and typha Deployments, csi-node-driver where the operator runs,
// the Installation, the DNS-loop check's Service and ConfigMap), its LIST of ImageSets and its
// Events on the Node; and discovery run in the pod (internal/cluster: ClusterInformation, the
// recovery set's workloads by name, tigera-operator's Deployment where the operator runs).
// A list or watch with a name is one with a metadata.name field selector.
func agentNeeds(operator bool) []access {
	var out []access
	add := func(verbs []string, group, resource, ns string, names ...string) {
		if len(names) == 0 {
			names = []string{""}
		}
		for _, v := range verbs {
			for _, n := range names {
				out = append(out, access{v, group, resource, ns, n})
			}
		}
	}
	get, lw := []string{"get"}, []string{"list", "watch"}
	add(get, "crd.projectcalico.org", "clusterinformations", "", "default")
	add(get, "projectcalico.org", "clusterinformations", "", "default")
	add(get, "operator.tigera.io", "installations", "", "default")
	add([]string{"list"}, "operator.tigera.io", "imagesets", "")
	add([]string{"create", "patch"}, "", "events", "default")
	calicoNS := []string{"kube-system"}
	if operator { // a manifest install has no calico-system: the agent leaves it out
		calicoNS = append(calicoNS, "calico-system")
		add(get, "apps", "daemonsets", "calico-system", "csi-node-driver")
	}
	for _, ns := range calicoNS {
		add([]string{"get", "list", "watch"}, "apps", "daemonsets", ns, "calico-node")
		add(get, "apps", "deployments", ns, "calico-kube-controllers", "calico-typha")
		add(lw, "", "pods", ns)
	}
	// The recovery set's other workloads: kube-system's DaemonSets and Deployments watched
	// whole (found by their usual names, else their k8s-app label), and read by name.
	add([]string{"list", "watch"}, "apps", "daemonsets", "kube-system")
	add([]string{"list", "watch"}, "apps", "deployments", "kube-system")
	add(get, "apps", "daemonsets", "kube-system", "kube-proxy", "nodelocaldns", "node-local-dns")
	add(get, "apps", "deployments", "kube-system", "coredns", "kube-dns")
	add(get, "", "services", "kube-system", "kube-dns", "coredns")
	add(get, "", "configmaps", "kube-system", "nodelocaldns", "node-local-dns")
	if operator { // the operator's Deployment, watched by name
		add([]string{"get", "list", "watch"}, "apps", "deployments", "tigera-operator", "tigera-operator")
	}
	return out
}

// agentMustNot lists requests outside what precache needs, Secrets first; without the
// operator, nothing in calico-system or tigera-operator.
func agentMustNot(namespaces []string, operator bool) []access {
	var out []access
	if !operator {
		for _, a := range agentNeeds(true) {
			if a.namespace == "calico-system" || a.namespace == "tigera-operator" {
				out = append(out, a)
			}
		}
	}
	for _, ns := range append([]string{""}, namespaces...) {
		for _, v := range []string{"get", "list", "watch"} {
			out = append(out, access{v, "", "secrets", ns, ""})
		}
		out = append(out, access{"get", "", "secrets", ns, "precache"})
	}
	return append(out,
		access{"list", "apps", "daemonsets", "calico-system", ""}, // calico-system: by name only
		access{"get", "apps", "daemonsets", "calico-system", "fluent-bit"},
		access{"list", "apps", "deployments", "calico-system", ""},
		access{"list", "apps", "statefulsets", "kube-system", ""},
		access{"list", "apps", "deployments", "tigera-operator", ""},
		access{"update", "apps", "daemonsets", "kube-system", "calico-node"},
		access{"get", "", "configmaps", "kube-system", "kube-proxy"},
		access{"list", "", "configmaps", "kube-system", ""},
		access{"list", "", "pods", "", ""}, // every namespace
		access{"get", "", "pods", "kube-system", "anything"},
		access{"create", "", "pods", "kube-system", ""},
		access{"get", "", "nodes", "", "node-1"},
		access{"create", "", "events", "kube-system", ""},
		access{"list", "operator.tigera.io", "installations", "", ""},
	)
}

// TestDeployOverlays renders each overlay of deploy/ with kustomize's Go API (hack/render,
// the code make release runs), applies it server-side to a fresh kube-apiserver shaped like
// that install, and checks that every object is accepted, the DaemonSet runs the image
// deploy/base pins (tag and digest, never latest), the ServiceAccount may do exactly what
// precache does in that install — and nothing on Secrets — and the agent, as that
// ServiceAccount, gets its watches running and records an Event.
func TestDeployOverlays(t *testing.T) {
	needAPI(t)
	render := buildRender(t)
	pin := committedPin(t)
	want := "ghcr.io/precache/precache:" + pin.tag + "@" + pin.digest
	for _, tt := range []struct {
		overlay string
		// namespaces the install has before precache is applied (kube-system and default
		// always exist).
		namespaces []string
		operator   bool
	}{
		{overlay: "kubespray"}, // Calico's manifests in kube-system: no calico-system, no tigera-operator, neither created
		{overlay: "operator", namespaces: []string{"tigera-operator", "calico-system"}, operator: true},
	} {
		t.Run(tt.overlay, func(t *testing.T) {
			out, err := exec.Command(render, "build", "-deploy", filepath.Join("..", "..", "deploy"), filepath.Join("..", "..", "deploy", "overlays", tt.overlay)).Output()
			if err != nil {
				t.Fatalf("rendering %s: %v\n%s", tt.overlay, err, stderrOf(err))
			}
			if m := regexp.MustCompile(`(?i)\blatest\b`).Find(out); m != nil {
				t.Errorf("%s says %q", tt.overlay, m)
			}
			objs := decodeAll(t, out)
			for _, u := range objs {
				if u.GetKind() == "Namespace" { // `kubectl delete -k` would delete it and all it holds
					t.Errorf("%s creates Namespace %s", tt.overlay, u.GetName())
				}
			}

			api := startFreshAPI(t, tt.namespaces)
			applyServerSide(t, api, objs)

			ds, err := api.kube.AppsV1().DaemonSets("kube-system").Get(t.Context(), "precache", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			checkPinnedDaemonSet(t, ds, want)
			checkRules(t, objs)

			for _, a := range agentNeeds(tt.operator) {
				if ok, why := api.can(t, a); !ok {
					t.Errorf("%s: the ServiceAccount may not %s: %s", tt.overlay, a, why)
				}
			}
			for _, a := range agentMustNot(append([]string{"kube-system", "default"}, tt.namespaces...), tt.operator) {
				if ok, _ := api.can(t, a); ok {
					t.Errorf("%s: the ServiceAccount may %s", tt.overlay, a)
				}
			}
			api.runAgent(t)
		})
	}
}

// TestDeploySystemd: every variable deploy/systemd/precache.env names (set or commented)
// is one precache bootstrap reads, and the unit runs bootstrap with no set of its own, so
// the set is the whole recovery set the env file describes.
func TestDeploySystemd(t *testing.T) {
	needDaemons(t) // the binary
	help, err := exec.Command(binary, "bootstrap", "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("precache bootstrap --help: %v\n%s", err, help)
	}
	env, err := os.ReadFile(filepath.Join("..", "..", "deploy", "systemd", "precache.env"))
	if err != nil {
		t.Fatal(err)
	}
	names := regexp.MustCompile(`(?m)^#? ?((?:PRECACHE|CONTAINERD)_[A-Z_]+)=`).FindAllSubmatch(env, -1)
	if len(names) < 10 {
		t.Fatalf("precache.env names %d variables", len(names))
	}
	for _, m := range names {
		if !bytes.Contains(help, []byte("[$"+string(m[1])+"]")) {
			t.Errorf("precache.env names %s, which precache bootstrap does not read", m[1])
		}
	}
	if regexp.MustCompile(`(?m)^PRECACHE_(CALICO_VERSION|IMAGES|IMAGES_FILE|ONLY)=`).Match(env) {
		t.Errorf("precache.env sets a set of its own: the default must be the whole recovery set")
	}
	unit, err := os.ReadFile(filepath.Join("..", "..", "deploy", "systemd", "precache-bootstrap.service"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(unit, []byte("\nExecStart=/usr/local/bin/precache bootstrap\n")) ||
		!bytes.Contains(unit, []byte("EnvironmentFile=-/etc/default/precache")) {
		t.Errorf("the unit does not run `precache bootstrap` with /etc/default/precache:\n%s", unit)
	}
}

// buildRender builds hack/render, its own module (kustomize stays out of precache's go.mod).
func buildRender(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "render")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Dir = filepath.Join("..", "..", "hack", "render")
	cmd.Env = append(os.Environ(), "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building hack/render: %v\n%s", err, out)
	}
	return bin
}

type pinned struct{ tag, digest string }

// committedPin reads the image deploy/base/kustomization.yaml pins.
func committedPin(t *testing.T) pinned {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "deploy", "base", "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var k struct {
		Images []struct {
			Name, NewTag, Digest string
		}
	}
	if err := yaml.Unmarshal(data, &k); err != nil {
		t.Fatal(err)
	}
	for _, img := range k.Images {
		if img.Name == "ghcr.io/precache/precache" {
			if img.NewTag == "" || img.Digest == "" {
				t.Fatalf("deploy/base pins %s by newTag %q and digest %q: both are needed", img.Name, img.NewTag, img.Digest)
			}
			return pinned{img.NewTag, img.Digest}
		}
	}
	t.Fatal("deploy/base/kustomization.yaml pins no ghcr.io/precache/precache")
	return pinned{}
}

func decodeAll(t *testing.T, data []byte) []*unstructured.Unstructured {
	t.Helper()
	var out []*unstructured.Unstructured
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for {
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); err != nil {
			if errors.Is(err, io.EOF) {
				return out
			}
			t.Fatal(err)
		}
		if len(u.Object) > 0 {
			out = append(out, u)
		}
	}
}

// freshAPI is a kube-apiserver + etcd of one test's own, with the Calico CRDs, an admin
// client, and the ServiceAccount as a user.
type freshAPI struct {
	kube     kubernetes.Interface
	dyn      dynamic.Interface
	mapper   *restmapper.DeferredDiscoveryRESTMapper
	saConfig string // kubeconfig
}

func startFreshAPI(t *testing.T, namespaces []string) *freshAPI {
	t.Helper()
	env := &envtest.Environment{
		BinaryAssetsDirectory: testenv.KubeAssets(),
		CRDDirectoryPaths:     []string{filepath.Join("testdata", "crds")},
		ErrorIfCRDPathMissing: true,
	}
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("starting kube-apiserver + etcd from %s: %v (run `make tools`)", testenv.KubeAssets(), err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	a := &freshAPI{}
	if a.kube, err = kubernetes.NewForConfig(cfg); err != nil {
		t.Fatal(err)
	}
	if a.dyn, err = dynamic.NewForConfig(cfg); err != nil {
		t.Fatal(err)
	}
	a.mapper = restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(a.kube.Discovery()))
	sa, err := env.AddUser(envtest.User{Name: saUser, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if a.saConfig, err = writeKubeconfig(t.TempDir(), "sa", sa); err != nil {
		t.Fatal(err)
	}
	for _, ns := range namespaces {
		if _, err := a.kube.CoreV1().Namespaces().Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	return a
}

// applyServerSide applies objs in order, as kubectl apply --server-side would.
func applyServerSide(t *testing.T, a *freshAPI, objs []*unstructured.Unstructured) {
	t.Helper()
	for _, u := range objs {
		gvk := u.GroupVersionKind()
		m, err := a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			t.Fatalf("%s %s: %v", gvk.Kind, u.GetName(), err)
		}
		var ri dynamic.ResourceInterface = a.dyn.Resource(m.Resource)
		if ns := u.GetNamespace(); ns != "" {
			ri = a.dyn.Resource(m.Resource).Namespace(ns)
		}
		if _, err := ri.Apply(t.Context(), u.GetName(), u, metav1.ApplyOptions{FieldManager: "precache-deploy-test"}); err != nil {
			t.Errorf("applying %s %s/%s: %v", gvk.Kind, u.GetNamespace(), u.GetName(), err)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
}

// checkPinnedDaemonSet: the container and PRECACHE_SELF_IMAGE name the pinned image exactly.
func checkPinnedDaemonSet(t *testing.T, ds *appsv1.DaemonSet, want string) {
	t.Helper()
	c := ds.Spec.Template.Spec.Containers
	if len(c) != 1 || c[0].Image != want {
		t.Fatalf("the DaemonSet runs %v, want %s", containerImages(c), want)
	}
	self := ""
	for _, e := range c[0].Env {
		if e.Name == "PRECACHE_SELF_IMAGE" {
			self = e.Value
		}
	}
	if self != want {
		t.Errorf("PRECACHE_SELF_IMAGE is %q, want %s (the agent must keep the image it runs)", self, want)
	}
	for _, ic := range ds.Spec.Template.Spec.InitContainers {
		if strings.HasPrefix(ic.Image, "ghcr.io/precache/precache") && ic.Image != want {
			t.Errorf("init container %s runs %s, want %s", ic.Name, ic.Image, want)
		}
	}
}

func containerImages(cs []corev1.Container) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Image)
	}
	return out
}

// checkRules: no rule names Secrets or a wildcard.
func checkRules(t *testing.T, objs []*unstructured.Unstructured) {
	t.Helper()
	for _, u := range objs {
		if k := u.GetKind(); k != "Role" && k != "ClusterRole" {
			continue
		}
		rules, _, _ := unstructured.NestedSlice(u.Object, "rules")
		for _, r := range rules {
			rm, _ := r.(map[string]any)
			for _, field := range []string{"resources", "verbs", "apiGroups"} {
				vals, _, _ := unstructured.NestedStringSlice(rm, field)
				if slices.Contains(vals, "*") || (field == "resources" && slices.Contains(vals, "secrets")) {
					t.Errorf("%s %s/%s grants %s %v", u.GetKind(), u.GetNamespace(), u.GetName(), field, vals)
				}
			}
		}
	}
}

// can asks the API server's authorizer whether the ServiceAccount may make request a.
func (a *freshAPI) can(t *testing.T, r access) (bool, string) {
	t.Helper()
	sar := &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
		User:   saUser,
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"},
		ResourceAttributes: &authzv1.ResourceAttributes{
			Namespace: r.namespace, Verb: r.verb, Group: r.group, Resource: r.resource, Name: r.name,
		},
	}}
	res, err := a.kube.AuthorizationV1().SubjectAccessReviews().Create(t.Context(), sar, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("SubjectAccessReview %s: %v", r, err)
	}
	return res.Status.Allowed, res.Status.Reason
}

// runAgent runs `precache agent` as the ServiceAccount with no containerd: its watches must
// sync (it logs "watching"; a watch the RBAC forbids never syncs), and its Event saying
// containerd is unreachable must be recorded on the Node.
func (a *freshAPI) runAgent(t *testing.T) {
	t.Helper()
	const node = "deploy-node"
	if _, err := a.kube.CoreV1().Nodes().Create(t.Context(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, "agent", "--kubeconfig", a.saConfig, "--node-name", node,
		"--metrics-address", "127.0.0.1:0", "--state-file", filepath.Join(dir, "state.json"), "--root", dir,
		"--containerd-address", filepath.Join(dir, "no-containerd.sock"))
	cmd.Env = append(os.Environ(), "PRECACHE_LOG_FORMAT=json")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	watching, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			log.Write(append(sc.Bytes(), '\n'))
			if strings.Contains(sc.Text(), `"msg":"watching"`) {
				close(watching)
			}
		}
	}()
	defer func() { _ = cmd.Process.Kill(); <-done; _ = cmd.Wait() }()
	select {
	case <-watching:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("the agent, as the ServiceAccount, did not get its watches running in 30 s:\n%s", tail(log.String(), 20))
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		evs, err := a.kube.CoreV1().Events("default").List(t.Context(), metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range evs.Items {
			if e.InvolvedObject.Kind == "Node" && e.InvolvedObject.Name == node && e.Source.Component == "precache" {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no Event from the agent on Node %s in 20 s", node)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func stderrOf(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(ee.Stderr)
	}
	return ""
}
