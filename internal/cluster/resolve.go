// Package cluster finds out, from the Kubernetes API, which Calico a cluster runs: its
// version and install variant, the exact image references its specs use (custom
// registries win over the built-in catalog) and the digests it expects or runs.
//
// Reading (read.go, client-go) is kept apart from deciding (this file, pure): Resolve
// works on a Snapshot, which the one-shot commands fill with API calls and the agent
// from its informer caches.
package cluster

import (
	"fmt"
	"sort"
	"strings"

	digest "github.com/opencontainers/go-digest"

	"github.com/precache/precache/internal/manifest"
)

// Container is one container (or init container) of a workload.
type Container struct {
	Name  string
	Image string
	Init  bool
}

// Workload is a DaemonSet or Deployment that runs Calico images.
type Workload struct {
	Kind, Namespace, Name string
	Containers            []Container
}

func (w Workload) String() string { return w.Kind + " " + w.Namespace + "/" + w.Name }

// VersionFact is a version some object states.
type VersionFact struct {
	Source  string
	Version string
}

// Installation is what the Tigera operator's Installation "default" reports.
type Installation struct {
	CalicoVersion, Variant           string
	Registry, ImagePath, ImagePrefix string
}

// ImageSet is an operator ImageSet (calico-<version>): image → digest.
type ImageSet struct {
	Name   string
	Images map[string]digest.Digest // "calico/node" → sha256:…
}

// Running is a container of a running Calico pod, with the digest the node pulled.
type Running struct {
	Pod, Node, Container, Image, ImageID string
}

// Snapshot is everything the API said about Calico, as read at one moment.
type Snapshot struct {
	Workloads     []Workload
	ClusterInfo   []VersionFact
	Installation  *Installation
	ImageSets     []ImageSet
	Running       []Running
	OperatorImage string
}

// Fact is one thing discovery learnt, and where.
type Fact struct {
	What, Value, Source string
}

// Discovery is what a cluster runs.
type Discovery struct {
	Version  string
	Variant  manifest.Variant
	Registry string
	// ImagePath and ImagePrefix as the operator means them, derived from the specs.
	ImagePath, ImagePrefix string
	Images                 []manifest.Image
	Facts                  []Fact
	// Disagreements between sources (e.g. mid-upgrade); the DaemonSet spec wins.
	Disagreements []string
}

// calicoWorkloads are the workloads whose images precache keeps, by name.
var calicoWorkloads = map[string]bool{
	"calico-node": true, "calico-kube-controllers": true, "calico-typha": true, "csi-node-driver": true,
}

