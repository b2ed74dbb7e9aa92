// Package containerd is the cache.Store adapter over the containerd v2 Go client.
//
// Resolves are client-side (the core checks a digest before any byte is downloaded). Pulls
// go through the daemon's Transfer service where the daemon serves it and the image can be
// pulled exactly (transfer.go), and are client-side otherwise (resolver, fetch handlers and
// the unpacker in this process, the daemon only storing content and applying layers): the
// path for containerd 1.6, where the Transfer service does not exist.
package containerd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/transfer"
	"github.com/containerd/containerd/v2/core/unpack"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/plugins"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/opencontainers/image-spec/identity"
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
	// RegistryTimeout bounds each registry request until its response headers (name,
	// connection, TLS, first byte), per host of hosts.toml; a host that misses it is dead
	// for a minute. Zero means DefaultRegistryTimeout, negative none.
	RegistryTimeout time.Duration
	// RegistryStallTimeout fails a download that receives nothing for that long. Zero means
	// DefaultRegistryStallTimeout, negative none. A transfer (daemon-side pull) that makes
	// no progress for that long is left to the client-side path.
	RegistryStallTimeout time.Duration
	// PullPath: PullAuto (empty), PullTransfer or PullClient; see transfer.go.
	PullPath PullPath
	// OnPull, if set, hears which path each Fetch took.
	OnPull func(PullEvent)
}

// Store is a cache.Store backed by a containerd daemon.
type Store struct {
	cfg         Config
	client      *containerd.Client
	namespace   string
	snapshotter string
	platform    platforms.MatchComparer
	spec        ocispec.Platform
	resolver    remotes.Resolver
	dead        *deadHosts    // the resolver's registry hosts that did not answer
	xfer        *transferPath // daemon-side pulls (transfer.go)
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

	// platforms.Only(linux/amd64) also matches linux/386 (and arm64 matches arm/v8…v5):
	// it orders, it does not choose. Fetch and Check take the single best match, as the
	// CRI does.
	spec := platforms.DefaultSpec()
	if cfg.Platform != "" {
		p, err := platforms.Parse(cfg.Platform)
		if err != nil {
			client.Close()
			return nil, fmt.Errorf("invalid --platform %q: %w", cfg.Platform, err)
		}
		spec = p
	}
	platform := platforms.Only(spec)
	if err := checkSnapshotter(vctx, client, cfg.Snapshotter); err != nil {
		client.Close()
		return nil, fmt.Errorf("containerd at %s: %w; set --snapshotter to the CRI's (snapshotter in containerd's config)", address, err)
	}

	xfer, err := openTransfer(vctx, client, cfg)
	if err != nil {
		client.Close()
		return nil, fmt.Errorf("containerd at %s: %w", address, err)
	}
	dead := newDeadHosts()
	resolver, err := newResolverWith(ctx, cfg, dead)
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
		spec:        platforms.Normalize(spec),
		resolver:    resolver,
		dead:        dead,
		xfer:        xfer,
	}, nil
}

// checkSnapshotter fails unless the daemon has the snapshotter loaded: an unknown one
// would otherwise only show up as an unpack error per image, after the downloads.
func checkSnapshotter(ctx context.Context, client *containerd.Client, name string) error {
	resp, err := client.IntrospectionService().Plugins(ctx, fmt.Sprintf("type==%s,id==%s", plugins.SnapshotPlugin, name))
	if err != nil {
		return grpcCause(err)
	}
	if len(resp.Plugins) == 0 {
		return fmt.Errorf("no snapshotter %q", name)
	}
	if p := resp.Plugins[0]; p.InitErr != nil {
		return fmt.Errorf("snapshotter %q did not load: %s", name, p.InitErr.Message)
	}
	return nil
}

// Root is containerd's root directory as the daemon reports it (its content plugin's
// root, one level up), for messages about a full disk.
func (s *Store) Root(ctx context.Context) (string, error) {
	resp, err := s.client.IntrospectionService().Plugins(ctx, fmt.Sprintf("type==%s", plugins.ContentPlugin))
	if err != nil {
		return "", grpcCause(err)
	}
	for _, p := range resp.Plugins {
		if r := p.Exports["root"]; r != "" {
			return filepath.Dir(r), nil
		}
	}
	return "", nil
}

