package bundle

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/containerd/containerd/v2/core/images"
	digest "github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/precache/precache/internal/manifest"
)

// Annotations naming an image in an index.
const (
	annotationContainerdName = "io.containerd.image.name"
	annotationRefName        = ocispec.AnnotationRefName
)

// dockerManifestEntry is one entry of a docker save manifest.json.
type dockerManifestEntry struct {
	Config   string   `json:"Config"`
	RepoTags []string `json:"RepoTags"`
	Layers   []string `json:"Layers"`
}

func (rd *reader) finish() error {
	lock, err := rd.lock()
	if err != nil {
		return err
	}
	rd.res.Lock = lock
	var entries []dockerManifestEntry
	if data, ok := rd.small["manifest.json"]; ok {
		if err := json.Unmarshal(data, &entries); err != nil {
			return invalid("manifest.json: %v", err)
		}
	}
	index, hasIndex := rd.small["index.json"]
	switch {
	case hasIndex:
		rd.res.Format = FormatOCILayout
		if entries != nil {
			rd.res.Format = FormatDocker
		}
		imgs, err := rd.indexImages(index)
		if err != nil {
			return err
		}
		if err := rd.nameFromRepoTags(imgs, entries); err != nil {
			return err
		}
		for _, img := range rd.res.Images {
			if err := rd.complete(img.Target, img.Name); err != nil {
				return err
			}
		}
	case entries != nil:
		rd.res.Format = FormatDockerLegacy
		if err := rd.legacy(entries); err != nil {
			return err
		}
	default:
		return invalid("no index.json or manifest.json: not an OCI layout or docker save archive")
	}
	if len(rd.res.Images) == 0 {
		return invalid("no images in the bundle")
	}
	sort.SliceStable(rd.res.Images, func(i, j int) bool { return rd.res.Images[i].Name < rd.res.Images[j].Name })
	return nil
}

// indexImages reads index.json's manifests and their names.
func (rd *reader) indexImages(data []byte) ([]Image, error) {
	var idx ocispec.Index
	if err := json.Unmarshal(data, &idx); err != nil {
		return nil, invalid("index.json: %v", err)
	}
	if len(idx.Manifests) == 0 {
		return nil, invalid("index.json lists no images")
	}
	var out []Image
	for _, desc := range idx.Manifests {
		if err := desc.Digest.Validate(); err != nil {
			return nil, invalid("index.json: %v", err)
		}
		name, err := rd.name(desc)
		if err != nil {
			return nil, err
		}
		rd.res.Descriptors[desc.Digest] = desc
		out = append(out, Image{Name: name, Target: stripAnnotations(desc)})
	}
	rd.res.Images = out
	return out, nil
}

func stripAnnotations(d ocispec.Descriptor) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size, Platform: d.Platform}
}

// name is the image name an index entry gives, normalised; "" if none.
func (rd *reader) name(desc ocispec.Descriptor) (string, error) {
	if n := desc.Annotations[annotationContainerdName]; n != "" {
		return normalise(n)
	}
	n := desc.Annotations[annotationRefName]
	if n == "" {
		return "", nil
	}
	// OCI layouts often carry only the tag here.
	if !strings.ContainsAny(n, "/:@") {
		if rd.opts.BaseName == "" {
			return "", nil
		}
		return normalise(rd.opts.BaseName + ":" + n)
	}
	return normalise(n)
}

func normalise(s string) (string, error) {
	r, err := manifest.ParseRef(s)
	if err != nil {
		return "", invalid("image name %q: %v", s, err)
	}
	return r.String(), nil
}

// nameFromRepoTags names still-unnamed images from a docker manifest.json (by config),
// then falls back to --base-name.
func (rd *reader) nameFromRepoTags(imgs []Image, entries []dockerManifestEntry) error {
	var out []Image
	for _, img := range imgs {
		if img.Name != "" {
			out = append(out, img)
			continue
		}
		configs := rd.configsOf(img.Target)
		named := false
		for _, e := range entries {
			d, ok := blobDigest(e.Config)
			if !ok || !configs[d] {
				continue
			}
			for _, tag := range e.RepoTags {
				n, err := normalise(tag)
				if err != nil {
					return err
				}
				out = append(out, Image{Name: n, Target: img.Target})
				named = true
			}
		}
		if !named {
			if rd.opts.BaseName == "" {
				return invalid("image %s has no name in the bundle: pass --base-name REPO[:TAG]", img.Target.Digest)
			}
			n, err := normalise(rd.opts.BaseName)
			if err != nil {
				return err
			}
			out = append(out, Image{Name: n, Target: img.Target})
		}
	}
	rd.res.Images = out
	return nil
}

