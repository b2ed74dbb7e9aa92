package bundle

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/platforms"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/gzip"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/precache/precache/internal/manifest"
	"github.com/precache/precache/test/testenv"
)

// memSink is an in-memory Sink: blobs by digest. Write verifies the size and the expected
// digest (computing the digest when none is expected), as containerd's content store does.
type memSink struct {
	mu     sync.Mutex
	blobs  map[digest.Digest][]byte
	writes int
}

var _ Sink = (*memSink)(nil)

func newMemSink() *memSink { return &memSink{blobs: map[digest.Digest][]byte{}} }

func (s *memSink) Has(_ context.Context, d digest.Digest, size int64) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	data, ok := s.blobs[d]
	return ok && int64(len(data)) == size, nil
}

func (s *memSink) Write(_ context.Context, r io.Reader, size int64, expected digest.Digest) (digest.Digest, error) {
	alg := digest.Canonical
	if expected != "" {
		if err := expected.Validate(); err != nil {
			return "", fmt.Errorf("expected digest: %w", err)
		}
		alg = expected.Algorithm()
	}
	// Sized up front: growing a buffer to hundreds of MiB is slow under -race. Capped, as
	// the declared size may be hostile.
	buf := bytes.NewBuffer(make([]byte, 0, min(size+1, memSinkPrealloc)))
	// One byte more than declared, to notice a stream longer than its size.
	n, err := io.Copy(buf, io.LimitReader(r, size+1))
	if err != nil {
		return "", fmt.Errorf("reading content: %w", err)
	}
	if n != size {
		return "", fmt.Errorf("%w: content is %d bytes, %d declared", ErrInvalid, n, size)
	}
	got := alg.FromBytes(buf.Bytes())
	if expected != "" && got != expected {
		return "", fmt.Errorf("%w: content digest %s does not match expected %s", ErrInvalid, got, expected)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.blobs[got] = buf.Bytes()
	s.writes++
	return got, nil
}

// memSinkPrealloc bounds the buffer memSink.Write allocates before reading: more than the
// compression bomb test's blob needs.
const memSinkPrealloc = bombFloor + 64<<20

func (s *memSink) put(d digest.Digest, data []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.blobs[d] = data
}

func (s *memSink) get(d digest.Digest) ([]byte, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	data, ok := s.blobs[d]
	return data, ok
}

func (s *memSink) counts() (blobs, writes int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.blobs), s.writes
}

const (
	refNode  = "calico/node:v3.28.1"
	nameNode = "docker.io/calico/node:v3.28.1"
	refCNI   = "quay.io/calico/cni:v3.28.1"
	nameCNI  = "quay.io/calico/cni:v3.28.1"
)

// platformBlobs are the blobs of one platform's image in an index.
type platformBlobs struct {
	manifest, config digest.Digest
	layers           []digest.Digest
}

// fixture holds two generated multi-platform images (linux/amd64 and linux/arm64, two
// layers each) and their layouts. It is built once and must not be mutated: tests copy
// the entries they change.
type fixture struct {
	// both is the OCI layout of both images; node only that of calico/node.
	both, node []testenv.Entry
	// legacy is calico/node's linux/amd64 image as a pre-25 docker save.
	legacy []testenv.Entry
	// legacyConfig and legacyDiffIDs describe that image.
	legacyConfig  digest.Digest
	legacyDiffIDs []digest.Digest
	// blobs holds every blob of both images.
	blobs map[digest.Digest][]byte
	// targets are the index descriptors by normalised name.
	targets map[string]ocispec.Descriptor
	// nodePlatforms are calico/node's per-platform blobs, by "os/arch".
	nodePlatforms map[string]platformBlobs
}

