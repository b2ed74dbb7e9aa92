package integration

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	digest "github.com/opencontainers/go-digest"

	"github.com/precache/precache/internal/cache"
	"github.com/precache/precache/test/testenv"
)

// withoutLayersOf drops the layers of platform's manifest from an OCI layout: a bundle with
// every platform's manifest and config (as `precache bundle --platform linux/arm64` writes
// it) but only other platforms' layers.
func withoutLayersOf(t *testing.T, entries []testenv.Entry, idx v1.ImageIndex, platform string) []testenv.Entry {
	t.Helper()
	img, err := testenv.PlatformImage(idx, platform)
	if err != nil {
		t.Fatal(err)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	drop := map[string]bool{}
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			t.Fatal(err)
		}
		drop["blobs/sha256/"+d.Hex] = true
	}
	return slices.DeleteFunc(slices.Clone(entries), func(e testenv.Entry) bool { return drop[e.Name] })
}

// TestImportNodePlatformMissing: an image the node cannot run gets no record — exit 1,
// the image named, containerd's image list as it was.
func TestImportNodePlatformMissing(t *testing.T) {
	ref := "docker.io/example/armonly:v1"
	other := "docker.io/example/fine:v1"
	armOnly := offlineIndex(t, 888, "linux/arm64")
	both := offlineIndex(t, 889, "linux/amd64", "linux/arm64")
	fine := offlineIndex(t, 890)

	layout := func(idx v1.ImageIndex) []testenv.Entry {
		es, err := testenv.OCILayout(map[string]v1.ImageIndex{ref: idx, other: fine}, ref, other)
		if err != nil {
			t.Fatal(err)
		}
		return es
	}
	cases := []struct {
		name    string
		entries []testenv.Entry
		want    string
	}{
		{"index without the node platform", layout(armOnly), "no manifest for the node's linux/amd64"},
		{"every manifest, only arm64's layers", withoutLayersOf(t, layout(both), both, "linux/amd64"), "missing"},
	}
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			n := newNode(t)
			before := n.imageNames()
			data, err := testenv.Tar(tt.entries, "zstd")
			if err != nil {
				t.Fatal(err)
			}
			r := n.precache(nil, "import", writeFile(t, "b.tar.zst", data))
			if r.code != 1 || !strings.Contains(r.stderr, ref) || !strings.Contains(r.stderr, "node platform missing") || !strings.Contains(r.stderr, tt.want) {
				t.Fatalf("exit %d, want 1 naming %s and %q; stderr:\n%s", r.code, ref, tt.want, r.stderr)
			}
			if after := n.imageNames(); !slices.Equal(before, after) {
				t.Fatalf("image list changed: before %v, after %v", before, after)
			}
		})
	}
}

// TestPullBestPlatformOnly: an index with linux/amd64 and linux/386 on an amd64 node — only
// amd64's layers are fetched and unpacked, as the CRI does, and the three CRI records exist.
func TestPullBestPlatformOnly(t *testing.T) {
	ctx := t.Context()
	const path, tag = "example/multi386", "v1"
	spec := testenv.ImageSpec{Seed: 4242, Platforms: []string{"linux/386", "linux/amd64"}}
	pushed, err := reg.Push(ctx, path, tag, spec)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := testenv.Index(spec)
	if err != nil {
		t.Fatal(err)
	}
	n := newNode(t)
	ref := "docker.io/" + path + ":" + tag
	if r := n.precache(nil, "bootstrap", "--image", ref); r.code != 0 {
		t.Fatalf("bootstrap: exit %d\n%s", r.code, r.stderr)
	}
	c, cctx := n.client()
	cs := c.ContentStore()
	has := func(h v1.Hash) bool {
		_, err := cs.Info(cctx, digest.Digest(h.String()))
		if err != nil && !errdefs.IsNotFound(err) {
			t.Fatal(err)
		}
		return err == nil
	}
	for platform, want := range map[string]bool{"linux/amd64": true, "linux/386": false} {
		img, err := testenv.PlatformImage(idx, platform)
		if err != nil {
			t.Fatal(err)
		}
		layers, _ := img.Layers()
		for _, l := range layers {
			d, _ := l.Digest()
			if has(d) != want {
				t.Errorf("%s layer %s stored = %t, want %t", platform, d, !want, want)
			}
		}
		cfg, _ := img.ConfigName()
		if !has(cfg) {
			t.Errorf("%s config %s not stored (every platform's config is kept)", platform, cfg)
		}
	}
	amd, _ := testenv.PlatformImage(idx, "linux/amd64")
	id, _ := amd.ConfigName()
	names := n.imageNames()
	for _, want := range []string{ref, "docker.io/" + path + "@" + pushed.String()} {
		if !contains(names, want) {
			t.Errorf("no record %s; records %v", want, names)
		}
	}
	rec := n.image(id.String())
	if rec.Target.Digest.String() != pushed.String() || rec.Labels[cache.LabelCRIPinned] != "pinned" {
		t.Errorf("image ID record %s = %+v, want target %s, pinned", id, rec, pushed)
	}
	view := n.criImages(ref)
	if got := view[ref].ID; got != id.String() {
		t.Errorf("CRI image ID = %q, want %s", got, id)
	}
}

