package agent

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/precache/precache/internal/cluster"
	"github.com/precache/precache/internal/manifest"
)

// operatorFacts is what versions digest-only references, read for one set of workload
// images.
type operatorFacts struct {
	key          string
	installation *cluster.Installation
	imageSets    []cluster.ImageSet
}

// withOperatorFacts adds the tigera-operator's Installation "default" and its ImageSets to
// snap when a watched workload names an image by digest only: with an ImageSet the operator
// renders "quay.io/calico/node@sha256:…" with no tag, and only those objects say which
// release that is. They are read (two requests, served from the API server's watch cache)
// once per set of workload images — an upgrade — not on every reconcile, and not watched:
// most clusters never need them, and a watch per node on every cluster would cost more than
// a read per node per upgrade.
func (a *Agent) withOperatorFacts(ctx context.Context, snap *cluster.Snapshot) error {
	key := digestOnlyKey(snap)
	if key == "" || a.cfg.Clients.Dynamic == nil {
		return nil
	}
	a.mu.Lock()
	f := a.operator
	a.mu.Unlock()
	if f == nil || f.key != key {
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		var err error
		if f, err = a.readOperatorFacts(rctx, key); err != nil {
			return err
		}
		a.mu.Lock()
		a.operator = f
		a.mu.Unlock()
	}
	snap.Installation, snap.ImageSets = f.installation, f.imageSets
	return nil
}

// forgetOperatorFacts drops what was read, so the next reconcile reads again (an ImageSet
// may have been created after the read).
func (a *Agent) forgetOperatorFacts() {
	a.mu.Lock()
	a.operator = nil
	a.mu.Unlock()
}

func (a *Agent) readOperatorFacts(ctx context.Context, key string) (*operatorFacts, error) {
	f := &operatorFacts{key: key}
	cached := metav1.GetOptions{ResourceVersion: "0"}
	inst, err := a.cfg.Clients.Dynamic.Resource(cluster.Installations).Get(ctx, "default", cached)
	switch {
	case err == nil:
		f.installation = cluster.FromInstallation(inst)
	case !apierrors.IsNotFound(err):
		return nil, fmt.Errorf("reading installations.operator.tigera.io default: %w", err)
	}
	sets, err := a.cfg.Clients.Dynamic.Resource(cluster.ImageSets).List(ctx, metav1.ListOptions{ResourceVersion: "0"})
	switch {
	case err == nil:
		for i := range sets.Items {
			f.imageSets = append(f.imageSets, cluster.FromImageSet(&sets.Items[i]))
		}
	case !apierrors.IsNotFound(err):
		return nil, fmt.Errorf("listing imagesets.operator.tigera.io: %w", err)
	}
	return f, nil
}

// digestOnlyKey lists the workload images that name only a digest, "" when none does.
func digestOnlyKey(snap *cluster.Snapshot) string {
	var refs []string
	for _, w := range snap.Workloads {
		for _, c := range w.Containers {
			if ref, err := manifest.ParseRef(c.Image); err == nil && ref.Tag == "" {
				refs = append(refs, ref.String())
			}
		}
	}
	slices.Sort(refs)
	return strings.Join(slices.Compact(refs), " ")
}
