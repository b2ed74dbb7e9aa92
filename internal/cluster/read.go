package cluster

import (
	"context"
	"fmt"
	"strings"

	digest "github.com/opencontainers/go-digest"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
)

// The Calico objects discovery reads, beyond DaemonSets, Deployments and Pods.
var (
	ClusterInformationV1 = schema.GroupVersionResource{Group: "crd.projectcalico.org", Version: "v1", Resource: "clusterinformations"}
	ClusterInformationV3 = schema.GroupVersionResource{Group: "projectcalico.org", Version: "v3", Resource: "clusterinformations"}
	Installations        = schema.GroupVersionResource{Group: "operator.tigera.io", Version: "v1", Resource: "installations"}
	ImageSets            = schema.GroupVersionResource{Group: "operator.tigera.io", Version: "v1", Resource: "imagesets"}
)

// Namespaces where Calico's workloads live: manifests use kube-system, the operator calico-system.
var Namespaces = []string{"kube-system", "calico-system"}

// Clients are what Read needs.
type Clients struct {
	Kube    kubernetes.Interface
	Dynamic dynamic.Interface
}

// Read fills a Snapshot with GETs and LISTs restricted to the objects discovery needs.
// Missing objects and missing CRDs are normal (a manifest install has no Installation);
// a forbidden or failing read is an error. The snapshot is Complete: a workload that is
// not there does not run.
func Read(ctx context.Context, c Clients) (Snapshot, error) {
	s := Snapshot{Complete: true}
	for _, ns := range Namespaces {
		ds, err := c.Kube.AppsV1().DaemonSets(ns).Get(ctx, "calico-node", metav1.GetOptions{})
		if err := ignoreNotFound(err); err != nil {
			return s, fmt.Errorf("reading DaemonSet %s/calico-node: %w", ns, err)
		}
		if err == nil {
			s.Workloads = append(s.Workloads, FromDaemonSet(ds))
		}
		if ns == "calico-system" {
			csi, err := c.Kube.AppsV1().DaemonSets(ns).Get(ctx, "csi-node-driver", metav1.GetOptions{})
			if err := ignoreNotFound(err); err != nil {
				return s, fmt.Errorf("reading DaemonSet %s/csi-node-driver: %w", ns, err)
			}
			if err == nil {
				s.Workloads = append(s.Workloads, FromDaemonSet(csi))
			}
		}
		for _, name := range []string{"calico-kube-controllers", "calico-typha"} {
			dep, err := c.Kube.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
			if err := ignoreNotFound(err); err != nil {
				return s, fmt.Errorf("reading Deployment %s/%s: %w", ns, name, err)
			}
			if err == nil {
				s.Workloads = append(s.Workloads, FromDeployment(dep))
			}
		}
		pods, err := c.Kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "k8s-app=calico-node", Limit: 20})
		if err != nil {
			return s, fmt.Errorf("listing calico-node pods in %s: %w", ns, err)
		}
		for i := range pods.Items {
			s.Running = append(s.Running, FromPod(&pods.Items[i])...)
		}
	}
	op, err := c.Kube.AppsV1().Deployments("tigera-operator").Get(ctx, "tigera-operator", metav1.GetOptions{})
	if apierrors.IsForbidden(err) {
		// The operator's release is the last source of the version: a manifest install
		// has no tigera-operator namespace, and precache's overlay for it grants nothing
		// there.
		s.Unread = append(s.Unread, Fact{"tigera-operator", "not read", "reading Deployment tigera-operator/tigera-operator is forbidden"})
	} else if err := ignoreNotFound(err); err != nil {
		return s, fmt.Errorf("reading Deployment tigera-operator/tigera-operator: %w", err)
	}
	if err == nil && len(op.Spec.Template.Spec.Containers) > 0 {
		s.OperatorImage = op.Spec.Template.Spec.Containers[0].Image
	}
	for _, gvr := range []schema.GroupVersionResource{ClusterInformationV1, ClusterInformationV3} {
		u, err := c.Dynamic.Resource(gvr).Get(ctx, "default", metav1.GetOptions{})
		if err := ignoreNotFound(err); err != nil {
			return s, fmt.Errorf("reading %s default: %w", gvr.GroupResource(), err)
		}
		if err == nil {
			s.ClusterInfo = append(s.ClusterInfo, FromClusterInformation(u, gvr))
		}
	}
	inst, err := c.Dynamic.Resource(Installations).Get(ctx, "default", metav1.GetOptions{})
	if err := ignoreNotFound(err); err != nil {
		return s, fmt.Errorf("reading installations.operator.tigera.io default: %w", err)
	}
	if err == nil {
		s.Installation = FromInstallation(inst)
	}
	sets, err := c.Dynamic.Resource(ImageSets).List(ctx, metav1.ListOptions{})
	if err := ignoreNotFound(err); err != nil {
		return s, fmt.Errorf("listing imagesets.operator.tigera.io: %w", err)
	}
	if err == nil {
		for i := range sets.Items {
			s.ImageSets = append(s.ImageSets, FromImageSet(&sets.Items[i]))
		}
	}
	return s, nil
}

