package bundle

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/containerd/platforms"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/precache/precache/internal/manifest"
)

// mapSource serves blobs from a map, optionally damaging one.
type mapSource struct {
	blobs map[digest.Digest][]byte
	// corrupt is served with a byte flipped, short with half its bytes.
	corrupt, short digest.Digest

	mu     sync.Mutex
	opened []string // "name digest"
}

var _ Source = (*mapSource)(nil)

func (s *mapSource) Open(_ context.Context, name string, desc ocispec.Descriptor) (io.ReadCloser, error) {
	s.mu.Lock()
	s.opened = append(s.opened, name+" "+desc.Digest.String())
	s.mu.Unlock()
	data, ok := s.blobs[desc.Digest]
	if !ok {
		return nil, fmt.Errorf("blob %s: not found", desc.Digest)
	}
	switch desc.Digest {
	case s.corrupt:
		data = flip(data)
	case s.short:
		data = data[:len(data)/2]
	}
	return io.NopCloser(bytes.NewReader(data)), nil
}

// tarEntries lists a plain tar's regular files in order, with their contents.
func tarEntries(t *testing.T, data []byte) (names []string, contents map[string][]byte) {
	t.Helper()
	contents = map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return names, contents
		}
		if err != nil {
			t.Fatalf("reading the written tar: %v", err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("reading %s: %v", hdr.Name, err)
		}
		names = append(names, hdr.Name)
		contents[hdr.Name] = b
	}
}

func TestWriteRoundTrip(t *testing.T) {
	t.Parallel()
	f := getFixture(t)
	imgs := []Image{{Name: nameNode, Target: f.targets[nameNode]}, {Name: nameCNI, Target: f.targets[nameCNI]}}
	wantImages := summary(imgs)
	var wantBytes int64
	for _, data := range f.blobs {
		wantBytes += int64(len(data))
	}
	tests := []struct {
		name            string
		compression     string
		wantCompression string
	}{
		{name: "none", compression: "none", wantCompression: "none"},
		{name: "gzip", compression: "gzip", wantCompression: "gzip"},
		{name: "zstd", compression: "zstd", wantCompression: "zstd"},
		{name: "default is zstd", compression: "", wantCompression: "zstd"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			src := &mapSource{blobs: f.blobs}
			var buf bytes.Buffer
			wr, err := Write(t.Context(), &buf, imgs, src, WriteOptions{Platforms: platforms.All, Compression: tt.compression})
			if err != nil {
				t.Fatalf("Write: %v", err)
			}
			if wr.Images != 2 || wr.Blobs != len(f.blobs) || wr.Bytes != wantBytes {
				t.Errorf("WriteResult = %d images, %d blobs, %d bytes; want 2, %d, %d", wr.Images, wr.Blobs, wr.Bytes, len(f.blobs), wantBytes)
			}
			for _, name := range []string{nameNode, nameCNI} {
				if d, ok := wr.Lock.Lookup(manifest.MustParseRef(name)); !ok || d != f.targets[name].Digest {
					t.Errorf("WriteResult.Lock: %s = %s, want %s", name, d, f.targets[name].Digest)
				}
			}
			for _, o := range src.opened {
				if !strings.HasPrefix(o, nameNode+" ") && !strings.HasPrefix(o, nameCNI+" ") {
					t.Errorf("Source opened %q: not under an image's name", o)
				}
			}

			sink := newMemSink()
			res, err := Read(t.Context(), &buf, sink, Options{})
			if err != nil {
				t.Fatalf("Read: %v", err)
			}
			if res.Format != FormatOCILayout || res.Compression != tt.wantCompression {
				t.Errorf("Format, Compression = %q, %q; want %q, %q", res.Format, res.Compression, FormatOCILayout, tt.wantCompression)
			}
			if got := summary(res.Images); !slices.Equal(got, wantImages) {
				t.Errorf("Images = %v, want %v", got, wantImages)
			}
			for _, img := range res.Images {
				if want := f.targets[img.Name]; img.Target.MediaType != want.MediaType || img.Target.Size != want.Size {
					t.Errorf("%s: Target = %+v, want %+v", img.Name, img.Target, want)
				}
			}
			if res.Lock == nil || !slices.Equal(res.Lock.Refs(), wr.Lock.Refs()) {
				t.Errorf("read Lock = %v, written %v", res.Lock, wr.Lock)
			} else {
				for _, ref := range res.Lock.Refs() {
					if res.Lock.Images[ref] != wr.Lock.Images[ref] {
						t.Errorf("lock %s: read %s, written %s", ref, res.Lock.Images[ref], wr.Lock.Images[ref])
					}
				}
			}
			if res.Blobs != wr.Blobs || res.Stored != wr.Blobs || res.Bytes != wr.Bytes {
				t.Errorf("Read Blobs, Stored, Bytes = %d, %d, %d; Write wrote %d blobs, %d bytes", res.Blobs, res.Stored, res.Bytes, wr.Blobs, wr.Bytes)
			}
			for d, want := range f.blobs {
				if got, ok := sink.get(d); !ok || !bytes.Equal(got, want) {
					t.Errorf("sink: %s missing or different (present %v)", d, ok)
				}
			}
		})
	}
}

