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
			Store:   f,
			Repo:    "docker.io/conformance",
			Publish: func(_ *testing.T, ref string) ocispec.Descriptor { return f.Publish(ref) },
		}
	})
}
