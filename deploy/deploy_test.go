package deploy

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

const repository = "ghcr.io/precache/precache"

var (
	digestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)
	tagRE    = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
	latestRE = regexp.MustCompile(`(?i)\blatest\b`)
)

type kustomization struct {
	Resources []string `json:"resources"`
	Images    []struct {
		Name    string `json:"name"`
		NewName string `json:"newName"`
		NewTag  string `json:"newTag"`
		Digest  string `json:"digest"`
	} `json:"images"`
}

func readKustomization(t *testing.T, dir string) kustomization {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var k kustomization
	if err := yaml.Unmarshal(data, &k); err != nil {
		t.Fatalf("%s: %v", dir, err)
	}
	return k
}

// TestBasePinsTagAndDigest: the base names precache's image by a version tag and a
// well-formed digest (make pin writes both), never latest, and nowhere else.
func TestBasePinsTagAndDigest(t *testing.T) {
	t.Parallel()
	k := readKustomization(t, "base")
	var found int
	for _, img := range k.Images {
		if img.Name != repository {
			continue
		}
		found++
		switch {
		case img.NewName != "":
			t.Errorf("images: %s has newName %q: the image is published as %s", repository, img.NewName, repository)
		case !tagRE.MatchString(img.NewTag) || strings.EqualFold(img.NewTag, "latest"):
			t.Errorf("images: %s newTag %q: want a version tag (make pin)", repository, img.NewTag)
		case !digestRE.MatchString(img.Digest):
			t.Errorf("images: %s digest %q: want sha256:<64 lowercase hex> (make pin)", repository, img.Digest)
		case strings.Trim(strings.TrimPrefix(img.Digest, "sha256:"), "0") == "":
			t.Errorf("images: %s digest %s is a placeholder: pin a real build (make image && make pin)", repository, img.Digest)
		}
	}
	if found != 1 {
		t.Errorf("base/kustomization.yaml has %d images: entries for %s, want 1", found, repository)
	}
}

// TestOverlays: each overlay builds on the base and leaves the pin to it.
func TestOverlays(t *testing.T) {
	t.Parallel()
	dirs, err := filepath.Glob(filepath.Join("overlays", "*"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, dir := range dirs {
		names = append(names, filepath.Base(dir))
		k := readKustomization(t, dir)
		base := false
		for _, r := range k.Resources {
			base = base || filepath.Clean(r) == filepath.Join("..", "..", "base")
		}
		if !base {
			t.Errorf("%s does not build on ../../base", dir)
		}
		for _, img := range k.Images {
			if img.Name == repository {
				t.Errorf("%s pins %s itself: the base's pin is what make pin and make release write", dir, repository)
			}
		}
	}
	if strings.Join(names, ",") != "kubespray,operator" {
		t.Errorf("overlays %v, want kubespray and operator", names)
	}
}

// TestNothingSaysLatest: no file under deploy/ names a latest tag, and the manifests name
// precache's image without a tag of their own (kustomize's images: sets tag and digest).
func TestNothingSaysLatest(t *testing.T) {
	t.Parallel()
	imageRE := regexp.MustCompile(`(?m)(?:image|value):\s*"?(` + regexp.QuoteMeta(repository) + `\S*?)"?\s*(?:#|$)`)
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.HasSuffix(path, "_test.go") {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if m := latestRE.Find(data); m != nil {
			t.Errorf("%s says %q", path, m)
		}
		if strings.HasSuffix(path, ".yaml") && filepath.Base(path) != "kustomization.yaml" {
			for _, m := range imageRE.FindAllSubmatch(data, -1) {
				if string(m[1]) != repository {
					t.Errorf("%s names %s: leave tag and digest to base/kustomization.yaml", path, m[1])
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
