package cachetest

import (
	"errors"
	"fmt"
	"sync/atomic"
	"testing"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/precache/precache/internal/cache"
	"github.com/precache/precache/internal/manifest"
)

// Harness is what the conformance suite needs of a Store under test.
type Harness struct {
	Store cache.Store
	// Publish makes a new image available as ref ("name:tag") in the registry the store
	// pulls from, and returns the descriptor the registry serves for it.
	Publish func(t *testing.T, ref string) ocispec.Descriptor
	// Repo is the repository prefix the suite names its images under, e.g. "docker.io/conformance".
	Repo string
}

var seq atomic.Int64

func (h Harness) ref(what string) string {
	return fmt.Sprintf("%s/%s:t%d", h.Repo, what, seq.Add(1))
}

// Run runs the conformance suite; newHarness is called once per sub-test.
func Run(t *testing.T, newHarness func(t *testing.T) Harness) {
	t.Run("unknown image is ErrNotFound", func(t *testing.T) {
		h := newHarness(t)
		_, err := h.Store.Image(t.Context(), h.ref("absent"))
		if !errors.Is(err, cache.ErrNotFound) {
			t.Fatalf("Image(absent) = %v, want ErrNotFound", err)
		}
	})

	t.Run("unpublished reference does not resolve", func(t *testing.T) {
		h := newHarness(t)
		_, err := h.Store.Resolve(t.Context(), h.ref("unpublished"))
		if !errors.Is(err, cache.ErrNotFound) {
			t.Fatalf("Resolve(unpublished) = %v, want ErrNotFound", err)
		}
	})

	t.Run("resolve returns the registry's digest", func(t *testing.T) {
		h := newHarness(t)
		ref := h.ref("resolve")
		want := h.Publish(t, ref)
		got, err := h.Store.Resolve(t.Context(), ref)
		if err != nil {
			t.Fatal(err)
		}
		if got.Digest != want.Digest || got.MediaType != want.MediaType {
			t.Fatalf("Resolve = %s %s, want %s %s", got.MediaType, got.Digest, want.MediaType, want.Digest)
		}
	})

	t.Run("absent content is neither complete nor unpacked", func(t *testing.T) {
		h := newHarness(t)
		desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageIndex, Digest: digest.FromString(h.ref("never")), Size: 100}
		got, err := h.Store.Check(t.Context(), desc)
		if err != nil {
			t.Fatal(err)
		}
		if got.Complete || got.Unpacked || len(got.Missing) == 0 {
			t.Fatalf("Check(never fetched) = %+v, want incomplete with missing blobs", got)
		}
	})

	t.Run("fetch then put makes a complete unpacked record", func(t *testing.T) {
		h := newHarness(t)
		ref := h.ref("fetch")
		desc := h.Publish(t, ref)
		r := manifest.MustParseRef(ref)
		ctx, done, err := h.Store.WithLease(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		defer done(t.Context())
		if err := h.Store.Fetch(ctx, r.DigestName(desc.Digest), desc); err != nil {
			t.Fatal(err)
		}
		health, err := h.Store.Check(ctx, desc)
		if err != nil {
			t.Fatal(err)
		}
		if !health.Complete || !health.Unpacked {
			t.Fatalf("Check after Fetch = %+v, want complete and unpacked", health)
		}
		if err := h.Store.Put(ctx, cache.Image{Name: r.TagName(), Target: desc, Labels: cache.PinLabels()}); err != nil {
			t.Fatal(err)
		}
		if err := done(t.Context()); err != nil {
			t.Fatal(err)
		}
		got, err := h.Store.Image(t.Context(), r.TagName())
		if err != nil {
			t.Fatal(err)
		}
		if got.Target.Digest != desc.Digest || got.Labels[cache.LabelCRIPinned] != "pinned" || got.Labels[cache.LabelManaged] != "true" {
			t.Fatalf("Image = %+v, want target %s with pin labels", got, desc.Digest)
		}
		// Updating labels keeps the target.
		got.Labels["extra"] = "x"
		if err := h.Store.Put(t.Context(), got); err != nil {
			t.Fatal(err)
		}
		again, err := h.Store.Image(t.Context(), r.TagName())
		if err != nil {
			t.Fatal(err)
		}
		if again.Labels["extra"] != "x" || again.Target.Digest != desc.Digest {
			t.Fatalf("Image after update = %+v", again)
		}
	})

	t.Run("ensure pulls, pins and is then a no-op", func(t *testing.T) {
		h := newHarness(t)
		set := []manifest.Image{
			{Ref: manifest.MustParseRef(h.ref("ensure-a"))},
			{Ref: manifest.MustParseRef(h.ref("ensure-b"))},
		}
		want := map[string]digest.Digest{}
		for _, img := range set {
			want[img.Ref.String()] = h.Publish(t, img.Ref.String()).Digest
		}
		e := cache.NewEnsurer(h.Store, cache.Options{})
		res, err := e.Ensure(t.Context(), set)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range res {
			if r.Digest != want[r.Image.Ref.String()] || len(r.Actions) != 1 || r.Actions[0] != cache.ActionPulled {
				t.Errorf("first Ensure %s = %s %v, want %s [pulled]", r.Image.Ref, r.Digest, r.Actions, want[r.Image.Ref.String()])
			}
		}
		rows, err := cache.Status(t.Context(), h.Store, set)
		if err != nil {
			t.Fatal(err)
		}
		for _, row := range rows {
			if !row.OK() {
				t.Errorf("status after Ensure: %+v", row)
			}
		}
		res, err = e.Ensure(t.Context(), set)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range res {
			if len(r.Actions) != 1 || r.Actions[0] != cache.ActionNone {
				t.Errorf("second Ensure %s: actions %v, want [none]", r.Image.Ref, r.Actions)
			}
		}
	})

	t.Run("digest mismatch tags nothing", func(t *testing.T) {
		h := newHarness(t)
		ref := h.ref("mismatch")
		h.Publish(t, ref)
		r := manifest.MustParseRef(ref)
		r.Digest = digest.FromString("something else")
		e := cache.NewEnsurer(h.Store, cache.Options{})
		_, err := e.Ensure(t.Context(), []manifest.Image{{Ref: r, DigestSource: "lock"}})
		if !errors.Is(err, cache.ErrDigestMismatch) {
			t.Fatalf("Ensure = %v, want ErrDigestMismatch", err)
		}
		if _, err := h.Store.Image(t.Context(), r.TagName()); !errors.Is(err, cache.ErrNotFound) {
			t.Fatalf("Image(%s) after mismatch = %v, want ErrNotFound", r.TagName(), err)
		}
	})
}
