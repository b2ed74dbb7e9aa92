package doctor

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2"

	"github.com/precache/precache/internal/cache"
	"github.com/precache/precache/internal/hostfs"
	"github.com/precache/precache/internal/manifest"
)

// Images checks the set's rows as `precache status` reports them.
func Images(set []manifest.Image, rows []cache.Row, what string, dnsPath []manifest.Part) Result {
	res := Result{Check: "images", Summary: fmt.Sprintf("%d images of %s present, complete, unpacked and pinned", len(rows), what)}
	var missing, unpinned []string
	onPath := func(img manifest.Image) string {
		if img.Part != "" && slices.Contains(dnsPath, img.Part) {
			return " [the node's DNS depends on it: " + string(img.Part) + "]"
		}
		return ""
	}
	var pathParts []string
	pathMissing := 0
	for i, r := range rows {
		mark := onPath(set[i])
		if mark != "" && !slices.Contains(pathParts, string(set[i].Part)) {
			pathParts = append(pathParts, string(set[i].Part))
		}
		switch {
		case !r.Present || !r.DigestOK || !r.Complete || !r.Unpacked:
			missing = append(missing, set[i].Ref.Display()+": "+r.Problem+mark)
			if mark != "" {
				pathMissing++
			}
		case !r.Pinned:
			unpinned = append(unpinned, set[i].Ref.Display()+mark)
		}
	}
	path := ""
	if len(pathParts) > 0 {
		path = fmt.Sprintf("; the node's DNS depends on %s", strings.Join(pathParts, ", "))
	}
	switch {
	case len(missing) > 0:
		res.Status = Fail
		res.Summary = fmt.Sprintf("%d of %d images of %s are not ready to start without the network", len(missing), len(rows), what)
		if pathMissing > 0 {
			res.Summary += fmt.Sprintf(", %d of them on the node's DNS path", pathMissing)
		}
		res.Evidence = slices.Concat(missing, unpinned)
		res.Fix = "precache bootstrap (or keep the precache agent running); with DNS down: precache import BUNDLE"
	case len(unpinned) > 0:
		res.Status = Warn
		res.Summary = fmt.Sprintf("%d images are not pinned: kubelet image GC may remove them%s", len(unpinned), path)
		res.Evidence = unpinned
		res.Fix = "precache bootstrap pins them (io.cri-containerd.pinned=pinned; honoured by containerd ≥ 1.7.3)"
	default:
		res.Status = OK
		res.Summary += path
	}
	return res
}

// Bundle checks a configured bundle is readable and its lock covers the set.
func Bundle(path string, lock *manifest.Lock, readErr error, set []manifest.Image) Result {
	res := Result{Check: "bundle"}
	if path == "" {
		res.Status, res.Summary = Warn, "no bundle configured: with DNS or the registry down, a lost image cannot come back"
		res.Fix = "precache bundle --calico-version VERSION -o /var/lib/precache/calico.tar.zst, and pass --bundle (PRECACHE_BUNDLE) to bootstrap"
		return res
	}
	if readErr != nil {
		res.Status, res.Summary = Fail, fmt.Sprintf("bundle %s is not readable: %v", path, readErr)
		res.Fix = "rebuild it with precache bundle"
		return res
	}
	var missing []string
	for _, img := range set {
		if d, ok := lock.Lookup(img.Ref); !ok || (img.Ref.Digest != "" && d != img.Ref.Digest) {
			missing = append(missing, img.Ref.Display())
		}
	}
	res.Evidence = append(res.Evidence, fmt.Sprintf("%s carries %d images", path, len(lock.Images)))
	if len(missing) > 0 {
		res.Status = Fail
		res.Summary = fmt.Sprintf("bundle %s does not cover %d images of the running version", path, len(missing))
		res.Evidence = append(res.Evidence, missing...)
		res.Fix = "rebuild the bundle for the version the cluster runs (precache bundle --from-cluster, or --calico-version)"
		return res
	}
	res.Status, res.Summary = OK, fmt.Sprintf("bundle %s covers every image of the set", path)
	return res
}

// Containerd is what doctor learnt about the daemon.
type Containerd struct {
	Address     string
	Reachable   error
	Version     string
	Snapshotter string // --snapshotter
	// CRI is the CRI plugin's configuration as `crictl info` shows it (nil if unknown).
	CRI map[string]any
	// Config is containerd's config file, decoded (nil if not found): containerd 2.x's
	// `crictl info` no longer shows the image service's settings.
	Config map[string]any
	// ConfigPath names the file Config came from.
	ConfigPath string
}

