package nodefiles

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/precache/precache/internal/hostfs"
	"github.com/precache/precache/internal/manifest"
)

// nodeRoot writes a node's files under a fresh root: path → content, or "-> DEST" for a
// symbolic link to DEST as written, or "DIR" for an empty directory.
func nodeRoot(t *testing.T, files map[string]string) hostfs.Root {
	t.Helper()
	root := t.TempDir()
	for p, c := range files {
		full := filepath.Join(root, p)
		if c == "DIR" {
			if err := os.MkdirAll(full, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
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
	return hostfs.Root(root)
}

// kubesprayKubelet is roles/kubernetes/node/templates/kubelet-config.v1beta1.yaml.j2
// (kubespray 46dbdd39, 2026-08) rendered with its defaults for Kubernetes 1.36, abridged
// after staticPodPath: kube_manifest_dir is /etc/kubernetes/manifests.
const kubesprayKubelet = `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
nodeStatusUpdateFrequency: "10s"
failSwapOn: True
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: True
  x509:
    clientCAFile: /etc/kubernetes/ssl/ca.crt
authorization:
  mode: Webhook
failCgroupV1: False
staticPodPath: /etc/kubernetes/manifests
cgroupDriver: systemd
containerLogMaxFiles: 5
containerLogMaxSize: 10Mi
containerRuntimeEndpoint : unix:///var/run/containerd/containerd.sock
maxPods: 110
clusterDomain: cluster.local
clusterDNS:
- 169.254.25.10
resolvConf: "/run/systemd/resolve/resolv.conf"
`

func TestFindStaticPodDir(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		files    map[string]string
		explicit string
		want     StaticPodDir
		wantErr  string
	}{
		{
			name:  "Kubespray's kubelet config",
			files: map[string]string{"etc/kubernetes/kubelet-config.yaml": kubesprayKubelet},
			want:  StaticPodDir{Path: "/etc/kubernetes/manifests", Source: "/etc/kubernetes/kubelet-config.yaml:15"},
		},
		{
			name: "kubeadm's, with another directory, first in the search order",
			files: map[string]string{
				"var/lib/kubelet/config.yaml":        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nstaticPodPath: /srv/static/\n",
				"etc/kubernetes/kubelet-config.yaml": kubesprayKubelet,
			},
			want: StaticPodDir{Path: "/srv/static", Source: "/var/lib/kubelet/config.yaml:3"},
		},
		{
			name:  "no staticPodPath: the default",
			files: map[string]string{"var/lib/kubelet/config.yaml": "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nclusterDNS:\n- 10.233.0.3\n"},
			want:  StaticPodDir{Path: "/etc/kubernetes/manifests", Source: "the default (/var/lib/kubelet/config.yaml sets no staticPodPath)"},
		},
		{
			name:  "an empty staticPodPath: no static pods",
			files: map[string]string{"var/lib/kubelet/config.yaml": "kind: KubeletConfiguration\nstaticPodPath: \"\"\n"},
			want:  StaticPodDir{Source: "/var/lib/kubelet/config.yaml:2 (staticPodPath is empty: no static pods)"},
		},
		{
			name: "no config file: the default",
			want: StaticPodDir{Path: "/etc/kubernetes/manifests", Source: "the default (no kubelet config at /var/lib/kubelet/config.yaml or /etc/kubernetes/kubelet-config.yaml)"},
		},
		{
			name:  "a link to the config, resolved inside the root",
			files: map[string]string{"var/lib/kubelet/config.yaml": "-> /etc/kubernetes/kubelet-config.yaml", "etc/kubernetes/kubelet-config.yaml": kubesprayKubelet},
			want:  StaticPodDir{Path: "/etc/kubernetes/manifests", Source: "/var/lib/kubelet/config.yaml -> /etc/kubernetes/kubelet-config.yaml:15"},
		},
		{
			name:     "an explicit file that is missing is an error",
			explicit: "/etc/kubelet.yaml",
			wantErr:  "reading the kubelet's config: open /etc/kubelet.yaml: no such file or directory",
		},
		{
			name:    "a config that does not parse is an error",
			files:   map[string]string{"var/lib/kubelet/config.yaml": "staticPodPath: [\n"},
			wantErr: "/var/lib/kubelet/config.yaml: ",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := FindStaticPodDir(nodeRoot(t, tt.files), tt.explicit)
			if tt.wantErr != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %+v, %v\nwant %+v", got, err, tt.want)
			}
		})
	}
}

