package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// writeTar writes an OCI layout tar holding an index of two platforms, named as make image
// names it; corrupt flips a byte of the index blob.
func writeTar(t *testing.T, name string, corrupt bool) (string, string) {
	t.Helper()
	idx := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[` +
		`{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:` + strings.Repeat("a", 64) + `","size":1,"platform":{"os":"linux","architecture":"amd64"}},` +
		`{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:` + strings.Repeat("b", 64) + `","size":1,"platform":{"os":"linux","architecture":"arm64"}}]}`)
	sum := sha256.Sum256(idx)
	dg := "sha256:" + hex.EncodeToString(sum[:])
	top, _ := json.Marshal(map[string]any{"schemaVersion": 2, "manifests": []map[string]any{{
		"mediaType": mediaIndex, "digest": dg, "size": len(idx),
		"annotations": map[string]string{annotationImageName: name, annotationRefName: name[strings.LastIndex(name, ":")+1:]},
	}}})
	blob := idx
	if corrupt {
		blob = bytes.Replace(idx, []byte("arm64"), []byte("arm65"), 1)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range []struct {
		name string
		data []byte
	}{{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)}, {"index.json", top}, {"blobs/sha256/" + dg[7:], blob}} {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.data)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(f.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "image.oci.tar")
	if err := os.WriteFile(file, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return file, dg
}

func TestReadImageTar(t *testing.T) {
	t.Parallel()
	file, dg := writeTar(t, Repository+":v1.2.3-4-gabcdef0", false)
	img, err := ReadImageTar(file)
	if err != nil {
		t.Fatal(err)
	}
	if img.Tag != "v1.2.3-4-gabcdef0" || img.Digest != dg || strings.Join(img.Platforms, ",") != "linux/amd64,linux/arm64" {
		t.Fatalf("%+v", img)
	}
	if img.Ref() != Repository+":v1.2.3-4-gabcdef0@"+dg {
		t.Fatal(img.Ref())
	}
	for _, tt := range []struct {
		name, image string
		corrupt     bool
		want        string
	}{
		{"a blob that does not match its digest", Repository + ":v1", true, "hashes to"},
		{"another repository", "docker.io/library/busybox:1", false, "names no image of " + Repository},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			file, _ := writeTar(t, tt.image, tt.corrupt)
			if _, err := ReadImageTar(file); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want %q", err, tt.want)
			}
		})
	}
}

const kust = `# a comment that stays
resources:
  - daemonset.yaml
images:
  - name: ghcr.io/precache/precache # ours
    newTag: old
    digest: sha256:` + "1111111111111111111111111111111111111111111111111111111111111111" + `
`

func TestSetPin(t *testing.T) {
	t.Parallel()
	dg := "sha256:" + strings.Repeat("c", 64)
	out, err := SetPin([]byte(kust), Pin{Tag: "v2", Digest: dg})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "# a comment that stays") || !strings.Contains(string(out), "# ours") {
		t.Errorf("comments lost:\n%s", out)
	}
	p, err := ReadPin(out)
	if err != nil || p != (Pin{"v2", dg}) {
		t.Fatalf("%+v %v\n%s", p, err, out)
	}
	for _, bad := range []Pin{{"latest", dg}, {"v2", "sha256:abc"}, {"v2", "md5:" + strings.Repeat("c", 64)}, {"", dg}, {"v2", strings.ToUpper(dg)}} {
		if _, err := SetPin([]byte(kust), bad); err == nil {
			t.Errorf("SetPin(%+v) accepted", bad)
		}
	}
}

// TestBuildRendersTagAndDigest: kustomize renders newTag and digest together as
// name:tag@digest, on the container and, through the replacement, on PRECACHE_SELF_IMAGE;
// the pinned copy leaves the tree as it was.
func TestBuildRendersTagAndDigest(t *testing.T) {
	t.Parallel()
	deploy := filepath.Join("..", "..", "deploy")
	before, err := os.ReadFile(filepath.Join(deploy, BaseKustomization))
	if err != nil {
		t.Fatal(err)
	}
	dg := "sha256:" + strings.Repeat("d", 64)
	for _, overlay := range []string{"kubespray", "operator"} {
		fsys, dir, err := pinnedOverlay(deploy, filepath.Join(deploy, "overlays", overlay), Image{Tag: "v9.9.9", Digest: dg})
		if err != nil {
			t.Fatal(err)
		}
		out, err := Build(fsys, dir)
		if err != nil {
			t.Fatal(err)
		}
		want := Repository + ":v9.9.9@" + dg
		if n := strings.Count(string(out), want); n != 2 {
			t.Errorf("%s: %s appears %d times, want 2 (image, PRECACHE_SELF_IMAGE):\n%s", overlay, want, n, out)
		}
	}
	after, _ := os.ReadFile(filepath.Join(deploy, BaseKustomization))
	if !bytes.Equal(before, after) {
		t.Error("rendering with another pin changed the committed kustomization")
	}
	// A tag alone is refused: that is what latest-by-another-name looks like.
	mem := filesys.MakeFsInMemory()
	_ = mem.WriteFile("/k/kustomization.yaml", []byte("resources: [ds.yaml]\nimages:\n- name: ghcr.io/precache/precache\n  newTag: v1\n"))
	_ = mem.WriteFile("/k/ds.yaml", []byte("apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: x}\nspec:\n  template:\n    spec:\n      containers:\n      - name: x\n        image: ghcr.io/precache/precache\n"))
	if _, err := Build(mem, "/k"); err == nil || !strings.Contains(err.Error(), "digest") {
		t.Errorf("a tag without a digest rendered: %v", err)
	}
}
