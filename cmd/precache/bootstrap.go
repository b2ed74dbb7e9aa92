package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/precache/precache/internal/bundle"
	"github.com/precache/precache/internal/cache"
	"github.com/precache/precache/internal/cluster"
	pcontainerd "github.com/precache/precache/internal/containerd"
	"github.com/precache/precache/internal/dns"
	"github.com/precache/precache/internal/hostfs"
	"github.com/precache/precache/internal/manifest"
	"github.com/precache/precache/internal/source"
)

// processStart anchors --dns-timeout: the fallback decision is due that long after the
// process started, whatever came before the first lookup.
var processStart = time.Now()

const decisionMargin = 50 * time.Millisecond

type bootstrapFlags struct {
	set         setFlags
	store       storeFlags
	parallel    int
	bundle      string
	baseName    string
	dnsTimeout  time.Duration
	dnsFallback []string
	stateFile   string
	apiTimeout  time.Duration
}

func newBootstrapCommand(a *app) *cobra.Command {
	var f bootstrapFlags
	cmd := &cobra.Command{
		Use:   "bootstrap",
		Short: "Make the node's image cache right, then exit (run before the kubelet)",
		Long: `bootstrap makes every image of the set present in containerd under the names the CRI
uses (repo:tag and repo@digest), verified against the expected digests, complete, unpacked
into the snapshotter and pinned. Images already right are not touched and need no network.

With --bundle it survives dead DNS: if a registry's name does not resolve within
--dns-timeout of the start (glibc would wait 20 s or more per lookup), or the pull fails,
it imports the bundle instead, and says which path it took. --dns-fallback resolves the
registry names through the given servers, in-process, without touching the node's DNS.

It exits 0 when every image is right, 1 naming each image that is not.`,
		Example: `  precache bootstrap --calico-version v3.28.1
  precache bootstrap --calico-version v3.28.1 --bundle /var/lib/precache/calico-v3.28.1.tar.zst
  precache bootstrap --calico-version v3.28.1 --dns-fallback 1.1.1.1,8.8.8.8 --lock calico.lock`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return a.bootstrap(cmd.Context(), cmd.OutOrStdout(), f) },
	}
	fl := cmd.Flags()
	f.set.register(fl)
	f.set.registerOnly(fl)
	fl.IntVar(&f.parallel, "parallel", 4, "images worked on at once")
	annotateEnv(fl.Lookup("parallel"), "PRECACHE_PARALLEL")
	fl.IntVar(&f.store.maxDownloads, "max-concurrent-downloads", 6, "layer downloads at once, across all images (client-side pulls; containerd's transfer service has its own max_concurrent_downloads)")
	annotateEnv(fl.Lookup("max-concurrent-downloads"), "PRECACHE_MAX_CONCURRENT_DOWNLOADS")
	f.store.registerPullPath(fl)
	envFlag(fl, &f.bundle, "bundle", "PRECACHE_BUNDLE", "", "offline bundle to import when the registry cannot be used (precache bundle makes one)")
	envFlag(fl, &f.baseName, "base-name", "PRECACHE_BASE_NAME", "", "repository for bundle images named only by tag (see precache import)")
	fl.DurationVar(&f.dnsTimeout, "dns-timeout", 2*time.Second, "how long after the start registry names may take to resolve before falling back to --bundle")
	annotateEnv(fl.Lookup("dns-timeout"), "PRECACHE_DNS_TIMEOUT")
	fl.StringSliceVar(&f.dnsFallback, "dns-fallback", nil, "DNS servers (IP[:port]) to resolve registry names through when the node's resolver fails")
	annotateEnv(fl.Lookup("dns-fallback"), "PRECACHE_DNS_FALLBACK")
	envFlag(fl, &f.stateFile, "state-file", "PRECACHE_STATE_FILE", DefaultStateFile, "where the last set made right is recorded (the fallback when the API server cannot be reached)")
	fl.DurationVar(&f.apiTimeout, "api-timeout", 5*time.Second, "how long reading the cluster may take before falling back")
	annotateEnv(fl.Lookup("api-timeout"), "PRECACHE_API_TIMEOUT")
	return cmd
}

