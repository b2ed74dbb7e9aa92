package bundle

import (
	"bytes"
	"errors"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/precache/precache/test/testenv"
)

// FuzzRead feeds arbitrary bytes to Read: it must never panic, and must either succeed
// with at least one image or fail with an error wrapping ErrInvalid.
func FuzzRead(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		res, err := Read(t.Context(), bytes.NewReader(data), newMemSink(), Options{BaseName: "example.com/fuzz"})
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Read error %q does not wrap ErrInvalid", err)
			}
			return
		}
		if len(res.Images) == 0 && !res.Skipped {
			t.Fatal("Read succeeded with no images")
		}
	})
}

// addSeeds adds small valid bundles in each format and compression, and a few bad ones.
func addSeeds(f *testing.F) {
	idx, err := testenv.Index(testenv.ImageSpec{Platforms: []string{"linux/amd64"}, Layers: 1, LayerSize: 512, Seed: 7})
	if err != nil {
		f.Fatalf("building the seed image: %v", err)
	}
	layout, err := testenv.OCILayout(map[string]v1.ImageIndex{"example.com/fuzz:v1": idx}, "example.com/fuzz:v1")
	if err != nil {
		f.Fatalf("laying out the seed image: %v", err)
	}
	img, err := testenv.PlatformImage(idx, "linux/amd64")
	if err != nil {
		f.Fatal(err)
	}
	legacy, err := testenv.LegacyDockerSave("example.com/fuzz:v1", img)
	if err != nil {
		f.Fatal(err)
	}
	for _, es := range [][]testenv.Entry{layout, legacy} {
		for _, c := range []string{"", "gzip", "zstd"} {
			f.Add(tarOf(f, es, c))
		}
	}
	plain := tarOf(f, layout, "")
	f.Add(plain[:len(plain)/2])
	f.Add([]byte{})
	f.Add([]byte("not a tar"))
	f.Add([]byte{0x1f, 0x8b, 0x08, 0x00})
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd, 0x00})
	f.Add(tarOf(f, []testenv.Entry{{Name: "../index.json", Data: []byte("{}")}}, ""))
	f.Add(tarOf(f, []testenv.Entry{{Name: "index.json", Data: []byte(`{"manifests":[{"digest":"sha256:00"}]}`)}}, ""))
}
