package containerd

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/precache/precache/internal/bundle"
)

var _ bundle.Sink = (*Store)(nil)

// Has reports whether the content store holds d at size, and if so adds it to the lease
// in ctx: content nothing references (left by an earlier, failed import) would otherwise
// be garbage-collected between this check and the image record that will reference it.
// The lease is taken by opening a writer with the expected descriptor: containerd adds
// existing content to the lease in the same transaction that finds it, so there is no
// window between "it is there" and "it is held".
func (s *Store) Has(ctx context.Context, d digest.Digest, size int64) (bool, error) {
	ctx = s.ctx(ctx)
	cs := s.client.ContentStore()
	info, err := cs.Info(ctx, d)
	if errdefs.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, grpcCause(err)
	}
	if info.Size != size {
		return false, nil
	}
	if _, ok := leases.FromContext(ctx); !ok {
		return true, nil
	}
	ref := "precache-has-" + d.String()
	w, err := cs.Writer(ctx, content.WithRef(ref), content.WithDescriptor(ocispec.Descriptor{Digest: d, Size: size}))
	if errdefs.IsAlreadyExists(err) {
		return true, nil // present, and now held by the lease
	}
	if err != nil {
		return false, grpcCause(err)
	}
	// Collected since Info: an ingest was opened instead. Drop it; the caller writes the blob.
	_ = w.Close()
	abort(ctx, cs, ref)
	return false, nil
}

// abort drops an ingest, bounded: it runs on error paths, often with a cancelled context.
func abort(ctx context.Context, cs content.Ingester, ref string) {
	m, ok := cs.(content.IngestManager)
	if !ok {
		return
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	_ = m.Abort(actx, ref)
}

var writeSeq atomic.Int64

// Write streams size bytes into the content store. The store verifies the size, and the
// digest when expected is given; otherwise the digest is computed as the bytes go by.
// Call it under WithLease: nothing references the blob until image records are created.
func (s *Store) Write(ctx context.Context, r io.Reader, size int64, expected digest.Digest) (digest.Digest, error) {
	ctx = s.ctx(ctx)
	cs := s.client.ContentStore()
	ref := "precache-import-" + strconv.FormatInt(time.Now().UnixNano(), 36) + "-" + strconv.FormatInt(writeSeq.Add(1), 36)
	if expected != "" {
		ref = "precache-import-" + expected.String()
	}
	if expected != "" {
		// content.WriteBlob copies with 1 MiB buffers (few gRPC messages), verifies size and
		// digest on commit, and takes an existing blob into the lease.
		err := content.WriteBlob(ctx, cs, ref, r, ocispec.Descriptor{Digest: expected, Size: size})
		if err != nil {
			// Drop the ingest: left behind, a later import of the same blob would resume
			// from its bad bytes and fail too.
			abort(ctx, cs, ref)
		}
		if errdefs.IsFailedPrecondition(err) {
			return "", fmt.Errorf("%w: content does not match its digest or size (corrupted): %w", bundle.ErrInvalid, err)
		}
		if err != nil {
			return "", classifyStore(err)
		}
		return expected, nil
	}
	w, err := content.OpenWriter(ctx, cs, content.WithRef(ref))
	if err != nil {
		return "", grpcCause(err)
	}
	defer w.Close()
	// A resumed ingest (an earlier, killed run) may hold a prefix: start over.
	if err := w.Truncate(0); err != nil {
		return "", grpcCause(err)
	}
	n, err := io.CopyBuffer(writerOnly{w}, r, make([]byte, 1<<20))
	if err != nil {
		abort(ctx, cs, ref)
		return "", classifyStore(err)
	}
	if n != size {
		abort(ctx, cs, ref)
		return "", fmt.Errorf("%w: %d bytes, the archive declares %d (truncated?)", bundle.ErrInvalid, n, size)
	}
	got := w.Digest()
	if err := w.Commit(ctx, size, got); err != nil && !errdefs.IsAlreadyExists(err) {
		abort(ctx, cs, ref)
		return "", classifyStore(err)
	}
	return got, nil
}

// writerOnly hides ReadFrom so io.CopyBuffer uses the large buffer.
type writerOnly struct{ io.Writer }

// Adopt labels target and the manifests under it with garbage-collection references to
// their children, as a pull does, so the content stays alive once an image record points
// at target. Children a bundle does not carry (other platforms) are skipped.
func (s *Store) Adopt(ctx context.Context, target ocispec.Descriptor) error {
	ctx = s.ctx(ctx)
	cs := s.client.ContentStore()
	children := images.HandlerFunc(func(ctx context.Context, desc ocispec.Descriptor) ([]ocispec.Descriptor, error) {
		c, err := images.Children(ctx, cs, desc)
		if errdefs.IsNotFound(err) {
			return nil, nil
		}
		return c, err
	})
	if err := images.Walk(ctx, images.SetChildrenLabels(cs, children), target); err != nil {
		return grpcCause(err)
	}
	return nil
}
