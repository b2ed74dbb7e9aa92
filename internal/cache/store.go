// Package cache is precache's core: it makes an image set present, verified, complete,
// unpacked and pinned in a node's image store, and reports how far from that the store is.
//
// It talks to the world only through the small interfaces in this file. The containerd
// adapter (internal/containerd) implements them for real nodes; cachetest holds an
// in-memory fake and the conformance suite both pass.
package cache

import (
	"context"
	"errors"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Errors adapters map their runtime's errors to. Check them with errors.Is.
var (
	// ErrNotFound: no such image record, or the registry has no such reference.
	ErrNotFound = errors.New("not found")
	// ErrUnavailable: a transient failure (registry down, 5xx, timeout); worth retrying.
	ErrUnavailable = errors.New("unavailable")
	// ErrUnauthorized: the registry refused the credentials (or there were none).
	ErrUnauthorized = errors.New("unauthorized")
	// ErrDigestMismatch: the registry serves another digest than the one expected.
	ErrDigestMismatch = errors.New("digest mismatch")
	// ErrIncomplete: content or unpacked snapshots are missing after a pull.
	ErrIncomplete = errors.New("incomplete")
	// ErrNoSpace: the filesystem under containerd's root is full. Nothing is wrong with
	// the image or the bundle.
	ErrNoSpace = errors.New("containerd's root filesystem is full")
)

// Labels precache sets on every image record it creates. The first two are the CRI's own:
// the CRI plugin treats the image as one of its own, and (containerd ≥ 1.7.3) the kubelet's
// image garbage collector never removes a pinned image.
const (
	LabelCRIManaged = "io.cri-containerd.image"
	LabelCRIPinned  = "io.cri-containerd.pinned"
	// LabelManaged marks a record precache keeps: the agent drops the mark (and its pin,
	// see LabelPinnedBy) once the image is no longer wanted.
	LabelManaged = "io.precache.managed"
	// LabelPinnedBy records that precache set the record's pin. A pin someone else set
	// (the CRI pins its sandbox image itself) is never precache's to remove.
	LabelPinnedBy = "io.precache.pinned"
)

// PinLabels are the labels of a pinned, precache-managed image record whose pin precache set.
func PinLabels() map[string]string {
	return map[string]string{
		LabelCRIManaged: "managed",
		LabelCRIPinned:  "pinned",
		LabelManaged:    "true",
		LabelPinnedBy:   "true",
	}
}

// Image is an image record: a name pointing at a target (an index or a manifest).
type Image struct {
	Name   string
	Target ocispec.Descriptor
	Labels map[string]string
}

// Health is what the store holds of a target for the node's platform.
type Health struct {
	// Complete: the target, the node platform's manifest, config and every layer are stored.
	Complete bool
	// Missing lists the digests of the absent blobs when not Complete.
	Missing []string
	// Problem says why not Complete in words, when the blobs alone do not tell (an index
	// without the node platform, a manifest for another platform).
	Problem string
	// Unpacked: the node platform's layers are unpacked in the snapshotter, and the
	// snapshot is referenced from the config, so it lives as long as the image.
	Unpacked bool
	// Config is the node platform's config digest: the image ID the CRI reports and
	// records as a name of its own. Set when the manifest was found.
	Config digest.Digest
}

// Resolver asks a registry which descriptor a reference names.
type Resolver interface {
	// Resolve returns the descriptor ref names in its registry (a HEAD request).
	Resolve(ctx context.Context, ref string) (ocispec.Descriptor, error)
}

// Store is the node's image store as the core needs it.
type Store interface {
	Resolver
	// Image returns the record called name, or an error wrapping ErrNotFound.
	Image(ctx context.Context, name string) (Image, error)
	// Check reports whether target's content for the node platform is complete and unpacked.
	Check(ctx context.Context, target ocispec.Descriptor) (Health, error)
	// Fetch downloads target (which ref resolved to) for the node platform, plus every
	// platform's manifest, and unpacks it. It creates no image record; call it under WithLease.
	Fetch(ctx context.Context, ref string, target ocispec.Descriptor) error
	// Unpack unpacks target's node-platform layers, already stored, into the snapshotter.
	Unpack(ctx context.Context, target ocispec.Descriptor) error
	// Put creates the image record, or sets the target and img's labels on the existing
	// one, leaving its other labels as they are: the CRI, the agent and a bootstrap may
	// write the same record at the same time, so a record read earlier is never written back.
	Put(ctx context.Context, img Image) error
	// Unlabel removes labels from the record called name, leaving the rest.
	Unlabel(ctx context.Context, name string, keys ...string) error
	// WithLease returns a context under which fetched content survives garbage collection
	// until done is called, by which time image records must reference it.
	WithLease(ctx context.Context) (_ context.Context, done func(context.Context) error, _ error)
}
