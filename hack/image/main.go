// Command image builds precache's container image without a container engine: a static
// binary per platform, a CA bundle, /etc/passwd and /etc/group with the nonroot user, put
// together with go-containerregistry into an OCI image index and written as an OCI
// image-layout tar that `precache import` (or `ctr images import`) loads.
//
// Everything that goes into the image is fixed by the commit: file times and the config's
// created date come from SOURCE_DATE_EPOCH (the commit time), the CA bundle from a pinned
// Go module, the binary from the pinned toolchain with -trimpath. So the same commit built
// with the same Go toolchain gives the same index digest on any machine.
//
//	go run ./hack/image -version v0.3.0 [-revision SHA] [-out dist/precache-v0.3.0.oci.tar]
//
// It prints what it built on standard error and the tar's path, alone, as the last line
// on standard output.
package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"debug/elf"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"
	"golang.org/x/crypto/x509roots/fallback/bundle"
)

const (
	binaryPath = "/usr/local/bin/precache"
	caPath     = "/etc/ssl/certs/ca-certificates.crt"
	// nonroot is distroless' unprivileged user; the image runs as it unless told
	// otherwise (the DaemonSet sets runAsUser: 0 because containerd's socket is root's).
	nonrootID = 65532
)

type options struct {
	version   string
	revision  string
	created   time.Time
	repo      string
	source    string
	licenses  string
	out       string
	pkg       string
	platforms []v1.Platform
}

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	o, err := parseFlags(args)
	if err != nil {
		return err
	}
	start := time.Now()
	tmp, err := os.MkdirTemp("", "precache-image-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(tmp) }()

	base, err := baseLayer(o.created)
	if err != nil {
		return err
	}
	labels := o.labels()
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, p := range o.platforms {
		bin := filepath.Join(tmp, "precache-"+p.OS+"-"+p.Architecture)
		if err := buildBinary(o, p, bin); err != nil {
			return err
		}
		img, err := platformImage(o, p, base, bin, labels)
		if err != nil {
			return err
		}
		desc := p
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &desc}})
	}
	idx, ok := mutate.Annotations(idx, labels).(v1.ImageIndex)
	if !ok {
		return errors.New("annotating the index: not an index")
	}
	if err := writeLayoutTar(o, idx, tmp); err != nil {
		return err
	}
	report(stderr, o, idx, time.Since(start))
	fmt.Fprintln(stdout, o.out)
	return nil
}

func parseFlags(args []string) (*options, error) {
	fset := flag.NewFlagSet("image", flag.ContinueOnError)
	var (
		o         options
		created   string
		platforms string
	)
	fset.StringVar(&o.version, "version", "", "image version: the tag, the binary's version and the version label (required)")
	fset.StringVar(&o.revision, "revision", "", "source revision label (default: git rev-parse HEAD)")
	fset.StringVar(&created, "created", os.Getenv("SOURCE_DATE_EPOCH"), "Unix time of every file and of the config's created date (default: $SOURCE_DATE_EPOCH, else the commit time of HEAD)")
	fset.StringVar(&o.repo, "repo", "ghcr.io/precache/precache", "repository the image is named in (io.containerd.image.name REPO:VERSION)")
	fset.StringVar(&o.source, "source", "https://github.com/precache/precache", "source label")
	fset.StringVar(&o.licenses, "licenses", "", "SPDX licence expression for the licenses label (none when empty)")
	fset.StringVar(&o.out, "out", "", "output tar (default: dist/precache-VERSION.oci.tar)")
	fset.StringVar(&o.pkg, "pkg", "./cmd/precache", "package of the binary")
	fset.StringVar(&platforms, "platforms", "linux/amd64,linux/arm64", "comma-separated platforms")
	if err := fset.Parse(args); err != nil {
		return nil, err
	}
	if fset.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fset.Args())
	}
	if o.version == "" {
		return nil, errors.New("-version is required (make image passes git describe)")
	}
	if _, err := name.NewTag(o.repo+":"+o.version, name.StrictValidation); err != nil {
		return nil, fmt.Errorf("-repo and -version do not make an image name: %w", err)
	}
	if o.revision == "" {
		out, err := exec.Command("git", "rev-parse", "HEAD").Output()
		if err != nil {
			return nil, fmt.Errorf("reading the revision (git rev-parse HEAD): %w; pass -revision", err)
		}
		o.revision = strings.TrimSpace(string(out))
	}
	if created == "" {
		out, err := exec.Command("git", "log", "-1", "--format=%ct").Output()
		if err != nil {
			return nil, fmt.Errorf("reading the commit time (git log -1 --format=%%ct): %w; set SOURCE_DATE_EPOCH or pass -created", err)
		}
		created = strings.TrimSpace(string(out))
	}
	sec, err := strconv.ParseInt(created, 10, 64)
	if err != nil || sec < 0 {
		return nil, fmt.Errorf("-created %q: want a Unix time in seconds", created)
	}
	o.created = time.Unix(sec, 0).UTC()
	for _, s := range strings.Split(platforms, ",") {
		p, err := v1.ParsePlatform(strings.TrimSpace(s))
		if err != nil {
			return nil, err
		}
		if p.OS != "linux" || (p.Architecture != "amd64" && p.Architecture != "arm64") {
			return nil, fmt.Errorf("platform %s: only linux/amd64 and linux/arm64 are built", s)
		}
		if p.Architecture == "arm64" && p.Variant == "" {
			// What registries and containerd normalise arm64 to.
			p.Variant = "v8"
		}
		o.platforms = append(o.platforms, *p)
	}
	if o.out == "" {
		o.out = filepath.Join("dist", "precache-"+o.version+".oci.tar")
	}
	return &o, nil
}

