package cache

import (
	"testing"

	"github.com/precache/precache/internal/depcheck"
)

// TestDeps keeps the core free of adapters: it talks to the world through the interfaces
// in store.go, and the adapters (containerd, bundle formats, the Kubernetes discovery)
// depend on it, never the other way round.
func TestDeps(t *testing.T) {
	t.Parallel()
	depcheck.Deny(t, "github.com/precache/precache/internal/cache", "adapters depend on the core, not the other way round",
		"github.com/containerd/containerd/",
		"k8s.io/",
		"github.com/precache/precache/internal/bundle",
		"github.com/precache/precache/internal/containerd",
		"github.com/precache/precache/internal/cluster",
		"github.com/precache/precache/internal/dns",
	)
}
