package doctor

import (
	"errors"
	"fmt"
	"io/fs"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/precache/precache/internal/hostfs"
)

// KubeletConfigPaths are where the kubelet's config file is on nodes made by kubeadm
// (/var/lib/kubelet/config.yaml) and by Kubespray (/etc/kubernetes/kubelet-config.yaml,
// roles/kubernetes/node/tasks/kubelet.yml), tried in that order.
var KubeletConfigPaths = []string{"/var/lib/kubelet/config.yaml", "/etc/kubernetes/kubelet-config.yaml"}

// Kubelet is what doctor reads of the kubelet's config file.
type Kubelet struct {
	// Path is the file as the node resolves it ("/etc/kubernetes/kubelet-config.yaml").
	Path                        string
	ClusterDNS                  []string
	ResolvConf                  string // the file dnsPolicy: Default pods get; the kubelet's default is /etc/resolv.conf
	ImageGCHighThresholdPercent int
	ImageGCLowThresholdPercent  int
	// PullVerificationPolicy is imagePullCredentialsVerificationPolicy ("" when unset).
	PullVerificationPolicy string
	// PreloadedAllowlist is preloadedImagesVerificationAllowlist.
	PreloadedAllowlist []string
	// FeatureGates are the config file's featureGates.
	FeatureGates map[string]bool
	// lines maps a key to its line in the file.
	lines map[string]int
}

// Where is "file:line" of a key of the config file, or the file when the key is not in it.
func (k Kubelet) Where(key string) string {
	if n := k.lines[key]; n > 0 {
		return fmt.Sprintf("%s:%d", k.Path, n)
	}
	return k.Path
}

// FindKubelet reads the kubelet's config file under root: path, or when path is empty the
// first of KubeletConfigPaths that exists. On error the defaults are returned with Path
// naming what was tried.
func FindKubelet(root hostfs.Root, path string) (Kubelet, error) {
	if path != "" {
		return ReadKubelet(root, path)
	}
	var firstErr error
	for _, p := range KubeletConfigPaths {
		k, err := ReadKubelet(root, p)
		if err == nil || !errors.Is(err, fs.ErrNotExist) {
			return k, err
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	k := defaultKubelet()
	k.Path = strings.Join(KubeletConfigPaths, " or ")
	return k, fmt.Errorf("no kubelet config file at %s: %w", k.Path, firstErr)
}

func defaultKubelet() Kubelet {
	return Kubelet{ImageGCHighThresholdPercent: 85, ImageGCLowThresholdPercent: 80, ResolvConf: "/etc/resolv.conf"}
}

// ReadKubelet reads a KubeletConfiguration file, a node path under root (defaults: GC at
// 85 %, down to 80 %; resolvConf /etc/resolv.conf).
func ReadKubelet(root hostfs.Root, path string) (Kubelet, error) {
	k := defaultKubelet()
	data, p, err := root.ReadFile(path)
	k.Path = p.String()
	if err != nil {
		return k, err
	}
	var cfg struct {
		ClusterDNS []string        `json:"clusterDNS"`
		ResolvConf *string         `json:"resolvConf"`
		High       *int            `json:"imageGCHighThresholdPercent"`
		Low        *int            `json:"imageGCLowThresholdPercent"`
		Policy     string          `json:"imagePullCredentialsVerificationPolicy"`
		Allowlist  []string        `json:"preloadedImagesVerificationAllowlist"`
		Gates      map[string]bool `json:"featureGates"`
	}
	if err := yaml.Unmarshal(data, &cfg); err != nil {
		return k, fmt.Errorf("%s: %w", k.Path, err)
	}
	k.ClusterDNS = cfg.ClusterDNS
	if cfg.ResolvConf != nil {
		k.ResolvConf = *cfg.ResolvConf // "" is allowed: no resolv.conf for Default pods
	}
	if cfg.High != nil {
		k.ImageGCHighThresholdPercent = *cfg.High
	}
	if cfg.Low != nil {
		k.ImageGCLowThresholdPercent = *cfg.Low
	}
	k.PullVerificationPolicy, k.PreloadedAllowlist, k.FeatureGates = cfg.Policy, cfg.Allowlist, cfg.Gates
	k.lines = map[string]int{}
	for n, line := range strings.Split(string(data), "\n") {
		key, _, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		key = strings.Trim(key, `"' `)
		if _, seen := k.lines[key]; !seen {
			k.lines[key] = n + 1
		}
	}
	return k, nil
}

// KubeletGC compares the kubelet's image GC thresholds with the disk's use and pinning.
func KubeletGC(k Kubelet, usedPercent int, pinning bool) Result {
	res := Result{Check: "kubelet-image-gc", Evidence: []string{fmt.Sprintf("%s: image GC from %d %% down to %d %%; the image disk is %d %% used",
		k.Path, k.ImageGCHighThresholdPercent, k.ImageGCLowThresholdPercent, usedPercent)}}
	switch {
	case pinning:
		res.Status, res.Summary = OK, "pinned images are never garbage-collected by the kubelet"
	case usedPercent >= k.ImageGCHighThresholdPercent:
		res.Status, res.Summary = Fail, "the disk is past the kubelet's GC threshold and pins are not honoured: Calico's images are being garbage-collected"
		res.Fix = "upgrade containerd to ≥ 1.7.3 (pinning), free disk space, or raise imageGCHighThresholdPercent"
	case usedPercent >= k.ImageGCLowThresholdPercent:
		res.Status, res.Summary = Warn, "the disk is near the kubelet's GC threshold and pins are not honoured"
		res.Fix = "upgrade containerd to ≥ 1.7.3 (pinning) or free disk space"
	default:
		res.Status, res.Summary = OK, "below the kubelet's GC thresholds"
	}
	return res
}