// ignoreNotFound treats an absent object, or an absent CRD, as nothing to read.
func ignoreNotFound(err error) error {
	if err == nil || apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// FromDaemonSet keeps what discovery needs of a DaemonSet.
func FromDaemonSet(ds *appsv1.DaemonSet) Workload {
	return Workload{Kind: "DaemonSet", Namespace: ds.Namespace, Name: ds.Name, Containers: containers(&ds.Spec.Template.Spec), Labels: ds.Labels}
}

// FromDeployment keeps what discovery needs of a Deployment.
func FromDeployment(d *appsv1.Deployment) Workload {
	return Workload{Kind: "Deployment", Namespace: d.Namespace, Name: d.Name, Containers: containers(&d.Spec.Template.Spec), Labels: d.Labels}
}

func containers(spec *corev1.PodSpec) []Container {
	var out []Container
	for _, c := range spec.InitContainers {
		out = append(out, Container{Name: c.Name, Image: c.Image, Init: true})
	}
	for _, c := range spec.Containers {
		out = append(out, Container{Name: c.Name, Image: c.Image})
	}
	return out
}

// FromPod lists the pulled images of a pod's containers.
func FromPod(p *corev1.Pod) []Running {
	var out []Running
	for _, st := range append(append([]corev1.ContainerStatus{}, p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...) {
		if st.ImageID == "" {
			continue
		}
		out = append(out, Running{Pod: p.Namespace + "/" + p.Name, Node: p.Spec.NodeName, Container: st.Name, Image: st.Image, ImageID: st.ImageID})
	}
	return out
}

// FromClusterInformation reads .spec.calicoVersion.
func FromClusterInformation(u *unstructured.Unstructured, gvr schema.GroupVersionResource) VersionFact {
	v, _, _ := unstructured.NestedString(u.Object, "spec", "calicoVersion")
	return VersionFact{Source: gvr.GroupResource().String() + "/" + gvr.Version + " default .spec.calicoVersion", Version: v}
}

// FromInstallation reads the operator Installation's status.
func FromInstallation(u *unstructured.Unstructured) *Installation {
	in := &Installation{}
	in.CalicoVersion, _, _ = unstructured.NestedString(u.Object, "status", "calicoVersion")
	in.Variant, _, _ = unstructured.NestedString(u.Object, "status", "variant")
	in.Registry, _, _ = unstructured.NestedString(u.Object, "status", "computed", "registry")
	in.ImagePath, _, _ = unstructured.NestedString(u.Object, "status", "computed", "imagePath")
	in.ImagePrefix, _, _ = unstructured.NestedString(u.Object, "status", "computed", "imagePrefix")
	in.ImageSet, _, _ = unstructured.NestedString(u.Object, "status", "imageSet")
	return in
}

// FromImageSet reads spec.images[].{image,digest}.
func FromImageSet(u *unstructured.Unstructured) ImageSet {
	is := ImageSet{Name: u.GetName(), Images: map[string]digest.Digest{}}
	list, _, _ := unstructured.NestedSlice(u.Object, "spec", "images")
	for _, item := range list {
		m, ok := item.(map[string]any)
		if !ok {
			continue
		}
		image, _ := m["image"].(string)
		dg, _ := m["digest"].(string)
		if image != "" && digest.Digest(dg).Validate() == nil {
			is.Images[strings.TrimPrefix(image, "/")] = digest.Digest(dg)
		}
	}
	return is
}
