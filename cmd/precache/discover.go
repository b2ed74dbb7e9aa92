package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/precache/precache/internal/cluster"
	"github.com/precache/precache/internal/manifest"
)

// discovered is an image set read from the cluster, with how it was found.
type discovered struct {
	*cluster.Discovery
	// Kubeconfig says where the API server's address came from.
	Kubeconfig string
}

// discoverSet reads the cluster and returns its image set, with the lock and the
// --image/--images-file additions applied as for the catalog.
func (a *app) discoverSet(ctx context.Context, s *setFlags, extra ...string) (*discovered, []manifest.Image, error) {
	cfg, from, err := cluster.Config(s.kubeconfig, extra...)
	if err != nil {
		return nil, nil, err
	}
	cfg.Timeout = 10 * time.Second
	clients, err := cluster.NewClients(cfg)
	if err != nil {
		return nil, nil, err
	}
	snap, err := cluster.Read(ctx, clients)
	if err != nil {
		return nil, nil, fmt.Errorf("reading Calico from the API server at %s (kubeconfig: %s): %w", cfg.Host, from, err)
	}
	d, err := cluster.Resolve(snap)
	if err != nil {
		return nil, nil, err
	}
	for _, msg := range d.Disagreements {
		a.log.Warn("sources disagree", zap.String("detail", msg))
	}
	set := d.Images
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
	return &discovered{Discovery: d, Kubeconfig: from + " (" + cfg.Host + ")"}, set, nil
}

func printFacts(w io.Writer, d *discovered) {
	fmt.Fprintf(w, "cluster: %s\n", d.Kubeconfig)
	for _, f := range d.Facts {
		fmt.Fprintf(w, "  %-16s %-40s from %s\n", f.What, f.Value, f.Source)
	}
	for _, msg := range d.Disagreements {
		fmt.Fprintf(w, "  DISAGREEMENT     %s\n", msg)
	}
	fmt.Fprintln(w, strings.Repeat("-", 4))
}