var loadFixture = sync.OnceValues(func() (*fixture, error) {
	indexes := map[string]v1.ImageIndex{}
	f := &fixture{blobs: map[digest.Digest][]byte{}, targets: map[string]ocispec.Descriptor{}, nodePlatforms: map[string]platformBlobs{}}
	for i, ref := range []string{refNode, refCNI} {
		idx, err := testenv.Index(testenv.ImageSpec{LayerSize: 4 << 10, Seed: uint64(i + 1)})
		if err != nil {
			return nil, err
		}
		indexes[ref] = idx
		raw, err := idx.RawManifest()
		if err != nil {
			return nil, err
		}
		name := manifest.MustParseRef(ref).String()
		f.targets[name] = ocispec.Descriptor{MediaType: ocispec.MediaTypeImageIndex, Digest: digest.FromBytes(raw), Size: int64(len(raw))}
	}
	var err error
	if f.both, err = testenv.OCILayout(indexes, refNode, refCNI); err != nil {
		return nil, err
	}
	if f.node, err = testenv.OCILayout(indexes, refNode); err != nil {
		return nil, err
	}
	for _, e := range f.both {
		if d, ok := blobDigest(e.Name); ok {
			f.blobs[d] = e.Data
		}
	}
	im, err := indexes[refNode].IndexManifest()
	if err != nil {
		return nil, err
	}
	for _, desc := range im.Manifests {
		img, err := indexes[refNode].Image(desc.Digest)
		if err != nil {
			return nil, err
		}
		m, err := img.Manifest()
		if err != nil {
			return nil, err
		}
		pb := platformBlobs{manifest: digest.Digest(desc.Digest.String()), config: digest.Digest(m.Config.Digest.String())}
		for _, l := range m.Layers {
			pb.layers = append(pb.layers, digest.Digest(l.Digest.String()))
		}
		f.nodePlatforms[desc.Platform.OS+"/"+desc.Platform.Architecture] = pb
	}
	amd64, err := testenv.PlatformImage(indexes[refNode], "linux/amd64")
	if err != nil {
		return nil, err
	}
	if f.legacy, err = testenv.LegacyDockerSave(refNode, amd64); err != nil {
		return nil, err
	}
	cn, err := amd64.ConfigName()
	if err != nil {
		return nil, err
	}
	f.legacyConfig = digest.Digest(cn.String())
	cf, err := amd64.ConfigFile()
	if err != nil {
		return nil, err
	}
	for _, d := range cf.RootFS.DiffIDs {
		f.legacyDiffIDs = append(f.legacyDiffIDs, digest.Digest(d.String()))
	}
	return f, nil
})

func getFixture(t *testing.T) *fixture {
	t.Helper()
	f, err := loadFixture()
	if err != nil {
		t.Fatalf("building test images: %v", err)
	}
	return f
}

// copyEntries deep-copies entries so a test can change them.
func copyEntries(in []testenv.Entry) []testenv.Entry {
	out := make([]testenv.Entry, len(in))
	for i, e := range in {
		e.Data = bytes.Clone(e.Data)
		out[i] = e
	}
	return out
}

func tarOf(t testing.TB, entries []testenv.Entry, compression string) []byte {
	t.Helper()
	data, err := testenv.Tar(entries, compression)
	if err != nil {
		t.Fatalf("writing tar: %v", err)
	}
	return data
}

func entryIndex(t *testing.T, entries []testenv.Entry, name string) int {
	t.Helper()
	i := slices.IndexFunc(entries, func(e testenv.Entry) bool { return e.Name == name })
	if i < 0 {
		t.Fatalf("no entry %s", name)
	}
	return i
}

// layerIndex is the index of the first blob entry that is not JSON: a layer.
func layerIndex(t *testing.T, entries []testenv.Entry) int {
	t.Helper()
	for i, e := range entries {
		if strings.HasPrefix(e.Name, "blobs/") && len(e.Data) > 0 && e.Data[0] != '{' {
			return i
		}
	}
	t.Fatal("no layer in the bundle")
	return -1
}

// manifestIndex is the index of the first image manifest entry.
func manifestIndex(t *testing.T, entries []testenv.Entry) int {
	t.Helper()
	for i, e := range entries {
		if strings.HasPrefix(e.Name, "blobs/") && bytes.Contains(e.Data, []byte(`"layers"`)) {
			return i
		}
	}
	t.Fatal("no manifest in the bundle")
	return -1
}

func flip(data []byte) []byte {
	out := bytes.Clone(data)
	out[len(out)/2] ^= 0xff
	return out
}

// editIndex rewrites index.json.
func editIndex(t *testing.T, entries []testenv.Entry, edit func(*ocispec.Index)) []testenv.Entry {
	t.Helper()
	i := entryIndex(t, entries, "index.json")
	var idx ocispec.Index
	if err := json.Unmarshal(entries[i].Data, &idx); err != nil {
		t.Fatalf("index.json: %v", err)
	}
	edit(&idx)
	data, err := json.Marshal(idx)
	if err != nil {
		t.Fatal(err)
	}
	entries[i].Data = data
	return entries
}

func setAnnotations(annotations map[string]string) func(*ocispec.Index) {
	return func(idx *ocispec.Index) {
		for i := range idx.Manifests {
			idx.Manifests[i].Annotations = annotations
		}
	}
}

// summary is "name@digest" per image, in order.
func summary(imgs []Image) []string {
	out := make([]string, 0, len(imgs))
	for _, img := range imgs {
		out = append(out, img.Name+"@"+img.Target.Digest.String())
	}
	return out
}

func blobStats(entries []testenv.Entry) (n int, size int64) {
	for _, e := range entries {
		if strings.HasPrefix(e.Name, "blobs/") {
			n++
			size += int64(len(e.Data))
		}
	}
	return n, size
}

