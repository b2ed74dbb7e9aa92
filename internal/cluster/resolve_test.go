package cluster

import (
	"slices"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"

	"github.com/precache/precache/internal/manifest"
)

// releaseManifest is what projectcalico/calico's manifests/calico.yaml creates in
// kube-system (shape read at v3.30.2 and v3.31.0): the calico-node DaemonSet with init
// containers upgrade-ipam and install-cni (calico/cni) and mount-bpffs (v3.30) or
// ebpf-bootstrap (v3.31) (calico/node), and the calico-kube-controllers Deployment. There
// is no typha Deployment in calico.yaml; calico-typha.yaml adds calico-typha.
func releaseManifest(registry, version string, typha bool) []Workload {
	img := func(c string) string { return registry + "/calico/" + c + ":" + version }
	bpf := "mount-bpffs"
	if cmp, _ := manifest.CompareVersions(version, "v3.31.0"); cmp >= 0 {
		bpf = "ebpf-bootstrap"
	}
	w := []Workload{
		{Kind: "DaemonSet", Namespace: "kube-system", Name: "calico-node", Containers: []Container{
			{Name: "upgrade-ipam", Image: img("cni"), Init: true},
			{Name: "install-cni", Image: img("cni"), Init: true},
			{Name: bpf, Image: img("node"), Init: true},
			{Name: "calico-node", Image: img("node")},
		}},
		{Kind: "Deployment", Namespace: "kube-system", Name: "calico-kube-controllers", Containers: []Container{
			{Name: "calico-kube-controllers", Image: img("kube-controllers")},
		}},
	}
	if typha {
		w = append(w, Workload{Kind: "Deployment", Namespace: "kube-system", Name: "calico-typha", Containers: []Container{
			{Name: "calico-typha", Image: img("typha")},
		}})
	}
	return w
}

// operatorRendered is what tigera-operator renders in calico-system (shape from
// tigera/operator pkg/render/node.go, csi.go, typha.go and kubecontrollers at v1.38.3,
// default Installation: no BPF, no certificate management): calico-node with init
// containers flexvol-driver and install-cni, csi-node-driver with calico-csi and
// csi-node-driver-registrar, and the calico-kube-controllers and calico-typha Deployments.
// ref gives each component's reference: with an ImageSet, GetReference in
// pkg/components/references.go at v1.38.3 renders "<registry><path>/<name>@<digest>", no tag.
func operatorRendered(ref func(component string) string) []Workload {
	return []Workload{
		{Kind: "DaemonSet", Namespace: "calico-system", Name: "calico-node", Containers: []Container{
			{Name: "flexvol-driver", Image: ref("pod2daemon-flexvol"), Init: true},
			{Name: "install-cni", Image: ref("cni"), Init: true},
			{Name: "calico-node", Image: ref("node")},
		}},
		{Kind: "DaemonSet", Namespace: "calico-system", Name: "csi-node-driver", Containers: []Container{
			{Name: "calico-csi", Image: ref("csi")},
			{Name: "csi-node-driver-registrar", Image: ref("node-driver-registrar")},
		}},
		{Kind: "Deployment", Namespace: "calico-system", Name: "calico-kube-controllers", Containers: []Container{
			{Name: "calico-kube-controllers", Image: ref("kube-controllers")},
		}},
		{Kind: "Deployment", Namespace: "calico-system", Name: "calico-typha", Containers: []Container{
			{Name: "calico-typha", Image: ref("typha")},
		}},
	}
}

// operatorComponents are the images operatorRendered runs.
var operatorComponents = []string{"cni", "csi", "kube-controllers", "node", "node-driver-registrar", "pod2daemon-flexvol", "typha"}

// fakeDigest is a stable digest per image and release.
func fakeDigest(component, version string) digest.Digest {
	return digest.FromString(component + "@" + version)
}

// imageSet is an ImageSet as api/v1/imageset_types.go at tigera/operator v1.38.3 shapes
// it: metadata.name calico-<release>, spec.images[] {image: "calico/node", digest}.
func imageSet(version string) ImageSet {
	is := ImageSet{Name: "calico-" + version, Images: map[string]digest.Digest{"tigera/operator": fakeDigest("operator", version)}}
	for _, c := range operatorComponents {
		is.Images["calico/"+c] = fakeDigest(c, version)
	}
	return is
}

