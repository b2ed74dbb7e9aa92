package cache_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/precache/precache/internal/cache"
	"github.com/precache/precache/internal/cache/cachetest"
	"github.com/precache/precache/internal/manifest"
)

// fastRetry keeps retry tests fast while still exercising the backoff.
var fastRetry = cache.Retry{Attempts: 4, Initial: time.Millisecond, Max: 2 * time.Millisecond}

func newEnsurer(store cache.Store) *cache.Ensurer {
	return cache.NewEnsurer(store, cache.Options{Retry: fastRetry})
}

func image(ref string) manifest.Image {
	return manifest.Image{Ref: manifest.MustParseRef(ref), Source: "test"}
}

func lockedImage(ref string, d digest.Digest) manifest.Image {
	img := image(ref)
	img.Ref.Digest, img.DigestSource = d, "precache.lock"
	return img
}

func actions(results []cache.Result) [][]cache.Action {
	out := make([][]cache.Action, len(results))
	for i, r := range results {
		out[i] = r.Actions
	}
	return out
}

// ensureOK runs Ensure and fails the test on any error.
func ensureOK(t *testing.T, e *cache.Ensurer, set ...manifest.Image) []cache.Result {
	t.Helper()
	results, err := e.Ensure(t.Context(), set)
	if err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	if len(results) != len(set) {
		t.Fatalf("Ensure returned %d results for %d images", len(results), len(set))
	}
	return results
}

// assertStatusOK checks that Status sees every image of set exactly right.
func assertStatusOK(t *testing.T, store cache.Store, set ...manifest.Image) {
	t.Helper()
	rows, err := cache.Status(t.Context(), store, set)
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	for _, r := range rows {
		if !r.OK() {
			t.Errorf("after Ensure, %s is not right: %+v", r.Ref, r)
		}
	}
}

func assertNoOpenLeases(t *testing.T, f *cachetest.Fake) {
	t.Helper()
	if n := f.OpenLeases(); n != 0 {
		t.Errorf("%d leases left open", n)
	}
}

// assertRecord checks that name points at d and carries the pin labels.
func assertRecord(t *testing.T, f *cachetest.Fake, name string, d digest.Digest) cache.Image {
	t.Helper()
	rec, err := f.Image(t.Context(), name)
	if err != nil {
		t.Fatalf("record %s: %v", name, err)
	}
	if rec.Target.Digest != d {
		t.Errorf("record %s points at %s, want %s", name, rec.Target.Digest, d)
	}
	for k, v := range cache.PinLabels() {
		if rec.Labels[k] != v {
			t.Errorf("record %s label %s = %q, want %q", name, k, rec.Labels[k], v)
		}
	}
	return rec
}

func assertNoRecord(t *testing.T, f *cachetest.Fake, name string) {
	t.Helper()
	if rec, err := f.Image(t.Context(), name); !errors.Is(err, cache.ErrNotFound) {
		t.Errorf("record %s = %+v, %v; want none", name, rec, err)
	}
}