func (o *options) ref() string { return o.repo + ":" + o.version }

// labels go into each config and, as annotations, onto each manifest and the index.
func (o *options) labels() map[string]string {
	l := map[string]string{
		"org.opencontainers.image.title":       "precache",
		"org.opencontainers.image.description": "Keeps Calico's images, and the node's recovery set, pulled, pinned and verified in containerd",
		"org.opencontainers.image.version":     o.version,
		"org.opencontainers.image.revision":    o.revision,
		"org.opencontainers.image.source":      o.source,
		"org.opencontainers.image.created":     o.created.Format(time.RFC3339),
	}
	if o.licenses != "" {
		l["org.opencontainers.image.licenses"] = o.licenses
	}
	return l
}

// buildBinary builds a static binary for p. The microarchitecture levels are set to Go's
// defaults explicitly, so a GOAMD64 or GOARM64 in the caller's environment cannot change
// the image.
func buildBinary(o *options, p v1.Platform, out string) error {
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w -X main.version="+o.version, "-o", out, o.pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS="+p.OS, "GOARCH="+p.Architecture, "GOAMD64=v1", "GOARM64=v8.0")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("building %s for %s: %w", o.pkg, p.String(), err)
	}
	return checkStatic(out, p.Architecture)
}

// checkStatic refuses a binary that would not run in the image: one for another
// architecture, or one that needs a dynamic loader the image does not have (the exec
// would fail with a bare "no such file or directory").
func checkStatic(path, arch string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("reading %s: %w", path, err)
	}
	defer func() { _ = f.Close() }()
	want := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}[arch]
	if f.Machine != want {
		return fmt.Errorf("%s is built for %s, not %s", path, f.Machine, arch)
	}
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP || prog.Type == elf.PT_DYNAMIC {
			return fmt.Errorf("%s is dynamically linked (%s): build it with CGO_ENABLED=0", path, prog.Type)
		}
	}
	return nil
}

// file is one entry of a layer.
type file struct {
	name     string
	mode     int64
	uid, gid int
	body     []byte // nil for a directory
}