// nginxProxy is roles/kubernetes/node/templates/manifests/nginx-proxy.manifest.j2
// (kubespray 46dbdd39) rendered with its defaults: loadbalancer_apiserver_pod_name
// nginx-proxy, nginx_image_repo docker.io/library/nginx, nginx_image_tag 1.30.1-alpine,
// healthcheck port 8081. Kubespray writes it to {{ kube_manifest_dir }}/nginx-proxy.yml.
const nginxProxy = `apiVersion: v1
kind: Pod
metadata:
  name: nginx-proxy
  namespace: kube-system
  labels:
    addonmanager.kubernetes.io/mode: Reconcile
    k8s-app: kube-nginx
  annotations:
    nginx-cfg-checksum: "1b5e2c0d9a3f4e6b7c8d9e0f1a2b3c4d5e6f7a8b"
spec:
  hostNetwork: true
  dnsPolicy: ClusterFirstWithHostNet
  nodeSelector:
    kubernetes.io/os: linux
  priorityClassName: system-node-critical
  containers:
  - name: nginx-proxy
    image: docker.io/library/nginx:1.30.1-alpine
    imagePullPolicy: IfNotPresent
    resources:
      requests:
        cpu: 25m
        memory: 32M
    livenessProbe:
      httpGet:
        path: /healthz
        port: 8081
    readinessProbe:
      httpGet:
        path: /healthz
        port: 8081
    volumeMounts:
    - mountPath: /etc/nginx
      name: etc-nginx
      readOnly: true
  volumes:
  - name: etc-nginx
    hostPath:
      path: /etc/nginx
`

// haproxy is roles/kubernetes/node/templates/manifests/haproxy.manifest.j2 rendered with
// loadbalancer_apiserver_type: haproxy (pod name haproxy, docker.io/library/haproxy:3.2.19-alpine), abridged.
const haproxy = `apiVersion: v1
kind: Pod
metadata:
  name: haproxy
  namespace: kube-system
  labels:
    addonmanager.kubernetes.io/mode: Reconcile
    k8s-app: kube-haproxy
spec:
  hostNetwork: true
  containers:
  - name: haproxy
    image: docker.io/library/haproxy:3.2.19-alpine
`

// kubeadmPod is a control-plane static pod as kubeadm writes it
// (cmd/kubeadm/app/util/staticpod ComponentPod at v1.37.2: named after the component,
// labels component=<name> and tier=control-plane, marshalled to YAML), abridged.
func kubeadmPod(name, image string) string {
	return `apiVersion: v1
kind: Pod
metadata:
  annotations:
    kubernetes.io/config.hash: 0123456789abcdef
  creationTimestamp: null
  labels:
    component: ` + name + `
    tier: control-plane
  name: ` + name + `
  namespace: kube-system
spec:
  containers:
  - command:
    - ` + name + `
    image: ` + image + `
    imagePullPolicy: IfNotPresent
    name: ` + name + `
  hostNetwork: true
  priority: 2000001000
  priorityClassName: system-node-critical
status: {}
`
}

