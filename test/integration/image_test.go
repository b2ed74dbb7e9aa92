package integration

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/validate"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// What the image tests build: a fixed version, revision and time, so two builds of the
// same tree must match byte for byte.
const (
	imageVersion  = "v0.0.0-it"
	imageRevision = "0123456789abcdef0123456789abcdef01234567"
	imageEpoch    = 1767225600 // 2026-01-01T00:00:00Z
	imageRepo     = "ghcr.io/precache/precache"
)

var imageCreated = time.Unix(imageEpoch, 0).UTC()

// buildImage runs make image's builder (go run ./hack/image) from the module root, writing
// into dir, and returns the tar's path: the last line it prints, alone.
func buildImage(t *testing.T, dir string) string {
	t.Helper()
	out := filepath.Join(dir, "precache-"+imageVersion+".oci.tar")
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Minute) // a cold arm64 build on 2 cores
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "run", "./hack/image",
		"-version", imageVersion, "-revision", imageRevision, "-created", fmt.Sprint(imageEpoch), "-out", out)
	cmd.Dir = filepath.Join("..", "..")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("go run ./hack/image: %v\n%s", err, stderr.String())
	}
	t.Logf("built in %s:\n%s", time.Since(start).Round(100*time.Millisecond), stderr.String())
	lines := strings.Split(strings.TrimRight(stdout.String(), "\n"), "\n")
	if last := lines[len(lines)-1]; last != out {
		t.Fatalf("last line printed %q, want the tar's path %q", last, out)
	}
	return out
}

// TestImageReproducible: the image builder run twice on the same tree, into different
// directories, writes the same tar byte for byte; and the image is what the DaemonSet and
// the CLI need: both platforms, each with a static binary for its architecture, a CA
// bundle, the nonroot user by default, labels and annotations, nothing owned by a stray
// uid, every time the commit's.
func TestImageReproducible(t *testing.T) {
	first := buildImage(t, t.TempDir())
	second := buildImage(t, t.TempDir())
	a, b := fileDigest(t, first), fileDigest(t, second)
	ia, ib := indexDigest(t, first), indexDigest(t, second)
	if ia != ib {
		t.Errorf("two builds of the same tree: image index %s, then %s", ia, ib)
	}
	if a != b {
		t.Errorf("two builds of the same tree: tar sha256:%s, then sha256:%s", a, b)
	}
	t.Logf("image index %s, tar sha256:%s", ia, a)
	checkImage(t, first)
}

