package cache_test

import (
	"errors"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/precache/precache/internal/cache"
	"github.com/precache/precache/internal/cache/cachetest"
	"github.com/precache/precache/internal/manifest"
)

func TestStatus(t *testing.T) {
	t.Parallel()
	const ref = "docker.io/calico/node:v3.28.1"
	other := digest.FromString("what the lock says")
	tests := []struct {
		name string
		// setup prepares the store and returns the image to report on; desc is what the
		// registry serves for ref (pulled unless setup says otherwise).
		setup func(t *testing.T, f *cachetest.Fake, desc ocispec.Descriptor) manifest.Image
		want  func(desc ocispec.Descriptor) cache.Row
		// wantProblem lists what Problem must mention; empty means Problem must be empty.
		wantProblem func(desc ocispec.Descriptor) []string
	}{
		{
			name:  "absent",
			setup: func(*testing.T, *cachetest.Fake, ocispec.Descriptor) manifest.Image { return image(ref) },
			want:  func(ocispec.Descriptor) cache.Row { return cache.Row{Ref: ref} },
			wantProblem: func(ocispec.Descriptor) []string {
				return []string{"not present"}
			},
		},
		{
			name: "absent with expected digest",
			setup: func(*testing.T, *cachetest.Fake, ocispec.Descriptor) manifest.Image {
				return lockedImage(ref, other)
			},
			want: func(ocispec.Descriptor) cache.Row {
				return cache.Row{Ref: ref + "@" + other.String(), Expected: other}
			},
			wantProblem: func(ocispec.Descriptor) []string { return []string{"not present"} },
		},
		{
			name: "present and right",
			setup: func(t *testing.T, f *cachetest.Fake, _ ocispec.Descriptor) manifest.Image {
				ensureOK(t, newEnsurer(f), image(ref))
				return image(ref)
			},
			want: func(desc ocispec.Descriptor) cache.Row {
				return cache.Row{Ref: ref, Digest: desc.Digest, Present: true, DigestOK: true, Complete: true, Unpacked: true, Pinned: true}
			},
		},
		{
			name: "present and right with expected digest",
			setup: func(t *testing.T, f *cachetest.Fake, desc ocispec.Descriptor) manifest.Image {
				ensureOK(t, newEnsurer(f), image(ref))
				return lockedImage(ref, desc.Digest)
			},
			want: func(desc ocispec.Descriptor) cache.Row {
				return cache.Row{Ref: ref + "@" + desc.Digest.String(), Digest: desc.Digest, Expected: desc.Digest,
					Present: true, DigestOK: true, Complete: true, Unpacked: true, Pinned: true}
			},
		},
		{
			name: "digest mismatch",
			setup: func(t *testing.T, f *cachetest.Fake, _ ocispec.Descriptor) manifest.Image {
				ensureOK(t, newEnsurer(f), image(ref))
				return lockedImage(ref, other)
			},
			want: func(desc ocispec.Descriptor) cache.Row {
				return cache.Row{Ref: ref + "@" + other.String(), Digest: desc.Digest, Expected: other,
					Present: true, DigestOK: false, Complete: true, Unpacked: true, Pinned: true}
			},
			wantProblem: func(desc ocispec.Descriptor) []string {
				return []string{desc.Digest.String(), other.String()}
			},
		},
		{
			name: "digest-name record missing",
			setup: func(t *testing.T, f *cachetest.Fake, desc ocispec.Descriptor) manifest.Image {
				ensureOK(t, newEnsurer(f), image(ref))
				f.Delete("docker.io/calico/node@" + desc.Digest.String())
				return image(ref)
			},
			want: func(desc ocispec.Descriptor) cache.Row {
				return cache.Row{Ref: ref, Digest: desc.Digest, Present: false, DigestOK: true, Complete: true, Unpacked: true, Pinned: false}
			},
			wantProblem: func(desc ocispec.Descriptor) []string {
				return []string{"no record docker.io/calico/node@" + desc.Digest.String()}
			},
		},
		{
			name: "unpinned",
			setup: func(t *testing.T, f *cachetest.Fake, desc ocispec.Descriptor) manifest.Image {
				ensureOK(t, newEnsurer(f), image(ref))
				if err := f.Unlabel(t.Context(), ref, cache.LabelCRIPinned, cache.LabelManaged, cache.LabelPinnedBy); err != nil {
					t.Fatal(err)
				}
				return image(ref)
			},
			want: func(desc ocispec.Descriptor) cache.Row {
				return cache.Row{Ref: ref, Digest: desc.Digest, Present: true, DigestOK: true, Complete: true, Unpacked: true, Pinned: false}
			},
			wantProblem: func(ocispec.Descriptor) []string { return []string{"not pinned"} },
		},
		{
			name: "pinned by the CRI but not managed by precache",
			setup: func(t *testing.T, f *cachetest.Fake, desc ocispec.Descriptor) manifest.Image {
				ensureOK(t, newEnsurer(f), image(ref))
				if err := f.Unlabel(t.Context(), "docker.io/calico/node@"+desc.Digest.String(), cache.LabelManaged, cache.LabelPinnedBy); err != nil {
					t.Fatal(err)
				}
				return image(ref)
			},
			want: func(desc ocispec.Descriptor) cache.Row {
				return cache.Row{Ref: ref, Digest: desc.Digest, Present: true, DigestOK: true, Complete: true, Unpacked: true, Pinned: false}
			},
			wantProblem: func(ocispec.Descriptor) []string { return []string{"not pinned"} },
		},
		{
			name: "not unpacked",
			setup: func(t *testing.T, f *cachetest.Fake, desc ocispec.Descriptor) manifest.Image {
				ensureOK(t, newEnsurer(f), image(ref))
				f.DropUnpacked(desc.Digest)
				return image(ref)
			},
			want: func(desc ocispec.Descriptor) cache.Row {
				return cache.Row{Ref: ref, Digest: desc.Digest, Present: true, DigestOK: true, Complete: true, Unpacked: false, Pinned: true}
			},
			wantProblem: func(ocispec.Descriptor) []string { return []string{"not unpacked"} },
		},
		{
			name: "content missing",
			setup: func(t *testing.T, f *cachetest.Fake, desc ocispec.Descriptor) manifest.Image {
				ensureOK(t, newEnsurer(f), image(ref))
				f.DropContent(desc.Digest)
				return image(ref)
			},
			want: func(desc ocispec.Descriptor) cache.Row {
				return cache.Row{Ref: ref, Digest: desc.Digest, Present: true, DigestOK: true, Complete: false, Unpacked: false, Pinned: true}
			},
			wantProblem: func(ocispec.Descriptor) []string { return []string{"1 blobs missing"} },
		},
		{
			name: "digest-only reference",
			setup: func(t *testing.T, f *cachetest.Fake, desc ocispec.Descriptor) manifest.Image {
				img := image("docker.io/calico/node@" + desc.Digest.String())
				ensureOK(t, newEnsurer(f), img)
				return img
			},
			want: func(desc ocispec.Descriptor) cache.Row {
				return cache.Row{Ref: "docker.io/calico/node@" + desc.Digest.String(), Digest: desc.Digest, Expected: desc.Digest,
					Present: true, DigestOK: true, Complete: true, Unpacked: true, Pinned: true}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := cachetest.NewFake()
			desc := f.Publish(ref)
			img := tt.setup(t, f, desc)
			calls := len(f.Calls())

			rows, err := cache.Status(t.Context(), f, []manifest.Image{img})
			if err != nil {
				t.Fatalf("Status: %v", err)
			}
			if len(rows) != 1 {
				t.Fatalf("Status returned %d rows, want 1", len(rows))
			}
			got := rows[0]
			problem := got.Problem
			got.Problem = ""
			if want := tt.want(desc); got != want {
				t.Errorf("Status row:\n got %+v\nwant %+v", got, want)
			}
			var wantProblem []string
			if tt.wantProblem != nil {
				wantProblem = tt.wantProblem(desc)
			}
			if len(wantProblem) == 0 && problem != "" {
				t.Errorf("Problem = %q, want none", problem)
			}
			for _, s := range wantProblem {
				if !strings.Contains(problem, s) {
					t.Errorf("Problem = %q, want it to mention %q", problem, s)
				}
			}
			if ok := rows[0].OK(); ok != (len(wantProblem) == 0) {
				t.Errorf("OK() = %t with Problem %q", ok, problem)
			}
			if len(f.Calls()) != calls {
				t.Errorf("Status made registry calls: %q", f.Calls()[calls:])
			}
			assertNoOpenLeases(t, f)
		})
	}
}

