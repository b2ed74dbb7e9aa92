package cache

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/precache/precache/internal/manifest"
)

// ErrDeadPath marks a registry error that took its time: the registry did not answer
// (name, connection, TLS, first byte) within the adapter's deadline, or stopped sending a
// download. Adapters wrap it together with ErrUnavailable, and it is not retried: a path
// that stayed silent for seconds will not answer in the seconds a retry waits, and the
// next source (a bundle) should not wait for it.
var ErrDeadPath = errors.New("no answer in time")

// Retry is the backoff applied to transient (ErrUnavailable) registry errors that answered
// quickly (5xx, a reset or refused connection); ErrDeadPath is not retried.
type Retry struct {
	// Attempts is the total number of tries, at least 1.
	Attempts int
	// Initial is the first wait; each following wait doubles, up to Max.
	Initial, Max time.Duration
}

// DefaultRetry rides out a registry restart without hiding a registry that is down:
// four tries over about 3.5 s.
var DefaultRetry = Retry{Attempts: 4, Initial: 500 * time.Millisecond, Max: 4 * time.Second}

// Options tune an Ensurer.
type Options struct {
	// Parallel is how many images are worked on at once (default 4).
	Parallel int
	Retry    Retry
	Logger   *zap.Logger
	// Offline never contacts a registry: images that would need a pull fail with ErrOffline.
	// A bootstrap that fell back to a bundle finishes the job this way.
	Offline bool
}

// ErrOffline: the image would need a pull, and the registry is not to be used.
var ErrOffline = errors.New("not in containerd (nor in the bundle), and the registry is not used")

// Ensurer makes image sets right in a Store.
type Ensurer struct {
	store Store
	opts  Options
	log   *zap.Logger
}

// NewEnsurer returns an Ensurer working on store.
func NewEnsurer(store Store, opts Options) *Ensurer {
	if opts.Parallel <= 0 {
		opts.Parallel = 4
	}
	if opts.Retry.Attempts <= 0 {
		opts.Retry = DefaultRetry
	}
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	return &Ensurer{store: store, opts: opts, log: log}
}

// Action is what Ensure did to an image.
type Action string

const (
	ActionNone     Action = "none"     // already right: nothing touched, no network
	ActionPulled   Action = "pulled"   // fetched from the registry, unpacked, recorded, pinned
	ActionUnpacked Action = "unpacked" // content was stored but not unpacked
	ActionRecorded Action = "recorded" // names or pin labels were added
	ActionImported Action = "imported" // came from a bundle (a local source)
)

// Result is the outcome for one image.
type Result struct {
	Image    manifest.Image
	Digest   digest.Digest
	Actions  []Action
	Duration time.Duration
	Err      error
}

// Ensure makes every image of set present, verified, complete, unpacked and pinned,
// working on up to Options.Parallel images at once. It returns one Result per image,
// in the order of set, and an error naming every image that could not be made right.
func (e *Ensurer) Ensure(ctx context.Context, set []manifest.Image) ([]Result, error) {
	results := make([]Result, len(set))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(e.opts.Parallel)
	for i, img := range set {
		g.Go(func() error {
			start := time.Now()
			r := e.ensureOne(gctx, img)
			r.Duration = time.Since(start)
			results[i] = r
			// Failures are returned (and so reported) by the caller, not logged here.
			if r.Err == nil {
				e.log.Info("image ready", zap.String("image", img.Ref.String()), zap.String("digest", r.Digest.String()),
					zap.Any("actions", r.Actions), zap.Duration("took", r.Duration))
			}
			return nil // one image's failure must not cancel the others
		})
	}
	_ = g.Wait()
	var errs []error
	for _, r := range results {
		if r.Err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", r.Image.Ref, r.Err))
		}
	}
	if len(errs) > 0 {
		return results, &SetError{Failed: len(errs), Total: len(set), Errs: errs}
	}
	return results, nil
}

// SetError lists every image Ensure could not make right.
type SetError struct {
	Failed, Total int
	Errs          []error
	// What, if set, says what became of the whole set ("bundle rejected, nothing imported").
	What string
}

