package cachetest

import (
	"bytes"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/precache/precache/internal/bundle"
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
	// Platform is the store's node platform, e.g. "linux/amd64".
	Platform string
	// PublishIndex publishes an index holding exactly the platforms given.
	PublishIndex func(t *testing.T, ref string, platforms ...string) ocispec.Descriptor
	// PublishManifest publishes a single-platform image (no index).
	PublishManifest func(t *testing.T, ref, platform string) ocispec.Descriptor
	// GC runs the store's garbage collector to completion.
	GC func(t *testing.T)
	// Blobs is the store as a bundle's sink.
	Blobs bundle.Sink
}

// other is a platform that is not p.
func other(p string) string {
	if p == "linux/arm64" {
		return "linux/amd64"
	}
	return "linux/arm64"
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

	t.Run("an index without the node platform is not complete, and says so", func(t *testing.T) {
		h := newHarness(t)
		ref := h.ref("otherplatform")
		desc := h.PublishIndex(t, ref, other(h.Platform))
		r := manifest.MustParseRef(ref)
		e := cache.NewEnsurer(h.Store, cache.Options{Retry: cache.Retry{Attempts: 1}})
		_, err := e.Ensure(t.Context(), []manifest.Image{{Ref: r}})
		if err == nil {
			t.Fatal("Ensure of an image without the node platform succeeded")
		}
		for _, name := range []string{r.TagName(), r.DigestName(desc.Digest)} {
			if _, err := h.Store.Image(t.Context(), name); !errors.Is(err, cache.ErrNotFound) {
				t.Errorf("Image(%s) = %v, want ErrNotFound: nothing recorded", name, err)
			}
		}
	})

	t.Run("a single manifest for another platform is not complete", func(t *testing.T) {
		h := newHarness(t)
		ref := h.ref("wrongarch")
		desc := h.PublishManifest(t, ref, other(h.Platform))
		r := manifest.MustParseRef(ref)
		e := cache.NewEnsurer(h.Store, cache.Options{Retry: cache.Retry{Attempts: 1}})
		if _, err := e.Ensure(t.Context(), []manifest.Image{{Ref: r}}); err == nil {
			t.Fatal("Ensure of a single manifest for another platform succeeded")
		}
		// Even with its content stored, it is not an image this node can run.
		ctx, done, err := h.Store.WithLease(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		defer done(t.Context())
		_ = h.Store.Fetch(ctx, r.DigestName(desc.Digest), desc)
		health, err := h.Store.Check(ctx, desc)
		if err != nil {
			t.Fatal(err)
		}
		if health.Complete || (health.Problem == "" && len(health.Missing) == 0) {
			t.Fatalf("Check(manifest for %s) = %+v, want not complete, saying why", other(h.Platform), health)
		}
		if _, err := h.Store.Image(t.Context(), r.TagName()); !errors.Is(err, cache.ErrNotFound) {
			t.Errorf("Image(%s) = %v, want ErrNotFound", r.TagName(), err)
		}
	})

	t.Run("ensure makes the three CRI records: tag, digest, image ID", func(t *testing.T) {
		h := newHarness(t)
		ref := h.ref("names")
		desc := h.Publish(t, ref)
		r := manifest.MustParseRef(ref)
		res, err := cache.NewEnsurer(h.Store, cache.Options{}).Ensure(t.Context(), []manifest.Image{{Ref: r}})
		if err != nil {
			t.Fatal(err)
		}
		health, err := h.Store.Check(t.Context(), desc)
		if err != nil {
			t.Fatal(err)
		}
		if health.Config == "" {
			t.Fatalf("Check = %+v, want the config digest", health)
		}
		for _, name := range []string{r.TagName(), r.DigestName(desc.Digest), health.Config.String()} {
			img, err := h.Store.Image(t.Context(), name)
			if err != nil {
				t.Errorf("Image(%s): %v", name, err)
				continue
			}
			if img.Target.Digest != res[0].Digest || img.Labels[cache.LabelCRIPinned] != "pinned" || img.Labels[cache.LabelPinnedBy] != "true" {
				t.Errorf("Image(%s) = %+v, want target %s pinned by precache", name, img, res[0].Digest)
			}
		}
	})

	t.Run("put moves the target and keeps labels others set", func(t *testing.T) {
		h := newHarness(t)
		refA, refB := h.ref("move-a"), h.ref("move-b")
		a, b := h.Publish(t, refA), h.Publish(t, refB)
		name := manifest.MustParseRef(refA).TagName()
		if err := h.Store.Put(t.Context(), cache.Image{Name: name, Target: a, Labels: map[string]string{"other": "x", cache.LabelCRIPinned: "pinned"}}); err != nil {
			t.Fatal(err)
		}
		if err := h.Store.Put(t.Context(), cache.Image{Name: name, Target: b, Labels: map[string]string{cache.LabelManaged: "true"}}); err != nil {
			t.Fatal(err)
		}
		got, err := h.Store.Image(t.Context(), name)
		if err != nil {
			t.Fatal(err)
		}
		if got.Target.Digest != b.Digest || got.Labels["other"] != "x" || got.Labels[cache.LabelCRIPinned] != "pinned" || got.Labels[cache.LabelManaged] != "true" {
			t.Fatalf("after Put moving the target: %+v, want target %s with other, pinned and managed labels", got, b.Digest)
		}
		if err := h.Store.Unlabel(t.Context(), name, cache.LabelCRIPinned); err != nil {
			t.Fatal(err)
		}
		got, err = h.Store.Image(t.Context(), name)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := got.Labels[cache.LabelCRIPinned]; ok || got.Labels["other"] != "x" || got.Target.Digest != b.Digest {
			t.Fatalf("after Unlabel: %+v, want the pin gone and the rest kept", got)
		}
	})

	t.Run("a pin someone else set stays theirs", func(t *testing.T) {
		h := newHarness(t)
		ref := h.ref("theirs")
		desc := h.Publish(t, ref)
		r := manifest.MustParseRef(ref)
		// The CRI pins its sandbox image itself: a record with the pin and no precache labels.
		if err := h.Store.Put(t.Context(), cache.Image{Name: r.TagName(), Target: desc, Labels: map[string]string{cache.LabelCRIPinned: "pinned"}}); err != nil {
			t.Fatal(err)
		}
		if _, err := cache.NewEnsurer(h.Store, cache.Options{}).Ensure(t.Context(), []manifest.Image{{Ref: r}}); err != nil {
			t.Fatal(err)
		}
		got, err := h.Store.Image(t.Context(), r.TagName())
		if err != nil {
			t.Fatal(err)
		}
		if got.Labels[cache.LabelPinnedBy] != "" || got.Labels[cache.LabelCRIPinned] != "pinned" || got.Labels[cache.LabelManaged] != "true" {
			t.Fatalf("record pinned by someone else: %+v, want pinned, managed, and no %s", got.Labels, cache.LabelPinnedBy)
		}
		dig, err := h.Store.Image(t.Context(), r.DigestName(desc.Digest))
		if err != nil {
			t.Fatal(err)
		}
		if dig.Labels[cache.LabelPinnedBy] != "true" {
			t.Fatalf("digest record precache created: %+v, want %s=true", dig.Labels, cache.LabelPinnedBy)
		}
	})

	t.Run("gc takes what a released lease held, and nothing a record references", func(t *testing.T) {
		h := newHarness(t)
		kept, dropped := h.ref("gc-kept"), h.ref("gc-dropped")
		keptDesc, droppedDesc := h.Publish(t, kept), h.Publish(t, dropped)
		ctx, done, err := h.Store.WithLease(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		for ref, desc := range map[string]ocispec.Descriptor{kept: keptDesc, dropped: droppedDesc} {
			if err := h.Store.Fetch(ctx, manifest.MustParseRef(ref).DigestName(desc.Digest), desc); err != nil {
				t.Fatal(err)
			}
		}
		h.GC(t) // under the lease: both survive
		for _, desc := range []ocispec.Descriptor{keptDesc, droppedDesc} {
			if got, err := h.Store.Check(t.Context(), desc); err != nil || !got.Complete || !got.Unpacked {
				t.Fatalf("Check(%s) under the lease after GC = %+v, %v; want complete and unpacked", desc.Digest, got, err)
			}
		}
		if err := h.Store.Put(ctx, cache.Image{Name: manifest.MustParseRef(kept).TagName(), Target: keptDesc}); err != nil {
			t.Fatal(err)
		}
		if err := done(t.Context()); err != nil {
			t.Fatal(err)
		}
		h.GC(t)
		if got, err := h.Store.Check(t.Context(), keptDesc); err != nil || !got.Complete || !got.Unpacked {
			t.Errorf("Check(recorded) after the lease and GC = %+v, %v; want complete and unpacked", got, err)
		}
		if got, err := h.Store.Check(t.Context(), droppedDesc); err != nil || got.Complete {
			t.Errorf("Check(unrecorded) after the lease and GC = %+v, %v; want collected", got, err)
		}
	})

	t.Run("blob sink: write verifies, has holds content in the lease", func(t *testing.T) {
		h := newHarness(t)
		data := []byte(h.ref("blob") + " some layer bytes")
		d := digest.FromBytes(data)
		ctx, done, err := h.Store.WithLease(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if have, err := h.Blobs.Has(ctx, d, int64(len(data))); err != nil || have {
			t.Fatalf("Has(never written) = %t, %v", have, err)
		}
		bad := append([]byte{}, data...)
		bad[0] ^= 1
		if _, err := h.Blobs.Write(ctx, bytes.NewReader(bad), int64(len(bad)), d); !errors.Is(err, bundle.ErrInvalid) {
			t.Fatalf("Write(corrupted) = %v, want ErrInvalid", err)
		}
		if got, err := h.Blobs.Write(ctx, bytes.NewReader(data), int64(len(data)), d); err != nil || got != d {
			t.Fatalf("Write = %s, %v; want %s", got, err, d)
		}
		if have, err := h.Blobs.Has(ctx, d, int64(len(data))); err != nil || !have {
			t.Fatalf("Has(written) = %t, %v", have, err)
		}
		if have, err := h.Blobs.Has(ctx, d, int64(len(data))+1); err != nil || have {
			t.Fatalf("Has(other size) = %t, %v; want false", have, err)
		}
		if err := done(t.Context()); err != nil {
			t.Fatal(err)
		}
		h.GC(t) // nothing references it any more
		ctx2, done2, err := h.Store.WithLease(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		defer done2(t.Context())
		if have, err := h.Blobs.Has(ctx2, d, int64(len(data))); err != nil || have {
			t.Fatalf("Has after the lease was released and GC ran = %t, %v; want collected", have, err)
		}
		// Written again under a new lease, found by Has under a third: GC between must not take it.
		if _, err := h.Blobs.Write(ctx2, bytes.NewReader(data), int64(len(data)), d); err != nil {
			t.Fatal(err)
		}
		ctx3, done3, err := h.Store.WithLease(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		defer done3(t.Context())
		if have, err := h.Blobs.Has(ctx3, d, int64(len(data))); err != nil || !have {
			t.Fatalf("Has = %t, %v", have, err)
		}
		if err := done2(t.Context()); err != nil {
			t.Fatal(err)
		}
		h.GC(t)
		if have, err := h.Blobs.Has(ctx3, d, int64(len(data))); err != nil || !have {
			t.Fatalf("Has after GC with the blob held by Has's lease = %t, %v; want kept", have, err)
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
