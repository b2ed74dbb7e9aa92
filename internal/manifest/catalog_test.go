package manifest

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseVersion(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   string
		want Version
		str  string
	}{
		{name: "with v", in: "v3.28.1", want: Version{Major: 3, Minor: 28, Patch: 1}, str: "v3.28.1"},
		{name: "without v", in: "3.28.1", want: Version{Major: 3, Minor: 28, Patch: 1}, str: "v3.28.1"},
		{name: "surrounding space", in: " v3.30.2\n", want: Version{Major: 3, Minor: 30, Patch: 2}, str: "v3.30.2"},
		{name: "oldest supported", in: "v3.24.0", want: Version{Major: 3, Minor: 24}, str: "v3.24.0"},
		{name: "newest supported", in: "v3.33.10", want: Version{Major: 3, Minor: 33, Patch: 10}, str: "v3.33.10"},
		{name: "pre-release suffix kept", in: "v3.33.0-0.dev", want: Version{Major: 3, Minor: 33, Suffix: "-0.dev"}, str: "v3.33.0-0.dev"},
		{name: "rc suffix", in: "3.29.0-rc1", want: Version{Major: 3, Minor: 29, Suffix: "-rc1"}, str: "v3.29.0-rc1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := ParseVersion(tt.in)
			if err != nil {
				t.Fatalf("ParseVersion(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Errorf("ParseVersion(%q) = %#v, want %#v", tt.in, got, tt.want)
			}
			if got.String() != tt.str {
				t.Errorf("ParseVersion(%q).String() = %q, want %q", tt.in, got.String(), tt.str)
			}
		})
	}
}

func TestParseVersionErrors(t *testing.T) {
	t.Parallel()
	const supported = "v3.24.x to v3.33.x"
	tests := []struct {
		name    string
		in      string
		wantErr []string
	}{
		{name: "empty", in: "", wantErr: []string{"invalid Calico version", supported}},
		{name: "two parts", in: "v3.28", wantErr: []string{`invalid Calico version "v3.28"`, supported}},
		{name: "wildcard patch", in: "v3.28.x", wantErr: []string{"invalid Calico version", supported}},
		{name: "word", in: "latest", wantErr: []string{"invalid Calico version", supported}},
		{name: "double v", in: "vv3.28.1", wantErr: []string{"invalid Calico version", supported}},
		{name: "bad suffix", in: "v3.28.1+build", wantErr: []string{"invalid Calico version", supported}},
		{name: "minor 23 too old", in: "v3.23.5", wantErr: []string{"unsupported Calico version v3.23.5", supported, "--image"}},
		{name: "minor 34 too new", in: "v3.34.0", wantErr: []string{"unsupported Calico version v3.34.0", supported, "--image"}},
		{name: "major 2", in: "v2.28.0", wantErr: []string{"unsupported Calico version", supported}},
		{name: "major 4", in: "v4.28.0", wantErr: []string{"unsupported Calico version", supported}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := ParseVersion(tt.in)
			if err == nil {
				t.Fatalf("ParseVersion(%q) = %v, want an error", tt.in, got)
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("ParseVersion(%q) error = %q, want it to contain %q", tt.in, err, want)
				}
			}
		})
	}
}

func TestSupportedVersions(t *testing.T) {
	t.Parallel()
	if got, want := SupportedVersions(), "v3.24.x to v3.33.x"; got != want {
		t.Errorf("SupportedVersions() = %q, want %q", got, want)
	}
}