func TestStaticPods(t *testing.T) {
	t.Parallel()
	const dir = "/etc/kubernetes/manifests"
	type row struct {
		name  string
		part  manifest.Part
		where []string // "file:line image"
	}
	tests := []struct {
		name      string
		files     map[string]string
		want      []row
		warnFiles []string
	}{
		{
			name:  "a Kubespray worker: nginx-proxy",
			files: map[string]string{"etc/kubernetes/manifests/nginx-proxy.yml": nginxProxy},
			want:  []row{{"nginx-proxy", manifest.PartAPIServerProxy, []string{"/etc/kubernetes/manifests/nginx-proxy.yml:19 docker.io/library/nginx:1.30.1-alpine"}}},
		},
		{
			name:  "a Kubespray worker with haproxy",
			files: map[string]string{"etc/kubernetes/manifests/haproxy.yml": haproxy},
			want:  []row{{"haproxy", manifest.PartAPIServerProxy, []string{"/etc/kubernetes/manifests/haproxy.yml:13 docker.io/library/haproxy:3.2.19-alpine"}}},
		},
		{
			name: "a control-plane node: kubeadm's static pods, etcd among them",
			files: map[string]string{
				"etc/kubernetes/manifests/kube-apiserver.yaml":          kubeadmPod("kube-apiserver", "registry.k8s.io/kube-apiserver:v1.36.1"),
				"etc/kubernetes/manifests/kube-controller-manager.yaml": kubeadmPod("kube-controller-manager", "registry.k8s.io/kube-controller-manager:v1.36.1"),
				"etc/kubernetes/manifests/kube-scheduler.yaml":          kubeadmPod("kube-scheduler", "registry.k8s.io/kube-scheduler:v1.36.1"),
				"etc/kubernetes/manifests/etcd.yaml":                    kubeadmPod("etcd", "registry.k8s.io/etcd:3.6.4-0"),
			},
			want: []row{
				{"etcd", manifest.PartControlPlane, []string{"/etc/kubernetes/manifests/etcd.yaml:16 registry.k8s.io/etcd:3.6.4-0"}},
				{"kube-apiserver", manifest.PartControlPlane, []string{"/etc/kubernetes/manifests/kube-apiserver.yaml:16 registry.k8s.io/kube-apiserver:v1.36.1"}},
				{"kube-controller-manager", manifest.PartControlPlane, []string{"/etc/kubernetes/manifests/kube-controller-manager.yaml:16 registry.k8s.io/kube-controller-manager:v1.36.1"}},
				{"kube-scheduler", manifest.PartControlPlane, []string{"/etc/kubernetes/manifests/kube-scheduler.yaml:16 registry.k8s.io/kube-scheduler:v1.36.1"}},
			},
		},
		{
			name: "a broken manifest warns; the others are read",
			files: map[string]string{
				"etc/kubernetes/manifests/nginx-proxy.yml": nginxProxy,
				"etc/kubernetes/manifests/broken.yaml":     "apiVersion: v1\nkind: Pod\nspec:\n  containers: [\n",
				"etc/kubernetes/manifests/config.yaml":     "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n",
			},
			want:      []row{{"nginx-proxy", manifest.PartAPIServerProxy, []string{"/etc/kubernetes/manifests/nginx-proxy.yml:19 docker.io/library/nginx:1.30.1-alpine"}}},
			warnFiles: []string{"/etc/kubernetes/manifests/broken.yaml", "/etc/kubernetes/manifests/config.yaml"},
		},
		{
			name: "hidden files and directories are skipped, as the kubelet does; JSON and links are read",
			files: map[string]string{
				"etc/kubernetes/manifests/.nginx-proxy.yml.swp": "garbage",
				"etc/kubernetes/manifests/backup":               "DIR",
				"etc/kubernetes/manifests/proxy.json": `{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "nginx-proxy"},
 "spec": {"containers": [{"name": "nginx-proxy",
   "image": "docker.io/library/nginx:1.30.1-alpine"}]}}`,
				"etc/kubernetes/manifests/apiserver.yaml": "-> /srv/manifests/apiserver.yaml",
				"srv/manifests/apiserver.yaml":            kubeadmPod("kube-apiserver", "registry.k8s.io/kube-apiserver:v1.36.1"),
			},
			want: []row{
				{"kube-apiserver", manifest.PartControlPlane, []string{"/etc/kubernetes/manifests/apiserver.yaml -> /srv/manifests/apiserver.yaml:16 registry.k8s.io/kube-apiserver:v1.36.1"}},
				{"nginx-proxy", manifest.PartAPIServerProxy, []string{"/etc/kubernetes/manifests/proxy.json:3 docker.io/library/nginx:1.30.1-alpine"}},
			},
		},
		{
			name:  "an unknown static pod is read but in no part",
			files: map[string]string{"etc/kubernetes/manifests/monitor.yaml": "apiVersion: v1\nkind: Pod\nmetadata:\n  name: node-monitor\nspec:\n  containers:\n  - name: m\n    image: example.com/monitor:1\n"},
			want:  []row{{"node-monitor", "", []string{"/etc/kubernetes/manifests/monitor.yaml:8 example.com/monitor:1"}}},
		},
		{
			name: "no directory: no static pods",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			pods, warns, err := StaticPods(nodeRoot(t, tt.files), dir)
			if err != nil {
				t.Fatal(err)
			}
			var got []row
			for _, p := range pods {
				part, _, _ := p.Classify()
				r := row{name: p.Name, part: part}
				for _, c := range p.Containers {
					r.where = append(r.where, p.Where(c)+" "+c.Image)
				}
				got = append(got, r)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("pods %+v\nwant %+v", got, tt.want)
			}
			for i := range got {
				if got[i].name != tt.want[i].name || got[i].part != tt.want[i].part || !slices.Equal(got[i].where, tt.want[i].where) {
					t.Errorf("pod %d: %+v, want %+v", i, got[i], tt.want[i])
				}
			}
			var files []string
			for _, w := range warns {
				files = append(files, w.File)
			}
			if !slices.Equal(files, tt.warnFiles) {
				t.Errorf("warnings %v, want for %v", warns, tt.warnFiles)
			}
		})
	}
}