// baseLayer holds what every platform shares: users, groups, the CA bundle, /tmp.
func baseLayer(mtime time.Time) (v1.Layer, error) {
	ca, err := caBundle()
	if err != nil {
		return nil, err
	}
	passwd := "root:x:0:0:root:/root:/sbin/nologin\n" +
		"nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n" +
		"nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
	group := "root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n"
	return layer([]file{
		{name: "etc/", mode: 0o755},
		{name: "etc/group", mode: 0o644, body: []byte(group)},
		{name: "etc/nsswitch.conf", mode: 0o644, body: []byte("hosts: files dns\n")},
		{name: "etc/passwd", mode: 0o644, body: []byte(passwd)},
		{name: "etc/ssl/", mode: 0o755},
		{name: "etc/ssl/certs/", mode: 0o755},
		{name: strings.TrimPrefix(caPath, "/"), mode: 0o644, body: ca},
		{name: "home/", mode: 0o755},
		{name: "home/nonroot/", mode: 0o700, uid: nonrootID, gid: nonrootID},
		{name: "root/", mode: 0o700},
		{name: "tmp/", mode: 0o1777},
	}, mtime)
}

// caBundle is the Mozilla root store as the pinned golang.org/x/crypto/x509roots/fallback
// module carries it, in PEM: the same bytes on every machine, unlike a distribution's
// ca-certificates package. Roots with constraints PEM cannot express (a distrust-after
// date) are left out rather than trusted without them.
func caBundle() ([]byte, error) {
	var b bytes.Buffer
	n := 0
	for r := range bundle.Roots() {
		if r.Constraint != nil {
			continue
		}
		if err := pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: r.Certificate}); err != nil {
			return nil, err
		}
		n++
	}
	if n == 0 {
		return nil, errors.New("the fallback root bundle is empty")
	}
	return b.Bytes(), nil
}

func binaryLayer(bin string, mtime time.Time) (v1.Layer, error) {
	body, err := os.ReadFile(bin)
	if err != nil {
		return nil, err
	}
	return layer([]file{
		{name: "usr/", mode: 0o755},
		{name: "usr/local/", mode: 0o755},
		{name: "usr/local/bin/", mode: 0o755},
		{name: strings.TrimPrefix(binaryPath, "/"), mode: 0o755, body: body},
	}, mtime)
}

// layer writes files as a gzip-compressed tar with fixed owners, modes and times, and no
// user or group names, so its digest depends on the contents only. It is compressed once
// here: ggcr would otherwise compress it again on every read.
func layer(files []file, mtime time.Time) (v1.Layer, error) {
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	for _, f := range files {
		h := &tar.Header{Name: f.name, Mode: f.mode, Uid: f.uid, Gid: f.gid, ModTime: mtime, Format: tar.FormatPAX}
		if f.body == nil {
			h.Typeflag = tar.TypeDir
		} else {
			h.Typeflag = tar.TypeReg
			h.Size = int64(len(f.body))
		}
		// PAX, so that the mode's sticky bit and large ids survive; with no extended fields
		// needed the writer emits plain USTAR headers, which carry no access or change times.
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.body); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	var zb bytes.Buffer
	zw, err := gzip.NewWriterLevel(&zb, gzip.DefaultCompression)
	if err != nil {
		return nil, err
	}
	if _, err := zw.Write(tb.Bytes()); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	data := zb.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	}, tarball.WithMediaType(types.OCILayer))
}

func platformImage(o *options, p v1.Platform, base v1.Layer, bin string, labels map[string]string) (v1.Image, error) {
	top, err := binaryLayer(bin, o.created)
	if err != nil {
		return nil, err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.ConfigFile(img, &v1.ConfigFile{
		Architecture: p.Architecture,
		OS:           p.OS,
		Variant:      p.Variant,
		Created:      v1.Time{Time: o.created},
		RootFS:       v1.RootFS{Type: "layers"},
		Config: v1.Config{
			User:       strconv.Itoa(nonrootID),
			Env:        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "SSL_CERT_FILE=" + caPath},
			Entrypoint: []string{binaryPath},
			WorkingDir: "/",
			Labels:     labels,
		},
	})
	if err != nil {
		return nil, err
	}
	created := v1.Time{Time: o.created}
	img, err = mutate.Append(img,
		mutate.Addendum{Layer: base, History: v1.History{Created: created, CreatedBy: "hack/image: /etc/passwd, /etc/group, " + caPath, Comment: "golang.org/x/crypto/x509roots/fallback roots"}},
		mutate.Addendum{Layer: top, History: v1.History{Created: created, CreatedBy: "hack/image: go build -trimpath -ldflags '-s -w -X main.version=" + o.version + "' " + o.pkg + " → " + binaryPath}},
	)
	if err != nil {
		return nil, err
	}
	img, ok := mutate.Annotations(img, labels).(v1.Image)
	if !ok {
		return nil, errors.New("annotating the manifest: not an image")
	}
	return img, nil
}