func TestStatusKeepsOrder(t *testing.T) {
	t.Parallel()
	f := cachetest.NewFake()
	var set []manifest.Image
	for _, ref := range []string{"docker.io/calico/node:v3.28.1", "docker.io/calico/cni:v3.28.1", "docker.io/calico/typha:v3.28.1", "quay.io/calico/node:v3.31.0"} {
		f.Publish(ref)
		set = append(set, image(ref))
	}
	ensureOK(t, newEnsurer(f), set[1], set[3])
	rows, err := cache.Status(t.Context(), f, set)
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	if len(rows) != len(set) {
		t.Fatalf("%d rows for %d images", len(rows), len(set))
	}
	for i, r := range rows {
		if r.Ref != set[i].Ref.String() {
			t.Errorf("rows[%d].Ref = %s, want %s", i, r.Ref, set[i].Ref)
		}
		if wantOK := i == 1 || i == 3; r.OK() != wantOK {
			t.Errorf("rows[%d] (%s) OK = %t, want %t", i, r.Ref, r.OK(), wantOK)
		}
	}
}

func TestStatusStoreFailure(t *testing.T) {
	t.Parallel()
	boom := errors.New("containerd: connection reset")
	store := failingImage{Fake: cachetest.NewFake(), err: boom}
	_, err := cache.Status(t.Context(), store, []manifest.Image{image("docker.io/calico/node:v3.28.1")})
	if !errors.Is(err, boom) {
		t.Fatalf("Status error = %v, want %v", err, boom)
	}
	if !strings.Contains(err.Error(), "docker.io/calico/node:v3.28.1") {
		t.Errorf("Status error = %q, want it to name the record", err)
	}
}