// UseDNS makes registry names resolve through r from now on (--dns-fallback).
func (s *Store) UseDNS(ctx context.Context, r *net.Resolver) error {
	cfg := s.cfg
	cfg.DNS = r
	dead := newDeadHosts()
	resolver, err := newResolverWith(ctx, cfg, dead)
	if err != nil {
		return err
	}
	s.cfg, s.resolver, s.dead = cfg, resolver, dead
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

// Check is `ctr images check` for the node platform plus the unpack state: the single
// best-matching manifest (a single-platform manifest must be the node's platform), its
// config and layers stored, and the snapshot the config references for the snapshotter.
func (s *Store) Check(ctx context.Context, target ocispec.Descriptor) (cache.Health, error) {
	ctx = s.ctx(ctx)
	cs := s.client.ContentStore()
	var h cache.Health
	m, problem, err := s.nodeManifest(ctx, target)
	switch {
	case errdefs.IsNotFound(err):
		h.Missing = append(h.Missing, target.Digest.String())
		return h, nil
	case err != nil:
		return h, err
	case problem != "":
		h.Problem = problem
		return h, nil
	}
	if m.Digest != target.Digest {
		if _, err := cs.Info(ctx, m.Digest); errdefs.IsNotFound(err) {
			h.Missing = append(h.Missing, m.Digest.String())
			return h, nil
		} else if err != nil {
			return h, grpcCause(err)
		}
	}
	var mf ocispec.Manifest
	if err := readJSON(ctx, cs, m, &mf); err != nil {
		return h, err
	}
	h.Config = mf.Config.Digest
	for _, d := range append([]ocispec.Descriptor{mf.Config}, mf.Layers...) {
		if _, err := cs.Info(ctx, d.Digest); errdefs.IsNotFound(err) {
			h.Missing = append(h.Missing, d.Digest.String())
		} else if err != nil {
			return h, grpcCause(err)
		}
	}
	h.Complete = len(h.Missing) == 0
	if !h.Complete {
		return h, nil
	}
	h.Unpacked, err = s.unpacked(ctx, mf.Config)
	if err != nil {
		return h, fmt.Errorf("checking unpack state in %s: %w", s.snapshotter, err)
	}
	return h, nil
}

// unpacked follows the config's containerd.io/gc.ref.snapshot.<snapshotter> label to the
// snapshot: it must name the chain of the config's diff IDs and exist. A snapshot that
// exists without the label lives only as long as something else holds it (a lease,
// another image), so it does not count.
func (s *Store) unpacked(ctx context.Context, config ocispec.Descriptor) (bool, error) {
	cs := s.client.ContentStore()
	info, err := cs.Info(ctx, config.Digest)
	if err != nil {
		return false, grpcCause(err)
	}
	key := info.Labels["containerd.io/gc.ref.snapshot."+s.snapshotter]
	if key == "" {
		return false, nil
	}
	var img ocispec.Image
	if err := readJSON(ctx, cs, config, &img); err != nil {
		return false, err
	}
	if chain := identity.ChainID(img.RootFS.DiffIDs).String(); key != chain {
		return false, nil
	}
	if _, err := s.client.SnapshotService(s.snapshotter).Stat(ctx, key); errdefs.IsNotFound(err) {
		return false, nil
	} else if err != nil {
		return false, grpcCause(err)
	}
	return true, nil
}

// nodeManifest picks target's manifest for the node platform: the single best match of an
// index (recursively), or target itself when it is a manifest of the node's platform.
// problem says, in words, why there is none; err wraps NotFound when target is absent.
func (s *Store) nodeManifest(ctx context.Context, target ocispec.Descriptor) (ocispec.Descriptor, string, error) {
	cs := s.client.ContentStore()
	switch {
	case images.IsManifestType(target.MediaType):
		var cfg struct {
			Config ocispec.Descriptor `json:"config"`
		}
		if err := readJSON(ctx, cs, target, &cfg); err != nil {
			return target, "", err
		}
		var img ocispec.Image
		if err := readJSON(ctx, cs, cfg.Config, &img); errdefs.IsNotFound(err) {
			return target, "", nil // reported as a missing blob by the caller
		} else if err != nil {
			return target, "", err
		}
		if p := platforms.Normalize(img.Platform); !platforms.OnlyStrict(s.spec).Match(p) {
			return target, fmt.Sprintf("the image is for %s, not the node's %s", platforms.Format(p), platforms.Format(s.spec)), nil
		}
		return target, "", nil
	case images.IsIndexType(target.MediaType):
		var idx ocispec.Index
		if err := readJSON(ctx, cs, target, &idx); err != nil {
			return target, "", err
		}
		var best *ocispec.Descriptor
		var have []string
		for i, m := range idx.Manifests {
			if m.Platform == nil {
				continue
			}
			have = append(have, platforms.Format(*m.Platform))
			if !s.platform.Match(*m.Platform) {
				continue
			}
			if best == nil || s.platform.Less(*m.Platform, *best.Platform) {
				best = &idx.Manifests[i]
			}
		}
		if best == nil {
			return target, fmt.Sprintf("the index has no manifest for the node's %s (it has %s)", platforms.Format(s.spec), strings.Join(have, ", ")), nil
		}
		if images.IsIndexType(best.MediaType) {
			return s.nodeManifest(ctx, *best)
		}
		return *best, "", nil
	}
	return target, fmt.Sprintf("%s is not an image (media type %s)", target.Digest, target.MediaType), nil
}

// readJSON decodes a small blob (index, manifest, config).
func readJSON(ctx context.Context, cs content.Provider, desc ocispec.Descriptor, v any) error {
	b, err := content.ReadBlob(ctx, cs, desc)
	if err != nil {
		if errdefs.IsNotFound(err) {
			return err
		}
		return grpcCause(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w", desc.Digest, err)
	}
	return nil
}

func (s *Store) image(target ocispec.Descriptor) containerd.Image {
	return containerd.NewImageWithPlatform(s.client, images.Image{Name: target.Digest.String(), Target: target}, s.platform)
}

// Unpack unpacks the node platform's layers of target into the snapshotter.
func (s *Store) Unpack(ctx context.Context, target ocispec.Descriptor) error {
	if err := s.image(target).Unpack(s.ctx(ctx), s.snapshotter); err != nil {
		return classifyStore(err)
	}
	return nil
}

// Put creates the image record, or sets the target and img's labels on the existing one
// through field paths ("target", "labels.<key>"), so labels others set meanwhile (the CRI
// adopting the image, another precache) are neither lost nor written back stale.
func (s *Store) Put(ctx context.Context, img cache.Image) error {
	ctx = s.ctx(ctx)
	is := s.client.ImageService()
	rec := images.Image{Name: img.Name, Target: img.Target, Labels: img.Labels}
	paths := []string{"target"}
	for k := range img.Labels {
		paths = append(paths, "labels."+k)
	}
	for {
		if _, err := is.Create(ctx, rec); err == nil {
			return nil
		} else if !errdefs.IsAlreadyExists(err) {
			return classifyStore(err)
		}
		if _, err := is.Update(ctx, rec, paths...); err == nil {
			return nil
		} else if !errdefs.IsNotFound(err) {
			return classifyStore(err)
		}
		// Deleted between Create and Update: create again.
	}
}

// Unlabel removes labels from the record called name (an Update with only those label
// paths, the labels absent: containerd deletes them).
func (s *Store) Unlabel(ctx context.Context, name string, keys ...string) error {
	if len(keys) == 0 {
		return nil
	}
	paths := make([]string, 0, len(keys))
	for _, k := range keys {
		paths = append(paths, "labels."+k)
	}
	_, err := s.client.ImageService().Update(s.ctx(ctx), images.Image{Name: name}, paths...)
	if errdefs.IsNotFound(err) {
		return fmt.Errorf("image %s: %w", name, cache.ErrNotFound)
	}
	if err != nil {
		return classifyStore(err)
	}
	return nil
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
// Where the daemon can do exactly that, its Transfer service does it (transfer.go).
func (s *Store) Fetch(ctx context.Context, ref string, target ocispec.Descriptor) (retErr error) {
	ctx = s.ctx(ctx)
	if done, err := s.fetchTransfer(ctx, ref, target); done {
		return err
	}
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
	// Every platform's manifest (small) keeps the index exportable whole; only the single
	// best match's config and layers are fetched and unpacked, as the CRI pulls.
	children = s.bestManifestLayers(children)
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

// bestManifestLayers passes on every child of an index (so every platform's manifest and
// config are stored) but the layers of only one manifest: the best match for the node
// platform, as images.LimitManifests(…, 1) chooses it. containerd's
// FilterManifestByPlatformHandler would pass the layers of every matching manifest —
// linux/386 as well as linux/amd64 on an amd64 node.
func (s *Store) bestManifestLayers(f images.HandlerFunc) images.HandlerFunc {
	var chosen sync.Map // manifest digest → true
	return func(ctx context.Context, desc ocispec.Descriptor) ([]ocispec.Descriptor, error) {
		children, err := f(ctx, desc)
		if err != nil {
			return nil, err
		}
		switch {
		case images.IsIndexType(desc.MediaType):
			var matching []ocispec.Descriptor
			for _, c := range children {
				if c.Platform != nil && s.platform.Match(*c.Platform) {
					matching = append(matching, c)
				}
			}
			best, err := images.LimitManifests(func(context.Context, ocispec.Descriptor) ([]ocispec.Descriptor, error) {
				return matching, nil
			}, s.platform, 1)(ctx, desc)
			if err == nil && len(best) == 1 {
				chosen.Store(best[0].Digest, true)
			}
		case images.IsManifestType(desc.MediaType) && desc.Platform != nil:
			if _, ok := chosen.Load(desc.Digest); !ok {
				var cfg []ocispec.Descriptor
				for _, c := range children {
					if images.IsConfigType(c.MediaType) {
						cfg = append(cfg, c)
					}
				}
				return cfg, nil
			}
		}
		return children, nil
	}
}

// newResolver builds containerd's own registry resolver from a hosts.toml directory,
// with credentials from a docker config.json.
func newResolver(ctx context.Context, cfg Config) (remotes.Resolver, error) {
	return newResolverWith(ctx, cfg, newDeadHosts())
}

// newResolverWith is newResolver remembering the hosts that did not answer in dead.
func newResolverWith(ctx context.Context, cfg Config, dead *deadHosts) (remotes.Resolver, error) {
	creds, err := dockerCredentials(cfg.DockerConfig)
	if err != nil {
		return nil, err
	}
	hostOpts := withTransport(hostOptions(cfg.HostsDir, creds), cfg.DNS, deadlineTransport{
		answer: orDefault(cfg.RegistryTimeout, DefaultRegistryTimeout),
		stall:  orDefault(cfg.RegistryStallTimeout, DefaultRegistryStallTimeout),
		dead:   dead,
	})
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
