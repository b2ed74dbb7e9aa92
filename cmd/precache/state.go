package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/precache/precache/internal/cache"
	"github.com/precache/precache/internal/manifest"
)

// DefaultStateFile is where bootstrap and the agent record the set they last made right,
// so a bootstrap that cannot reach the API server still knows what the node needs.
const DefaultStateFile = "/var/lib/precache/state.json"

// nodeState is the state file's content.
type nodeState struct {
	Version int       `json:"version"`
	Written time.Time `json:"written"`
	// Source says where the set came from when it was recorded.
	Source string   `json:"source"`
	Images []string `json:"images"` // name:tag@digest
}

func writeState(path, source string, results []cache.Result) error {
	st := nodeState{Version: 1, Written: time.Now().UTC(), Source: source}
	for _, r := range results {
		ref := r.Image.Ref
		if r.Digest != "" {
			ref.Digest = r.Digest
		}
		st.Images = append(st.Images, ref.String())
	}
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func readState(path string) (*nodeState, []manifest.Image, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	var st nodeState
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	var out []manifest.Image
	for _, s := range st.Images {
		ref, err := manifest.ParseRef(s)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", path, err)
		}
		img := manifest.Image{Ref: ref, Source: "state " + path}
		if ref.Digest != "" {
			img.DigestSource = "state " + path
		}
		out = append(out, img)
	}
	return &st, out, nil
}
