package manifest

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"

	digest "github.com/opencontainers/go-digest"
)

// LockVersion is the lock file format version this build reads and writes.
const LockVersion = 1

// Lock pins image references to the digests they must have on the node.
//
// On disk it is JSON:
//
//	{
//	  "version": 1,
//	  "images": {
//	    "docker.io/calico/node:v3.28.1": "sha256:…",
//	    "docker.io/calico/cni:v3.28.1": "sha256:…"
//	  }
//	}
//
// Keys are image references in any form the kubelet accepts ("calico/node:v3.28.1" works);
// they are normalised on reading. Values are the digests of what the registry serves for
// the reference: the image index for multi-arch images, the manifest otherwise.
type Lock struct {
	Version int                      `json:"version"`
	Images  map[string]digest.Digest `json:"images"`
}

// maxLockSize bounds what ReadLock will load; a real lock is a few KiB.
const maxLockSize = 4 << 20

// ReadLock reads and validates a lock file.
func ReadLock(path string) (*Lock, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading lock file: %w", err)
	}
	defer f.Close()
	l, err := DecodeLock(io.LimitReader(f, maxLockSize+1))
	if err != nil {
		return nil, fmt.Errorf("lock file %s: %w", path, err)
	}
	return l, nil
}

// DecodeLock parses a lock, normalising its keys and checking its digests.
func DecodeLock(r io.Reader) (*Lock, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	if len(data) > maxLockSize {
		return nil, fmt.Errorf("larger than %d bytes", maxLockSize)
	}
	var raw Lock
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("not a precache lock (JSON {\"version\":1,\"images\":{ref: digest}}): %w", err)
	}
	if raw.Version != LockVersion {
		return nil, fmt.Errorf("unsupported version %d (this precache reads version %d)", raw.Version, LockVersion)
	}
	l := &Lock{Version: LockVersion, Images: make(map[string]digest.Digest, len(raw.Images))}
	for k, d := range raw.Images {
		ref, err := ParseRef(k)
		if err != nil {
			return nil, err
		}
		if err := d.Validate(); err != nil {
			return nil, fmt.Errorf("%s: invalid digest %q: %w", k, d, err)
		}
		key := lockKey(ref)
		if ref.Digest != "" && ref.Digest != d {
			return nil, fmt.Errorf("%s: the key names digest %s but the value is %s", k, ref.Digest, d)
		}
		if prev, ok := l.Images[key]; ok && prev != d {
			return nil, fmt.Errorf("%s appears twice with different digests (%s, %s)", key, prev, d)
		}
		l.Images[key] = d
	}
	return l, nil
}

// Encode writes the lock as indented JSON with sorted keys.
func (l *Lock) Encode(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(Lock{Version: LockVersion, Images: l.Images})
}

// Set records d as the digest of ref.
func (l *Lock) Set(ref Ref, d digest.Digest) {
	if l.Images == nil {
		l.Images = map[string]digest.Digest{}
	}
	l.Images[lockKey(ref)] = d
}

// Lookup returns the digest locked for ref.
func (l *Lock) Lookup(ref Ref) (digest.Digest, bool) {
	if l == nil {
		return "", false
	}
	d, ok := l.Images[lockKey(ref)]
	return d, ok
}

// Refs returns the locked references, sorted.
func (l *Lock) Refs() []string {
	out := make([]string, 0, len(l.Images))
	for k := range l.Images {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// lockKey is the tag form of ref when it has a tag, its digest form otherwise.
func lockKey(ref Ref) string {
	if ref.Tag != "" {
		return ref.TagName()
	}
	return ref.String()
}

// ApplyLock sets each image's expected digest from the lock. A reference that already
// names a digest must agree with the lock.
func ApplyLock(set []Image, l *Lock, source string) ([]Image, error) {
	out := make([]Image, len(set))
	for i, img := range set {
		out[i] = img
		d, ok := l.Lookup(img.Ref)
		if !ok {
			continue
		}
		if img.Ref.Digest != "" && img.Ref.Digest != d {
			return nil, fmt.Errorf("%s: the reference names digest %s but %s locks %s", img.Ref, img.Ref.Digest, source, d)
		}
		if img.ByDigest {
			// The reference names this very digest (a spec's name@sha256:…, which discovery
			// also gives the release's tag): it is still pulled by it, as the kubelet would.
			continue
		}
		out[i].Ref.Digest = d
		out[i].DigestSource = source
		out[i].ByDigest = false // a lock's digest is checked against the tag
	}
	return out, nil
}