// configsOf lists the config digests reachable from target.
func (rd *reader) configsOf(target ocispec.Descriptor) map[digest.Digest]bool {
	out := map[digest.Digest]bool{}
	var walk func(d digest.Digest, depth int)
	walk = func(d digest.Digest, depth int) {
		data, ok := rd.res.Documents[d]
		if !ok || depth > 4 {
			return
		}
		var doc struct {
			Config    *ocispec.Descriptor  `json:"config"`
			Manifests []ocispec.Descriptor `json:"manifests"`
		}
		if json.Unmarshal(data, &doc) != nil {
			return
		}
		if doc.Config != nil {
			out[doc.Config.Digest] = true
		}
		for _, m := range doc.Manifests {
			walk(m.Digest, depth+1)
		}
	}
	walk(target.Digest, 0)
	return out
}

// complete checks the bundle holds target's document and, for every manifest it holds,
// the config and layers. Child manifests of an index may be absent (a bundle carries the
// platforms it was made for) but at least one must be there.
func (rd *reader) complete(target ocispec.Descriptor, name string) error {
	label := name
	if label == "" {
		label = target.Digest.String()
	}
	data, ok := rd.res.Documents[target.Digest]
	if !ok {
		return invalid("%s: its index/manifest %s is not in the bundle", label, target.Digest)
	}
	if int64(len(data)) != target.Size {
		return invalid("%s: %s is %d bytes, index.json declares %d", label, target.Digest, len(data), target.Size)
	}
	switch {
	case images.IsIndexType(target.MediaType):
		var idx ocispec.Index
		if err := json.Unmarshal(data, &idx); err != nil {
			return invalid("%s: index %s: %v", label, target.Digest, err)
		}
		found := 0
		for _, m := range idx.Manifests {
			if _, ok := rd.res.Documents[m.Digest]; !ok {
				continue
			}
			carried, err := rd.completeManifest(m, label, true)
			if err != nil {
				return err
			}
			if carried {
				found++
			}
		}
		if found == 0 {
			return invalid("%s: index %s: the bundle carries the layers of none of its platforms", label, target.Digest)
		}
	case images.IsManifestType(target.MediaType):
		if _, err := rd.completeManifest(target, label, false); err != nil {
			return err
		}
	default:
		return invalid("%s: unsupported media type %q", label, target.MediaType)
	}
	return nil
}

// completeManifest checks a manifest's config and layers are in the bundle. Under an index
// (inIndex) a manifest with none of its layers is a platform the bundle does not carry
// (precache bundle writes every platform's manifest and config, and the chosen platforms'
// layers): carried is false. Some layers but not all is a broken bundle.
func (rd *reader) completeManifest(desc ocispec.Descriptor, label string, inIndex bool) (carried bool, _ error) {
	var m ocispec.Manifest
	if err := json.Unmarshal(rd.res.Documents[desc.Digest], &m); err != nil {
		return false, invalid("%s: manifest %s: %v", label, desc.Digest, err)
	}
	var missing []ocispec.Descriptor
	for _, d := range m.Layers {
		if !rd.has(d) {
			missing = append(missing, d)
		}
	}
	if inIndex && len(m.Layers) > 0 && len(missing) == len(m.Layers) {
		return false, nil
	}
	if !rd.has(m.Config) {
		missing = append([]ocispec.Descriptor{m.Config}, missing...)
	}
	if len(missing) > 0 {
		d := missing[0]
		return false, invalid("%s: manifest %s references %s (%d bytes), which is not in the bundle", label, desc.Digest, d.Digest, d.Size)
	}
	return true, nil
}