func TestReadOCILayout(t *testing.T) {
	t.Parallel()
	f := getFixture(t)
	nBlobs, nBytes := blobStats(f.both)
	wantImages := []string{
		nameNode + "@" + f.targets[nameNode].Digest.String(),
		nameCNI + "@" + f.targets[nameCNI].Digest.String(),
	}
	tests := []struct {
		name            string
		compression     string
		wantCompression string
	}{
		{name: "plain", compression: "", wantCompression: "none"},
		{name: "gzip", compression: "gzip", wantCompression: "gzip"},
		{name: "zstd", compression: "zstd", wantCompression: "zstd"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			data := tarOf(t, f.both, tt.compression)
			sink := newMemSink()
			res, err := Read(t.Context(), bytes.NewReader(data), sink, Options{})
			if err != nil {
				t.Fatalf("Read: %v", err)
			}
			if res.Format != FormatOCILayout {
				t.Errorf("Format = %q, want %q", res.Format, FormatOCILayout)
			}
			if res.Compression != tt.wantCompression {
				t.Errorf("Compression = %q, want %q", res.Compression, tt.wantCompression)
			}
			if got := summary(res.Images); !slices.Equal(got, wantImages) {
				t.Errorf("Images = %v, want %v", got, wantImages)
			}
			for _, img := range res.Images {
				want := f.targets[img.Name]
				if img.Target.MediaType != want.MediaType || img.Target.Size != want.Size || img.Synthesized {
					t.Errorf("%s: Target = %+v (synthesized %v), want %+v", img.Name, img.Target, img.Synthesized, want)
				}
			}
			if res.Lock != nil || res.Skipped {
				t.Errorf("Lock = %v, Skipped = %v; want none, false", res.Lock, res.Skipped)
			}
			if res.Blobs != nBlobs || res.Stored != nBlobs || res.Bytes != nBytes {
				t.Errorf("Blobs, Stored, Bytes = %d, %d, %d; want %d, %d, %d", res.Blobs, res.Stored, res.Bytes, nBlobs, nBlobs, nBytes)
			}
			for d, want := range f.blobs {
				if got, ok := sink.get(d); !ok || !bytes.Equal(got, want) {
					t.Errorf("sink: %s missing or different (present %v)", d, ok)
				}
			}
			for _, target := range f.targets {
				if _, ok := res.Documents[target.Digest]; !ok {
					t.Errorf("Documents lacks index %s", target.Digest)
				}
			}

			// Everything is now in the sink: a second read stores nothing new.
			_, writes := sink.counts()
			res, err = Read(t.Context(), bytes.NewReader(data), sink, Options{})
			if err != nil {
				t.Fatalf("second Read: %v", err)
			}
			if res.Blobs != nBlobs || res.Stored != 0 {
				t.Errorf("second read: Blobs, Stored = %d, %d; want %d, 0", res.Blobs, res.Stored, nBlobs)
			}
			if _, again := sink.counts(); again != writes {
				t.Errorf("second read wrote %d blobs to the sink", again-writes)
			}
			if got := summary(res.Images); !slices.Equal(got, wantImages) {
				t.Errorf("second read: Images = %v, want %v", got, wantImages)
			}
		})
	}
}

