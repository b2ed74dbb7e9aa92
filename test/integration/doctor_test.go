package integration

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/precache/precache/internal/doctor"
)

const clusterDNSIP = "10.0.0.10" // inside envtest's service range

// kubesprayRoot lays out the files a Kubespray node with systemd-resolved has: the stub in
// resolv.conf, DNS=<cluster DNS IP> in resolved.conf, the kubelet's clusterDNS, and the
// servers systemd-resolved uses in its runtime file (those of DNS=).
func kubesprayRoot(t *testing.T, resolved string) string {
	t.Helper()
	var runtime string
	for _, line := range strings.Split(resolved, "\n") {
		if v, ok := strings.CutPrefix(line, "DNS="); ok {
			for _, ip := range strings.Fields(v) {
				runtime += "nameserver " + ip + "\n"
			}
		}
	}
	return nodeTree(t, map[string]string{
		"etc/resolv.conf":                 "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n",
		"etc/systemd/resolved.conf":       resolved,
		"run/systemd/resolve/resolv.conf": runtime,
		"var/lib/kubelet/config.yaml":     "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nclusterDNS:\n- " + clusterDNSIP + "\n",
	})
}

// nodeTree writes a node's files under a fresh root: path → content, or "-> DEST" for a
// symbolic link to DEST as written.
func nodeTree(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for p, c := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if dest, ok := strings.CutPrefix(c, "-> "); ok {
			if err := os.Symlink(dest, full); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// ubuntuNodeLocalRoot is an Ubuntu node as Kubespray v2.31.0 leaves it with its defaults
// (enable_nodelocaldns: true, nodelocaldns_ip: 169.254.25.10, upstream_dns_servers: []):
// /etc/resolv.conf an absolute link to systemd-resolved's stub file;
// roles/kubernetes/preinstall/templates/resolved.conf.j2 rendered into
// /etc/systemd/resolved.conf.d/kubespray.conf; the kubelet's config
// (roles/kubernetes/node/templates/kubelet-config.v1beta1.yaml.j2) at
// /etc/kubernetes/kubelet-config.yaml with clusterDNS the node-local address and
// resolvConf /run/systemd/resolve/resolv.conf (roles/kubernetes/node/vars/ubuntu-24.yml).
func ubuntuNodeLocalRoot(t *testing.T, kubeletExtra string) string {
	t.Helper()
	return nodeTree(t, map[string]string{
		"etc/resolv.conf":                            "-> /run/systemd/resolve/stub-resolv.conf",
		"run/systemd/resolve/stub-resolv.conf":       "# This is /run/systemd/resolve/stub-resolv.conf managed by man:systemd-resolved(8).\nnameserver 127.0.0.53\noptions edns0 trust-ad\nsearch default.svc.cluster.local svc.cluster.local\n",
		"run/systemd/resolve/resolv.conf":            "# This is /run/systemd/resolve/resolv.conf managed by man:systemd-resolved(8).\nnameserver 169.254.25.10\nsearch default.svc.cluster.local svc.cluster.local\n",
		"etc/systemd/resolved.conf":                  "[Resolve]\n#DNS=\n#FallbackDNS=\n",
		"etc/systemd/resolved.conf.d/kubespray.conf": "[Resolve]\nDNS=169.254.25.10\nFallbackDNS=\nDomains=default.svc.cluster.local svc.cluster.local\nDNSSEC=no\nCache=no-negative\n",
		"etc/kubernetes/kubelet-config.yaml": "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nclusterDomain: cluster.local\nclusterDNS:\n- 169.254.25.10\n" +
			"resolvConf: \"/run/systemd/resolve/resolv.conf\"\n" + kubeletExtra,
	})
}

// nodeLocalDNS creates Kubespray's nodelocaldns ConfigMap and DaemonSet in kube-system
// (roles/kubernetes-apps/ansible/templates/nodelocaldns-{config,daemonset}.yml.j2, v2.31.0,
// abridged), forwarding names outside the cluster to upstream.
func nodeLocalDNS(t *testing.T, upstream string) {
	t.Helper()
	corefile := "cluster.local:53 {\n    errors\n    bind 169.254.25.10\n    forward . " + clusterDNSIP + " {\n        force_tcp\n    }\n}\n" +
		".:53 {\n    errors\n    cache 30\n    reload\n    loop\n    bind 169.254.25.10\n    forward . " + upstream + "\n\n    prometheus :9253\n}\n"
	ctx := t.Context()
	cms := kubeClient.CoreV1().ConfigMaps("kube-system")
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "nodelocaldns"}, Data: map[string]string{"Corefile": corefile}}
	if _, err := cms.Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cms.Delete(testContext(), "nodelocaldns", metav1.DeleteOptions{}) })
	labels := map[string]string{"k8s-app": "nodelocaldns"}
	ds := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "nodelocaldns"},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{HostNetwork: true, DNSPolicy: corev1.DNSDefault, Containers: []corev1.Container{{
					Name: "node-cache", Image: "registry.k8s.io/dns/k8s-dns-node-cache:1.25.0",
					Args: []string{"-localip", "169.254.25.10", "-conf", "/etc/coredns/Corefile", "-upstreamsvc", "coredns"},
				}}},
			},
		},
	}
	if _, err := kubeClient.AppsV1().DaemonSets("kube-system").Create(ctx, ds, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = kubeClient.AppsV1().DaemonSets("kube-system").Delete(testContext(), "nodelocaldns", metav1.DeleteOptions{})
	})
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
	needAPI(t)
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

	// Before: the absolute link was followed in doctor's own filesystem and the check
	// SKIPped; with it followed, the node-local shape was blamed on the CoreDNS service.
	t.Run("Kubespray's default on Ubuntu: node-local DNS behind an absolute resolv.conf link", func(t *testing.T) {
		nodeLocalDNS(t, "/etc/resolv.conf")
		root := ubuntuNodeLocalRoot(t, "")
		// containerd's root, as the CRI reports it, is a link on the node to another disk.
		croot := filepath.Join(root, n.Dir, "root")
		for _, dir := range []string{filepath.Dir(croot), filepath.Join(root, "data/containerd")} {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Symlink("/data/containerd", croot); err != nil {
			t.Fatal(err)
		}
		res, r := runDoctor(t, n, "--kubeconfig", adminKubecfg, "--root", root)
		loop := res["dns-loop"]
		evidence := strings.Join(loop.Evidence, "\n")
		if r.code != 2 || loop.Status != doctor.Fail {
			t.Fatalf("exit %d, dns-loop %+v\n%s", r.code, loop, r.stdout)
		}
		for _, want := range []string{"node-local DNS (169.254.25.10, /etc/systemd/resolved.conf.d/kubespray.conf:2)", "back into the cluster"} {
			if !strings.Contains(loop.Summary, want) {
				t.Errorf("summary lacks %q: %s", want, loop.Summary)
			}
		}
		for _, want := range []string{
			"/etc/resolv.conf -> /run/systemd/resolve/stub-resolv.conf: nameserver 127.0.0.53",
			"node-local DNS 169.254.25.10 (from kubelet clusterDNS, /etc/kubernetes/kubelet-config.yaml:4, ConfigMap kube-system/nodelocaldns)",
			"registry.k8s.io/dns/k8s-dns-node-cache:1.25.0 (DaemonSet kube-system/nodelocaldns)",
			"forwards names outside the cluster to /etc/resolv.conf (ConfigMap kube-system/nodelocaldns, Corefile line 14)",
			"/run/systemd/resolve/resolv.conf: 169.254.25.10 (node-local DNS)",
			"CoreDNS service " + clusterDNSIP + " (from Service kube-system/kube-dns)",
		} {
			if !strings.Contains(evidence, want) {
				t.Errorf("evidence lacks %q:\n%s", want, evidence)
			}
		}
		if strings.Contains(evidence+loop.Summary, root) {
			t.Errorf("evidence shows the root %s rather than node paths:\n%s", root, evidence)
		}
		for _, want := range []string{"upstream_dns_servers", "resolvconf_mode: none", "FallbackDNS= does not help"} {
			if !strings.Contains(loop.Fix, want) {
				t.Errorf("fix lacks %q: %s", want, loop.Fix)
			}
		}
		if disk := res["disk"]; disk.Status == doctor.Skip || len(disk.Evidence) == 0 || !strings.HasPrefix(disk.Evidence[0], n.Dir+"/root -> /data/containerd: ") {
			t.Errorf("disk: %+v", disk)
		}

		// The images check covers the recovery set, and says which images the node's
		// DNS depends on: here node-local DNS's, and, since it forwards back into the
		// cluster, Calico's.
		const nodeCache = "registry.k8s.io/dns/k8s-dns-node-cache:1.25.0"
		imgs := res["images"]
		if imgs.Status != doctor.Fail || !strings.Contains(imgs.Summary, "1 of them on the node's DNS path") ||
			!strings.Contains(strings.Join(imgs.Evidence, "\n"), nodeCache+": ") || !strings.Contains(strings.Join(imgs.Evidence, "\n"), "[the node's DNS depends on it: nodelocaldns]") {
			t.Errorf("images, node-local DNS's image missing: %+v", imgs)
		}
		pushAddons(t)
		if r := n.precache(nil, "bootstrap", "--kubeconfig", adminKubecfg, "--root", root); r.code != 0 {
			t.Fatalf("bootstrap: %s", r.stderr)
		}
		res, _ = runDoctor(t, n, "--kubeconfig", adminKubecfg, "--root", root)
		if imgs := res["images"]; imgs.Status != doctor.OK || !strings.Contains(imgs.Summary, "the node's DNS depends on calico, nodelocaldns") {
			t.Errorf("images after bootstrap of the recovery set: %+v", imgs)
		}
	})

	t.Run("node-local DNS with upstream_dns_servers: WARN naming its pod's image", func(t *testing.T) {
		nodeLocalDNS(t, "192.0.2.53")
		root := ubuntuNodeLocalRoot(t, "")
		res, r := runDoctor(t, n, "--kubeconfig", adminKubecfg, "--root", root)
		loop := res["dns-loop"]
		if loop.Status != doctor.Warn || !strings.Contains(loop.Summary, "sends names outside the cluster to 192.0.2.53") ||
			!strings.Contains(loop.Fix, "--image registry.k8s.io/dns/k8s-dns-node-cache:1.25.0") {
			t.Errorf("exit %d, dns-loop %+v", r.code, loop)
		}
	})

	t.Run("the kubelet re-checks images the allowlist misses", func(t *testing.T) {
		root := ubuntuNodeLocalRoot(t, "imagePullCredentialsVerificationPolicy: NeverVerifyAllowlistedImages\npreloadedImagesVerificationAllowlist:\n- docker.io/calico/node\n")
		res, r := runDoctor(t, n, "--kubeconfig", adminKubecfg, "--root", root)
		v := res["kubelet-pull-verification"]
		evidence := strings.Join(v.Evidence, "\n")
		if r.code != 2 || v.Status != doctor.Fail || !strings.Contains(v.Summary, "/etc/kubernetes/kubelet-config.yaml:8") ||
			!strings.Contains(evidence, "not in the allowlist: docker.io/calico/cni:"+dockerVersion) || strings.Contains(evidence, "not in the allowlist: docker.io/calico/node:") {
			t.Errorf("exit %d, kubelet-pull-verification %+v", r.code, v)
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