func TestEnsurePulls(t *testing.T) {
	t.Parallel()
	const ref = "docker.io/calico/node:v3.28.1"
	tests := []struct {
		name string
		// img builds the image to ensure from what the registry serves for ref.
		img func(desc ocispec.Descriptor) manifest.Image
		// resolve is what must be resolved; names the CRI names that must be recorded.
		resolve func(desc ocispec.Descriptor) string
		names   func(desc ocispec.Descriptor) []string
	}{
		{
			name:    "tag",
			img:     func(ocispec.Descriptor) manifest.Image { return image(ref) },
			resolve: func(ocispec.Descriptor) string { return ref },
			names: func(desc ocispec.Descriptor) []string {
				return []string{ref, "docker.io/calico/node@" + desc.Digest.String()}
			},
		},
		{
			name:    "tag with locked digest resolves the tag",
			img:     func(desc ocispec.Descriptor) manifest.Image { return lockedImage(ref, desc.Digest) },
			resolve: func(ocispec.Descriptor) string { return ref },
			names: func(desc ocispec.Descriptor) []string {
				return []string{ref, "docker.io/calico/node@" + desc.Digest.String()}
			},
		},
		{
			name:    "familiar form",
			img:     func(ocispec.Descriptor) manifest.Image { return image("calico/node:v3.28.1") },
			resolve: func(ocispec.Descriptor) string { return ref },
			names: func(desc ocispec.Descriptor) []string {
				return []string{ref, "docker.io/calico/node@" + desc.Digest.String()}
			},
		},
		{
			name: "digest only",
			img: func(desc ocispec.Descriptor) manifest.Image {
				return image("docker.io/calico/node@" + desc.Digest.String())
			},
			resolve: func(desc ocispec.Descriptor) string { return "docker.io/calico/node@" + desc.Digest.String() },
			names: func(desc ocispec.Descriptor) []string {
				return []string{"docker.io/calico/node@" + desc.Digest.String()}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := cachetest.NewFake()
			desc := f.Publish(ref)
			img := tt.img(desc)

			results := ensureOK(t, newEnsurer(f), img)
			r := results[0]
			if want := []cache.Action{cache.ActionPulled}; !reflect.DeepEqual(r.Actions, want) {
				t.Errorf("Actions = %v, want %v", r.Actions, want)
			}
			if r.Digest != desc.Digest {
				t.Errorf("Digest = %s, want %s", r.Digest, desc.Digest)
			}
			if !reflect.DeepEqual(r.Image, img) {
				t.Errorf("Result.Image = %+v, want %+v", r.Image, img)
			}
			wantCalls := []string{"resolve " + tt.resolve(desc), "fetch docker.io/calico/node@" + desc.Digest.String()}
			if got := f.Calls(); !reflect.DeepEqual(got, wantCalls) {
				t.Errorf("Calls = %q, want %q", got, wantCalls)
			}
			for _, name := range tt.names(desc) {
				assertRecord(t, f, name, desc.Digest)
			}
			assertNoOpenLeases(t, f)
			assertStatusOK(t, f, img)
		})
	}
}

func TestEnsureSecondRunIsNoOp(t *testing.T) {
	t.Parallel()
	f := cachetest.NewFake()
	node := f.Publish("docker.io/calico/node:v3.28.1")
	f.Publish("docker.io/calico/cni:v3.28.1")
	set := []manifest.Image{lockedImage("docker.io/calico/node:v3.28.1", node.Digest), image("docker.io/calico/cni:v3.28.1")}
	e := newEnsurer(f)
	ensureOK(t, e, set...)
	callsAfterFirst := f.Calls()

	results := ensureOK(t, e, set...)
	if want := [][]cache.Action{{cache.ActionNone}, {cache.ActionNone}}; !reflect.DeepEqual(actions(results), want) {
		t.Errorf("second run Actions = %v, want %v", actions(results), want)
	}
	if got := f.Calls(); !reflect.DeepEqual(got, callsAfterFirst) {
		t.Errorf("second run made registry calls: %q", got[len(callsAfterFirst):])
	}
	if results[0].Digest != node.Digest {
		t.Errorf("second run Digest = %s, want %s", results[0].Digest, node.Digest)
	}
	assertNoOpenLeases(t, f)
}