func TestWriteOrder(t *testing.T) {
	t.Parallel()
	f := getFixture(t)
	imgs := []Image{{Name: nameNode, Target: f.targets[nameNode]}, {Name: nameCNI, Target: f.targets[nameCNI]}}
	var buf bytes.Buffer
	if _, err := Write(t.Context(), &buf, imgs, &mapSource{blobs: f.blobs}, WriteOptions{Platforms: platforms.All, Compression: "none"}); err != nil {
		t.Fatalf("Write: %v", err)
	}
	names, contents := tarEntries(t, buf.Bytes())
	if len(names) < 3 || !slices.Equal(names[:3], []string{"oci-layout", "index.json", lockEntryName}) {
		t.Fatalf("first entries = %v, want oci-layout, index.json, %s", names[:min(3, len(names))], lockEntryName)
	}
	// Documents (JSON) first, then layers; every blob once.
	seenLayer := false
	for _, name := range names[3:] {
		d, ok := blobDigest(name)
		if !ok {
			t.Errorf("unexpected entry %s", name)
			continue
		}
		if !bytes.Equal(contents[name], f.blobs[d]) {
			t.Errorf("%s: content differs from the source's", name)
		}
		isDoc := bytes.HasPrefix(contents[name], []byte("{"))
		if isDoc && seenLayer {
			t.Errorf("%s: a manifest or config after a layer", name)
		}
		seenLayer = seenLayer || !isDoc
	}
	if got := len(names) - 3; got != len(f.blobs) {
		t.Errorf("%d blobs written, want %d", got, len(f.blobs))
	}
}

