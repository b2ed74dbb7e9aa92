package agent

import (
	"strings"

	"github.com/precache/precache/internal/manifest"
)

// keptPath reports whether a repository path ("calico/node", "mirror/calico/node") is one
// of the agent's, with or without a mirror's path before it, and the part it is kept for.
func keptPath(paths map[string]manifest.Part, p string) (manifest.Part, bool) {
	if part, ok := paths[p]; ok {
		return part, true
	}
	for q, part := range paths {
		if strings.HasSuffix(p, "/"+q) || strings.HasSuffix(q, "/"+p) {
			return part, true
		}
	}
	return "", false
}