func TestParseVariant(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		in      string
		want    Variant
		wantErr bool
	}{
		{name: "manifest", in: "manifest", want: VariantManifest},
		{name: "operator", in: "operator", want: VariantOperator},
		{name: "case and space insensitive", in: " Operator\n", want: VariantOperator},
		{name: "empty defaults to manifest", in: "", want: VariantManifest},
		{name: "unknown", in: "helm", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := ParseVariant(tt.in)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ParseVariant(%q) = %q, want an error", tt.in, got)
				}
				for _, want := range []string{tt.in, "manifest", "operator"} {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("ParseVariant(%q) error = %q, want it to contain %q", tt.in, err, want)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseVariant(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Errorf("ParseVariant(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestDefaultRegistry(t *testing.T) {
	t.Parallel()
	tests := []struct {
		version string
		variant Variant
		want    string
	}{
		{"v3.24.0", VariantManifest, "docker.io"},
		{"v3.29.0", VariantManifest, "docker.io"},
		{"v3.30.0", VariantManifest, "docker.io"},
		{"v3.31.0", VariantManifest, "quay.io"},
		{"v3.33.0", VariantManifest, "quay.io"},
		{"v3.24.0", VariantOperator, "docker.io"},
		{"v3.29.0", VariantOperator, "docker.io"},
		{"v3.30.0", VariantOperator, "quay.io"},
		{"v3.33.0", VariantOperator, "quay.io"},
	}
	for _, tt := range tests {
		t.Run(tt.version+" "+string(tt.variant), func(t *testing.T) {
			t.Parallel()
			v, err := ParseVersion(tt.version)
			if err != nil {
				t.Fatal(err)
			}
			if got := DefaultRegistry(v, tt.variant); got != tt.want {
				t.Errorf("DefaultRegistry(%s, %s) = %q, want %q", tt.version, tt.variant, got, tt.want)
			}
		})
	}
}

// catalogImage is the part of a catalog Image the catalog table checks.
type catalogImage struct {
	Ref       string
	Component string
	Optional  bool
}

func TestCatalog(t *testing.T) {
	t.Parallel()
	// img builds the expected entry registry/calico/component:version; a trailing "?" on
	// the component marks it optional.
	img := func(registry, component, version string) catalogImage {
		c, optional := strings.CutSuffix(component, "?")
		return catalogImage{Ref: registry + "/calico/" + c + ":" + version, Component: c, Optional: optional}
	}
	imgs := func(registry, version string, components ...string) []catalogImage {
		out := make([]catalogImage, len(components))
		for i, c := range components {
			out[i] = img(registry, c, version)
		}
		return out
	}
	tests := []struct {
		version string
		variant Variant
		want    []catalogImage
	}{
		{"v3.24.6", VariantManifest, imgs("docker.io", "v3.24.6", "node", "cni", "kube-controllers", "typha")},
		{"v3.24.6", VariantOperator, imgs("docker.io", "v3.24.6",
			"node", "cni", "kube-controllers", "typha", "pod2daemon-flexvol", "csi", "node-driver-registrar", "apiserver?")},
		{"v3.27.4", VariantManifest, imgs("docker.io", "v3.27.4", "node", "cni", "kube-controllers", "typha")},
		{"v3.27.4", VariantOperator, imgs("docker.io", "v3.27.4",
			"node", "cni", "kube-controllers", "typha", "pod2daemon-flexvol", "csi", "node-driver-registrar", "apiserver?")},
		{"v3.28.1", VariantManifest, imgs("docker.io", "v3.28.1", "node", "cni", "kube-controllers", "typha")},
		{"v3.28.1", VariantOperator, imgs("docker.io", "v3.28.1",
			"node", "cni", "kube-controllers", "typha", "pod2daemon-flexvol", "csi", "node-driver-registrar", "key-cert-provisioner", "apiserver?")},
		{"v3.29.3", VariantManifest, imgs("docker.io", "v3.29.3", "node", "cni", "kube-controllers", "typha")},
		{"v3.29.3", VariantOperator, imgs("docker.io", "v3.29.3",
			"node", "cni", "kube-controllers", "typha", "pod2daemon-flexvol", "csi", "node-driver-registrar", "key-cert-provisioner", "apiserver?")},
		{"v3.30.2", VariantManifest, imgs("docker.io", "v3.30.2", "node", "cni", "kube-controllers", "typha")},
		{"v3.30.2", VariantOperator, imgs("quay.io", "v3.30.2",
			"node", "cni", "kube-controllers", "typha", "pod2daemon-flexvol", "csi", "node-driver-registrar", "key-cert-provisioner",
			"apiserver?", "goldmane?", "whisker?", "whisker-backend?")},
		{"v3.31.0", VariantManifest, imgs("quay.io", "v3.31.0", "node", "cni", "kube-controllers", "typha")},
		{"v3.31.0", VariantOperator, imgs("quay.io", "v3.31.0",
			"node", "cni", "kube-controllers", "typha", "pod2daemon-flexvol", "csi", "node-driver-registrar", "key-cert-provisioner",
			"apiserver?", "goldmane?", "whisker?", "whisker-backend?")},
		{"v3.32.1", VariantManifest, imgs("quay.io", "v3.32.1", "node", "cni", "kube-controllers", "typha")},
		{"v3.32.1", VariantOperator, imgs("quay.io", "v3.32.1",
			"node", "cni", "kube-controllers", "typha", "pod2daemon-flexvol", "csi", "node-driver-registrar", "key-cert-provisioner",
			"apiserver?", "goldmane?", "whisker?", "whisker-backend?")},
		{"v3.33.0", VariantManifest, imgs("quay.io", "v3.33.0", "node", "calico")},
		{"v3.33.0", VariantOperator, imgs("quay.io", "v3.33.0", "node", "calico", "whisker?")},
		{"v3.33.0-0.dev", VariantOperator, imgs("quay.io", "v3.33.0-0.dev", "node", "calico", "whisker?")},
	}
	for _, tt := range tests {
		t.Run(tt.version+" "+string(tt.variant), func(t *testing.T) {
			t.Parallel()
			set, err := Build(Options{Version: tt.version, Variant: tt.variant})
			if err != nil {
				t.Fatalf("Build: %v", err)
			}
			got := make([]catalogImage, len(set))
			wantSource := "catalog " + tt.version + " (" + string(tt.variant) + ")"
			for i, img := range set {
				got[i] = catalogImage{Ref: img.Ref.String(), Component: img.Component, Optional: img.Optional}
				if img.Role == "" {
					t.Errorf("%s has no role", img.Ref)
				}
				if img.Source != wantSource {
					t.Errorf("%s: Source = %q, want %q", img.Ref, img.Source, wantSource)
				}
				if img.Ref.Digest != "" || img.DigestSource != "" {
					t.Errorf("%s: catalog image has a digest (%q from %q)", img.Ref, img.Ref.Digest, img.DigestSource)
				}
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("catalog %s %s:\n got %v\nwant %v", tt.version, tt.variant, got, tt.want)
			}
		})
	}
}

func TestCatalogDefaultVariantIsManifest(t *testing.T) {
	t.Parallel()
	def, err := Build(Options{Version: "v3.28.1"})
	if err != nil {
		t.Fatal(err)
	}
	man, err := Build(Options{Version: "v3.28.1", Variant: VariantManifest})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(def, man) {
		t.Errorf("Build without a variant:\n got %v\nwant the manifest set %v", Names(def), Names(man))
	}
}

func TestDescribe(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, ref, prefix, component string
		optional, ok                 bool
	}{
		{name: "manifest node", ref: "docker.io/calico/node:v3.30.2", component: "node", ok: true},
		{name: "digest only", ref: "quay.io/calico/csi@sha256:" + strings.Repeat("a", 64), component: "csi", ok: true},
		{name: "operator prefix", ref: "registry.local:5000/mirror/my-typha:v3.30.2", prefix: "my-", component: "typha", ok: true},
		{name: "optional whisker", ref: "quay.io/calico/whisker:v3.30.2", component: "whisker", optional: true, ok: true},
		{name: "one image from v3.33", ref: "quay.io/calico/calico:v3.33.0", component: "calico", ok: true},
		{name: "not Calico's", ref: "registry.k8s.io/pause:3.10"},
		{name: "prefix not given", ref: "quay.io/calico/my-typha:v3.30.2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			img, ok := Describe(Image{Ref: MustParseRef(tt.ref), Source: "spec"}, tt.prefix)
			if ok != tt.ok || img.Component != tt.component || img.Optional != tt.optional || ok && img.Role == "" {
				t.Errorf("Describe(%s) = %+v, %t; want component %q optional %t, %t", tt.ref, img, ok, tt.component, tt.optional, tt.ok)
			}
			if img.Source != "spec" || img.Ref.String() != MustParseRef(tt.ref).String() {
				t.Errorf("Describe changed the reference or source: %+v", img)
			}
		})
	}
}

func TestComponentIn(t *testing.T) {
	t.Parallel()
	tests := []struct {
		component, version string
		variant            Variant
		want               string
		ok                 bool
	}{
		{"cni", "v3.31.0", VariantManifest, "cni", true},
		{"typha", "v3.32.1", VariantOperator, "typha", true},
		{"cni", "v3.33.0", VariantManifest, "calico", true},
		{"kube-controllers", "v3.33.0", VariantOperator, "calico", true},
		{"node", "v3.33.0", VariantManifest, "node", true},
		{"whisker", "v3.33.0", VariantOperator, "whisker", true},
		{"csi", "v3.31.0", VariantManifest, "", false},
		{"goldmane", "v3.29.0", VariantOperator, "", false},
		{"unknown", "v3.30.0", VariantOperator, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.component+"@"+tt.version+"/"+string(tt.variant), func(t *testing.T) {
			t.Parallel()
			got, ok := ComponentIn(tt.component, mustVersion(t, tt.version), tt.variant)
			if got != tt.want || ok != tt.ok {
				t.Errorf("ComponentIn(%s, %s, %s) = %q, %t; want %q, %t", tt.component, tt.version, tt.variant, got, ok, tt.want, tt.ok)
			}
		})
	}
}

func mustVersion(t *testing.T, s string) Version {
	t.Helper()
	v, err := ParseVersion(s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestCompareVersions(t *testing.T) {
	t.Parallel()
	tests := []struct {
		a, b string
		want int
		ok   bool
	}{
		{"v3.30.2", "v3.31.0", -1, true},
		{"v3.31.0", "v3.30.2", 1, true},
		{"v3.30.10", "v3.30.9", 1, true},
		{"3.30.2", "v3.30.2", 0, true},
		{"v3.33.0-0.dev", "v3.33.0", -1, true},
		{"v3.33.0", "v3.33.0-0.dev", 1, true},
		{"v3.33.0-rc1", "v3.33.0-rc2", -1, true},
		{"v3.40.0", "v3.23.0", 1, true}, // outside the catalog: still ordered
		{"latest", "v3.30.2", 0, false},
		{"v3.30.2", "", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.a+" vs "+tt.b, func(t *testing.T) {
			t.Parallel()
			got, ok := CompareVersions(tt.a, tt.b)
			if got != tt.want || ok != tt.ok {
				t.Errorf("CompareVersions(%q, %q) = %d, %t; want %d, %t", tt.a, tt.b, got, ok, tt.want, tt.ok)
			}
		})
	}
}