func TestWritePlatforms(t *testing.T) {
	t.Parallel()
	f := getFixture(t)
	target := f.targets[nameNode]
	tests := []struct {
		name       string
		match      platforms.MatchComparer
		wantLayers []string // platforms whose layers are carried
	}{
		{name: "arm64 only", match: platforms.Only(platforms.MustParse("linux/arm64")), wantLayers: []string{"linux/arm64"}},
		{name: "amd64 only", match: platforms.Only(platforms.MustParse("linux/amd64")), wantLayers: []string{"linux/amd64"}},
		{name: "all", match: platforms.All, wantLayers: []string{"linux/amd64", "linux/arm64"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var buf bytes.Buffer
			wr, err := Write(t.Context(), &buf, []Image{{Name: nameNode, Target: target}}, &mapSource{blobs: f.blobs}, WriteOptions{Platforms: tt.match, Compression: "none"})
			if err != nil {
				t.Fatalf("Write: %v", err)
			}
			_, contents := tarEntries(t, buf.Bytes())
			blobs := 0
			for name := range contents {
				if _, ok := blobDigest(name); ok {
					blobs++
				}
			}
			if blobs != wr.Blobs {
				t.Errorf("tar has %d blobs, WriteResult says %d", blobs, wr.Blobs)
			}
			has := func(d digest.Digest) bool { _, ok := contents[blobPath(d)]; return ok }
			if !has(target.Digest) {
				t.Errorf("index %s not written", target.Digest)
			}
			for p, pb := range f.nodePlatforms {
				// Every platform's manifest and config, so the index stays the registry's.
				if !has(pb.manifest) || !has(pb.config) {
					t.Errorf("%s: manifest written %v, config written %v; want both", p, has(pb.manifest), has(pb.config))
				}
				want := slices.Contains(tt.wantLayers, p)
				for _, l := range pb.layers {
					if has(l) != want {
						t.Errorf("%s: layer %s written = %v, want %v", p, l, has(l), want)
					}
				}
			}

			// What Write produced, Read accepts.
			res, err := Read(t.Context(), bytes.NewReader(buf.Bytes()), newMemSink(), Options{})
			if err != nil {
				t.Fatalf("reading the bundle back: %v", err)
			}
			if got, want := summary(res.Images), []string{nameNode + "@" + target.Digest.String()}; !slices.Equal(got, want) {
				t.Errorf("read back Images = %v, want %v", got, want)
			}
		})
	}
}

func TestWriteErrors(t *testing.T) {
	t.Parallel()
	f := getFixture(t)
	amd64 := f.nodePlatforms["linux/amd64"]
	imgs := []Image{{Name: nameNode, Target: f.targets[nameNode]}}
	tests := []struct {
		name    string
		imgs    []Image
		src     *mapSource
		opts    WriteOptions
		wantErr string // "" for success
	}{
		{name: "corrupted layer", src: &mapSource{corrupt: amd64.layers[1]}, wantErr: "does not match its descriptor"},
		{name: "short layer", src: &mapSource{short: amd64.layers[0]}, wantErr: "does not match its descriptor"},
		{name: "corrupted config", src: &mapSource{corrupt: amd64.config}, wantErr: "does not match its descriptor"},
		{name: "corrupted manifest", src: &mapSource{corrupt: amd64.manifest}, wantErr: "does not match its descriptor"},
		{name: "corrupted index", src: &mapSource{corrupt: f.targets[nameNode].Digest}, wantErr: "does not match its descriptor"},
		{name: "missing layer", src: &mapSource{blobs: map[digest.Digest][]byte{}}, wantErr: "not found"},
		{
			name: "corrupted layer of a platform not carried",
			src:  &mapSource{corrupt: amd64.layers[0]},
			opts: WriteOptions{Platforms: platforms.Only(platforms.MustParse("linux/arm64")), Compression: "none"},
		},
		{name: "unknown compression", opts: WriteOptions{Platforms: platforms.All, Compression: "lz4"}, wantErr: "unknown compression"},
		{name: "invalid image name", imgs: []Image{{Name: "Not A Reference!", Target: f.targets[nameNode]}}, wantErr: "invalid image reference"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			src := tt.src
			if src == nil {
				src = &mapSource{}
			}
			if src.blobs == nil {
				src.blobs = f.blobs
			} else if len(src.blobs) == 0 {
				// Everything but the first amd64 layer.
				for d, data := range f.blobs {
					if d != amd64.layers[0] {
						src.blobs[d] = data
					}
				}
			}
			if tt.imgs == nil {
				tt.imgs = imgs
			}
			if tt.opts.Platforms == nil {
				tt.opts.Platforms = platforms.All
			}
			if tt.opts.Compression == "" {
				tt.opts.Compression = "zstd"
			}
			res, err := Write(t.Context(), io.Discard, tt.imgs, src, tt.opts)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Write: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Write succeeded (%+v), want an error mentioning %q", res, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Write error %q does not mention %q", err, tt.wantErr)
			}
		})
	}
}
