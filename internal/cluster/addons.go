package cluster

import (
	"context"
	"fmt"
	"slices"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/precache/precache/internal/manifest"
)

// addonLookup says where the cluster keeps one part of the recovery set besides Calico:
// the names Kubespray, kubeadm and the upstream addons give the workload, then the k8s-app
// label the same manifests put on it, for clusters that name it otherwise.
type addonLookup struct {
	part      manifest.Part
	kind      string // "DaemonSet" or "Deployment"
	namespace string
	names     []string
	labels    []string // k8s-app values
}

// addonLookups, in the order of manifest.Parts. Shapes: kubeadm's kube-proxy DaemonSet
// (cmd/kubeadm/app/phases/addons/proxy/manifests.go: kube-system/kube-proxy, k8s-app:
// kube-proxy), Kubespray's nodelocaldns DaemonSet and the NodeLocal DNSCache addon's
// node-local-dns (pods labelled k8s-app: node-local-dns), Kubespray's and kubeadm's coredns
// Deployment (k8s-app: kube-dns; GKE's is named kube-dns), tigera-operator's Deployment.
var addonLookups = []addonLookup{
	{manifest.PartOperator, "Deployment", "tigera-operator", []string{"tigera-operator"}, []string{"tigera-operator"}},
	{manifest.PartKubeProxy, "DaemonSet", "kube-system", []string{"kube-proxy"}, []string{"kube-proxy"}},
	{manifest.PartNodeLocalDNS, "DaemonSet", "kube-system", []string{"nodelocaldns", "node-local-dns"}, []string{"node-local-dns"}},
	{manifest.PartCoreDNS, "Deployment", "kube-system", []string{"coredns", "kube-dns"}, []string{"kube-dns"}},
}

// Addon is a workload of the recovery set, other than Calico's, found in the cluster.
type Addon struct {
	Part manifest.Part
	Workload
	// FoundBy says how it was found: "its name", "label k8s-app=kube-dns".
	FoundBy string
}

// AddonSnapshot is what the API said about the recovery set's other workloads.
type AddonSnapshot struct {
	Addons []Addon
	// Looked are the parts looked for: a part looked for and not found is absent.
	Looked []manifest.Part
	// Notes are lookups that could not be made (a label LIST the RBAC does not grant).
	Notes []Fact
}

// ReadAddons looks for the workloads of the recovery set's parts other than Calico
// (tigera-operator, kube-proxy, node-local DNS, CoreDNS), those of parts only: a GET by
// each usual name until one is there, and when none is, a LIST by the usual k8s-app label. A missing
// workload is normal (the part is absent); a forbidden GET is an error, as for Calico's
// objects; a forbidden LIST is a note — precache's ServiceAccount reads these by name only.
func ReadAddons(ctx context.Context, c Clients, parts []manifest.Part) (AddonSnapshot, error) {
	var s AddonSnapshot
	for _, l := range addonLookups {
		if !manifest.HasPart(parts, l.part) {
			continue
		}
		s.Looked = append(s.Looked, l.part)
		found := false
		for _, name := range l.names {
			w, err := getWorkload(ctx, c, l.kind, l.namespace, name)
			if err := ignoreNotFound(err); err != nil {
				return s, fmt.Errorf("reading %s %s/%s: %w", l.kind, l.namespace, name, err)
			}
			if err == nil {
				s.Addons = append(s.Addons, Addon{Part: l.part, Workload: w, FoundBy: "its name"})
				found = true
				break // the first usual name found is the part's workload
			}
		}
		if found || len(l.labels) == 0 {
			continue
		}
		selector := "k8s-app in (" + strings.Join(l.labels, ",") + ")"
		ws, err := listWorkloads(ctx, c, l.kind, l.namespace, selector)
		switch {
		case apierrors.IsForbidden(err):
			s.Notes = append(s.Notes, Fact{string(l.part), "not looked up by label", fmt.Sprintf("listing %ss in %s by %s is forbidden (RBAC grants these by name)", l.kind, l.namespace, selector)})
			continue
		case err != nil:
			return s, fmt.Errorf("listing %ss in %s by %s: %w", l.kind, l.namespace, selector, err)
		}
		for _, w := range ws {
			s.Addons = append(s.Addons, Addon{Part: l.part, Workload: w, FoundBy: "label " + selector})
		}
	}
	return s, nil
}

// AddonWatch is what a watcher of the recovery set's other workloads follows: the
// workloads of kind in namespace, and, when Name is set, that one only.
type AddonWatch struct {
	Kind, Namespace, Name string
}

