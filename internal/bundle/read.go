// Package bundle reads and writes offline image bundles: OCI image-layout tars, Docker
// `docker save` tars (≥ 25 with index.json, and the legacy manifest.json-only form),
// plain or compressed with gzip or zstd.
//
// Reading is streamed: blobs go straight from the tar to a Sink (containerd's content
// store in production) and only small JSON documents are held in memory, so memory does
// not grow with the bundle's size. The reader never writes to the filesystem, and it
// rejects archives a careless extractor would be hurt by (absolute paths, "..", links
// leaving the archive), oversized JSON, and compression bombs.
package bundle

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	_ "crypto/sha512" // sha512 blobs (blobs/sha512/…) are valid OCI content
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/precache/precache/internal/manifest"
)

// ErrInvalid marks a bundle that is malformed, corrupted or unsafe.
var ErrInvalid = errors.New("invalid bundle")

// Sink stores blobs as they stream out of a bundle.
type Sink interface {
	// Has reports whether the blob d is already stored with the given size.
	Has(ctx context.Context, d digest.Digest, size int64) (bool, error)
	// Write stores exactly size bytes from r. If expected is set the content must hash to
	// it; the returned digest is the content's. Content that does not match its digest or
	// size is rejected with an error wrapping ErrInvalid; any other error is the store's
	// (a full disk), and says nothing about the bundle.
	Write(ctx context.Context, r io.Reader, size int64, expected digest.Digest) (digest.Digest, error)
}

// Format is the kind of archive a bundle is.
type Format string

const (
	FormatOCILayout    Format = "oci-layout"            // index.json + blobs/, no manifest.json
	FormatDocker       Format = "docker-archive"        // docker save ≥ 25: index.json + manifest.json + blobs/
	FormatDockerLegacy Format = "docker-archive-legacy" // docker save < 25: manifest.json + <id>/layer.tar
)

// Image is one named image found in a bundle.
type Image struct {
	// Name is a normalised reference, "" when the bundle names none (see Options.BaseName).
	Name   string
	Target ocispec.Descriptor
	// Synthesized: the bundle had no manifest for the image (legacy docker save); the
	// reader wrote one, so Target's digest is not the registry's.
	Synthesized bool
}

// Result is what a bundle held.
type Result struct {
	Format      Format
	Compression string
	Images      []Image
	// Lock is the bundle's embedded lock (precache bundles), nil if none.
	Lock *manifest.Lock
	// Blobs and Bytes count the blobs in the bundle and their total size; Stored counts
	// those written (not already present).
	Blobs, Stored int
	Bytes         int64
	// Skipped: Options.Early decided nothing needed importing; the rest was not read.
	Skipped bool
	// Descriptors maps every digest a manifest or index references to its descriptor.
	Descriptors map[digest.Digest]ocispec.Descriptor
	// Documents holds the bundle's manifests and indexes by digest (small JSON).
	Documents map[digest.Digest][]byte
}

// Options tune Read.
type Options struct {
	// BaseName names images whose bundle gives only a tag ("v3.28.1") or nothing:
	// "docker.io/calico/node" → "docker.io/calico/node:v3.28.1".
	BaseName string
	// Early, if set, is called once the image list is known and before any blob was
	// read (precache bundles put index.json and the lock first). Returning skip=true
	// stops reading: everything is already in place.
	Early func(ctx context.Context, images []Image, lock *manifest.Lock) (skip bool, err error)
	// MaxRatio bounds decompressed/compressed size (default 100) once more than
	// 256 MiB has been decompressed.
	MaxRatio int64
	// OnBlob, if set, is called after each blob (digest d, size bytes) is stored or
	// verified as already stored, with the images known so far (from index.json): the
	// caller may start unpacking an image whose blobs are all in while the rest streams.
	OnBlob func(ctx context.Context, images []Image, d digest.Digest, size int64)
}

// Limits on what is held in memory.
const (
	maxJSON       = 8 << 20 // index.json, manifest.json, manifests, configs
	bombFloor     = 256 << 20
	defaultRatio  = 100
	lockEntryName = "precache-lock.json"
)