// has reports whether the bundle carried d at its declared size (stored now, or verified
// against a copy the store already had).
func (rd *reader) has(d ocispec.Descriptor) bool {
	name := "blobs/" + d.Digest.Algorithm().String() + "/" + d.Digest.Encoded()
	if _, ok := rd.seen[name]; ok {
		return rd.seen[name] == d.Size
	}
	return false
}

// legacy synthesises a docker schema 2 manifest for each docker save (< 25) entry, as
// containerd's importer does: the registry's manifest digest is not in such a tar, so
// the image's digest will differ from it; config and layer digests are kept and checked.
func (rd *reader) legacy(entries []dockerManifestEntry) error {
	for i, e := range entries {
		configPath, err := rd.resolve(e.Config)
		if err != nil {
			return fmt.Errorf("manifest.json entry %d: %w", i, err)
		}
		configData, ok := rd.small[configPath]
		if !ok {
			return invalid("manifest.json entry %d: config %s is not in the bundle", i, e.Config)
		}
		var cfg ocispec.Image
		if err := json.Unmarshal(configData, &cfg); err != nil {
			return invalid("config %s: %v", e.Config, err)
		}
		if len(cfg.RootFS.DiffIDs) != len(e.Layers) {
			return invalid("config %s lists %d layers, manifest.json %d", e.Config, len(cfg.RootFS.DiffIDs), len(e.Layers))
		}
		m := ocispec.Manifest{
			Versioned: specs.Versioned{SchemaVersion: 2},
			MediaType: images.MediaTypeDockerSchema2Manifest,
			Config:    ocispec.Descriptor{MediaType: images.MediaTypeDockerSchema2Config, Digest: digest.FromBytes(configData), Size: int64(len(configData))},
		}
		for li, l := range e.Layers {
			p, err := rd.resolve(l)
			if err != nil {
				return err
			}
			d, ok := rd.files[p]
			if !ok {
				return invalid("manifest.json: layer %s is not in the bundle", l)
			}
			mt := images.MediaTypeDockerSchema2Layer
			switch rd.magic[p] {
			case "gzip":
				mt = images.MediaTypeDockerSchema2LayerGzip
			case "zstd":
				mt = ocispec.MediaTypeImageLayerZstd
			case "":
				// Uncompressed: the file's digest is the diff ID. (Compressed layers are
				// checked against their diff IDs by containerd when unpacked.)
				if d != cfg.RootFS.DiffIDs[li] {
					return invalid("layer %s has digest %s but config %s expects diff ID %s (corrupted)", l, d, e.Config, cfg.RootFS.DiffIDs[li])
				}
			}
			m.Layers = append(m.Layers, ocispec.Descriptor{MediaType: mt, Digest: d, Size: rd.sizes[p]})
		}
		data, err := json.Marshal(m)
		if err != nil {
			return err
		}
		md, err := rd.store("manifest.json#"+fmt.Sprint(i), int64(len(data)), digest.FromBytes(data), bytes.NewReader(data))
		if err != nil {
			return err
		}
		rd.res.Documents[md] = data
		target := ocispec.Descriptor{MediaType: m.MediaType, Digest: md, Size: int64(len(data)),
			Platform: &ocispec.Platform{OS: cfg.OS, Architecture: cfg.Architecture, Variant: cfg.Variant}}
		if len(e.RepoTags) == 0 {
			if rd.opts.BaseName == "" {
				return invalid("manifest.json entry %d has no RepoTags: pass --base-name REPO[:TAG]", i)
			}
			e.RepoTags = []string{rd.opts.BaseName}
		}
		for _, tag := range e.RepoTags {
			n, err := normalise(tag)
			if err != nil {
				return err
			}
			rd.res.Images = append(rd.res.Images, Image{Name: n, Target: target, Synthesized: true})
		}
	}
	return nil
}

// resolve follows in-archive links (legacy docker save links duplicate layers).
func (rd *reader) resolve(p string) (string, error) {
	p, err := cleanName(p)
	if err != nil {
		return "", err
	}
	for i := 0; i < 16; i++ {
		t, ok := rd.links[p]
		if !ok {
			return p, nil
		}
		p = t
	}
	return "", invalid("%s: link loop", p)
}
