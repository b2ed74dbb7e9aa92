package manifest

import (
	"fmt"
	"slices"
	"strings"
)

// Part is what an image does for a node that has to bring its pod network and its DNS back
// by itself (after a reboot, a containerd wipe or an aggressive image GC): the parts of the
// recovery set. Calico's images are necessary, not sufficient.
type Part string

// The parts of the recovery set, in the order a set is built and shown.
const (
	PartCalico         Part = "calico"
	PartOperator       Part = "operator"
	PartKubeProxy      Part = "kube-proxy"
	PartNodeLocalDNS   Part = "nodelocaldns"
	PartCoreDNS        Part = "coredns"
	PartAPIServerProxy Part = "apiserver-proxy"
	PartControlPlane   Part = "control-plane"
	PartSandbox        Part = "sandbox"
)

// Parts lists every part of the recovery set.
var Parts = []Part{PartCalico, PartOperator, PartKubeProxy, PartNodeLocalDNS, PartCoreDNS, PartAPIServerProxy, PartControlPlane, PartSandbox}

// partRoles say why each part is on the path back to a working pod network and DNS.
var partRoles = map[Part]string{
	PartCalico:         "the CNI: no pod gets a network without calico-node",
	PartOperator:       "tigera-operator renders Calico's workloads (operator installs)",
	PartKubeProxy:      "Services, the cluster DNS service IP among them, route only through it (hostNetwork DaemonSet)",
	PartNodeLocalDNS:   "node-local DNS: on Kubespray's default it is the node's resolver (hostNetwork DaemonSet)",
	PartCoreDNS:        "cluster DNS; any node may have to host it after a recovery",
	PartAPIServerProxy: "calico-node and kube-proxy reach the API server at localhost through it (static pod on workers)",
	PartControlPlane:   "the cluster itself: the API server and what it needs (static pods)",
	PartSandbox:        "every pod, calico-node included, starts in a sandbox (containerd's pause image)",
}

// Role says why the part is on the path.
func (p Part) Role() string { return partRoles[p] }

// PartNames is the list of parts for messages: "calico, operator, …".
func PartNames() string {
	names := make([]string, len(Parts))
	for i, p := range Parts {
		names[i] = string(p)
	}
	return strings.Join(names, ", ")
}

// ParseParts parses a list of parts; each item may itself be a comma-separated list.
// An empty list, or "all", means every part.
func ParseParts(list []string) ([]Part, error) {
	var out []Part
	for _, item := range list {
		for _, s := range strings.Split(item, ",") {
			s = strings.ToLower(strings.TrimSpace(s))
			if s == "" {
				continue
			}
			if s == "all" {
				return slices.Clone(Parts), nil
			}
			p := Part(s)
			if !slices.Contains(Parts, p) {
				return nil, fmt.Errorf("unknown part of the recovery set %q: use %s (or all)", s, PartNames())
			}
			if !slices.Contains(out, p) {
				out = append(out, p)
			}
		}
	}
	if len(out) == 0 {
		return slices.Clone(Parts), nil
	}
	return out, nil
}

// FromNode reports whether the part is read from the node's own files (the kubelet's
// static pods, containerd's config) rather than from the API server.
func (p Part) FromNode() bool {
	switch p {
	case PartAPIServerProxy, PartControlPlane, PartSandbox:
		return true
	}
	return false
}

// AnyFromNode reports whether any of parts is read from the node's files.
func AnyFromNode(parts []Part) bool { return slices.ContainsFunc(parts, Part.FromNode) }

// AnyFromCluster reports whether any of parts is read from the API server.
func AnyFromCluster(parts []Part) bool {
	return slices.ContainsFunc(parts, func(p Part) bool { return !p.FromNode() })
}

// HasPart reports whether parts holds p.
func HasPart(parts []Part, p Part) bool { return slices.Contains(parts, p) }

// Only keeps the images of set that belong to one of parts. Images of no part (added with
// --image or --images-file) are kept: they were asked for by name.
func Only(set []Image, parts []Part) []Image {
	var out []Image
	for _, img := range set {
		if img.Part == "" || slices.Contains(parts, img.Part) {
			out = append(out, img)
		}
	}
	return out
}

// Merge appends the images of more to set that set does not already hold (by reference),
// keeping the first: one image, one row, whatever part found it first.
func Merge(set []Image, more ...[]Image) []Image {
	seen := map[string]bool{}
	for _, img := range set {
		seen[img.Ref.String()] = true
	}
	for _, list := range more {
		for _, img := range list {
			if key := img.Ref.String(); !seen[key] {
				seen[key] = true
				set = append(set, img)
			}
		}
	}
	return set
}

// FromSpec is the image a workload's or a static pod's container names, as the kubelet
// would pull it: a reference that names a digest is pulled by that digest. It fails
// naming where the reference was found when it does not parse.
func FromSpec(image string, part Part, component, source string) (Image, error) {
	ref, err := ParseRef(image)
	if err != nil {
		return Image{}, fmt.Errorf("%s: %w", source, err)
	}
	img := Image{Ref: ref, Part: part, Component: component, Role: part.Role(), Source: source}
	return withOwnDigest(img), nil
}