// byDigestRef is GetReference with an ImageSet: quay.io/calico/node@sha256:….
func byDigestRef(version string) func(string) string {
	return func(c string) string { return "quay.io/calico/" + c + "@" + fakeDigest(c, version).String() }
}

// pinned is the reference Resolve should give an image the operator names by digest:
// the release's tag and the ImageSet's digest.
func pinned(c, version string) string {
	return "quay.io/calico/" + c + ":" + version + "@" + fakeDigest(c, version).String()
}

func pinnedSet(version string) []string {
	var out []string
	for _, c := range operatorComponents {
		out = append(out, pinned(c, version))
	}
	return out
}

func refs(imgs []manifest.Image) []string {
	out := make([]string, len(imgs))
	for i, img := range imgs {
		out[i] = img.Ref.String()
	}
	slices.Sort(out)
	return out
}

func sorted(s ...[]string) []string {
	out := slices.Concat(s...)
	slices.Sort(out)
	return out
}

func TestResolve(t *testing.T) {
	t.Parallel()
	d1 := digest.Digest("sha256:" + strings.Repeat("1", 64))
	d2 := digest.Digest("sha256:" + strings.Repeat("2", 64))
	tests := []struct {
		name    string
		snap    Snapshot
		version string
		variant manifest.Variant
		// images, sorted, as Ref.String(): name:tag[@digest]
		images []string
		// versionFrom is part of the winning version fact's source.
		versionFrom string
		// nextFrom, if set, is part of the "next version" fact's source.
		nextFrom string
		// byDigest lists the images (Ref.String()) pulled by digest; nil: not checked.
		byDigest      []string
		digestSources map[string]string
		disagree      int
		err           string
	}{
		{
			name:    "calico.yaml v3.30.2: no typha Deployment, no typha",
			snap:    Snapshot{Complete: true, Workloads: releaseManifest("docker.io", "v3.30.2", false), ClusterInfo: []VersionFact{{Source: "clusterinformations.crd.projectcalico.org/v1 default", Version: "v3.30.2"}}},
			version: "v3.30.2", variant: manifest.VariantManifest, versionFrom: "DaemonSet kube-system/calico-node container calico-node",
			images:   []string{"docker.io/calico/cni:v3.30.2", "docker.io/calico/kube-controllers:v3.30.2", "docker.io/calico/node:v3.30.2"},
			byDigest: []string{},
		},
		{
			name:    "calico-typha.yaml v3.30.2: typha from its Deployment",
			snap:    Snapshot{Complete: true, Workloads: releaseManifest("docker.io", "v3.30.2", true)},
			version: "v3.30.2", variant: manifest.VariantManifest,
			images: []string{"docker.io/calico/cni:v3.30.2", "docker.io/calico/kube-controllers:v3.30.2", "docker.io/calico/node:v3.30.2", "docker.io/calico/typha:v3.30.2"},
		},
		{
			name:    "calico.yaml v3.31.0: quay.io, ebpf-bootstrap init container, no typha",
			snap:    Snapshot{Complete: true, Workloads: releaseManifest("quay.io", "v3.31.0", false)},
			version: "v3.31.0", variant: manifest.VariantManifest,
			images: []string{"quay.io/calico/cni:v3.31.0", "quay.io/calico/kube-controllers:v3.31.0", "quay.io/calico/node:v3.31.0"},
		},
		{
			name:    "Kubespray custom repos: the specs' registry, still no typha",
			snap:    Snapshot{Complete: true, Workloads: releaseManifest("registry.local:5000/mirror", "v3.28.1", false)},
			version: "v3.28.1", variant: manifest.VariantManifest,
			images: []string{"registry.local:5000/mirror/calico/cni:v3.28.1", "registry.local:5000/mirror/calico/kube-controllers:v3.28.1", "registry.local:5000/mirror/calico/node:v3.28.1"},
		},
		{
			name:    "a snapshot of calico-node only (the agent's watch): the catalog fills the rest, with the specs' registry",
			snap:    Snapshot{Workloads: releaseManifest("registry.local:5000/mirror", "v3.28.1", false)[:1]},
			version: "v3.28.1", variant: manifest.VariantManifest,
			images: []string{
				"registry.local:5000/mirror/calico/cni:v3.28.1",
				"registry.local:5000/mirror/calico/kube-controllers:v3.28.1",
				"registry.local:5000/mirror/calico/node:v3.28.1",
				"registry.local:5000/mirror/calico/typha:v3.28.1",
			},
		},
		{
			name: "operator with an ImageSet: every reference digest-only; tag from the ImageSet, pulled by digest",
			snap: Snapshot{
				Complete:      true,
				Workloads:     operatorRendered(byDigestRef("v3.30.2")),
				Installation:  &Installation{CalicoVersion: "v3.30.2", Variant: "Calico", ImageSet: "calico-v3.30.2"},
				ImageSets:     []ImageSet{imageSet("v3.30.2")},
				ClusterInfo:   []VersionFact{{Source: "clusterinformations.crd.projectcalico.org/v1 default", Version: "v3.30.2"}},
				OperatorImage: "quay.io/tigera/operator:v1.38.3",
			},
			version: "v3.30.2", variant: manifest.VariantOperator,
			versionFrom: "DaemonSet calico-system/calico-node container calico-node (its digest, listed in imagesets.operator.tigera.io calico-v3.30.2)",
			images:      sorted(pinnedSet("v3.30.2")),
			byDigest:    pinnedSet("v3.30.2"),
		},
		{
			name: "digest-only, no ImageSet to say the release: the Installation's status.calicoVersion",
			snap: Snapshot{
				Complete:     true,
				Workloads:    operatorRendered(byDigestRef("v3.30.2")),
				Installation: &Installation{CalicoVersion: "v3.30.2"},
				ClusterInfo:  []VersionFact{{Source: "clusterinformations.crd.projectcalico.org/v1 default .spec.calicoVersion", Version: "v3.30.2"}},
			},
			version: "v3.30.2", variant: manifest.VariantOperator, versionFrom: "installations.operator.tigera.io default .status.calicoVersion",
			images: sorted(pinnedSet("v3.30.2")), byDigest: pinnedSet("v3.30.2"),
		},
		{
			name: "digest-only, the operator not yet ready (no status): the ClusterInformation",
			snap: Snapshot{
				Complete:     true,
				Workloads:    operatorRendered(byDigestRef("v3.30.2")),
				Installation: &Installation{},
				ClusterInfo:  []VersionFact{{Source: "clusterinformations.crd.projectcalico.org/v1 default .spec.calicoVersion", Version: "v3.30.2"}},
			},
			version: "v3.30.2", variant: manifest.VariantOperator, versionFrom: "clusterinformations.crd.projectcalico.org/v1",
			images: sorted(pinnedSet("v3.30.2")),
		},
		{
			name: "fresh operator install, nothing rendered yet: the ImageSet's name, the catalog with its digests",
			snap: Snapshot{
				Complete:     true,
				Installation: &Installation{Registry: "quay.io/"},
				ImageSets:    []ImageSet{imageSet("v3.30.2")},
			},
			version: "v3.30.2", variant: manifest.VariantOperator, versionFrom: "imagesets.operator.tigera.io calico-v3.30.2 (the only calico ImageSet)",
			digestSources: map[string]string{
				"quay.io/calico/node": "imagesets.operator.tigera.io calico-v3.30.2", "quay.io/calico/cni": "imagesets.operator.tigera.io calico-v3.30.2",
				"quay.io/calico/typha": "imagesets.operator.tigera.io calico-v3.30.2", "quay.io/calico/kube-controllers": "imagesets.operator.tigera.io calico-v3.30.2",
				"quay.io/calico/csi": "imagesets.operator.tigera.io calico-v3.30.2", "quay.io/calico/node-driver-registrar": "imagesets.operator.tigera.io calico-v3.30.2",
				"quay.io/calico/pod2daemon-flexvol": "imagesets.operator.tigera.io calico-v3.30.2",
			},
		},
		{
			name:    "fresh operator install, only the operator says it: its release's Calico",
			snap:    Snapshot{Complete: true, Installation: &Installation{}, OperatorImage: "quay.io/tigera/operator:v1.38.3"},
			version: "v3.30.2", variant: manifest.VariantOperator, versionFrom: "Deployment tigera-operator/tigera-operator runs quay.io/tigera/operator:v1.38.3, which deploys Calico v3.30.2",
		},
		{
			name: "digest-only and nothing says the release",
			snap: Snapshot{Complete: true, Workloads: operatorRendered(byDigestRef("v3.30.2")), OperatorImage: "quay.io/tigera/operator:v9.0.0"},
			err:  "names no tag, and no Installation status, ClusterInformation, calico ImageSet or known tigera-operator release",
		},
		{
			name: "Kubespray upgrade half-way: calico-node moved to v3.31.0, kube-controllers not yet; the next release's kube-controllers too, on its registry; still no typha",
			snap: Snapshot{
				Complete: true,
				Workloads: append(releaseManifest("quay.io", "v3.31.0", false)[:1],
					releaseManifest("docker.io", "v3.30.2", false)[1:]...),
				ClusterInfo: []VersionFact{{Source: "clusterinformations.crd.projectcalico.org/v1 default", Version: "v3.30.2"}},
				Running:     []Running{{Pod: "kube-system/calico-node-x", Node: "n1", Container: "calico-node", Image: "docker.io/calico/node:v3.30.2", ImageID: "docker.io/calico/node@" + d1.String()}},
			},
			version: "v3.31.0", variant: manifest.VariantManifest, disagree: 3, // kube-controllers, ClusterInformation, the pod
			images: []string{
				"docker.io/calico/kube-controllers:v3.30.2",
				"quay.io/calico/cni:v3.31.0", "quay.io/calico/kube-controllers:v3.31.0", "quay.io/calico/node:v3.31.0",
			},
		},
		{
			name: "operator upgrade half-way: calico-node rendered from calico-v3.31.0, the rest still v3.30.2; the rest's v3.31.0 digests too",
			snap: Snapshot{
				Complete: true,
				Workloads: append(operatorRendered(byDigestRef("v3.31.0"))[:1],
					operatorRendered(byDigestRef("v3.30.2"))[1:]...),
				Installation:  &Installation{CalicoVersion: "v3.30.2", ImageSet: "calico-v3.30.2"},
				ImageSets:     []ImageSet{imageSet("v3.30.2"), imageSet("v3.31.0")},
				OperatorImage: "quay.io/tigera/operator:v1.40.0",
			},
			version: "v3.31.0", variant: manifest.VariantOperator, disagree: 4, // kube-controllers, typha, Installation, its imageSet
			versionFrom: "(its digest, listed in imagesets.operator.tigera.io calico-v3.31.0)",
			images: sorted(
				[]string{pinned("cni", "v3.31.0"), pinned("node", "v3.31.0"), pinned("pod2daemon-flexvol", "v3.31.0")},
				[]string{pinned("csi", "v3.30.2"), pinned("node-driver-registrar", "v3.30.2"), pinned("kube-controllers", "v3.30.2"), pinned("typha", "v3.30.2")},
				[]string{pinned("csi", "v3.31.0"), pinned("node-driver-registrar", "v3.31.0"), pinned("kube-controllers", "v3.31.0"), pinned("typha", "v3.31.0")},
			),
			byDigest: pinnedSet("v3.30.2"), // and v3.31.0's, checked below by the digest sources
		},
		{
			name: "the Installation already says a newer release than the DaemonSet: the DaemonSet wins, the next release's images are added",
			snap: Snapshot{
				Complete:     true,
				Workloads:    operatorRendered(func(c string) string { return "quay.io/calico/" + c + ":v3.30.2" })[:1],
				Installation: &Installation{CalicoVersion: "v3.31.0"},
			},
			version: "v3.30.2", variant: manifest.VariantOperator, disagree: 1, nextFrom: "installations.operator.tigera.io default .status.calicoVersion",
			images: []string{
				"quay.io/calico/cni:v3.30.2", "quay.io/calico/cni:v3.31.0", "quay.io/calico/node:v3.30.2", "quay.io/calico/node:v3.31.0",
				"quay.io/calico/pod2daemon-flexvol:v3.30.2", "quay.io/calico/pod2daemon-flexvol:v3.31.0",
			},
		},
		{
			name: "mid-upgrade: DaemonSet v3.29.1 wins over ClusterInformation v3.28.1",
			snap: Snapshot{
				Complete:    true,
				Workloads:   releaseManifest("docker.io", "v3.29.1", false)[:1],
				ClusterInfo: []VersionFact{{Source: "clusterinformations.crd.projectcalico.org/v1 default", Version: "v3.28.1"}},
			},
			version: "v3.29.1", variant: manifest.VariantManifest, disagree: 1,
			images: []string{"docker.io/calico/cni:v3.29.1", "docker.io/calico/node:v3.29.1"},
		},
		{
			name: "digest from a running pod's imageID, only for the same tag",
			snap: Snapshot{
				Workloads: releaseManifest("docker.io", "v3.28.1", false)[:1],
				Running: []Running{
					{Pod: "kube-system/calico-node-a", Node: "n1", Container: "calico-node", Image: "docker.io/calico/node:v3.28.1", ImageID: "docker.io/calico/node@" + d1.String()},
					{Pod: "kube-system/calico-node-b", Node: "n2", Container: "install-cni", Image: "docker.io/calico/cni:v3.27.0", ImageID: "docker.io/calico/cni@" + d2.String()},
				},
			},
			version: "v3.28.1", variant: manifest.VariantManifest,
			digestSources: map[string]string{"docker.io/calico/node": "imageID of pod kube-system/calico-node-a on n1"},
		},
		{
			name:    "digest pinned in the spec next to the tag",
			snap:    Snapshot{Complete: true, Workloads: []Workload{{Kind: "DaemonSet", Namespace: "kube-system", Name: "calico-node", Containers: []Container{{Name: "calico-node", Image: "docker.io/calico/node:v3.28.1@" + d1.String()}}}}},
			version: "v3.28.1", variant: manifest.VariantManifest,
			digestSources: map[string]string{"docker.io/calico/node": "DaemonSet kube-system/calico-node container calico-node"},
		},
		{
			name: "nothing found",
			snap: Snapshot{Complete: true},
			err:  "no Calico found",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d, err := Resolve(tt.snap)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d.Version != tt.version || d.Variant != tt.variant {
				t.Errorf("version %s variant %s, want %s %s", d.Version, d.Variant, tt.version, tt.variant)
			}
			if tt.images != nil {
				if got := refs(d.Images); !slices.Equal(got, tt.images) {
					t.Errorf("images\n got %v\nwant %v", got, tt.images)
				}
			}
			if tt.versionFrom != "" && !hasFact(d, "version", tt.version, tt.versionFrom) {
				t.Errorf("no version fact %s from %q in %+v", tt.version, tt.versionFrom, d.Facts)
			}
			if tt.nextFrom != "" && !hasFact(d, "next version", "", tt.nextFrom) {
				t.Errorf("no next version fact from %q in %+v", tt.nextFrom, d.Facts)
			}
			if tt.byDigest != nil {
				want := map[string]bool{}
				for _, r := range tt.byDigest {
					want[r] = true
				}
				for _, img := range d.Images {
					if want[img.Ref.String()] && !img.ByDigest {
						t.Errorf("%s: not pulled by digest", img.Ref)
					}
					if len(tt.byDigest) == 0 && img.ByDigest {
						t.Errorf("%s: pulled by digest (from %s), want by tag", img.Ref, img.DigestSource)
					}
				}
			}
			for name, src := range tt.digestSources {
				found := false
				for _, img := range d.Images {
					if img.Ref.Name == name {
						found = true
						if img.Ref.Digest == "" || img.DigestSource != src {
							t.Errorf("%s: digest %q from %q, want from %q", name, img.Ref.Digest, img.DigestSource, src)
						}
					}
				}
				if !found {
					t.Errorf("%s not in the set", name)
				}
			}
			for _, img := range d.Images {
				if _, ok := tt.digestSources[img.Ref.Name]; !ok && tt.digestSources != nil && img.Ref.Digest != "" {
					t.Errorf("%s has digest %s from %s, want none", img.Ref.Name, img.Ref.Digest, img.DigestSource)
				}
			}
			if len(d.Disagreements) != tt.disagree {
				t.Errorf("disagreements %v, want %d", d.Disagreements, tt.disagree)
			}
		})
	}
}

