package testenv

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sync/errgroup"
)

// Registry is an OCI distribution registry serving on 127.0.0.1.
type Registry struct {
	// Host is "127.0.0.1:PORT".
	Host     string
	server   *http.Server
	listener net.Listener
}

// RegistryOptions configure StartRegistry.
type RegistryOptions struct {
	// BlobDir keeps blobs on disk instead of in memory (for large images).
	BlobDir string
	// Addr to listen on; default 127.0.0.1:0.
	Addr string
}

// StartRegistry serves go-containerregistry's registry on loopback.
func StartRegistry(o RegistryOptions) (*Registry, error) {
	opts := []registry.Option{registry.Logger(log.New(io.Discard, "", 0))}
	if o.BlobDir != "" {
		if err := os.MkdirAll(o.BlobDir, 0o755); err != nil {
			return nil, err
		}
		opts = append(opts, registry.WithBlobHandler(registry.NewDiskBlobHandler(o.BlobDir)))
	}
	addr := o.Addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	r := &Registry{Host: l.Addr().String(), listener: l, server: &http.Server{Handler: registry.New(opts...)}}
	go func() { _ = r.server.Serve(l) }()
	return r, nil
}

// Close stops serving: the registry is "down" from then on.
func (r *Registry) Close() error { return r.server.Close() }

// URL is "http://127.0.0.1:PORT".
func (r *Registry) URL() string { return "http://" + r.Host }

// ImageSpec describes a generated image.
type ImageSpec struct {
	// Platforms defaults to linux/amd64 and linux/arm64.
	Platforms []string
	// Layers per platform (default 2) and bytes per layer before compression (default 64 KiB).
	Layers    int
	LayerSize int64
	// Seed makes the content (and so the digests) differ between images.
	Seed uint64
	// SmallPlatforms get one 4 KiB layer whatever Layers and LayerSize say: for benchmarks,
	// where only the node platform's layers are pulled.
	SmallPlatforms []string
}

// Push generates a multi-platform image per spec and pushes it as path:tag ("calico/node:v3.28.1"),
// returning the digest of its index.
func (r *Registry) Push(ctx context.Context, path, tag string, spec ImageSpec) (v1.Hash, error) {
	idx, err := Index(spec)
	if err != nil {
		return v1.Hash{}, err
	}
	ref, err := name.ParseReference(r.Host+"/"+path+":"+tag, name.Insecure)
	if err != nil {
		return v1.Hash{}, err
	}
	if err := remote.WriteIndex(ref, idx, remote.WithContext(ctx)); err != nil {
		return v1.Hash{}, fmt.Errorf("pushing %s: %w", ref, err)
	}
	return idx.Digest()
}

// PushManifest pushes a single-platform image (a manifest, no index) as path:tag.
func (r *Registry) PushManifest(ctx context.Context, path, tag, platform string, seed uint64) (v1.Hash, error) {
	idx, err := Index(ImageSpec{Platforms: []string{platform}, Seed: seed})
	if err != nil {
		return v1.Hash{}, err
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return v1.Hash{}, err
	}
	img, err := idx.Image(im.Manifests[0].Digest)
	if err != nil {
		return v1.Hash{}, err
	}
	ref, err := name.ParseReference(r.Host+"/"+path+":"+tag, name.Insecure)
	if err != nil {
		return v1.Hash{}, err
	}
	if err := remote.Write(ref, img, remote.WithContext(ctx)); err != nil {
		return v1.Hash{}, fmt.Errorf("pushing %s: %w", ref, err)
	}
	return img.Digest()
}

// Index builds the image index spec describes.
func Index(spec ImageSpec) (v1.ImageIndex, error) {
	if len(spec.Platforms) == 0 {
		spec.Platforms = []string{"linux/amd64", "linux/arm64"}
	}
	if spec.Layers == 0 {
		spec.Layers = 2
	}
	if spec.LayerSize == 0 {
		spec.LayerSize = 64 << 10
	}
	var idx v1.ImageIndex = empty.Index
	idx = mutate.IndexMediaType(idx, types.OCIImageIndex)
	for pi, p := range spec.Platforms {
		plat, err := v1.ParsePlatform(p)
		if err != nil {
			return nil, err
		}
		img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
		img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
		n, size := spec.Layers, spec.LayerSize
		if slices.Contains(spec.SmallPlatforms, p) {
			n, size = 1, 4<<10
		}
		layers := make([]v1.Layer, n)
		var g errgroup.Group
		g.SetLimit(runtime.NumCPU())
		for li := range layers {
			g.Go(func() error {
				data := layerTar(spec.Seed*1000+uint64(pi)*100+uint64(li), size)
				layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
					return io.NopCloser(bytes.NewReader(data)), nil
				}, tarball.WithMediaType(types.OCILayer), tarball.WithCompressedCaching)
				if err != nil {
					return err
				}
				// Compress now, in parallel; the push reuses the cached result.
				if _, err := layer.Digest(); err != nil {
					return err
				}
				layers[li] = layer
				return nil
			})
		}
		if err := g.Wait(); err != nil {
			return nil, err
		}
		img, err = mutate.AppendLayers(img, layers...)
		if err != nil {
			return nil, err
		}
		cf, err := img.ConfigFile()
		if err != nil {
			return nil, err
		}
		cf = cf.DeepCopy()
		cf.OS, cf.Architecture, cf.Variant = plat.OS, plat.Architecture, plat.Variant
		cf.Config.Entrypoint = []string{"/bin/true"}
		if img, err = mutate.ConfigFile(img, cf); err != nil {
			return nil, err
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: plat}})
	}
	return idx, nil
}

// layerTar is a tar of text-like files (compressible about 3:1, like real image layers)
// totalling about size bytes, fully determined by seed.
func layerTar(seed uint64, size int64) []byte {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	words := make([]string, 64)
	for i := range words {
		var b strings.Builder
		for j := 0; j < 3+rng.IntN(8); j++ {
			b.WriteByte(byte('a' + rng.IntN(26)))
		}
		words[i] = b.String()
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	const fileSize = 1 << 20
	for n := 0; int64(n)*fileSize < size; n++ {
		want := min(fileSize, size-int64(n)*fileSize)
		var content bytes.Buffer
		for int64(content.Len()) < want {
			if rng.IntN(24) == 0 {
				// Some incompressible bytes, as binaries have.
				var raw [16]byte
				for i := range raw {
					raw[i] = byte(rng.Uint32())
				}
				content.Write(raw[:])
			}
			content.WriteString(words[rng.IntN(len(words))])
			content.WriteByte(" \n"[rng.IntN(2)])
		}
		content.Truncate(int(want))
		_ = tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("opt/data/%d/f%04d.txt", seed, n), Mode: 0o644, Size: want, Typeflag: tar.TypeReg})
		_, _ = tw.Write(content.Bytes())
	}
	_ = tw.Close()
	return buf.Bytes()
}

// WriteHostsDir writes containerd hosts.toml files under dir making mirror the first
// host for each upstream registry namespace (e.g. "docker.io", "quay.io"), as a node
// with a pull-through mirror is configured. server is the upstream fallback.
func WriteHostsDir(dir, mirrorURL string, namespaces ...string) error {
	for _, ns := range namespaces {
		d := filepath.Join(dir, ns)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		// The fallback upstream is the mirror too: these machines have no route to the
		// real registries, and a DNS lookup of them would only add timeouts.
		toml := fmt.Sprintf("server = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", mirrorURL, mirrorURL)
		if err := os.WriteFile(filepath.Join(d, "hosts.toml"), []byte(toml), 0o644); err != nil {
			return err
		}
	}
	return nil
}
