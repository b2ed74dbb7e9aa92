package bundle

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/precache/precache/internal/cache"
	"github.com/precache/precache/internal/manifest"
)

// Store is an image store that can also take a bundle's blobs.
type Store interface {
	cache.Store
	Sink
	// Adopt sets the garbage-collection references from target to its stored children,
	// so the content lives once a record points at target.
	Adopt(ctx context.Context, target ocispec.Descriptor) error
}

// ImportOptions tune Import.
type ImportOptions struct {
	// Parallel is how many images are unpacked at once (default 4).
	Parallel int
	// BaseName names images the bundle gives only a tag for, or none.
	BaseName string
	// Lock, if set, is checked instead of the bundle's embedded lock.
	Lock *manifest.Lock
	// LockSource names Lock in messages.
	LockSource string
}

// ImportResult reports an import.
type ImportResult struct {
	Bundle  *Result
	Results []cache.Result
	// Notes are things the user should know that are not failures (legacy tars).
	Notes    []string
	Duration time.Duration
}

// ErrPlatformMissing: the bundle does not carry the node's platform for an image.
var ErrPlatformMissing = errors.New("node platform missing from the bundle")

// Import reads a bundle from r into the store and records its images, pinned, exactly as
// a pull would. It is atomic: every blob is verified and every image checked against the
// lock, completeness and unpacked before the first image record is created, so a bundle
// that fails any check leaves the image list as it was. Images already right are skipped;
// a precache bundle whose images are all right is not even read past its index.
//
// Records are made through e, the core, under the names and with the labels a pull makes.
func Import(ctx context.Context, e *cache.Ensurer, store Store, r io.Reader, opts ImportOptions) (*ImportResult, error) {
	start := time.Now()
	if opts.Parallel <= 0 {
		opts.Parallel = 4
	}
	log := e.Logger()
	out := &ImportResult{}
	ctx, done, err := store.WithLease(ctx)
	if err != nil {
		return nil, err
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if err := done(rctx); err != nil {
			log.Warn("releasing lease", zap.Error(err))
		}
	}()

	pipe := newUnpackPipeline(ctx, store, opts.Parallel)
	res, err := Read(ctx, r, store, Options{
		BaseName: opts.BaseName,
		OnBlob:   pipe.onBlob,
		Early: func(ctx context.Context, imgs []Image, embedded *manifest.Lock) (bool, error) {
			lock, _ := pickLock(opts, embedded)
			return allRight(ctx, store, imgs, lock)
		},
	})
	early := pipe.wait()
	if err != nil {
		return nil, err
	}
	out.Bundle = res
	log.Debug("bundle read", zap.String("format", string(res.Format)), zap.Int("blobs", res.Blobs), zap.Int("stored", res.Stored), zap.Duration("since_start", time.Since(start)))
	lock, lockSource := pickLock(opts, res.Lock)
	if res.Skipped {
		for _, img := range res.Images {
			out.Results = append(out.Results, cache.Result{Image: bundleImage(img, "bundle"), Digest: img.Target.Digest, Actions: []cache.Action{cache.ActionNone}})
		}
		out.Duration = time.Since(start)
		return out, nil
	}

	// 1. Verify every image before touching any record.
	type work struct {
		img    Image
		health cache.Health
	}
	var (
		todo []work
		errs []error
	)
	for _, img := range res.Images {
		if img.Name == "" {
			errs = append(errs, fmt.Errorf("image %s has no name: pass --base-name", img.Target.Digest))
			continue
		}
		if want, ok := lock.Lookup(manifest.MustParseRef(img.Name)); ok {
			switch {
			case img.Synthesized:
				out.Notes = append(out.Notes, fmt.Sprintf("%s: a legacy docker save tar does not keep the registry's manifest digest (containerd synthesises one), so it cannot be checked against %s; its config and layer digests were verified instead", img.Name, lockSource))
			case img.Target.Digest != want:
				errs = append(errs, fmt.Errorf("%s: %w: the bundle has %s but %s expects %s", img.Name, cache.ErrDigestMismatch, img.Target.Digest, lockSource, want))
				continue
			}
		}
		if err := store.Adopt(ctx, img.Target); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", img.Name, err))
			continue
		}
		h, err := store.Check(ctx, img.Target)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", img.Name, err))
			continue
		}
		if !h.Complete {
			// Never record an image the kubelet could not start: it would see it present,
			// never pull it, and the container would fail.
			why := h.Problem
			if why == "" {
				why = fmt.Sprintf("missing %v", h.Missing)
			}
			errs = append(errs, fmt.Errorf("%s: %w (%s): bring a bundle made with --platform including this node's", img.Name, ErrPlatformMissing, why))
			continue
		}
		todo = append(todo, work{img: img, health: h})
	}
	if len(errs) > 0 {
		return out, &cache.SetError{Failed: len(errs), Total: len(res.Images), Errs: errs, What: "bundle rejected, nothing imported"}
	}

	// 2. Unpack what the node will run, several images at once: applying layers is
	// CPU-bound in the daemon and one image at a time leaves cores idle.
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(opts.Parallel)
	unpacked := map[digest.Digest]bool{}
	for i, w := range todo {
		if early[w.img.Target.Digest] {
			todo[i].health.Unpacked = true
		}
		if todo[i].health.Unpacked || unpacked[w.img.Target.Digest] {
			continue
		}
		unpacked[w.img.Target.Digest] = true // several names may share a target
		g.Go(func() error {
			if err := store.Unpack(gctx, w.img.Target); err != nil {
				return fmt.Errorf("%s: unpacking: %w", w.img.Name, err)
			}
			return nil
		})
		todo[i].health.Unpacked = true
	}
	if err := g.Wait(); err != nil {
		return out, &cache.SetError{Failed: 1, Total: len(res.Images), What: "bundle rejected, nothing imported", Errs: []error{err}}
	}
	log.Debug("unpacked", zap.Int("images", len(unpacked)), zap.Duration("since_start", time.Since(start)))

	// 3. Only now record the images, under the names a CRI pull would create.
	for _, w := range todo {
		ref := manifest.MustParseRef(w.img.Name)
		ref.Digest = ""
		changed, err := e.Record(ctx, ref, w.img.Target, w.health.Config)
		if err != nil {
			return out, err
		}
		r := cache.Result{Image: bundleImage(w.img, "bundle"), Digest: w.img.Target.Digest, Actions: []cache.Action{cache.ActionNone}}
		if changed {
			r.Actions = []cache.Action{cache.ActionImported}
		}
		out.Results = append(out.Results, r)
	}
	out.Duration = time.Since(start)
	return out, nil
}

func pickLock(opts ImportOptions, embedded *manifest.Lock) (*manifest.Lock, string) {
	if opts.Lock != nil {
		return opts.Lock, opts.LockSource
	}
	return embedded, "the bundle's lock"
}

func bundleImage(img Image, source string) manifest.Image {
	ref := manifest.MustParseRef(img.Name)
	return manifest.Image{Ref: ref, Source: source}
}

// allRight reports whether every image is already right (and matches the lock).
func allRight(ctx context.Context, store cache.Store, imgs []Image, lock *manifest.Lock) (bool, error) {
	set := make([]manifest.Image, 0, len(imgs))
	for _, img := range imgs {
		if img.Name == "" {
			return false, nil
		}
		ref := manifest.MustParseRef(img.Name)
		if want, ok := lock.Lookup(ref); ok && want != img.Target.Digest {
			return false, nil // let the full read report the mismatch
		}
		ref.Digest = img.Target.Digest
		set = append(set, manifest.Image{Ref: ref})
	}
	rows, err := cache.Status(ctx, store, set)
	if err != nil {
		return false, nil
	}
	for _, r := range rows {
		if !r.OK() {
			return false, nil
		}
	}
	return true, nil
}