func hasFact(d *Discovery, what, value, sourcePart string) bool {
	for _, f := range d.Facts {
		if f.What == what && (value == "" || f.Value == value) && strings.Contains(f.Source, sourcePart) {
			return true
		}
	}
	return false
}

// TestResolveDigestOnlyImage: what the core needs to make both names of an image the
// operator renders by digest only — "repo:tag" for people and tools, "repo@sha256:…" for
// the kubelet — and pull it by that digest.
func TestResolveDigestOnlyImage(t *testing.T) {
	t.Parallel()
	const v = "v3.30.2"
	tests := []struct {
		name      string
		snap      Snapshot
		tagSource string
	}{
		{
			name: "the ImageSet lists the digest",
			snap: Snapshot{Complete: true, Workloads: operatorRendered(byDigestRef(v)), Installation: &Installation{CalicoVersion: v}, ImageSets: []ImageSet{imageSet(v)}},
			// The ImageSet names the release of this very digest.
			tagSource: "imagesets.operator.tigera.io calico-v3.30.2, which lists this digest",
		},
		{
			name:      "no ImageSet: the version discovery found",
			snap:      Snapshot{Complete: true, Workloads: operatorRendered(byDigestRef(v)), Installation: &Installation{CalicoVersion: v}},
			tagSource: "the version discovery found",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d, err := Resolve(tt.snap)
			if err != nil {
				t.Fatal(err)
			}
			var node *manifest.Image
			for i := range d.Images {
				if d.Images[i].Component == "node" {
					node = &d.Images[i]
				}
			}
			if node == nil {
				t.Fatalf("no node image in %v", refs(d.Images))
			}
			want := fakeDigest("node", v)
			if node.Ref.Name != "quay.io/calico/node" || node.Ref.Tag != v || node.Ref.Digest != want || !node.ByDigest {
				t.Errorf("node image %+v, want quay.io/calico/node tag %s digest %s by digest", node.Ref, v, want)
			}
			if node.TagSource != tt.tagSource {
				t.Errorf("tag source %q, want %q", node.TagSource, tt.tagSource)
			}
			if node.DigestSource != "DaemonSet calico-system/calico-node container calico-node" {
				t.Errorf("digest source %q, want the spec", node.DigestSource)
			}
			// The two names the core records, and what tables show.
			if got := node.Ref.TagName(); got != "quay.io/calico/node:"+v {
				t.Errorf("TagName %q", got)
			}
			if got := node.Ref.DigestName(node.Ref.Digest); got != "quay.io/calico/node@"+want.String() {
				t.Errorf("DigestName %q", got)
			}
			if got := node.Ref.Display(); got != "quay.io/calico/node:"+v {
				t.Errorf("Display %q", got)
			}
		})
	}
}

// TestOperatorReleases: the table of operator releases names versions on both sides.
func TestOperatorReleases(t *testing.T) {
	t.Parallel()
	for op, calico := range operatorReleases {
		if !isVersion(op) || !strings.HasPrefix(op, "v1.") || !isVersion(calico) || !strings.HasPrefix(calico, "v3.") {
			t.Errorf("operator %q → Calico %q", op, calico)
		}
	}
	if got := operatorReleases["v1.38.3"]; got != "v3.30.2" {
		t.Errorf("operator v1.38.3 deploys %q, want v3.30.2", got)
	}
}
