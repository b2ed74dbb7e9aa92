package source

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/precache/precache/internal/cache"
	"github.com/precache/precache/internal/cache/cachetest"
	"github.com/precache/precache/internal/manifest"
)

// node is a fake node: the in-memory store (which models platforms, content, snapshots
// and leases), a registry port whose reachability and pulls the test controls, and a
// bundle port that carries what the test puts in it.
type node struct {
	f        *cachetest.Fake
	online   *cache.Ensurer
	offline  *cache.Ensurer
	reach    bool  // the registry's names resolve
	pullErr  error // the pull fails (a hanging registry gives up with this)
	probes   int   // Reachable calls
	pulls    [][]string
	bundle   map[string]ocispec.Descriptor // reference → what the bundle carries
	imports  int
	holdsErr error
}

func newNode() *node {
	f := cachetest.NewFake()
	return &node{
		f:       f,
		online:  cache.NewEnsurer(f, cache.Options{Retry: cache.Retry{Attempts: 1}}),
		offline: cache.NewEnsurer(f, cache.Options{Offline: true}),
		reach:   true,
		bundle:  map[string]ocispec.Descriptor{},
	}
}

func (n *node) Status(ctx context.Context, set []manifest.Image) ([]cache.Row, error) {
	return cache.Status(ctx, n.f, set)
}

func (n *node) Finish(ctx context.Context, set []manifest.Image) ([]cache.Result, error) {
	return n.offline.Ensure(ctx, set)
}

func (n *node) Reachable(_ context.Context, _ []manifest.Image, _ time.Time) (bool, string) {
	n.probes++
	if !n.reach {
		return false, "registry names did not resolve: docker.io: i/o timeout"
	}
	return true, ""
}

func (n *node) Pull(ctx context.Context, set []manifest.Image) ([]cache.Result, error) {
	var refs []string
	for _, img := range set {
		refs = append(refs, img.Ref.String())
	}
	n.pulls = append(n.pulls, refs)
	if n.pullErr != nil {
		res := make([]cache.Result, len(set))
		for i, img := range set {
			res[i] = cache.Result{Image: img, Err: n.pullErr}
		}
		return res, &cache.SetError{Failed: len(set), Total: len(set), Errs: []error{n.pullErr}}
	}
	return n.online.Ensure(ctx, set)
}

func (n *node) Name() string { return "bundle test.tar" }

func (n *node) Holds(context.Context) (*manifest.Lock, error) {
	if n.holdsErr != nil {
		return nil, n.holdsErr
	}
	l := &manifest.Lock{Images: map[string]digest.Digest{}}
	for ref, d := range n.bundle {
		l.Images[manifest.MustParseRef(ref).String()] = d.Digest
	}
	return l, nil
}

// Import stores and records what the bundle carries, as bundle.Import does.
func (n *node) Import(ctx context.Context) ([]string, error) {
	n.imports++
	ctx, done, err := n.f.WithLease(ctx)
	if err != nil {
		return nil, err
	}
	defer func() { _ = done(ctx) }()
	for ref, d := range n.bundle {
		n.f.StoreBlobs(d.Digest, "linux/amd64")
		if err := n.f.Unpack(ctx, d); err != nil {
			return nil, err
		}
		r := manifest.MustParseRef(ref)
		r.Digest = ""
		if _, err := n.online.Record(ctx, r, d, n.f.ConfigOf(d.Digest)); err != nil {
			return nil, err
		}
	}
	return nil, nil
}

// publish puts count Calico-like images in the registry and returns the set, each with
// its expected digest (as a lock or the cluster gives it).
func (n *node) publish(version string, names ...string) []manifest.Image {
	var set []manifest.Image
	for _, name := range names {
		ref := fmt.Sprintf("docker.io/calico/%s:%s", name, version)
		d := n.f.Publish(ref)
		r := manifest.MustParseRef(ref)
		r.Digest = d.Digest
		set = append(set, manifest.Image{Ref: r, DigestSource: "lock"})
	}
	return set
}

func (n *node) toBundle(set ...manifest.Image) {
	for _, img := range set {
		d, err := n.f.Resolve(context.Background(), img.Ref.DigestName(img.Ref.Digest))
		if err != nil {
			panic(err)
		}
		n.bundle[img.Ref.TagName()] = d
	}
}