// ContainerdCheck checks reachability, pinning support, the CRI's snapshotter,
// discard_unpacked_layers and the registry config_path.
func ContainerdCheck(c Containerd) Result {
	res := Result{Check: "containerd"}
	if c.Reachable != nil {
		res.Status, res.Summary = Fail, fmt.Sprintf("cannot reach containerd at %s: %v", c.Address, c.Reachable)
		if strings.HasPrefix(c.Reachable.Error(), "cannot reach containerd") { // the adapter's message already says it
			res.Summary = c.Reachable.Error()
		}
		res.Fix = "start containerd, or set --containerd-address"
		return res
	}
	res.Evidence = append(res.Evidence, "containerd "+c.Version+" at "+c.Address)
	var warns []string
	if !PinningSupported(c.Version) {
		warns = append(warns, fmt.Sprintf("containerd %s ignores io.cri-containerd.pinned (pinning needs ≥ 1.7.3): kubelet image GC may remove the Calico images", c.Version))
	}
	known := map[string]any{"cri": c.CRI, "file": c.Config}
	if c.CRI == nil && c.Config == nil {
		res.Evidence = append(res.Evidence, "neither the CRI's configuration nor containerd's config file could be read")
	} else {
		if c.ConfigPath != "" {
			res.Evidence = append(res.Evidence, "config file "+c.ConfigPath)
		}
		if sn := findString(known, "snapshotter"); sn != "" && sn != c.Snapshotter {
			warns = append(warns, fmt.Sprintf("the CRI unpacks into %q but precache into %q: the kubelet would unpack again (set --snapshotter %s)", sn, c.Snapshotter, sn))
		}
		if v, ok := findBool(known, "discardUnpackedLayers", "discard_unpacked_layers"); ok && v {
			warns = append(warns, "discard_unpacked_layers = true: layer blobs are deleted after unpack, so completeness checks and bundle --from-containerd report missing content (the unpacked snapshots are what matters for starting calico-node)")
		}
		p, set := findStringSet(known, "configPath", "config_path")
		switch {
		case p != "":
			res.Evidence = append(res.Evidence, "registry config_path "+p)
		case set || !strings.HasPrefix(strings.TrimPrefix(c.Version, "v"), "2"):
			// containerd 2.x defaults config_path to /etc/containerd/certs.d; 1.x to nothing.
			warns = append(warns, "the CRI's registry config_path is empty: hosts.toml mirrors do not apply to the kubelet's pulls")
		}
	}
	if len(warns) > 0 {
		res.Status, res.Summary = Warn, warns[0]
		res.Evidence = append(res.Evidence, warns[1:]...)
		return res
	}
	res.Status, res.Summary = OK, "containerd "+c.Version+" pins images, CRI snapshotter "+c.Snapshotter
	return res
}

// PinningSupported: the CRI honours io.cri-containerd.pinned from 1.7.3.
func PinningSupported(version string) bool {
	v := strings.TrimPrefix(version, "v")
	parts := strings.SplitN(v, ".", 3)
	if len(parts) < 2 {
		return false
	}
	major, _ := strconv.Atoi(parts[0])
	minor, _ := strconv.Atoi(parts[1])
	patch := 0
	if len(parts) == 3 {
		p := parts[2]
		if i := strings.IndexFunc(p, func(r rune) bool { return r < '0' || r > '9' }); i >= 0 {
			p = p[:i]
		}
		patch, _ = strconv.Atoi(p)
	}
	return major > 1 || major == 1 && (minor > 7 || minor == 7 && patch >= 3)
}

// Disk checks the containerd root has room for the image set.
func Disk(path string, free, needed uint64) Result {
	res := Result{Check: "disk", Evidence: []string{fmt.Sprintf("%s: %.1f GiB free; the set needs about %.1f GiB", path, gib(free), gib(needed))}}
	switch {
	case free < needed:
		res.Status, res.Summary = Fail, "not enough space on the containerd root for the image set"
		res.Fix = "free space on " + path
	case free < 2*needed:
		res.Status, res.Summary = Warn, "less than twice the image set free on the containerd root (an upgrade needs both versions)"
		res.Fix = "free space on " + path
	default:
		res.Status, res.Summary = OK, "room for the image set (and the next version's)"
	}
	return res
}

func gib(n uint64) float64 { return float64(n) / (1 << 30) }

// findString returns the first non-empty string value under any of keys.
func findString(m map[string]any, keys ...string) string {
	s, _ := findStringSet(m, keys...)
	return s
}

// findStringSet is findString, also saying whether any of the keys was present at all.
func findStringSet(m map[string]any, keys ...string) (string, bool) {
	var out string
	set := false
	walk(m, func(k string, v any) {
		s, ok := v.(string)
		if !ok || !slices.Contains(keys, k) {
			return
		}
		set = true
		if out == "" {
			out = s
		}
	})
	return out, set
}

func findBool(m map[string]any, keys ...string) (bool, bool) {
	var out, found bool
	walk(m, func(k string, v any) {
		if b, ok := v.(bool); ok && slices.Contains(keys, k) && !found {
			out, found = b, true
		}
	})
	return out, found
}

// walk visits every key of a decoded JSON document (nested objects, and JSON strings that
// are themselves objects, as `crictl info` nests the config).
func walk(v any, f func(string, any)) {
	switch t := v.(type) {
	case map[string]any:
		for k, x := range t {
			f(k, x)
			if s, ok := x.(string); ok && strings.HasPrefix(strings.TrimSpace(s), "{") {
				var inner map[string]any
				if json.Unmarshal([]byte(s), &inner) == nil {
					walk(inner, f)
					continue
				}
			}
			walk(x, f)
		}
	case []any:
		for _, x := range t {
			walk(x, f)
		}
	}
}

// ReadContainerdConfig decodes containerd's TOML config file, a node path under root.
func ReadContainerdConfig(root hostfs.Root, path string) (map[string]any, hostfs.Path, error) {
	data, p, err := root.ReadFile(path)
	if err != nil {
		return nil, p, err
	}
	out := map[string]any{}
	if err := toml.Unmarshal(data, &out); err != nil {
		return nil, p, fmt.Errorf("%s: %w", p, err)
	}
	return out, p, nil
}
