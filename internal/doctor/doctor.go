// Package doctor finds, before they bite, the conditions that keep a node from bringing
// its pod network back: above all the DNS ↔ CNI loop (the node's resolver depends on
// something that runs in the cluster, and the CNI's images need DNS to be pulled), told
// apart by shape — the CoreDNS service IP (reached over the pod network, so through
// calico-node) or node-local DNS (a hostNetwork pod on the node, which forwards names
// outside the cluster upstream or back into the cluster) — and the kubelet settings that
// make it pull images that are already on the node.
//
// The node's files are read under a root through internal/hostfs, so links resolve as on
// the node; containerd and the API are read by the callers. Checks are pure functions of
// what was read, so every check is tested on crafted input.
package doctor

// Status of a check.
type Status string

const (
	OK   Status = "OK"
	Warn Status = "WARN"
	Fail Status = "FAIL"
	Skip Status = "SKIP" // could not be checked; Evidence says why
)

// Result is one check's verdict.
type Result struct {
	Check    string   `json:"check"`
	Status   Status   `json:"status"`
	Summary  string   `json:"summary"`
	Evidence []string `json:"evidence,omitempty"`
	Fix      string   `json:"fix,omitempty"`
}

// ExitCode is 2 if any check failed, 1 if any warned and strict, else 0.
func ExitCode(results []Result, strict bool) int {
	code := 0
	for _, r := range results {
		switch {
		case r.Status == Fail:
			return 2
		case r.Status == Warn && strict:
			code = 1
		}
	}
	return code
}
