package testenv

import (
	"context"
	"fmt"

	"github.com/precache/precache/internal/manifest"
)

// PushCalico pushes generated images under the names of a Calico release's catalog set
// (paths only: one registry serves docker.io and quay.io through the hosts.toml mirror),
// and returns each image's reference → index digest.
func (r *Registry) PushCalico(ctx context.Context, version string, variant manifest.Variant, spec ImageSpec) (map[string]string, error) {
	set, err := manifest.Build(manifest.Options{Version: version, Variant: variant})
	if err != nil {
		return nil, err
	}
	out := make(map[string]string, len(set))
	for i, img := range set {
		s := spec
		s.Seed = spec.Seed*100 + uint64(i) + 1
		d, err := r.Push(ctx, img.Ref.Path(), img.Ref.Tag, s)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", img.Ref, err)
		}
		out[img.Ref.String()] = d.String()
	}
	return out, nil
}
