// Package cachetest holds an in-memory cache.Store for unit tests of the core and the
// conformance suite that both it and the real containerd adapter pass.
package cachetest

import (
	"context"
	"fmt"
	"io"
	"maps"
	"sync"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/precache/precache/internal/bundle"
	"github.com/precache/precache/internal/cache"
	"github.com/precache/precache/internal/manifest"
)

// Fake is an in-memory image store with an in-memory registry behind it. It models what
// the core's decisions depend on: multi-platform indexes whose node-platform manifest,
// config and layers are stored separately (so an index without the node platform, or
// layers of another platform only, are visible), snapshots referenced from the config,
// leases, and a garbage collector (GC). Failures are injected with the Fail* hooks.
type Fake struct {
	mu sync.Mutex
	// Platform is the node platform (default linux/amd64).
	platform string
	// registry maps "name:tag" and "name@digest" to what the registry serves.
	registry map[string]ocispec.Descriptor
	// blobs describes every blob ever published (the registry's content).
	blobs    map[digest.Digest]blob
	records  map[string]cache.Image
	content  map[digest.Digest]bool
	sizes    map[digest.Digest]int64 // of blobs written through the bundle.Sink
	unpacked map[digest.Digest]bool  // by node-platform manifest digest
	gcRef    map[digest.Digest]bool  // config → its snapshot is referenced (gc.ref.snapshot)
	leases   map[int]map[digest.Digest]bool
	leaseSeq int
	calls    []string

	// FailResolve, if set, is consulted before each Resolve; a non-nil error is returned.
	FailResolve func(ref string, attempt int) error
	// FailFetch, if set, is consulted before each Fetch.
	FailFetch func(ref string, attempt int) error
	attempts  map[string]int
}

type blob struct {
	kind     string // index, manifest, config, layer
	manifest []digest.Digest
	platform string // a manifest's
	config   digest.Digest
	layers   []digest.Digest
}

var (
	_ cache.Store = (*Fake)(nil)
	_ bundle.Sink = (*Fake)(nil)
)

// NewFake returns an empty store for linux/amd64 with an empty registry.
func NewFake() *Fake {
	return &Fake{
		platform: "linux/amd64",
		registry: map[string]ocispec.Descriptor{},
		blobs:    map[digest.Digest]blob{},
		records:  map[string]cache.Image{},
		content:  map[digest.Digest]bool{},
		sizes:    map[digest.Digest]int64{},
		unpacked: map[digest.Digest]bool{},
		gcRef:    map[digest.Digest]bool{},
		leases:   map[int]map[digest.Digest]bool{},
		attempts: map[string]int{},
	}
}

// Publish puts a new multi-platform image (linux/amd64, linux/arm64) under ref
// ("name:tag") in the registry and returns its index descriptor.
func (f *Fake) Publish(ref string) ocispec.Descriptor {
	return f.PublishIndex(ref, "linux/amd64", "linux/arm64")
}

// PublishIndex publishes an index holding one manifest per platform given.
func (f *Fake) PublishIndex(ref string, platforms ...string) ocispec.Descriptor {
	f.mu.Lock()
	defer f.mu.Unlock()
	seed := fmt.Sprintf("%s#%d", ref, len(f.registry))
	var ms []digest.Digest
	for _, p := range platforms {
		ms = append(ms, f.newManifest(seed, p))
	}
	d := digest.FromString(seed + "/index")
	f.blobs[d] = blob{kind: "index", manifest: ms}
	return f.serve(ref, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageIndex, Digest: d, Size: 512})
}

// PublishManifest publishes a single-platform image (no index).
func (f *Fake) PublishManifest(ref, platform string) ocispec.Descriptor {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := f.newManifest(fmt.Sprintf("%s#%d", ref, len(f.registry)), platform)
	return f.serve(ref, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: m, Size: 256})
}

func (f *Fake) newManifest(seed, platform string) digest.Digest {
	c := digest.FromString(seed + "/" + platform + "/config")
	l1, l2 := digest.FromString(seed+"/"+platform+"/l1"), digest.FromString(seed+"/"+platform+"/l2")
	f.blobs[c] = blob{kind: "config"}
	f.blobs[l1], f.blobs[l2] = blob{kind: "layer"}, blob{kind: "layer"}
	m := digest.FromString(seed + "/" + platform + "/manifest")
	f.blobs[m] = blob{kind: "manifest", platform: platform, config: c, layers: []digest.Digest{l1, l2}}
	return m
}

func (f *Fake) serve(ref string, desc ocispec.Descriptor) ocispec.Descriptor {
	r := manifest.MustParseRef(ref)
	f.registry[r.TagName()] = desc
	f.registry[r.DigestName(desc.Digest)] = desc
	return desc
}

// ConfigOf is the node platform's config digest of target (the CRI's image ID).
func (f *Fake) ConfigOf(target digest.Digest) digest.Digest {
	f.mu.Lock()
	defer f.mu.Unlock()
	if m, ok := f.nodeManifest(target); ok {
		return f.blobs[m].config
	}
	return ""
}

