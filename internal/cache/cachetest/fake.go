// Package cachetest holds an in-memory cache.Store for unit tests of the core and the
// conformance suite that both it and the real containerd adapter pass.
package cachetest

import (
	"context"
	"fmt"
	"maps"
	"sync"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/precache/precache/internal/cache"
	"github.com/precache/precache/internal/manifest"
)

// Fake is an in-memory image store with an in-memory registry behind it.
// Failures are injected with the Fail* hooks.
type Fake struct {
	mu sync.Mutex
	// registry maps "name:tag" and "name@digest" to what the registry serves.
	registry map[string]ocispec.Descriptor
	records  map[string]cache.Image
	content  map[digest.Digest]bool
	unpacked map[digest.Digest]bool
	leases   int
	calls    []string

	// FailResolve, if set, is consulted before each Resolve; a non-nil error is returned.
	FailResolve func(ref string, attempt int) error
	// FailFetch, if set, is consulted before each Fetch.
	FailFetch func(ref string, attempt int) error
	attempts  map[string]int
}

var _ cache.Store = (*Fake)(nil)

// NewFake returns an empty store with an empty registry.
func NewFake() *Fake {
	return &Fake{
		registry: map[string]ocispec.Descriptor{},
		records:  map[string]cache.Image{},
		content:  map[digest.Digest]bool{},
		unpacked: map[digest.Digest]bool{},
		attempts: map[string]int{},
	}
}

// Publish puts a new image under ref ("name:tag") in the registry and returns its index descriptor.
func (f *Fake) Publish(ref string) ocispec.Descriptor {
	f.mu.Lock()
	defer f.mu.Unlock()
	desc := ocispec.Descriptor{
		MediaType: ocispec.MediaTypeImageIndex,
		Digest:    digest.FromString(fmt.Sprintf("%s#%d", ref, len(f.registry))),
		Size:      512,
	}
	r := manifest.MustParseRef(ref)
	f.registry[r.TagName()] = desc
	f.registry[r.DigestName(desc.Digest)] = desc
	return desc
}

// DropContent forgets target's content, as a discard_unpacked_layers GC would.
func (f *Fake) DropContent(d digest.Digest) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.content, d)
}

// DropUnpacked forgets target's snapshots.
func (f *Fake) DropUnpacked(d digest.Digest) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.unpacked, d)
}

// Delete removes an image record.
func (f *Fake) Delete(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.records, name)
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
	return f.leases
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
	h := cache.Health{Complete: f.content[target.Digest], Unpacked: f.unpacked[target.Digest]}
	if !h.Complete {
		h.Missing = []string{target.Digest.String()}
		h.Unpacked = false
	}
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
	if ctx.Value(leaseKey{}) == nil {
		return fmt.Errorf("fetch %s outside a lease: content could be garbage-collected", ref)
	}
	desc, ok := f.registry[ref]
	if !ok || desc.Digest != target.Digest {
		return fmt.Errorf("%s: %w", ref, cache.ErrNotFound)
	}
	f.content[target.Digest] = true
	f.unpacked[target.Digest] = true
	return nil
}

func (f *Fake) Unpack(_ context.Context, target ocispec.Descriptor) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.content[target.Digest] {
		return fmt.Errorf("unpacking %s: content %w", target.Digest, cache.ErrNotFound)
	}
	f.unpacked[target.Digest] = true
	return nil
}

func (f *Fake) Put(_ context.Context, img cache.Image) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	img.Labels = maps.Clone(img.Labels)
	f.records[img.Name] = img
	return nil
}

type leaseKey struct{}

func (f *Fake) WithLease(ctx context.Context) (context.Context, func(context.Context) error, error) {
	f.mu.Lock()
	f.leases++
	f.mu.Unlock()
	var once sync.Once
	return context.WithValue(ctx, leaseKey{}, true), func(context.Context) error {
		once.Do(func() {
			f.mu.Lock()
			f.leases--
			f.mu.Unlock()
		})
		return nil
	}, nil
}