func TestReadNames(t *testing.T) {
	t.Parallel()
	f := getFixture(t)
	node := f.targets[nameNode].Digest
	amd64Config := f.nodePlatforms["linux/amd64"].config
	tests := []struct {
		name       string
		edit       func(t *testing.T, es []testenv.Entry) []testenv.Entry
		opts       Options
		wantFormat Format
		want       []string // names, sorted
		wantErr    string
	}{
		{
			name:       "containerd name annotation",
			wantFormat: FormatOCILayout,
			want:       []string{nameNode},
		},
		{
			name: "containerd name wins over base name",
			opts: Options{BaseName: "example.com/other"},
			want: []string{nameNode}, wantFormat: FormatOCILayout,
		},
		{
			name: "full reference in ref.name",
			edit: func(t *testing.T, es []testenv.Entry) []testenv.Entry {
				return editIndex(t, es, setAnnotations(map[string]string{ocispec.AnnotationRefName: "ghcr.io/acme/node:v1"}))
			},
			want: []string{"ghcr.io/acme/node:v1"}, wantFormat: FormatOCILayout,
		},
		{
			name: "tag-only ref.name with base name",
			edit: func(t *testing.T, es []testenv.Entry) []testenv.Entry {
				return editIndex(t, es, setAnnotations(map[string]string{ocispec.AnnotationRefName: "v3.28.1"}))
			},
			opts: Options{BaseName: "calico/node"},
			want: []string{nameNode}, wantFormat: FormatOCILayout,
		},
		{
			name: "tag-only ref.name without base name",
			edit: func(t *testing.T, es []testenv.Entry) []testenv.Entry {
				return editIndex(t, es, setAnnotations(map[string]string{ocispec.AnnotationRefName: "v3.28.1"}))
			},
			wantErr: "--base-name",
		},
		{
			name: "no name with base name",
			edit: func(t *testing.T, es []testenv.Entry) []testenv.Entry {
				return editIndex(t, es, setAnnotations(nil))
			},
			opts: Options{BaseName: "registry.local/calico/node:v9"},
			want: []string{"registry.local/calico/node:v9"}, wantFormat: FormatOCILayout,
		},
		{
			name: "no name without base name",
			edit: func(t *testing.T, es []testenv.Entry) []testenv.Entry {
				return editIndex(t, es, setAnnotations(nil))
			},
			wantErr: "--base-name",
		},
		{
			name: "invalid name",
			edit: func(t *testing.T, es []testenv.Entry) []testenv.Entry {
				return editIndex(t, es, setAnnotations(map[string]string{annotationContainerdName: "Not A Reference!"}))
			},
			wantErr: "image name",
		},
		{
			name: "docker save 25 names from manifest.json RepoTags",
			edit: func(t *testing.T, es []testenv.Entry) []testenv.Entry {
				es = editIndex(t, es, setAnnotations(nil))
				m, err := json.Marshal([]dockerManifestEntry{{Config: blobPath(amd64Config), RepoTags: []string{"calico/node:v3.28.1", "calico/node:latest"}}})
				if err != nil {
					t.Fatal(err)
				}
				return append(es, testenv.Entry{Name: "manifest.json", Data: m})
			},
			want:       []string{"docker.io/calico/node:latest", nameNode},
			wantFormat: FormatDocker,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			es := copyEntries(f.node)
			if tt.edit != nil {
				es = tt.edit(t, es)
			}
			res, err := Read(t.Context(), bytes.NewReader(tarOf(t, es, "")), newMemSink(), tt.opts)
			if tt.wantErr != "" {
				if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Read error = %v, want ErrInvalid mentioning %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Read: %v", err)
			}
			if res.Format != tt.wantFormat {
				t.Errorf("Format = %q, want %q", res.Format, tt.wantFormat)
			}
			var names []string
			for _, img := range res.Images {
				names = append(names, img.Name)
				if img.Target.Digest != node {
					t.Errorf("%s: Target digest = %s, want %s", img.Name, img.Target.Digest, node)
				}
			}
			if !slices.Equal(names, tt.want) {
				t.Errorf("names = %v, want %v", names, tt.want)
			}
		})
	}
}