// nodeManifest is target's manifest for the node platform: exactly one, as the CRI picks.
func (f *Fake) nodeManifest(target digest.Digest) (digest.Digest, bool) {
	b := f.blobs[target]
	switch b.kind {
	case "manifest":
		return target, b.platform == f.platform
	case "index":
		for _, m := range b.manifest {
			if f.blobs[m].platform == f.platform {
				return m, true
			}
		}
	}
	return "", false
}

// StoreBlobs stores target's index and every manifest and config, plus the layers of the
// platforms given (none: only metadata), as a bundle made for those platforms would.
func (f *Fake) StoreBlobs(target digest.Digest, layersFor ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.storeLocked(target, layersFor, nil)
}

func (f *Fake) storeLocked(target digest.Digest, layersFor []string, lease map[digest.Digest]bool) {
	add := func(d digest.Digest) {
		f.content[d] = true
		if lease != nil {
			lease[d] = true
		}
	}
	add(target)
	ms := []digest.Digest{target}
	if b := f.blobs[target]; b.kind == "index" {
		ms = b.manifest
	}
	for _, m := range ms {
		mb := f.blobs[m]
		add(m)
		add(mb.config)
		for _, p := range layersFor {
			if mb.platform == p {
				for _, l := range mb.layers {
					add(l)
				}
			}
		}
	}
}

// DropContent forgets a blob, as a discard_unpacked_layers GC or a manual delete would.
func (f *Fake) DropContent(d digest.Digest) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.content, d)
}

// DropLayers forgets target's node-platform layers (discard_unpacked_layers).
func (f *Fake) DropLayers(target digest.Digest) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if m, ok := f.nodeManifest(target); ok {
		for _, l := range f.blobs[m].layers {
			delete(f.content, l)
		}
	}
}

// DropUnpacked forgets target's node-platform snapshot.
func (f *Fake) DropUnpacked(target digest.Digest) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if m, ok := f.nodeManifest(target); ok {
		delete(f.unpacked, m)
	}
}

// Delete removes an image record.
func (f *Fake) Delete(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.records, name)
}

// GC collects, as containerd's garbage collector does, every blob and snapshot that no
// image record reaches (record → index → manifests → config → snapshot, and layers) and
// no open lease holds.
func (f *Fake) GC() {
	f.mu.Lock()
	defer f.mu.Unlock()
	live := map[digest.Digest]bool{}
	var walk func(d digest.Digest)
	walk = func(d digest.Digest) {
		if live[d] || !f.content[d] {
			return
		}
		live[d] = true
		b := f.blobs[d]
		for _, m := range b.manifest {
			walk(m)
		}
		if b.kind == "manifest" {
			walk(b.config)
			for _, l := range b.layers {
				walk(l)
			}
		}
	}
	for _, r := range f.records {
		walk(r.Target.Digest)
	}
	leased := map[digest.Digest]bool{}
	for _, l := range f.leases {
		maps.Copy(leased, l)
	}
	for d := range f.content {
		if !live[d] && !leased[d] {
			delete(f.content, d)
		}
	}
	for m := range f.unpacked {
		cfg := f.blobs[m].config
		if (!live[cfg] || !f.gcRef[cfg]) && !leased[m] {
			delete(f.unpacked, m)
		}
	}
}

// Calls returns the registry calls made so far ("resolve REF", "fetch REF").
func (f *Fake) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

// OpenLeases is the number of leases taken and not released.
func (f *Fake) OpenLeases() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.leases)
}

func (f *Fake) Resolve(_ context.Context, ref string) (ocispec.Descriptor, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "resolve "+ref)
	f.attempts["resolve "+ref]++
	if f.FailResolve != nil {
		if err := f.FailResolve(ref, f.attempts["resolve "+ref]); err != nil {
			return ocispec.Descriptor{}, err
		}
	}
	desc, ok := f.registry[ref]
	if !ok {
		return ocispec.Descriptor{}, fmt.Errorf("%s: %w", ref, cache.ErrNotFound)
	}
	return desc, nil
}

func (f *Fake) Image(_ context.Context, name string) (cache.Image, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	img, ok := f.records[name]
	if !ok {
		return cache.Image{}, fmt.Errorf("image %s: %w", name, cache.ErrNotFound)
	}
	img.Labels = maps.Clone(img.Labels)
	return img, nil
}

