package nodefiles

import (
	"testing"

	"github.com/precache/precache/internal/depcheck"
)

// TestDeps keeps nodefiles a reader of files: no containerd, no API client. What the
// node's files say must be known without either (a bootstrap before containerd or the
// API server answers).
func TestDeps(t *testing.T) {
	t.Parallel()
	depcheck.Deny(t, "github.com/precache/precache/internal/nodefiles", "it reads the node's files only",
		"github.com/containerd/", "k8s.io/client-go", "github.com/precache/precache/internal/cache")
}
