package cachetest

import (
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func TestFakeConformance(t *testing.T) {
	t.Parallel()
	Run(t, func(t *testing.T) Harness {
		f := NewFake()
		return Harness{
			Store:    f,
			Repo:     "docker.io/conformance",
			Platform: "linux/amd64",
			Publish:  func(_ *testing.T, ref string) ocispec.Descriptor { return f.Publish(ref) },
			PublishIndex: func(_ *testing.T, ref string, platforms ...string) ocispec.Descriptor {
				return f.PublishIndex(ref, platforms...)
			},
			PublishManifest: func(_ *testing.T, ref, platform string) ocispec.Descriptor { return f.PublishManifest(ref, platform) },
			GC:              func(*testing.T) { f.GC() },
			Blobs:           f,
		}
	})
}