func (f *Fake) Check(_ context.Context, target ocispec.Descriptor) (cache.Health, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var h cache.Health
	if !f.content[target.Digest] {
		h.Missing = []string{target.Digest.String()}
		return h, nil
	}
	m, ok := f.nodeManifest(target.Digest)
	if !ok {
		if b := f.blobs[target.Digest]; b.kind == "manifest" {
			h.Problem = fmt.Sprintf("the manifest is for %s, not the node's %s", b.platform, f.platform)
		} else {
			h.Problem = "the index has no manifest for the node's platform " + f.platform
		}
		return h, nil
	}
	mb := f.blobs[m]
	for _, d := range append([]digest.Digest{m, mb.config}, mb.layers...) {
		if !f.content[d] {
			h.Missing = append(h.Missing, d.String())
		}
	}
	if f.content[m] {
		h.Config = mb.config
	}
	if len(h.Missing) > 0 {
		return h, nil
	}
	h.Complete = true
	h.Unpacked = f.unpacked[m] && f.gcRef[mb.config]
	return h, nil
}

func (f *Fake) Fetch(ctx context.Context, ref string, target ocispec.Descriptor) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "fetch "+ref)
	f.attempts["fetch "+ref]++
	if f.FailFetch != nil {
		if err := f.FailFetch(ref, f.attempts["fetch "+ref]); err != nil {
			return err
		}
	}
	lease, ok := f.lease(ctx)
	if !ok {
		return fmt.Errorf("fetch %s outside a lease: content could be garbage-collected", ref)
	}
	desc, ok := f.registry[ref]
	if !ok || desc.Digest != target.Digest {
		return fmt.Errorf("%s: %w", ref, cache.ErrNotFound)
	}
	m, ok := f.nodeManifest(target.Digest)
	if !ok {
		return fmt.Errorf("%s: no manifest for %s: %w", ref, f.platform, cache.ErrNotFound)
	}
	f.storeLocked(target.Digest, []string{f.platform}, lease)
	f.unpacked[m], f.gcRef[f.blobs[m].config], lease[m] = true, true, true
	return nil
}

func (f *Fake) Unpack(ctx context.Context, target ocispec.Descriptor) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	m, ok := f.nodeManifest(target.Digest)
	if !ok || !f.content[target.Digest] {
		return fmt.Errorf("unpacking %s: content %w", target.Digest, cache.ErrNotFound)
	}
	for _, l := range f.blobs[m].layers {
		if !f.content[l] {
			return fmt.Errorf("unpacking %s: layer %s %w", target.Digest, l, cache.ErrNotFound)
		}
	}
	f.unpacked[m], f.gcRef[f.blobs[m].config] = true, true
	if lease, ok := f.lease(ctx); ok {
		lease[m] = true
	}
	return nil
}

func (f *Fake) Put(_ context.Context, img cache.Image) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	rec, ok := f.records[img.Name]
	if !ok {
		rec = cache.Image{Name: img.Name, Labels: map[string]string{}}
	}
	rec.Target = img.Target
	maps.Copy(rec.Labels, img.Labels)
	f.records[img.Name] = rec
	return nil
}

func (f *Fake) Unlabel(_ context.Context, name string, keys ...string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	rec, ok := f.records[name]
	if !ok {
		return fmt.Errorf("image %s: %w", name, cache.ErrNotFound)
	}
	for _, k := range keys {
		delete(rec.Labels, k)
	}
	return nil
}

// Has reports whether d is stored at size, and holds it in ctx's lease.
func (f *Fake) Has(ctx context.Context, d digest.Digest, size int64) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.content[d] || (f.sizes[d] != 0 && f.sizes[d] != size) {
		return false, nil
	}
	if lease, ok := f.lease(ctx); ok {
		lease[d] = true
	}
	return true, nil
}

// Write stores size bytes from r, verified against expected, under ctx's lease.
func (f *Fake) Write(ctx context.Context, r io.Reader, size int64, expected digest.Digest) (digest.Digest, error) {
	data, err := io.ReadAll(io.LimitReader(r, size+1))
	if err != nil {
		return "", err
	}
	alg := digest.Canonical
	if expected != "" {
		alg = expected.Algorithm()
	}
	got := alg.FromBytes(data)
	if int64(len(data)) != size || (expected != "" && got != expected) {
		return "", fmt.Errorf("%w: %d bytes with digest %s, declared %d bytes %s (corrupted)", bundle.ErrInvalid, len(data), got, size, expected)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.content[got], f.sizes[got] = true, size
	if lease, ok := f.lease(ctx); ok {
		lease[got] = true
	}
	return got, nil
}

type leaseKey struct{}

// lease is the lease of ctx, if it is one of this store's and still open. Call with mu held.
func (f *Fake) lease(ctx context.Context) (map[digest.Digest]bool, bool) {
	id, ok := ctx.Value(leaseKey{}).(int)
	if !ok {
		return nil, false
	}
	l, ok := f.leases[id]
	return l, ok
}

func (f *Fake) WithLease(ctx context.Context) (context.Context, func(context.Context) error, error) {
	f.mu.Lock()
	f.leaseSeq++
	id := f.leaseSeq
	f.leases[id] = map[digest.Digest]bool{}
	f.mu.Unlock()
	return context.WithValue(ctx, leaseKey{}, id), func(context.Context) error {
		f.mu.Lock()
		delete(f.leases, id)
		f.mu.Unlock()
		return nil
	}, nil
}