// Read streams the bundle in r into sink and returns what it held. It verifies every
// blob's digest (the sink does, on commit) and size, that every blob an image needs for
// any platform it carries is present, and for legacy docker tars that the config's
// diff_ids match the layers. It does not decide which images are wanted or unpack.
func Read(ctx context.Context, r io.Reader, sink Sink, opts Options) (*Result, error) {
	if opts.MaxRatio <= 0 {
		opts.MaxRatio = defaultRatio
	}
	counted := &countingReader{r: r}
	plain, compression, err := decompress(counted)
	if err != nil {
		return nil, err
	}
	defer plain.Close()
	guarded := &bombGuard{r: plain, in: counted, ratio: opts.MaxRatio}
	rd := &reader{
		ctx: ctx, sink: sink, opts: opts,
		res:   &Result{Compression: compression, Descriptors: map[digest.Digest]ocispec.Descriptor{}, Documents: map[digest.Digest][]byte{}},
		files: map[string]digest.Digest{}, sizes: map[string]int64{}, links: map[string]string{}, small: map[string][]byte{}, magic: map[string]string{}, seen: map[string]int64{},
	}
	if err := rd.run(tar.NewReader(guarded)); err != nil {
		return nil, err
	}
	return rd.res, nil
}

type reader struct {
	ctx  context.Context
	sink Sink
	opts Options
	res  *Result

	// files maps archive paths of stored blobs to their digests; sizes their sizes.
	files map[string]digest.Digest
	sizes map[string]int64
	// links maps link paths to their (cleaned, in-archive) targets.
	links map[string]string
	// small holds index.json, manifest.json, oci-layout, the lock, and legacy configs.
	small map[string][]byte
	// seen maps blob paths read to their sizes.
	seen map[string]int64
	// magic is the compression of legacy-format layer files, by path.
	magic map[string]string
	// sawBlob: a blob was read, so Early can no longer skip reading.
	sawBlob   bool
	earlyDone bool
}

func (rd *reader) run(tr *tar.Reader) error {
	entries := 0
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return invalid("reading tar after %d entries: %v (truncated or not a tar?)", entries, err)
		}
		entries++
		name, err := cleanName(hdr.Name)
		if err != nil {
			return err
		}
		switch hdr.Typeflag {
		case tar.TypeDir, tar.TypeXGlobalHeader:
			continue
		case tar.TypeSymlink, tar.TypeLink:
			target, err := linkTarget(name, hdr)
			if err != nil {
				return err
			}
			rd.links[name] = target
			continue
		case tar.TypeReg, '\x00': // '\x00' is pre-POSIX tar's regular file (tar.TypeRegA)
		default:
			return invalid("%s: unsupported tar entry type %q", name, hdr.Typeflag)
		}
		if hdr.Size < 0 {
			return invalid("%s: negative size", name)
		}
		if err := rd.entry(name, hdr.Size, tr); err != nil {
			if errors.Is(err, errSkip) {
				rd.res.Skipped = true
				return nil
			}
			return err
		}
	}
	if entries == 0 {
		return invalid("empty archive")
	}
	return rd.finish()
}

var errSkip = errors.New("skip")

func (rd *reader) entry(name string, size int64, r io.Reader) error {
	if d, ok := blobDigest(name); ok {
		if !rd.earlyDone {
			if err := rd.early(); err != nil {
				return err
			}
		}
		rd.sawBlob = true
		return rd.blob(name, d, size, r)
	}
	switch {
	case name == "index.json", name == "manifest.json", name == "oci-layout", name == "repositories", name == lockEntryName:
		data, err := readSmall(name, size, r)
		if err != nil {
			return err
		}
		rd.small[name] = data
		if name == "index.json" || name == lockEntryName {
			// Try now: a precache bundle has both before any blob.
			if !rd.sawBlob && rd.small["index.json"] != nil && rd.small[lockEntryName] != nil {
				return rd.early()
			}
		}
		return nil
	case name == "VERSION" || strings.HasSuffix(name, "/VERSION") || strings.HasSuffix(name, "/json"):
		return nil // legacy docker save metadata precache does not need
	default:
		// Legacy docker save (<id>/layer.tar, <hex>.json) and go-containerregistry's
		// tarball format (sha256:<hex> config, <hex>.tar.gz layers): a file named by path,
		// its digest computed as it is stored.
		d, err := rd.storeFile(name, size, r)
		if err != nil {
			return err
		}
		rd.files[name], rd.sizes[name] = d, size
		return nil
	}
}

