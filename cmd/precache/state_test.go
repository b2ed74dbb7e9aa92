package main

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	digest "github.com/opencontainers/go-digest"

	"github.com/precache/precache/internal/cache"
	"github.com/precache/precache/internal/manifest"
)

func TestWriteState(t *testing.T) {
	t.Parallel()
	d1, d2 := digest.FromString("node"), digest.FromString("cni")
	right := []cache.Result{
		{Image: manifest.Image{Ref: manifest.MustParseRef("docker.io/calico/node:v3.28.1")}, Digest: d1},
		{Image: manifest.Image{Ref: manifest.MustParseRef("docker.io/calico/cni:v3.28.1")}, Digest: d2},
	}
	wantImages := []string{"docker.io/calico/node:v3.28.1@" + d1.String(), "docker.io/calico/cni:v3.28.1@" + d2.String()}
	failed := []cache.Result{right[0], {Image: right[1].Image, Err: errors.New("registry unavailable")}}

	tests := []struct {
		name     string
		previous bool // a state file from an earlier success exists
		results  []cache.Result
		wantErr  bool
		want     []string // the images the file holds afterwards; nil: no file
	}{
		{name: "first success", results: right, want: wantImages},
		{name: "replaces the previous set", previous: true, results: right, want: wantImages},
		{name: "a failed set is not recorded", results: failed, wantErr: true},
		{name: "a failed set leaves the previous one", previous: true, results: failed, wantErr: true, want: []string{"docker.io/calico/node:v3.27.0"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := filepath.Join(t.TempDir(), "var", "lib", "precache") // created by the writer
			path := filepath.Join(dir, "state.json")
			if tt.previous {
				old := []cache.Result{{Image: manifest.Image{Ref: manifest.MustParseRef("docker.io/calico/node:v3.27.0")}}}
				if err := writeState(path, "earlier", old); err != nil {
					t.Fatal(err)
				}
			}
			err := writeState(path, "test", tt.results)
			if (err != nil) != tt.wantErr {
				t.Fatalf("writeState: err = %v, want error %t", err, tt.wantErr)
			}
			entries, rerr := os.ReadDir(dir)
			if rerr != nil && !os.IsNotExist(rerr) {
				t.Fatal(rerr)
			}
			for _, e := range entries {
				if e.Name() != "state.json" {
					t.Errorf("left behind in %s: %s", dir, e.Name())
				}
			}
			st, images, err := readState(path)
			if tt.want == nil {
				if !os.IsNotExist(err) {
					t.Fatalf("state file written for a set that is not right: %v %v", st, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(images) != len(tt.want) {
				t.Fatalf("images = %v, want %v", st.Images, tt.want)
			}
			for i, img := range images {
				if img.Ref.String() != tt.want[i] {
					t.Errorf("image %d = %s, want %s", i, img.Ref, tt.want[i])
				}
			}
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o644 {
				t.Errorf("mode %v, want 0644", fi.Mode().Perm())
			}
		})
	}
}
