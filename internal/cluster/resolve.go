// Package cluster finds out, from the Kubernetes API, which Calico a cluster runs: its
// version and install variant, the exact image references its workloads use (custom
// registries win over the built-in catalog) and the digests it expects or runs. It also
// finds the recovery set's other workloads (addons.go): tigera-operator, kube-proxy,
// node-local DNS and CoreDNS.
//
// Reading (read.go, client-go) is kept apart from deciding (this file, pure): Resolve
// works on a Snapshot, which the one-shot commands fill with API calls and the agent
// from its informer caches.
package cluster

import (
	"fmt"
	"slices"
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
	// Labels are the object's own labels (for the recovery set's lookup by k8s-app).
	Labels map[string]string
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
	// ImageSet is the ImageSet the operator renders its images from (status.imageSet).
	ImageSet string
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
	// Complete says every Calico workload discovery knows of was looked for (Read sets
	// it): one that is absent does not run, so a manifest install without a calico-typha
	// Deployment gets no typha. A snapshot of some workloads only (a watch on calico-node)
	// leaves the others to the catalog.
	Complete bool
	// Unread are sources the RBAC did not let Read see and that discovery can do
	// without (the tigera-operator Deployment where precache's overlay grants nothing:
	// a manifest install, which has no tigera-operator namespace).
	Unread []Fact
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

const (
	srcInstallation = "installations.operator.tigera.io default"
	srcImageSets    = "imagesets.operator.tigera.io"
	srcOperator     = "Deployment tigera-operator/tigera-operator"
)

// candidate is a version one source states.
type candidate struct{ version, source string }

// resolver holds what Resolve has decided so far.
type resolver struct {
	s Snapshot
	d *Discovery
	// sets are the calico-<version> ImageSets, by version.
	sets map[string]ImageSet
}

// Resolve decides version, variant, images and digests from a snapshot.
//
// The version comes, in order of authority, from the calico-node DaemonSet's calico/node
// (its tag, or for a digest-only reference the ImageSet listing that digest), the
// kube-controllers and typha Deployments, the Installation's status, the
// ClusterInformations, the running calico-node pods, the ImageSet's name and the
// tigera-operator's release. The images are those the Calico workloads run; the catalog
// only stands in for what the snapshot cannot tell.
func Resolve(s Snapshot) (*Discovery, error) {
	r := &resolver{s: s, d: &Discovery{Facts: slices.Clone(s.Unread)}, sets: map[string]ImageSet{}}
	for _, is := range s.ImageSets {
		if v, ok := strings.CutPrefix(is.Name, "calico-"); ok && isVersion(v) {
			r.sets[normaliseVersion(v)] = is
		}
	}
	d := r.d
	var node *Workload
	for i := range s.Workloads {
		if s.Workloads[i].Name == "calico-node" && s.Workloads[i].Kind == "DaemonSet" {
			node = &s.Workloads[i]
			break
		}
	}

	// Variant.
	d.Variant = manifest.VariantManifest
	src := "calico-node DaemonSet in kube-system"
	switch {
	case s.Installation != nil:
		d.Variant, src = manifest.VariantOperator, srcInstallation+" exists"
		if s.Installation.Variant != "" {
			d.Facts = append(d.Facts, Fact{"operator variant", s.Installation.Variant, srcInstallation + " .status.variant"})
		}
	case node != nil && node.Namespace == "calico-system":
		d.Variant, src = manifest.VariantOperator, "calico-node DaemonSet in calico-system"
	}
	d.Facts = append(d.Facts, Fact{"variant", string(d.Variant), src})

	// Registry, path and prefix for images no spec names: from the node image the cluster
	// runs, else the Installation's computed values, else the catalog's default.
	nodeRef, _ := componentRef(node, "node")
	switch {
	case nodeRef != nil:
		d.Registry, d.ImagePath, d.ImagePrefix = splitRef(*nodeRef)
		d.Facts = append(d.Facts, Fact{"registry", d.Registry, "the calico-node image"})
	case s.Installation != nil && s.Installation.Registry != "":
		d.Registry = strings.TrimSuffix(s.Installation.Registry, "/")
		d.ImagePath, d.ImagePrefix = s.Installation.ImagePath, s.Installation.ImagePrefix
		d.Facts = append(d.Facts, Fact{"registry", d.Registry, srcInstallation + " .status.computed"})
	}

	// Version, in order of authority; every source is checked against the winner.
	cands := r.candidates(node)
	if len(cands) == 0 {
		if nodeRef != nil {
			return nil, fmt.Errorf("no Calico version found: %s runs %s, which names no tag, and no Installation status, ClusterInformation, calico ImageSet or known tigera-operator release says which release it is; pass the set with --calico-version and --image instead of reading the cluster", node, nodeRef)
		}
		return nil, fmt.Errorf("no Calico found: no calico-node DaemonSet in kube-system or calico-system, no Installation, no ClusterInformation; pass --calico-version")
	}
	d.Version = cands[0].version
	d.Facts = append(d.Facts, Fact{"version", d.Version, cands[0].source})
	next := cands[0]
	for _, c := range cands[1:] {
		if c.version != d.Version {
			d.Disagreements = append(d.Disagreements, fmt.Sprintf("%s says %s, %s says %s (an upgrade in progress?); using %s", c.source, c.version, cands[0].source, d.Version, d.Version))
		} else {
			d.Facts = append(d.Facts, Fact{"version", c.version, c.source})
		}
		if cmp, ok := manifest.CompareVersions(c.version, next.version); ok && cmp > 0 {
			next = c
		}
	}
	if next.version != d.Version {
		d.Facts = append(d.Facts, Fact{"next version", next.version, next.source})
	}
	if s.OperatorImage != "" {
		d.Facts = append(d.Facts, Fact{"operator", s.OperatorImage, srcOperator})
	}

	// The images: what the Calico workloads run. The catalog stands in only when the
	// snapshot does not cover every workload, or names none.
	specs := r.specImages()
	var set []manifest.Image
	if s.Complete && len(specs) > 0 {
		set = specs
		d.Facts = append(d.Facts, Fact{"images", "what the Calico workloads run", "their containers and init containers"})
	} else {
		catalog, err := manifest.Build(manifest.Options{Version: d.Version, Variant: d.Variant, Registry: d.Registry, ImagePath: d.ImagePath, ImagePrefix: d.ImagePrefix})
		if err != nil {
			return nil, err
		}
		why := "no Calico workload was read"
		if len(specs) > 0 {
			why = "the snapshot covers only some workloads; theirs replace the catalog's"
		}
		d.Facts = append(d.Facts, Fact{"images", "catalog " + d.Version + " (" + string(d.Variant) + ")", why})
		set = useSpecs(catalog, specs)
	}
	set = r.upgrade(set, next)
	r.digests(set)
	d.Images = set
	sort.SliceStable(d.Facts, func(i, j int) bool { return d.Facts[i].What < d.Facts[j].What })
	return d, nil
}

// candidates lists the versions the sources state, most authoritative first. A source
// that names no version (a digest-only reference no ImageSet lists, a "latest" tag) is
// left out.
func (r *resolver) candidates(node *Workload) []candidate {
	var out []candidate
	add := func(v, source string) {
		if isVersion(v) {
			out = append(out, candidate{normaliseVersion(v), source})
		}
	}
	if ref, c := componentRef(node, "node"); ref != nil {
		v, how := r.refVersion(*ref, "node")
		add(v, node.String()+" container "+c+how)
	}
	for _, w := range r.s.Workloads {
		if w.Kind != "Deployment" || !calicoWorkloads[w.Name] {
			continue
		}
		for _, component := range []string{"kube-controllers", "typha"} {
			if ref, c := componentRef(&w, component); ref != nil {
				v, how := r.refVersion(*ref, component)
				add(v, w.String()+" container "+c+how)
			}
		}
	}
	if in := r.s.Installation; in != nil {
		add(in.CalicoVersion, srcInstallation+" .status.calicoVersion")
	}
	for _, f := range r.s.ClusterInfo {
		add(f.Version, f.Source)
	}
	// The calico-node pods that run: the first pod of each version speaks for it.
	seen := map[string]bool{}
	for _, p := range r.s.Running {
		ref, err := manifest.ParseRef(p.Image)
		if err != nil || !isComponent(ref, "node") {
			continue
		}
		v, how := r.refVersion(ref, "node")
		if v == "" {
			if id, err := manifest.ParseRef(strings.TrimPrefix(p.ImageID, "docker-pullable://")); err == nil && id.Digest != "" {
				v, how = r.refVersion(manifest.Ref{Name: id.Name, Digest: id.Digest}, "node")
			}
		}
		if v != "" && !seen[v] {
			seen[v] = true
			add(v, fmt.Sprintf("pod %s on %s container %s runs %s%s", p.Pod, p.Node, p.Container, ref.Display(), how))
		}
	}
	if in := r.s.Installation; in != nil && in.ImageSet != "" {
		if v, ok := strings.CutPrefix(in.ImageSet, "calico-"); ok {
			add(v, srcInstallation+" .status.imageSet "+in.ImageSet)
		}
	} else if len(r.sets) == 1 {
		for v, is := range r.sets {
			add(v, srcImageSets+" "+is.Name+" (the only calico ImageSet)")
		}
	}
	if r.s.OperatorImage != "" {
		if ref, err := manifest.ParseRef(r.s.OperatorImage); err == nil {
			switch {
			case ref.Tag != "" && operatorReleases[ref.Tag] != "":
				add(operatorReleases[ref.Tag], fmt.Sprintf("%s runs %s, which deploys Calico %s", srcOperator, ref.Display(), operatorReleases[ref.Tag]))
			case ref.Tag == "" && ref.Digest != "":
				if is, v, ok := r.listing("tigera/operator", ref.Digest); ok {
					add(v, fmt.Sprintf("%s runs a digest %s %s lists", srcOperator, srcImageSets, is.Name))
				}
			}
		}
	}
	return out
}

// refVersion is the release a Calico image reference is of: its tag, or for a reference
// that names only a digest, the calico ImageSet that lists the digest for component. how
// says which, for a source line.
func (r *resolver) refVersion(ref manifest.Ref, component string) (version, how string) {
	if ref.Tag != "" {
		return ref.Tag, ""
	}
	if ref.Digest != "" {
		if is, v, ok := r.listing("calico/"+component, ref.Digest); ok {
			return v, " (its digest, listed in " + srcImageSets + " " + is.Name + ")"
		}
	}
	return "", ""
}

// listing finds the calico ImageSet that lists dg for image ("calico/node").
func (r *resolver) listing(image string, dg digest.Digest) (ImageSet, string, bool) {
	for v, is := range r.sets {
		if is.Images[image] == dg {
			return is, v, true
		}
	}
	return ImageSet{}, "", false
}

// specImages are the images of the Calico workloads' containers and init containers,
// once each, main containers first. A Calico image the spec names by digest only (the
// operator with an ImageSet) gets its release's tag: it is pulled by the digest and
// recorded under both names.
func (r *resolver) specImages() []manifest.Image {
	var out []manifest.Image
	seen := map[string]bool{}
	for _, w := range r.s.Workloads {
		if !calicoWorkloads[w.Name] {
			continue
		}
		for _, c := range mainFirst(w.Containers) {
			ref, err := manifest.ParseRef(c.Image)
			if err != nil {
				r.d.Facts = append(r.d.Facts, Fact{"unparsable image", c.Image, w.String()})
				continue
			}
			kind := "container"
			if c.Init {
				kind = "initContainer"
			}
			img := manifest.Image{Ref: ref, Part: manifest.PartCalico, Source: fmt.Sprintf("%s %s %s", w, kind, c.Name)}
			if ref.Digest != "" {
				img.DigestSource, img.ByDigest = img.Source, true
			}
			img, calico := manifest.Describe(img, r.d.ImagePrefix)
			if calico && ref.Tag == "" && ref.Digest != "" {
				img.Ref.Tag, img.TagSource = r.d.Version, "the version discovery found"
				if is, v, ok := r.listing("calico/"+img.Component, ref.Digest); ok {
					img.Ref.Tag, img.TagSource = v, srcImageSets+" "+is.Name+", which lists this digest"
				}
			}
			if key := img.Ref.String(); !seen[key] {
				seen[key] = true
				out = append(out, img)
			}
		}
	}
	return out
}

// useSpecs puts each spec image in place of the catalog's image of the same component,
// or adds it.
func useSpecs(catalog, specs []manifest.Image) []manifest.Image {
	set := catalog
	replaced := make([]bool, len(catalog))
next:
	for _, img := range specs {
		if img.Component != "" {
			for i := range catalog {
				if !replaced[i] && set[i].Component == img.Component {
					set[i], replaced[i] = img, true
					continue next
				}
			}
		}
		set = append(set, img)
	}
	return set
}

// upgrade adds, during an upgrade, the next release's image for each Calico image of an
// older release: what the cluster is about to run. The release's default registry moves
// with it (docker.io → quay.io at v3.31); a mirror's stays.
func (r *resolver) upgrade(set []manifest.Image, next candidate) []manifest.Image {
	to, err := manifest.ParseVersion(next.version)
	if err != nil {
		return set // outside the catalog: its components cannot be named
	}
	have := map[string]bool{}
	for _, img := range set {
		have[img.Ref.TagName()] = true
	}
	for _, img := range set {
		cmp, ok := manifest.CompareVersions(img.Ref.Tag, next.version)
		if img.Component == "" || !ok || cmp >= 0 {
			continue
		}
		component, ok := manifest.ComponentIn(img.Component, to, r.d.Variant)
		if !ok {
			continue
		}
		name := strings.TrimSuffix(img.Ref.Name, img.Component) + component
		if from, err := manifest.ParseVersion(img.Ref.Tag); err == nil {
			if rest, ok := strings.CutPrefix(name, manifest.DefaultRegistry(from, r.d.Variant)+"/calico/"); ok {
				name = manifest.DefaultRegistry(to, r.d.Variant) + "/calico/" + rest
			}
		}
		ref, err := manifest.ParseRef(name + ":" + to.String())
		if err != nil || have[ref.TagName()] {
			continue
		}
		have[ref.TagName()] = true
		up, _ := manifest.Describe(manifest.Image{Ref: ref, Part: manifest.PartCalico, Source: fmt.Sprintf("upgrade to %s: the successor of %s", next.version, img.Ref.Display())}, r.d.ImagePrefix)
		set = append(set, up)
	}
	return set
}

// digests fills expected digests: the operator's ImageSet for the image's release, then
// what running pods pulled for the same reference.
func (r *resolver) digests(set []manifest.Image) {
	for i := range set {
		img := &set[i]
		if img.Ref.Digest != "" {
			continue
		}
		// ImageSet images are "calico/node", whatever registry, path and prefix the
		// Installation uses.
		if is, ok := r.sets[img.Ref.Tag]; ok {
			for key, dg := range is.Images {
				if img.Component != "" && key == "calico/"+img.Component || img.Component == "" && (img.Ref.Path() == key || strings.HasSuffix(img.Ref.Path(), "/"+key)) {
					img.Ref.Digest, img.DigestSource, img.ByDigest = dg, srcImageSets+" "+is.Name, true
				}
			}
		}
		if img.Ref.Digest != "" {
			continue
		}
		for _, p := range r.s.Running {
			spec, err := manifest.ParseRef(p.Image)
			if err != nil || spec.Name != img.Ref.Name || spec.Tag != img.Ref.Tag {
				continue
			}
			id, err := manifest.ParseRef(strings.TrimPrefix(p.ImageID, "docker-pullable://"))
			if err != nil || id.Digest == "" {
				continue
			}
			img.Ref.Digest, img.DigestSource, img.ByDigest = id.Digest, fmt.Sprintf("imageID of pod %s on %s", p.Pod, p.Node), true
			break
		}
	}
}

// componentRef is w's first reference to Calico's component image, main containers
// first, and the container using it.
func componentRef(w *Workload, component string) (*manifest.Ref, string) {
	if w == nil {
		return nil, ""
	}
	for _, c := range mainFirst(w.Containers) {
		if ref, err := manifest.ParseRef(c.Image); err == nil && isComponent(ref, component) {
			return &ref, c.Name
		}
	}
	return nil, ""
}

// mainFirst orders containers before init containers: a main container is the better
// source line for an image both use (calico-node and mount-bpffs run calico/node).
func mainFirst(cs []Container) []Container {
	out := make([]Container, 0, len(cs))
	for _, init := range []bool{false, true} {
		for _, c := range cs {
			if c.Init == init {
				out = append(out, c)
			}
		}
	}
	return out
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

func isVersion(v string) bool {
	_, ok := manifest.CompareVersions(v, v)
	return ok
}

func normaliseVersion(v string) string {
	v = strings.TrimSpace(v)
	if v != "" && !strings.HasPrefix(v, "v") {
		v = "v" + v
	}
	return v
}
