package agent

import "strings"

// keptPath reports whether a repository path ("calico/node", "mirror/calico/node") is one
// of the agent's, with or without a mirror's path before it.
func keptPath(paths map[string]bool, p string) bool {
	if paths[p] {
		return true
	}
	for q := range paths {
		if strings.HasSuffix(p, "/"+q) || strings.HasSuffix(q, "/"+p) {
			return true
		}
	}
	return false
}
