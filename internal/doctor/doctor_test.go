package doctor

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeTree(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for p, content := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// The exact shape Kubespray leaves on a node with resolvconf_mode: host_resolvconf and
// systemd-resolved: the stub in resolv.conf, the cluster DNS service IP in resolved.conf.
const kubesprayResolved = `# Kubespray managed
[Resolve]
DNS=10.233.0.3
Domains=default.svc.cluster.local svc.cluster.local
`

func TestDNSLoop(t *testing.T) {
	t.Parallel()
	stub := "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n"
	tests := []struct {
		name       string
		files      map[string]string
		clusterDNS []string
		want       Status
		evidence   string
	}{
		{"kubespray: resolved.conf DNS=cluster IP only", map[string]string{
			"etc/resolv.conf":                 stub,
			"etc/systemd/resolved.conf":       kubesprayResolved,
			"run/systemd/resolve/resolv.conf": "nameserver 10.233.0.3\n",
		}, []string{"10.233.0.3"}, Fail, "10.233.0.3 (from /etc/systemd/resolved.conf, /run/systemd/resolve/resolv.conf)"},
		{"drop-in adds an upstream after the cluster IP", map[string]string{
			"etc/resolv.conf":                           stub,
			"etc/systemd/resolved.conf":                 kubesprayResolved,
			"etc/systemd/resolved.conf.d/upstream.conf": "[Resolve]\nDNS=192.0.2.53\n",
		}, []string{"10.233.0.3"}, Warn, "192.0.2.53 (from /etc/systemd/resolved.conf.d/upstream.conf)"},
		{"upstream first (resolvconf_extra_dns_servers before the cluster)", map[string]string{
			"etc/resolv.conf":           stub,
			"etc/systemd/resolved.conf": "[Resolve]\nDNS=192.0.2.53 10.233.0.3\n",
		}, []string{"10.233.0.3"}, OK, ""},
		{"plain resolv.conf, only the cluster IP", map[string]string{
			"etc/resolv.conf": "search default.svc.cluster.local\nnameserver 10.233.0.3\n",
		}, []string{"10.233.0.3"}, Fail, "/etc/resolv.conf resolves through 10.233.0.3"},
		{"plain resolv.conf, no cluster IP", map[string]string{
			"etc/resolv.conf": "nameserver 192.0.2.1\nnameserver 192.0.2.2\n",
		}, []string{"10.233.0.3"}, OK, ""},
		{"resolved, port and SNI forms", map[string]string{
			"etc/resolv.conf":           stub,
			"etc/systemd/resolved.conf": "[Resolve]\nDNS=10.233.0.3:53#cluster.local\n",
		}, []string{"10.233.0.3"}, Fail, ""},
		{"a DNS= outside [Resolve] does not count", map[string]string{
			"etc/resolv.conf":           stub,
			"etc/systemd/resolved.conf": "[Other]\nDNS=10.233.0.3\n[Resolve]\nDNS=192.0.2.53\n",
		}, []string{"10.233.0.3"}, OK, ""},
		{"cluster DNS unknown", map[string]string{"etc/resolv.conf": "nameserver 10.233.0.3\n"}, nil, Skip, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r, err := ReadResolvers(writeTree(t, tt.files))
			if err != nil {
				t.Fatal(err)
			}
			got := DNSLoop(r, tt.clusterDNS, []string{"--dns-fallback"})
			if got.Status != tt.want {
				t.Fatalf("status %s, want %s: %+v", got.Status, tt.want, got)
			}
			if tt.evidence != "" && !strings.Contains(strings.Join(got.Evidence, "\n"), tt.evidence) {
				t.Errorf("evidence %q lacks %q", got.Evidence, tt.evidence)
			}
			if got.Status == Fail && (!strings.Contains(got.Fix, "upstream_dns_servers") || !strings.Contains(got.Fix, "--dns-fallback")) {
				t.Errorf("fix %q should name the Kubespray setting and precache's remedies", got.Fix)
			}
		})
	}
}

func TestReadResolversMissingResolvConf(t *testing.T) {
	t.Parallel()
	if _, err := ReadResolvers(t.TempDir()); err == nil {
		t.Fatal("want an error for a root without /etc/resolv.conf")
	}
}

func TestPinningSupported(t *testing.T) {
	t.Parallel()
	for v, want := range map[string]bool{"1.6.20~ds1": false, "v1.7.2": false, "1.7.3": true, "v1.7.27": true, "2.4.2+unknown": true, "v2.0.0": true, "junk": false} {
		if got := PinningSupported(v); got != want {
			t.Errorf("PinningSupported(%q) = %t, want %t", v, got, want)
		}
	}
}