func TestEnsureDigestMismatch(t *testing.T) {
	t.Parallel()
	const ref = "docker.io/calico/node:v3.28.1"
	f := cachetest.NewFake()
	served := f.Publish(ref)
	want := digest.FromString("what the lock says")

	results, err := newEnsurer(f).Ensure(t.Context(), []manifest.Image{lockedImage(ref, want)})
	if !errors.Is(err, cache.ErrDigestMismatch) {
		t.Fatalf("Ensure error = %v, want ErrDigestMismatch", err)
	}
	r := results[0]
	if !errors.Is(r.Err, cache.ErrDigestMismatch) {
		t.Errorf("Result.Err = %v, want ErrDigestMismatch", r.Err)
	}
	for _, s := range []string{served.Digest.String(), want.String(), ref, "precache.lock"} {
		if !strings.Contains(r.Err.Error(), s) {
			t.Errorf("Result.Err = %q, want it to name %s", r.Err, s)
		}
	}
	if r.Actions != nil {
		t.Errorf("Actions = %v, want none", r.Actions)
	}
	if wantCalls := []string{"resolve " + ref}; !reflect.DeepEqual(f.Calls(), wantCalls) {
		t.Errorf("Calls = %q, want %q (nothing fetched)", f.Calls(), wantCalls)
	}
	assertNoRecord(t, f, ref)
	assertNoRecord(t, f, "docker.io/calico/node@"+served.Digest.String())
	assertNoRecord(t, f, "docker.io/calico/node@"+want.String())
	assertNoOpenLeases(t, f)
}

func TestEnsureRetriesTransientErrors(t *testing.T) {
	t.Parallel()
	const ref = "docker.io/calico/node:v3.28.1"
	transient := func(attempt int) error {
		if attempt <= 2 {
			return fmt.Errorf("registry returned 503 (attempt %d): %w", attempt, cache.ErrUnavailable)
		}
		return nil
	}
	tests := []struct {
		name      string
		setup     func(f *cachetest.Fake)
		step      string
		wantTries int
	}{
		{
			name: "resolve",
			setup: func(f *cachetest.Fake) {
				f.FailResolve = func(_ string, attempt int) error { return transient(attempt) }
			},
			step:      "resolve",
			wantTries: 3,
		},
		{
			name:      "fetch",
			setup:     func(f *cachetest.Fake) { f.FailFetch = func(_ string, attempt int) error { return transient(attempt) } },
			step:      "fetch",
			wantTries: 3,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := cachetest.NewFake()
			desc := f.Publish(ref)
			tt.setup(f)

			results := ensureOK(t, newEnsurer(f), image(ref))
			if want := []cache.Action{cache.ActionPulled}; !reflect.DeepEqual(results[0].Actions, want) {
				t.Errorf("Actions = %v, want %v", results[0].Actions, want)
			}
			if got := countCalls(f.Calls(), tt.step); got != tt.wantTries {
				t.Errorf("%d %s calls, want %d: %q", got, tt.step, tt.wantTries, f.Calls())
			}
			assertRecord(t, f, ref, desc.Digest)
			assertNoOpenLeases(t, f)
		})
	}
}

func countCalls(calls []string, step string) int {
	n := 0
	for _, c := range calls {
		if strings.HasPrefix(c, step+" ") {
			n++
		}
	}
	return n
}

func TestEnsureDoesNotRetryPermanentErrors(t *testing.T) {
	t.Parallel()
	const ref = "docker.io/calico/node:v3.28.1"
	tests := []struct {
		name    string
		publish bool
		setup   func(f *cachetest.Fake)
		wantErr error
		step    string
	}{
		{
			name:    "not found in the registry",
			publish: false,
			wantErr: cache.ErrNotFound,
			step:    "resolve",
		},
		{
			name:    "resolve not found",
			publish: true,
			setup: func(f *cachetest.Fake) {
				f.FailResolve = func(ref string, _ int) error { return fmt.Errorf("%s: manifest unknown: %w", ref, cache.ErrNotFound) }
			},
			wantErr: cache.ErrNotFound,
			step:    "resolve",
		},
		{
			name:    "resolve unauthorized",
			publish: true,
			setup: func(f *cachetest.Fake) {
				f.FailResolve = func(string, int) error { return fmt.Errorf("401: %w", cache.ErrUnauthorized) }
			},
			wantErr: cache.ErrUnauthorized,
			step:    "resolve",
		},
		{
			name:    "fetch unauthorized",
			publish: true,
			setup: func(f *cachetest.Fake) {
				f.FailFetch = func(string, int) error { return fmt.Errorf("401: %w", cache.ErrUnauthorized) }
			},
			wantErr: cache.ErrUnauthorized,
			step:    "fetch",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := cachetest.NewFake()
			if tt.publish {
				f.Publish(ref)
			}
			if tt.setup != nil {
				tt.setup(f)
			}
			results, err := newEnsurer(f).Ensure(t.Context(), []manifest.Image{image(ref)})
			if !errors.Is(err, tt.wantErr) || !errors.Is(results[0].Err, tt.wantErr) {
				t.Fatalf("Ensure error = %v, result error = %v, want %v", err, results[0].Err, tt.wantErr)
			}
			if got := countCalls(f.Calls(), tt.step); got != 1 {
				t.Errorf("%d %s calls, want exactly 1: %q", got, tt.step, f.Calls())
			}
			assertNoRecord(t, f, ref)
			assertNoOpenLeases(t, f)
		})
	}
}