func (e *SetError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d of %d images not right", e.Failed, e.Total)
	if e.What != "" {
		fmt.Fprintf(&b, " (%s)", e.What)
	}
	b.WriteString(":")
	for _, err := range e.Errs {
		b.WriteString("\n  ")
		b.WriteString(err.Error())
	}
	return b.String()
}

// Unwrap lets errors.Is see the per-image causes.
func (e *SetError) Unwrap() []error { return e.Errs }

func (e *Ensurer) ensureOne(ctx context.Context, img manifest.Image) Result {
	res := Result{Image: img}
	st := inspect(ctx, e.store, img)
	if st.err != nil {
		res.Err = st.err
		return res
	}
	if st.Row.OK() {
		res.Digest = st.Row.Digest
		res.Actions = []Action{ActionNone}
		return res
	}

	// The right content is already here: finish the job without the network. This is the
	// path a node with dead DNS takes after an import, or after someone untagged an image.
	if st.record != nil && st.Row.DigestOK && st.Row.Complete {
		res.Digest = st.Row.Digest
		if !st.Row.Unpacked {
			if err := e.store.Unpack(ctx, st.record.Target); err != nil {
				res.Err = fmt.Errorf("unpacking: %w", err)
				return res
			}
			res.Actions = append(res.Actions, ActionUnpacked)
		}
		changed, err := e.record(ctx, img.Ref, st.record.Target, st.Config, st.records)
		if err != nil {
			res.Err = err
			return res
		}
		if changed {
			res.Actions = append(res.Actions, ActionRecorded)
		}
		return res
	}

	if e.opts.Offline {
		res.Err = ErrOffline
		if st.record != nil && !st.Row.DigestOK {
			res.Err = fmt.Errorf("%w: containerd has %s, expected %s", ErrOffline, st.Row.Digest, img.Ref.Digest)
		}
		return res
	}
	target, err := e.pull(ctx, img, st.records)
	if err != nil {
		res.Err = err
		return res
	}
	res.Digest = target.Digest
	res.Actions = []Action{ActionPulled}
	return res
}

// pull fetches img from its registry under a lease and records it only once verified.
func (e *Ensurer) pull(ctx context.Context, img manifest.Image, existing map[string]Image) (ocispec.Descriptor, error) {
	ctx, done, err := e.store.WithLease(ctx)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	defer func() {
		// Release with a fresh context: the caller's may be cancelled, and an unreleased
		// lease would keep the fetched content forever.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if err := done(rctx); err != nil {
			e.log.Warn("releasing lease", zap.String("image", img.Ref.String()), zap.Error(err))
		}
	}()

	// Resolve the tag when there is one, even if a digest is expected: a tag that has
	// moved away from the locked digest is drift the user must hear about. A reference
	// that names its digest (a spec, the operator's ImageSet) is pulled by it, as the
	// kubelet pulls it.
	resolveRef := img.Ref.TagName()
	if resolveRef == "" || img.ByDigest && img.Ref.Digest != "" {
		resolveRef = img.Ref.DigestName(img.Ref.Digest)
	}
	var target ocispec.Descriptor
	err = e.retry(ctx, img, "resolve", func() error {
		var err error
		target, err = e.store.Resolve(ctx, resolveRef)
		return err
	})
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("resolving: %w", err)
	}
	if want := img.Ref.Digest; want != "" && target.Digest != want {
		src := img.DigestSource
		if src == "" {
			src = "the reference"
		}
		return ocispec.Descriptor{}, fmt.Errorf("%w: the registry serves %s for %s but %s expects %s; nothing was tagged (update the lock, or fix the registry)",
			ErrDigestMismatch, target.Digest, resolveRef, src, want)
	}

	// Fetch by digest: what is stored is exactly what was verified, even if the tag moves meanwhile.
	byDigest := img.Ref.DigestName(target.Digest)
	err = e.retry(ctx, img, "fetch", func() error { return e.store.Fetch(ctx, byDigest, target) })
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("pulling %s: %w", byDigest, err)
	}
	h, err := e.store.Check(ctx, target)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("checking after pull: %w", err)
	}
	if !h.Complete || !h.Unpacked {
		return ocispec.Descriptor{}, fmt.Errorf("%w after pull: complete=%t unpacked=%t missing=%v", ErrIncomplete, h.Complete, h.Unpacked, h.Missing)
	}
	if _, err := e.record(ctx, img.Ref, target, h.Config, existing); err != nil {
		return ocispec.Descriptor{}, err
	}
	return target, nil
}

