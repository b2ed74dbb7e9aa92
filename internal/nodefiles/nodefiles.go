// Package nodefiles reads what a node's own files say about the images it needs before
// the cluster can tell it anything: the static pods the kubelet starts from its
// staticPodPath (Kubespray's nginx-proxy or haproxy on workers, the control plane on
// control-plane nodes) and the sandbox image containerd's CRI starts every pod in. Every
// file is read under the node's root (internal/hostfs: `/` on the node, `/host` in the
// DaemonSet), and every fact says which file, and which line, it comes from.
//
// Bad input is reported, not fatal, where the kubelet or containerd would carry on: a
// static pod manifest that does not parse is a warning naming the file (the kubelet skips
// it and starts the others). An image reference that does not parse is an error naming
// the file and line: the set would silently miss the image.
package nodefiles

import (
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/precache/precache/internal/hostfs"
	"github.com/precache/precache/internal/manifest"
)

// KubeletConfigPaths are where the kubelet's config file is on nodes made by kubeadm
// (/var/lib/kubelet/config.yaml) and by Kubespray (/etc/kubernetes/kubelet-config.yaml,
// roles/kubernetes/node/tasks/kubelet.yml), tried in that order.
var KubeletConfigPaths = []string{"/var/lib/kubelet/config.yaml", "/etc/kubernetes/kubelet-config.yaml"}

// DefaultStaticPodPath is where kubeadm and Kubespray (kube_manifest_dir) put static pods.
const DefaultStaticPodPath = "/etc/kubernetes/manifests"

// StaticPodDir is the kubelet's staticPodPath and where that was found.
type StaticPodDir struct {
	// Path is the directory as the node names it; "" when the kubelet runs no static pods.
	Path string
	// Source is "file:line" of the staticPodPath key, or why the default applies.
	Source string
}

// FindStaticPodDir reads the kubelet's staticPodPath from its config file under root:
// kubeletConfig, or when empty the first of KubeletConfigPaths that exists. Without a
// config file, or without the key, the kubelet's flag default applies and so does
// kubeadm's and Kubespray's directory, DefaultStaticPodPath. Only a file that exists and
// cannot be read or parsed is an error.
func FindStaticPodDir(root hostfs.Root, kubeletConfig string) (StaticPodDir, error) {
	paths := KubeletConfigPaths
	if kubeletConfig != "" {
		paths = []string{kubeletConfig}
	}
	for _, p := range paths {
		data, where, err := root.ReadFile(p)
		if errors.Is(err, fs.ErrNotExist) && kubeletConfig == "" {
			continue
		}
		if err != nil {
			return StaticPodDir{}, fmt.Errorf("reading the kubelet's config: %w", err)
		}
		var cfg struct {
			StaticPodPath *string `json:"staticPodPath"`
		}
		if err := yaml.Unmarshal(data, &cfg); err != nil {
			return StaticPodDir{}, fmt.Errorf("%s: %w", where, err)
		}
		switch {
		case cfg.StaticPodPath == nil:
			return StaticPodDir{Path: DefaultStaticPodPath, Source: "the default (" + where.String() + " sets no staticPodPath)"}, nil
		case *cfg.StaticPodPath == "":
			return StaticPodDir{Source: fmt.Sprintf("%s:%d (staticPodPath is empty: no static pods)", where, keyLine(data, "staticPodPath"))}, nil
		default:
			return StaticPodDir{Path: path.Clean(*cfg.StaticPodPath), Source: fmt.Sprintf("%s:%d", where, keyLine(data, "staticPodPath"))}, nil
		}
	}
	return StaticPodDir{Path: DefaultStaticPodPath, Source: "the default (no kubelet config at " + strings.Join(paths, " or ") + ")"}, nil
}

// keyLine is the 1-based line of a top-level YAML key, 0 when not found.
func keyLine(data []byte, key string) int {
	for n, line := range strings.Split(string(data), "\n") {
		k, _, ok := strings.Cut(line, ":")
		if ok && strings.Trim(strings.TrimSpace(k), `"'`) == key && !strings.HasPrefix(line, " ") && !strings.HasPrefix(line, "\t") {
			return n + 1
		}
	}
	return 0
}

