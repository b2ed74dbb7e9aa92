package cluster

import (
	"errors"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/precache/precache/internal/manifest"
)

// The recovery set's other workloads as Kubespray (46dbdd39, 2026-08, Kubernetes 1.36
// defaults) and kubeadm create them:
//   - kube-proxy: kubeadm's DaemonSet (cmd/kubeadm/app/phases/addons/proxy/manifests.go at
//     v1.37.2), kube-system/kube-proxy, labels k8s-app: kube-proxy, one container kube-proxy;
//   - nodelocaldns: roles/kubernetes-apps/ansible/templates/nodelocaldns-daemonset.yml.j2,
//     kube-system/nodelocaldns, labelled k8s-app: kube-dns (its pods node-local-dns), one
//     container node-cache, nodelocaldns_image_repo registry.k8s.io/dns/k8s-dns-node-cache:1.25.0;
//   - CoreDNS: coredns-deployment.yml.j2, kube-system/coredns, labels k8s-app: kube-dns,
//     one container coredns, registry.k8s.io/coredns/coredns:v1.14.2.
const (
	kubeProxyImage = "registry.k8s.io/kube-proxy:v1.36.1"
	nodeCacheImage = "registry.k8s.io/dns/k8s-dns-node-cache:1.25.0"
	corednsImage   = "registry.k8s.io/coredns/coredns:v1.14.2"
	operatorImage  = "quay.io/tigera/operator:v1.38.3"
)

func kubesprayAddons() []Addon {
	return []Addon{
		{Part: manifest.PartKubeProxy, FoundBy: "its name", Workload: Workload{Kind: "DaemonSet", Namespace: "kube-system", Name: "kube-proxy",
			Containers: []Container{{Name: "kube-proxy", Image: kubeProxyImage}}}},
		{Part: manifest.PartNodeLocalDNS, FoundBy: "its name", Workload: Workload{Kind: "DaemonSet", Namespace: "kube-system", Name: "nodelocaldns",
			Containers: []Container{{Name: "node-cache", Image: nodeCacheImage}}}},
		{Part: manifest.PartCoreDNS, FoundBy: "its name", Workload: Workload{Kind: "Deployment", Namespace: "kube-system", Name: "coredns",
			Containers: []Container{{Name: "coredns", Image: corednsImage}}}},
	}
}