func (n *node) decider(local bool) *Decider {
	d := &Decider{Store: n, Registry: n, Deadline: time.Now().Add(2 * time.Second)}
	if local {
		d.Local = n
	}
	return d
}

func assertRight(t *testing.T, n *node, set []manifest.Image) {
	t.Helper()
	rows, err := cache.Status(t.Context(), n.f, set)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rows {
		if !r.OK() {
			t.Errorf("%s not right: %s", r.Ref, r.Problem)
		}
	}
}

func actions(out Outcome) []string {
	var s []string
	for _, r := range out.Results {
		a := "failed"
		if r.Err == nil {
			a = ""
			for i, x := range r.Actions {
				if i > 0 {
					a += "+"
				}
				a += string(x)
			}
		}
		s = append(s, a)
	}
	return s
}

var components = []string{"node", "cni", "kube-controllers", "typha"}

func TestDecide(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		setup func(n *node) []manifest.Image
		local bool
		// want
		path      Path
		fallback  bool
		wantErr   error
		anyErr    bool
		probes    int
		pulls     [][]string // nil: none
		imports   int
		actions   []string
		reasonHas string
		right     bool
	}{
		{
			name: "everything right: no source, no probe",
			setup: func(n *node) []manifest.Image {
				set := n.publish("v3.28.1", components...)
				if _, err := n.online.Ensure(context.Background(), set); err != nil {
					panic(err)
				}
				n.pulls = nil
				return set
			},
			local: true, path: PathLocal, actions: []string{"none", "none", "none", "none"}, right: true,
		},
		{
			name: "current bundle, DNS dead: the bundle and nothing else",
			setup: func(n *node) []manifest.Image {
				set := n.publish("v3.28.1", components...)
				n.toBundle(set...)
				n.reach = false
				return set
			},
			local: true, path: PathBundle, imports: 1, actions: []string{"imported", "imported", "imported", "imported"}, right: true,
		},
		{
			name: "current bundle, hanging registry: never asked",
			setup: func(n *node) []manifest.Image {
				set := n.publish("v3.28.1", components...)
				n.toBundle(set...)
				n.pullErr = fmt.Errorf("%w: no response within 2s", cache.ErrUnavailable)
				return set
			},
			local: true, path: PathBundle, imports: 1, right: true,
		},
		{
			name: "one image in the bundle, three in the registry",
			setup: func(n *node) []manifest.Image {
				set := n.publish("v3.28.1", components...)
				n.toBundle(set[0])
				return set
			},
			local: true, path: PathBundleRegistry, probes: 1, imports: 1,
			pulls:   [][]string{{"docker.io/calico/cni:v3.28.1", "docker.io/calico/kube-controllers:v3.28.1", "docker.io/calico/typha:v3.28.1"}},
			actions: []string{"imported", "pulled", "pulled", "pulled"}, right: true,
		},
		{
			name: "stale bundle (other digests), registry fine: pulled, the bundle left alone",
			setup: func(n *node) []manifest.Image {
				old := n.publish("v3.28.1", components...)
				n.toBundle(old...)
				return n.publish("v3.28.1", components...) // the tags moved on
			},
			local: true, path: PathRegistry, probes: 1, imports: 0,
			pulls: [][]string{nil}, actions: []string{"pulled", "pulled", "pulled", "pulled"}, right: true,
		},
		{
			name: "stale bundle, DNS dead: imported as the fallback, every image named as not right",
			setup: func(n *node) []manifest.Image {
				old := n.publish("v3.28.1", components...)
				n.toBundle(old...)
				set := n.publish("v3.28.1", components...)
				n.reach = false
				return set
			},
			local: true, path: PathBundle, fallback: true, probes: 1, imports: 1, anyErr: true,
			reasonHas: "did not resolve", actions: []string{"failed", "failed", "failed", "failed"},
		},
		{
			name: "partial bundle, DNS dead: what it carries is right, the rest named",
			setup: func(n *node) []manifest.Image {
				set := n.publish("v3.28.1", components...)
				n.toBundle(set[:2]...)
				n.reach = false
				return set
			},
			local: true, path: PathBundle, fallback: true, probes: 1, imports: 1, anyErr: true,
			actions: []string{"imported", "imported", "failed", "failed"},
		},
		{
			name: "registry pull fails, bundle without digests to compare: fallback",
			setup: func(n *node) []manifest.Image {
				set := n.publish("v3.28.1", components...)
				n.toBundle(set...)
				n.pullErr = errors.New("connection reset by peer")
				for i := range set {
					set[i].Ref.Digest = "" // tag only: the registry is asked first
				}
				return set
			},
			local: true, path: PathBundle, fallback: true, probes: 1, imports: 1,
			pulls: [][]string{nil}, reasonHas: "the pull failed: 4 of 4 images not right, first connection reset by peer", right: true,
		},
		{
			name: "DNS dead, no bundle: an error saying so",
			setup: func(n *node) []manifest.Image {
				set := n.publish("v3.28.1", components...)
				n.reach = false
				return set
			},
			local: false, wantErr: ErrNoPath, probes: 1,
		},
		{
			name: "the bundle cannot say what it holds: registry first, bundle as fallback",
			setup: func(n *node) []manifest.Image {
				set := n.publish("v3.28.1", components...)
				n.toBundle(set...)
				n.holdsErr = errors.New("not a precache bundle: no lock")
				n.reach = false
				return set
			},
			local: true, path: PathBundle, fallback: true, probes: 1, imports: 1, right: true,
		},
		{
			name: "untagged but stored: repaired without any source",
			setup: func(n *node) []manifest.Image {
				set := n.publish("v3.28.1", components...)
				if _, err := n.online.Ensure(context.Background(), set); err != nil {
					panic(err)
				}
				n.pulls = nil
				n.f.Delete(set[0].Ref.TagName())
				n.reach = false
				return set
			},
			local: true, path: PathLocal, actions: []string{"recorded", "none", "none", "none"}, right: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			n := newNode()
			set := tt.setup(n)
			out, err := n.decider(tt.local).Run(t.Context(), set)
			switch {
			case tt.wantErr != nil:
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Run = %v, want %v", err, tt.wantErr)
				}
			case tt.anyErr:
				if err == nil {
					t.Fatal("Run succeeded, want an error")
				}
			case err != nil:
				t.Fatalf("Run: %v", err)
			}
			if tt.path != "" && out.Path != tt.path {
				t.Errorf("path %q, want %q (reason %q)", out.Path, tt.path, out.Reason)
			}
			if out.Fallback != tt.fallback {
				t.Errorf("fallback %t, want %t", out.Fallback, tt.fallback)
			}
			if n.probes != tt.probes {
				t.Errorf("%d registry probes, want %d", n.probes, tt.probes)
			}
			if n.imports != tt.imports {
				t.Errorf("%d imports, want %d", n.imports, tt.imports)
			}
			if tt.pulls == nil && len(n.pulls) > 0 {
				t.Errorf("pulled %v, want no pull", n.pulls)
			}
			if tt.pulls != nil && len(n.pulls) != len(tt.pulls) {
				t.Errorf("pulled %v, want %d pulls", n.pulls, len(tt.pulls))
			}
			for i, want := range tt.pulls {
				if want != nil && i < len(n.pulls) {
					got := slices.Clone(n.pulls[i])
					for k := range got {
						got[k], _, _ = strings.Cut(got[k], "@")
					}
					if !slices.Equal(got, want) {
						t.Errorf("pull %d = %v, want %v", i, got, want)
					}
				}
			}
			if tt.actions != nil && !slices.Equal(actions(out), tt.actions) {
				t.Errorf("actions %v, want %v", actions(out), tt.actions)
			}
			if tt.reasonHas != "" && !strings.Contains(out.Reason, tt.reasonHas) {
				t.Errorf("reason %q, want it to say %q", out.Reason, tt.reasonHas)
			}
			if len(out.Results) != len(set) && tt.wantErr == nil {
				t.Errorf("%d results for %d images", len(out.Results), len(set))
			}
			if tt.right {
				assertRight(t, n, set)
			}
		})
	}
}
