package doctor

import (
	"strings"
	"testing"

	"github.com/precache/precache/internal/hostfs"
	"github.com/precache/precache/internal/manifest"
)

func set(t *testing.T, refs ...string) []manifest.Image {
	t.Helper()
	var out []manifest.Image
	for _, s := range refs {
		r, err := manifest.ParseRef(s)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, manifest.Image{Ref: r})
	}
	return out
}

// The kubelet's image pull credential verification (KEP-2535) against the cached set. The
// kubelet config is Kubespray's (kubelet-config.v1beta1.yaml.j2, v2.31.0) with the
// verification settings added through kubelet_config_extra_args, which the template
// appends with to_nice_yaml (keys sorted).
func TestPullVerification(t *testing.T) {
	t.Parallel()
	quay := set(t, "quay.io/calico/node:v3.31.0", "quay.io/calico/cni:v3.31.0", "quay.io/calico/kube-controllers:v3.31.0")
	docker := set(t, "docker.io/calico/node:v3.30.2", "docker.io/calico/cni:v3.30.2")
	allowlisted := func(entries ...string) string {
		s := "imagePullCredentialsVerificationPolicy: NeverVerifyAllowlistedImages\npreloadedImagesVerificationAllowlist:\n"
		for _, e := range entries {
			s += "- " + e + "\n"
		}
		return s
	}
	tests := []struct {
		name     string
		extra    string
		set      []manifest.Image
		want     Status
		summary  string
		evidence []string
	}{
		{name: "default policy: NeverVerifyPreloadedImages", set: quay, want: OK, summary: "NeverVerifyPreloadedImages"},
		{name: "NeverVerify", extra: "imagePullCredentialsVerificationPolicy: NeverVerify\n", set: quay, want: OK},
		{name: "AlwaysVerify", extra: "imagePullCredentialsVerificationPolicy: AlwaysVerify\n", set: quay, want: Fail,
			summary:  "AlwaysVerify (/etc/kubernetes/kubelet-config.yaml:23)",
			evidence: []string{"re-checked: quay.io/calico/node:v3.31.0", "re-checked: quay.io/calico/kube-controllers:v3.31.0"}},
		{name: "AlwaysVerify with the feature gate disabled", extra: "featureGates:\n  KubeletEnsureSecretPulledImages: false\nimagePullCredentialsVerificationPolicy: AlwaysVerify\n",
			set: quay, want: OK, summary: "KubeletEnsureSecretPulledImages: false (/etc/kubernetes/kubelet-config.yaml:24)"},
		{name: "AlwaysVerify with the feature gate enabled", extra: "featureGates:\n  KubeletEnsureSecretPulledImages: true\nimagePullCredentialsVerificationPolicy: AlwaysVerify\n",
			set: quay, want: Fail},
		{name: "allowlist: a registry path wildcard covers the set", extra: allowlisted("quay.io/calico/*"), set: quay, want: OK},
		{name: "allowlist: a registry wildcard covers the set", extra: allowlisted("quay.io/*"), set: quay, want: OK},
		{name: "allowlist: exact repositories", extra: allowlisted("quay.io/calico/node", "quay.io/calico/cni", "quay.io/calico/kube-controllers"), set: quay, want: OK},
		{name: "allowlist misses two images", extra: allowlisted("quay.io/calico/node"), set: quay, want: Fail,
			summary:  "misses 2 of the 3 images of Calico v3.31.0",
			evidence: []string{"not in the allowlist: quay.io/calico/cni:v3.31.0", "not in the allowlist: quay.io/calico/kube-controllers:v3.31.0", "preloadedImagesVerificationAllowlist: [quay.io/calico/node]"}},
		{name: "allowlist: a repository without /* is exact, not a prefix", extra: allowlisted("quay.io/calico"), set: quay, want: Fail, summary: "misses 3 of the 3"},
		{name: "allowlist: /* matches whole path segments only", extra: allowlisted("quay.io/cal/*"), set: quay, want: Fail},
		{name: "allowlist: a tag is rejected by the kubelet and covers nothing", extra: allowlisted("quay.io/calico/node:v3.31.0", "quay.io/calico/cni", "quay.io/calico/kube-controllers"),
			set: quay, want: Fail, evidence: []string{`the kubelet rejects the allowlist entry "quay.io/calico/node:v3.31.0": no tag or digest is accepted`, "not in the allowlist: quay.io/calico/node:v3.31.0"}},
		{name: "allowlist: a wildcard elsewhere than the end is rejected", extra: allowlisted("quay.io/cal*"), set: quay, want: Fail,
			evidence: []string{"only a trailing /* is allowed"}},
		{name: "allowlist: docker.io names are compared as pods write them", extra: allowlisted("docker.io/calico/*"), set: docker, want: OK,
			evidence: []string{"docker.io/calico/node:v3.30.2 is covered only as docker.io/calico/node: a pod writing calico/node would be re-checked"}},
		{name: "allowlist and no set", extra: allowlisted("quay.io/calico/*"), want: Skip},
		{name: "unknown policy", extra: "imagePullCredentialsVerificationPolicy: Sometimes\n", set: quay, want: Warn},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			root := hostfs.Root(writeTree(t, map[string]string{"etc/kubernetes/kubelet-config.yaml": kubesprayKubelet("169.254.25.10", tt.extra)}))
			k, err := FindKubelet(root, "")
			if err != nil {
				t.Fatal(err)
			}
			got := PullVerification(k, tt.set, "Calico v3.31.0")
			if got.Status != tt.want || !strings.Contains(got.Summary, tt.summary) {
				t.Fatalf("%s, want %s with %q", show(got), tt.want, tt.summary)
			}
			for _, e := range tt.evidence {
				if !strings.Contains(strings.Join(got.Evidence, "\n"), e) {
					t.Errorf("evidence lacks %q:\n%s", e, show(got))
				}
			}
			if got.Status == Fail && !strings.Contains(got.Fix, "imagePullCredentialsVerificationPolicy: NeverVerifyPreloadedImages") {
				t.Errorf("fix %q", got.Fix)
			}
		})
	}
}
