package nodefiles

import (
	"errors"
	"fmt"
	"strings"

	"github.com/pelletier/go-toml/v2"

	"github.com/precache/precache/internal/hostfs"
)

// DefaultContainerdConfig is containerd's config file on a node.
const DefaultContainerdConfig = "/etc/containerd/config.toml"

// ErrNoSandbox: containerd's config names no sandbox image, so containerd's built-in
// default applies (it depends on containerd's version, which a file cannot tell).
var ErrNoSandbox = errors.New("containerd's config names no sandbox image")

// Sandbox is the image containerd's CRI starts every pod's sandbox from.
type Sandbox struct {
	Image string
	// Source is "file:line" of the key, e.g.
	// `/etc/containerd/config.toml:88 [plugins."io.containerd.cri.v1.images".pinned_images] sandbox`.
	Source string
	// ConfigVersion is the config file's schema version (1 when the file says none).
	ConfigVersion int
}

// sandboxKeys are where each config schema keeps the sandbox image: containerd 2.x's
// schema 3 and 4 in the CRI images plugin's pinned_images (the CRI pins what it names
// there), 1.x's schema 2 in the CRI plugin, and schema 1 under the plugin's short name.
// containerd reads its schema's key only (2.x migrates a version 2 file's sandbox_image),
// and so does SandboxImage.
func sandboxKey(version int) (path []string, display string) {
	switch {
	case version >= 3:
		return []string{"plugins", "io.containerd.cri.v1.images", "pinned_images", "sandbox"}, `[plugins."io.containerd.cri.v1.images".pinned_images] sandbox`
	case version == 2:
		return []string{"plugins", "io.containerd.grpc.v1.cri", "sandbox_image"}, `[plugins."io.containerd.grpc.v1.cri"] sandbox_image`
	default:
		return []string{"plugins", "cri", "sandbox_image"}, `[plugins.cri] sandbox_image`
	}
}

// SandboxImage reads the sandbox image from containerd's config file, a node path under
// root. A file that names none returns ErrNoSandbox; a missing file fs.ErrNotExist.
func SandboxImage(root hostfs.Root, configPath string) (Sandbox, error) {
	if configPath == "" {
		configPath = DefaultContainerdConfig
	}
	data, where, err := root.ReadFile(configPath)
	if err != nil {
		return Sandbox{}, err
	}
	var cfg map[string]any
	if err := toml.Unmarshal(data, &cfg); err != nil {
		return Sandbox{}, fmt.Errorf("%s: %w", where, err)
	}
	version := 1
	if v, ok := cfg["version"].(int64); ok {
		version = int(v)
	}
	path, display := sandboxKey(version)
	v, _ := lookup(cfg, path...).(string)
	if strings.TrimSpace(v) == "" {
		return Sandbox{ConfigVersion: version}, fmt.Errorf("%s (config version %d) has no %s: %w", where, version, display, ErrNoSandbox)
	}
	src := where.String()
	if n := tomlKeyLine(data, path); n > 0 {
		src = fmt.Sprintf("%s:%d", src, n)
	}
	return Sandbox{Image: strings.TrimSpace(v), Source: src + " " + display, ConfigVersion: version}, nil
}

func lookup(m map[string]any, path ...string) any {
	var cur any = m
	for _, p := range path {
		mm, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = mm[p]
	}
	return cur
}

// tomlKeyLine finds the 1-based line that sets the key at path: a `[table]` header plus
// a (possibly dotted) key, with either kind of quotes. 0 when it cannot be told (an inline
// table, say); the value itself comes from the TOML decoder, never from this.
func tomlKeyLine(data []byte, path []string) int {
	want := strings.Join(path, ".")
	table := ""
	for n, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasPrefix(line, "[") {
			h := strings.Trim(line, "[] \t")
			if i := strings.Index(h, "#"); i >= 0 && strings.Count(h[:i], `"`)%2 == 0 {
				h = strings.TrimSpace(h[:i])
			}
			table = unquoteDotted(h)
			continue
		}
		key, _, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		full := unquoteDotted(strings.TrimSpace(key))
		if table != "" {
			full = table + "." + full
		}
		if full == want {
			return n + 1
		}
	}
	return 0
}

// unquoteDotted turns `plugins."io.containerd.cri.v1.images" . pinned_images` into
// "plugins.io.containerd.cri.v1.images.pinned_images": good enough to compare with a
// joined path, which is all it is used for.
func unquoteDotted(s string) string {
	var parts []string
	for _, p := range splitDotted(s) {
		parts = append(parts, strings.Trim(strings.TrimSpace(p), `"'`))
	}
	return strings.Join(parts, ".")
}

// splitDotted splits a dotted TOML key on dots outside quotes.
func splitDotted(s string) []string {
	var (
		out   []string
		cur   strings.Builder
		quote rune
	)
	for _, r := range s {
		switch {
		case quote != 0:
			if r == quote {
				quote = 0
			}
			cur.WriteRune(r)
		case r == '"' || r == '\'':
			quote = r
			cur.WriteRune(r)
		case r == '.':
			out = append(out, cur.String())
			cur.Reset()
		default:
			cur.WriteRune(r)
		}
	}
	return append(out, cur.String())
}
