package cluster

import (
	"slices"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"

	"github.com/precache/precache/internal/manifest"
)

func manifestInstall(registry, version string) []Workload {
	return []Workload{
		{Kind: "DaemonSet", Namespace: "kube-system", Name: "calico-node", Containers: []Container{
			{Name: "upgrade-ipam", Image: registry + "/calico/cni:" + version, Init: true},
			{Name: "install-cni", Image: registry + "/calico/cni:" + version, Init: true},
			{Name: "mount-bpffs", Image: registry + "/calico/node:" + version, Init: true},
			{Name: "calico-node", Image: registry + "/calico/node:" + version},
		}},
		{Kind: "Deployment", Namespace: "kube-system", Name: "calico-kube-controllers", Containers: []Container{
			{Name: "calico-kube-controllers", Image: registry + "/calico/kube-controllers:" + version},
		}},
	}
}

func refs(imgs []manifest.Image) []string {
	out := make([]string, len(imgs))
	for i, img := range imgs {
		out[i] = img.Ref.String()
	}
	slices.Sort(out)
	return out
}

func TestResolve(t *testing.T) {
	t.Parallel()
	d1 := digest.Digest("sha256:" + strings.Repeat("1", 64))
	d2 := digest.Digest("sha256:" + strings.Repeat("2", 64))
	tests := []struct {
		name          string
		snap          Snapshot
		version       string
		variant       manifest.Variant
		images        []string
		digestSources map[string]string
		disagree      int
		err           string
	}{
		{
			name:    "manifest install, Kubespray custom registry; typha filled from the catalog with the same registry",
			snap:    Snapshot{Workloads: manifestInstall("registry.local:5000/mirror", "v3.28.1")},
			version: "v3.28.1", variant: manifest.VariantManifest,
			images: []string{
				"registry.local:5000/mirror/calico/cni:v3.28.1",
				"registry.local:5000/mirror/calico/kube-controllers:v3.28.1",
				"registry.local:5000/mirror/calico/node:v3.28.1",
				"registry.local:5000/mirror/calico/typha:v3.28.1",
			},
		},
		{
			name: "mid-upgrade: DaemonSet v3.29.1 wins over ClusterInformation v3.28.1",
			snap: Snapshot{
				Workloads:   manifestInstall("docker.io", "v3.29.1")[:1],
				ClusterInfo: []VersionFact{{Source: "clusterinformations.crd.projectcalico.org/v1 default", Version: "v3.28.1"}},
			},
			version: "v3.29.1", variant: manifest.VariantManifest, disagree: 1,
			images: []string{"docker.io/calico/cni:v3.29.1", "docker.io/calico/kube-controllers:v3.29.1", "docker.io/calico/node:v3.29.1", "docker.io/calico/typha:v3.29.1"},
		},
		{
			name: "operator install: status, computed registry and ImageSet digests",
			snap: Snapshot{
				Installation: &Installation{CalicoVersion: "v3.30.2", Variant: "Calico", Registry: "quay.io/", ImagePath: "calico"},
				ImageSets:    []ImageSet{{Name: "calico-v3.30.2", Images: map[string]digest.Digest{"calico/node": d1, "calico/cni": d2}}},
			},
			version: "v3.30.2", variant: manifest.VariantOperator,
			digestSources: map[string]string{"quay.io/calico/node": "imagesets.operator.tigera.io calico-v3.30.2", "quay.io/calico/cni": "imagesets.operator.tigera.io calico-v3.30.2"},
		},
		{
			name: "digest from a running pod's imageID, only for the same tag",
			snap: Snapshot{
				Workloads: manifestInstall("docker.io", "v3.28.1")[:1],
				Running: []Running{
					{Pod: "kube-system/calico-node-a", Node: "n1", Image: "docker.io/calico/node:v3.28.1", ImageID: "docker.io/calico/node@" + d1.String()},
					{Pod: "kube-system/calico-node-b", Node: "n2", Image: "docker.io/calico/cni:v3.27.0", ImageID: "docker.io/calico/cni@" + d2.String()},
				},
			},
			version: "v3.28.1", variant: manifest.VariantManifest,
			digestSources: map[string]string{"docker.io/calico/node": "imageID of pod kube-system/calico-node-a on n1"},
		},
		{
			name:    "digest pinned in the spec",
			snap:    Snapshot{Workloads: []Workload{{Kind: "DaemonSet", Namespace: "kube-system", Name: "calico-node", Containers: []Container{{Name: "calico-node", Image: "docker.io/calico/node:v3.28.1@" + d1.String()}}}}},
			version: "v3.28.1", variant: manifest.VariantManifest,
			digestSources: map[string]string{"docker.io/calico/node": "DaemonSet kube-system/calico-node container calico-node"},
		},
		{
			name: "nothing found",
			snap: Snapshot{},
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