// kubesprayContainerd is roles/container-engine/containerd/templates/config.toml.j2
// (kubespray 46dbdd39) rendered with its defaults, abridged around the images plugin:
// pod_infra_image_repo registry.k8s.io/pause, pod_infra_version 3.10.2 (Kubernetes 1.36).
// version is 3 below containerd 2.3, 4 from it.
func kubesprayContainerd(version string) string {
	return `version = ` + version + `

root = "/var/lib/containerd"
state = "/run/containerd"
oom_score = 0

[grpc]
  max_recv_message_size = 16777216
  max_send_message_size = 16777216

[plugins]
  [plugins."io.containerd.cri.v1.runtime"]
    max_container_log_line_size = 16384
    enable_unprivileged_ports = false

  [plugins."io.containerd.cri.v1.images"]
    snapshotter = "overlayfs"
    image_pull_progress_timeout = "5m"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "registry.k8s.io/pause:3.10.2"
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = "/etc/containerd/certs.d"
`
}

// kubesprayContainerdV1 is config-v1.toml.j2, "for containerd v1 for compatibility"
// (version = 2), abridged.
const kubesprayContainerdV1 = `# This is for containerd v1 for compatibility
version = 2

root = "/var/lib/containerd"
state = "/run/containerd"
oom_score = 0

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "registry.k8s.io/pause:3.10.1"
    max_container_log_line_size = 16384
`