func fileDigest(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// layoutEntry is index.json's one entry, and what it names.
func layoutEntry(t *testing.T, tarPath string) ocispec.Descriptor {
	t.Helper()
	var idx ocispec.Index
	if err := json.Unmarshal(tarMember(t, tarPath, "index.json"), &idx); err != nil {
		t.Fatalf("index.json: %v", err)
	}
	if len(idx.Manifests) != 1 {
		t.Fatalf("index.json has %d entries, want 1: %+v", len(idx.Manifests), idx.Manifests)
	}
	return idx.Manifests[0]
}

func indexDigest(t *testing.T, tarPath string) string {
	t.Helper()
	return layoutEntry(t, tarPath).Digest.String()
}

// tarMember reads one file of a tar.
func tarMember(t *testing.T, tarPath, name string) []byte {
	t.Helper()
	f, err := os.Open(tarPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			t.Fatalf("%s has no %s", tarPath, name)
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Name == name {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
	}
}

// checkImage reads the tar as an OCI layout and checks everything about the image.
func checkImage(t *testing.T, tarPath string) {
	t.Helper()
	dir := t.TempDir()
	f, err := os.Open(tarPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(imageCreated) {
			t.Errorf("layout tar: %s owned by %d:%d, time %s; want 0:0 at %s", h.Name, h.Uid, h.Gid, h.ModTime.UTC(), imageCreated)
		}
		p := filepath.Join(dir, filepath.FromSlash(h.Name))
		if !strings.HasPrefix(p, dir+string(filepath.Separator)) {
			t.Fatalf("layout tar: entry %q outside the layout", h.Name)
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
		case tar.TypeReg:
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
		default:
			t.Errorf("layout tar: %s has type %c", h.Name, h.Typeflag)
		}
	}

	entry := layoutEntry(t, tarPath)
	if entry.MediaType != ocispec.MediaTypeImageIndex {
		t.Errorf("index.json entry is a %s, want an image index", entry.MediaType)
	}
	wantNames := map[string]string{
		ocispec.AnnotationRefName:  imageVersion,
		"io.containerd.image.name": imageRepo + ":" + imageVersion,
	}
	for k, v := range wantNames {
		if entry.Annotations[k] != v {
			t.Errorf("index.json entry: %s = %q, want %q", k, entry.Annotations[k], v)
		}
	}

	lp, err := layout.FromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	root, err := lp.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	h, err := v1.NewHash(entry.Digest.String())
	if err != nil {
		t.Fatal(err)
	}
	idx, err := root.ImageIndex(h)
	if err != nil {
		t.Fatal(err)
	}
	// ggcr's own checker, independent of precache's reader: every digest, size, diff ID,
	// media type, and each platform against its config.
	if err := validate.Index(idx); err != nil {
		t.Fatalf("validate: %v", err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	wantLabels := map[string]string{
		"org.opencontainers.image.version":  imageVersion,
		"org.opencontainers.image.revision": imageRevision,
		"org.opencontainers.image.source":   "https://github.com/precache/precache",
		"org.opencontainers.image.title":    "precache",
		"org.opencontainers.image.created":  imageCreated.Format(time.RFC3339),
	}
	checkLabels(t, "index annotations", im.Annotations, wantLabels)
	var platforms []string
	for _, desc := range im.Manifests {
		if desc.Platform == nil {
			t.Errorf("manifest %s without a platform", desc.Digest)
			continue
		}
		platforms = append(platforms, desc.Platform.String())
		img, err := idx.Image(desc.Digest)
		if err != nil {
			t.Fatal(err)
		}
		t.Run(desc.Platform.String(), func(t *testing.T) {
			checkPlatformImage(t, img, desc.Platform, wantLabels)
		})
	}
	slices.Sort(platforms)
	if want := []string{"linux/amd64", "linux/arm64/v8"}; !slices.Equal(platforms, want) {
		t.Errorf("platforms %v, want %v", platforms, want)
	}
}

func checkLabels(t *testing.T, where string, got, want map[string]string) {
	t.Helper()
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %s = %q, want %q", where, k, got[k], v)
		}
	}
	if d := got["org.opencontainers.image.description"]; d == "" {
		t.Errorf("%s: no description", where)
	}
}

func checkPlatformImage(t *testing.T, img v1.Image, p *v1.Platform, wantLabels map[string]string) {
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if m.MediaType != ocispec.MediaTypeImageManifest || m.Config.MediaType != ocispec.MediaTypeImageConfig {
		t.Errorf("media types %s, config %s: want OCI", m.MediaType, m.Config.MediaType)
	}
	checkLabels(t, "manifest annotations", m.Annotations, wantLabels)
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	checkLabels(t, "config labels", cf.Config.Labels, wantLabels)
	if cf.Architecture != p.Architecture || cf.OS != "linux" {
		t.Errorf("config for %s/%s in the %s entry", cf.OS, cf.Architecture, p)
	}
	if cf.Config.User != "65532" {
		t.Errorf("default user %q, want 65532 (nonroot)", cf.Config.User)
	}
	if !slices.Equal(cf.Config.Entrypoint, []string{"/usr/local/bin/precache"}) || len(cf.Config.Cmd) != 0 {
		t.Errorf("entrypoint %q cmd %q", cf.Config.Entrypoint, cf.Config.Cmd)
	}
	if !cf.Created.Time.Equal(imageCreated) {
		t.Errorf("created %s, want %s", cf.Created.Time, imageCreated)
	}
	for _, h := range cf.History {
		if !h.Created.Time.Equal(imageCreated) {
			t.Errorf("history %q created %s", h.CreatedBy, h.Created.Time)
		}
	}

	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{}
	for i, l := range layers {
		mt, _ := l.MediaType()
		if mt != ocispec.MediaTypeImageLayerGzip {
			t.Errorf("layer %d: %s", i, mt)
		}
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			owner := 0
			if h.Name == "home/nonroot/" {
				owner = 65532
			}
			if h.Uid != owner || h.Gid != owner || h.Uname != "" || h.Gname != "" {
				t.Errorf("layer %d: %s owned by %d:%d (%q:%q), want %d:%d", i, h.Name, h.Uid, h.Gid, h.Uname, h.Gname, owner, owner)
			}
			if !h.ModTime.Equal(imageCreated) || !h.AccessTime.IsZero() || !h.ChangeTime.IsZero() {
				t.Errorf("layer %d: %s times %s/%s/%s, want only the modification time %s", i, h.Name, h.ModTime.UTC(), h.AccessTime, h.ChangeTime, imageCreated)
			}
			if h.Mode&0o6000 != 0 {
				t.Errorf("layer %d: %s is setuid/setgid (%o)", i, h.Name, h.Mode)
			}
			if h.Typeflag == tar.TypeReg {
				b, err := io.ReadAll(tr)
				if err != nil {
					t.Fatal(err)
				}
				files["/"+h.Name] = b
			}
		}
		rc.Close()
	}

	bin, ok := files["/usr/local/bin/precache"]
	if !ok {
		t.Fatal("no /usr/local/bin/precache")
	}
	if err := staticFor(bin, p.Architecture); err != nil {
		t.Error(err)
	}
	if !bytes.Contains(bin, []byte(imageVersion)) {
		t.Errorf("the binary does not carry its version %q (-X main.version)", imageVersion)
	}
	if !strings.Contains(string(files["/etc/passwd"]), "nonroot:x:65532:65532:") || !strings.Contains(string(files["/etc/group"]), "nonroot:x:65532:") {
		t.Errorf("/etc/passwd, /etc/group lack nonroot 65532:\n%s\n%s", files["/etc/passwd"], files["/etc/group"])
	}
	if n, err := countCerts(files["/etc/ssl/certs/ca-certificates.crt"]); err != nil || n < 100 {
		t.Errorf("/etc/ssl/certs/ca-certificates.crt: %d certificates, %v", n, err)
	}
}

// staticFor says why bin would not run as the image's entrypoint on arch: another
// machine, or a dynamic loader the image does not have.
func staticFor(bin []byte, arch string) error {
	f, err := elf.NewFile(bytes.NewReader(bin))
	if err != nil {
		return fmt.Errorf("the binary is not ELF: %w", err)
	}
	want := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}[arch]
	if f.Machine != want {
		return fmt.Errorf("the binary is for %s, want %s (%s)", f.Machine, want, arch)
	}
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP || prog.Type == elf.PT_DYNAMIC {
			return fmt.Errorf("the binary is dynamically linked (%s)", prog.Type)
		}
	}
	return nil
}

// countCerts parses a PEM bundle the way Go's crypto/x509 reads SSL_CERT_FILE.
func countCerts(b []byte) (int, error) {
	n := 0
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			break
		}
		if _, err := x509.ParseCertificate(block.Bytes); err != nil {
			return n, err
		}
		n++
	}
	if len(bytes.TrimSpace(b)) > 0 {
		return n, errors.New("bytes after the last certificate")
	}
	return n, nil
}