// Options say where the node's files are and which parts of the recovery set to read.
type Options struct {
	// KubeletConfig is the kubelet's config file; empty: the first of KubeletConfigPaths.
	KubeletConfig string
	// ContainerdConfig is containerd's config file; empty: DefaultContainerdConfig.
	ContainerdConfig string
	// Parts to read; static pods are read for apiserver-proxy and control-plane, the
	// sandbox for sandbox. Empty: every part.
	Parts []manifest.Part
}

// Fact is one thing the node's files say, or do not say, and where.
type Fact struct {
	What, Value, Source string
}

// Facts are what the node's files add to the recovery set.
type Facts struct {
	Images []manifest.Image
	// Facts say what was found, and what was looked for and is not there: a node without
	// static pods, a containerd config that leaves the sandbox image to its default.
	Facts []Fact
	// Warnings are files that could not be used; the rest of the set is still built.
	Warnings []Warning
}

// Read reads the node's part of the recovery set under root: the static pods the
// recovery set knows (Kubespray's API server proxy, the control plane) and containerd's
// sandbox image. A file that cannot be read or parsed is a Warning and the rest is read;
// an image reference that does not parse is an error naming the file and line.
func Read(root hostfs.Root, o Options) (Facts, error) {
	var f Facts
	want := func(p manifest.Part) bool { return len(o.Parts) == 0 || manifest.HasPart(o.Parts, p) }
	if want(manifest.PartAPIServerProxy) || want(manifest.PartControlPlane) {
		if err := f.readStaticPods(root, o.KubeletConfig, want); err != nil {
			return f, err
		}
	}
	if want(manifest.PartSandbox) {
		if err := f.readSandbox(root, o.ContainerdConfig); err != nil {
			return f, err
		}
	}
	return f, nil
}

func (f *Facts) readStaticPods(root hostfs.Root, kubeletConfig string, want func(manifest.Part) bool) error {
	dir, err := FindStaticPodDir(root, kubeletConfig)
	if err != nil {
		f.Warnings = append(f.Warnings, Warning{File: "the kubelet's config", Err: fmt.Errorf("%w; its static pods are not in the set", err)})
		return nil
	}
	f.Facts = append(f.Facts, Fact{"staticPodPath", orNone(dir.Path), dir.Source})
	pods, warns, err := StaticPods(root, dir.Path)
	if err != nil {
		f.Warnings = append(f.Warnings, Warning{File: dir.Path, Err: err})
		return nil
	}
	f.Warnings = append(f.Warnings, warns...)
	found := map[manifest.Part]bool{}
	for _, p := range pods {
		part, role, ok := p.Classify()
		if !ok {
			f.Facts = append(f.Facts, Fact{"static pod", p.Name + " (not in the set: not on the path to the pod network or DNS as far as precache knows; add its image with --image)", p.File})
			continue
		}
		if !want(part) {
			continue
		}
		found[part] = true
		for _, c := range p.Containers {
			img, err := manifest.FromSpec(c.Image, part, c.Name, fmt.Sprintf("static pod %s, %s", p.Name, p.Where(c)))
			if err != nil {
				return err
			}
			img.Role = role
			f.Images = append(f.Images, img)
		}
	}
	for _, part := range []manifest.Part{manifest.PartAPIServerProxy, manifest.PartControlPlane} {
		if want(part) && !found[part] {
			f.Facts = append(f.Facts, Fact{string(part), "absent", "no such static pod in " + orNone(dir.Path)})
		}
	}
	return nil
}

func (f *Facts) readSandbox(root hostfs.Root, containerdConfig string) error {
	s, err := SandboxImage(root, containerdConfig)
	switch {
	case errors.Is(err, ErrNoSandbox), errors.Is(err, fs.ErrNotExist):
		f.Facts = append(f.Facts, Fact{string(manifest.PartSandbox), "absent", firstLine(err.Error()) + "; containerd's built-in default applies: add it with --image if the node needs it"})
		return nil
	case err != nil:
		f.Warnings = append(f.Warnings, Warning{File: orDefault(containerdConfig, DefaultContainerdConfig), Err: fmt.Errorf("%w; the sandbox image is not in the set", err)})
		return nil
	}
	img, err := manifest.FromSpec(s.Image, manifest.PartSandbox, "sandbox", s.Source)
	if err != nil {
		return err
	}
	f.Images = append(f.Images, img)
	return nil
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}