func TestEnsureRetriesExhausted(t *testing.T) {
	t.Parallel()
	const ref = "docker.io/calico/node:v3.28.1"
	tests := []struct {
		name  string
		setup func(f *cachetest.Fake, down error)
		step  string
	}{
		{
			name:  "resolve",
			setup: func(f *cachetest.Fake, down error) { f.FailResolve = func(string, int) error { return down } },
			step:  "resolve",
		},
		{
			name:  "fetch",
			setup: func(f *cachetest.Fake, down error) { f.FailFetch = func(string, int) error { return down } },
			step:  "fetch",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := cachetest.NewFake()
			f.Publish(ref)
			down := fmt.Errorf("dial tcp: connection refused: %w", cache.ErrUnavailable)
			tt.setup(f, down)

			results, err := newEnsurer(f).Ensure(t.Context(), []manifest.Image{image(ref)})
			if !errors.Is(err, cache.ErrUnavailable) || !errors.Is(results[0].Err, cache.ErrUnavailable) {
				t.Fatalf("Ensure error = %v, result error = %v, want ErrUnavailable", err, results[0].Err)
			}
			if !strings.Contains(results[0].Err.Error(), "connection refused") {
				t.Errorf("Result.Err = %q, want it to carry the last failure", results[0].Err)
			}
			if got := countCalls(f.Calls(), tt.step); got != fastRetry.Attempts {
				t.Errorf("%d %s calls, want %d: %q", got, tt.step, fastRetry.Attempts, f.Calls())
			}
			assertNoRecord(t, f, ref)
			assertNoOpenLeases(t, f)
		})
	}
}

func TestEnsureRetryStopsWhenCancelled(t *testing.T) {
	t.Parallel()
	const ref = "docker.io/calico/node:v3.28.1"
	f := cachetest.NewFake()
	f.Publish(ref)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	f.FailResolve = func(string, int) error {
		cancel()
		return cache.ErrUnavailable
	}
	e := cache.NewEnsurer(f, cache.Options{Retry: cache.Retry{Attempts: 4, Initial: time.Hour, Max: time.Hour}})

	done := make(chan struct{})
	var results []cache.Result
	var err error
	go func() {
		defer close(done)
		results, err = e.Ensure(ctx, []manifest.Image{image(ref)})
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Ensure kept waiting to retry after its context was cancelled")
	}
	if !errors.Is(err, context.Canceled) || !errors.Is(err, cache.ErrUnavailable) {
		t.Errorf("Ensure error = %v, want context.Canceled and ErrUnavailable", err)
	}
	if got := countCalls(f.Calls(), "resolve"); got != 1 {
		t.Errorf("%d resolve calls, want 1", got)
	}
	if results[0].Err == nil {
		t.Error("Result.Err is nil")
	}
	assertNoOpenLeases(t, f)
}

