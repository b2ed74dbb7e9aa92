package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/precache/precache/internal/doctor"
	"github.com/precache/precache/internal/manifest"
	"github.com/precache/precache/internal/nodefiles"
)

// writeRoot writes a node's files under a fresh root.
func writeRoot(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
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

// A Kubespray worker's files (roles/kubernetes/node/templates/manifests/nginx-proxy.manifest.j2
// and roles/container-engine/containerd/templates/config.toml.j2 at kubespray 46dbdd39,
// rendered with their defaults, abridged), and a manifest that does not parse.
var workerFiles = map[string]string{
	"etc/kubernetes/kubelet-config.yaml": "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nstaticPodPath: /etc/kubernetes/manifests\n",
	"etc/kubernetes/manifests/nginx-proxy.yml": "apiVersion: v1\nkind: Pod\nmetadata:\n  name: nginx-proxy\n  namespace: kube-system\n  labels:\n    k8s-app: kube-nginx\n" +
		"spec:\n  hostNetwork: true\n  containers:\n  - name: nginx-proxy\n    image: docker.io/library/nginx:1.30.1-alpine\n",
	"etc/kubernetes/manifests/broken.yml": "kind: Pod\nspec: {containers: [\n",
	"etc/containerd/config.toml":          "version = 3\n[plugins]\n  [plugins.\"io.containerd.cri.v1.images\".pinned_images]\n    sandbox = \"registry.k8s.io/pause:3.10.2\"\n",
}

type imagesJSON struct {
	Parts    []manifest.Part  `json:"parts"`
	Warnings []string         `json:"warnings"`
	Images   []manifest.Image `json:"images"`
	Facts    []struct{ What, Value, Source string }
}

// TestNodeParts: the node's parts need no API server; --root says where the files are;
// a manifest that does not parse is a warning naming it and the rest is built.
func TestNodeParts(t *testing.T) {
	t.Parallel()
	root := writeRoot(t, workerFiles)
	out, errOut, code := runCLI(t, "images", "--from-cluster", "--only", "apiserver-proxy,sandbox", "--root", root, "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var got imagesJSON
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	var rows []string
	for _, img := range got.Images {
		rows = append(rows, string(img.Part)+" "+img.Ref.String()+" "+img.Source)
	}
	want := []string{
		"apiserver-proxy docker.io/library/nginx:1.30.1-alpine static pod nginx-proxy, /etc/kubernetes/manifests/nginx-proxy.yml:12",
		`sandbox registry.k8s.io/pause:3.10.2 /etc/containerd/config.toml:4 [plugins."io.containerd.cri.v1.images".pinned_images] sandbox`,
	}
	if !slices.Equal(rows, want) {
		t.Fatalf("images\n%s\nwant\n%s", strings.Join(rows, "\n"), strings.Join(want, "\n"))
	}
	if len(got.Warnings) != 1 || !strings.HasPrefix(got.Warnings[0], "/etc/kubernetes/manifests/broken.yml: ") {
		t.Errorf("warnings %q, want one naming broken.yml", got.Warnings)
	}
	if !strings.Contains(errOut, "broken.yml") {
		t.Errorf("no warning logged naming the file:\n%s", errOut)
	}

	// The table: part, component, source, and why each part is on the path.
	out, _, code = runCLI(t, "images", "--from-cluster", "--only", "apiserver-proxy,sandbox", "--root", root)
	for _, want := range []string{
		"docker.io/library/nginx:1.30.1-alpine  apiserver-proxy  nginx-proxy",
		"registry.k8s.io/pause:3.10.2           sandbox          sandbox",
		"why each part is on the path:",
		"sandbox            " + manifest.PartSandbox.Role(),
		"WARNING          /etc/kubernetes/manifests/broken.yml",
	} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}

// TestRootFromEnv: $PRECACHE_ROOT is --root.
func TestRootFromEnv(t *testing.T) {
	// Not parallel: t.Setenv.
	t.Setenv("PRECACHE_ROOT", writeRoot(t, workerFiles))
	out, errOut, code := runCLI(t, "images", "--from-cluster", "--only", "sandbox", "-o", "json")
	if code != 0 || !strings.Contains(out, "registry.k8s.io/pause:3.10.2") {
		t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
	}
}

func TestOnlyErrors(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"images", "--calico-version", "v3.28.1", "--only", "dns"}, `--only: unknown part of the recovery set "dns"`},
		{[]string{"images", "--calico-version", "v3.28.1", "--only", "sandbox"}, "--only sandbox leaves none of the images the flags name"},
		{[]string{"status", "--calico-version", "v3.28.1", "--only", "calico,nope"}, `unknown part of the recovery set "nope"`},
	} {
		_, errOut, code := runCLI(t, tt.args...)
		if code != 2 || !strings.Contains(errOut, tt.want) {
			t.Errorf("%v: exit %d, %q; want 2 and %q", tt.args, code, errOut, tt.want)
		}
	}
	// --only calico keeps a flag-built set as it is.
	out, errOut, code := runCLI(t, "images", "--calico-version", "v3.28.1", "--only", "calico", "-o", "json")
	if code != 0 || strings.Count(out, `"part": "calico"`) != 4 {
		t.Errorf("exit %d\n%s\n%s", code, out, errOut)
	}
}

// TestRootFlag: --root, --kubelet-config and --containerd-config are every command's, and
// the agent keeps its own with the same names (its flags are unchanged).
func TestRootFlag(t *testing.T) {
	t.Parallel()
	cmd := newRootCommand()
	for _, name := range []string{"root", "kubelet-config", "containerd-config"} {
		fl := cmd.PersistentFlags().Lookup(name)
		if fl == nil {
			t.Fatalf("no global --%s", name)
		}
		for _, sub := range []string{"doctor", "images", "bootstrap", "status", "bundle", "agent"} {
			c, _, err := cmd.Find([]string{sub})
			if err != nil {
				t.Fatal(err)
			}
			if c.Flags().Lookup(name) == nil && c.InheritedFlags().Lookup(name) == nil {
				t.Errorf("%s has no --%s", sub, name)
			}
		}
	}
	if got := cmd.PersistentFlags().Lookup("root").DefValue; got != "/" {
		t.Errorf("--root defaults to %q", got)
	}
	if !slices.Equal(nodefiles.KubeletConfigPaths, doctor.KubeletConfigPaths) {
		t.Errorf("the kubelet's config is looked for at %v by discovery, at %v by doctor", nodefiles.KubeletConfigPaths, doctor.KubeletConfigPaths)
	}
}