func TestReadDockerLegacy(t *testing.T) {
	t.Parallel()
	f := getFixture(t)
	tests := []struct {
		name        string
		compression string
		edit        func(t *testing.T, es []testenv.Entry) []testenv.Entry
		opts        Options
		wantName    string
		wantErr     string
	}{
		{name: "plain", wantName: nameNode},
		{name: "gzip", compression: "gzip", wantName: nameNode},
		{name: "zstd", compression: "zstd", wantName: nameNode},
		{
			name: "no RepoTags with base name",
			edit: func(t *testing.T, es []testenv.Entry) []testenv.Entry {
				return editLegacy(t, es, func(e *dockerManifestEntry) { e.RepoTags = nil })
			},
			opts:     Options{BaseName: "example.com/node:v1"},
			wantName: "example.com/node:v1",
		},
		{
			name: "no RepoTags without base name",
			edit: func(t *testing.T, es []testenv.Entry) []testenv.Entry {
				return editLegacy(t, es, func(e *dockerManifestEntry) { e.RepoTags = nil })
			},
			wantErr: "--base-name",
		},
		{
			name: "corrupted layer",
			edit: func(t *testing.T, es []testenv.Entry) []testenv.Entry {
				i := slices.IndexFunc(es, func(e testenv.Entry) bool { return strings.HasSuffix(e.Name, "/layer.tar") })
				es[i].Data = flip(es[i].Data)
				return es
			},
			wantErr: "corrupted",
		},
		{
			name: "missing layer",
			edit: func(t *testing.T, es []testenv.Entry) []testenv.Entry {
				i := slices.IndexFunc(es, func(e testenv.Entry) bool { return strings.HasSuffix(e.Name, "/layer.tar") })
				return slices.Delete(es, i, i+1)
			},
			wantErr: "not in the bundle",
		},
		{
			name: "missing config",
			edit: func(t *testing.T, es []testenv.Entry) []testenv.Entry {
				i := entryIndex(t, es, f.legacyConfig.Encoded()+".json")
				return slices.Delete(es, i, i+1)
			},
			wantErr: "not in the bundle",
		},
		{
			name: "layer count differs from the config",
			edit: func(t *testing.T, es []testenv.Entry) []testenv.Entry {
				return editLegacy(t, es, func(e *dockerManifestEntry) { e.Layers = e.Layers[:1] })
			},
			wantErr: "layers",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			es := copyEntries(f.legacy)
			if tt.edit != nil {
				es = tt.edit(t, es)
			}
			sink := newMemSink()
			res, err := Read(t.Context(), bytes.NewReader(tarOf(t, es, tt.compression)), sink, tt.opts)
			if tt.wantErr != "" {
				if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Read error = %v, want ErrInvalid mentioning %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Read: %v", err)
			}
			if res.Format != FormatDockerLegacy {
				t.Errorf("Format = %q, want %q", res.Format, FormatDockerLegacy)
			}
			if len(res.Images) != 1 {
				t.Fatalf("Images = %+v, want one", res.Images)
			}
			img := res.Images[0]
			if img.Name != tt.wantName || !img.Synthesized {
				t.Errorf("image = %q (synthesized %v), want %q synthesized", img.Name, img.Synthesized, tt.wantName)
			}
			if img.Target.MediaType != images.MediaTypeDockerSchema2Manifest {
				t.Errorf("Target media type = %q", img.Target.MediaType)
			}
			if p := img.Target.Platform; p == nil || platforms.Format(*p) != "linux/amd64" {
				t.Errorf("Target platform = %v, want linux/amd64", p)
			}
			// The synthesised manifest is in the sink, pointing at the config and the
			// uncompressed layers (whose digests are the diff IDs).
			data, ok := sink.get(img.Target.Digest)
			if !ok {
				t.Fatalf("manifest %s not in the sink", img.Target.Digest)
			}
			if int64(len(data)) != img.Target.Size {
				t.Errorf("manifest is %d bytes, Target says %d", len(data), img.Target.Size)
			}
			var m ocispec.Manifest
			if err := json.Unmarshal(data, &m); err != nil {
				t.Fatalf("manifest: %v", err)
			}
			if m.Config.Digest != f.legacyConfig {
				t.Errorf("manifest config = %s, want %s", m.Config.Digest, f.legacyConfig)
			}
			var layers []digest.Digest
			for _, l := range m.Layers {
				layers = append(layers, l.Digest)
				if _, ok := sink.get(l.Digest); !ok {
					t.Errorf("layer %s not in the sink", l.Digest)
				}
			}
			if !slices.Equal(layers, f.legacyDiffIDs) {
				t.Errorf("manifest layers = %v, want %v", layers, f.legacyDiffIDs)
			}
			if _, ok := sink.get(f.legacyConfig); !ok {
				t.Errorf("config %s not in the sink", f.legacyConfig)
			}
			// Two layers, the config and the synthesised manifest.
			if res.Blobs != 4 || res.Stored != 4 {
				t.Errorf("Blobs, Stored = %d, %d; want 4, 4", res.Blobs, res.Stored)
			}
		})
	}
}

// editLegacy rewrites the single entry of a legacy manifest.json.
func editLegacy(t *testing.T, es []testenv.Entry, edit func(*dockerManifestEntry)) []testenv.Entry {
	t.Helper()
	i := entryIndex(t, es, "manifest.json")
	var entries []dockerManifestEntry
	if err := json.Unmarshal(es[i].Data, &entries); err != nil {
		t.Fatal(err)
	}
	edit(&entries[0])
	data, err := json.Marshal(entries)
	if err != nil {
		t.Fatal(err)
	}
	es[i].Data = data
	return es
}

// precacheBundle is a bundle of both images as Write makes it (index.json and the lock
// before any blob), with its WriteResult.
func precacheBundle(t *testing.T, f *fixture) ([]byte, *WriteResult) {
	t.Helper()
	var buf bytes.Buffer
	imgs := []Image{{Name: nameNode, Target: f.targets[nameNode]}, {Name: nameCNI, Target: f.targets[nameCNI]}}
	wr, err := Write(t.Context(), &buf, imgs, &mapSource{blobs: f.blobs}, WriteOptions{Platforms: platforms.All, Compression: "zstd"})
	if err != nil {
		t.Fatalf("Write: %v", err)
	}
	return buf.Bytes(), wr
}

