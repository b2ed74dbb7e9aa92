package manifest

import (
	"slices"
	"strings"
	"testing"
)

func TestParseParts(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		in      []string
		want    []Part
		wantErr string
	}{
		{name: "none is every part", in: nil, want: Parts},
		{name: "all", in: []string{"all"}, want: Parts},
		{name: "one", in: []string{"calico"}, want: []Part{PartCalico}},
		{name: "comma list, repeated flag, spaces and case", in: []string{"Calico, kube-proxy", "sandbox,calico"}, want: []Part{PartCalico, PartKubeProxy, PartSandbox}},
		{name: "unknown", in: []string{"calico,dns"}, wantErr: `unknown part of the recovery set "dns": use calico, operator, kube-proxy, nodelocaldns, coredns, apiserver-proxy, control-plane, sandbox (or all)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := ParseParts(tt.in)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || !slices.Equal(got, tt.want) {
				t.Fatalf("ParseParts(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestPartsHaveRoles(t *testing.T) {
	t.Parallel()
	for _, p := range Parts {
		if p.Role() == "" {
			t.Errorf("part %s has no role", p)
		}
	}
}

func TestOnlyAndMerge(t *testing.T) {
	t.Parallel()
	img := func(ref string, part Part) Image { return Image{Ref: MustParseRef(ref), Part: part} }
	calico := []Image{img("docker.io/calico/node:v3.30.2", PartCalico), img("docker.io/calico/cni:v3.30.2", PartCalico)}
	others := []Image{
		img("registry.k8s.io/kube-proxy:v1.36.1", PartKubeProxy),
		img("docker.io/calico/node:v3.30.2", PartControlPlane), // already in the set: the first part keeps it
		img("registry.k8s.io/pause:3.10.2", PartSandbox),
	}
	extra := []Image{img("docker.io/library/busybox:1.37", "")}
	set := Merge(calico, others, extra)
	if got := strings.Join(Names(set), " "); got != "docker.io/calico/cni:v3.30.2 docker.io/calico/node:v3.30.2 docker.io/library/busybox:1.37 registry.k8s.io/kube-proxy:v1.36.1 registry.k8s.io/pause:3.10.2" {
		t.Fatalf("Merge: %s", got)
	}
	if set[0].Part != PartCalico || len(set) != 5 {
		t.Fatalf("Merge kept %+v", set)
	}
	only := Only(set, []Part{PartSandbox})
	if got := strings.Join(Names(only), " "); got != "docker.io/library/busybox:1.37 registry.k8s.io/pause:3.10.2" {
		t.Fatalf("Only(sandbox) = %s; want the sandbox and the image asked for by name", got)
	}
}

func TestFromSpec(t *testing.T) {
	t.Parallel()
	img, err := FromSpec("registry.k8s.io/kube-proxy:v1.36.1", PartKubeProxy, "kube-proxy", "DaemonSet kube-system/kube-proxy container kube-proxy")
	if err != nil {
		t.Fatal(err)
	}
	if img.Ref.String() != "registry.k8s.io/kube-proxy:v1.36.1" || img.Part != PartKubeProxy || img.Role != PartKubeProxy.Role() || img.ByDigest {
		t.Fatalf("%+v", img)
	}
	d := testDigest.String()
	img, err = FromSpec("nginx:1.30.1-alpine@"+d, PartAPIServerProxy, "nginx-proxy", "/etc/kubernetes/manifests/nginx-proxy.yml:18")
	if err != nil {
		t.Fatal(err)
	}
	if img.Ref.String() != "docker.io/library/nginx:1.30.1-alpine@"+d || !img.ByDigest || img.DigestSource != img.Source {
		t.Fatalf("a reference with a digest is pulled by it: %+v", img)
	}
	_, err = FromSpec("nginx:Bad Tag", PartAPIServerProxy, "nginx-proxy", "/etc/kubernetes/manifests/nginx-proxy.yml:18")
	if err == nil || !strings.HasPrefix(err.Error(), "/etc/kubernetes/manifests/nginx-proxy.yml:18: invalid image reference") {
		t.Fatalf("error %v, want one naming the file and line", err)
	}
}
