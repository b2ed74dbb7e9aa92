package integration

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/klauspost/compress/zstd"

	"github.com/precache/precache/internal/cache"
	"github.com/precache/precache/test/testenv"
)

// offlineIndex is an image that exists in no registry: importing it proves the bundle is the source.
func offlineIndex(t *testing.T, seed uint64, platforms ...string) v1.ImageIndex {
	t.Helper()
	idx, err := testenv.Index(testenv.ImageSpec{Seed: seed, Platforms: platforms})
	if err != nil {
		t.Fatal(err)
	}
	return idx
}

func writeFile(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func ociBundle(t *testing.T, compression string, images map[string]v1.ImageIndex, refs ...string) []byte {
	t.Helper()
	entries, err := testenv.OCILayout(images, refs...)
	if err != nil {
		t.Fatal(err)
	}
	data, err := testenv.Tar(entries, compression)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func digestString(t *testing.T, idx v1.ImageIndex) string {
	t.Helper()
	d, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

// assertRight checks the kubelet's view: ref present under tag and name@digest, pinned.
func (n *node) assertRight(ref, dgst string) {
	n.t.Helper()
	view := n.criImages(ref)
	img, ok := view[ref]
	if !ok {
		n.t.Fatalf("CRI does not list %s; it lists %v", ref, keys(view))
	}
	repo := ref[:strings.LastIndex(ref, ":")]
	if !contains(img.RepoDigests, repo+"@"+dgst) {
		n.t.Errorf("%s: CRI repo digests %v, want %s", ref, img.RepoDigests, repo+"@"+dgst)
	}
	if n.PinningSupported() && !img.Pinned {
		n.t.Errorf("%s: not pinned in the CRI's view", ref)
	}
	if rec := n.image(ref); rec.Labels[cache.LabelCRIPinned] != "pinned" {
		n.t.Errorf("%s: labels %v", ref, rec.Labels)
	}
}

// TestBundleRoundTrip: precache bundle from the registry → import into a fresh node with no
// registry at all → the registry's digests, pinned; importing again is a quick skip.
func TestBundleRoundTrip(t *testing.T) {
	out := filepath.Join(t.TempDir(), "calico.tar.zst")
	maker := newNode(t)
	r := maker.precache(nil, "bundle", "--calico-version", dockerVersion, "--platform", "linux/amd64,linux/arm64", "-o", out)
	if r.code != 0 {
		t.Fatalf("bundle exit %d: %s", r.code, r.stderr)
	}
	n := newNode(t)
	dead := filepath.Join(t.TempDir(), "certs.d")
	writeDeadHosts(t, dead)
	env := []string{"PRECACHE_HOSTS_DIR=" + dead}
	r = n.precache(env, "import", out)
	if r.code != 0 {
		t.Fatalf("import exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	for _, img := range calicoSet(t, dockerVersion) {
		n.assertRight(img.Ref.TagName(), calico[img.Ref.String()])
	}
	if st := n.precache(env, "status", "--calico-version", dockerVersion); st.code != 0 {
		t.Fatalf("status after import exit %d:\n%s", st.code, st.stdout)
	}
	again := n.precache(env, "import", out)
	if again.code != 0 || !strings.Contains(again.stdout, "already right: skipped after reading its index") {
		t.Fatalf("re-import: exit %d\n%s\n%s", again.code, again.stdout, again.stderr)
	}
	t.Logf("import %s, re-import %s", r.took, again.took)

	// The lock inside is verified: a different --lock fails and records nothing new.
	fresh := newNode(t)
	set := calicoSet(t, dockerVersion)
	lock := map[string]string{set[0].Ref.TagName(): "sha256:" + strings.Repeat("0", 64)}
	lockFile := writeFile(t, "wrong.lock", mustJSON(t, map[string]any{"version": 1, "images": lock}))
	bad := fresh.precache(env, "import", "--lock", lockFile, out)
	if bad.code == 0 || !strings.Contains(bad.stderr, "digest mismatch") || !strings.Contains(bad.stderr, out) {
		t.Fatalf("import with a wrong lock: exit %d\n%s", bad.code, bad.stderr)
	}
	if names := fresh.imageNames(); len(names) != 0 {
		t.Fatalf("a rejected bundle recorded images: %v", names)
	}
}

// TestBundleFromContainerd: export what a node has, import it on another node with no registry.
func TestBundleFromContainerd(t *testing.T) {
	src := newNode(t)
	if r := src.precache(nil, "bootstrap", "--calico-version", quayVersion); r.code != 0 {
		t.Fatalf("bootstrap: %s", r.stderr)
	}
	out := filepath.Join(t.TempDir(), "node.tar.gz")
	if r := src.precache(nil, "bundle", "--calico-version", quayVersion, "--from-containerd", "-o", out); r.code != 0 {
		t.Fatalf("bundle --from-containerd: exit %d\n%s", r.code, r.stderr)
	}
	n := newNode(t)
	dead := filepath.Join(t.TempDir(), "certs.d")
	writeDeadHosts(t, dead)
	if r := n.precache([]string{"PRECACHE_HOSTS_DIR=" + dead}, "import", out); r.code != 0 || !strings.Contains(r.stdout, "(oci-layout, gzip)") {
		t.Fatalf("import: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	for _, img := range calicoSet(t, quayVersion) {
		n.assertRight(img.Ref.TagName(), calico[img.Ref.String()])
	}
}

// TestImportFromOtherTools: bundles made by ctr, go-containerregistry and a legacy docker save.
func TestImportFromOtherTools(t *testing.T) {
	idx := offlineIndex(t, 501)
	ref := "docker.io/example/offline:v1"
	d := digestString(t, idx)

	t.Run("ctr export from another containerd", func(t *testing.T) {
		src := newNode(t)
		// Put an image in the source node through an import of our own, then export it with ctr.
		if r := src.precache(nil, "import", writeFile(t, "b.tar", ociBundle(t, "", map[string]v1.ImageIndex{ref: idx}, ref))); r.code != 0 {
			t.Fatalf("seeding: %s", r.stderr)
		}
		exported := filepath.Join(t.TempDir(), "ctr-export.tar")
		out, err := exec.Command(testenv.CtrBinary(), "--address", src.Address, "-n", "k8s.io", "images", "export", "--local", exported, ref).CombinedOutput()
		if err != nil && !strings.Contains(string(out), "unknown flag: --local") {
			t.Fatalf("ctr export: %v\n%s", err, out)
		}
		if err != nil {
			if out, err := exec.Command(testenv.CtrBinary(), "--address", src.Address, "-n", "k8s.io", "images", "export", exported, ref).CombinedOutput(); err != nil {
				t.Fatalf("ctr export: %v\n%s", err, out)
			}
		}
		n := newNode(t)
		if r := n.precache(nil, "import", exported); r.code != 0 {
			t.Fatalf("import of ctr export: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
		}
		n.assertRight(ref, d)
	})

	t.Run("go-containerregistry tarball (docker save format)", func(t *testing.T) {
		img, err := testenv.PlatformImage(idx, "linux/amd64")
		if err != nil {
			t.Fatal(err)
		}
		tag, err := name.NewTag(ref)
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		if err := tarball.Write(tag, img, &buf); err != nil {
			t.Fatal(err)
		}
		n := newNode(t)
		r := n.precache(nil, "import", writeFile(t, "ggcr.tar", buf.Bytes()))
		if r.code != 0 {
			t.Fatalf("import: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
		}
		md, _ := img.Digest()
		// The tarball format keeps no manifest: the digest is synthesised, as with docker save.
		if !strings.Contains(r.stdout, "docker-archive-legacy") {
			t.Errorf("format not reported:\n%s", r.stdout)
		}
		n.assertRight(ref, n.image(ref).Target.Digest.String())
		_ = md
	})

	t.Run("go-containerregistry OCI layout, tag-only name and --base-name", func(t *testing.T) {
		dir := t.TempDir()
		p, err := layout.Write(dir, empty.Index)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.AppendIndex(idx, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": "v1"})); err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		if err := tw.AddFS(os.DirFS(dir)); err != nil {
			t.Fatal(err)
		}
		tw.Close()
		file := writeFile(t, "layout.tar", buf.Bytes())
		n := newNode(t)
		if r := n.precache(nil, "import", file); r.code == 0 || !strings.Contains(r.stderr, "--base-name") {
			t.Fatalf("import without a name: exit %d, want a --base-name hint:\n%s", r.code, r.stderr)
		}
		if r := n.precache(nil, "import", "--base-name", "docker.io/example/offline", file); r.code != 0 {
			t.Fatalf("import --base-name: exit %d\n%s", r.code, r.stderr)
		}
		n.assertRight(ref, d)
	})

	t.Run("legacy docker save, with a note about the digest", func(t *testing.T) {
		img, err := testenv.PlatformImage(idx, "linux/amd64")
		if err != nil {
			t.Fatal(err)
		}
		entries, err := testenv.LegacyDockerSave(ref, img)
		if err != nil {
			t.Fatal(err)
		}
		data, err := testenv.Tar(entries, "gzip")
		if err != nil {
			t.Fatal(err)
		}
		lockFile := writeFile(t, "l.lock", mustJSON(t, map[string]any{"version": 1, "images": map[string]string{ref: d}}))
		n := newNode(t)
		r := n.precache(nil, "import", "--lock", lockFile, writeFile(t, "legacy.tar.gz", data))
		if r.code != 0 {
			t.Fatalf("import legacy: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
		}
		if !strings.Contains(r.stdout, "note: docker.io/example/offline:v1: a legacy docker save tar does not keep the registry's manifest digest") {
			t.Errorf("no note about the synthesised digest:\n%s", r.stdout)
		}
		n.assertRight(ref, n.image(ref).Target.Digest.String())
	})
}

// TestImportBadInput: each bad bundle → non-zero exit, a message naming the file and the
// problem, and containerd's image list exactly as before.
func TestImportBadInput(t *testing.T) {
	n := newNode(t)
	// Something in the store already, so "unchanged" is not trivially empty.
	if r := n.precache(nil, "bootstrap", "--calico-version", dockerVersion); r.code != 0 {
		t.Fatalf("bootstrap: %s", r.stderr)
	}
	before := n.imageNames()

	ref := "docker.io/example/bad:v1"
	idx := offlineIndex(t, 777)
	good, err := testenv.OCILayout(map[string]v1.ImageIndex{ref: idx}, ref)
	if err != nil {
		t.Fatal(err)
	}
	mutate := func(f func([]testenv.Entry) []testenv.Entry) []byte {
		es := f(slices.Clone(good))
		data, err := testenv.Tar(es, "")
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	layerAt := func(es []testenv.Entry) int {
		for i, e := range es {
			if strings.HasPrefix(e.Name, "blobs/") && len(e.Data) > 1000 {
				return i
			}
		}
		t.Fatal("no layer entry")
		return -1
	}
	full, err := testenv.Tar(good, "")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		data []byte
		args []string
		want string
	}{
		{"empty file", []byte{}, nil, "empty file"},
		{"not a tar", []byte("this is not a tar archive, it is a text file\n"), nil, "not a tar"},
		{"truncated tar", full[:len(full)/2], nil, "truncated"},
		{"layer with one byte flipped", mutate(func(es []testenv.Entry) []testenv.Entry {
			i := layerAt(es)
			data := slices.Clone(es[i].Data)
			data[len(data)/2] ^= 0xff
			es[i].Data = data
			return es
		}), nil, "corrupted"},
		{"manifest pointing at a missing blob", mutate(func(es []testenv.Entry) []testenv.Entry {
			return slices.Delete(es, layerAt(es), layerAt(es)+1)
		}), nil, "which is not in the bundle"},
		{"absolute path", mutate(func(es []testenv.Entry) []testenv.Entry {
			return append(es, testenv.Entry{Name: "/etc/passwd", Data: []byte("x")})
		}), nil, "absolute path"},
		{"dot-dot path", mutate(func(es []testenv.Entry) []testenv.Entry {
			return append([]testenv.Entry{{Name: "blobs/../../etc/cron.d/x", Data: []byte("x")}}, es...)
		}), nil, `".." in an archive path`},
		{"symlink leaving the archive", mutate(func(es []testenv.Entry) []testenv.Entry {
			return append([]testenv.Entry{{Name: "blobs/sha256/evil", Typeflag: tar.TypeSymlink, Linkname: "../../../../etc/shadow"}}, es...)
		}), nil, "points outside the archive"},
		{"oversized JSON", mutate(func(es []testenv.Entry) []testenv.Entry {
			big := append([]byte(`{"schemaVersion":2,"manifests":[],"x":"`), bytes.Repeat([]byte("a"), 9<<20)...)
			big = append(big, []byte(`"}`)...)
			for i := range es {
				if es[i].Name == "index.json" {
					es[i].Data = big
				}
			}
			return es
		}), nil, "more than the"},
		{"malformed JSON", mutate(func(es []testenv.Entry) []testenv.Entry {
			for i := range es {
				if es[i].Name == "index.json" {
					es[i].Data = []byte(`{"schemaVersion":2,"manifests":[{"digest":`)
				}
			}
			return es
		}), nil, "index.json"},
		{"gzip bomb", gzipBomb(t), nil, "compression bomb"},
		{"zstd bomb", zstdBomb(t), nil, "compression bomb"},
	}
	// A lock that disagrees with the bundle.
	lockFile := writeFile(t, "bad.lock", mustJSON(t, map[string]any{"version": 1, "images": map[string]string{ref: "sha256:" + strings.Repeat("1", 64)}}))
	cases = append(cases, struct {
		name string
		data []byte
		args []string
		want string
	}{"digest differs from --lock", full, []string{"--lock", lockFile}, "digest mismatch"})

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			file := writeFile(t, "bundle.tar", tc.data)
			r := n.precache(nil, append(append([]string{"import"}, tc.args...), file)...)
			if r.code == 0 {
				t.Fatalf("exit 0 for a bad bundle\n%s", r.stdout)
			}
			if !strings.Contains(r.stderr, tc.want) || !strings.Contains(r.stderr, file) {
				t.Errorf("stderr should name %s and say %q:\n%s", file, tc.want, r.stderr)
			}
			if after := n.imageNames(); !slices.Equal(after, before) {
				t.Errorf("image list changed:\nbefore %v\nafter  %v", before, after)
			}
		})
	}
}

// TestImportAfterACorruptedBlob: a rejected blob leaves nothing behind that spoils the
// next import of the same blob (its ingest is dropped, not resumed).
func TestImportAfterACorruptedBlob(t *testing.T) {
	ref := "docker.io/example/again:v1"
	idx := offlineIndex(t, 778)
	entries, err := testenv.OCILayout(map[string]v1.ImageIndex{ref: idx}, ref)
	if err != nil {
		t.Fatal(err)
	}
	bad := slices.Clone(entries)
	for i, e := range bad {
		if strings.HasPrefix(e.Name, "blobs/") && len(e.Data) > 1000 {
			data := slices.Clone(e.Data)
			data[len(data)-10] ^= 0xff
			bad[i].Data = data
			break
		}
	}
	badTar, err := testenv.Tar(bad, "")
	if err != nil {
		t.Fatal(err)
	}
	goodTar, err := testenv.Tar(entries, "")
	if err != nil {
		t.Fatal(err)
	}
	n := newNode(t)
	for i := 0; i < 2; i++ {
		if r := n.precache(nil, "import", writeFile(t, "bad.tar", badTar)); r.code == 0 || !strings.Contains(r.stderr, "corrupted") {
			t.Fatalf("corrupted bundle, try %d: exit %d\n%s", i+1, r.code, r.stderr)
		}
	}
	if r := n.precache(nil, "import", writeFile(t, "good.tar", goodTar)); r.code != 0 {
		t.Fatalf("the good bundle after a corrupted one: exit %d\n%s", r.code, r.stderr)
	}
	n.assertRight(ref, digestString(t, idx))
}

// TestImportKilledMidwayConverges: SIGKILL during an import, then import again → right.
func TestImportKilledMidwayConverges(t *testing.T) {
	ref := "docker.io/example/big:v1"
	idx, err := testenv.Index(testenv.ImageSpec{Seed: 999, Layers: 4, LayerSize: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	data := ociBundle(t, "", map[string]v1.ImageIndex{ref: idx}, ref)
	n := newNode(t)
	cmd, stdin, _ := n.importFromStdin()
	// Feed 60% of the bundle, then kill it while it waits for the rest.
	if _, err := stdin.Write(data[:len(data)*6/10]); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()
	stdin.Close()
	if contains(n.imageNames(), ref) {
		t.Fatal("a killed import recorded the image")
	}
	r := n.precache(nil, "import", writeFile(t, "big.tar", data))
	if r.code != 0 {
		t.Fatalf("import after kill: exit %d\n%s", r.code, r.stderr)
	}
	n.assertRight(ref, digestString(t, idx))
}

func gzipBomb(t *testing.T) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	writeZeros(t, zw)
	return buf.Bytes()
}

func zstdBomb(t *testing.T) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw, err := zstd.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	writeZeros(t, zw)
	return buf.Bytes()
}

// writeZeros writes a tar whose one "layer" is 512 MiB of zeros (compresses ~1000:1).
func writeZeros(t *testing.T, w interface {
	Write([]byte) (int, error)
	Close() error
}) {
	t.Helper()
	tw := tar.NewWriter(w)
	const size = 512 << 20
	if err := tw.WriteHeader(&tar.Header{Name: "blobs/sha256/" + strings.Repeat("ab", 32), Mode: 0o644, Size: size, Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	zero := make([]byte, 1<<20)
	for i := 0; i < size>>20; i++ {
		if _, err := tw.Write(zero); err != nil {
			t.Fatal(err)
		}
	}
	tw.Close()
	w.Close()
}
