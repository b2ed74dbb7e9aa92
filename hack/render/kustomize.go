package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/api/resmap"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/kustomize/kyaml/yaml"
)

// BaseKustomization is where the image is pinned, relative to the deploy directory.
const BaseKustomization = "base/kustomization.yaml"

// Pin is the image entry of a kustomization.
type Pin struct{ Tag, Digest string }

// ReadPin returns the newTag and digest kustomization data pins Repository by.
func ReadPin(data []byte) (Pin, error) {
	rn, err := yaml.Parse(string(data))
	if err != nil {
		return Pin{}, err
	}
	entry, err := rn.Pipe(yaml.Lookup("images"), yaml.MatchElement("name", Repository))
	if err != nil {
		return Pin{}, err
	}
	if entry == nil {
		return Pin{}, fmt.Errorf("no images: entry named %s", Repository)
	}
	var p Pin
	if p.Tag, err = entry.GetString("newTag"); err != nil {
		return Pin{}, fmt.Errorf("images: %s: newTag: %w", Repository, err)
	}
	if p.Digest, err = entry.GetString("digest"); err != nil {
		return Pin{}, fmt.Errorf("images: %s: digest: %w", Repository, err)
	}
	return p, checkPin(p.Tag, p.Digest)
}

// SetPin writes newTag and digest into kustomization data's images: entry for Repository,
// keeping the rest of the file (comments included) as it is.
func SetPin(data []byte, p Pin) ([]byte, error) {
	if err := checkPin(p.Tag, p.Digest); err != nil {
		return nil, err
	}
	rn, err := yaml.Parse(string(data))
	if err != nil {
		return nil, err
	}
	entry, err := rn.Pipe(yaml.Lookup("images"), yaml.MatchElement("name", Repository))
	if err != nil {
		return nil, err
	}
	if entry == nil {
		return nil, fmt.Errorf("no images: entry named %s to pin", Repository)
	}
	for field, v := range map[string]string{"newTag": p.Tag, "digest": p.Digest} {
		if err := entry.PipeE(yaml.SetField(field, yaml.NewStringRNode(v))); err != nil {
			return nil, err
		}
	}
	out, err := rn.String()
	return []byte(out), err
}

// Build renders the kustomization in dir, as `kubectl apply -k dir` would, over fsys.
func Build(fsys filesys.FileSystem, dir string) ([]byte, error) {
	opts := krusty.MakeDefaultOptions()
	m, err := krusty.MakeKustomizer(opts).Run(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("kustomize build %s: %w", dir, err)
	}
	if err := checkRendered(m); err != nil {
		return nil, fmt.Errorf("kustomize build %s: %w", dir, err)
	}
	return m.AsYaml()
}

// latestRE finds a reference to a latest tag, or the word alone.
var latestRE = regexp.MustCompile(`(?i)\blatest\b`)

// checkRendered refuses output that deploys anything but a pinned image.
func checkRendered(m resmap.ResMap) error {
	out, err := m.AsYaml()
	if err != nil {
		return err
	}
	if loc := latestRE.FindIndex(out); loc != nil {
		return fmt.Errorf("the output says %q: pin the image (make pin)", out[loc[0]:loc[1]])
	}
	var images []string
	for _, r := range m.Resources() {
		if r.GetKind() != "DaemonSet" {
			continue
		}
		cs, err := r.GetSlice("spec.template.spec.containers")
		if err != nil {
			return err
		}
		for _, c := range cs {
			if c, ok := c.(map[string]any); ok {
				if s, ok := c["image"].(string); ok && strings.HasPrefix(s, Repository) {
					images = append(images, s)
				}
			}
		}
	}
	if len(images) == 0 {
		return fmt.Errorf("no container runs %s", Repository)
	}
	for _, s := range images {
		repo, rest, _ := strings.Cut(s, "@")
		_, tag := splitRef(repo)
		if err := checkPin(tag, rest); err != nil {
			return fmt.Errorf("image %s: %w", s, err)
		}
	}
	return nil
}

// PinnedFS is deployDir copied into memory with its base kustomization pinned to p, so the
// overlays render with an image other than the committed one and the tree is not touched.
func PinnedFS(deployDir string, p Pin) (filesys.FileSystem, string, error) {
	abs, err := filepath.Abs(deployDir)
	if err != nil {
		return nil, "", err
	}
	mem := filesys.MakeFsInMemory()
	err = filepath.WalkDir(abs, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if path == filepath.Join(abs, BaseKustomization) {
			if data, err = SetPin(data, p); err != nil {
				return fmt.Errorf("%s: %w", path, err)
			}
		}
		return mem.WriteFile(path, data)
	})
	if err != nil {
		return nil, "", err
	}
	if !mem.Exists(filepath.Join(abs, BaseKustomization)) {
		return nil, "", errors.New(filepath.Join(deployDir, BaseKustomization) + " not found")
	}
	return mem, abs, nil
}