// storeFile stores a legacy-format file, keeping it in memory too if it is small JSON
// (a config), and noting how a layer is compressed.
func (rd *reader) storeFile(name string, size int64, r io.Reader) (digest.Digest, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	head, _ := br.Peek(4)
	if size <= maxJSON && looksLikeJSON(br) {
		data, err := readSmall(name, size, br)
		if err != nil {
			return "", err
		}
		rd.small[name] = data
		return rd.store(name, size, digest.FromBytes(data), bytes.NewReader(data))
	}
	rd.magic[name] = sniff(head)
	return rd.store(name, size, "", br)
}

// early offers the image list to Options.Early before the first blob, once.
func (rd *reader) early() error {
	rd.earlyDone = true
	if rd.opts.Early == nil || rd.small["index.json"] == nil {
		return nil
	}
	images, err := rd.indexImages(rd.small["index.json"])
	if err != nil {
		return err
	}
	lock, err := rd.lock()
	if err != nil {
		return err
	}
	skip, err := rd.opts.Early(rd.ctx, images, lock)
	if err != nil {
		return err
	}
	if skip {
		rd.res.Images, rd.res.Lock, rd.res.Format = images, lock, FormatOCILayout
		return errSkip
	}
	return nil
}

func (rd *reader) lock() (*manifest.Lock, error) {
	data, ok := rd.small[lockEntryName]
	if !ok {
		return nil, nil
	}
	l, err := manifest.DecodeLock(bytes.NewReader(data))
	if err != nil {
		return nil, invalid("%s: %v", lockEntryName, err)
	}
	return l, nil
}

func (rd *reader) blob(name string, d digest.Digest, size int64, r io.Reader) error {
	rd.seen[name] = size
	if want, ok := rd.res.Descriptors[d]; ok && want.Size != size {
		return invalid("%s: %d bytes, but a manifest declares %d", name, size, want.Size)
	}
	// Manifests, indexes and configs are small JSON: keep them to walk the tree (peek).
	br := bufio.NewReaderSize(r, 64<<10)
	if size <= maxJSON && looksLikeJSON(br) {
		data, err := readSmall(name, size, br)
		if err != nil {
			return err
		}
		if d.Algorithm().FromBytes(data) != d {
			return invalid("%s: content does not match its digest (corrupted)", name)
		}
		if _, err := rd.store(name, size, d, bytes.NewReader(data)); err != nil {
			return err
		}
		rd.learn(d, data)
		rd.onBlob(d, size)
		return nil
	}
	if _, err := rd.store(name, size, d, br); err != nil {
		return err
	}
	rd.onBlob(d, size)
	return nil
}

func (rd *reader) onBlob(d digest.Digest, size int64) {
	if rd.opts.OnBlob == nil {
		return
	}
	if rd.res.Images == nil && rd.small["index.json"] != nil {
		if imgs, err := rd.indexImages(rd.small["index.json"]); err == nil {
			rd.res.Images = imgs
		}
	}
	rd.opts.OnBlob(rd.ctx, rd.res.Images, d, size)
}

// learn records the descriptors a manifest or index declares, so later blobs can be
// checked against their declared sizes as they stream by.
func (rd *reader) learn(d digest.Digest, data []byte) {
	var doc struct {
		MediaType string               `json:"mediaType"`
		Config    *ocispec.Descriptor  `json:"config"`
		Layers    []ocispec.Descriptor `json:"layers"`
		Manifests []ocispec.Descriptor `json:"manifests"`
	}
	if json.Unmarshal(data, &doc) != nil {
		return
	}
	if doc.Config == nil && doc.Layers == nil && doc.Manifests == nil {
		return // a config, not a manifest
	}
	rd.res.Documents[d] = data
	if doc.Config != nil {
		rd.res.Descriptors[doc.Config.Digest] = *doc.Config
	}
	for _, l := range doc.Layers {
		rd.res.Descriptors[l.Digest] = l
	}
	for _, m := range doc.Manifests {
		rd.res.Descriptors[m.Digest] = m
	}
}

