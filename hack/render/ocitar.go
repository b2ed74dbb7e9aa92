package main

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"regexp"
	"strings"
)

// Repository is the name precache's image is published under, and the name deploy/ uses.
const Repository = "ghcr.io/precache/precache"

var (
	digestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)
	// tagRE is the distribution spec's tag grammar.
	tagRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
)

// Image is the image an OCI layout tar holds, as the kustomization pins it.
type Image struct {
	Tag, Digest string
	MediaType   string
	// Platforms are those of an image index's manifests ("linux/amd64"); for a single
	// manifest, the platform its config names.
	Platforms []string
}

// Ref is the reference kustomize renders for the image: repository:tag@digest.
func (i Image) Ref() string { return Repository + ":" + i.Tag + "@" + i.Digest }

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Platform    *struct {
		OS           string `json:"os"`
		Architecture string `json:"architecture"`
		Variant      string `json:"variant,omitempty"`
	} `json:"platform,omitempty"`
}

type index struct {
	MediaType string       `json:"mediaType"`
	Manifests []descriptor `json:"manifests"`
	Config    *descriptor  `json:"config,omitempty"` // when the blob is a manifest
}

const (
	mediaIndex          = "application/vnd.oci.image.index.v1+json"
	mediaManifest       = "application/vnd.oci.image.manifest.v1+json"
	mediaDockerList     = "application/vnd.docker.distribution.manifest.list.v2+json"
	mediaDockerV2       = "application/vnd.docker.distribution.manifest.v2+json"
	maxJSON             = 4 << 20
	annotationRefName   = "org.opencontainers.image.ref.name"
	annotationImageName = "io.containerd.image.name"
)

// ReadImageTar reads the OCI layout tar make image writes (dist/precache-<version>.oci.tar):
// the image its index.json names for Repository, its digest — what a registry serves for
// the tag, and what the DaemonSet pins — checked against the blob in the tar, and its tag
// from the name in the annotations. A tar holding another repository, several images or a
// blob that does not match its digest is refused.
func ReadImageTar(file string) (Image, error) {
	f, err := os.Open(file)
	if err != nil {
		return Image{}, err
	}
	defer f.Close()
	var (
		idx   *index
		blobs = map[string][]byte{} // small JSON blobs, by digest
		sums  = map[string]string{} // every blob's actual sha256
	)
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return Image{}, fmt.Errorf("reading %s: %w", file, err)
		}
		name := path.Clean(strings.TrimPrefix(h.Name, "./"))
		switch {
		case name == "index.json":
			data, err := io.ReadAll(io.LimitReader(tr, maxJSON))
			if err != nil {
				return Image{}, fmt.Errorf("reading %s: index.json: %w", file, err)
			}
			idx = new(index)
			if err := json.Unmarshal(data, idx); err != nil {
				return Image{}, fmt.Errorf("%s: index.json: %w", file, err)
			}
		case strings.HasPrefix(name, "blobs/sha256/") && h.Typeflag == tar.TypeReg:
			d := "sha256:" + strings.TrimPrefix(name, "blobs/sha256/")
			hash := sha256.New()
			var keep strings.Builder
			w := io.Writer(hash)
			if h.Size <= maxJSON {
				w = io.MultiWriter(hash, &keep)
			}
			if _, err := io.Copy(w, tr); err != nil {
				return Image{}, fmt.Errorf("reading %s: %s: %w", file, name, err)
			}
			sums[d] = "sha256:" + hex.EncodeToString(hash.Sum(nil))
			if h.Size <= maxJSON {
				blobs[d] = []byte(keep.String())
			}
		}
	}
	if idx == nil {
		return Image{}, fmt.Errorf("%s: no index.json: not an OCI image layout (make image writes one)", file)
	}
	desc, tag, err := pick(idx.Manifests)
	if err != nil {
		return Image{}, fmt.Errorf("%s: %w", file, err)
	}
	if !digestRE.MatchString(desc.Digest) {
		return Image{}, fmt.Errorf("%s: index.json names digest %q, want sha256:<64 hex>", file, desc.Digest)
	}
	got, ok := sums[desc.Digest]
	switch {
	case !ok:
		return Image{}, fmt.Errorf("%s: index.json names %s but the tar has no such blob", file, desc.Digest)
	case got != desc.Digest:
		return Image{}, fmt.Errorf("%s: blob %s hashes to %s", file, desc.Digest, got)
	}
	img := Image{Tag: tag, Digest: desc.Digest, MediaType: desc.MediaType}
	var top index
	if err := json.Unmarshal(blobs[desc.Digest], &top); err != nil {
		return Image{}, fmt.Errorf("%s: %s: %w", file, desc.Digest, err)
	}
	switch desc.MediaType {
	case mediaIndex, mediaDockerList:
		for _, m := range top.Manifests {
			if m.Platform == nil || m.Platform.OS == "unknown" { // attestations
				continue
			}
			p := m.Platform.OS + "/" + m.Platform.Architecture
			if m.Platform.Variant != "" {
				p += "/" + m.Platform.Variant
			}
			img.Platforms = append(img.Platforms, p)
		}
	case mediaManifest, mediaDockerV2:
		if top.Config != nil {
			var cfg struct {
				OS, Architecture, Variant string
			}
			if err := json.Unmarshal(blobs[top.Config.Digest], &cfg); err == nil && cfg.OS != "" {
				p := cfg.OS + "/" + cfg.Architecture
				if cfg.Variant != "" {
					p += "/" + cfg.Variant
				}
				img.Platforms = append(img.Platforms, p)
			}
		}
	default:
		return Image{}, fmt.Errorf("%s: %s is a %q, not an image index or manifest", file, desc.Digest, desc.MediaType)
	}
	return img, nil
}

