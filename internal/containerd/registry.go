package containerd

import (
	"context"
	"io"
	"sync"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/remotes"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/precache/precache/internal/bundle"
)

// Registry reaches registries exactly as the node's containerd would (hosts.toml mirrors,
// CAs, credentials) but needs no daemon: `precache bundle` runs on any machine.
type Registry struct {
	resolver remotes.Resolver
	mu       sync.Mutex
	fetchers map[string]remotes.Fetcher
}

var _ bundle.Source = (*Registry)(nil)

// NewRegistry builds a registry client from cfg's HostsDir, DockerConfig and MaxConcurrentDownloads.
func NewRegistry(ctx context.Context, cfg Config) (*Registry, error) {
	r, err := newResolver(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return &Registry{resolver: r, fetchers: map[string]remotes.Fetcher{}}, nil
}

// Resolve returns the descriptor ref names.
func (r *Registry) Resolve(ctx context.Context, ref string) (ocispec.Descriptor, error) {
	_, desc, err := r.resolver.Resolve(ctx, ref)
	if err != nil {
		return ocispec.Descriptor{}, classify(err)
	}
	return desc, nil
}

// Open fetches desc from the repository of the image called name.
func (r *Registry) Open(ctx context.Context, name string, desc ocispec.Descriptor) (io.ReadCloser, error) {
	r.mu.Lock()
	f, ok := r.fetchers[name]
	if !ok {
		var err error
		if f, err = r.resolver.Fetcher(ctx, name); err != nil {
			r.mu.Unlock()
			return nil, classify(err)
		}
		r.fetchers[name] = f
	}
	r.mu.Unlock()
	rc, err := f.Fetch(ctx, desc)
	if err != nil {
		return nil, classify(err)
	}
	return rc, nil
}

var _ bundle.Source = (*Store)(nil)

// Open reads desc from the content store (for `precache bundle --from-containerd`).
func (s *Store) Open(ctx context.Context, _ string, desc ocispec.Descriptor) (io.ReadCloser, error) {
	ra, err := s.client.ContentStore().ReaderAt(s.ctx(ctx), desc)
	if err != nil {
		return nil, classify(err)
	}
	return struct {
		io.Reader
		io.Closer
	}{content.NewReader(ra), ra}, nil
}