// TestGCDuringImportAndPull: containerd's garbage collector runs again and again (synchronous
// deletes) while an import streams and while a pull downloads; nothing the images need goes.
func TestGCDuringImportAndPull(t *testing.T) {
	gcLoop := func(t *testing.T, n *node) (stop func() int) {
		ctx, cancel := context.WithCancel(t.Context())
		var wg sync.WaitGroup
		runs := 0
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				n.gc(t)
				runs++
				time.Sleep(10 * time.Millisecond)
			}
		}()
		return func() int { cancel(); wg.Wait(); return runs }
	}

	t.Run("import", func(t *testing.T) {
		ref := "docker.io/example/gcimport:v1"
		idx, err := testenv.Index(testenv.ImageSpec{Seed: 5151, Layers: 4, LayerSize: 4 << 20})
		if err != nil {
			t.Fatal(err)
		}
		data := ociBundle(t, "", map[string]v1.ImageIndex{ref: idx}, ref)
		n := newNode(t)
		cmd, stdin, stderr := n.importFromStdin()
		stop := gcLoop(t, n)
		// Feed the bundle slowly, so collections fall between blobs and mid-blob.
		for chunk := range slices.Chunk(data, len(data)/20+1) {
			if _, err := stdin.Write(chunk); err != nil {
				t.Fatal(err)
			}
			time.Sleep(30 * time.Millisecond)
		}
		stdin.Close()
		err = cmd.Wait()
		runs := stop()
		if err != nil {
			t.Fatalf("import with GC running (%d collections): %v\n%s", runs, err, stderr.String())
		}
		n.gc(t)
		n.assertRight(ref, digestString(t, idx))
		if r := n.precache(nil, "status", "--image", ref); r.code != 0 {
			t.Fatalf("status after import and GC: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		t.Logf("%d collections during the import", runs)
	})

	t.Run("pull", func(t *testing.T) {
		const path, tag = "example/gcpull", "v1"
		d, err := reg.Push(t.Context(), path, tag, testenv.ImageSpec{Seed: 5252, Layers: 4, LayerSize: 4 << 20})
		if err != nil {
			t.Fatal(err)
		}
		ref := "docker.io/" + path + ":" + tag
		n := newNode(t)
		stop := gcLoop(t, n)
		r := n.precache(nil, "bootstrap", "--image", ref)
		runs := stop()
		if r.code != 0 {
			t.Fatalf("bootstrap with GC running (%d collections): exit %d\n%s", runs, r.code, r.stderr)
		}
		n.gc(t)
		n.assertRight(ref, d.String())
		if r := n.precache(nil, "status", "--image", ref); r.code != 0 {
			t.Fatalf("status after pull and GC: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		t.Logf("%d collections during the pull", runs)
	})
}

// TestImportDiskFull: containerd's root fills up mid-import. The bundle is fine: the message
// says the disk is full and how much is needed, and the image list stays as it was.
func TestImportDiskFull(t *testing.T) {
	c, err := testenv.StartContainerd(t.Context(), testenv.ContainerdOptions{CRI: true, HostsDir: hostsDir, RootSize: 24 << 20})
	if err != nil {
		t.Fatal(err) // root in CI: mounting a tmpfs works
	}
	n := &node{Containerd: c, t: t}
	t.Cleanup(func() { _ = c.Stop() })
	ref := "docker.io/example/toobig:v1"
	idx, err := testenv.Index(testenv.ImageSpec{Seed: 6161, Layers: 6, LayerSize: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	before := n.imageNames()
	r := n.precache(nil, "import", writeFile(t, "big.tar", ociBundle(t, "", map[string]v1.ImageIndex{ref: idx}, ref)))
	if r.code != 1 {
		t.Fatalf("exit %d, want 1\n%s", r.code, r.stderr)
	}
	for _, want := range []string{"is full", "the bundle needs", "MiB", "nothing was recorded"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr does not say %q:\n%s", want, r.stderr)
		}
	}
	if strings.Contains(r.stderr, "invalid bundle") {
		t.Errorf("a full disk is blamed on the bundle:\n%s", r.stderr)
	}
	if after := n.imageNames(); !slices.Equal(before, after) {
		t.Fatalf("image list changed: before %v, after %v", before, after)
	}
}

// TestUnpackedFollowsTheConfigLabel: "unpacked" means the config references the snapshot
// (containerd.io/gc.ref.snapshot.<snapshotter>), not merely that a snapshot with the right
// chain ID exists: without the label, the snapshot lives only as long as something else
// holds it. status reports it, and bootstrap repairs it without the network.
func TestUnpackedFollowsTheConfigLabel(t *testing.T) {
	const path, tag = "example/gcref", "v1"
	pushed, err := reg.Push(t.Context(), path, tag, testenv.ImageSpec{Seed: 7171})
	if err != nil {
		t.Fatal(err)
	}
	ref := "docker.io/" + path + ":" + tag
	n := newNode(t)
	if r := n.precache(nil, "bootstrap", "--image", ref); r.code != 0 {
		t.Fatalf("bootstrap: exit %d\n%s", r.code, r.stderr)
	}
	c, ctx := n.client()
	cs := c.ContentStore()
	health, err := n.store().Check(t.Context(), n.image(ref).Target)
	if err != nil || !health.Unpacked {
		t.Fatalf("Check after bootstrap = %+v, %v", health, err)
	}
	info, err := cs.Info(ctx, health.Config)
	if err != nil {
		t.Fatal(err)
	}
	const label = "containerd.io/gc.ref.snapshot.overlayfs"
	if info.Labels[label] == "" {
		t.Fatalf("config %s has no %s label after a pull: %v", health.Config, label, info.Labels)
	}
	delete(info.Labels, label)
	if _, err := cs.Update(ctx, info, "labels."+label); err != nil {
		t.Fatal(err)
	}
	// The snapshot is still there; only the reference is gone.
	if r := n.precache(nil, "status", "--image", ref); r.code != 1 || !strings.Contains(r.stdout, "not unpacked") {
		t.Fatalf("status with the snapshot unreferenced: exit %d, want 1 saying not unpacked\n%s%s", r.code, r.stdout, r.stderr)
	}
	// No registry (a mirror on a refused port): the repair must not need one.
	deadHosts := filepath.Join(t.TempDir(), "certs.d")
	if err := testenv.WriteHostsDir(deadHosts, "http://127.0.0.1:1", "docker.io"); err != nil {
		t.Fatal(err)
	}
	r := n.precache([]string{"PRECACHE_HOSTS_DIR=" + deadHosts}, "bootstrap", "--image", ref)
	if r.code != 0 || !strings.Contains(r.stdout, "unpacked") {
		t.Fatalf("bootstrap repair without a registry: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if info, _ = cs.Info(ctx, health.Config); info.Labels[label] == "" {
		t.Errorf("config label not restored by the repair")
	}
	n.assertRight(ref, pushed.String())
}

// importFromStdin starts `precache import -` against n; the caller feeds stdin and waits.
func (n *node) importFromStdin() (*exec.Cmd, io.WriteCloser, *bytes.Buffer) {
	n.t.Helper()
	cmd := exec.Command(binary, "import", "-")
	cmd.Env = append(os.Environ(), "CONTAINERD_ADDRESS="+n.Address, "PRECACHE_LOG_FORMAT=json")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		n.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		n.t.Fatal(err)
	}
	return cmd, stdin, &stderr
}
