package manifest

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// entry is the part of an Image the Build tests check.
type entry struct {
	Ref, Component, Source string
}

func entries(set []Image) []entry {
	out := make([]entry, len(set))
	for i, img := range set {
		out[i] = entry{Ref: img.Ref.String(), Component: img.Component, Source: img.Source}
	}
	return out
}

// writeFile writes content to a file in a fresh temporary directory and returns its path.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestBuild(t *testing.T) {
	t.Parallel()
	const (
		v       = "v3.28.1"
		catalog = "catalog v3.28.1 (manifest)"
	)
	d := testDigest.String()
	tests := []struct {
		name string
		opts Options
		// file, if set, is written to a temporary file and passed as ImagesFile; its
		// entries' Source is then the file's path, written "FILE" in want.
		file string
		want []entry
	}{
		{
			name: "registry with port and path",
			opts: Options{Version: v, Registry: "registry.local:5000/mirror/"},
			want: []entry{
				{"registry.local:5000/mirror/calico/node:v3.28.1", "node", catalog},
				{"registry.local:5000/mirror/calico/cni:v3.28.1", "cni", catalog},
				{"registry.local:5000/mirror/calico/kube-controllers:v3.28.1", "kube-controllers", catalog},
				{"registry.local:5000/mirror/calico/typha:v3.28.1", "typha", catalog},
			},
		},
		{
			name: "image path",
			opts: Options{Version: v, ImagePath: "/tigera/"},
			want: []entry{
				{"docker.io/tigera/node:v3.28.1", "node", catalog},
				{"docker.io/tigera/cni:v3.28.1", "cni", catalog},
				{"docker.io/tigera/kube-controllers:v3.28.1", "kube-controllers", catalog},
				{"docker.io/tigera/typha:v3.28.1", "typha", catalog},
			},
		},
		{
			name: "image prefix",
			opts: Options{Version: v, ImagePrefix: "calico-"},
			want: []entry{
				{"docker.io/calico/calico-node:v3.28.1", "node", catalog},
				{"docker.io/calico/calico-cni:v3.28.1", "cni", catalog},
				{"docker.io/calico/calico-kube-controllers:v3.28.1", "kube-controllers", catalog},
				{"docker.io/calico/calico-typha:v3.28.1", "typha", catalog},
			},
		},
		{
			name: "registry path and prefix together",
			opts: Options{Version: "v3.33.0", Registry: "mirror.example.com", ImagePath: "ext/calico", ImagePrefix: "x-"},
			want: []entry{
				{"mirror.example.com/ext/calico/x-node:v3.33.0", "node", "catalog v3.33.0 (manifest)"},
				{"mirror.example.com/ext/calico/x-calico:v3.33.0", "calico", "catalog v3.33.0 (manifest)"},
			},
		},
		{
			name: "image replaces the catalog image of the same base name",
			opts: Options{Version: v, Images: []string{"registry.local/patched/node:v3.28.1-fix"}},
			want: []entry{
				{"registry.local/patched/node:v3.28.1-fix", "node", "--image"},
				{"docker.io/calico/cni:v3.28.1", "cni", catalog},
				{"docker.io/calico/kube-controllers:v3.28.1", "kube-controllers", catalog},
				{"docker.io/calico/typha:v3.28.1", "typha", catalog},
			},
		},
		{
			name: "image with the prefix replaces the prefixed catalog image",
			opts: Options{Version: v, ImagePrefix: "calico-", Images: []string{"registry.local/patched/calico-cni:fix"}},
			want: []entry{
				{"docker.io/calico/calico-node:v3.28.1", "node", catalog},
				{"registry.local/patched/calico-cni:fix", "cni", "--image"},
				{"docker.io/calico/calico-kube-controllers:v3.28.1", "kube-controllers", catalog},
				{"docker.io/calico/calico-typha:v3.28.1", "typha", catalog},
			},
		},
		{
			name: "image without the prefix still replaces the prefixed catalog image",
			opts: Options{Version: v, ImagePrefix: "calico-", Images: []string{"registry.local/patched/typha:fix"}},
			want: []entry{
				{"docker.io/calico/calico-node:v3.28.1", "node", catalog},
				{"docker.io/calico/calico-cni:v3.28.1", "cni", catalog},
				{"docker.io/calico/calico-kube-controllers:v3.28.1", "kube-controllers", catalog},
				{"registry.local/patched/typha:fix", "typha", "--image"},
			},
		},
		{
			name: "image pins a catalog image by digest",
			opts: Options{Version: v, Images: []string{"calico/node:v3.28.1@" + d}},
			want: []entry{
				{"docker.io/calico/node:v3.28.1@" + d, "node", "--image"},
				{"docker.io/calico/cni:v3.28.1", "cni", catalog},
				{"docker.io/calico/kube-controllers:v3.28.1", "kube-controllers", catalog},
				{"docker.io/calico/typha:v3.28.1", "typha", catalog},
			},
		},
		{
			name: "unknown image is added at the end",
			opts: Options{Version: v, Images: []string{"busybox:1.36", "quay.io/tigera/operator:v1.34.0"}},
			want: []entry{
				{"docker.io/calico/node:v3.28.1", "node", catalog},
				{"docker.io/calico/cni:v3.28.1", "cni", catalog},
				{"docker.io/calico/kube-controllers:v3.28.1", "kube-controllers", catalog},
				{"docker.io/calico/typha:v3.28.1", "typha", catalog},
				{"docker.io/library/busybox:1.36", "", "--image"},
				{"quay.io/tigera/operator:v1.34.0", "", "--image"},
			},
		},
		{
			name: "image equal to a catalog image is not repeated",
			opts: Options{Version: v, Images: []string{"calico/cni:v3.28.1"}},
			want: []entry{
				{"docker.io/calico/node:v3.28.1", "node", catalog},
				{"docker.io/calico/cni:v3.28.1", "cni", catalog},
				{"docker.io/calico/kube-controllers:v3.28.1", "kube-controllers", catalog},
				{"docker.io/calico/typha:v3.28.1", "typha", catalog},
			},
		},
		{
			name: "duplicate images are not repeated",
			opts: Options{Images: []string{"busybox", "docker.io/library/busybox:latest", "busybox:latest"}},
			want: []entry{{"docker.io/library/busybox:latest", "", "--image"}},
		},
		{
			name: "digest-only image after its tagged form is added",
			opts: Options{Images: []string{"busybox:1.36", "busybox@" + d}},
			want: []entry{
				{"docker.io/library/busybox:1.36", "", "--image"},
				{"docker.io/library/busybox@" + d, "", "--image"},
			},
		},
		{
			name: "second image of a base name does not replace the first",
			opts: Options{Version: v, Images: []string{"registry.local/a/node:v1", "registry.local/b/node:v2"}},
			want: []entry{
				{"registry.local/a/node:v1", "node", "--image"},
				{"docker.io/calico/cni:v3.28.1", "cni", catalog},
				{"docker.io/calico/kube-controllers:v3.28.1", "kube-controllers", catalog},
				{"docker.io/calico/typha:v3.28.1", "typha", catalog},
				{"registry.local/b/node:v2", "", "--image"},
			},
		},
		{
			name: "images file with comments and blank lines",
			file: "# Calico extras\n\nbusybox:1.36   # for debugging\n   \n\tquay.io/tigera/operator:v1.34.0\n# the end\n",
			want: []entry{
				{"docker.io/library/busybox:1.36", "", "FILE"},
				{"quay.io/tigera/operator:v1.34.0", "", "FILE"},
			},
		},
		{
			name: "images file replaces catalog images and follows --image",
			opts: Options{Version: v, Images: []string{"busybox:1.36"}},
			file: "registry.local/patched/cni:fix\nbusybox:1.36\n",
			want: []entry{
				{"docker.io/calico/node:v3.28.1", "node", catalog},
				{"registry.local/patched/cni:fix", "cni", "FILE"},
				{"docker.io/calico/kube-controllers:v3.28.1", "kube-controllers", catalog},
				{"docker.io/calico/typha:v3.28.1", "typha", catalog},
				{"docker.io/library/busybox:1.36", "", "--image"},
			},
		},
		{
			// A user-listed image must never silently drop another user-listed image:
			// only catalog images are replaced, whichever way the user listed them.
			name: "second images file entry of a base name does not replace the first",
			opts: Options{Version: v},
			file: "registry.local/a/node:v1\nregistry.local/b/node:v2\n",
			want: []entry{
				{"registry.local/a/node:v1", "node", "FILE"},
				{"docker.io/calico/cni:v3.28.1", "cni", catalog},
				{"docker.io/calico/kube-controllers:v3.28.1", "kube-controllers", catalog},
				{"docker.io/calico/typha:v3.28.1", "typha", catalog},
				{"registry.local/b/node:v2", "", "FILE"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			opts := tt.opts
			want := tt.want
			if tt.file != "" {
				opts.ImagesFile = writeFile(t, "images.txt", tt.file)
				want = make([]entry, len(tt.want))
				for i, e := range tt.want {
					if e.Source == "FILE" {
						e.Source = opts.ImagesFile
					}
					want[i] = e
				}
			}
			set, err := Build(opts)
			if err != nil {
				t.Fatalf("Build: %v", err)
			}
			if got := entries(set); !reflect.DeepEqual(got, want) {
				t.Errorf("Build(%+v):\n got %v\nwant %v", opts, got, want)
			}
		})
	}
}

