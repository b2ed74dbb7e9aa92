// Package source decides where each image of a set comes from when a node is made right:
// what the node's store already holds, a local source (a bundle on the node's disk), or a
// registry. Local sources come first: an image a bundle carries with the wanted digest is
// imported from it, with no DNS, no registry and no waiting; the registry is for what local
// sources lack, and a registry path that is dead (its names do not resolve in time, or the
// pull fails) falls back to the bundle.
//
// It talks to the world only through the small interfaces below; cmd/precache wires the
// containerd store, the bundle reader and the registry probe into them, and the unit
// tests use fakes.
package source

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/precache/precache/internal/cache"
	"github.com/precache/precache/internal/manifest"
)

// Store is the node's image store, as the decision needs it.
type Store interface {
	// Status reports the state of every image of set, in order (cache.Status).
	Status(ctx context.Context, set []manifest.Image) ([]cache.Row, error)
	// Finish makes set right from what the store holds, with no network (an offline
	// cache.Ensurer): images it cannot make right fail with cache.ErrOffline.
	Finish(ctx context.Context, set []manifest.Image) ([]cache.Result, error)
}

// Local is a source on the node itself: a bundle (later, other local sources).
type Local interface {
	// Name says what it is, for messages: "bundle /var/lib/precache/calico.tar.zst".
	Name() string
	// Holds says what it carries, reference → digest, without reading its blobs (a
	// precache bundle's lock, stored before its blobs). An error means it cannot tell.
	Holds(ctx context.Context) (*manifest.Lock, error)
	// Import brings what it carries into the store, verified, and returns notes for the
	// user. It records only images complete for the node platform.
	Import(ctx context.Context) (notes []string, err error)
}

// Registry is the network path.
type Registry interface {
	// Reachable reports, by deadline, whether the registries of set can be reached by name
	// (every domain has a host that is an IP or resolves); reason says why not, or how
	// (through fallback servers). It never waits past deadline.
	Reachable(ctx context.Context, set []manifest.Image, deadline time.Time) (ok bool, reason string)
	// Pull makes set right from its registries (an online cache.Ensurer).
	Pull(ctx context.Context, set []manifest.Image) ([]cache.Result, error)
}

// Path is where a run's images came from.
type Path string

const (
	PathLocal          Path = "local"           // the store had everything; repairs at most
	PathBundle         Path = "bundle"          // a local source (Outcome.Fallback: because the registry is dead)
	PathRegistry       Path = "registry"        // pulled
	PathBundleRegistry Path = "bundle+registry" // some from the bundle, the rest pulled
)

// Outcome is what Run did.
type Outcome struct {
	// Results has one entry per image of the set, in order.
	Results []cache.Result
	Path    Path
	// Fallback: the registry was tried and is dead (its names, or the pull), so the local
	// source was used for what it could give.
	Fallback bool
	// Reason says why the path was taken, when it is not the plain one.
	Reason string
	// Notes are things the user should know (from the bundle).
	Notes []string
}

// Decider runs the decision for one set.
type Decider struct {
	Store Store
	// Local may be nil: no local source.
	Local    Local
	Registry Registry
	// Deadline is when the registry decision is due (e.g. 2 s after the process started).
	Deadline time.Time
	// Start is when the run began, for the logs (the decision's time since start).
	Start time.Time
	Log   *zap.Logger
}

// ErrNoPath: the registry cannot be used and no local source covers the set.
var ErrNoPath = errors.New("no source can provide the images")