func TestReadEarly(t *testing.T) {
	t.Parallel()
	f := getFixture(t)
	precache, wr := precacheBundle(t, f)
	layout := tarOf(t, f.both, "gzip")
	wantImages := []string{
		nameNode + "@" + f.targets[nameNode].Digest.String(),
		nameCNI + "@" + f.targets[nameCNI].Digest.String(),
	}
	errEarly := errors.New("early failed")
	tests := []struct {
		name     string
		bundle   []byte
		skip     bool
		err      error
		wantLock bool
	}{
		{name: "precache bundle, skip", bundle: precache, skip: true, wantLock: true},
		{name: "precache bundle, read all", bundle: precache, wantLock: true},
		{name: "precache bundle, callback error", bundle: precache, err: errEarly, wantLock: true},
		{name: "OCI layout without lock, read all", bundle: layout},
		{name: "OCI layout without lock, skip", bundle: layout, skip: true},
	}
	checkLock := func(t *testing.T, l *manifest.Lock) {
		t.Helper()
		if l == nil {
			t.Error("no lock")
			return
		}
		for _, name := range []string{nameNode, nameCNI} {
			if d, ok := l.Lookup(manifest.MustParseRef(name)); !ok || d != f.targets[name].Digest {
				t.Errorf("lock: %s = %s (found %v), want %s", name, d, ok, f.targets[name].Digest)
			}
		}
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			sink := newMemSink()
			calls := 0
			early := func(_ context.Context, imgs []Image, lock *manifest.Lock) (bool, error) {
				calls++
				if n, w := sink.counts(); n != 0 || w != 0 {
					t.Errorf("Early called after %d blobs were written", w)
				}
				got := summary(imgs)
				sort.Strings(got)
				if !slices.Equal(got, wantImages) {
					t.Errorf("Early images = %v, want %v", got, wantImages)
				}
				if tt.wantLock {
					checkLock(t, lock)
				} else if lock != nil {
					t.Errorf("Early lock = %v, want none", lock)
				}
				return tt.skip, tt.err
			}
			res, err := Read(t.Context(), bytes.NewReader(tt.bundle), sink, Options{Early: early})
			if calls != 1 {
				t.Errorf("Early called %d times, want once", calls)
			}
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("Read error = %v, want %v", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Read: %v", err)
			}
			if got := summary(res.Images); !slices.Equal(got, wantImages) {
				t.Errorf("Images = %v, want %v", got, wantImages)
			}
			if tt.wantLock {
				checkLock(t, res.Lock)
			} else if res.Lock != nil {
				t.Errorf("Lock = %v, want none", res.Lock)
			}
			n, writes := sink.counts()
			if tt.skip {
				if !res.Skipped {
					t.Error("Skipped = false, want true")
				}
				if n != 0 || writes != 0 || res.Stored != 0 {
					t.Errorf("skipped read stored %d blobs (%d writes, Stored %d)", n, writes, res.Stored)
				}
				return
			}
			if res.Skipped {
				t.Error("Skipped = true, want false")
			}
			wantBlobs, _ := blobStats(f.both)
			if res.Blobs != wantBlobs || res.Stored != wantBlobs || n != wantBlobs {
				t.Errorf("Blobs, Stored, in sink = %d, %d, %d; want %d", res.Blobs, res.Stored, n, wantBlobs)
			}
			if tt.wantLock && res.Blobs != wr.Blobs {
				t.Errorf("Read saw %d blobs, Write wrote %d", res.Blobs, wr.Blobs)
			}
		})
	}
}

// gzipBomb is a gzip tar holding one blob of zeros past bombFloor. Compressing that much
// is slow under -race, so the stream is gzip members concatenated (a valid gzip file, as
// `cat a.gz b.gz` makes): the tar header, then the same 1 MiB of zeros compressed once
// and repeated, then the end-of-archive blocks. Built once and shared.
var gzipBomb = sync.OnceValues(func() ([]byte, error) {
	const chunk = 1 << 20
	const size = bombFloor + 44*chunk
	zeros := make([]byte, chunk)
	h := digest.Canonical.Digester()
	for range size / chunk {
		h.Hash().Write(zeros)
	}
	member := func(data []byte) ([]byte, error) {
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		if _, err := zw.Write(data); err != nil {
			return nil, err
		}
		if err := zw.Close(); err != nil {
			return nil, err
		}
		return buf.Bytes(), nil
	}
	var header bytes.Buffer
	if err := tar.NewWriter(&header).WriteHeader(&tar.Header{Name: blobPath(h.Digest()), Mode: 0o644, Size: size, Typeflag: tar.TypeReg}); err != nil {
		return nil, err
	}
	out, err := member(header.Bytes())
	if err != nil {
		return nil, err
	}
	mib, err := member(zeros)
	if err != nil {
		return nil, err
	}
	for range size / chunk {
		out = append(out, mib...)
	}
	end, err := member(make([]byte, 1024)) // two zero blocks end a tar
	if err != nil {
		return nil, err
	}
	return append(out, end...), nil
})

