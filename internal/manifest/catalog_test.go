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
