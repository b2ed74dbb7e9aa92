package integration

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"

	"github.com/precache/precache/internal/cache"
	"github.com/precache/precache/internal/manifest"
)

func calicoSet(t *testing.T, version string) []manifest.Image {
	t.Helper()
	set, err := manifest.Build(manifest.Options{Version: version, Variant: manifest.VariantManifest})
	if err != nil {
		t.Fatal(err)
	}
	return set
}

// TestBootstrapIsWhatTheKubeletSees: after bootstrap every image is in the CRI's view under
// repo:tag and repo@digest with the registry's digest, and pinned.
func TestBootstrapIsWhatTheKubeletSees(t *testing.T) {
	for _, version := range []string{dockerVersion, quayVersion} {
		t.Run(version, func(t *testing.T) {
			n := newNode(t)
			r := n.precache(nil, "bootstrap", "--calico-version", version)
			if r.code != 0 {
				t.Fatalf("bootstrap exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
			}
			set := calicoSet(t, version)
			var tags []string
			for _, img := range set {
				tags = append(tags, img.Ref.TagName())
			}
			view := n.criImages(tags...)
			for _, img := range set {
				want := calico[img.Ref.String()]
				got, ok := view[img.Ref.TagName()]
				if !ok {
					t.Errorf("CRI does not list %s; it lists %v", img.Ref.TagName(), keys(view))
					continue
				}
				wantDigestRef := img.Ref.Name + "@" + want
				if !contains(got.RepoDigests, wantDigestRef) {
					t.Errorf("%s: CRI repo digests %v, want %s", img.Ref.TagName(), got.RepoDigests, wantDigestRef)
				}
				switch {
				case n.PinningSupported() && !got.Pinned:
					t.Errorf("%s: CRI reports pinned=false on containerd %s", img.Ref.TagName(), n.Version)
				case !n.PinningSupported():
					t.Logf("%s: containerd %s's CRI reports pinned=%t (pinning arrived in 1.7); checking the label only", img.Ref.TagName(), n.Version, got.Pinned)
				}
			}
			// The labels are there whatever the CRI version makes of them.
			for _, img := range set {
				for _, name := range []string{img.Ref.TagName(), img.Ref.Name + "@" + calico[img.Ref.String()]} {
					rec := n.image(name)
					if rec.Labels[cache.LabelCRIPinned] != "pinned" || rec.Labels[cache.LabelManaged] != "true" {
						t.Errorf("%s labels = %v, want the pin labels", name, rec.Labels)
					}
				}
			}
		})
	}
}

// TestSecondRunIsANoOpWithoutTheNetwork: with everything right, bootstrap touches nothing
// and needs no registry at all (the DNS-dead node's situation).
func TestSecondRunIsANoOpWithoutTheNetwork(t *testing.T) {
	n := newNode(t)
	if r := n.precache(nil, "bootstrap", "--calico-version", dockerVersion); r.code != 0 {
		t.Fatalf("first bootstrap exit %d: %s", r.code, r.stderr)
	}
	// A hosts dir pointing at a port nobody listens on: any registry call would fail.
	deadHosts := filepath.Join(t.TempDir(), "certs.d")
	writeDeadHosts(t, deadHosts)
	r := n.precache([]string{"PRECACHE_HOSTS_DIR=" + deadHosts}, "bootstrap", "--calico-version", dockerVersion)
	if r.code != 0 {
		t.Fatalf("second bootstrap exit %d: %s", r.code, r.stderr)
	}
	if !strings.Contains(r.stdout, "4 already right") || !strings.Contains(r.stdout, "path: local") {
		t.Fatalf("second bootstrap did something:\n%s", r.stdout)
	}
	t.Logf("no-op bootstrap took %s (whole process)", r.took)
}

func writeDeadHosts(t *testing.T, dir string) {
	t.Helper()
	for _, ns := range []string{"docker.io", "quay.io"} {
		if err := os.MkdirAll(filepath.Join(dir, ns), 0o755); err != nil {
			t.Fatal(err)
		}
		toml := "server = \"http://127.0.0.1:1\"\n"
		if err := os.WriteFile(filepath.Join(dir, ns, "hosts.toml"), []byte(toml), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestLockMismatchTagsNothing: one locked digest differs from the registry's; that image
// fails naming both digests, is not tagged, and the others are still made right.
func TestLockMismatchTagsNothing(t *testing.T) {
	n := newNode(t)
	set := calicoSet(t, dockerVersion)
	lock := &manifest.Lock{}
	for _, img := range set {
		lock.Set(img.Ref, digestOf(calico[img.Ref.String()]))
	}
	bad := set[0].Ref
	wrong := digestOf("sha256:" + strings.Repeat("ab", 32))
	lock.Set(bad, wrong)
	lockFile := writeLock(t, lock)

	r := n.precache(nil, "bootstrap", "--calico-version", dockerVersion, "--lock", lockFile)
	if r.code == 0 {
		t.Fatalf("bootstrap with a wrong lock exited 0:\n%s", r.stdout)
	}
	for _, want := range []string{bad.String(), "digest mismatch", wrong.String(), calico[bad.String()], "1 of 4 images not right"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr does not mention %q:\n%s", want, r.stderr)
		}
	}
	if names := n.imageNames(); contains(names, bad.TagName()) || contains(names, bad.Name+"@"+wrong.String()) {
		t.Errorf("mismatched image was tagged: %v", names)
	}
	for _, img := range set[1:] {
		if !contains(n.imageNames(), img.Ref.TagName()) {
			t.Errorf("%s missing: one bad image stopped the others", img.Ref.TagName())
		}
	}

	// With the right lock, the same command succeeds.
	lock.Set(bad, digestOf(calico[bad.String()]))
	if r := n.precache(nil, "bootstrap", "--calico-version", dockerVersion, "--lock", writeLock(t, lock)); r.code != 0 {
		t.Fatalf("bootstrap with the right lock exit %d: %s", r.code, r.stderr)
	}
}

// TestRegistryDown: no registry answers → a clear error naming each image, non-zero exit,
// nothing recorded.
func TestRegistryDown(t *testing.T) {
	n := newNode(t)
	deadHosts := filepath.Join(t.TempDir(), "certs.d")
	writeDeadHosts(t, deadHosts)
	r := n.precache([]string{"PRECACHE_HOSTS_DIR=" + deadHosts}, "bootstrap", "--calico-version", dockerVersion)
	if r.code == 0 {
		t.Fatal("bootstrap with the registry down exited 0")
	}
	for _, img := range calicoSet(t, dockerVersion) {
		if !strings.Contains(r.stderr, img.Ref.String()) {
			t.Errorf("stderr does not name %s", img.Ref)
		}
	}
	for _, want := range []string{"connection refused", "hint: the registry could not be reached"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr does not say %q:\n%s", want, r.stderr)
		}
	}
	if names := n.imageNames(); len(names) != 0 {
		t.Errorf("images recorded although nothing could be pulled: %v", names)
	}
	t.Logf("failed after %s (retries included)", r.took)
}

// TestRepairsWithoutNetwork: a lost digest name or pin label is restored from what is
// stored, without contacting the registry.
func TestRepairsWithoutNetwork(t *testing.T) {
	n := newNode(t)
	if r := n.precache(nil, "bootstrap", "--calico-version", dockerVersion); r.code != 0 {
		t.Fatalf("bootstrap exit %d: %s", r.code, r.stderr)
	}
	set := calicoSet(t, dockerVersion)
	node, cni := set[0].Ref, set[1].Ref
	n.deleteImage(node.Name + "@" + calico[node.String()])
	rec := n.image(cni.TagName())
	rec.Labels = map[string]string{"keep": "me"}
	n.putImage(rec)

	st := n.precache(nil, "status", "--calico-version", dockerVersion, "-o", "json")
	if st.code != 1 {
		t.Fatalf("status exit %d after damage, want 1:\n%s", st.code, st.stdout)
	}
	var rows []cache.Row
	if err := json.Unmarshal([]byte(st.stdout), &rows); err != nil {
		t.Fatalf("status -o json: %v\n%s", err, st.stdout)
	}
	if rows[0].Present || !rows[1].Present || rows[1].Pinned {
		t.Fatalf("status rows after damage: %+v", rows[:2])
	}

	deadHosts := filepath.Join(t.TempDir(), "certs.d")
	writeDeadHosts(t, deadHosts)
	r := n.precache([]string{"PRECACHE_HOSTS_DIR=" + deadHosts}, "bootstrap", "--calico-version", dockerVersion)
	if r.code != 0 {
		t.Fatalf("repairing bootstrap exit %d: %s", r.code, r.stderr)
	}
	if !strings.Contains(r.stdout, "2 recorded") {
		t.Errorf("want 2 images recorded:\n%s", r.stdout)
	}
	if got := n.image(cni.TagName()).Labels; got["keep"] != "me" || got[cache.LabelCRIPinned] != "pinned" {
		t.Errorf("labels after repair = %v: want the pin back and other labels kept", got)
	}
	if st := n.precache(nil, "status", "--calico-version", dockerVersion); st.code != 0 {
		t.Fatalf("status after repair exit %d:\n%s", st.code, st.stdout)
	}
}

// TestOtherPlatform: --platform linux/arm64 fetches and unpacks the arm64 image.
func TestOtherPlatform(t *testing.T) {
	n := newNode(t)
	r := n.precache(nil, "bootstrap", "--calico-version", dockerVersion, "--platform", "linux/arm64")
	if r.code != 0 {
		t.Fatalf("bootstrap --platform linux/arm64 exit %d: %s", r.code, r.stderr)
	}
	if st := n.precache(nil, "status", "--calico-version", dockerVersion, "--platform", "linux/arm64"); st.code != 0 {
		t.Fatalf("status arm64 exit %d:\n%s", st.code, st.stdout)
	}
	// The node platform's layers were not fetched, so for it the images are incomplete.
	if st := n.precache(nil, "status", "--calico-version", dockerVersion, "--platform", "linux/amd64"); st.code != 1 || !strings.Contains(st.stdout, "blobs missing") {
		t.Fatalf("status amd64 after an arm64 pull: exit %d\n%s", st.code, st.stdout)
	}
}

// TestBadInvocations: clear one-line errors, right exit codes, containerd untouched.
func TestBadInvocations(t *testing.T) {
	n := newNode(t)
	cases := []struct {
		name string
		env  []string
		args []string
		code int
		want string
	}{
		{"missing socket", []string{"CONTAINERD_ADDRESS=/nonexistent/containerd.sock"}, []string{"bootstrap", "--calico-version", dockerVersion}, 1,
			"cannot reach containerd at /nonexistent/containerd.sock: no such file or directory; is containerd running? set --containerd-address"},
		{"socket refusing", []string{"CONTAINERD_ADDRESS=" + deadSocket(t)}, []string{"status", "--calico-version", dockerVersion}, 1,
			"connection refused; is containerd running?"},
		{"unknown version", nil, []string{"bootstrap", "--calico-version", "v3.99.0"}, 2, "catalog covers v3.24.x to v3.33.x"},
		{"malformed version", nil, []string{"images", "--calico-version", "latest"}, 2, "invalid Calico version \"latest\""},
		{"nothing to do", []string{"KUBECONFIG=/nonexistent/kubeconfig"}, []string{"bootstrap"}, 2, "no image set: the cluster could not be read"},
		{"bad variant", nil, []string{"images", "--calico-version", dockerVersion, "--variant", "helm"}, 2, "unknown install variant \"helm\""},
		{"bad output", nil, []string{"status", "--calico-version", dockerVersion, "-o", "yaml"}, 2, "invalid -o \"yaml\""},
		{"unknown flag", nil, []string{"bootstrap", "--calico-versoin", dockerVersion}, 2, "unknown flag: --calico-versoin"}, //nolint:misspell // the typo is the test

		{"missing lock", nil, []string{"bootstrap", "--calico-version", dockerVersion, "--lock", "/nonexistent.lock"}, 2, "reading lock file: open /nonexistent.lock"},
		{"bad snapshotter", nil, []string{"bootstrap", "--calico-version", dockerVersion, "--snapshotter", "zfs"}, 1, "snapshotter \"zfs\""},
		{"bad platform", nil, []string{"bootstrap", "--calico-version", dockerVersion, "--platform", "linux/???"}, 1, "invalid --platform"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := n.precache(tc.env, tc.args...)
			if r.code != tc.code || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("exit %d (want %d), stderr:\n%s\nwant it to contain %q", r.code, tc.code, r.stderr, tc.want)
			}
			if strings.Count(strings.TrimSpace(r.stderr), "\n") > 2 {
				t.Errorf("error is not short:\n%s", r.stderr)
			}
		})
	}
	if names := n.imageNames(); len(names) != 0 {
		t.Errorf("bad invocations changed containerd's images: %v", names)
	}
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func writeLock(t *testing.T, l *manifest.Lock) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "calico.lock")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := l.Encode(f); err != nil {
		t.Fatal(err)
	}
	return path
}

func digestOf(s string) digest.Digest { return digest.Digest(s) }
