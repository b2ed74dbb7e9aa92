package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/precache/precache/internal/cache"
	pcontainerd "github.com/precache/precache/internal/containerd"
	"github.com/precache/precache/internal/manifest"
)

// setFlags select the image set: the catalog for a Calico version, rewritten, plus
// extra images, with digests from a lock file.
type setFlags struct {
	version     string
	variant     string
	registry    string
	imagePath   string
	imagePrefix string
	images      []string
	imagesFile  string
	lock        string
	// discovery from the Kubernetes API and the node's files
	fromCluster bool
	kubeconfig  string
	// only narrows the recovery set to some of its parts (registerOnly).
	only []string
}

func (s *setFlags) register(f *pflag.FlagSet) {
	envFlag(f, &s.version, "calico-version", "PRECACHE_CALICO_VERSION", "", "Calico release whose images to keep, e.g. v3.28.1 (catalog: "+manifest.SupportedVersions()+")")
	envFlag(f, &s.variant, "variant", "PRECACHE_VARIANT", string(manifest.VariantManifest), "how Calico is installed: manifest (calico.yaml, Kubespray) or operator (Tigera operator)")
	envFlag(f, &s.registry, "registry", "PRECACHE_REGISTRY", "", "registry replacing the catalog's, optionally with a path (registry.local:5000/mirror)")
	envFlag(f, &s.imagePath, "image-path", "PRECACHE_IMAGE_PATH", "", `path replacing "calico" in image names, like the operator's imagePath`)
	envFlag(f, &s.imagePrefix, "image-prefix", "PRECACHE_IMAGE_PREFIX", "", "prefix added to each image name, like the operator's imagePrefix")
	f.StringArrayVar(&s.images, "image", nil, `image to add, or to replace the catalog image of the same name ("node", "cni", …); repeatable`)
	annotateEnv(f.Lookup("image"), "PRECACHE_IMAGES")
	envFlag(f, &s.imagesFile, "images-file", "PRECACHE_IMAGES_FILE", "", "file of image references to add or replace, one a line, # comments")
	envFlag(f, &s.lock, "lock", "PRECACHE_LOCK", "", `lock file of expected digests: {"version":1,"images":{"REF":"sha256:…"}}`)
	f.BoolVar(&s.fromCluster, "from-cluster", false, "discover the recovery set: Calico's version, images and digests and the other workloads from the Kubernetes API (kubeconfig as kubectl finds it), the static pods and sandbox image from the node's files under --root")
	annotateEnv(f.Lookup("from-cluster"), "PRECACHE_FROM_CLUSTER")
	f.StringVar(&s.kubeconfig, "kubeconfig", "", "kubeconfig to read the cluster with (implies --from-cluster; default $KUBECONFIG, in-cluster, ~/.kube/config)")
}

// discover reports whether the set comes from the cluster.
func (s *setFlags) discover() bool { return s.fromCluster || s.kubeconfig != "" }

func (s *setFlags) build() ([]manifest.Image, error) {
	variant, err := manifest.ParseVariant(s.variant)
	if err != nil {
		return nil, &usageError{err}
	}
	set, err := manifest.Build(manifest.Options{
		Version:     s.version,
		Variant:     variant,
		Registry:    s.registry,
		ImagePath:   s.imagePath,
		ImagePrefix: s.imagePrefix,
		Images:      s.images,
		ImagesFile:  s.imagesFile,
	})
	if err != nil {
		return nil, &usageError{err}
	}
	if s.lock != "" {
		l, err := manifest.ReadLock(s.lock)
		if err != nil {
			return nil, &usageError{err}
		}
		if set, err = manifest.ApplyLock(set, l, s.lock); err != nil {
			return nil, &usageError{err}
		}
	}
	return set, nil
}

// storeFlags tune the containerd adapter for commands that pull.
type storeFlags struct {
	maxDownloads int
	pullPath     string
}

// registerPullPath adds --pull-path to a command that pulls.
func (s *storeFlags) registerPullPath(f *pflag.FlagSet) {
	envFlag(f, &s.pullPath, "pull-path", "PRECACHE_PULL_PATH", string(pcontainerd.PullAuto),
		"how images are pulled: transfer (inside containerd, by its transfer service; containerd 2.x), client (through this process; any containerd), "+
			"or auto (transfer where containerd serves it). With transfer, containerd reads --hosts-dir at its own path: give the node's")
}

func (a *app) openStore(ctx context.Context, sf storeFlags) (*pcontainerd.Store, error) {
	pullPath, err := pcontainerd.ParsePullPath(sf.pullPath)
	if err != nil {
		return nil, &usageError{fmt.Errorf("--pull-path: %w", err)}
	}
	return pcontainerd.Open(ctx, pcontainerd.Config{
		Address:                a.global.address,
		Namespace:              a.global.namespace,
		Snapshotter:            a.global.snapshotter,
		Platform:               a.global.platform,
		HostsDir:               a.global.hostsDir,
		DockerConfig:           a.global.dockerCfg,
		MaxConcurrentDownloads: sf.maxDownloads,
		DialTimeout:            5 * time.Second,
		RegistryTimeout:        registryLimit(a.global.registryTimeout),
		RegistryStallTimeout:   registryLimit(a.global.registryStallTimeout),
		PullPath:               pullPath,
		OnPull:                 a.logPull,
	})
}

// logPull logs which path a pull took: a transfer given up for the client-side path is
// worth a warning, the rest is debug.
func (a *app) logPull(e pcontainerd.PullEvent) {
	fields := []zap.Field{zap.String("image", e.Ref), zap.String("path", string(e.Path))}
	if e.Why != "" {
		fields = append(fields, zap.String("why", e.Why))
	}
	if e.Err != nil {
		a.log.Warn("transfer given up, pulling through precache", append(fields, zap.Error(e.Err))...)
		return
	}
	a.log.Debug("pull path", fields...)
}

// registryConfig is the adapter's configuration for commands that reach registries
// without a containerd (precache bundle).
func (a *app) registryConfig() pcontainerd.Config {
	return pcontainerd.Config{
		HostsDir:             a.global.hostsDir,
		DockerConfig:         a.global.dockerCfg,
		RegistryTimeout:      registryLimit(a.global.registryTimeout),
		RegistryStallTimeout: registryLimit(a.global.registryStallTimeout),
	}
}

// registryLimit maps a --registry-*timeout flag to the adapter's setting, where zero
// means its default: the flag's 0 is "no limit".
func registryLimit(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

var _ cache.Store = (*pcontainerd.Store)(nil)