// Run makes set right from the best source for each image and says which path it took.
// The returned error names every image that is not right.
func (d *Decider) Run(ctx context.Context, set []manifest.Image) (Outcome, error) {
	log := d.Log
	if log == nil {
		log = zap.NewNop()
	}
	var out Outcome
	rows, err := d.Store.Status(ctx, set)
	if err == nil && allOK(rows) {
		out.Path = PathLocal
		for i, r := range rows {
			out.Results = append(out.Results, cache.Result{Image: set[i], Digest: r.Digest, Actions: []cache.Action{cache.ActionNone}})
		}
		return out, nil
	}
	need := needContent(set, rows, err)
	if len(need) == 0 {
		out.Path = PathLocal
		out.Results, err = d.Store.Finish(ctx, set)
		return out, err
	}

	// Local sources first: what the bundle carries with the wanted digest needs no network.
	imported := false
	fromLocal := map[int]bool{}
	if d.Local != nil {
		if held, herr := d.Local.Holds(ctx); herr != nil {
			log.Info("cannot tell what the local source holds; it stays a fallback", zap.String("source", d.Local.Name()), zap.Error(herr))
		} else if covered := coveredBy(set, need, held); len(covered) > 0 {
			notes, ierr := d.Local.Import(ctx)
			out.Notes = append(out.Notes, notes...)
			if ierr != nil {
				log.Warn("importing from the local source", zap.String("source", d.Local.Name()), zap.Error(ierr))
				out.Reason = fmt.Sprintf("%s could not be imported: %s", d.Local.Name(), firstLine(ierr.Error()))
			} else {
				imported = true
				for _, i := range covered {
					fromLocal[i] = true
				}
				need = slices.DeleteFunc(need, func(i int) bool { return fromLocal[i] })
			}
		}
	}

	pulled := map[int]cache.Result{}
	var pullErr error
	switch {
	case len(need) == 0:
		out.Path, out.Reason = PathBundle, "it carries the wanted digests; no registry needed"
	default:
		want := pick(set, need)
		ok, why := d.Registry.Reachable(ctx, want, d.Deadline)
		if !ok {
			if d.Local == nil {
				return out, fmt.Errorf("%w: %s", ErrNoPath, why)
			}
			out.Path, out.Fallback, out.Reason = PathBundle, true, why
			log.Warn("falling back to the bundle", zap.String("source", d.Local.Name()), zap.String("reason", why), zap.Duration("since_start", time.Since(d.Start)))
			break
		}
		if why != "" {
			out.Reason = why
		}
		res, perr := d.Registry.Pull(ctx, want)
		if perr != nil && d.Local != nil {
			out.Path, out.Fallback, out.Reason = PathBundle, true, "the pull failed: "+summarize(perr)
			log.Warn("falling back to the bundle", zap.String("source", d.Local.Name()), zap.String("reason", out.Reason), zap.Duration("since_start", time.Since(d.Start)))
			break
		}
		for k, i := range need {
			pulled[i] = res[k]
		}
		out.Path = PathRegistry
		if imported {
			out.Path = PathBundleRegistry
		}
		pullErr = perr
	}
	if out.Fallback && !imported {
		notes, ierr := d.Local.Import(ctx)
		out.Notes = append(out.Notes, notes...)
		if ierr != nil {
			return out, fmt.Errorf("%s: %w", d.Local.Name(), ierr)
		}
		for _, i := range need {
			fromLocal[i] = true
		}
	}

	// Everything not pulled is finished from the store: the imports, repairs, and what was right.
	var rest []manifest.Image
	var restIdx []int
	for i, img := range set {
		if _, ok := pulled[i]; !ok {
			rest = append(rest, img)
			restIdx = append(restIdx, i)
		}
	}
	finished, ferr := d.Store.Finish(ctx, rest)
	byIdx := map[int]cache.Result{}
	for k, i := range restIdx {
		if k < len(finished) {
			byIdx[i] = finished[k]
		}
	}
	out.Results = merge(set, pulled, byIdx, fromLocal)
	if pullErr != nil {
		return out, pullErr // it names every image the registry could not make right
	}
	return out, ferr
}

// needContent are the indexes of images only a source can make right: absent, another
// digest, or content missing. The rest can be repaired from what the store holds.
func needContent(set []manifest.Image, rows []cache.Row, err error) []int {
	var out []int
	for i := range set {
		if err != nil || i >= len(rows) {
			out = append(out, i)
			continue
		}
		r := rows[i]
		if !r.Present && r.Digest == "" || !r.DigestOK || !r.Complete {
			out = append(out, i)
		}
	}
	return out
}

// coveredBy are the images of need the local source carries with the wanted digest. An
// image without an expected digest is not taken from a local source first: only a
// registry can say whether its tag has moved on; the bundle stays its fallback.
func coveredBy(set []manifest.Image, need []int, held *manifest.Lock) []int {
	var out []int
	for _, i := range need {
		ref := set[i].Ref
		if ref.Digest == "" {
			continue
		}
		if d, ok := held.Lookup(ref); ok && d == ref.Digest {
			out = append(out, i)
		}
	}
	return out
}

func pick(set []manifest.Image, idx []int) []manifest.Image {
	out := make([]manifest.Image, len(idx))
	for k, i := range idx {
		out[k] = set[i]
	}
	return out
}

// merge puts the results back in the set's order; an image that came from the local
// source and needed nothing more from the store reads "imported".
func merge(set []manifest.Image, pulled, finished map[int]cache.Result, fromLocal map[int]bool) []cache.Result {
	out := make([]cache.Result, len(set))
	for i, img := range set {
		switch r, ok := pulled[i]; {
		case ok:
			out[i] = r
		default:
			r, ok := finished[i]
			if !ok {
				r = cache.Result{Image: img, Err: errors.New("not attempted")}
			}
			if fromLocal[i] && r.Err == nil {
				r.Actions = slices.DeleteFunc(slices.Clone(r.Actions), func(a cache.Action) bool { return a == cache.ActionNone })
				r.Actions = append([]cache.Action{cache.ActionImported}, r.Actions...)
			}
			out[i] = r
		}
	}
	return out
}

func allOK(rows []cache.Row) bool {
	for _, r := range rows {
		if !r.OK() {
			return false
		}
	}
	return true
}

// summarize says what went wrong in one line: for a set, how many and the first cause.
func summarize(err error) string {
	var se *cache.SetError
	if errors.As(err, &se) && len(se.Errs) > 0 {
		s := fmt.Sprintf("%d of %d images not right, first %s", se.Failed, se.Total, firstLine(se.Errs[0].Error()))
		return s
	}
	return firstLine(err.Error())
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}
