package cache

import (
	"errors"
	"os/exec"
	"strings"
	"testing"
)

// TestDeps keeps the core free of adapters: it talks to the world through the interfaces
// in store.go, and the adapters (containerd, bundle formats, the Kubernetes discovery)
// depend on it, never the other way round.
func TestDeps(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("skipping slow depcheck in -short mode")
	}
	const pkg = "github.com/precache/precache/internal/cache"
	denied := []string{
		"github.com/containerd/containerd/",
		"k8s.io/",
		"github.com/precache/precache/internal/bundle",
		"github.com/precache/precache/internal/containerd",
		"github.com/precache/precache/internal/cluster",
		"github.com/precache/precache/internal/dns",
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the depcheck runs `go list`: %v", err)
	}
	out, err := exec.CommandContext(t.Context(), goBin, "list", "-deps", "-f", "{{.ImportPath}}", pkg).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("go list -deps %s: %v\n%s", pkg, err, ee.Stderr)
		}
		t.Fatalf("go list -deps %s: %v", pkg, err)
	}
	deps := strings.Fields(string(out))
	if len(deps) == 0 || deps[len(deps)-1] != pkg {
		t.Fatalf("go list -deps %s listed %v, want it to end with the package itself", pkg, deps)
	}
	for _, dep := range deps {
		for _, prefix := range denied {
			if strings.HasPrefix(dep, prefix) {
				t.Errorf("the core %s depends on %s; adapters depend on the core, not the other way round", pkg, dep)
			}
		}
	}
}