func TestEnsureOneFailureDoesNotStopOthers(t *testing.T) {
	t.Parallel()
	for _, parallel := range []int{1, 4} {
		t.Run(fmt.Sprintf("parallel %d", parallel), func(t *testing.T) {
			t.Parallel()
			f := cachetest.NewFake()
			node := f.Publish("docker.io/calico/node:v3.28.1")
			typha := f.Publish("docker.io/calico/typha:v3.28.1")
			f.Publish("docker.io/calico/kube-controllers:v3.28.1") // but locked to another digest
			set := []manifest.Image{
				image("docker.io/calico/cni:v3.28.1"), // not published: ErrNotFound
				image("docker.io/calico/node:v3.28.1"),
				lockedImage("docker.io/calico/kube-controllers:v3.28.1", digest.FromString("stale lock")),
				image("docker.io/calico/typha:v3.28.1"),
			}
			e := cache.NewEnsurer(f, cache.Options{Parallel: parallel, Retry: fastRetry})
			results, err := e.Ensure(t.Context(), set)

			var setErr *cache.SetError
			if !errors.As(err, &setErr) {
				t.Fatalf("Ensure error = %v (%T), want a *cache.SetError", err, err)
			}
			if setErr.Failed != 2 || setErr.Total != 4 || len(setErr.Errs) != 2 {
				t.Errorf("SetError = %d of %d with %d errors, want 2 of 4 with 2", setErr.Failed, setErr.Total, len(setErr.Errs))
			}
			if !errors.Is(err, cache.ErrNotFound) || !errors.Is(err, cache.ErrDigestMismatch) {
				t.Errorf("errors.Is through the SetError fails for ErrNotFound or ErrDigestMismatch: %v", err)
			}
			if errors.Is(err, cache.ErrUnavailable) {
				t.Errorf("errors.Is(SetError, ErrUnavailable) = true, want false")
			}
			msg := err.Error()
			for _, s := range []string{"2 of 4 images not right", "docker.io/calico/cni:v3.28.1", "docker.io/calico/kube-controllers:v3.28.1"} {
				if !strings.Contains(msg, s) {
					t.Errorf("SetError = %q, want it to contain %q", msg, s)
				}
			}
			for _, s := range []string{"docker.io/calico/node:v3.28.1", "docker.io/calico/typha:v3.28.1"} {
				if strings.Contains(msg, s) {
					t.Errorf("SetError = %q names %s, which was made right", msg, s)
				}
			}

			if len(results) != len(set) {
				t.Fatalf("%d results for %d images", len(results), len(set))
			}
			for i, r := range results {
				if !reflect.DeepEqual(r.Image, set[i]) {
					t.Errorf("results[%d].Image = %s, want %s (results out of order)", i, r.Image.Ref, set[i].Ref)
				}
			}
			if want := [][]cache.Action{nil, {cache.ActionPulled}, nil, {cache.ActionPulled}}; !reflect.DeepEqual(actions(results), want) {
				t.Errorf("Actions = %v, want %v", actions(results), want)
			}
			if results[0].Err == nil || results[1].Err != nil || results[2].Err == nil || results[3].Err != nil {
				t.Errorf("result errors = %v, %v, %v, %v; want only the first and third to fail",
					results[0].Err, results[1].Err, results[2].Err, results[3].Err)
			}
			assertRecord(t, f, "docker.io/calico/node:v3.28.1", node.Digest)
			assertRecord(t, f, "docker.io/calico/typha:v3.28.1", typha.Digest)
			assertNoRecord(t, f, "docker.io/calico/kube-controllers:v3.28.1")
			assertNoOpenLeases(t, f)
		})
	}
}

