package bundle

import (
	"bytes"
	"encoding/json"
	"testing"

	digest "github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/precache/precache/test/testenv"
)

// TestReadOtherShapes: OCI layouts as other writers produce them — sha512 content
// addresses (blobs/sha512/…, valid in the image spec), and manifests and indexes that
// start with whitespace (JSON allows it; indenting writers emit it). Both used to be
// rejected as corrupted.
func TestReadOtherShapes(t *testing.T) {
	t.Parallel()
	layer := tarOf(t, []testenv.Entry{{Name: "etc/hello", Data: []byte("hello\n")}}, "")
	config := mustJSON(t, ocispec.Image{
		Platform: ocispec.Platform{OS: "linux", Architecture: "amd64"},
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{digest.FromBytes(layer)}},
	})
	tests := []struct {
		name   string
		alg    digest.Algorithm
		indent string
	}{
		{"sha512 blobs", digest.SHA512, ""},
		{"manifest and index start with whitespace", digest.SHA256, "\n  "},
		{"both", digest.SHA512, "\n\t"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			desc := func(mt string, data []byte) ocispec.Descriptor {
				return ocispec.Descriptor{MediaType: mt, Digest: tt.alg.FromBytes(data), Size: int64(len(data))}
			}
			cfgDesc, layerDesc := desc(ocispec.MediaTypeImageConfig, config), desc(ocispec.MediaTypeImageLayer, layer)
			mf := append([]byte(tt.indent), mustJSON(t, ocispec.Manifest{
				Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest, Config: cfgDesc, Layers: []ocispec.Descriptor{layerDesc},
			})...)
			mfDesc := desc(ocispec.MediaTypeImageManifest, mf)
			mfDesc.Annotations = map[string]string{"io.containerd.image.name": "docker.io/example/shapes:v1"}
			mfDesc.Platform = &ocispec.Platform{OS: "linux", Architecture: "amd64"}
			index := append([]byte(tt.indent), mustJSON(t, ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{mfDesc}})...)
			blob := func(d ocispec.Descriptor, data []byte) testenv.Entry {
				return testenv.Entry{Name: "blobs/" + d.Digest.Algorithm().String() + "/" + d.Digest.Encoded(), Data: data}
			}
			entries := []testenv.Entry{
				{Name: "oci-layout", Data: []byte(`{"imageLayoutVersion":"1.0.0"}`)},
				{Name: "index.json", Data: index},
				blob(mfDesc, mf), blob(cfgDesc, config), blob(layerDesc, layer),
			}
			sink := newMemSink()
			res, err := Read(t.Context(), bytes.NewReader(tarOf(t, entries, "")), sink, Options{})
			if err != nil {
				t.Fatalf("Read: %v", err)
			}
			if len(res.Images) != 1 || res.Images[0].Name != "docker.io/example/shapes:v1" || res.Images[0].Target.Digest != mfDesc.Digest {
				t.Fatalf("Images = %+v, want docker.io/example/shapes:v1 → %s", res.Images, mfDesc.Digest)
			}
			for _, d := range []digest.Digest{mfDesc.Digest, cfgDesc.Digest, layerDesc.Digest} {
				if _, ok := sink.get(d); !ok {
					t.Errorf("blob %s not stored", d)
				}
			}
		})
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return data
}
