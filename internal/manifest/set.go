package manifest

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// Image is one image precache keeps on the node.
type Image struct {
	// Ref is what is pulled; Ref.Digest, when set, is the digest the image must have.
	Ref Ref `json:"ref"`
	// Part is the part of the recovery set the image belongs to ("calico", "kube-proxy",
	// "sandbox", …), empty for images added by the user.
	Part Part `json:"part,omitempty"`
	// Component is the catalog component for Calico's images ("node", "cni", …), the
	// container's name for the other parts, empty for images added by the user.
	Component string `json:"component,omitempty"`
	// Role says what the image is for.
	Role string `json:"role,omitempty"`
	// Optional images are only deployed by some installs (e.g. the operator's whisker).
	Optional bool `json:"optional,omitempty"`
	// Source says where the reference came from: "catalog", "--image", a file name, ….
	Source string `json:"source"`
	// DigestSource says where Ref.Digest came from, if set.
	DigestSource string `json:"digestSource,omitempty"`
	// TagSource says where Ref.Tag came from when the reference in use names only a digest
	// (the operator with an ImageSet renders "quay.io/calico/node@sha256:…"): the tag is
	// the release's, so the image is also recorded under the name people look for.
	TagSource string `json:"tagSource,omitempty"`
	// ByDigest: pull by the digest, as the kubelet does for a reference that names one
	// (a spec's name@sha256:…, the operator's ImageSet). Otherwise an expected digest (a
	// lock) is checked against what the tag resolves to, so a moved tag is reported.
	ByDigest bool `json:"byDigest,omitempty"`
}

// Options select and rewrite an image set.
type Options struct {
	// Version of Calico; empty means "no catalog images", only Images and ImagesFile.
	Version string
	Variant Variant
	// Registry replaces the default registry (host, optionally with a path: "registry.local:5000/mirror").
	Registry string
	// ImagePath replaces the "calico" path element, like the operator's Installation.spec.imagePath.
	ImagePath string
	// ImagePrefix is prepended to each image name, like the operator's Installation.spec.imagePrefix.
	ImagePrefix string
	// Images add to the set, or replace the catalog image of the same name ("node", "cni", …).
	Images []string
	// ImagesFile holds more references, one a line; '#' starts a comment.
	ImagesFile string
}

// Build returns the image set Options describe, in a stable order.
func Build(o Options) ([]Image, error) {
	var set []Image
	if o.Version != "" {
		v, err := ParseVersion(o.Version)
		if err != nil {
			return nil, err
		}
		variant := o.Variant
		if variant == "" {
			variant = VariantManifest
		}
		registry := strings.TrimSuffix(o.Registry, "/")
		if registry == "" {
			registry = DefaultRegistry(v, variant)
		}
		path := strings.Trim(o.ImagePath, "/")
		if path == "" {
			path = "calico"
		}
		for _, c := range components {
			if !c.in(v, variant) {
				continue
			}
			s := registry + "/" + path + "/" + o.ImagePrefix + c.name + ":" + v.String()
			ref, err := ParseRef(s)
			if err != nil {
				return nil, fmt.Errorf("rewriting %s with --registry %q --image-path %q --image-prefix %q: %w", c.name, o.Registry, o.ImagePath, o.ImagePrefix, err)
			}
			set = append(set, Image{Ref: ref, Part: PartCalico, Component: c.name, Role: c.role, Optional: c.optional, Source: sourceCatalog + v.String() + " (" + string(variant) + ")"})
		}
	} else if o.Registry != "" || o.ImagePath != "" || o.ImagePrefix != "" {
		return nil, fmt.Errorf("--registry, --image-path and --image-prefix rewrite the catalog: set --calico-version too")
	}

	extra := make([]Image, 0, len(o.Images))
	for _, s := range o.Images {
		ref, err := ParseRef(s)
		if err != nil {
			return nil, fmt.Errorf("--image: %w", err)
		}
		extra = append(extra, withOwnDigest(Image{Ref: ref, Source: "--image"}))
	}
	if o.ImagesFile != "" {
		fromFile, err := readImagesFile(o.ImagesFile)
		if err != nil {
			return nil, err
		}
		extra = append(extra, fromFile...)
	}
	for _, img := range extra {
		set = addOrReplace(set, img, o.ImagePrefix)
	}
	if len(set) == 0 {
		return nil, fmt.Errorf("no images: set --calico-version (supported: %s), --image or --images-file", SupportedVersions())
	}
	return set, nil
}

// sourceCatalog prefixes the Source of catalog images.
const sourceCatalog = "catalog "

func (img Image) fromCatalog() bool { return strings.HasPrefix(img.Source, sourceCatalog) }

// addOrReplace puts img in place of the catalog image it stands for (same base name,
// with or without the prefix), or appends it; a reference already in the set is not repeated.
func addOrReplace(set []Image, img Image, prefix string) []Image {
	for i, have := range set {
		if have.Ref.Name == img.Ref.Name && have.Ref.Tag == img.Ref.Tag && (have.Ref.Digest == img.Ref.Digest || img.Ref.Digest == "") {
			return set
		}
		// Only a catalog entry is replaced: two images the user named are both kept.
		if have.fromCatalog() && (img.Ref.Base() == have.Component || img.Ref.Base() == prefix+have.Component) {
			img.Part, img.Component, img.Role, img.Optional = have.Part, have.Component, have.Role, have.Optional
			set[i] = img
			return set
		}
	}
	return append(set, img)
}

func readImagesFile(path string) ([]Image, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading --images-file: %w", err)
	}
	defer f.Close()
	return parseImagesList(f, path)
}

func parseImagesList(r io.Reader, name string) ([]Image, error) {
	var out []Image
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		ref, err := ParseRef(line)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", name, n, err)
		}
		out = append(out, withOwnDigest(Image{Ref: ref, Source: name}))
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading %s: %w", name, err)
	}
	return out, nil
}

// withOwnDigest marks an image whose reference names its digest: pulled by that digest.
func withOwnDigest(img Image) Image {
	if img.Ref.Digest != "" {
		img.DigestSource, img.ByDigest = img.Source, true
	}
	return img
}

// Names returns the canonical references of set, sorted; handy for messages and tests.
func Names(set []Image) []string {
	out := make([]string, len(set))
	for i, img := range set {
		out[i] = img.Ref.String()
	}
	sort.Strings(out)
	return out
}