func TestEnsureRepairs(t *testing.T) {
	t.Parallel()
	const ref = "docker.io/calico/node:v3.28.1"
	tests := []struct {
		name string
		// damage breaks the store after a good pull of ref, which the registry served as desc.
		damage      func(t *testing.T, f *cachetest.Fake, desc ocispec.Descriptor)
		wantActions []cache.Action
		// wantCalls are the registry calls the repair must make.
		wantCalls func(desc ocispec.Descriptor) []string
	}{
		{
			name: "digest record deleted",
			damage: func(_ *testing.T, f *cachetest.Fake, desc ocispec.Descriptor) {
				f.Delete("docker.io/calico/node@" + desc.Digest.String())
			},
			wantActions: []cache.Action{cache.ActionRecorded},
		},
		{
			// ensure.go: "This is the path a node with dead DNS takes after an import, or after
			// someone untagged an image." The digest is locked and its content and digest record
			// are still here, so restoring the tag needs no registry.
			name:        "tag record deleted (image untagged)",
			damage:      func(_ *testing.T, f *cachetest.Fake, _ ocispec.Descriptor) { f.Delete(ref) },
			wantActions: []cache.Action{cache.ActionRecorded},
		},
		{
			name:        "snapshots dropped",
			damage:      func(_ *testing.T, f *cachetest.Fake, desc ocispec.Descriptor) { f.DropUnpacked(desc.Digest) },
			wantActions: []cache.Action{cache.ActionUnpacked},
		},
		{
			name: "snapshots dropped and digest record deleted",
			damage: func(_ *testing.T, f *cachetest.Fake, desc ocispec.Descriptor) {
				f.DropUnpacked(desc.Digest)
				f.Delete("docker.io/calico/node@" + desc.Digest.String())
			},
			wantActions: []cache.Action{cache.ActionUnpacked, cache.ActionRecorded},
		},
		{
			name: "pin labels stripped from the tag record",
			damage: func(t *testing.T, f *cachetest.Fake, desc ocispec.Descriptor) {
				if err := f.Unlabel(t.Context(), ref, cache.LabelCRIPinned, cache.LabelManaged, cache.LabelPinnedBy); err != nil {
					t.Fatal(err)
				}
			},
			wantActions: []cache.Action{cache.ActionRecorded},
		},
		{
			name: "pin label stripped from the digest record",
			damage: func(t *testing.T, f *cachetest.Fake, desc ocispec.Descriptor) {
				name := "docker.io/calico/node@" + desc.Digest.String()
				if err := f.Unlabel(t.Context(), name, cache.LabelCRIPinned, cache.LabelPinnedBy); err != nil {
					t.Fatal(err)
				}
			},
			wantActions: []cache.Action{cache.ActionRecorded},
		},
		{
			name:        "content dropped",
			damage:      func(_ *testing.T, f *cachetest.Fake, desc ocispec.Descriptor) { f.DropContent(desc.Digest) },
			wantActions: []cache.Action{cache.ActionPulled},
			wantCalls: func(desc ocispec.Descriptor) []string {
				return []string{"resolve " + ref, "fetch docker.io/calico/node@" + desc.Digest.String()}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := cachetest.NewFake()
			desc := f.Publish(ref)
			img := lockedImage(ref, desc.Digest)
			e := newEnsurer(f)
			ensureOK(t, e, img)
			before := len(f.Calls())
			tt.damage(t, f, desc)

			results := ensureOK(t, e, img)
			if !reflect.DeepEqual(results[0].Actions, tt.wantActions) {
				t.Errorf("Actions = %v, want %v", results[0].Actions, tt.wantActions)
			}
			if results[0].Digest != desc.Digest {
				t.Errorf("Digest = %s, want %s", results[0].Digest, desc.Digest)
			}
			var wantCalls []string
			if tt.wantCalls != nil {
				wantCalls = tt.wantCalls(desc)
			}
			if got := f.Calls()[before:]; !slices.Equal(got, wantCalls) {
				t.Errorf("repair made registry calls %q, want %q", got, wantCalls)
			}
			assertRecord(t, f, ref, desc.Digest)
			assertRecord(t, f, "docker.io/calico/node@"+desc.Digest.String(), desc.Digest)
			assertNoOpenLeases(t, f)
			assertStatusOK(t, f, img)

			// And now it is right: a third run touches nothing.
			if again := ensureOK(t, e, img); !reflect.DeepEqual(again[0].Actions, []cache.Action{cache.ActionNone}) {
				t.Errorf("run after the repair: Actions = %v, want [none]", again[0].Actions)
			}
		})
	}
}