func TestBuildReplacementKeepsCatalogMetadata(t *testing.T) {
	t.Parallel()
	set, err := Build(Options{Version: "v3.30.2", Variant: VariantOperator, Images: []string{"registry.local/x/whisker:dev"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, img := range set {
		if img.Component != "whisker" {
			continue
		}
		if img.Ref.String() != "registry.local/x/whisker:dev" || !img.Optional || img.Role == "" || img.Source != "--image" {
			t.Errorf("replaced whisker = %+v, want registry.local/x/whisker:dev, optional, with the catalog's role, from --image", img)
		}
		return
	}
	t.Fatalf("no whisker in %v", Names(set))
}

func TestBuildErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		opts Options
		// file, if set, is written to a temporary file named images.txt and passed as ImagesFile.
		file    string
		wantErr []string
	}{
		{name: "no version and no images", opts: Options{}, wantErr: []string{"no images", "--calico-version", "v3.24.x to v3.33.x"}},
		{name: "empty images file and no version", file: "# nothing\n\n", wantErr: []string{"no images"}},
		{name: "registry without version", opts: Options{Registry: "registry.local", Images: []string{"busybox"}}, wantErr: []string{"--calico-version"}},
		{name: "image path without version", opts: Options{ImagePath: "tigera", Images: []string{"busybox"}}, wantErr: []string{"--calico-version"}},
		{name: "image prefix without version", opts: Options{ImagePrefix: "calico-"}, wantErr: []string{"--calico-version"}},
		{name: "unsupported version", opts: Options{Version: "v3.23.0"}, wantErr: []string{"unsupported Calico version"}},
		{name: "malformed version", opts: Options{Version: "3.28"}, wantErr: []string{"invalid Calico version"}},
		{name: "invalid image", opts: Options{Images: []string{"calico/node:"}}, wantErr: []string{"--image", "calico/node:"}},
		{name: "registry that breaks the references", opts: Options{Version: "v3.28.1", Registry: "bad registry"}, wantErr: []string{"rewriting node", `--registry "bad registry"`}},
		{name: "bad line in images file", file: "# header\nbusybox:1.36\n\ncalico/node:bad tag\n", wantErr: []string{"images.txt:4:", "invalid image reference"}},
		{name: "missing images file", opts: Options{ImagesFile: filepath.Join(os.TempDir(), "precache-does-not-exist", "images.txt")}, wantErr: []string{"--images-file"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			opts := tt.opts
			if tt.file != "" {
				opts.ImagesFile = writeFile(t, "images.txt", tt.file)
			}
			set, err := Build(opts)
			if err == nil {
				t.Fatalf("Build(%+v) = %v, want an error", opts, Names(set))
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("Build(%+v) error = %q, want it to contain %q", opts, err, want)
				}
			}
		})
	}
}

func TestNames(t *testing.T) {
	t.Parallel()
	set := []Image{
		{Ref: MustParseRef("quay.io/calico/node:v3.31.0")},
		{Ref: MustParseRef("busybox")},
		{Ref: MustParseRef("calico/cni@" + testDigest.String())},
	}
	want := []string{
		"docker.io/calico/cni@" + testDigest.String(),
		"docker.io/library/busybox:latest",
		"quay.io/calico/node:v3.31.0",
	}
	if got := Names(set); !reflect.DeepEqual(got, want) {
		t.Errorf("Names = %v, want %v", got, want)
	}
	if got := Names(nil); len(got) != 0 {
		t.Errorf("Names(nil) = %v, want empty", got)
	}
}
