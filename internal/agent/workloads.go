package agent

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/precache/precache/internal/cluster"
)

// workloadFacts are Calico's workloads besides calico-node — the calico-kube-controllers and
// calico-typha Deployments and the operator's csi-node-driver DaemonSet — as last read.
type workloadFacts struct {
	// key is what the read was made for (workloadsKey); readAt when.
	key    string
	readAt time.Time
	// read says the workloads were read: the snapshot is complete, and a workload that is
	// not among them does not run (a manifest install without calico-typha gets no typha).
	read      bool
	workloads []cluster.Workload
}

// withWorkloads adds the workloads besides calico-node to snap and marks it complete, so the
// set is what the cluster runs rather than the catalog's guess.
//
// They are read, not watched: a few GETs served from the API server's watch cache
// (resourceVersion=0) when a calico-node DaemonSet's spec changes (an upgrade: its
// generation), when this node's calico-node pod is replaced or changes its images (the
// rollout reaching the node, which is when old images are unpinned), and at each resync (a
// change of the Deployments alone, e.g. kube-controllers upgraded by itself, reaches the
// set within one resync). Three more watches per node would cost every cluster more than
// that, for objects that change once per upgrade.
//
// A read that fails keeps what was read before, and is tried again on the next such change
// or resync; with nothing read yet, the snapshot stays partial and the catalog stands in for
// the other components, as without the reads.
func (a *Agent) withWorkloads(ctx context.Context, snap *cluster.Snapshot) {
	if a.cfg.Clients.Kube == nil {
		return
	}
	key, namespaces := a.workloadsKey()
	a.mu.Lock()
	f := a.workloads
	a.mu.Unlock()
	if f == nil || f.key != key || a.due(f.readAt) {
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		next := &workloadFacts{key: key, readAt: time.Now()}
		ws, err := a.readWorkloads(rctx, namespaces)
		switch {
		case err == nil:
			next.read, next.workloads = true, ws
		case f != nil:
			next.read, next.workloads = f.read, f.workloads
			a.log.Warn("reading Calico's Deployments and csi-node-driver; keeping what was read before", zap.Error(err))
		default:
			a.log.Warn("reading Calico's Deployments and csi-node-driver; the catalog stands in for them until the next resync", zap.Error(err))
		}
		a.mu.Lock()
		a.workloads = next
		a.mu.Unlock()
		f = next
	}
	if f.read {
		snap.Workloads = append(snap.Workloads, f.workloads...)
		snap.Complete = true
	}
}

// due reports whether a read made at t is older than a resync period (less the timer's
// jitter, so each resync reads again).
func (a *Agent) due(t time.Time) bool {
	return time.Since(t) >= a.cfg.Resync-a.cfg.Resync/10
}

// workloadsKey names what the workloads were read for: each calico-node DaemonSet's spec
// (uid and generation) and this node's calico-node pods (uid and images); and the
// namespaces to read, those of the calico-node DaemonSets (all of Calico's when there is
// none yet: an operator install not rendered).
func (a *Agent) workloadsKey() (string, []string) {
	var parts, namespaces []string
	for _, l := range a.dsListers {
		for _, obj := range l.store.List() {
			if ds, ok := obj.(*appsv1.DaemonSet); ok {
				parts = append(parts, fmt.Sprintf("ds %s/%s %s %d", ds.Namespace, ds.Name, ds.UID, ds.Generation))
				if !slices.Contains(namespaces, ds.Namespace) {
					namespaces = append(namespaces, ds.Namespace)
				}
			}
		}
	}
	for _, l := range a.podListers {
		for _, obj := range l.store.List() {
			if p, ok := obj.(*corev1.Pod); ok {
				part := fmt.Sprintf("pod %s/%s %s", p.Namespace, p.Name, p.UID)
				for _, c := range append(append([]corev1.Container{}, p.Spec.InitContainers...), p.Spec.Containers...) {
					part += " " + c.Image
				}
				parts = append(parts, part)
			}
		}
	}
	if len(namespaces) == 0 {
		namespaces = cluster.Namespaces
	}
	slices.Sort(parts)
	return strings.Join(parts, "\n"), namespaces
}

// readWorkloads GETs the workloads cluster.Read reads besides calico-node, in namespaces.
// An absent one does not run.
func (a *Agent) readWorkloads(ctx context.Context, namespaces []string) ([]cluster.Workload, error) {
	apps := a.cfg.Clients.Kube.AppsV1()
	cached := metav1.GetOptions{ResourceVersion: "0"}
	var out []cluster.Workload
	for _, ns := range namespaces {
		for _, name := range []string{"calico-kube-controllers", "calico-typha"} {
			d, err := apps.Deployments(ns).Get(ctx, name, cached)
			switch {
			case err == nil:
				out = append(out, cluster.FromDeployment(d))
			case !apierrors.IsNotFound(err):
				return nil, fmt.Errorf("reading Deployment %s/%s: %w", ns, name, err)
			}
		}
		if ns != "calico-system" {
			continue
		}
		ds, err := apps.DaemonSets(ns).Get(ctx, "csi-node-driver", cached)
		switch {
		case err == nil:
			out = append(out, cluster.FromDaemonSet(ds))
		case !apierrors.IsNotFound(err):
			return nil, fmt.Errorf("reading DaemonSet %s/csi-node-driver: %w", ns, err)
		}
	}
	return out, nil
}
