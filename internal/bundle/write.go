package bundle

import (
	"archive/tar"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/platforms"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/precache/precache/internal/manifest"
)

// Source serves the blobs of the images being bundled: a registry, or containerd's content store.
type Source interface {
	// Open returns the content of desc, a blob of the image called name.
	Open(ctx context.Context, name string, desc ocispec.Descriptor) (io.ReadCloser, error)
}

// WriteOptions tune Write.
type WriteOptions struct {
	// Platforms whose layers the bundle carries; every platform's manifest and config is
	// carried regardless, so the index digest is the registry's.
	Platforms platforms.Matcher
	// Compression: "zstd", "gzip" or "none".
	Compression string
}

// WriteResult describes a written bundle.
type WriteResult struct {
	Images int
	Blobs  int
	Bytes  int64 // blob bytes before compression
	Lock   *manifest.Lock
}

// Write writes an OCI image-layout tar of imgs. index.json and an embedded lock come
// first, then manifests and configs, then layers, so a reader can check what it already
// has before reading any layer, and knows each blob's declared size before it arrives.
// Every blob is verified against its digest as it is copied.
func Write(ctx context.Context, w io.Writer, imgs []Image, src Source, opts WriteOptions) (_ *WriteResult, retErr error) {
	if opts.Platforms == nil {
		opts.Platforms = platforms.Default()
	}
	type blob struct {
		name string // image it belongs to (for the registry's repository)
		desc ocispec.Descriptor
		data []byte // documents are kept; layers are streamed
	}
	var (
		docs, layers []blob
		seen         = map[digest.Digest]bool{}
		lock         = &manifest.Lock{}
	)
	var walk func(name string, desc ocispec.Descriptor, wantLayers bool) error
	walk = func(name string, desc ocispec.Descriptor, wantLayers bool) error {
		if seen[desc.Digest] {
			return nil
		}
		seen[desc.Digest] = true
		if !images.IsIndexType(desc.MediaType) && !images.IsManifestType(desc.MediaType) {
			switch {
			case images.IsConfigType(desc.MediaType) || desc.MediaType == images.MediaTypeDockerSchema2Config:
				data, err := readAll(ctx, src, name, desc)
				if err != nil {
					return err
				}
				docs = append(docs, blob{name: name, desc: desc, data: data})
			case wantLayers:
				layers = append(layers, blob{name: name, desc: desc})
			default:
				delete(seen, desc.Digest) // another platform's manifest may want it
			}
			return nil
		}
		data, err := readAll(ctx, src, name, desc)
		if err != nil {
			return err
		}
		docs = append(docs, blob{name: name, desc: desc, data: data})
		var doc struct {
			Config    ocispec.Descriptor   `json:"config"`
			Layers    []ocispec.Descriptor `json:"layers"`
			Manifests []ocispec.Descriptor `json:"manifests"`
		}
		if err := json.Unmarshal(data, &doc); err != nil {
			return fmt.Errorf("%s: %s: %w", name, desc.Digest, err)
		}
		for _, m := range doc.Manifests {
			want := m.Platform == nil || opts.Platforms.Match(*m.Platform)
			if err := walk(name, m, want); err != nil {
				return err
			}
		}
		if doc.Config.Digest != "" {
			if err := walk(name, doc.Config, wantLayers); err != nil {
				return err
			}
		}
		for _, l := range doc.Layers {
			if err := walk(name, l, wantLayers); err != nil {
				return err
			}
		}
		return nil
	}
	index := ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex}
	for _, img := range imgs {
		ref, err := manifest.ParseRef(img.Name)
		if err != nil {
			return nil, err
		}
		if err := walk(img.Name, img.Target, true); err != nil {
			return nil, err
		}
		lock.Set(ref, img.Target.Digest)
		d := stripAnnotations(img.Target)
		d.Platform = nil
		d.Annotations = map[string]string{annotationContainerdName: ref.String()}
		if ref.Tag != "" {
			d.Annotations[annotationRefName] = ref.Tag
		}
		index.Manifests = append(index.Manifests, d)
	}

	cw, err := compressor(w, opts.Compression)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err := cw.Close(); err != nil && retErr == nil {
			retErr = err
		}
	}()
	tw := tar.NewWriter(cw)
	now := time.Unix(0, 0)
	put := func(name string, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o444, Size: int64(len(data)), ModTime: now, Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	indexJSON, _ := json.Marshal(index)
	lockJSON, _ := json.MarshalIndent(manifest.Lock{Version: manifest.LockVersion, Images: lock.Images}, "", "  ")
	if err := put("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return nil, err
	}
	if err := put("index.json", indexJSON); err != nil {
		return nil, err
	}
	if err := put(lockEntryName, lockJSON); err != nil {
		return nil, err
	}
	res := &WriteResult{Images: len(imgs), Lock: lock}
	for _, b := range docs {
		if digest.FromBytes(b.data) != b.desc.Digest {
			return nil, fmt.Errorf("%s: %s: content does not match its digest", b.name, b.desc.Digest)
		}
		if err := put(blobPath(b.desc.Digest), b.data); err != nil {
			return nil, err
		}
		res.Blobs++
		res.Bytes += b.desc.Size
	}
	for _, b := range layers {
		if err := tw.WriteHeader(&tar.Header{Name: blobPath(b.desc.Digest), Mode: 0o444, Size: b.desc.Size, ModTime: now, Typeflag: tar.TypeReg}); err != nil {
			return nil, err
		}
		if err := copyVerified(ctx, tw, src, b.name, b.desc); err != nil {
			return nil, err
		}
		res.Blobs++
		res.Bytes += b.desc.Size
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return res, nil
}

func blobPath(d digest.Digest) string {
	return "blobs/" + d.Algorithm().String() + "/" + d.Encoded()
}

func readAll(ctx context.Context, src Source, name string, desc ocispec.Descriptor) ([]byte, error) {
	if desc.Size > maxJSON {
		return nil, fmt.Errorf("%s: %s is %d bytes, too large for a manifest or config", name, desc.Digest, desc.Size)
	}
	rc, err := src.Open(ctx, name, desc)
	if err != nil {
		return nil, fmt.Errorf("%s: fetching %s: %w", name, desc.Digest, err)
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, desc.Size+1))
	if err != nil {
		return nil, fmt.Errorf("%s: reading %s: %w", name, desc.Digest, err)
	}
	if int64(len(data)) != desc.Size || digest.FromBytes(data) != desc.Digest {
		return nil, fmt.Errorf("%s: %s: content does not match its descriptor", name, desc.Digest)
	}
	return data, nil
}

func copyVerified(ctx context.Context, w io.Writer, src Source, name string, desc ocispec.Descriptor) error {
	rc, err := src.Open(ctx, name, desc)
	if err != nil {
		return fmt.Errorf("%s: fetching %s: %w", name, desc.Digest, err)
	}
	defer rc.Close()
	v := desc.Digest.Verifier()
	n, err := io.Copy(io.MultiWriter(w, v), io.LimitReader(rc, desc.Size))
	if err != nil {
		return fmt.Errorf("%s: copying %s: %w", name, desc.Digest, err)
	}
	if n != desc.Size || !v.Verified() {
		return fmt.Errorf("%s: %s: content does not match its descriptor (%d of %d bytes)", name, desc.Digest, n, desc.Size)
	}
	return nil
}

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }

func compressor(w io.Writer, kind string) (io.WriteCloser, error) {
	switch kind {
	case "zstd", "":
		return zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedDefault))
	case "gzip":
		return gzip.NewWriterLevel(w, gzip.DefaultCompression)
	case "none":
		return nopWriteCloser{w}, nil
	}
	return nil, fmt.Errorf("unknown compression %q: use zstd, gzip or none", kind)
}
