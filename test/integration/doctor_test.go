package integration

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/precache/precache/internal/doctor"
)

const clusterDNSIP = "10.0.0.10" // inside envtest's service range

// kubesprayRoot lays out the files a Kubespray node with systemd-resolved has: the stub in
// resolv.conf, DNS=<cluster DNS IP> in resolved.conf, the kubelet's clusterDNS.
func kubesprayRoot(t *testing.T, resolved string) string {
	t.Helper()
	root := t.TempDir()
	files := map[string]string{
		"etc/resolv.conf":                 "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n",
		"etc/systemd/resolved.conf":       resolved,
		"run/systemd/resolve/resolv.conf": "nameserver " + clusterDNSIP + "\n",
		"var/lib/kubelet/config.yaml":     "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nclusterDNS:\n- " + clusterDNSIP + "\n",
	}
	if !strings.Contains(resolved, clusterDNSIP) {
		files["run/systemd/resolve/resolv.conf"] = "nameserver 192.0.2.53\nnameserver " + clusterDNSIP + "\n"
	}
	for p, c := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func kubeDNS(t *testing.T) {
	t.Helper()
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "kube-dns"},
		Spec: corev1.ServiceSpec{ClusterIP: clusterDNSIP, Ports: []corev1.ServicePort{{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP}}}}
	if _, err := kubeClient.CoreV1().Services("kube-system").Create(t.Context(), svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = kubeClient.CoreV1().Services("kube-system").Delete(testContext(), "kube-dns", metav1.DeleteOptions{})
	})
}

func runDoctor(t *testing.T, n *node, args ...string) (map[string]doctor.Result, result) {
	t.Helper()
	// The node's containerd config is where doctor looks for it: under --root.
	for i, a := range args {
		if a == "--root" && i+1 < len(args) {
			cfg, err := os.ReadFile(filepath.Join(n.Dir, "config.toml"))
			if err != nil {
				t.Fatal(err)
			}
			_ = os.MkdirAll(filepath.Join(args[i+1], "etc/containerd"), 0o755)
			if err := os.WriteFile(filepath.Join(args[i+1], "etc/containerd/config.toml"), cfg, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	r := n.precache(nil, append([]string{"doctor", "-o", "json"}, args...)...)
	var list []doctor.Result
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil {
		t.Fatalf("doctor -o json: %v\n%s\n%s", err, r.stdout, r.stderr)
	}
	out := map[string]doctor.Result{}
	for _, res := range list {
		out[res.Check] = res
	}
	return out, r
}

// TestDoctor: against a real containerd and API server, with a Kubespray-shaped node root.
func TestDoctor(t *testing.T) {
	manifestInstall(t, "docker.io", dockerVersion)
	kubeDNS(t)
	n := newNode(t)
	if r := n.precache(nil, "bootstrap", "--kubeconfig", adminKubecfg); r.code != 0 {
		t.Fatalf("bootstrap: %s", r.stderr)
	}

	t.Run("the loop, as Kubespray leaves it", func(t *testing.T) {
		root := kubesprayRoot(t, "[Resolve]\nDNS="+clusterDNSIP+"\nDomains=default.svc.cluster.local\n")
		res, r := runDoctor(t, n, "--kubeconfig", adminKubecfg, "--root", root)
		if r.code != 2 {
			t.Errorf("exit %d, want 2 (a FAIL)", r.code)
		}
		loop := res["dns-loop"]
		if loop.Status != doctor.Fail || !strings.Contains(loop.Fix, "upstream_dns_servers") || !strings.Contains(strings.Join(loop.Evidence, " "), "/etc/systemd/resolved.conf") {
			t.Errorf("dns-loop: %+v", loop)
		}
		if res["images"].Status != doctor.OK {
			t.Errorf("images after bootstrap: %+v", res["images"])
		}
		if res["bundle"].Status != doctor.Warn {
			t.Errorf("bundle with none configured: %+v", res["bundle"])
		}
		wantCtr := doctor.OK
		if !n.PinningSupported() {
			wantCtr = doctor.Warn
		}
		if res["containerd"].Status != wantCtr {
			t.Errorf("containerd %s: %+v", n.Version, res["containerd"])
		}
	})

	t.Run("fixed resolver and a bundle: all OK", func(t *testing.T) {
		root := kubesprayRoot(t, "[Resolve]\nDNS=192.0.2.53 "+clusterDNSIP+"\n")
		bundle := filepath.Join(root, "var/lib/precache/calico.tar.zst")
		if r := n.precache(nil, "bundle", "--calico-version", dockerVersion, "-o", bundle); r.code != 0 {
			t.Fatalf("bundle: %s", r.stderr)
		}
		res, r := runDoctor(t, n, "--kubeconfig", adminKubecfg, "--root", root, "--bundle", "/var/lib/precache/calico.tar.zst")
		for _, check := range []string{"dns-loop", "images", "bundle"} {
			if res[check].Status != doctor.OK {
				t.Errorf("%s: %+v", check, res[check])
			}
		}
		want := 0
		if !n.PinningSupported() {
			want = 0 // a WARN only; --strict makes it 1
		}
		if r.code != want {
			t.Errorf("exit %d, want %d\n%s", r.code, want, r.stdout)
		}
	})

	t.Run("images missing: FAIL naming them", func(t *testing.T) {
		fresh := newNode(t)
		root := kubesprayRoot(t, "[Resolve]\nDNS=192.0.2.53\n")
		res, r := runDoctor(t, fresh, "--kubeconfig", adminKubecfg, "--root", root)
		if r.code != 2 || res["images"].Status != doctor.Fail || !strings.Contains(strings.Join(res["images"].Evidence, " "), "docker.io/calico/node:"+dockerVersion) {
			t.Errorf("exit %d, images: %+v", r.code, res["images"])
		}
	})
}