// Resolve decides version, variant, images and digests from a snapshot.
func Resolve(s Snapshot) (*Discovery, error) {
	d := &Discovery{}
	var node *Workload
	for i := range s.Workloads {
		if s.Workloads[i].Name == "calico-node" && s.Workloads[i].Kind == "DaemonSet" {
			node = &s.Workloads[i]
			break
		}
	}

	// Version, in order of authority; every source is checked against the winner.
	type candidate struct{ version, source string }
	var cands []candidate
	var nodeRef *manifest.Ref
	if node != nil {
		for _, c := range node.Containers {
			ref, err := manifest.ParseRef(c.Image)
			if err != nil || !isComponent(ref, "node") {
				continue
			}
			r := ref
			nodeRef = &r
			cands = append(cands, candidate{ref.Tag, node.String() + " container " + c.Name})
			break
		}
	}
	for _, w := range s.Workloads {
		if w.Kind != "Deployment" {
			continue
		}
		for _, c := range w.Containers {
			if ref, err := manifest.ParseRef(c.Image); err == nil && (isComponent(ref, "kube-controllers") || isComponent(ref, "typha")) && ref.Tag != "" {
				cands = append(cands, candidate{ref.Tag, w.String() + " container " + c.Name})
			}
		}
	}
	if s.Installation != nil && s.Installation.CalicoVersion != "" {
		cands = append(cands, candidate{s.Installation.CalicoVersion, "installations.operator.tigera.io default .status.calicoVersion"})
	}
	for _, f := range s.ClusterInfo {
		if f.Version != "" {
			cands = append(cands, candidate{f.Version, f.Source})
		}
	}
	if len(cands) == 0 {
		return nil, fmt.Errorf("no Calico found: no calico-node DaemonSet in kube-system or calico-system, no Installation, no ClusterInformation; pass --calico-version")
	}
	d.Version = normaliseVersion(cands[0].version)
	d.Facts = append(d.Facts, Fact{"version", d.Version, cands[0].source})
	for _, c := range cands[1:] {
		if v := normaliseVersion(c.version); v != d.Version {
			d.Disagreements = append(d.Disagreements, fmt.Sprintf("%s says %s, %s says %s (an upgrade in progress?); using %s", c.source, v, cands[0].source, d.Version, d.Version))
		} else {
			d.Facts = append(d.Facts, Fact{"version", v, c.source})
		}
	}
	if s.OperatorImage != "" {
		d.Facts = append(d.Facts, Fact{"operator", s.OperatorImage, "Deployment tigera-operator/tigera-operator"})
	}

	// Variant.
	d.Variant = manifest.VariantManifest
	src := "calico-node DaemonSet in kube-system"
	switch {
	case s.Installation != nil:
		d.Variant, src = manifest.VariantOperator, "installations.operator.tigera.io default exists"
		if s.Installation.Variant != "" {
			d.Facts = append(d.Facts, Fact{"operator variant", s.Installation.Variant, "installations.operator.tigera.io default .status.variant"})
		}
	case node != nil && node.Namespace == "calico-system":
		d.Variant, src = manifest.VariantOperator, "calico-node DaemonSet in calico-system"
	}
	d.Facts = append(d.Facts, Fact{"variant", string(d.Variant), src})

	// Registry, path and prefix for images no spec names yet: from the node image the
	// cluster runs, else the Installation's computed values, else the catalog's default.
	switch {
	case nodeRef != nil:
		d.Registry, d.ImagePath, d.ImagePrefix = splitRef(*nodeRef)
		d.Facts = append(d.Facts, Fact{"registry", d.Registry, "the calico-node image"})
	case s.Installation != nil && s.Installation.Registry != "":
		d.Registry = strings.TrimSuffix(s.Installation.Registry, "/")
		d.ImagePath, d.ImagePrefix = s.Installation.ImagePath, s.Installation.ImagePrefix
		d.Facts = append(d.Facts, Fact{"registry", d.Registry, "installations.operator.tigera.io default .status.computed"})
	}
	set, err := manifest.Build(manifest.Options{Version: d.Version, Variant: d.Variant, Registry: d.Registry, ImagePath: d.ImagePath, ImagePrefix: d.ImagePrefix})
	if err != nil {
		return nil, err
	}

	// The exact references in the specs win over the catalog's.
	for _, w := range s.Workloads {
		if !calicoWorkloads[w.Name] {
			continue
		}
		for _, c := range w.Containers {
			ref, err := manifest.ParseRef(c.Image)
			if err != nil {
				d.Facts = append(d.Facts, Fact{"unparsable image", c.Image, w.String()})
				continue
			}
			kind := "container"
			if c.Init {
				kind = "initContainer"
			}
			source := fmt.Sprintf("%s %s %s", w, kind, c.Name)
			set = useSpec(set, ref, source, d.ImagePrefix)
		}
	}

	// Expected digests: the operator's ImageSet, then what running pods pulled.
	for i := range set {
		img := &set[i]
		if img.Ref.Digest != "" {
			continue
		}
		for _, is := range s.ImageSets {
			if !strings.HasSuffix(is.Name, d.Version) {
				continue
			}
			// ImageSet images are "calico/node", whatever registry (and path before it) the
			// Installation uses.
			for key, dg := range is.Images {
				if p := img.Ref.Path(); p == key || strings.HasSuffix(p, "/"+key) {
					img.Ref.Digest, img.DigestSource, img.ByDigest = dg, "imagesets.operator.tigera.io "+is.Name, true
				}
			}
		}
		if img.Ref.Digest != "" {
			continue
		}
		for _, r := range s.Running {
			spec, err := manifest.ParseRef(r.Image)
			if err != nil || spec.Name != img.Ref.Name || spec.Tag != img.Ref.Tag {
				continue
			}
			id, err := manifest.ParseRef(strings.TrimPrefix(r.ImageID, "docker-pullable://"))
			if err != nil || id.Digest == "" {
				continue
			}
			img.Ref.Digest, img.DigestSource, img.ByDigest = id.Digest, fmt.Sprintf("imageID of pod %s on %s", r.Pod, r.Node), true
			break
		}
	}
	d.Images = set
	sort.SliceStable(d.Facts, func(i, j int) bool { return d.Facts[i].What < d.Facts[j].What })
	return d, nil
}

// useSpec puts ref in place of the set's image of the same component, or adds it.
func useSpec(set []manifest.Image, ref manifest.Ref, source, prefix string) []manifest.Image {
	for i, img := range set {
		if img.Ref.Name == ref.Name && img.Ref.Tag == ref.Tag && (img.Ref.Digest == "" || img.Ref.Digest == ref.Digest) && strings.HasPrefix(img.Source, "DaemonSet") {
			return set // already from a spec
		}
		if img.Component != "" && (ref.Base() == img.Component || ref.Base() == prefix+img.Component) {
			set[i].Ref, set[i].Source = ref, source
			if ref.Digest != "" {
				set[i].DigestSource, set[i].ByDigest = source, true
			}
			return set
		}
	}
	img := manifest.Image{Ref: ref, Source: source}
	if ref.Digest != "" {
		img.DigestSource, img.ByDigest = source, true
	}
	return append(set, img)
}

// isComponent reports whether ref is Calico's image for component, with any prefix.
func isComponent(ref manifest.Ref, component string) bool {
	return ref.Base() == component || strings.HasSuffix(ref.Base(), "-"+component) && strings.Contains(ref.Path(), "calico")
}

// splitRef turns "registry.local:5000/mirror/calico/node" into registry
// "registry.local:5000/mirror", path "calico", prefix "" (operator semantics).
func splitRef(ref manifest.Ref) (registry, path, prefix string) {
	parts := strings.Split(ref.Name, "/")
	base := parts[len(parts)-1]
	prefix = strings.TrimSuffix(base, "node")
	if len(parts) >= 3 {
		path = parts[len(parts)-2]
		registry = strings.Join(parts[:len(parts)-2], "/")
	} else {
		registry = parts[0]
	}
	return registry, path, prefix
}

func normaliseVersion(v string) string {
	v = strings.TrimSpace(v)
	if v != "" && !strings.HasPrefix(v, "v") {
		v = "v" + v
	}
	return v
}
