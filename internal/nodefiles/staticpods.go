package nodefiles

import (
	"fmt"
	"path"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/precache/precache/internal/hostfs"
	"github.com/precache/precache/internal/manifest"
)

// Container is a container of a static pod, and the line its image is written on.
type Container struct {
	Name, Image string
	Init        bool
	// Line is the 1-based line of the image in the manifest, 0 when it cannot be told.
	Line int
}

// StaticPod is one manifest of the kubelet's staticPodPath.
type StaticPod struct {
	// File is the manifest's node path, with where it leads when it is a link.
	File            string
	Name, Namespace string
	Labels          map[string]string
	Containers      []Container
}

// Where is "file:line" of a container's image.
func (p StaticPod) Where(c Container) string {
	if c.Line > 0 {
		return fmt.Sprintf("%s:%d", p.File, c.Line)
	}
	return p.File
}

// Warning is a manifest the kubelet would skip, and why.
type Warning struct {
	File string
	Err  error
}

func (w Warning) Error() string { return w.File + ": " + w.Err.Error() }

// podFile is what a static pod manifest says that matters here.
type podFile struct {
	Kind     string `json:"kind"`
	Metadata struct {
		Name      string            `json:"name"`
		Namespace string            `json:"namespace"`
		Labels    map[string]string `json:"labels"`
	} `json:"metadata"`
	Spec struct {
		InitContainers []podContainer `json:"initContainers"`
		Containers     []podContainer `json:"containers"`
	} `json:"spec"`
}

type podContainer struct {
	Name  string `json:"name"`
	Image string `json:"image"`
}

// StaticPods reads the manifests in dir (a node path under root) as the kubelet does:
// every file, YAML or JSON, except hidden ones, without descending into directories. A
// missing directory holds no static pods. A file that does not parse as a Pod is a
// Warning: the kubelet skips it too, and the other pods are still read.
func StaticPods(root hostfs.Root, dir string) ([]StaticPod, []Warning, error) {
	if dir == "" {
		return nil, nil, nil
	}
	files, err := root.Glob(path.Join(dir, "*"))
	if err != nil {
		return nil, nil, fmt.Errorf("listing static pods in %s: %w", dir, err)
	}
	var (
		pods  []StaticPod
		warns []Warning
	)
	for _, f := range files {
		if strings.HasPrefix(path.Base(f), ".") {
			continue // the kubelet ignores hidden files (editors' swap files, …)
		}
		fi, where, err := root.Stat(f)
		if err != nil {
			warns = append(warns, Warning{File: f, Err: err})
			continue
		}
		if fi.IsDir() {
			continue
		}
		data, err := where.ReadFile()
		if err != nil {
			warns = append(warns, Warning{File: where.String(), Err: err})
			continue
		}
		pod, err := parseStaticPod(data)
		if err != nil {
			warns = append(warns, Warning{File: where.String(), Err: err})
			continue
		}
		pod.File = where.String()
		pods = append(pods, pod)
	}
	return pods, warns, nil
}

func parseStaticPod(data []byte) (StaticPod, error) {
	var pf podFile
	if err := yaml.Unmarshal(data, &pf); err != nil {
		return StaticPod{}, fmt.Errorf("not a pod manifest: %w", err)
	}
	if pf.Kind != "Pod" {
		return StaticPod{}, fmt.Errorf("not a pod manifest: kind %q, the kubelet runs only kind Pod from its staticPodPath", pf.Kind)
	}
	p := StaticPod{Name: pf.Metadata.Name, Namespace: pf.Metadata.Namespace, Labels: pf.Metadata.Labels}
	lines := strings.Split(string(data), "\n")
	from := 0
	add := func(cs []podContainer, init bool) {
		for _, c := range cs {
			n := imageLine(lines, c.Image, from)
			if n == 0 {
				n = imageLine(lines, c.Image, 0)
			}
			if n > 0 {
				from = n
			}
			p.Containers = append(p.Containers, Container{Name: c.Name, Image: c.Image, Init: init, Line: n})
		}
	}
	add(pf.Spec.InitContainers, true)
	add(pf.Spec.Containers, false)
	return p, nil
}

