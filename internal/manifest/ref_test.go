package manifest

import (
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
)

// testDigest is a well-formed digest for references in tests.
var testDigest = digest.FromString("precache test image")

func TestParseRef(t *testing.T) {
	t.Parallel()
	d := testDigest
	tests := []struct {
		name string
		in   string
		want Ref
	}{
		{name: "official image gets docker.io/library and latest", in: "busybox", want: Ref{Name: "docker.io/library/busybox", Tag: "latest"}},
		{name: "official image with tag", in: "busybox:1.36", want: Ref{Name: "docker.io/library/busybox", Tag: "1.36"}},
		{name: "docker hub user image", in: "calico/node:v3.28.1", want: Ref{Name: "docker.io/calico/node", Tag: "v3.28.1"}},
		{name: "implicit latest", in: "calico/node", want: Ref{Name: "docker.io/calico/node", Tag: "latest"}},
		{name: "already normalised", in: "docker.io/calico/node:v3.28.1", want: Ref{Name: "docker.io/calico/node", Tag: "v3.28.1"}},
		{name: "explicit docker.io library", in: "docker.io/library/busybox:1.36", want: Ref{Name: "docker.io/library/busybox", Tag: "1.36"}},
		{name: "surrounding space trimmed", in: "  calico/node:v3.28.1\t", want: Ref{Name: "docker.io/calico/node", Tag: "v3.28.1"}},
		{name: "name tag and digest", in: "calico/node:v3.28.1@" + d.String(), want: Ref{Name: "docker.io/calico/node", Tag: "v3.28.1", Digest: d}},
		{name: "digest only keeps no tag", in: "calico/node@" + d.String(), want: Ref{Name: "docker.io/calico/node", Digest: d}},
		{name: "quay.io", in: "quay.io/calico/node:v3.31.0", want: Ref{Name: "quay.io/calico/node", Tag: "v3.31.0"}},
		{name: "quay.io implicit latest", in: "quay.io/calico/node", want: Ref{Name: "quay.io/calico/node", Tag: "latest"}},
		{name: "registry with port", in: "registry.local:5000/mirror/calico/node:v3.28.1", want: Ref{Name: "registry.local:5000/mirror/calico/node", Tag: "v3.28.1"}},
		{name: "localhost with port", in: "localhost:5000/node", want: Ref{Name: "localhost:5000/node", Tag: "latest"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := ParseRef(tt.in)
			if err != nil {
				t.Fatalf("ParseRef(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Errorf("ParseRef(%q) = %#v, want %#v", tt.in, got, tt.want)
			}
			// Normalisation is idempotent.
			again, err := ParseRef(got.String())
			if err != nil {
				t.Fatalf("ParseRef(%q) of the canonical form: %v", got.String(), err)
			}
			if again != got {
				t.Errorf("ParseRef(%q) = %#v, want %#v (not idempotent)", got.String(), again, got)
			}
		})
	}
}

func TestParseRefInvalid(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		in      string
		wantErr string
	}{
		{name: "empty", in: "", wantErr: "empty image reference"},
		{name: "blank", in: "  \t", wantErr: "empty image reference"},
		{name: "empty tag", in: "calico/node:", wantErr: `invalid image reference "calico/node:"`},
		{name: "short digest", in: "calico/node@sha256:abc", wantErr: `invalid image reference "calico/node@sha256:abc"`},
		{name: "space in tag", in: "calico/node:bad tag", wantErr: "invalid image reference"},
		{name: "uppercase repository", in: "calico/Node:v1", wantErr: "invalid image reference"},
		{name: "leading dash", in: "-bad/node", wantErr: "invalid image reference"},
		{name: "space in registry", in: "bad registry/calico/node:v1", wantErr: "invalid image reference"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := ParseRef(tt.in)
			if err == nil {
				t.Fatalf("ParseRef(%q) = %#v, want an error", tt.in, got)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseRef(%q) error = %q, want it to contain %q", tt.in, err, tt.wantErr)
			}
		})
	}
}

func TestMustParseRefPanics(t *testing.T) {
	t.Parallel()
	defer func() {
		if recover() == nil {
			t.Error("MustParseRef(invalid) did not panic")
		}
	}()
	MustParseRef("calico/node:")
}

func TestRefAccessors(t *testing.T) {
	t.Parallel()
	d := testDigest
	type accessors struct {
		String, TagName, DigestName, Domain, Path, Base, Display, Familiar string
	}
	other := digest.FromString("other")
	tests := []struct {
		name string
		in   string
		want accessors
	}{
		{
			name: "docker hub tag",
			in:   "calico/node:v3.28.1",
			want: accessors{
				String:     "docker.io/calico/node:v3.28.1",
				TagName:    "docker.io/calico/node:v3.28.1",
				DigestName: "docker.io/calico/node@" + other.String(),
				Domain:     "docker.io",
				Path:       "calico/node",
				Base:       "node",
				Display:    "docker.io/calico/node:v3.28.1",
				Familiar:   "calico/node:v3.28.1",
			},
		},
		{
			name: "docker hub library",
			in:   "busybox",
			want: accessors{
				String:     "docker.io/library/busybox:latest",
				TagName:    "docker.io/library/busybox:latest",
				DigestName: "docker.io/library/busybox@" + other.String(),
				Domain:     "docker.io",
				Path:       "library/busybox",
				Base:       "busybox",
				Display:    "docker.io/library/busybox:latest",
				Familiar:   "busybox:latest",
			},
		},
		{
			name: "tag and digest",
			in:   "quay.io/calico/node:v3.31.0@" + d.String(),
			want: accessors{
				String:     "quay.io/calico/node:v3.31.0@" + d.String(),
				TagName:    "quay.io/calico/node:v3.31.0",
				DigestName: "quay.io/calico/node@" + other.String(),
				Domain:     "quay.io",
				Path:       "calico/node",
				Base:       "node",
				Display:    "quay.io/calico/node:v3.31.0",
				Familiar:   "quay.io/calico/node:v3.31.0@" + d.String(),
			},
		},
		{
			name: "digest only",
			in:   "calico/cni@" + d.String(),
			want: accessors{
				String:     "docker.io/calico/cni@" + d.String(),
				TagName:    "",
				DigestName: "docker.io/calico/cni@" + other.String(),
				Domain:     "docker.io",
				Path:       "calico/cni",
				Base:       "cni",
				Display:    "docker.io/calico/cni@" + d.String(),
				Familiar:   "calico/cni@" + d.String(),
			},
		},
		{
			name: "registry with port and nested path",
			in:   "registry.local:5000/mirror/calico/calico-node:v3.28.1",
			want: accessors{
				String:     "registry.local:5000/mirror/calico/calico-node:v3.28.1",
				TagName:    "registry.local:5000/mirror/calico/calico-node:v3.28.1",
				DigestName: "registry.local:5000/mirror/calico/calico-node@" + other.String(),
				Domain:     "registry.local:5000",
				Path:       "mirror/calico/calico-node",
				Base:       "calico-node",
				Display:    "registry.local:5000/mirror/calico/calico-node:v3.28.1",
				Familiar:   "registry.local:5000/mirror/calico/calico-node:v3.28.1",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := MustParseRef(tt.in)
			got := accessors{
				String:     r.String(),
				TagName:    r.TagName(),
				DigestName: r.DigestName(other),
				Domain:     r.Domain(),
				Path:       r.Path(),
				Base:       r.Base(),
				Display:    r.Display(),
				Familiar:   r.Familiar(),
			}
			if got != tt.want {
				t.Errorf("accessors of %q:\n got %+v\nwant %+v", tt.in, got, tt.want)
			}
		})
	}
}