// AddonWatches are the watches that see every workload ReadAddons would find for parts:
// the whole of a namespace where a part has several usual names or a label to look by
// (kube-system's DaemonSets and Deployments), one object by name where it has one name
// and no label lookup is worth a watch of the namespace (tigera-operator's).
func AddonWatches(parts []manifest.Part) []AddonWatch {
	var out []AddonWatch
	for _, l := range addonLookups {
		if !manifest.HasPart(parts, l.part) {
			continue
		}
		w := AddonWatch{Kind: l.kind, Namespace: l.namespace}
		if l.namespace != "kube-system" && len(l.names) == 1 {
			w.Name = l.names[0]
		}
		if !slices.Contains(out, w) {
			out = append(out, w)
		}
	}
	return out
}

// PickAddons finds, among workloads listed or watched (AddonWatches), those of parts with
// ReadAddons' rules: the first usual name there is, else those labelled with the usual
// k8s-app. It reads nothing.
func PickAddons(parts []manifest.Part, ws []Workload) AddonSnapshot {
	var s AddonSnapshot
	for _, l := range addonLookups {
		if !manifest.HasPart(parts, l.part) {
			continue
		}
		s.Looked = append(s.Looked, l.part)
		found := false
		for _, name := range l.names {
			for _, w := range ws {
				if w.Kind == l.kind && w.Namespace == l.namespace && w.Name == name {
					s.Addons = append(s.Addons, Addon{Part: l.part, Workload: w, FoundBy: "its name"})
					found = true
					break
				}
			}
			if found {
				break
			}
		}
		if found {
			continue
		}
		for _, w := range ws {
			if w.Kind == l.kind && w.Namespace == l.namespace && slices.Contains(l.labels, w.Labels["k8s-app"]) {
				s.Addons = append(s.Addons, Addon{Part: l.part, Workload: w, FoundBy: "label k8s-app=" + w.Labels["k8s-app"]})
			}
		}
	}
	return s
}

func getWorkload(ctx context.Context, c Clients, kind, ns, name string) (Workload, error) {
	if kind == "DaemonSet" {
		ds, err := c.Kube.AppsV1().DaemonSets(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return Workload{}, err
		}
		return FromDaemonSet(ds), nil
	}
	d, err := c.Kube.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return Workload{}, err
	}
	return FromDeployment(d), nil
}

func listWorkloads(ctx context.Context, c Clients, kind, ns, selector string) ([]Workload, error) {
	var out []Workload
	opts := metav1.ListOptions{LabelSelector: selector}
	if kind == "DaemonSet" {
		list, err := c.Kube.AppsV1().DaemonSets(ns).List(ctx, opts)
		if err != nil {
			return nil, err
		}
		for i := range list.Items {
			out = append(out, FromDaemonSet(&list.Items[i]))
		}
		return out, nil
	}
	list, err := c.Kube.AppsV1().Deployments(ns).List(ctx, opts)
	if err != nil {
		return nil, err
	}
	for i := range list.Items {
		out = append(out, FromDeployment(&list.Items[i]))
	}
	return out, nil
}

// ResolveAddons turns the workloads found into the images of their parts, each with its
// source (the object and container), and says which parts are absent. An image reference
// that does not parse is an error naming the object: the set would silently miss it.
func ResolveAddons(s AddonSnapshot) ([]manifest.Image, []Fact, error) {
	var (
		images []manifest.Image
		facts  []Fact
	)
	found := map[manifest.Part]bool{}
	for _, a := range s.Addons {
		found[a.Part] = true
		facts = append(facts, Fact{string(a.Part), a.String(), "found by " + a.FoundBy})
		for _, c := range mainFirst(a.Containers) {
			kind := "container"
			if c.Init {
				kind = "initContainer"
			}
			img, err := manifest.FromSpec(c.Image, a.Part, c.Name, fmt.Sprintf("%s %s %s", a.Workload, kind, c.Name))
			if err != nil {
				return nil, nil, err
			}
			images = manifest.Merge(images, []manifest.Image{img})
		}
	}
	for _, l := range addonLookups {
		if !manifest.HasPart(s.Looked, l.part) || found[l.part] {
			continue
		}
		where := fmt.Sprintf("no %s %s/%s", l.kind, l.namespace, strings.Join(l.names, " or "))
		noted := false
		for _, n := range s.Notes {
			noted = noted || n.What == string(l.part)
		}
		if !noted && len(l.labels) > 0 {
			where += ", none labelled k8s-app=" + strings.Join(l.labels, " or ")
		}
		facts = append(facts, Fact{string(l.part), "absent", where})
	}
	facts = append(facts, s.Notes...)
	return images, facts, nil
}