func TestResolveAddons(t *testing.T) {
	t.Parallel()
	all := []manifest.Part{manifest.PartOperator, manifest.PartKubeProxy, manifest.PartNodeLocalDNS, manifest.PartCoreDNS}
	tests := []struct {
		name    string
		snap    AddonSnapshot
		want    []string // "part ref source"
		absent  []string // parts reported absent
		wantErr string
	}{
		{
			name: "Kubespray's defaults: kube-proxy, nodelocaldns, CoreDNS; no operator on a manifest install",
			snap: AddonSnapshot{Addons: kubesprayAddons(), Looked: all},
			want: []string{
				"kube-proxy " + kubeProxyImage + " DaemonSet kube-system/kube-proxy container kube-proxy",
				"nodelocaldns " + nodeCacheImage + " DaemonSet kube-system/nodelocaldns container node-cache",
				"coredns " + corednsImage + " Deployment kube-system/coredns container coredns",
			},
			absent: []string{"operator"},
		},
		{
			name:   "enable_nodelocaldns: false, kube_proxy_remove (Cilium-style): only CoreDNS",
			snap:   AddonSnapshot{Addons: kubesprayAddons()[2:], Looked: all},
			want:   []string{"coredns " + corednsImage + " Deployment kube-system/coredns container coredns"},
			absent: []string{"operator", "kube-proxy", "nodelocaldns"},
		},
		{
			name: "an operator install: tigera-operator, by its name",
			snap: AddonSnapshot{Looked: all, Addons: []Addon{{Part: manifest.PartOperator, FoundBy: "its name", Workload: Workload{Kind: "Deployment", Namespace: "tigera-operator", Name: "tigera-operator",
				Containers: []Container{{Name: "tigera-operator", Image: operatorImage}}}}}},
			want:   []string{"operator " + operatorImage + " Deployment tigera-operator/tigera-operator container tigera-operator"},
			absent: []string{"kube-proxy", "nodelocaldns", "coredns"},
		},
		{
			name: "a digest in the spec: pulled by it; init containers after main containers, once each",
			snap: AddonSnapshot{Looked: []manifest.Part{manifest.PartCoreDNS}, Addons: []Addon{{Part: manifest.PartCoreDNS, FoundBy: "label k8s-app in (kube-dns)", Workload: Workload{Kind: "Deployment", Namespace: "kube-system", Name: "rke2-coredns-rke2-coredns",
				Containers: []Container{{Name: "wait", Image: corednsImage, Init: true}, {Name: "coredns", Image: corednsImage + "@sha256:" + strings.Repeat("ab", 32)}}}}}},
			want: []string{
				"coredns " + corednsImage + "@sha256:" + strings.Repeat("ab", 32) + " Deployment kube-system/rke2-coredns-rke2-coredns container coredns",
				"coredns " + corednsImage + " Deployment kube-system/rke2-coredns-rke2-coredns initContainer wait",
			},
		},
		{
			name:   "only some parts looked for: the others are not reported",
			snap:   AddonSnapshot{Looked: []manifest.Part{manifest.PartKubeProxy}},
			absent: []string{"kube-proxy"},
		},
		{
			name: "an image reference that does not parse: an error naming the object",
			snap: AddonSnapshot{Looked: all, Addons: []Addon{{Part: manifest.PartKubeProxy, Workload: Workload{Kind: "DaemonSet", Namespace: "kube-system", Name: "kube-proxy",
				Containers: []Container{{Name: "kube-proxy", Image: "registry.k8s.io/Kube-Proxy:v1.36.1"}}}}}},
			wantErr: "DaemonSet kube-system/kube-proxy container kube-proxy: invalid image reference",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			images, facts, err := ResolveAddons(tt.snap)
			if tt.wantErr != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, img := range images {
				got = append(got, string(img.Part)+" "+img.Ref.String()+" "+img.Source)
				if img.Role != img.Part.Role() || img.Component == "" {
					t.Errorf("%s: role %q component %q", img.Ref, img.Role, img.Component)
				}
				if img.ByDigest != (img.Ref.Digest != "") {
					t.Errorf("%s: byDigest %t", img.Ref, img.ByDigest)
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("images\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
			var absent []string
			for _, f := range facts {
				if f.Value == "absent" {
					absent = append(absent, f.What)
				}
			}
			if !slices.Equal(absent, tt.absent) {
				t.Errorf("absent %v, want %v (facts %+v)", absent, tt.absent, facts)
			}
		})
	}
}

func ds(ns, name string, labels map[string]string, image string) *appsv1.DaemonSet {
	return &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: appsv1.DaemonSetSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: name, Image: image}}}}}}
}

func deploy(ns, name string, labels map[string]string, image string) *appsv1.Deployment {
	return &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: appsv1.DeploymentSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: name, Image: image}}}}}}
}

