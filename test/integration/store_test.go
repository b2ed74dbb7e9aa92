package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/platforms"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/precache/precache/internal/cache"
	"github.com/precache/precache/internal/cache/cachetest"
	pcontainerd "github.com/precache/precache/internal/containerd"
	"github.com/precache/precache/internal/manifest"
	"github.com/precache/precache/test/testenv"
)

// TestContainerdConformance: the real adapter, pulling client-side, passes the suite the
// in-memory fake passes (TestContainerdConformanceTransfer: pulling through the daemon).
func TestContainerdConformance(t *testing.T) {
	n := newNode(t)
	conformance(t, n, n.storeWith(pcontainerd.Config{PullPath: pcontainerd.PullClient}))
}

// conformance runs cachetest's suite on store, opened on n.
func conformance(t *testing.T, n *node, store *pcontainerd.Store) {
	var seed uint64 = 1000
	resolve := func(t *testing.T, ref string, pushed string) ocispec.Descriptor {
		desc, err := store.Resolve(t.Context(), ref)
		if err != nil {
			t.Fatal(err)
		}
		if desc.Digest.String() != pushed {
			t.Fatalf("registry pushed %s, resolves %s", pushed, desc.Digest)
		}
		return desc
	}
	publish := func(t *testing.T, ref string, platforms ...string) ocispec.Descriptor {
		r := manifest.MustParseRef(ref)
		seed++
		d, err := reg.Push(t.Context(), r.Path(), r.Tag, testenv.ImageSpec{Seed: seed, Platforms: platforms})
		if err != nil {
			t.Fatal(err)
		}
		return resolve(t, ref, d.String())
	}
	cachetest.Run(t, func(t *testing.T) cachetest.Harness {
		return cachetest.Harness{
			Store:        store,
			Repo:         "docker.io/conformance",
			Platform:     platforms.Format(platforms.DefaultSpec()),
			Publish:      func(t *testing.T, ref string) ocispec.Descriptor { return publish(t, ref) },
			PublishIndex: publish,
			PublishManifest: func(t *testing.T, ref, platform string) ocispec.Descriptor {
				r := manifest.MustParseRef(ref)
				seed++
				d, err := reg.PushManifest(t.Context(), r.Path(), r.Tag, platform, seed)
				if err != nil {
					t.Fatal(err)
				}
				return resolve(t, ref, d.String())
			},
			GC:    n.gc,
			Blobs: store,
		}
	})
}

// gc runs containerd's garbage collector to completion: deleting an image with
// SynchronousDelete collects before it returns.
func (n *node) gc(t *testing.T) {
	t.Helper()
	c, ctx := n.client()
	name := fmt.Sprintf("gc.invalid/trigger:%d", time.Now().UnixNano())
	d := digest.FromString(name)
	if _, err := c.ImageService().Create(ctx, images.Image{Name: name, Target: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: d, Size: 1}}); err != nil {
		t.Fatal(err)
	}
	if err := c.ImageService().Delete(ctx, name, images.SynchronousDelete()); err != nil {
		t.Fatal(err)
	}
}

func (n *node) store() *pcontainerd.Store {
	n.t.Helper()
	return n.storeWith(pcontainerd.Config{})
}

// storeWith opens the adapter on n with cfg's pull settings (PullPath, OnPull, …) and the
// node's address, namespace, snapshotter and hosts dir.
func (n *node) storeWith(cfg pcontainerd.Config) *pcontainerd.Store {
	n.t.Helper()
	cfg.Address, cfg.Namespace, cfg.Snapshotter, cfg.HostsDir = n.Address, "k8s.io", "overlayfs", hostsDir
	s, err := pcontainerd.Open(n.t.Context(), cfg)
	if err != nil {
		n.t.Fatal(err)
	}
	n.t.Cleanup(func() { s.Close() })
	return s
}

func (n *node) client() (*containerd.Client, context.Context) {
	n.t.Helper()
	c, err := containerd.New(n.Address)
	if err != nil {
		n.t.Fatal(err)
	}
	n.t.Cleanup(func() { c.Close() })
	return c, namespaces.WithNamespace(n.t.Context(), "k8s.io")
}

// imageNames lists the image records in k8s.io, skipping the CRI's own image-ID names (sha256:…).
func (n *node) imageNames() []string {
	n.t.Helper()
	c, ctx := n.client()
	imgs, err := c.ImageService().List(ctx)
	if err != nil {
		n.t.Fatal(err)
	}
	var out []string
	for _, img := range imgs {
		if len(img.Name) > 7 && img.Name[:7] == "sha256:" {
			continue
		}
		out = append(out, img.Name)
	}
	return out
}

func (n *node) image(name string) cache.Image {
	n.t.Helper()
	img, err := n.store().Image(n.t.Context(), name)
	if err != nil {
		n.t.Fatal(err)
	}
	return img
}

func (n *node) putImage(img cache.Image) {
	n.t.Helper()
	c, ctx := n.client()
	if _, err := c.ImageService().Update(ctx, images.Image{Name: img.Name, Target: img.Target, Labels: img.Labels}); err != nil {
		n.t.Fatal(err)
	}
}

func (n *node) deleteImage(name string) {
	n.t.Helper()
	c, ctx := n.client()
	if err := c.ImageService().Delete(ctx, name); err != nil {
		n.t.Fatal(err)
	}
}

// deadSocket is a unix socket path whose listener is closed: connecting is refused.
func deadSocket(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "pc-dead-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "c.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	return path
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return data
}