func TestEnsurePreservesOtherLabels(t *testing.T) {
	t.Parallel()
	const ref = "docker.io/calico/node:v3.28.1"
	extra := map[string]string{"example.com/owner": "platform", "io.cri-containerd.image": "managed"}
	tests := []struct {
		name string
		// damage makes the second Ensure rewrite the records.
		damage      func(f *cachetest.Fake, desc ocispec.Descriptor)
		wantActions []cache.Action
	}{
		{name: "repair without network", damage: func(*cachetest.Fake, ocispec.Descriptor) {}, wantActions: []cache.Action{cache.ActionRecorded}},
		{name: "pull again", damage: func(f *cachetest.Fake, desc ocispec.Descriptor) { f.DropContent(desc.Digest) }, wantActions: []cache.Action{cache.ActionPulled}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := cachetest.NewFake()
			desc := f.Publish(ref)
			e := newEnsurer(f)
			ensureOK(t, e, image(ref))
			// Someone else's labels, and no pin: the next run must pin and keep the rest.
			if err := f.Unlabel(t.Context(), ref, cache.LabelCRIPinned, cache.LabelManaged, cache.LabelPinnedBy); err != nil {
				t.Fatal(err)
			}
			if err := f.Put(t.Context(), cache.Image{Name: ref, Target: desc, Labels: maps.Clone(extra)}); err != nil {
				t.Fatal(err)
			}
			tt.damage(f, desc)

			results := ensureOK(t, e, image(ref))
			if !reflect.DeepEqual(results[0].Actions, tt.wantActions) {
				t.Errorf("Actions = %v, want %v", results[0].Actions, tt.wantActions)
			}
			rec := assertRecord(t, f, ref, desc.Digest)
			want := maps.Clone(extra)
			maps.Copy(want, cache.PinLabels())
			if !reflect.DeepEqual(rec.Labels, want) {
				t.Errorf("labels = %v, want %v", rec.Labels, want)
			}
			assertNoOpenLeases(t, f)
		})
	}
}

func TestEnsureMovesTagToNewDigest(t *testing.T) {
	t.Parallel()
	const ref = "docker.io/calico/node:v3.28.1"
	f := cachetest.NewFake()
	old := f.Publish(ref)
	e := newEnsurer(f)
	ensureOK(t, e, image(ref))

	// The tag is re-pushed and the lock updated: the record must follow the lock.
	moved := f.Publish(ref)
	results := ensureOK(t, e, lockedImage(ref, moved.Digest))
	if want := []cache.Action{cache.ActionPulled}; !reflect.DeepEqual(results[0].Actions, want) {
		t.Errorf("Actions = %v, want %v", results[0].Actions, want)
	}
	assertRecord(t, f, ref, moved.Digest)
	assertRecord(t, f, "docker.io/calico/node@"+moved.Digest.String(), moved.Digest)
	// The old digest name is left alone: it is still a valid CRI record of what it names.
	assertRecord(t, f, "docker.io/calico/node@"+old.Digest.String(), old.Digest)
	assertNoOpenLeases(t, f)
}

// countingLeases wraps a Fake and counts the leases taken.
type countingLeases struct {
	*cachetest.Fake
	taken atomic.Int64
}

func (c *countingLeases) WithLease(ctx context.Context) (context.Context, func(context.Context) error, error) {
	c.taken.Add(1)
	return c.Fake.WithLease(ctx)
}