func TestReadAddons(t *testing.T) {
	t.Parallel()
	all := []manifest.Part{manifest.PartOperator, manifest.PartKubeProxy, manifest.PartNodeLocalDNS, manifest.PartCoreDNS}
	kubespray := []runtime.Object{
		ds("kube-system", "kube-proxy", map[string]string{"k8s-app": "kube-proxy"}, kubeProxyImage),
		ds("kube-system", "nodelocaldns", map[string]string{"k8s-app": "kube-dns"}, nodeCacheImage),
		deploy("kube-system", "coredns", map[string]string{"k8s-app": "kube-dns"}, corednsImage),
	}
	found := func(s AddonSnapshot) []string {
		var out []string
		for _, a := range s.Addons {
			out = append(out, string(a.Part)+" "+a.String()+" by "+a.FoundBy)
		}
		return out
	}
	t.Run("Kubespray: by name, no LIST", func(t *testing.T) {
		t.Parallel()
		kube := fake.NewClientset(kubespray...)
		s, err := ReadAddons(t.Context(), Clients{Kube: kube}, all[1:])
		if err != nil {
			t.Fatal(err)
		}
		want := []string{"kube-proxy DaemonSet kube-system/kube-proxy by its name", "nodelocaldns DaemonSet kube-system/nodelocaldns by its name", "coredns Deployment kube-system/coredns by its name"}
		if got := found(s); !slices.Equal(got, want) {
			t.Fatalf("found %v, want %v", got, want)
		}
		for _, a := range kube.Actions() {
			if a.GetVerb() != "get" {
				t.Errorf("%s %s: with every workload where its name says, only GETs are made", a.GetVerb(), a.GetResource().Resource)
			}
		}
		if n := len(kube.Actions()); n != 3 {
			t.Errorf("%d requests, want 3: one GET per part, the first usual name found ends the lookup", n)
		}
	})
	t.Run("other names: by the k8s-app label", func(t *testing.T) {
		t.Parallel()
		kube := fake.NewClientset(
			deploy("kube-system", "rke2-coredns-rke2-coredns", map[string]string{"k8s-app": "kube-dns"}, corednsImage),
			ds("kube-system", "node-local-dns", map[string]string{"k8s-app": "node-local-dns"}, nodeCacheImage),
			ds("kube-system", "some-agent", map[string]string{"k8s-app": "some-agent"}, "example.com/agent:1"),
		)
		s, err := ReadAddons(t.Context(), Clients{Kube: kube}, all)
		if err != nil {
			t.Fatal(err)
		}
		want := []string{"nodelocaldns DaemonSet kube-system/node-local-dns by its name", "coredns Deployment kube-system/rke2-coredns-rke2-coredns by label k8s-app in (kube-dns)"}
		if got := found(s); !slices.Equal(got, want) {
			t.Fatalf("found %v, want %v", got, want)
		}
		_, facts, err := ResolveAddons(s)
		if err != nil {
			t.Fatal(err)
		}
		var absent []string
		for _, f := range facts {
			if f.Value == "absent" {
				absent = append(absent, f.What+": "+f.Source)
			}
		}
		wantAbsent := []string{
			"operator: no Deployment tigera-operator/tigera-operator, none labelled k8s-app=tigera-operator",
			"kube-proxy: no DaemonSet kube-system/kube-proxy, none labelled k8s-app=kube-proxy",
		}
		if !slices.Equal(absent, wantAbsent) {
			t.Errorf("absent %q\nwant %q", absent, wantAbsent)
		}
	})
	t.Run("a LIST the RBAC forbids is a note; a forbidden GET an error", func(t *testing.T) {
		t.Parallel()
		kube := fake.NewClientset()
		kube.PrependReactor("list", "*", func(a k8stesting.Action) (bool, runtime.Object, error) {
			return true, nil, apierrors.NewForbidden(schema.GroupResource{Group: "apps", Resource: a.GetResource().Resource}, "", errors.New("RBAC"))
		})
		s, err := ReadAddons(t.Context(), Clients{Kube: kube}, []manifest.Part{manifest.PartCoreDNS})
		if err != nil {
			t.Fatal(err)
		}
		_, facts, _ := ResolveAddons(s)
		if len(facts) != 2 || facts[0].Source != "no Deployment kube-system/coredns or kube-dns" || facts[1].Value != "not looked up by label" {
			t.Errorf("facts %+v", facts)
		}
		kube.PrependReactor("get", "daemonsets", func(a k8stesting.Action) (bool, runtime.Object, error) {
			return true, nil, apierrors.NewForbidden(schema.GroupResource{Group: "apps", Resource: "daemonsets"}, "kube-proxy", errors.New("RBAC"))
		})
		_, err = ReadAddons(t.Context(), Clients{Kube: kube}, []manifest.Part{manifest.PartKubeProxy})
		if err == nil || !strings.HasPrefix(err.Error(), "reading DaemonSet kube-system/kube-proxy: ") || !apierrors.IsForbidden(err) {
			t.Errorf("forbidden GET: %v", err)
		}
	})
	t.Run("parts not asked for are not read", func(t *testing.T) {
		t.Parallel()
		kube := fake.NewClientset(kubespray...)
		s, err := ReadAddons(t.Context(), Clients{Kube: kube}, []manifest.Part{manifest.PartCalico, manifest.PartSandbox})
		if err != nil || len(s.Addons) != 0 || len(kube.Actions()) != 0 {
			t.Fatalf("%+v, %v, %d requests", s, err, len(kube.Actions()))
		}
	})
}