// writeLayoutTar writes idx as an OCI image layout (index.json with one entry, the index,
// named for containerd and by the OCI ref.name) and packs it into o.out: entries sorted,
// owned by root, timed at the commit, so the tar itself is reproducible too.
func writeLayoutTar(o *options, idx v1.ImageIndex, tmp string) error {
	dir := filepath.Join(tmp, "layout")
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	if err := p.AppendIndex(idx, layout.WithAnnotations(map[string]string{
		"org.opencontainers.image.ref.name": o.version,
		"io.containerd.image.name":          o.ref(),
	})); err != nil {
		return fmt.Errorf("writing the image layout: %w", err)
	}
	// An independent check of what was written, read back from the layout: media types,
	// digests and sizes of every blob, diff IDs against the layers' contents, platforms
	// against the configs.
	written, err := p.ImageIndex()
	if err != nil {
		return err
	}
	wm, err := written.IndexManifest()
	if err != nil {
		return err
	}
	if len(wm.Manifests) != 1 {
		return fmt.Errorf("the layout's index.json has %d entries, want 1", len(wm.Manifests))
	}
	got, err := written.ImageIndex(wm.Manifests[0].Digest)
	if err != nil {
		return err
	}
	if err := validate.Index(got); err != nil {
		return fmt.Errorf("validating the written image index: %w", err)
	}
	var names []string
	err = filepath.WalkDir(dir, func(path string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if path != dir {
			rel, err := filepath.Rel(dir, path)
			if err != nil {
				return err
			}
			names = append(names, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		return err
	}
	slices.Sort(names)
	if err := os.MkdirAll(filepath.Dir(o.out), 0o755); err != nil {
		return err
	}
	tmpOut := o.out + ".tmp"
	f, err := os.Create(tmpOut)
	if err != nil {
		return err
	}
	defer func() { _ = os.Remove(tmpOut) }() // gone once renamed
	defer f.Close()
	tw := tar.NewWriter(f)
	for _, n := range names {
		fi, err := os.Stat(filepath.Join(dir, n))
		if err != nil {
			return err
		}
		h := &tar.Header{Name: n, Mode: 0o644, ModTime: o.created, Typeflag: tar.TypeReg, Size: fi.Size(), Format: tar.FormatPAX}
		if fi.IsDir() {
			h.Name, h.Mode, h.Typeflag, h.Size = n+"/", 0o755, tar.TypeDir, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if !fi.IsDir() {
			if err := copyFile(tw, filepath.Join(dir, n)); err != nil {
				return err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmpOut, o.out)
}

func copyFile(w io.Writer, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(w, f)
	return err
}

// report says what was built: the digests to compare between builds, and sizes.
func report(w io.Writer, o *options, idx v1.ImageIndex, took time.Duration) {
	d, _ := idx.Digest()
	fmt.Fprintf(w, "image %s (%s)\n  index  %s\n", o.ref(), o.created.Format(time.RFC3339), d)
	m, err := idx.IndexManifest()
	if err != nil {
		return
	}
	for _, desc := range m.Manifests {
		img, err := idx.Image(desc.Digest)
		if err != nil {
			continue
		}
		var compressed, uncompressed int64
		if layers, err := img.Layers(); err == nil {
			for _, l := range layers {
				if s, err := l.Size(); err == nil {
					compressed += s
				}
				if rc, err := l.Uncompressed(); err == nil {
					n, _ := io.Copy(io.Discard, rc)
					rc.Close()
					uncompressed += n
				}
			}
		}
		fmt.Fprintf(w, "  %-12s %s  layers %.1f MiB compressed, %.1f MiB unpacked\n", desc.Platform.String(), desc.Digest, mib(compressed), mib(uncompressed))
	}
	if fi, err := os.Stat(o.out); err == nil {
		fmt.Fprintf(w, "  tar    %.1f MiB, built in %s\n", mib(fi.Size()), took.Round(100*time.Millisecond))
	}
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }
