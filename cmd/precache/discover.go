package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"go.uber.org/zap"
	"k8s.io/client-go/rest"

	"github.com/precache/precache/internal/cluster"
	"github.com/precache/precache/internal/hostfs"
	"github.com/precache/precache/internal/manifest"
	"github.com/precache/precache/internal/nodefiles"
)

// discovered is a recovery set read from the cluster and the node's files, with how it
// was found.
type discovered struct {
	// Calico is what the cluster says of Calico; nil when calico is not among Parts.
	Calico *cluster.Discovery
	// Kubeconfig says where the API server's address came from ("" when no part needed it).
	Kubeconfig string
	// Parts are the parts of the recovery set that were looked for.
	Parts []manifest.Part
	// Facts are what was found of the other parts, and which are absent.
	Facts []cluster.Fact
	// Warnings are node files that could not be used; the rest of the set was built.
	Warnings []string
}

// describe is the set's origin, for "image set: …".
func (d *discovered) describe(root string) string {
	var parts []string
	if d.Kubeconfig != "" {
		parts = append(parts, "cluster "+d.Kubeconfig)
	}
	if d.Calico != nil {
		parts = append(parts, "Calico "+d.Calico.Version+" ("+string(d.Calico.Variant)+")")
	}
	if manifest.AnyFromNode(d.Parts) {
		parts = append(parts, "node files under "+root)
	}
	return strings.Join(parts, ", ")
}

// registerOnly adds --only to a command that takes a discovered set.
func (s *setFlags) registerOnly(f *pflag.FlagSet) {
	f.StringSliceVar(&s.only, "only", nil, "parts of the recovery set to keep, comma-separated: "+manifest.PartNames()+" (default: all of them)")
	annotateEnv(f.Lookup("only"), "PRECACHE_ONLY")
}

// parts are the parts --only asks for: every part by default.
func (s *setFlags) parts() ([]manifest.Part, error) {
	parts, err := manifest.ParseParts(s.only)
	if err != nil {
		return nil, &usageError{fmt.Errorf("--only: %w", err)}
	}
	return parts, nil
}

// imageSet is the set a command works on: discovered from the cluster and the node when
// asked to (--from-cluster, --kubeconfig), else built from the flags; either way
// narrowed by --only. found is nil for a set built from the flags.
func (a *app) imageSet(ctx context.Context, s *setFlags) ([]manifest.Image, *discovered, error) {
	parts, err := s.parts()
	if err != nil {
		return nil, nil, err
	}
	if s.discover() {
		found, images, err := a.discoverSet(ctx, s, parts)
		return images, found, err
	}
	images, err := s.build()
	if err != nil {
		return nil, nil, err
	}
	if images = manifest.Only(images, parts); len(images) == 0 {
		return nil, nil, &usageError{fmt.Errorf("--only %s leaves none of the images the flags name", partList(parts))}
	}
	return images, nil, nil
}

// discoverSet reads the recovery set's parts from the cluster and the node's files (under
// --root) and returns the set, with the lock and the --image/--images-file additions
// applied as for the catalog. extra are last-resort kubeconfigs (the kubelet's).
func (a *app) discoverSet(ctx context.Context, s *setFlags, parts []manifest.Part, extra ...string) (*discovered, []manifest.Image, error) {
	found := &discovered{Parts: parts}
	var set []manifest.Image
	if manifest.AnyFromCluster(parts) {
		cfg, from, err := cluster.Config(s.kubeconfig, extra...)
		if err != nil {
			return nil, nil, err
		}
		cfg.Timeout = 10 * time.Second
		// One discovery makes about twenty GETs; client-go's default limiter (5/s, burst
		// 10) would hold the last of them for a second. kubectl allows as much.
		cfg.QPS, cfg.Burst = 50, 100
		clients, err := cluster.NewClients(cfg)
		if err != nil {
			return nil, nil, err
		}
		found.Kubeconfig = from + " (" + cfg.Host + ")"
		if set, err = a.discoverCluster(ctx, clients, cfg, from, parts, found); err != nil {
			return nil, nil, err
		}
	}
	if manifest.AnyFromNode(parts) {
		f, err := nodefiles.Read(hostfs.Root(a.global.root), nodefiles.Options{
			KubeletConfig: a.global.kubeletConfig, ContainerdConfig: a.global.containerdConfig, Parts: parts,
		})
		if err != nil {
			return nil, nil, &nodeFilesError{fmt.Errorf("reading the node's files under %s: %w", a.global.root, err)}
		}
		for _, w := range f.Warnings {
			a.log.Warn("node file not used; the rest of the set is built", zap.String("file", w.File), zap.Error(w.Err))
			found.Warnings = append(found.Warnings, w.Error())
		}
		for _, fact := range f.Facts {
			found.Facts = append(found.Facts, cluster.Fact{What: fact.What, Value: fact.Value, Source: fact.Source})
		}
		set = manifest.Merge(set, f.Images)
	}
	if len(s.images) > 0 || s.imagesFile != "" {
		more, err := manifest.Build(manifest.Options{Images: s.images, ImagesFile: s.imagesFile})
		if err != nil {
			return nil, nil, &usageError{err}
		}
		set = append(set, more...)
	}
	if s.lock != "" {
		l, err := manifest.ReadLock(s.lock)
		if err != nil {
			return nil, nil, &usageError{err}
		}
		if set, err = manifest.ApplyLock(set, l, s.lock); err != nil {
			return nil, nil, err
		}
	}
	if len(set) == 0 {
		return nil, nil, fmt.Errorf("no images: none of %s was found in the cluster or on the node", partList(parts))
	}
	return found, set, nil
}

// discoverCluster reads Calico (when asked for) and the other workloads of parts.
func (a *app) discoverCluster(ctx context.Context, clients cluster.Clients, cfg *rest.Config, from string, parts []manifest.Part, found *discovered) ([]manifest.Image, error) {
	var set []manifest.Image
	if manifest.HasPart(parts, manifest.PartCalico) {
		snap, err := cluster.Read(ctx, clients)
		if err != nil {
			return nil, fmt.Errorf("reading Calico from the API server at %s (kubeconfig: %s): %w", cfg.Host, from, err)
		}
		d, err := cluster.Resolve(snap)
		if err != nil {
			return nil, err
		}
		for _, msg := range d.Disagreements {
			a.log.Warn("sources disagree", zap.String("detail", msg))
		}
		found.Calico = d
		set = d.Images
	}
	addons, err := cluster.ReadAddons(ctx, clients, parts)
	if err != nil {
		return nil, fmt.Errorf("reading the recovery set from the API server at %s (kubeconfig: %s): %w", cfg.Host, from, err)
	}
	images, facts, err := cluster.ResolveAddons(addons)
	if err != nil {
		return nil, err
	}
	found.Facts = append(found.Facts, facts...)
	return manifest.Merge(set, images), nil
}

// nodeFilesError is a discovery that failed on the node's files, not on the cluster.
type nodeFilesError struct{ err error }

func (e *nodeFilesError) Error() string { return e.err.Error() }
func (e *nodeFilesError) Unwrap() error { return e.err }

func partList(parts []manifest.Part) string {
	names := make([]string, len(parts))
	for i, p := range parts {
		names[i] = string(p)
	}
	return strings.Join(names, ", ")
}

func printFacts(w io.Writer, d *discovered) {
	if d.Kubeconfig != "" {
		fmt.Fprintf(w, "cluster: %s\n", d.Kubeconfig)
	}
	if d.Calico != nil {
		for _, f := range d.Calico.Facts {
			fmt.Fprintf(w, "  %-16s %-40s from %s\n", f.What, f.Value, f.Source)
		}
	}
	for _, f := range d.Facts {
		// An absent part, or a workload found by name or label, says so itself.
		src := "from " + f.Source
		if f.Value == "absent" || strings.HasPrefix(f.Value, "not ") || strings.HasPrefix(f.Source, "found by ") {
			src = f.Source
		}
		fmt.Fprintf(w, "  %-16s %-40s %s\n", f.What, f.Value, src)
	}
	for _, msg := range d.Warnings {
		fmt.Fprintf(w, "  WARNING          %s\n", msg)
	}
	if d.Calico != nil {
		for _, msg := range d.Calico.Disagreements {
			fmt.Fprintf(w, "  DISAGREEMENT     %s\n", msg)
		}
	}
	fmt.Fprintln(w, strings.Repeat("-", 4))
}