// Logger is the logger the Ensurer was given (a no-op one if none).
func (e *Ensurer) Logger() *zap.Logger { return e.log }

// Record creates or updates the CRI's names for ref → target (the node platform's config
// digest names the image ID record), pinned, as a pull records them. The caller has
// verified target is complete and unpacked for the node platform. It reports whether
// anything changed.
func (e *Ensurer) Record(ctx context.Context, ref manifest.Ref, target ocispec.Descriptor, config digest.Digest) (bool, error) {
	st := inspect(ctx, e.store, manifest.Image{Ref: ref})
	if st.err != nil {
		return false, st.err
	}
	return e.record(ctx, ref, target, config, st.records)
}

// record creates or updates the names the CRI itself would create for ref → target
// ("repo:tag", "repo@digest" and the image ID "sha256:<config>"), with the pin labels.
// Only precache's labels and the target are written; a pin someone else set stays theirs
// (no LabelPinnedBy), so it is never precache's to remove. It reports whether anything changed.
func (e *Ensurer) record(ctx context.Context, ref manifest.Ref, target ocispec.Descriptor, config digest.Digest, existing map[string]Image) (bool, error) {
	changed := false
	for _, name := range criNames(ref, target.Digest, config) {
		have, ok := existing[name]
		if !ok {
			rec, err := e.store.Image(ctx, name)
			switch {
			case err == nil:
				have, ok = rec, true
			case !errors.Is(err, ErrNotFound):
				return changed, fmt.Errorf("reading image record %s: %w", name, err)
			}
		}
		set := PinLabels()
		if ok && have.Labels[LabelCRIPinned] == "pinned" && have.Labels[LabelPinnedBy] != "true" {
			delete(set, LabelPinnedBy) // pinned by someone else: keep it theirs
		}
		if ok && have.Target.Digest == target.Digest && hasLabels(have.Labels, set) {
			continue
		}
		if err := e.store.Put(ctx, Image{Name: name, Target: target, Labels: set}); err != nil {
			return changed, fmt.Errorf("recording %s: %w", name, err)
		}
		changed = true
	}
	return changed, nil
}

func hasLabels(have, want map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

// criNames are the names a CRI pull of ref creates: "repo:tag" (if tagged), "repo@digest"
// and, once the node platform's config is known, the image ID "sha256:<config>".
func criNames(ref manifest.Ref, d, config digest.Digest) []string {
	names := make([]string, 0, 3)
	if tn := ref.TagName(); tn != "" {
		names = append(names, tn)
	}
	names = append(names, ref.DigestName(d))
	if config != "" {
		names = append(names, config.String())
	}
	return names
}

func (e *Ensurer) retry(ctx context.Context, img manifest.Image, what string, fn func() error) error {
	wait := e.opts.Retry.Initial
	for attempt := 1; ; attempt++ {
		err := fn()
		if err == nil || !errors.Is(err, ErrUnavailable) || errors.Is(err, ErrDeadPath) || attempt >= e.opts.Retry.Attempts {
			return err
		}
		e.log.Info("retrying", zap.String("image", img.Ref.String()), zap.String("step", what),
			zap.Int("attempt", attempt), zap.Duration("wait", wait), zap.Error(err))
		select {
		case <-ctx.Done():
			return errors.Join(err, ctx.Err())
		case <-time.After(wait):
		}
		wait = min(wait*2, e.opts.Retry.Max)
	}
}