// pick chooses the index.json entry that is precache's image, and its tag: the one entry
// there is, or the entries named Repository:<tag> (several names of one digest are one
// image).
func pick(ms []descriptor) (descriptor, string, error) {
	var (
		found descriptor
		tag   string
		n     int
	)
	for _, m := range ms {
		repo, t := nameOf(m.Annotations)
		if repo != "" && repo != Repository {
			continue
		}
		if n > 0 && m.Digest != found.Digest {
			return descriptor{}, "", fmt.Errorf("index.json names two images, %s and %s: make image writes one", found.Digest, m.Digest)
		}
		if n == 0 || tag == "" {
			tag = t
		}
		found = m
		n++
	}
	if n == 0 {
		return descriptor{}, "", fmt.Errorf("index.json names no image of %s", Repository)
	}
	return found, tag, nil
}

// nameOf reads the repository and tag an index.json entry is named by: containerd's full
// name, or OCI's ref.name (a full reference, or a tag alone).
func nameOf(a map[string]string) (repo, tag string) {
	if v := a[annotationImageName]; v != "" {
		return splitRef(v)
	}
	v := a[annotationRefName]
	if v == "" || strings.Contains(v, "/") {
		return splitRef(v)
	}
	return "", v
}

// splitRef splits repository[:tag][@digest].
func splitRef(v string) (repo, tag string) {
	v, _, _ = strings.Cut(v, "@")
	slash := strings.LastIndex(v, "/")
	if i := strings.LastIndex(v, ":"); i > slash {
		return v[:i], v[i+1:]
	}
	return v, ""
}

// checkPin says whether tag and digest are fit to pin a deployment by.
func checkPin(tag, dg string) error {
	switch {
	case !tagRE.MatchString(tag):
		return fmt.Errorf("tag %q is not a valid image tag", tag)
	case strings.EqualFold(tag, "latest"):
		return errors.New(`tag "latest" names no build: pin a version`)
	case !digestRE.MatchString(dg):
		return fmt.Errorf("digest %q is not sha256:<64 lowercase hex>", dg)
	}
	return nil
}
