package manifest

import (
	"errors"
	"os/exec"
	"strings"
	"testing"
)

// TestDeps keeps internal/manifest free of containerd and client-go: the image-set logic
// is shared by the containerd adapter, the bundle reader and the Kubernetes discovery,
// and must not drag either runtime into the others.
func TestDeps(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("skipping slow depcheck in -short mode")
	}
	const pkg = "github.com/precache/precache/internal/manifest"
	denied := []string{"github.com/containerd/", "k8s.io/"}

	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the depcheck runs `go list`: %v", err)
	}
	cmd := exec.CommandContext(t.Context(), goBin, "list", "-deps", "-f", "{{.ImportPath}}", pkg)
	out, err := cmd.Output()
	if err != nil {
		var stderr string
		if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("go list -deps %s: %v\n%s", pkg, err, stderr)
	}
	deps := strings.Fields(string(out))
	if len(deps) == 0 || deps[len(deps)-1] != pkg {
		t.Fatalf("go list -deps %s listed %v, want it to end with the package itself", pkg, deps)
	}
	for _, dep := range deps {
		for _, prefix := range denied {
			if strings.HasPrefix(dep, prefix) {
				t.Errorf("%s depends on %s; it must import neither containerd nor client-go (find the path with `go list -deps -f '{{.ImportPath}}: {{.Imports}}' %s`)", pkg, dep, pkg)
			}
		}
	}
}
