package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/precache/precache/internal/cache"
)

func newBootstrapCommand(a *app) *cobra.Command {
	var (
		set      setFlags
		sf       storeFlags
		parallel int
	)
	cmd := &cobra.Command{
		Use:   "bootstrap",
		Short: "Make the node's image cache right, then exit (run before the kubelet)",
		Long: `bootstrap makes every image of the set present in containerd under the names the CRI
uses (repo:tag and repo@digest), verified against the expected digests, complete, unpacked
into the snapshotter and pinned. Images already right are not touched and need no network.
It exits 0 when every image is right, 1 naming each image that is not.`,
		Example: `  precache bootstrap --calico-version v3.28.1
  precache bootstrap --calico-version v3.28.1 --registry registry.local:5000 --lock calico.lock`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			images, err := set.build()
			if err != nil {
				return err
			}
			start := time.Now()
			store, err := a.openStore(cmd.Context(), sf)
			if err != nil {
				return err
			}
			defer store.Close()
			e := cache.NewEnsurer(store, cache.Options{Parallel: parallel, Logger: a.log})
			results, err := e.Ensure(cmd.Context(), images)
			printResults(cmd.OutOrStdout(), results, time.Since(start))
			if err != nil {
				return fmt.Errorf("%w%s", err, hint(err))
			}
			return nil
		},
	}
	set.register(cmd.Flags())
	cmd.Flags().IntVar(&parallel, "parallel", 4, "images worked on at once")
	annotateEnv(cmd.Flags().Lookup("parallel"), "PRECACHE_PARALLEL")
	cmd.Flags().IntVar(&sf.maxDownloads, "max-concurrent-downloads", 6, "layer downloads at once, across all images")
	annotateEnv(cmd.Flags().Lookup("max-concurrent-downloads"), "PRECACHE_MAX_CONCURRENT_DOWNLOADS")
	return cmd
}

func printResults(w io.Writer, results []cache.Result, took time.Duration) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "IMAGE\tDIGEST\tACTION\tTOOK")
	counts := map[string]int{}
	for _, r := range results {
		action := "failed"
		if r.Err == nil {
			parts := make([]string, len(r.Actions))
			for i, a := range r.Actions {
				parts[i] = string(a)
			}
			action = strings.Join(parts, "+")
		}
		counts[action]++
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Image.Ref.Display(), shortDigest(r.Digest.String()), action, r.Duration.Round(time.Millisecond))
	}
	tw.Flush()
	var summary []string
	for _, k := range []string{"none", "pulled", "unpacked", "recorded", "unpacked+recorded", "failed"} {
		if counts[k] > 0 {
			label := k
			if k == "none" {
				label = "already right"
			}
			summary = append(summary, fmt.Sprintf("%d %s", counts[k], label))
		}
	}
	fmt.Fprintf(w, "%d images in %s: %s\n", len(results), took.Round(time.Millisecond), strings.Join(summary, ", "))
}

func shortDigest(d string) string {
	if _, hex, ok := strings.Cut(d, ":"); ok && len(hex) > 12 {
		return d[:len(d)-len(hex)] + hex[:12]
	}
	return d
}
