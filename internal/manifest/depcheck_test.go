package manifest

import (
	"testing"

	"github.com/precache/precache/internal/depcheck"
)

// TestDeps keeps internal/manifest free of containerd and client-go: the image-set logic
// is shared by the containerd adapter, the bundle reader and the Kubernetes discovery,
// and must not drag either runtime into the others.
func TestDeps(t *testing.T) {
	t.Parallel()
	depcheck.Deny(t, "github.com/precache/precache/internal/manifest", "it must import neither containerd nor client-go",
		"github.com/containerd/", "k8s.io/")
}
