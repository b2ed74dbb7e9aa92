package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/snapshots"
	digest "github.com/opencontainers/go-digest"

	"github.com/precache/precache/internal/cache"
	pcontainerd "github.com/precache/precache/internal/containerd"
	"github.com/precache/precache/internal/manifest"
	"github.com/precache/precache/test/testenv"
)

// Daemon-side pulls through containerd's transfer service, on the same guarantees as the
// client-side path: the same conformance suite, the same kubelet view, the digest checked
// before any download, nothing recorded by Fetch, a record someone else made left as it is.

// pullLog collects the PullEvents of an in-process store.
type pullLog struct {
	mu     sync.Mutex
	events []pcontainerd.PullEvent
}

func (l *pullLog) add(e pcontainerd.PullEvent) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, e)
}

func (l *pullLog) all() []pcontainerd.PullEvent {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]pcontainerd.PullEvent(nil), l.events...)
}

func (l *pullLog) count(p pcontainerd.PullPath) int {
	n := 0
	for _, e := range l.all() {
		if e.Path == p {
			n++
		}
	}
	return n
}

// transferStore opens n's store forced to the transfer path, recording its events; on a
// containerd without the transfer service it checks that Open says so, and skips.
func transferStore(t *testing.T, n *node) (*pcontainerd.Store, *pullLog) {
	t.Helper()
	log := &pullLog{}
	cfg := pcontainerd.Config{Address: n.Address, Namespace: "k8s.io", Snapshotter: "overlayfs", HostsDir: hostsDir,
		PullPath: pcontainerd.PullTransfer, OnPull: log.add}
	s, err := pcontainerd.Open(t.Context(), cfg)
	if n.Major < 2 {
		if err == nil || !strings.Contains(err.Error(), "no transfer service") {
			t.Fatalf("Open(--pull-path transfer) on containerd %s = %v, want an error saying it has no transfer service", n.Version, err)
		}
		t.Skipf("containerd %s has no transfer service (Open says so); its pulls are client-side, tested by TestContainerdConformance", n.Version)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, log
}

// TestContainerdConformanceTransfer: the adapter pulling through containerd's transfer
// service passes the suite the fake and the client-side path pass.
func TestContainerdConformanceTransfer(t *testing.T) {
	n := newNode(t)
	store, log := transferStore(t, n)
	conformance(t, n, store)
	if log.count(pcontainerd.PullTransfer) == 0 {
		t.Errorf("no Fetch went through the transfer service: %+v", log.all())
	}
	for _, e := range log.all() {
		if e.Path == pcontainerd.PullClient {
			t.Logf("client-side: %s (%s)", e.Ref, e.Why)
		}
	}
}

// TestTransferPathChoice: auto asks the daemon — the transfer service on containerd 2.x,
// the client-side path on 1.6, where it does not exist.
func TestTransferPathChoice(t *testing.T) {
	n := newNode(t)
	want := pcontainerd.PullTransfer
	if n.Major < 2 {
		want = pcontainerd.PullClient
	}
	if got := n.storeWith(pcontainerd.Config{PullPath: pcontainerd.PullAuto}).PullPath(); got != want {
		t.Errorf("--pull-path auto on containerd %s: %s, want %s", n.Version, got, want)
	}
	if got := n.storeWith(pcontainerd.Config{PullPath: pcontainerd.PullClient}).PullPath(); got != pcontainerd.PullClient {
		t.Errorf("--pull-path client: %s", got)
	}
	if n.Major < 2 {
		// Through the binary: the error names the missing service and what to do.
		r := n.precache(nil, "bootstrap", "--image", "docker.io/example/none:v1", "--pull-path", "transfer")
		if r.code == 0 || !strings.Contains(r.stderr, "no transfer service") || !strings.Contains(r.stderr, "--pull-path auto or client") {
			t.Errorf("bootstrap --pull-path transfer on %s: exit %d\n%s", n.Version, r.code, r.stderr)
		}
	}
}

// TestTransferFetchHeldByTheLease: what the daemon fetches and unpacks is held by the
// caller's lease (the daemon takes it from the request's metadata), Fetch leaves no image
// record, and once the lease is released garbage collection takes all of it.
func TestTransferFetchHeldByTheLease(t *testing.T) {
	n := newNode(t)
	store, log := transferStore(t, n)
	ctx := t.Context()
	const path, tag = "example/leased", "v1"
	pushed, err := reg.Push(ctx, path, tag, testenv.ImageSpec{Seed: 7331, Layers: 3})
	if err != nil {
		t.Fatal(err)
	}
	r := manifest.MustParseRef("docker.io/" + path + ":" + tag)
	target, err := store.Resolve(ctx, r.TagName())
	if err != nil || target.Digest.String() != pushed.String() {
		t.Fatalf("Resolve = %v, %v; want %s", target.Digest, err, pushed)
	}
	c, cctx := n.client()
	snapshotCount := func() int {
		k := 0
		if err := c.SnapshotService("overlayfs").Walk(cctx, func(context.Context, snapshots.Info) error { k++; return nil }); err != nil {
			t.Fatal(err)
		}
		return k
	}

	lctx, done, err := store.WithLease(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Fetch(lctx, r.DigestName(target.Digest), target); err != nil {
		t.Fatal(err)
	}
	if ev := log.all(); len(ev) != 1 || ev[0].Path != pcontainerd.PullTransfer {
		t.Fatalf("pull events %+v, want one through the transfer service", ev)
	}
	if names := allImageNames(t, n); len(names) != 0 {
		t.Fatalf("Fetch left image records %v; records are the core's to make", names)
	}
	n.gc(t)
	if h, err := store.Check(ctx, target); err != nil || !h.Complete || !h.Unpacked {
		t.Fatalf("Check under the lease after GC = %+v, %v; want complete and unpacked", h, err)
	}
	if k := snapshotCount(); k != 3 {
		t.Fatalf("%d snapshots under the lease, want 3 (one per layer)", k)
	}
	if err := done(ctx); err != nil {
		t.Fatal(err)
	}
	n.gc(t)
	if h, err := store.Check(ctx, target); err != nil || h.Complete {
		t.Fatalf("Check after the lease was released and GC ran = %+v, %v; want collected", h, err)
	}
	if k := snapshotCount(); k != 0 {
		t.Fatalf("%d snapshots after the lease was released and GC ran, want 0", k)
	}
}

// TestTransferBootstrap: a bootstrap with the default --pull-path auto takes the transfer
// path for every image on containerd 2.x (the client-side path on 1.6), and leaves the
// kubelet exactly the view a client-side bootstrap leaves: the three records of each
// image, pinned, and nothing else.
func TestTransferBootstrap(t *testing.T) {
	set := calicoSet(t, dockerVersion)
	views := map[pcontainerd.PullPath][]testenv.CRIImage{}
	for _, path := range []pcontainerd.PullPath{pcontainerd.PullAuto, pcontainerd.PullClient} {
		t.Run(string(path), func(t *testing.T) {
			n := newNode(t)
			var env []string
			wantPath := pcontainerd.PullTransfer
			if path == pcontainerd.PullClient || n.Major < 2 {
				wantPath = pcontainerd.PullClient
			}
			if path == pcontainerd.PullClient {
				env = append(env, "PRECACHE_PULL_PATH=client")
			}
			r := n.precache(env, "bootstrap", "--calico-version", dockerVersion, "-v")
			if r.code != 0 {
				t.Fatalf("bootstrap exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
			}
			paths := pullPaths(t, r.stderr)
			var tags []string
			for _, img := range set {
				tags = append(tags, img.Ref.TagName())
				if got := paths[img.Ref.DigestName(digest.Digest(calico[img.Ref.String()]))]; got != string(wantPath) {
					t.Errorf("%s pulled by %q, want %s (log: %v)", img.Ref, got, wantPath, paths)
				}
			}
			st := n.store()
			want := map[string]bool{}
			for _, img := range set {
				dgst := calico[img.Ref.String()]
				n.assertRight(img.Ref.TagName(), dgst)
				rec := n.image(img.Ref.TagName())
				h, err := st.Check(t.Context(), rec.Target)
				if err != nil || !h.Complete || !h.Unpacked {
					t.Fatalf("%s: Check = %+v, %v", img.Ref, h, err)
				}
				for _, name := range []string{img.Ref.TagName(), img.Ref.Name + "@" + dgst, h.Config.String()} {
					want[name] = true
					rec := n.image(name)
					if rec.Target.Digest.String() != dgst || rec.Labels[cache.LabelCRIPinned] != "pinned" || rec.Labels[cache.LabelPinnedBy] != "true" {
						t.Errorf("record %s = %s %v, want %s pinned by precache", name, rec.Target.Digest, rec.Labels, dgst)
					}
				}
			}
			for _, name := range allImageNames(t, n) {
				if !want[name] {
					t.Errorf("record %s is none of the set's names", name)
				}
			}
			n.criImages(tags...) // wait for the CRI to have adopted every record
			view, err := testenv.CRIImages(t.Context(), n.Address)
			if err != nil {
				t.Fatal(err)
			}
			views[path] = view
		})
	}
	if a, b := views[pcontainerd.PullAuto], views[pcontainerd.PullClient]; a != nil && b != nil && !reflect.DeepEqual(a, b) {
		t.Errorf("the kubelet's view differs:\nauto:   %+v\nclient: %+v", a, b)
	}
}

// TestTransferDigestMismatchDownloadsNothing: with the transfer path available, a tag
// that moved away from the lock's digest still tags nothing and downloads nothing: the
// resolve and the check happen before any transfer.
func TestTransferDigestMismatchDownloadsNothing(t *testing.T) {
	n := newNode(t)
	const path, tag = "example/moved", "v1"
	if _, err := reg.Push(t.Context(), path, tag, testenv.ImageSpec{Seed: 9191}); err != nil {
		t.Fatal(err)
	}
	ref := manifest.MustParseRef("docker.io/" + path + ":" + tag)
	var lock manifest.Lock
	lock.Set(ref, digest.FromString("the digest the lock expected"))
	r := n.precache(nil, "bootstrap", "--image", ref.String(), "--lock", writeLock(t, &lock), "-v")
	if r.code != 1 || !strings.Contains(r.stderr, "digest mismatch") || !strings.Contains(r.stderr, "nothing was tagged") {
		t.Fatalf("bootstrap exit %d, want 1 with a digest mismatch\n%s", r.code, r.stderr)
	}
	if paths := pullPaths(t, r.stderr); len(paths) != 0 {
		t.Errorf("pulls started: %v", paths)
	}
	if names := allImageNames(t, n); len(names) != 0 {
		t.Errorf("records made: %v", names)
	}
	c, cctx := n.client()
	var blobs []string
	if err := c.ContentStore().Walk(cctx, func(i content.Info) error { blobs = append(blobs, i.Digest.String()); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(blobs) != 0 {
		t.Errorf("content downloaded although the digest did not match: %v", blobs)
	}
}

// TestTransferKeepsARecordSomeoneElseMade: the digest record exists, pinned by someone
// else, its content gone. The transfer service would replace that record whole, so the
// client-side path pulls, and the record keeps its labels.
func TestTransferKeepsARecordSomeoneElseMade(t *testing.T) {
	n := newNode(t)
	store, log := transferStore(t, n)
	ctx := t.Context()
	const path, tag = "example/theirs", "v1"
	if _, err := reg.Push(ctx, path, tag, testenv.ImageSpec{Seed: 6262}); err != nil {
		t.Fatal(err)
	}
	r := manifest.MustParseRef("docker.io/" + path + ":" + tag)
	target, err := store.Resolve(ctx, r.TagName())
	if err != nil {
		t.Fatal(err)
	}
	digestName := r.DigestName(target.Digest)
	theirs := map[string]string{cache.LabelCRIPinned: "pinned", "example.com/owner": "someone-else"}
	if err := store.Put(ctx, cache.Image{Name: digestName, Target: target, Labels: theirs}); err != nil {
		t.Fatal(err)
	}
	res, err := cache.NewEnsurer(store, cache.Options{}).Ensure(ctx, []manifest.Image{{Ref: r}})
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Actions[0] != cache.ActionPulled {
		t.Fatalf("actions %v, want pulled", res[0].Actions)
	}
	ev := log.all()
	if len(ev) != 1 || ev[0].Path != pcontainerd.PullClient || !strings.Contains(ev[0].Why, "exists") {
		t.Fatalf("pull events %+v, want the client-side path because the record exists", ev)
	}
	got := n.image(digestName)
	if got.Labels["example.com/owner"] != "someone-else" || got.Labels[cache.LabelCRIPinned] != "pinned" ||
		got.Labels[cache.LabelPinnedBy] != "" || got.Labels[cache.LabelManaged] != "true" {
		t.Errorf("record %s labels %v: want theirs kept, managed, and no %s", digestName, got.Labels, cache.LabelPinnedBy)
	}
	// The CRI met the digest record before its content (its handler backs off then): wait
	// for its view to have caught up before asking it.
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if contains(n.criImages(r.TagName())[r.TagName()].RepoDigests, digestName) {
			break
		}
	}
	n.assertRight(r.TagName(), target.Digest.String())
}

// pullPaths reads bootstrap's JSON log (-v): image → the path its pull took.
func pullPaths(t *testing.T, stderr string) map[string]string {
	t.Helper()
	out := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(stderr))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var line struct {
			Msg   string `json:"msg"`
			Image string `json:"image"`
			Path  string `json:"path"`
		}
		if json.Unmarshal(sc.Bytes(), &line) != nil {
			continue
		}
		if line.Msg == "pull path" || strings.HasPrefix(line.Msg, "transfer given up") {
			out[line.Image] = line.Path
		}
	}
	return out
}

// allImageNames lists every image record in k8s.io, the image-ID names (sha256:…) included.
func allImageNames(t *testing.T, n *node) []string {
	t.Helper()
	c, ctx := n.client()
	imgs, err := c.ImageService().List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, img := range imgs {
		out = append(out, img.Name)
	}
	return out
}
