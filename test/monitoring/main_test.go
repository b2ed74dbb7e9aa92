// Package monitoring tests deploy/monitoring with Prometheus' own code: the PrometheusRule's
// groups go through Prometheus' rule parser, and each alert is evaluated by Prometheus'
// rule and PromQL engines over samples scraped from the real agent (precache agent against a
// real containerd 2.4.2 and kube-apiserver), in states made real: all right, the node's DNS
// depending on the cluster, a registry that refuses, the agent gone. The PodMonitor's
// relabeling is applied with Prometheus' relabeling code, and the Grafana dashboard's
// queries are parsed by Prometheus' parser and checked against the agent's real /metrics.
package monitoring

import (
	"bytes"
	"context"
	"debug/buildinfo"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/precache/precache/test/testenv"
)

const (
	repoRoot      = "../.."
	calicoVersion = "v3.28.1" // what the test cluster runs, pushed to each agent's registry
	clusterDNSIP  = "10.0.0.10"
)

var (
	binary       string
	adminKubecfg string
	kubeClient   kubernetes.Interface
	// envErr says why the daemons could not be had (never tolerated in CI).
	envErr error
)

func TestMain(m *testing.M) {
	code, err := setup(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "monitoring:", err)
		os.Exit(1)
	}
	os.Exit(code)
}

// needDaemons skips t when containerd or kube-apiserver could not be started (never in CI).
func needDaemons(t *testing.T) {
	t.Helper()
	if envErr != nil {
		t.Skipf("SKIPPED, no daemons: %v — run `make tools` (CI never skips)", envErr)
	}
}

func setup(m *testing.M) (int, error) {
	logrus.SetLevel(logrus.WarnLevel)
	soft := func(err error) (int, error) {
		if os.Getenv("CI") != "" {
			return 0, err
		}
		envErr = err
		fmt.Fprintln(os.Stderr, "monitoring:", err, "— tests that need it are skipped (CI never skips)")
		return m.Run(), nil
	}
	if _, err := os.Stat(testenv.ContainerdBinary()); err != nil {
		return soft(fmt.Errorf("no containerd at %s: %w", testenv.ContainerdBinary(), err))
	}
	tmp, err := os.MkdirTemp("", "precache-mon-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(tmp)

	binary = os.Getenv("PRECACHE_BIN")
	if binary == "" {
		// Built in precache's own module: this module's Prometheus dependencies must not
		// change what the agent is built with.
		binary = filepath.Join(tmp, "precache")
		cmd := exec.Command("go", "build", "-o", binary, "./cmd/precache")
		cmd.Dir = repoRoot
		if out, err := cmd.CombinedOutput(); err != nil {
			return 0, fmt.Errorf("building precache: %w\n%s", err, out)
		}
	}

	env := &envtest.Environment{
		BinaryAssetsDirectory: testenv.KubeAssets(),
		CRDDirectoryPaths:     []string{filepath.Join(repoRoot, "test", "integration", "testdata", "crds")},
		ErrorIfCRDPathMissing: true,
	}
	cfg, err := env.Start()
	if err != nil {
		return soft(fmt.Errorf("starting kube-apiserver + etcd from %s: %w (run `make tools`)", testenv.KubeAssets(), err))
	}
	defer func() { _ = env.Stop() }()
	if kubeClient, err = kubernetes.NewForConfig(cfg); err != nil {
		return 0, err
	}
	admin, err := env.AddUser(envtest.User{Name: "precache-admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return 0, err
	}
	kc, err := admin.KubeConfig()
	if err != nil {
		return 0, err
	}
	adminKubecfg = filepath.Join(tmp, "admin.kubeconfig")
	if err := os.WriteFile(adminKubecfg, kc, 0o600); err != nil {
		return 0, err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return 0, err
	}
	if err := installCalico(dyn); err != nil {
		return 0, err
	}
	return m.Run(), nil
}

// releaseImage matches the image references of the release manifests the integration
// suite keeps.
var releaseImage = regexp.MustCompile(`(docker\.io|quay\.io)/calico/([a-z0-9-]+):v3\.[0-9]+\.[0-9]+`)

// installCalico creates the workloads of Calico's calico.yaml (calico-node,
// calico-kube-controllers) at calicoVersion, and the CoreDNS Service a Kubespray cluster has.
func installCalico(dyn dynamic.Interface) error {
	file := filepath.Join(repoRoot, "test", "integration", "testdata", "calico", "calico-v3.30.2.yaml")
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	data = releaseImage.ReplaceAll(data, []byte("docker.io/calico/${2}:"+calicoVersion))
	ctx := context.Background()
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for {
		var u unstructured.Unstructured
		if err := dec.Decode(&u.Object); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return fmt.Errorf("%s: %w", file, err)
		}
		if len(u.Object) == 0 {
			continue
		}
		gvr := schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: strings.ToLower(u.GetKind()) + "s"}
		if _, err := dyn.Resource(gvr).Namespace(u.GetNamespace()).Create(ctx, &u, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("%s: %s %s: %w", file, u.GetKind(), u.GetName(), err)
		}
	}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "kube-dns"},
		Spec: corev1.ServiceSpec{ClusterIP: clusterDNSIP, Ports: []corev1.ServicePort{{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP}}}}
	_, err = kubeClient.CoreV1().Services("kube-system").Create(ctx, svc, metav1.CreateOptions{})
	return err
}

// TestAgentBuiltInItsOwnModule: the agent under test is built in precache's module, with
// precache's go.mod versions, whatever this module's Prometheus dependencies require.
func TestAgentBuiltInItsOwnModule(t *testing.T) {
	needDaemons(t)
	info, err := buildinfo.ReadFile(binary)
	if err != nil {
		t.Fatal(err)
	}
	if info.Main.Path != "github.com/precache/precache" {
		t.Fatalf("%s was built in module %q", binary, info.Main.Path)
	}
	data, err := os.ReadFile(filepath.Join(repoRoot, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{}
	for _, m := range regexp.MustCompile(`(?m)^\s*(\S+) (v\S+)`).FindAllStringSubmatch(string(data), -1) {
		want[m[1]] = m[2]
	}
	checked := 0
	for _, d := range info.Deps {
		if v, ok := want[d.Path]; ok && d.Replace == nil {
			checked++
			if d.Version != v {
				t.Errorf("%s %s in the binary, precache's go.mod says %s", d.Path, d.Version, v)
			}
		}
	}
	if checked < 10 {
		t.Errorf("only %d of the binary's modules found in precache's go.mod", checked)
	}
}