// PickAddons finds in watched objects what ReadAddons finds with GETs and LISTs: the first
// usual name, else the usual k8s-app label; other kinds and namespaces do not count.
func TestPickAddons(t *testing.T) {
	t.Parallel()
	all := []manifest.Part{manifest.PartOperator, manifest.PartKubeProxy, manifest.PartNodeLocalDNS, manifest.PartCoreDNS}
	kubespray := func() []Workload {
		var ws []Workload
		for _, a := range kubesprayAddons() {
			ws = append(ws, a.Workload)
		}
		// What else a Kubespray kube-system holds: Calico's own workloads, and the
		// nodelocaldns DaemonSet labelled k8s-app: kube-dns as its template renders it.
		ws[1].Labels = map[string]string{"k8s-app": "kube-dns"}
		return append(ws,
			Workload{Kind: "DaemonSet", Namespace: "kube-system", Name: "calico-node", Labels: map[string]string{"k8s-app": "calico-node"}},
			Workload{Kind: "Deployment", Namespace: "kube-system", Name: "calico-kube-controllers", Labels: map[string]string{"k8s-app": "calico-kube-controllers"}})
	}
	tests := []struct {
		name  string
		parts []manifest.Part
		ws    []Workload
		want  []string // "part kind ns/name found-by"
	}{
		{"Kubespray: by name", all, kubespray(), []string{
			"kube-proxy DaemonSet kube-system/kube-proxy its name",
			"nodelocaldns DaemonSet kube-system/nodelocaldns its name",
			"coredns Deployment kube-system/coredns its name"}},
		{"--only narrows", []manifest.Part{manifest.PartCoreDNS}, kubespray(), []string{
			"coredns Deployment kube-system/coredns its name"}},
		{"named otherwise: by label; a DaemonSet labelled kube-dns is not CoreDNS", all, []Workload{
			{Kind: "DaemonSet", Namespace: "kube-system", Name: "proxy", Labels: map[string]string{"k8s-app": "kube-proxy"}},
			{Kind: "DaemonSet", Namespace: "kube-system", Name: "nodelocaldns", Labels: map[string]string{"k8s-app": "kube-dns"}},
			{Kind: "Deployment", Namespace: "kube-system", Name: "dns", Labels: map[string]string{"k8s-app": "kube-dns"}},
		}, []string{
			"kube-proxy DaemonSet kube-system/proxy label k8s-app=kube-proxy",
			"nodelocaldns DaemonSet kube-system/nodelocaldns its name",
			"coredns Deployment kube-system/dns label k8s-app=kube-dns"}},
		{"the first usual name wins over a label", all, []Workload{
			{Kind: "Deployment", Namespace: "kube-system", Name: "kube-dns", Labels: map[string]string{"k8s-app": "kube-dns"}},
			{Kind: "Deployment", Namespace: "kube-system", Name: "coredns", Labels: map[string]string{"k8s-app": "kube-dns"}},
		}, []string{"coredns Deployment kube-system/coredns its name"}},
		{"another namespace does not count", all, []Workload{
			{Kind: "DaemonSet", Namespace: "default", Name: "kube-proxy"},
			{Kind: "Deployment", Namespace: "tigera-operator", Name: "tigera-operator"},
		}, []string{"operator Deployment tigera-operator/tigera-operator its name"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := PickAddons(tt.parts, tt.ws)
			var got []string
			for _, a := range s.Addons {
				got = append(got, string(a.Part)+" "+a.Workload.String()+" "+a.FoundBy)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("got\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(tt.want, "\n  "))
			}
			for _, p := range tt.parts {
				if !slices.Contains(s.Looked, p) && p != manifest.PartCalico {
					t.Errorf("%s not looked for", p)
				}
			}
		})
	}
}

func TestAddonWatches(t *testing.T) {
	t.Parallel()
	got := AddonWatches(manifest.Parts)
	want := []AddonWatch{
		{Kind: "Deployment", Namespace: "tigera-operator", Name: "tigera-operator"},
		{Kind: "DaemonSet", Namespace: "kube-system"},
		{Kind: "Deployment", Namespace: "kube-system"},
	}
	if !slices.Equal(got, want) {
		t.Errorf("AddonWatches(all) = %v, want %v", got, want)
	}
	if got := AddonWatches([]manifest.Part{manifest.PartCalico, manifest.PartSandbox}); len(got) != 0 {
		t.Errorf("no workload part, yet watches %v", got)
	}
	if got := AddonWatches([]manifest.Part{manifest.PartKubeProxy, manifest.PartNodeLocalDNS}); !slices.Equal(got, []AddonWatch{{Kind: "DaemonSet", Namespace: "kube-system"}}) {
		t.Errorf("kube-proxy and nodelocaldns share one watch; got %v", got)
	}
}

// TestReadOperatorForbidden: precache's Kubespray overlay grants nothing in the
// tigera-operator namespace (a manifest install has none); Read does without the
// operator's release and says it was not read, where other forbidden reads stay errors.
func TestReadOperatorForbidden(t *testing.T) {
	t.Parallel()
	forbid := func(resource, ns string) *fake.Clientset {
		kube := fake.NewClientset(ds("kube-system", "calico-node", nil, "docker.io/calico/node:v3.30.2"))
		kube.PrependReactor("get", resource, func(a k8stesting.Action) (bool, runtime.Object, error) {
			if a.GetNamespace() != ns {
				return false, nil, nil
			}
			return true, nil, apierrors.NewForbidden(schema.GroupResource{Group: "apps", Resource: resource}, "x", errors.New("RBAC"))
		})
		return kube
	}
	s, err := Read(t.Context(), Clients{Kube: forbid("deployments", "tigera-operator"), Dynamic: newDynamic()})
	if err != nil {
		t.Fatalf("Read with tigera-operator forbidden: %v", err)
	}
	if len(s.Unread) != 1 || !strings.Contains(s.Unread[0].Source, "tigera-operator/tigera-operator is forbidden") {
		t.Errorf("Unread = %v", s.Unread)
	}
	d, err := Resolve(s)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(d.Facts, func(f Fact) bool { return f.What == "tigera-operator" && f.Value == "not read" }) {
		t.Errorf("the unread operator is not among the facts: %v", d.Facts)
	}
	if _, err := Read(t.Context(), Clients{Kube: forbid("deployments", "kube-system"), Dynamic: newDynamic()}); !apierrors.IsForbidden(err) {
		t.Errorf("a forbidden read of Calico's Deployments: %v, want that error", err)
	}
}

// newDynamic is an API without Calico's or the operator's CRD objects.
func newDynamic() *dynamicfake.FakeDynamicClient {
	return dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{
		ImageSets: "ImageSetList", Installations: "InstallationList",
		ClusterInformationV1: "ClusterInformationList", ClusterInformationV3: "ClusterInformationList",
	})
}