func (a *app) bootstrap(ctx context.Context, out io.Writer, f bootstrapFlags) error {
	images, setSource, err := a.bootstrapSet(ctx, out, &f)
	if err != nil {
		return err
	}
	fmt.Fprintln(out, "image set:", setSource)
	var fallback *dnsResolverFlag
	if len(f.dnsFallback) > 0 {
		r, err := dns.Servers(f.dnsFallback)
		if err != nil {
			return &usageError{err}
		}
		fallback = &dnsResolverFlag{r: r, servers: strings.Join(f.dnsFallback, ",")}
	}
	if f.bundle != "" {
		if _, err := os.Stat(f.bundle); err != nil {
			// Not fatal: the registry may work. Said now, not when it is needed.
			a.log.Warn("bundle not readable; it cannot serve as a fallback", zap.String("bundle", f.bundle), zap.Error(err))
		}
	}
	store, err := a.openStore(ctx, f.store)
	if err != nil {
		return err
	}
	defer store.Close()

	offline := cache.NewEnsurer(store, cache.Options{Parallel: f.parallel, Logger: a.log, Offline: true})
	d := &source.Decider{
		Store: storePort{store: store, offline: offline},
		Registry: &registryPort{
			a: a, store: store, fallback: fallback, fallbackTimeout: f.dnsTimeout,
			online: cache.NewEnsurer(store, cache.Options{Parallel: f.parallel, Logger: a.log}),
		},
		// The registry decision is due --dns-timeout after the start, leaving a few
		// milliseconds for the decision itself.
		Deadline: processStart.Add(f.dnsTimeout - decisionMargin),
		Start:    processStart,
		Log:      a.log,
	}
	if f.bundle != "" {
		d.Local = &bundlePort{path: f.bundle, baseName: f.baseName, parallel: f.parallel, store: store, offline: offline, log: a.log}
	}
	outcome, err := d.Run(ctx, images)
	if errors.Is(err, source.ErrNoPath) {
		return fmt.Errorf("%w\nhint: pass --bundle FILE (precache bundle makes one) to import instead, or --dns-fallback IP to resolve through another server", err)
	}
	for _, n := range outcome.Notes {
		fmt.Fprintln(out, "note:", n)
	}
	results := outcome.Results
	printResults(out, results, time.Since(processStart))
	line := "path: " + string(outcome.Path)
	if outcome.Reason != "" {
		line += " (" + outcome.Reason + ")"
	}
	fmt.Fprintln(out, line)
	if err != nil {
		return fmt.Errorf("%w%s", err, hint(err))
	}
	if f.stateFile != "" {
		if err := writeState(f.stateFile, setSource, results); err != nil {
			a.log.Warn("recording the node's state", zap.String("file", f.stateFile), zap.Error(err))
		}
	}
	return nil
}

// bootstrapSet decides the image set: the cluster's when it can be read (--from-cluster,
// --kubeconfig, or no set given on the command line), else, in this order, the flags, the
// state this node last recorded, and the bundle's own lock. It says which.
func (a *app) bootstrapSet(ctx context.Context, out io.Writer, f *bootstrapFlags) ([]manifest.Image, string, error) {
	flagsGiven := f.set.version != "" || len(f.set.images) > 0 || f.set.imagesFile != ""
	parts, err := f.set.parts()
	if err != nil {
		return nil, "", err
	}
	fromFlags := func() ([]manifest.Image, error) {
		images, err := f.set.build()
		return manifest.Only(images, parts), err
	}
	if !f.set.discover() && flagsGiven {
		images, err := fromFlags()
		return images, "flags", err
	}
	// The kubelet's kubeconfig is a node file: read under --root like the others.
	kubeletConf, _ := hostfs.Root(a.global.root).Resolve(cluster.KubeletConfig)
	actx, cancel := context.WithTimeout(ctx, f.apiTimeout)
	found, images, err := a.discoverSet(actx, &f.set, parts, kubeletConf.Host)
	cancel()
	if err == nil {
		printFacts(out, found)
		return images, found.describe(a.global.root), nil
	}
	var nodeErr *nodeFilesError
	why := "the cluster could not be read: " + firstLine(err.Error())
	if errors.As(err, &nodeErr) {
		why = "the node's files could not be used: " + firstLine(err.Error())
	}
	a.log.Warn("cannot discover the set; falling back", zap.Error(err))
	if flagsGiven {
		images, err := fromFlags()
		return images, "flags, because " + why, err
	}
	if st, images, serr := readState(f.stateFile); serr == nil {
		return images, fmt.Sprintf("state recorded on this node at %s (%s), because %s", st.Written.Format(time.RFC3339), f.stateFile, why), nil
	}
	if f.bundle != "" {
		in, _, berr := openBundle(f.bundle)
		if berr == nil {
			defer in.Close()
			lock, lerr := bundle.PeekLock(in)
			if lerr == nil {
				var images []manifest.Image
				for _, k := range lock.Refs() {
					ref := manifest.MustParseRef(k)
					ref.Digest = lock.Images[k]
					images = append(images, manifest.Image{Ref: ref, Source: "lock of " + f.bundle, DigestSource: "lock of " + f.bundle})
				}
				return images, "the lock inside " + f.bundle + ", because " + why, nil
			}
			why += "; the bundle's lock cannot be read: " + firstLine(lerr.Error())
		} else {
			why += "; " + firstLine(berr.Error())
		}
	}
	return nil, "", &usageError{fmt.Errorf("no image set: %s, and there is no fallback: pass --calico-version (or --image), keep %s from an earlier run, or pass --bundle", why, f.stateFile)}
}