func TestSandboxImage(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		config  string // written to /etc/containerd/config.toml unless empty
		want    Sandbox
		wantErr error
	}{
		{
			name:   "containerd 2.x, Kubespray's config version 3",
			config: kubesprayContainerd("3"),
			want:   Sandbox{Image: "registry.k8s.io/pause:3.10.2", ConfigVersion: 3, Source: `/etc/containerd/config.toml:20 [plugins."io.containerd.cri.v1.images".pinned_images] sandbox`},
		},
		{
			name:   "containerd 2.3+, version 4",
			config: kubesprayContainerd("4"),
			want:   Sandbox{Image: "registry.k8s.io/pause:3.10.2", ConfigVersion: 4, Source: `/etc/containerd/config.toml:20 [plugins."io.containerd.cri.v1.images".pinned_images] sandbox`},
		},
		{
			name:   "containerd 1.x, version 2",
			config: kubesprayContainerdV1,
			want:   Sandbox{Image: "registry.k8s.io/pause:3.10.1", ConfigVersion: 2, Source: `/etc/containerd/config.toml:10 [plugins."io.containerd.grpc.v1.cri"] sandbox_image`},
		},
		{
			name:   "dotted keys and single quotes",
			config: "version = 3\n[plugins.'io.containerd.cri.v1.images']\n  pinned_images.sandbox = 'registry.local/pause:3.10'\n",
			want:   Sandbox{Image: "registry.local/pause:3.10", ConfigVersion: 3, Source: `/etc/containerd/config.toml:3 [plugins."io.containerd.cri.v1.images".pinned_images] sandbox`},
		},
		{
			name:    "version 3 with only the old key: containerd ignores it, so does this",
			config:  "version = 3\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"registry.k8s.io/pause:3.9\"\n",
			want:    Sandbox{ConfigVersion: 3},
			wantErr: ErrNoSandbox,
		},
		{
			name:    "Debian's containerd package: version 2, everything commented out",
			config:  "version = 2\n#[plugins.\"io.containerd.grpc.v1.cri\"]\n#  sandbox_image = \"registry.k8s.io/pause:3.6\"\n",
			want:    Sandbox{ConfigVersion: 2},
			wantErr: ErrNoSandbox,
		},
		{
			name:    "no config file",
			wantErr: fs.ErrNotExist,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			files := map[string]string{}
			if tt.config != "" {
				files["etc/containerd/config.toml"] = tt.config
			}
			got, err := SandboxImage(nodeRoot(t, files), "")
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
				t.Fatalf("error %v, want %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Fatalf("got %+v\nwant %+v", got, tt.want)
			}
		})
	}
	_, err := SandboxImage(nodeRoot(t, map[string]string{"etc/containerd/config.toml": "version = 3\n[plugins\n"}), "")
	if err == nil || errors.Is(err, ErrNoSandbox) || !strings.HasPrefix(err.Error(), "/etc/containerd/config.toml: ") {
		t.Fatalf("a config that does not parse: %v", err)
	}
}

