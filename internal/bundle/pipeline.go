package bundle

import (
	"context"
	"sync"

	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"
)

// unpackPipeline starts unpacking an image as soon as the bundle has delivered all of its
// node-platform blobs, while later images still stream in: the daemon's layer application
// is the slow part of an import, and it need not wait for the whole bundle. Nothing is
// recorded here; records still wait for every check.
type unpackPipeline struct {
	store Store
	g     *errgroup.Group
	gctx  context.Context

	mu sync.Mutex
	// missing is, per image target, the blobs Check still reported missing.
	missing map[digest.Digest]map[string]bool
	started map[digest.Digest]bool
	done    map[digest.Digest]bool
}

func newUnpackPipeline(ctx context.Context, store Store, parallel int) *unpackPipeline {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(parallel)
	return &unpackPipeline{store: store, g: g, gctx: gctx,
		missing: map[digest.Digest]map[string]bool{}, started: map[digest.Digest]bool{}, done: map[digest.Digest]bool{}}
}

// onBlob is bundle.Options.OnBlob. It runs on the reader's goroutine, so it only does
// cheap bookkeeping and an occasional Check; unpacking runs in the errgroup.
func (p *unpackPipeline) onBlob(ctx context.Context, imgs []Image, d digest.Digest, size int64) {
	for _, img := range imgs {
		t := img.Target.Digest
		p.mu.Lock()
		started := p.started[t]
		miss, tracked := p.missing[t]
		if tracked {
			delete(miss, d.String())
		}
		p.mu.Unlock()
		if started {
			continue
		}
		// Look again when this image's last missing blob arrived, or, until the image's
		// manifests are in, after each small blob (manifests and configs are small).
		if tracked && len(miss) > 0 || !tracked && size > 1<<20 {
			continue
		}
		h, err := p.store.Check(ctx, img.Target)
		if err != nil {
			continue // the final checks will report it
		}
		if !h.Complete {
			set := map[string]bool{}
			for _, m := range h.Missing {
				set[m] = true
			}
			p.mu.Lock()
			if !set[t.String()] { // its manifests are in: the list is now the layers to wait for
				p.missing[t] = set
			}
			p.mu.Unlock()
			continue
		}
		p.mu.Lock()
		p.started[t] = true
		p.mu.Unlock()
		if h.Unpacked {
			p.markDone(t)
			continue
		}
		target := img.Target
		p.g.Go(func() error {
			if err := p.store.Unpack(p.gctx, target); err != nil {
				return err // reported again, with the image's name, by the final unpack
			}
			p.markDone(target.Digest)
			return nil
		})
	}
}

func (p *unpackPipeline) markDone(d digest.Digest) {
	p.mu.Lock()
	p.done[d] = true
	p.mu.Unlock()
}

// wait lets running unpacks finish and reports which targets are unpacked. Errors are
// not returned: an image whose early unpack failed is unpacked again (and reported) later.
func (p *unpackPipeline) wait() map[digest.Digest]bool {
	_ = p.g.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.done
}