func TestEnsureReleasesLeases(t *testing.T) {
	t.Parallel()
	f := cachetest.NewFake()
	store := &countingLeases{Fake: f}
	var set []manifest.Image
	for i := range 10 {
		ref := fmt.Sprintf("docker.io/calico/img%d:v3.28.1", i)
		if i%3 != 0 {
			f.Publish(ref) // every third image is absent from the registry
		}
		set = append(set, image(ref))
	}
	f.FailFetch = func(_ string, attempt int) error {
		if attempt == 1 {
			return cache.ErrUnavailable
		}
		return nil
	}
	e := cache.NewEnsurer(store, cache.Options{Parallel: 3, Retry: fastRetry})
	if _, err := e.Ensure(t.Context(), set); !errors.Is(err, cache.ErrNotFound) {
		t.Fatalf("Ensure error = %v, want the absent images' ErrNotFound", err)
	}
	if store.taken.Load() != int64(len(set)) {
		t.Errorf("%d leases taken, want one per pull (%d)", store.taken.Load(), len(set))
	}
	assertNoOpenLeases(t, f)
}

// failingImage is a Fake whose Image lookups fail with err.
type failingImage struct {
	*cachetest.Fake
	err error
}

func (s failingImage) Image(context.Context, string) (cache.Image, error) {
	return cache.Image{}, s.err
}

func TestEnsureStoreFailure(t *testing.T) {
	t.Parallel()
	const ref = "docker.io/calico/node:v3.28.1"
	f := cachetest.NewFake()
	f.Publish(ref)
	boom := errors.New("containerd: connection reset")
	results, err := newEnsurer(failingImage{Fake: f, err: boom}).Ensure(t.Context(), []manifest.Image{image(ref)})
	if !errors.Is(err, boom) || !errors.Is(results[0].Err, boom) {
		t.Fatalf("Ensure error = %v, result error = %v, want %v", err, results[0].Err, boom)
	}
	if calls := f.Calls(); len(calls) != 0 {
		t.Errorf("registry calls %q with the image store failing, want none", calls)
	}
}

// A reference that names its digest (a spec's name:tag@sha256:…, the operator's ImageSet)
// is pulled by that digest, as the kubelet pulls it, even after the tag moved; a lock's
// digest is checked against the tag, so the same move is reported.
func TestEnsureByDigestVersusLock(t *testing.T) {
	t.Parallel()
	f := cachetest.NewFake()
	const ref = "docker.io/example/moved:v1"
	old := f.Publish(ref)
	moved := f.Publish(ref) // the tag now points elsewhere
	if old.Digest == moved.Digest {
		t.Fatal("the fake did not move the tag")
	}
	e := cache.NewEnsurer(f, cache.Options{Retry: cache.Retry{Attempts: 1}})

	r := manifest.MustParseRef(ref)
	r.Digest = old.Digest
	res, err := e.Ensure(t.Context(), []manifest.Image{{Ref: r, DigestSource: "DaemonSet kube-system/calico-node", ByDigest: true}})
	if err != nil {
		t.Fatalf("by digest: %v", err)
	}
	if res[0].Digest != old.Digest {
		t.Fatalf("pulled %s, want the spec's %s", res[0].Digest, old.Digest)
	}
	if calls := f.Calls(); len(calls) == 0 || calls[0] != "resolve docker.io/example/moved@"+old.Digest.String() {
		t.Fatalf("calls %v: want a resolve by digest first", calls)
	}

	locked := manifest.MustParseRef("docker.io/example/moved:v1")
	locked.Digest = old.Digest
	f2 := cachetest.NewFake()
	locked.Digest = f2.Publish(ref).Digest
	f2.Publish(ref) // moved
	_, err = cache.NewEnsurer(f2, cache.Options{Retry: cache.Retry{Attempts: 1}}).Ensure(t.Context(), []manifest.Image{{Ref: locked, DigestSource: "calico.lock"}})
	if !errors.Is(err, cache.ErrDigestMismatch) {
		t.Fatalf("lock against a moved tag: %v, want ErrDigestMismatch", err)
	}
}
