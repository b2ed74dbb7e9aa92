package agent

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"
	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"

	pcache "github.com/precache/precache/internal/cache"
	"github.com/precache/precache/internal/cluster"
	"github.com/precache/precache/internal/hostfs"
	"github.com/precache/precache/internal/manifest"
	"github.com/precache/precache/internal/nodefiles"
)

// The recovery set besides Calico: the cluster's kube-proxy, node-local DNS, CoreDNS and
// tigera-operator, watched (cluster.AddonWatches: kube-system's DaemonSets and Deployments,
// the operator's Deployment by name) so that a new image is pre-pulled and pinned as soon
// as the workload's spec names it, before its rollout reaches the node; and the node's
// static pods and sandbox image, read from the node's files at each reconcile.

// parts are the parts of the recovery set the agent keeps (every part by default).
func (a *Agent) parts() []manifest.Part {
	if len(a.cfg.Parts) == 0 {
		return manifest.Parts
	}
	return a.cfg.Parts
}

func (a *Agent) wants(p manifest.Part) bool { return manifest.HasPart(a.parts(), p) }

// addonInformers sets up the watches of the recovery set's other workloads. A watch the
// ServiceAccount may not make (an overlay without the tigera-operator namespace's Role) is
// left out with a warning, rather than an informer that never syncs: its part is then not
// kept by the agent.
func (a *Agent) addonInformers(ctx context.Context, onChange cache.ResourceEventHandler) ([]informers.SharedInformerFactory, error) {
	var factories []informers.SharedInformerFactory
	for _, w := range cluster.AddonWatches(a.parts()) {
		tweak := func(o *metav1.ListOptions) {
			if w.Name != "" {
				o.FieldSelector = fields.OneTermEqualSelector("metadata.name", w.Name).String()
			}
		}
		if err := a.mayWatch(ctx, w, tweak); err != nil {
			a.log.Warn("not watched; the part it holds is not kept by the agent", zap.String("kind", w.Kind), zap.String("namespace", w.Namespace), zap.String("name", w.Name), zap.Error(err))
			continue
		}
		opts := []informers.SharedInformerOption{informers.WithNamespace(w.Namespace), informers.WithTweakListOptions(tweak)}
		f := informers.NewSharedInformerFactoryWithOptions(a.cfg.Clients.Kube, 0, opts...)
		var inf cache.SharedIndexInformer
		switch w.Kind {
		case "DaemonSet":
			inf = f.Apps().V1().DaemonSets().Informer()
		case "Deployment":
			inf = f.Apps().V1().Deployments().Informer()
		default:
			return nil, fmt.Errorf("no watch for %s", w.Kind)
		}
		_ = inf.SetTransform(strip)
		if _, err := inf.AddEventHandler(onChange); err != nil {
			return nil, err
		}
		a.addonStores = append(a.addonStores, inf.GetStore())
		factories = append(factories, f)
	}
	return factories, nil
}

// mayWatch lists one object of w, as the informer would list them: Forbidden, three times
// over two seconds (RBAC applied with the DaemonSet may take a moment to be enforced),
// says the watch would never sync.
func (a *Agent) mayWatch(ctx context.Context, w cluster.AddonWatch, tweak func(*metav1.ListOptions)) error {
	o := metav1.ListOptions{Limit: 1, ResourceVersion: "0"}
	tweak(&o)
	apps := a.cfg.Clients.Kube.AppsV1()
	var err error
	for try := 0; try < 3; try++ {
		if try > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(time.Second):
			}
		}
		switch w.Kind {
		case "DaemonSet":
			_, err = apps.DaemonSets(w.Namespace).List(ctx, o)
		default:
			_, err = apps.Deployments(w.Namespace).List(ctx, o)
		}
		if !apierrors.IsForbidden(err) {
			return nil // anything else is the informer's to retry
		}
	}
	return err
}

// addonFacts are the recovery set's other workloads as the watches see them.
type addonFacts struct {
	images []manifest.Image
	// rolledOut says, per part, whether each of its workloads has finished rolling out:
	// every pod, this node's among them, runs the spec's images.
	rolledOut map[manifest.Part]bool
}

