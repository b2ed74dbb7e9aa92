package manifest

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// Variant is how Calico was installed: plain manifests (calico.yaml) or the Tigera operator.
type Variant string

const (
	// VariantManifest is calico.yaml / calico-typha.yaml in kube-system (also Kubespray's default).
	VariantManifest Variant = "manifest"
	// VariantOperator is the Tigera operator's install in calico-system.
	VariantOperator Variant = "operator"
)

// ParseVariant accepts "manifest" or "operator".
func ParseVariant(s string) (Variant, error) {
	switch v := Variant(strings.ToLower(strings.TrimSpace(s))); v {
	case VariantManifest, VariantOperator:
		return v, nil
	case "":
		return VariantManifest, nil
	default:
		return "", fmt.Errorf("unknown install variant %q: use %q or %q", s, VariantManifest, VariantOperator)
	}
}

// Version is a Calico release, e.g. v3.28.1.
type Version struct {
	Major, Minor, Patch int
	// Suffix is a pre-release suffix such as "-0.dev", kept in the image tag.
	Suffix string
}

var versionRE = regexp.MustCompile(`^v?(\d+)\.(\d+)\.(\d+)(-[0-9A-Za-z.-]+)?$`)

// Supported minor versions of the built-in catalog.
const (
	minMinor = 24
	maxMinor = 33
)

// ParseVersion parses "v3.28.1" or "3.28.1" and checks the catalog knows its minor version.
func ParseVersion(s string) (Version, error) {
	m := versionRE.FindStringSubmatch(strings.TrimSpace(s))
	if m == nil {
		return Version{}, fmt.Errorf("invalid Calico version %q: want vMAJOR.MINOR.PATCH, e.g. v3.28.1 (supported: %s)", s, SupportedVersions())
	}
	v := Version{Suffix: m[4]}
	v.Major, _ = strconv.Atoi(m[1])
	v.Minor, _ = strconv.Atoi(m[2])
	v.Patch, _ = strconv.Atoi(m[3])
	if v.Major != 3 || v.Minor < minMinor || v.Minor > maxMinor {
		return Version{}, fmt.Errorf("unsupported Calico version %s: the built-in catalog covers %s; pass the images with --image or --images-file instead", v, SupportedVersions())
	}
	return v, nil
}

// SupportedVersions describes the range of the built-in catalog.
func SupportedVersions() string {
	return fmt.Sprintf("v3.%d.x to v3.%d.x", minMinor, maxMinor)
}

// String is the image tag form, "v3.28.1".
func (v Version) String() string {
	return fmt.Sprintf("v%d.%d.%d%s", v.Major, v.Minor, v.Patch, v.Suffix)
}

// component is one image of a Calico release.
type component struct {
	name string
	// what it is for, shown by `precache images`.
	role string
	// first and last minor versions (of 3.x) that ship it; last 0 means "still shipped".
	since, until int
	variants     []Variant
	optional     bool
}

func (c component) in(v Version, variant Variant) bool {
	if v.Minor < c.since || (c.until != 0 && v.Minor > c.until) {
		return false
	}
	for _, cv := range c.variants {
		if cv == variant {
			return true
		}
	}
	return false
}

var (
	both     = []Variant{VariantManifest, VariantOperator}
	operator = []Variant{VariantOperator}
)

