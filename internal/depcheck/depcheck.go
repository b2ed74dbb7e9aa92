// Package depcheck keeps the import graph as the design says: a test in a package names
// what it must never depend on, directly or through another package.
package depcheck

import (
	"errors"
	"os/exec"
	"strings"
	"testing"
)

// Deny fails t if pkg depends, directly or not, on a package whose import path starts
// with one of denied. It runs `go list -deps`.
func Deny(t *testing.T, pkg, why string, denied ...string) {
	t.Helper()
	if testing.Short() {
		t.Skip("skipping slow depcheck in -short mode")
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
				t.Errorf("%s depends on %s: %s (find the path with `go list -deps -f '{{.ImportPath}}: {{.Imports}}' %s`)", pkg, dep, why, pkg)
			}
		}
	}
}
