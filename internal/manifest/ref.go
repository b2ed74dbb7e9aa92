// Package manifest owns what precache wants on a node: the built-in Calico image catalog,
// image references and their normalisation, rewriting of the set for custom registries,
// and lock files mapping references to digests.
//
// It imports neither containerd nor client-go, so the same image-set logic serves the
// containerd adapter, the bundle reader and the Kubernetes discovery alike.
package manifest

import (
	"fmt"
	"strings"

	"github.com/distribution/reference"
	digest "github.com/opencontainers/go-digest"
)

// Ref is a normalised image reference: a fully qualified repository name plus a tag,
// a digest, or both ("docker.io/calico/node:v3.28.1@sha256:…").
type Ref struct {
	// Name is the fully qualified repository, e.g. "docker.io/calico/node".
	Name string
	// Tag is empty when the reference names only a digest.
	Tag string
	// Digest is empty when the reference names only a tag.
	Digest digest.Digest
}

// ParseRef parses and normalises s the way the kubelet and ctr do: "calico/node:v3.28.1"
// becomes "docker.io/calico/node:v3.28.1", "busybox" becomes "docker.io/library/busybox:latest".
func ParseRef(s string) (Ref, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return Ref{}, fmt.Errorf("empty image reference")
	}
	named, err := reference.ParseNormalizedNamed(s)
	if err != nil {
		return Ref{}, fmt.Errorf("invalid image reference %q: %w", s, err)
	}
	r := Ref{Name: named.Name()}
	if t, ok := named.(reference.Tagged); ok {
		r.Tag = t.Tag()
	}
	if d, ok := named.(reference.Digested); ok {
		r.Digest = d.Digest()
	}
	if r.Tag == "" && r.Digest == "" {
		r.Tag = "latest"
	}
	return r, nil
}

// MustParseRef is ParseRef for references known to be valid at compile time.
func MustParseRef(s string) Ref {
	r, err := ParseRef(s)
	if err != nil {
		panic(err)
	}
	return r
}

// String returns the reference in its canonical form: name[:tag][@digest].
func (r Ref) String() string {
	s := r.Name
	if r.Tag != "" {
		s += ":" + r.Tag
	}
	if r.Digest != "" {
		s += "@" + r.Digest.String()
	}
	return s
}

// TagName is "name:tag", or "" when the reference has no tag.
func (r Ref) TagName() string {
	if r.Tag == "" {
		return ""
	}
	return r.Name + ":" + r.Tag
}

// DigestName is "name@d": the name under which the CRI records an image pulled as d.
func (r Ref) DigestName(d digest.Digest) string {
	return r.Name + "@" + d.String()
}

// Domain is the registry host of the reference, e.g. "docker.io" or "quay.io".
func (r Ref) Domain() string {
	domain, _, _ := strings.Cut(r.Name, "/")
	return domain
}

// Path is the repository path without the domain, e.g. "calico/node".
func (r Ref) Path() string {
	_, path, _ := strings.Cut(r.Name, "/")
	return path
}

// Base is the last path element, e.g. "node" for "quay.io/calico/node".
func (r Ref) Base() string {
	return r.Name[strings.LastIndex(r.Name, "/")+1:]
}

// Familiar returns the short form users type, e.g. "calico/node:v3.28.1".
func (r Ref) Familiar() string {
	named, err := reference.ParseNormalizedNamed(r.String())
	if err != nil {
		return r.String()
	}
	return reference.FamiliarString(named)
}

// Display is "name:tag" for tagged references and the full reference otherwise: the
// short form for tables.
func (r Ref) Display() string {
	if r.Tag != "" {
		return r.TagName()
	}
	return r.String()
}

// MarshalText writes the canonical form, so JSON output shows "docker.io/calico/node:v3.28.1".
func (r Ref) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText parses and normalises a reference.
func (r *Ref) UnmarshalText(b []byte) error {
	p, err := ParseRef(string(b))
	if err != nil {
		return err
	}
	*r = p
	return nil
}