func TestReadInvalid(t *testing.T) {
	t.Parallel()
	f := getFixture(t)
	// oci is the two-image layout changed by edit, as a plain tar.
	oci := func(edit func(t *testing.T, es []testenv.Entry) []testenv.Entry) func(*testing.T) []byte {
		return func(t *testing.T) []byte {
			return tarOf(t, edit(t, copyEntries(f.both)), "")
		}
	}
	add := func(extra ...testenv.Entry) func(*testing.T) []byte {
		return oci(func(_ *testing.T, es []testenv.Entry) []testenv.Entry {
			// Before the blobs, so the bad entry is reached first.
			return slices.Insert(es, 1, extra...)
		})
	}
	good := tarOf(t, f.both, "")
	goodGzip := tarOf(t, f.both, "gzip")
	goodZstd := tarOf(t, f.both, "zstd")
	layerOffset := func(t *testing.T) int {
		t.Helper()
		i := layerIndex(t, f.both)
		at := bytes.Index(good, f.both[i].Data)
		if at < 0 {
			t.Fatal("layer not found in the tar")
		}
		return at
	}
	tests := []struct {
		name    string
		input   func(t *testing.T) []byte
		prefill bool // the sink already has every blob of the bundle
		opts    Options
		wantErr string
	}{
		{name: "empty input", input: func(*testing.T) []byte { return nil }, wantErr: "empty file"},
		{name: "not a tar", input: func(*testing.T) []byte { return bytes.Repeat([]byte("not a tar archive\n"), 100) }, wantErr: "not a tar"},
		{name: "short garbage", input: func(*testing.T) []byte { return []byte("hello") }, wantErr: "not a tar"},
		{name: "empty tar", input: func(t *testing.T) []byte { return tarOf(t, nil, "") }, wantErr: "empty archive"},
		{name: "not a bundle", input: func(t *testing.T) []byte {
			return tarOf(t, []testenv.Entry{{Name: "etc/hosts", Data: []byte("127.0.0.1 localhost\n")}}, "")
		}, wantErr: "no index.json or manifest.json"},
		{name: "gzip of garbage", input: func(*testing.T) []byte { return append([]byte{0x1f, 0x8b}, bytes.Repeat([]byte{0x42}, 600)...) }, wantErr: "gzip"},
		{name: "truncated tar in a header", input: func(*testing.T) []byte { return good[:1024+100] }, wantErr: "unexpected EOF"},
		{name: "truncated tar in a layer", input: func(t *testing.T) []byte { return good[:layerOffset(t)+100] }, wantErr: "unexpected EOF"},
		{name: "truncated tar in a layer already stored", input: func(t *testing.T) []byte { return good[:layerOffset(t)+100] }, prefill: true, wantErr: "truncated"},
		{name: "truncated gzip", input: func(*testing.T) []byte { return goodGzip[:len(goodGzip)/2] }, wantErr: "unexpected EOF"},
		{name: "truncated zstd", input: func(*testing.T) []byte { return goodZstd[:len(goodZstd)/2] }, wantErr: "EOF"},
		{name: "tar cut between entries", input: func(t *testing.T) []byte {
			// Cut before a platform's second layer, without the end-of-archive blocks:
			// the tar reads as complete, but the platform lacks a layer.
			i := layerIndex(t, f.both) + 1
			at := bytes.Index(good, f.both[i].Data)
			if at < 512 {
				t.Fatal("second layer not found in the tar")
			}
			return good[:at-512]
		}, wantErr: "not in the bundle"},
		{name: "tar cut before any layer", input: func(t *testing.T) []byte {
			return good[:layerOffset(t)-512]
		}, wantErr: "none of its platforms"},
		{name: "config missing", input: oci(func(t *testing.T, es []testenv.Entry) []testenv.Entry {
			i := entryIndex(t, es, blobPath(f.nodePlatforms["linux/arm64"].config))
			return slices.Delete(es, i, i+1)
		}), wantErr: "not in the bundle"},
		{name: "flipped byte in a layer", input: oci(func(t *testing.T, es []testenv.Entry) []testenv.Entry {
			i := layerIndex(t, es)
			es[i].Data = flip(es[i].Data)
			return es
		}), wantErr: "does not match"},
		{name: "flipped byte in a layer the sink already has", input: oci(func(t *testing.T, es []testenv.Entry) []testenv.Entry {
			i := layerIndex(t, es)
			es[i].Data = flip(es[i].Data)
			return es
		}), prefill: true, wantErr: "corrupted"},
		{name: "flipped byte in a manifest", input: oci(func(t *testing.T, es []testenv.Entry) []testenv.Entry {
			i := manifestIndex(t, es)
			es[i].Data = bytes.Replace(es[i].Data, []byte(`"schemaVersion":2`), []byte(`"schemaVersion":3`), 1)
			return es
		}), wantErr: "corrupted"},
		{name: "flipped byte in a manifest the sink already has", input: oci(func(t *testing.T, es []testenv.Entry) []testenv.Entry {
			i := manifestIndex(t, es)
			es[i].Data = bytes.Replace(es[i].Data, []byte(`"schemaVersion":2`), []byte(`"schemaVersion":3`), 1)
			return es
		}), prefill: true, wantErr: "corrupted"},
		{name: "manifest references a missing blob", input: oci(func(t *testing.T, es []testenv.Entry) []testenv.Entry {
			i := layerIndex(t, es)
			return slices.Delete(es, i, i+1)
		}), wantErr: "not in the bundle"},
		{name: "manifest references a missing blob the sink has", input: oci(func(t *testing.T, es []testenv.Entry) []testenv.Entry {
			i := layerIndex(t, es)
			return slices.Delete(es, i, i+1)
		}), prefill: true, wantErr: "not in the bundle"},
		{name: "index.json references a missing index", input: oci(func(t *testing.T, es []testenv.Entry) []testenv.Entry {
			i := entryIndex(t, es, blobPath(f.targets[nameCNI].Digest))
			return slices.Delete(es, i, i+1)
		}), wantErr: "not in the bundle"},
		{name: "index references no manifest present", input: oci(func(t *testing.T, es []testenv.Entry) []testenv.Entry {
			for _, pb := range f.nodePlatforms {
				i := entryIndex(t, es, blobPath(pb.manifest))
				es = slices.Delete(es, i, i+1)
			}
			return es
		}), wantErr: "none of its platforms"},
		{name: "blob size differs from its manifest", input: oci(func(t *testing.T, es []testenv.Entry) []testenv.Entry {
			i := layerIndex(t, es)
			es[i].Data = append(es[i].Data, 0)
			return es
		}), wantErr: "but a manifest declares"},
		{name: "index blob size differs from index.json", input: oci(func(t *testing.T, es []testenv.Entry) []testenv.Entry {
			return editIndex(t, es, func(idx *ocispec.Index) { idx.Manifests[0].Size++ })
		}), wantErr: "declares"},
		{name: "absolute path", input: add(testenv.Entry{Name: "/etc/passwd", Data: []byte("root:x:0:0")}), wantErr: "absolute path"},
		{name: "dot-dot", input: add(testenv.Entry{Name: "blobs/../../etc/passwd", Data: []byte("root:x:0:0")}), wantErr: `".."`},
		{name: "leading dot-dot", input: add(testenv.Entry{Name: "../index.json", Data: []byte("{}")}), wantErr: `".."`},
		{name: "symlink outside", input: add(testenv.Entry{Name: "blobs/sha256/evil", Typeflag: tar.TypeSymlink, Linkname: "../../../etc/shadow"}), wantErr: "points outside the archive"},
		{name: "absolute symlink", input: add(testenv.Entry{Name: "evil", Typeflag: tar.TypeSymlink, Linkname: "/etc/shadow"}), wantErr: "points outside the archive"},
		{name: "hardlink outside", input: add(testenv.Entry{Name: "evil", Typeflag: tar.TypeLink, Linkname: "../etc/shadow"}), wantErr: "points outside the archive"},
		{name: "device node", input: add(testenv.Entry{Name: "dev/null", Typeflag: tar.TypeChar}), wantErr: "unsupported tar entry type"},
		{name: "oversized index.json", input: oci(func(t *testing.T, es []testenv.Entry) []testenv.Entry {
			i := entryIndex(t, es, "index.json")
			es[i].Data = append(es[i].Data, bytes.Repeat([]byte(" "), maxJSON)...)
			return es
		}), wantErr: "more than the"},
		{name: "malformed index.json", input: oci(func(t *testing.T, es []testenv.Entry) []testenv.Entry {
			es[entryIndex(t, es, "index.json")].Data = []byte(`{"manifests": [`)
			return es
		}), wantErr: "index.json"},
		{name: "index.json lists no images", input: oci(func(t *testing.T, es []testenv.Entry) []testenv.Entry {
			return editIndex(t, es, func(idx *ocispec.Index) { idx.Manifests = nil })
		}), wantErr: "lists no images"},
		{name: "index.json with an invalid digest", input: oci(func(t *testing.T, es []testenv.Entry) []testenv.Entry {
			return editIndex(t, es, func(idx *ocispec.Index) { idx.Manifests[0].Digest = "sha256:abc" })
		}), wantErr: "index.json"},
		{name: "malformed manifest.json", input: add(testenv.Entry{Name: "manifest.json", Data: []byte(`[{"Config": 1}]`)}), wantErr: "manifest.json"},
		{name: "malformed lock", input: add(testenv.Entry{Name: lockEntryName, Data: []byte(`{"version": 99}`)}), wantErr: lockEntryName},
		{name: "gzip bomb", input: func(t *testing.T) []byte {
			data, err := gzipBomb()
			if err != nil {
				t.Fatalf("building the bomb: %v", err)
			}
			return data
		}, opts: Options{MaxRatio: 2}, wantErr: "compression bomb"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			sink := newMemSink()
			if tt.prefill {
				for d, data := range f.blobs {
					sink.put(d, data)
				}
			}
			res, err := Read(t.Context(), bytes.NewReader(tt.input(t)), sink, tt.opts)
			if err == nil {
				t.Fatalf("Read succeeded (%d images), want an error mentioning %q", len(res.Images), tt.wantErr)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("Read error %q does not wrap ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Read error %q does not mention %q", err, tt.wantErr)
			}
		})
	}
}
