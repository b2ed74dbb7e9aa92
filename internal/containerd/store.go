// Package containerd is the cache.Store adapter over the containerd v2 Go client.
//
// Pulls are client-side (resolver, fetch handlers and the unpacker run in this process,
// the daemon only stores content and applies layers), not through the Transfer API: that
// keeps precache working against containerd 1.6 and 1.7 daemons, where the Transfer service
// does not exist, and lets the core verify a digest before any byte is downloaded.
package containerd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/transfer"
	"github.com/containerd/containerd/v2/core/unpack"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/plugins"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/semaphore"

	"github.com/precache/precache/internal/cache"
)

// Config says which containerd to use and how to reach registries.
type Config struct {
	// Address is containerd's socket, e.g. /run/containerd/containerd.sock.
	Address string
	// Namespace is where images are kept; the CRI (and so the kubelet) looks in k8s.io.
	Namespace string
	// Snapshotter is the CRI's snapshotter (overlayfs by default).
	Snapshotter string
	// Platform is the node platform to fetch layers for and unpack, e.g. "linux/arm64";
	// empty means this machine's.
	Platform string
	// HostsDir is containerd's registry host configuration directory (hosts.toml layout).
	HostsDir string
	// DockerConfig is a docker config.json for registry credentials; empty means
	// $DOCKER_CONFIG/config.json or ~/.docker/config.json when present.
	DockerConfig string
	// MaxConcurrentDownloads bounds layer downloads across all images at once.
	MaxConcurrentDownloads int
	// DialTimeout bounds how long Open waits for the daemon.
	DialTimeout time.Duration
	// DNS, if set, resolves registry names instead of the node's resolver (--dns-fallback).
	DNS *net.Resolver
}

// Store is a cache.Store backed by a containerd daemon.
type Store struct {
	cfg         Config
	client      *containerd.Client
	namespace   string
	snapshotter string
	platform    platforms.MatchComparer
	resolver    remotes.Resolver
}

var _ cache.Store = (*Store)(nil)

// UnreachableError is returned by Open when the daemon cannot be reached.
type UnreachableError struct {
	Address string
	Err     error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("cannot reach containerd at %s: %v; is containerd running? set --containerd-address (or CONTAINERD_ADDRESS)", e.Address, e.Err)
}

func (e *UnreachableError) Unwrap() error { return e.Err }

// Open connects to containerd and checks the daemon answers and has the snapshotter.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	address := strings.TrimPrefix(cfg.Address, "unix://")
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	// A missing socket would otherwise surface as a gRPC dial error after the full timeout.
	if _, err := os.Stat(address); err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, &UnreachableError{Address: address, Err: err}
	}
	client, err := containerd.New(address, containerd.WithDefaultNamespace(cfg.Namespace), containerd.WithTimeout(cfg.DialTimeout))
	if err != nil {
		return nil, &UnreachableError{Address: address, Err: err}
	}
	vctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	if _, err := client.Version(vctx); err != nil {
		client.Close()
		return nil, &UnreachableError{Address: address, Err: grpcCause(err)}
	}

	platform := platforms.Default()
	if cfg.Platform != "" {
		p, err := platforms.Parse(cfg.Platform)
		if err != nil {
			client.Close()
			return nil, fmt.Errorf("invalid --platform %q: %w", cfg.Platform, err)
		}
		platform = platforms.Only(p)
	}
	if err := checkSnapshotter(vctx, client, cfg.Snapshotter); err != nil {
		client.Close()
		return nil, fmt.Errorf("containerd at %s: %w; set --snapshotter to the CRI's (snapshotter in containerd's config)", address, err)
	}

	resolver, err := newResolver(ctx, cfg)
	if err != nil {
		client.Close()
		return nil, err
	}
	return &Store{
		cfg:         cfg,
		client:      client,
		namespace:   cfg.Namespace,
		snapshotter: cfg.Snapshotter,
		platform:    platform,
		resolver:    resolver,
	}, nil
}