// addons reads the watches' caches: no API call. A reference that does not parse is an
// error naming the object.
func (a *Agent) addons() (addonFacts, error) {
	var (
		ws   []cluster.Workload
		done = map[string]bool{}
	)
	for _, s := range a.addonStores {
		for _, obj := range s.List() {
			switch o := obj.(type) {
			case *appsv1.DaemonSet:
				w := cluster.FromDaemonSet(o)
				ws = append(ws, w)
				done[w.String()] = daemonSetRolledOut(o)
			case *appsv1.Deployment:
				w := cluster.FromDeployment(o)
				ws = append(ws, w)
				done[w.String()] = deploymentRolledOut(o)
			}
		}
	}
	snap := cluster.PickAddons(a.parts(), ws)
	images, _, err := cluster.ResolveAddons(snap)
	if err != nil {
		return addonFacts{}, err
	}
	f := addonFacts{images: images, rolledOut: map[manifest.Part]bool{}}
	for _, ad := range snap.Addons {
		prev, seen := f.rolledOut[ad.Part]
		f.rolledOut[ad.Part] = done[ad.Workload.String()] && (prev || !seen)
	}
	return f, nil
}

// daemonSetRolledOut is `kubectl rollout status`'s test for a DaemonSet: the controller
// has seen the spec, and every node it schedules on runs an updated, available pod.
func daemonSetRolledOut(ds *appsv1.DaemonSet) bool {
	st := ds.Status
	return st.ObservedGeneration >= ds.Generation &&
		st.UpdatedNumberScheduled >= st.DesiredNumberScheduled &&
		st.NumberAvailable >= st.DesiredNumberScheduled
}

// deploymentRolledOut is `kubectl rollout status`'s test for a Deployment: the controller
// has seen the spec, every replica is updated and available, and no old one is left.
func deploymentRolledOut(d *appsv1.Deployment) bool {
	st := d.Status
	want := int32(1)
	if d.Spec.Replicas != nil {
		want = *d.Spec.Replicas
	}
	return st.ObservedGeneration >= d.Generation &&
		st.UpdatedReplicas >= want &&
		st.Replicas <= st.UpdatedReplicas &&
		st.AvailableReplicas >= st.UpdatedReplicas
}

// nodeFiles reads the node's part of the recovery set (static pods, the sandbox image)
// under Root. A file that cannot be used is logged once, and the rest of the set is kept.
func (a *Agent) nodeFiles() ([]manifest.Image, error) {
	if a.cfg.Root == "" || !manifest.AnyFromNode(a.parts()) {
		return nil, nil
	}
	f, err := nodefiles.Read(hostfs.Root(a.cfg.Root), nodefiles.Options{
		KubeletConfig: a.cfg.KubeletConfig, ContainerdConfig: a.cfg.ContainerdConfig, Parts: a.parts(),
	})
	if err != nil {
		return nil, fmt.Errorf("reading the node's files under %s: %w", a.cfg.Root, err)
	}
	var warnings []string
	for _, w := range f.Warnings {
		warnings = append(warnings, w.Error())
	}
	a.mu.Lock()
	changed := !slices.Equal(warnings, a.nodeWarnings)
	a.nodeWarnings = warnings
	a.mu.Unlock()
	if changed {
		for _, w := range f.Warnings {
			a.log.Warn("node file not used; the rest of the set is kept", zap.String("file", w.File), zap.Error(w.Err))
		}
	}
	return f.Images, nil
}

// settled says, for a part, whether images of it that are no longer wanted may be
// unpinned: Calico once this node's calico-node runs the version wanted; the cluster's
// other workloads once their rollout is done (this node's pod, and every other, runs the
// new image); the node's static pods and sandbox at once, since the files on disk are what
// the kubelet and containerd start from; images of no part (the agent's own, --image) at
// once.
func (a *Agent) settled(d *cluster.Discovery, results []pcache.Result, addons addonFacts) func(manifest.Part) bool {
	running := a.runningNode()
	calico := d == nil || runsWanted(running, d, results)
	logged := map[manifest.Part]bool{}
	return func(p manifest.Part) bool {
		ok := true
		switch {
		case p == manifest.PartCalico:
			ok = calico
			if !ok && !logged[p] {
				a.log.Info("keeping the previous version pinned until calico-node runs the new one", zap.String("running", running.String()), zap.String("wanted", d.Version))
			}
		case p != "" && !p.FromNode(): // the cluster's other workloads
			done, found := addons.rolledOut[p]
			ok = done || !found
			if !ok && !logged[p] {
				a.log.Info("keeping the previous image pinned until the rollout is done", zap.String("part", string(p)))
			}
		}
		logged[p] = true
		return ok
	}
}

// describeSet is the set for the recovered Event: "7 images of the recovery set (Calico
// v3.30.3, kube-proxy, nodelocaldns, …)".
func describeSet(n int, d *cluster.Discovery, want []manifest.Image) string {
	var parts []string
	for _, img := range want {
		p := string(img.Part)
		if img.Part == manifest.PartCalico && d != nil {
			p = "Calico " + d.Version
		}
		if p != "" && !slices.Contains(parts, p) {
			parts = append(parts, p)
		}
	}
	return fmt.Sprintf("%d images of the recovery set (%s)", n, strings.Join(parts, ", "))
}