func (rd *reader) store(name string, size int64, d digest.Digest, r io.Reader) (digest.Digest, error) {
	rd.res.Blobs++
	rd.res.Bytes += size
	if d != "" {
		have, err := rd.sink.Has(rd.ctx, d, size)
		if err != nil {
			return "", err
		}
		if have {
			// Already stored: nothing to write, but the bundle's copy is still verified, so
			// a corrupted bundle is reported before it is carried to another node.
			v := d.Verifier()
			if _, err := io.CopyN(v, r, size); err != nil {
				return "", invalid("%s: %v (truncated?)", name, err)
			}
			if !v.Verified() {
				return "", invalid("%s: content does not match its digest (corrupted)", name)
			}
			return d, nil
		}
	}
	src := &readErr{r: io.LimitReader(r, size)}
	got, err := rd.sink.Write(rd.ctx, src, size, d)
	if err != nil {
		var be *bombError
		switch {
		case errors.As(err, &be):
			return "", be
		case src.err != nil || errors.Is(err, ErrInvalid):
			// The archive could not be read, or its bytes are not what it declares.
			return "", fmt.Errorf("%w: %s: %w", ErrInvalid, name, err)
		}
		// The store failed (a full disk, the daemon gone): the bundle is fine.
		return "", fmt.Errorf("storing %s: %w", name, err)
	}
	rd.res.Stored++
	return got, nil
}

// looksLikeJSON reports whether br starts with a JSON object; JSON allows whitespace
// before it, and some writers indent or prefix a newline.
func looksLikeJSON(br *bufio.Reader) bool {
	head, _ := br.Peek(512)
	for _, c := range head {
		switch c {
		case ' ', '\t', '\n', '\r':
			continue
		case '{':
			return true
		}
		return false
	}
	return false
}

func readSmall(name string, size int64, r io.Reader) ([]byte, error) {
	if size > maxJSON {
		return nil, invalid("%s: %d bytes, more than the %d a bundle's JSON may have", name, size, maxJSON)
	}
	data := make([]byte, size)
	if _, err := io.ReadFull(r, data); err != nil {
		return nil, invalid("%s: %v (truncated?)", name, err)
	}
	return data, nil
}

// readErr remembers a read error, to tell a broken archive from a failing store.
type readErr struct {
	r   io.Reader
	err error
}

func (r *readErr) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF {
		r.err = err
	}
	return n, err
}

// blobDigest parses "blobs/<alg>/<hex>".
func blobDigest(name string) (digest.Digest, bool) {
	rest, ok := strings.CutPrefix(name, "blobs/")
	if !ok {
		return "", false
	}
	alg, hex, ok := strings.Cut(rest, "/")
	if !ok || strings.Contains(hex, "/") {
		return "", false
	}
	d := digest.NewDigestFromEncoded(digest.Algorithm(alg), hex)
	if d.Validate() != nil {
		return "", false
	}
	return d, true
}

// cleanName rejects names an extractor could be tricked with and returns the clean form.
func cleanName(name string) (string, error) {
	if name == "" {
		return "", invalid("tar entry with an empty name")
	}
	if strings.HasPrefix(name, "/") {
		return "", invalid("%s: absolute path in the archive", name)
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", invalid("%s: \"..\" in an archive path", name)
		}
	}
	return strings.TrimPrefix(path.Clean(name), "./"), nil
}

// linkTarget resolves a link within the archive, rejecting targets outside it.
func linkTarget(name string, hdr *tar.Header) (string, error) {
	t := hdr.Linkname
	if t == "" || strings.HasPrefix(t, "/") {
		return "", invalid("%s: link to %q points outside the archive", name, t)
	}
	var joined string
	if hdr.Typeflag == tar.TypeSymlink {
		joined = path.Join(path.Dir(name), t)
	} else {
		joined = path.Clean(t) // hard links are relative to the archive root
	}
	if joined == ".." || strings.HasPrefix(joined, "../") {
		return "", invalid("%s: link to %q points outside the archive", name, t)
	}
	return joined, nil
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// PeekLock reads a precache bundle only as far as its embedded lock (the third entry):
// what the bundle holds, without importing it.
func PeekLock(r io.Reader) (*manifest.Lock, error) {
	plain, _, err := decompress(r)
	if err != nil {
		return nil, err
	}
	defer plain.Close()
	tr := tar.NewReader(plain)
	for i := 0; i < 8; i++ {
		hdr, err := tr.Next()
		if err != nil {
			break
		}
		if hdr.Name != lockEntryName {
			continue
		}
		data, err := readSmall(hdr.Name, hdr.Size, tr)
		if err != nil {
			return nil, err
		}
		l, err := manifest.DecodeLock(bytes.NewReader(data))
		if err != nil {
			return nil, invalid("%s: %v", lockEntryName, err)
		}
		return l, nil
	}
	return nil, invalid("no %s near the start: not a bundle made by precache bundle", lockEntryName)
}