// checkSnapshotter fails unless the daemon has the snapshotter loaded: an unknown one
// would otherwise only show up as an unpack error per image, after the downloads.
func checkSnapshotter(ctx context.Context, client *containerd.Client, name string) error {
	resp, err := client.IntrospectionService().Plugins(ctx, fmt.Sprintf("type==%s,id==%s", plugins.SnapshotPlugin, name))
	if err != nil {
		return grpcCause(err)
	}
	for _, p := range resp.Plugins {
		if p.InitErr != nil {
			return fmt.Errorf("snapshotter %q did not load: %s", name, p.InitErr.Message)
		}
		return nil
	}
	return fmt.Errorf("no snapshotter %q", name)
}

// UseDNS makes registry names resolve through r from now on (--dns-fallback).
func (s *Store) UseDNS(ctx context.Context, r *net.Resolver) error {
	cfg := s.cfg
	cfg.DNS = r
	resolver, err := newResolver(ctx, cfg)
	if err != nil {
		return err
	}
	s.cfg, s.resolver = cfg, resolver
	return nil
}

// Close closes the connection to the daemon.
func (s *Store) Close() error { return s.client.Close() }

// Client exposes the underlying client to other adapters (import, export) of this package's callers.
func (s *Store) Client() *containerd.Client { return s.client }

func (s *Store) ctx(ctx context.Context) context.Context {
	return namespaces.WithNamespace(ctx, s.namespace)
}

// Resolve asks the registry (through the hosts.toml mirrors) for ref's descriptor.
func (s *Store) Resolve(ctx context.Context, ref string) (ocispec.Descriptor, error) {
	_, desc, err := s.resolver.Resolve(s.ctx(ctx), ref)
	if err != nil {
		return ocispec.Descriptor{}, classify(err)
	}
	return desc, nil
}

// Image returns the image record called name.
func (s *Store) Image(ctx context.Context, name string) (cache.Image, error) {
	img, err := s.client.ImageService().Get(s.ctx(ctx), name)
	if err != nil {
		if errdefs.IsNotFound(err) {
			return cache.Image{}, fmt.Errorf("image %s: %w", name, cache.ErrNotFound)
		}
		return cache.Image{}, grpcCause(err)
	}
	return cache.Image{Name: img.Name, Target: img.Target, Labels: img.Labels}, nil
}

// Check is `ctr images check` for the node platform plus the unpack state.
func (s *Store) Check(ctx context.Context, target ocispec.Descriptor) (cache.Health, error) {
	ctx = s.ctx(ctx)
	available, _, _, missing, err := images.Check(ctx, s.client.ContentStore(), target, s.platform)
	if err != nil {
		return cache.Health{}, grpcCause(err)
	}
	var h cache.Health
	for _, m := range missing {
		h.Missing = append(h.Missing, m.Digest.String())
	}
	if !available && len(missing) == 0 {
		// The index or the platform's manifest itself is absent.
		h.Missing = append(h.Missing, target.Digest.String())
	}
	h.Complete = available && len(missing) == 0
	if !h.Complete {
		return h, nil
	}
	unpacked, err := s.image(target).IsUnpacked(ctx, s.snapshotter)
	if err != nil {
		return h, fmt.Errorf("checking unpack state in %s: %w", s.snapshotter, grpcCause(err))
	}
	h.Unpacked = unpacked
	return h, nil
}

func (s *Store) image(target ocispec.Descriptor) containerd.Image {
	return containerd.NewImageWithPlatform(s.client, images.Image{Name: target.Digest.String(), Target: target}, s.platform)
}

// Unpack unpacks the node platform's layers of target into the snapshotter.
func (s *Store) Unpack(ctx context.Context, target ocispec.Descriptor) error {
	if err := s.image(target).Unpack(s.ctx(ctx), s.snapshotter); err != nil {
		return grpcCause(err)
	}
	return nil
}

// Put creates the image record, or replaces the target and labels of an existing one.
func (s *Store) Put(ctx context.Context, img cache.Image) error {
	ctx = s.ctx(ctx)
	is := s.client.ImageService()
	rec := images.Image{Name: img.Name, Target: img.Target, Labels: img.Labels}
	for {
		if _, err := is.Create(ctx, rec); err == nil {
			return nil
		} else if !errdefs.IsAlreadyExists(err) {
			return grpcCause(err)
		}
		if _, err := is.Update(ctx, rec); err == nil {
			return nil
		} else if !errdefs.IsNotFound(err) {
			return grpcCause(err)
		}
		// Deleted between Create and Update: create again.
	}
}

