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

// writeState records the set just made right. A node reads the file after a reboot,
// possibly with no API server to ask, so it must hold either the previous set or the new
// one, whole, even across a power cut: the new content goes to a temporary file in the
// same directory, is synced to disk, renamed over the old file, and the directory is
// synced so the rename itself is on disk. A set with a failed image is not recorded.
func writeState(path, source string, results []cache.Result) error {
	st := nodeState{Version: 1, Written: time.Now().UTC(), Source: source}
	for _, r := range results {
		if r.Err != nil {
			return fmt.Errorf("not recording a set that is not right: %s: %w", r.Image.Ref, r.Err)
		}
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
	return writeFileSynced(path, append(data, '\n'), 0o644)
}

// writeFileSynced replaces path with data atomically and durably (see writeState).
func writeFileSynced(path string, data []byte, mode os.FileMode) (retErr error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if retErr != nil {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Chmod(mode); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", dir, err)
	}
	return nil
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