func TestRead(t *testing.T) {
	t.Parallel()
	worker := map[string]string{
		"etc/kubernetes/kubelet-config.yaml":       kubesprayKubelet,
		"etc/kubernetes/manifests/nginx-proxy.yml": nginxProxy,
		"etc/kubernetes/manifests/broken.yml":      "kind: Pod\nspec: {containers: [\n",
		"etc/containerd/config.toml":               kubesprayContainerd("3"),
	}
	t.Run("a Kubespray worker: nginx-proxy and the sandbox; the broken manifest warns", func(t *testing.T) {
		t.Parallel()
		f, err := Read(nodeRoot(t, worker), Options{})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, img := range f.Images {
			got = append(got, string(img.Part)+" "+img.Ref.String()+" "+img.Source)
		}
		want := []string{
			"apiserver-proxy docker.io/library/nginx:1.30.1-alpine static pod nginx-proxy, /etc/kubernetes/manifests/nginx-proxy.yml:19",
			`sandbox registry.k8s.io/pause:3.10.2 /etc/containerd/config.toml:20 [plugins."io.containerd.cri.v1.images".pinned_images] sandbox`,
		}
		if !slices.Equal(got, want) {
			t.Fatalf("images\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		if len(f.Warnings) != 1 || f.Warnings[0].File != "/etc/kubernetes/manifests/broken.yml" {
			t.Errorf("warnings %v, want one naming broken.yml", f.Warnings)
		}
		facts := factStrings(f.Facts)
		for _, want := range []string{
			"staticPodPath /etc/kubernetes/manifests /etc/kubernetes/kubelet-config.yaml:15",
			"control-plane absent no such static pod in /etc/kubernetes/manifests",
		} {
			if !slices.Contains(facts, want) {
				t.Errorf("facts lack %q:\n%s", want, strings.Join(facts, "\n"))
			}
		}
		for _, img := range f.Images {
			if img.Role == "" || img.Component == "" {
				t.Errorf("%s: no role or component: %+v", img.Ref, img)
			}
		}
	})
	t.Run("parts narrow what is read", func(t *testing.T) {
		t.Parallel()
		f, err := Read(nodeRoot(t, worker), Options{Parts: []manifest.Part{manifest.PartSandbox}})
		if err != nil {
			t.Fatal(err)
		}
		if len(f.Images) != 1 || f.Images[0].Part != manifest.PartSandbox || len(f.Warnings) != 0 {
			t.Fatalf("only the sandbox: %+v", f)
		}
		f, err = Read(nodeRoot(t, worker), Options{Parts: []manifest.Part{manifest.PartCalico}})
		if err != nil || len(f.Images)+len(f.Facts)+len(f.Warnings) != 0 {
			t.Fatalf("nothing of the node's for calico: %+v, %v", f, err)
		}
	})
	t.Run("no containerd config, no static pods: absent, not an error", func(t *testing.T) {
		t.Parallel()
		f, err := Read(nodeRoot(t, nil), Options{})
		if err != nil || len(f.Images) != 0 || len(f.Warnings) != 0 {
			t.Fatalf("%+v, %v", f, err)
		}
		facts := strings.Join(factStrings(f.Facts), "\n")
		for _, want := range []string{"apiserver-proxy absent", "sandbox absent open /etc/containerd/config.toml: no such file or directory; containerd's built-in default applies"} {
			if !strings.Contains(facts, want) {
				t.Errorf("facts lack %q:\n%s", want, facts)
			}
		}
	})
	t.Run("an image reference that does not parse is an error naming file and line", func(t *testing.T) {
		t.Parallel()
		files := map[string]string{"etc/kubernetes/manifests/nginx-proxy.yml": strings.Replace(nginxProxy, "nginx:1.30.1-alpine", "nginx:1.30.1 alpine", 1)}
		_, err := Read(nodeRoot(t, files), Options{})
		if err == nil || !strings.Contains(err.Error(), "static pod nginx-proxy, /etc/kubernetes/manifests/nginx-proxy.yml:19: invalid image reference") {
			t.Fatalf("error %v", err)
		}
		files = map[string]string{"etc/containerd/config.toml": strings.Replace(kubesprayContainerd("3"), "pause:3.10.2", "pause:3.10.2:bad", 1)}
		_, err = Read(nodeRoot(t, files), Options{})
		if err == nil || !strings.Contains(err.Error(), "/etc/containerd/config.toml:20 ") {
			t.Fatalf("error %v", err)
		}
	})
	t.Run("a containerd config that does not parse warns; the rest is built", func(t *testing.T) {
		t.Parallel()
		files := map[string]string{"etc/kubernetes/manifests/nginx-proxy.yml": nginxProxy, "etc/containerd/config.toml": "version = 3\n[plugins\n"}
		f, err := Read(nodeRoot(t, files), Options{})
		if err != nil || len(f.Images) != 1 || len(f.Warnings) != 1 || f.Warnings[0].File != DefaultContainerdConfig {
			t.Fatalf("%+v, %v", f, err)
		}
	})
}

func factStrings(fs []Fact) []string {
	var out []string
	for _, f := range fs {
		out = append(out, f.What+" "+f.Value+" "+f.Source)
	}
	return out
}

// BenchmarkRead: the node's part of the recovery set on a Kubespray control-plane node
// (kubelet config, four static pods, containerd's config).
func BenchmarkRead(b *testing.B) {
	root := b.TempDir()
	files := map[string]string{
		"etc/kubernetes/kubelet-config.yaml":                    kubesprayKubelet,
		"etc/kubernetes/manifests/kube-apiserver.yaml":          kubeadmPod("kube-apiserver", "registry.k8s.io/kube-apiserver:v1.36.1"),
		"etc/kubernetes/manifests/kube-controller-manager.yaml": kubeadmPod("kube-controller-manager", "registry.k8s.io/kube-controller-manager:v1.36.1"),
		"etc/kubernetes/manifests/kube-scheduler.yaml":          kubeadmPod("kube-scheduler", "registry.k8s.io/kube-scheduler:v1.36.1"),
		"etc/kubernetes/manifests/etcd.yaml":                    kubeadmPod("etcd", "registry.k8s.io/etcd:3.6.5-0"),
		"etc/containerd/config.toml":                            kubesprayContainerd("3"),
	}
	for p, c := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	for b.Loop() {
		f, err := Read(hostfs.Root(root), Options{})
		if err != nil || len(f.Images) != 5 {
			b.Fatalf("%+v, %v", f, err)
		}
	}
}
