package source

import (
	"testing"

	"github.com/precache/precache/internal/depcheck"
)

// TestDeps: the decision where images come from is the core's; it sees sources only
// through its ports.
func TestDeps(t *testing.T) {
	t.Parallel()
	depcheck.Deny(t, "github.com/precache/precache/internal/source", "the decision sees sources only through its ports",
		"github.com/containerd/containerd/",
		"k8s.io/",
		"github.com/precache/precache/internal/bundle",
		"github.com/precache/precache/internal/containerd",
		"github.com/precache/precache/internal/cluster",
	)
}