// imageLine finds the 1-based line, after line from, whose "image" key (YAML or JSON)
// has the value image; 0 when there is none.
func imageLine(lines []string, image string, from int) int {
	for i := from; i < len(lines); i++ {
		line := strings.TrimSpace(lines[i])
		line = strings.TrimSpace(strings.TrimPrefix(line, "-"))
		key, value, ok := strings.Cut(line, ":")
		if !ok || strings.Trim(strings.TrimSpace(key), `"'`) != "image" {
			continue
		}
		if scalar(value) == image {
			return i + 1
		}
	}
	return 0
}

// scalar is the value at the start of s: a quoted string up to its closing quote (JSON
// goes on with "}]" after it), else the rest of the line without a comment and the
// flow-style closers.
func scalar(s string) string {
	s = strings.TrimSpace(s)
	if s != "" && (s[0] == '"' || s[0] == '\'') {
		if end := strings.IndexByte(s[1:], s[0]); end >= 0 {
			return s[1 : end+1]
		}
		return s[1:]
	}
	if i := strings.Index(s, " #"); i >= 0 {
		s = s[:i]
	}
	return strings.TrimSpace(strings.TrimRight(s, ",}] \t"))
}

// staticRole is a static pod the recovery set knows, by pod name or label.
type staticRole struct {
	part manifest.Part
	role string
}

// knownStaticPods: Kubespray's API server proxies on workers (nginx-proxy, haproxy:
// roles/kubernetes/node/templates/manifests/*.manifest.j2, labels k8s-app kube-nginx and
// kube-haproxy), kubeadm's control-plane pods (named after their component, labelled
// component=<name>, tier=control-plane: cmd/kubeadm/app/util/staticpod ComponentPod) and
// Kubespray's kube-vip.
var knownStaticPods = map[string]staticRole{
	"nginx-proxy":             {manifest.PartAPIServerProxy, "calico-node and kube-proxy reach the API server at localhost through it; it comes from Docker Hub (rate-limited)"},
	"kube-nginx":              {manifest.PartAPIServerProxy, "calico-node and kube-proxy reach the API server at localhost through it; it comes from Docker Hub (rate-limited)"},
	"haproxy":                 {manifest.PartAPIServerProxy, "calico-node and kube-proxy reach the API server at localhost through it; it comes from Docker Hub (rate-limited)"},
	"kube-haproxy":            {manifest.PartAPIServerProxy, "calico-node and kube-proxy reach the API server at localhost through it; it comes from Docker Hub (rate-limited)"},
	"kube-apiserver":          {manifest.PartControlPlane, "the API server calico-node, kube-proxy and CoreDNS read"},
	"kube-controller-manager": {manifest.PartControlPlane, "the controllers that run DaemonSets and Deployments (CoreDNS among them)"},
	"kube-scheduler":          {manifest.PartControlPlane, "places CoreDNS and every other pending pod"},
	"etcd":                    {manifest.PartControlPlane, "the API server's store"},
	"kube-vip":                {manifest.PartControlPlane, "the API server's virtual address"},
}

// Classify says which part of the recovery set a static pod is, if any: by its name, its
// k8s-app or component label, or kubeadm's tier=control-plane.
func (p StaticPod) Classify() (part manifest.Part, role string, ok bool) {
	for _, key := range []string{p.Name, p.Labels["k8s-app"], p.Labels["component"]} {
		if r, ok := knownStaticPods[key]; ok && key != "" {
			return r.part, r.role, true
		}
	}
	if p.Labels["tier"] == "control-plane" {
		return manifest.PartControlPlane, manifest.PartControlPlane.Role(), true
	}
	return "", "", false
}