// components is the catalog. Sources: Calico's manifests/calico.yaml and calico-typha.yaml
// for each release, the Tigera operator's pkg/components for the operator's set, and the
// v3.33 release notes: from v3.33 one "calico" image carries cni, kube-controllers, typha
// and the operator's helper components, with node and whisker kept separate.
var components = []component{
	{name: "node", role: "calico-node DaemonSet (main container, mount-bpffs init)", since: 24, variants: both},
	{name: "cni", role: "calico-node init containers upgrade-ipam and install-cni", since: 24, until: 32, variants: both},
	{name: "kube-controllers", role: "calico-kube-controllers Deployment", since: 24, until: 32, variants: both},
	{name: "typha", role: "calico-typha Deployment", since: 24, until: 32, variants: both},
	{name: "calico", role: "cni, kube-controllers, typha and helper components in one image", since: 33, variants: both},
	{name: "pod2daemon-flexvol", role: "calico-node flexvol-driver init container", since: 24, until: 32, variants: operator},
	{name: "csi", role: "csi-node-driver DaemonSet", since: 24, until: 32, variants: operator},
	{name: "node-driver-registrar", role: "csi-node-driver DaemonSet", since: 24, until: 32, variants: operator},
	{name: "key-cert-provisioner", role: "TLS key/cert init containers", since: 28, until: 32, variants: operator},
	{name: "apiserver", role: "calico-apiserver (when the APIServer resource exists)", since: 24, until: 32, variants: operator, optional: true},
	{name: "goldmane", role: "goldmane flow aggregator (when the Goldmane resource exists)", since: 30, until: 32, variants: operator, optional: true},
	{name: "whisker", role: "whisker UI (when the Whisker resource exists)", since: 30, variants: operator, optional: true},
	{name: "whisker-backend", role: "whisker UI backend (when the Whisker resource exists)", since: 30, until: 32, variants: operator, optional: true},
}

// DefaultRegistry is where a release's images live unless the install overrides it:
// docker.io up to v3.30 for manifests (v3.29 for the operator), quay.io after.
func DefaultRegistry(v Version, variant Variant) string {
	last := 30
	if variant == VariantOperator {
		last = 29
	}
	if v.Minor <= last {
		return "docker.io"
	}
	return "quay.io"
}

// Describe fills img's Part (calico), Component, Role and Optional from the catalog when
// the last element of its repository is a Calico component's name, with or without the
// operator's imagePrefix ("…/calico/node", "…/calico/myprefix-node"). ok is false for
// other images.
func Describe(img Image, prefix string) (Image, bool) {
	base := img.Ref.Base()
	for _, c := range components {
		if base == c.name || prefix != "" && base == prefix+c.name {
			img.Part, img.Component, img.Role, img.Optional = PartCalico, c.name, c.role, c.optional
			return img, true
		}
	}
	return img, false
}

// ComponentIn is the component that plays component's part in release v: the same one
// while v ships it, "calico" once v has folded it into the one image (v3.33 on). ok is
// false when v ships neither (e.g. the operator's csi in a manifest install).
func ComponentIn(component string, v Version, variant Variant) (string, bool) {
	for _, c := range components {
		if c.name != component {
			continue
		}
		if c.in(v, variant) {
			return c.name, true
		}
		if c.until != 0 && v.Minor > c.until {
			for _, one := range components {
				if one.name == "calico" && one.in(v, variant) {
					return one.name, true
				}
			}
		}
		return "", false
	}
	return "", false
}

// CompareVersions orders two releases written vMAJOR.MINOR.PATCH[-suffix], whether or not
// the catalog covers them: -1 if a is older, 0 if equal, +1 if newer. A pre-release sorts
// before its release. ok is false when either is not a version.
func CompareVersions(a, b string) (cmp int, ok bool) {
	ma, mb := versionRE.FindStringSubmatch(strings.TrimSpace(a)), versionRE.FindStringSubmatch(strings.TrimSpace(b))
	if ma == nil || mb == nil {
		return 0, false
	}
	for i := 1; i <= 3; i++ {
		x, _ := strconv.Atoi(ma[i])
		y, _ := strconv.Atoi(mb[i])
		if x != y {
			if x < y {
				return -1, true
			}
			return 1, true
		}
	}
	switch sa, sb := ma[4], mb[4]; {
	case sa == sb:
		return 0, true
	case sa == "":
		return 1, true
	case sb == "":
		return -1, true
	case sa < sb:
		return -1, true
	default:
		return 1, true
	}
}