func TestContainerdCheck(t *testing.T) {
	t.Parallel()
	cri := func(snap string, discard bool, configPath string) map[string]any {
		return map[string]any{"config": map[string]any{
			"containerd": map[string]any{"snapshotter": snap, "discardUnpackedLayers": discard},
			"registry":   map[string]any{"configPath": configPath},
		}}
	}
	tests := []struct {
		name string
		c    Containerd
		want Status
		says string
	}{
		{"good", Containerd{Version: "2.4.2", Snapshotter: "overlayfs", CRI: cri("overlayfs", false, "/etc/containerd/certs.d")}, OK, ""},
		{"old", Containerd{Version: "1.6.20", Snapshotter: "overlayfs", CRI: cri("overlayfs", false, "/etc/containerd/certs.d")}, Warn, "pinning needs ≥ 1.7.3"},
		{"snapshotter differs", Containerd{Version: "2.4.2", Snapshotter: "overlayfs", CRI: cri("native", false, "/x")}, Warn, `unpacks into "native"`},
		{"discard", Containerd{Version: "2.4.2", Snapshotter: "overlayfs", CRI: cri("overlayfs", true, "/x")}, Warn, "discard_unpacked_layers"},
		{"no config_path", Containerd{Version: "2.4.2", Snapshotter: "overlayfs", CRI: cri("overlayfs", false, "")}, Warn, "config_path is empty"},
		{"2.x file without config_path: the default applies", Containerd{Version: "2.4.2", Snapshotter: "overlayfs",
			Config: map[string]any{"plugins": map[string]any{"io.containerd.cri.v1.images": map[string]any{"snapshotter": "overlayfs"}}}}, OK, ""},
		{"1.6 file with discard_unpacked_layers", Containerd{Version: "1.7.20", Snapshotter: "overlayfs",
			Config: map[string]any{"plugins": map[string]any{"io.containerd.grpc.v1.cri": map[string]any{"containerd": map[string]any{"discard_unpacked_layers": true},
				"registry": map[string]any{"config_path": "/etc/containerd/certs.d"}}}}}, Warn, "discard_unpacked_layers"},
		{"unreachable", Containerd{Address: "/x.sock", Reachable: os.ErrNotExist}, Fail, "cannot reach containerd"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := ContainerdCheck(tt.c)
			if got.Status != tt.want || !strings.Contains(got.Summary, tt.says) {
				t.Fatalf("%s %q, want %s containing %q", got.Status, got.Summary, tt.want, tt.says)
			}
		})
	}
}

func TestKubeletGCAndDisk(t *testing.T) {
	t.Parallel()
	root := writeTree(t, map[string]string{"var/lib/kubelet/config.yaml": "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nclusterDNS:\n- 10.233.0.3\nimageGCHighThresholdPercent: 70\n"})
	k, err := ReadKubelet(filepath.Join(root, "var/lib/kubelet/config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if k.ImageGCHighThresholdPercent != 70 || k.ImageGCLowThresholdPercent != 80 || len(k.ClusterDNS) != 1 {
		t.Fatalf("read %+v", k)
	}
	if got := KubeletGC(k, 75, false).Status; got != Fail {
		t.Errorf("75 %% used, high threshold 70, no pinning: %s, want FAIL", got)
	}
	if got := KubeletGC(k, 75, true).Status; got != OK {
		t.Errorf("with pinning: %s, want OK", got)
	}
	if got := Disk("/var/lib/containerd", 1<<30, 2<<30).Status; got != Fail {
		t.Errorf("disk 1 GiB free for 2 GiB: %s", got)
	}
	if got := Disk("/var/lib/containerd", 3<<30, 2<<30).Status; got != Warn {
		t.Errorf("disk 3 GiB free for 2 GiB: %s", got)
	}
	if got := ExitCode([]Result{{Status: OK}, {Status: Warn}}, false); got != 0 {
		t.Errorf("exit %d for a warning without --strict", got)
	}
	if got := ExitCode([]Result{{Status: Warn}}, true); got != 1 {
		t.Errorf("exit %d for a warning with --strict", got)
	}
	if got := ExitCode([]Result{{Status: Warn}, {Status: Fail}}, true); got != 2 {
		t.Errorf("exit %d with a failure", got)
	}
}
