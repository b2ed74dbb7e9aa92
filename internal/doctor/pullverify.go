package doctor

import (
	"fmt"
	"slices"
	"strings"

	"github.com/distribution/reference"

	"github.com/precache/precache/internal/manifest"
)

// The kubelet's image pull credential verification (KEP-2535): feature gate
// KubeletEnsureSecretPulledImages, beta and on by default from Kubernetes 1.35, and the
// policies of k8s.io/kubelet/config/v1beta1.
const (
	ensureSecretPulledImages     = "KubeletEnsureSecretPulledImages"
	neverVerify                  = "NeverVerify"
	neverVerifyPreloadedImages   = "NeverVerifyPreloadedImages"
	neverVerifyAllowlistedImages = "NeverVerifyAllowlistedImages"
	alwaysVerify                 = "AlwaysVerify"
)

// PullVerification checks whether the kubelet would verify — pull from the registry, so
// resolve its name — images of the set that it did not pull itself: then an image
// precache keeps, or imports from a bundle with DNS down, is of no use to the kubelet.
func PullVerification(k Kubelet, set []manifest.Image, what string) Result {
	res := Result{Check: "kubelet-pull-verification"}
	policy := k.PullVerificationPolicy
	shown := policy
	if policy == "" {
		shown = neverVerifyPreloadedImages + " (the default)"
	}
	res.Evidence = append(res.Evidence, fmt.Sprintf("%s: imagePullCredentialsVerificationPolicy: %s", k.Where("imagePullCredentialsVerificationPolicy"), shown))
	if on, set := k.FeatureGates[ensureSecretPulledImages]; set && !on {
		res.Status = OK
		res.Summary = fmt.Sprintf("featureGates %s: false (%s): the kubelet uses images on the node as they are", ensureSecretPulledImages, k.Where(ensureSecretPulledImages))
		return res
	}
	// Pull records: MustAttemptImagePull in pkg/kubelet/images/pullmanager/image_pull_manager.go.
	records := "the kubelet spares an image it pulled itself without a pull secret while it keeps that pull's record " +
		"(/var/lib/kubelet/image_manager/pulled; records of images no longer on the node are pruned after its image GC runs); images precache pulled or imported have none"
	fix := fmt.Sprintf("in the kubelet config (Kubespray: kubelet_config_extra_args), set imagePullCredentialsVerificationPolicy: %s (the default), "+
		"or %s with preloadedImagesVerificationAllowlist covering these repositories (e.g. %s)",
		neverVerifyPreloadedImages, neverVerifyAllowlistedImages, suggestAllowlist(set))
	switch policy {
	case "", neverVerifyPreloadedImages, neverVerify:
		res.Status = OK
		res.Summary = fmt.Sprintf("%s: images pulled by something other than the kubelet (precache) are used as they are", strings.TrimSuffix(shown, " (the default)"))
		return res
	case alwaysVerify:
		res.Status = Fail
		res.Summary = fmt.Sprintf("imagePullCredentialsVerificationPolicy: %s (%s): the kubelet re-checks every image it did not pull itself with the registry, "+
			"which needs DNS: the images precache keeps do not start calico-node while DNS is down", alwaysVerify, k.Where("imagePullCredentialsVerificationPolicy"))
		for _, img := range set {
			res.Evidence = append(res.Evidence, "re-checked: "+img.Ref.Display())
		}
		res.Evidence = append(res.Evidence, records)
		res.Fix = fix
		return res
	case neverVerifyAllowlistedImages:
	default:
		res.Status = Warn
		res.Summary = fmt.Sprintf("unknown imagePullCredentialsVerificationPolicy %q (%s): the kubelet refuses to start with it", policy, k.Where("imagePullCredentialsVerificationPolicy"))
		return res
	}

	allow, invalid := parseAllowlist(k.PreloadedAllowlist)
	res.Evidence = append(res.Evidence, fmt.Sprintf("%s: preloadedImagesVerificationAllowlist: [%s]", k.Where("preloadedImagesVerificationAllowlist"), strings.Join(k.PreloadedAllowlist, ", ")))
	res.Evidence = append(res.Evidence, invalid...)
	if set == nil {
		res.Status, res.Summary = Skip, "no image set to compare with preloadedImagesVerificationAllowlist"
		return res
	}
	var uncovered []string
	for _, img := range set {
		full := img.Ref.Name
		short := full
		if named, err := reference.ParseNormalizedNamed(full); err == nil {
			short = reference.FamiliarName(named)
		}
		okFull, okShort := allow.matches(full), allow.matches(short)
		switch {
		case !okFull && !okShort:
			uncovered = append(uncovered, img.Ref.Display())
		case okFull != okShort:
			// The kubelet compares the pod's image field as written, without normalising it.
			as, other := full, short
			if okShort {
				as, other = short, full
			}
			res.Evidence = append(res.Evidence, fmt.Sprintf("%s is covered only as %s: a pod writing %s would be re-checked", img.Ref.Display(), as, other))
		}
	}
	if len(uncovered) > 0 {
		res.Status = Fail
		res.Summary = fmt.Sprintf("imagePullCredentialsVerificationPolicy: %s, and preloadedImagesVerificationAllowlist (%s) misses %d of the %d images of %s: "+
			"the kubelet re-checks them with the registry, which needs DNS", neverVerifyAllowlistedImages, k.Where("preloadedImagesVerificationAllowlist"), len(uncovered), len(set), what)
		for _, u := range uncovered {
			res.Evidence = append(res.Evidence, "not in the allowlist: "+u)
		}
		res.Evidence = append(res.Evidence, records)
		res.Fix = fix
		return res
	}
	res.Status = OK
	res.Summary = fmt.Sprintf("preloadedImagesVerificationAllowlist covers every image of %s", what)
	return res
}