// WithLease holds fetched content until done; the lease expires by itself after a day
// should the process die before releasing it.
func (s *Store) WithLease(ctx context.Context) (context.Context, func(context.Context) error, error) {
	lctx, done, err := s.client.WithLease(s.ctx(ctx))
	if err != nil {
		return nil, nil, fmt.Errorf("creating lease: %w", grpcCause(err))
	}
	return lctx, func(ctx context.Context) error { return done(s.ctx(ctx)) }, nil
}

// Fetch downloads target for the node platform and unpacks it while layers arrive, as
// containerd's own client-side pull does; every platform's manifest and config is stored
// too, so the record keeps the registry's index digest and can be exported whole later.
func (s *Store) Fetch(ctx context.Context, ref string, target ocispec.Descriptor) (retErr error) {
	ctx = s.ctx(ctx)
	name := ref
	fetcher, err := s.resolver.Fetcher(ctx, name)
	if err != nil {
		return classify(err)
	}
	store := s.client.ContentStore()

	caps, err := s.client.GetSnapshotterCapabilities(ctx, s.snapshotter)
	if err != nil {
		return grpcCause(err)
	}
	unpacker, err := unpack.NewUnpacker(ctx, store, unpack.WithUnpackPlatform(unpack.Platform{
		Platform:                platforms.All, // manifests are already filtered to the node platform below
		SnapshotterKey:          s.snapshotter,
		Snapshotter:             s.client.SnapshotService(s.snapshotter),
		Applier:                 s.client.DiffService(),
		SnapshotterCapabilities: caps,
	}))
	if err != nil {
		return fmt.Errorf("starting unpacker: %w", err)
	}
	waited := false
	defer func() {
		if !waited {
			if _, err := unpacker.Wait(); err != nil && retErr == nil {
				retErr = fmt.Errorf("unpacking: %w", grpcCause(err))
			}
		}
	}()

	children := images.ChildrenHandler(store)
	children = images.SetChildrenMappedLabels(store, children, nil)
	children = remotes.FilterManifestByPlatformHandler(children, s.platform)
	distSrc, err := docker.AppendDistributionSourceLabel(store, name)
	if err != nil {
		return err
	}
	handler := unpacker.Unpack(images.Handlers(
		remotes.FetchHandler(store, fetcher),
		children,
		distSrc,
	))
	if err := images.Dispatch(ctx, handler, nil, target); err != nil {
		return classify(err)
	}
	waited = true
	res, err := unpacker.Wait()
	if err != nil {
		return fmt.Errorf("unpacking: %w", classify(err))
	}
	if res.Unpacks == 0 {
		// Nothing went through the unpacker (e.g. the platform's layers were already stored
		// from an earlier, interrupted run): unpack from the content store.
		if err := s.Unpack(ctx, target); err != nil {
			return fmt.Errorf("unpacking: %w", err)
		}
	}
	return nil
}

// newResolver builds containerd's own registry resolver from a hosts.toml directory,
// with credentials from a docker config.json.
func newResolver(ctx context.Context, cfg Config) (remotes.Resolver, error) {
	creds, err := dockerCredentials(cfg.DockerConfig)
	if err != nil {
		return nil, err
	}
	hostOpts := withResolver(hostOptions(cfg.HostsDir, creds), cfg.DNS)
	r := docker.NewResolver(docker.ResolverOptions{Hosts: configureHosts(ctx, hostOpts)})
	if ro, ok := r.(remotes.ResolverWithOptions); ok {
		n := cfg.MaxConcurrentDownloads
		if n <= 0 {
			n = 6
		}
		ro.SetOptions(
			transfer.WithDownloadLimiter(semaphore.NewWeighted(int64(n))),
			transfer.WithMaxConcurrentDownloads(1),
		)
	}
	return r, nil
}

// Managed lists the image records precache pinned (label io.precache.managed=true).
func (s *Store) Managed(ctx context.Context) ([]cache.Image, error) {
	imgs, err := s.client.ImageService().List(s.ctx(ctx), `labels."`+cache.LabelManaged+`"==true`)
	if err != nil {
		return nil, grpcCause(err)
	}
	out := make([]cache.Image, 0, len(imgs))
	for _, img := range imgs {
		out = append(out, cache.Image{Name: img.Name, Target: img.Target, Labels: img.Labels})
	}
	return out, nil
}