type dnsResolverFlag struct {
	r       *net.Resolver
	servers string
}

// probeDNS checks, per registry domain, that some host a pull would contact is an IP or
// resolves before deadline; it returns the failures of the domains where none does.
func (a *app) probeDNS(ctx context.Context, r *net.Resolver, images []manifest.Image, deadline time.Time) []dns.Failure {
	byDomain := map[string][]string{}
	for _, img := range images {
		d := img.Ref.Domain()
		if _, done := byDomain[d]; done {
			continue
		}
		hosts, err := pcontainerd.RegistryHosts(ctx, a.global.hostsDir, d)
		if err != nil {
			a.log.Warn("reading registry hosts", zap.String("domain", d), zap.Error(err))
			hosts = []string{d}
		}
		byDomain[d] = hosts
	}
	var all []string
	for _, hosts := range byDomain {
		all = append(all, hosts...)
	}
	failed := map[string]error{}
	for _, fl := range dns.Probe(ctx, r, all, deadline) {
		failed[fl.Host] = fl.Err
	}
	var out []dns.Failure
	for _, hosts := range byDomain {
		ok := false
		for _, h := range hosts {
			if _, bad := failed[h]; !bad {
				ok = true
				break
			}
		}
		if !ok {
			for _, h := range hosts {
				out = append(out, dns.Failure{Host: h, Err: failed[h]})
			}
		}
	}
	return out
}

func failureStrings(fs []dns.Failure) []string {
	var out []string
	seen := map[string]bool{}
	for _, f := range fs {
		if !seen[f.Host] {
			seen[f.Host] = true
			out = append(out, f.Host+": "+f.Err.Error())
		}
	}
	return out
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

func printResults(w io.Writer, results []cache.Result, took time.Duration) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "IMAGE\tDIGEST\tACTION\tTOOK")
	counts := map[string]int{}
	var order []string
	for _, r := range results {
		action := "failed"
		if r.Err == nil {
			parts := make([]string, len(r.Actions))
			for i, a := range r.Actions {
				parts[i] = string(a)
			}
			action = strings.Join(parts, "+")
		}
		if counts[action] == 0 {
			order = append(order, action)
		}
		counts[action]++
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Image.Ref.Display(), shortDigest(r.Digest.String()), action, r.Duration.Round(time.Millisecond))
	}
	tw.Flush()
	var summary []string
	for _, k := range order {
		label := k
		if k == "none" {
			label = "already right"
		}
		summary = append(summary, fmt.Sprintf("%d %s", counts[k], label))
	}
	fmt.Fprintf(w, "%d images in %s: %s\n", len(results), took.Round(time.Millisecond), strings.Join(summary, ", "))
}

func shortDigest(d string) string {
	if _, hex, ok := strings.Cut(d, ":"); ok && len(hex) > 12 {
		return d[:len(d)-len(hex)] + hex[:12]
	}
	return d
}