// allowlist is preloadedImagesVerificationAllowlist as the kubelet reads it
// (pkg/kubelet/images/pullmanager/image_pull_policies.go): entries are repositories
// without tag or digest, matched exactly, or ending in "/*", matched as a prefix up to
// and including the "/".
type allowlist struct {
	exact    []string
	prefixes []string
}

func (a allowlist) matches(name string) bool {
	if slices.Contains(a.exact, name) {
		return true
	}
	for _, p := range a.prefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// parseAllowlist validates entries as the kubelet does; invalid ones make it refuse its
// config, and are reported.
func parseAllowlist(entries []string) (allowlist, []string) {
	var a allowlist
	var invalid []string
	for _, e := range entries {
		bad := func(why string) {
			invalid = append(invalid, fmt.Sprintf("the kubelet rejects the allowlist entry %q: %s", e, why))
		}
		if e != strings.TrimSpace(e) {
			bad("leading or trailing spaces")
			continue
		}
		p, wildcard := e, false
		if strings.HasSuffix(e, "/*") {
			p, wildcard = strings.TrimSuffix(e, "*"), true
		}
		switch {
		case p == "":
			bad("too short")
		case strings.Contains(p, "*"):
			bad("only a trailing /* is allowed")
		case wildcard && len(p) == 1:
			bad("at least a registry host is needed")
		case wildcard:
			a.prefixes = append(a.prefixes, p)
		default:
			ref, err := reference.Parse(p)
			if err != nil {
				bad(err.Error())
				continue
			}
			if _, tagged := ref.(reference.Tagged); tagged {
				bad("no tag or digest is accepted")
				continue
			}
			if _, digested := ref.(reference.Digested); digested {
				bad("no tag or digest is accepted")
				continue
			}
			a.exact = append(a.exact, p)
		}
	}
	return a, invalid
}

// suggestAllowlist names the set's repositories' parents as wildcards ("quay.io/calico/*").
func suggestAllowlist(set []manifest.Image) string {
	var out []string
	for _, img := range set {
		i := strings.LastIndex(img.Ref.Name, "/")
		if i < 0 {
			continue
		}
		out = appendNew(out, img.Ref.Name[:i]+"/*")
	}
	if len(out) == 0 {
		return "quay.io/calico/*"
	}
	return strings.Join(out, ", ")
}
