package testenv

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"io"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Entry is one tar entry of a hand-built bundle; tests mutate entries to make bad bundles.
type Entry struct {
	Name     string
	Data     []byte
	Typeflag byte // tar.TypeReg when 0
	Linkname string
}

// OCILayout lays out images (reference → index) as OCI image-layout entries: oci-layout,
// index.json naming each image with io.containerd.image.name and its tag, then blobs.
func OCILayout(images map[string]v1.ImageIndex, refs ...string) ([]Entry, error) {
	entries := []Entry{{Name: "oci-layout", Data: []byte(`{"imageLayoutVersion":"1.0.0"}`)}}
	type desc struct {
		MediaType   string            `json:"mediaType"`
		Digest      string            `json:"digest"`
		Size        int64             `json:"size"`
		Annotations map[string]string `json:"annotations,omitempty"`
	}
	index := struct {
		SchemaVersion int    `json:"schemaVersion"`
		MediaType     string `json:"mediaType"`
		Manifests     []desc `json:"manifests"`
	}{SchemaVersion: 2, MediaType: string(types.OCIImageIndex)}
	seen := map[string]bool{}
	var blobs []Entry
	add := func(d v1.Hash, data []byte) {
		name := "blobs/" + d.Algorithm + "/" + d.Hex
		if !seen[name] {
			seen[name] = true
			blobs = append(blobs, Entry{Name: name, Data: data})
		}
	}
	for _, ref := range refs {
		idx := images[ref]
		raw, err := idx.RawManifest()
		if err != nil {
			return nil, err
		}
		d, err := idx.Digest()
		if err != nil {
			return nil, err
		}
		tag := ref[lastColon(ref)+1:]
		index.Manifests = append(index.Manifests, desc{MediaType: string(types.OCIImageIndex), Digest: d.String(), Size: int64(len(raw)),
			Annotations: map[string]string{"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": tag}})
		add(d, raw)
		im, err := idx.IndexManifest()
		if err != nil {
			return nil, err
		}
		for _, m := range im.Manifests {
			img, err := idx.Image(m.Digest)
			if err != nil {
				return nil, err
			}
			if err := addImage(img, add); err != nil {
				return nil, err
			}
		}
	}
	data, err := json.Marshal(index)
	if err != nil {
		return nil, err
	}
	entries = append(entries, Entry{Name: "index.json", Data: data})
	return append(entries, blobs...), nil
}

func addImage(img v1.Image, add func(v1.Hash, []byte)) error {
	raw, err := img.RawManifest()
	if err != nil {
		return err
	}
	d, err := img.Digest()
	if err != nil {
		return err
	}
	add(d, raw)
	cfg, err := img.RawConfigFile()
	if err != nil {
		return err
	}
	cd, err := img.ConfigName()
	if err != nil {
		return err
	}
	add(cd, cfg)
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	for _, l := range layers {
		ld, err := l.Digest()
		if err != nil {
			return err
		}
		rc, err := l.Compressed()
		if err != nil {
			return err
		}
		data, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			return err
		}
		add(ld, data)
	}
	return nil
}

// LegacyDockerSave lays out img as `docker save` before Docker 25 did: manifest.json,
// <config>.json, <id>/layer.tar uncompressed, repositories; no index.json.
func LegacyDockerSave(ref string, img v1.Image) ([]Entry, error) {
	cfg, err := img.RawConfigFile()
	if err != nil {
		return nil, err
	}
	cd, err := img.ConfigName()
	if err != nil {
		return nil, err
	}
	entries := []Entry{}
	layers, err := img.Layers()
	if err != nil {
		return nil, err
	}
	var paths []string
	for i, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			return nil, err
		}
		data, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			return nil, err
		}
		dir := fmt.Sprintf("%064x", i+1)
		entries = append(entries,
			Entry{Name: dir + "/VERSION", Data: []byte("1.0")},
			Entry{Name: dir + "/json", Data: []byte(`{}`)},
			Entry{Name: dir + "/layer.tar", Data: data})
		paths = append(paths, dir+"/layer.tar")
	}
	entries = append(entries, Entry{Name: cd.Hex + ".json", Data: cfg})
	m, _ := json.Marshal([]map[string]any{{"Config": cd.Hex + ".json", "RepoTags": []string{ref}, "Layers": paths}})
	entries = append(entries, Entry{Name: "manifest.json", Data: m}, Entry{Name: "repositories", Data: []byte(`{}`)})
	return entries, nil
}

// PlatformImage returns the image for platform ("linux/amd64") from idx.
func PlatformImage(idx v1.ImageIndex, platform string) (v1.Image, error) {
	p, err := v1.ParsePlatform(platform)
	if err != nil {
		return nil, err
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	for _, m := range im.Manifests {
		if m.Platform != nil && m.Platform.Satisfies(*p) {
			return idx.Image(m.Digest)
		}
	}
	return nil, fmt.Errorf("no %s in index", platform)
}

// Tar writes entries as a tar, compressed with "gzip", "zstd" or "" (none).
func Tar(entries []Entry, compression string) ([]byte, error) {
	var buf bytes.Buffer
	var w io.WriteCloser
	switch compression {
	case "gzip":
		w = gzip.NewWriter(&buf)
	case "zstd":
		zw, err := zstd.NewWriter(&buf)
		if err != nil {
			return nil, err
		}
		w = zw
	default:
		w = nopCloser{&buf}
	}
	tw := tar.NewWriter(w)
	for _, e := range entries {
		h := &tar.Header{Name: e.Name, Mode: 0o644, Size: int64(len(e.Data)), Typeflag: e.Typeflag, Linkname: e.Linkname}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Typeflag != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(e.Data); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

func lastColon(s string) int {
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == ':' {
			return i
		}
		if s[i] == '/' {
			break
		}
	}
	return len(s) - 1
}
