package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/precache/precache/internal/bundle"
	"github.com/precache/precache/internal/cache"
	"github.com/precache/precache/internal/cluster"
	"github.com/precache/precache/internal/doctor"
	"github.com/precache/precache/internal/hostfs"
	"github.com/precache/precache/internal/manifest"
)

// releaseBytes estimates what one Calico release takes on disk (compressed + unpacked).
const releaseBytes = 2 << 30

func newDoctorCommand(a *app) *cobra.Command {
	var (
		set        setFlags
		bundlePath string
		stateFile  string
		output     string
		strict     bool
	)
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Find the DNS ↔ CNI loop and what else would keep this node from recovering its network",
		Long: `doctor checks, with evidence and a fix for each: whether the node's name resolution depends on
the cluster (the loop: the CoreDNS service IP needs the pod network, so calico-node; node-local
DNS needs its pod and image on the node, and a resolver outside the cluster to forward to);
whether the images of the node's recovery set (Calico, kube-proxy, node-local DNS, CoreDNS,
the operator, the static pods, the sandbox; --only narrows it) are present, complete,
unpacked and pinned, and which of them the node's DNS depends on; whether a bundle is
configured, readable and covers the running version; containerd (reachable, pinning support,
the CRI's snapshotter, discard_unpacked_layers, registry config_path); disk space; the
kubelet's image GC thresholds; whether the kubelet would re-check the images with the
registry (imagePullCredentialsVerificationPolicy). The node's files are read under --root,
links resolved inside it as on the node. Exit code: 0 all OK, 1 any WARN with --strict,
2 any FAIL.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := outputFormat(output).validate(); err != nil {
				return err
			}
			ctx := cmd.Context()
			results := a.doctor(ctx, &set, a.global.root, a.global.kubeletConfig, a.global.containerdConfig, bundlePath, stateFile)
			w := cmd.OutOrStdout()
			if output == "json" {
				if err := writeJSON(w, results); err != nil {
					return err
				}
			} else {
				printDoctor(w, results)
			}
			if code := doctor.ExitCode(results, strict); code != 0 {
				return &exitError{code: code}
			}
			return nil
		},
	}
	f := cmd.Flags()
	set.register(f)
	set.registerOnly(f)
	envFlag(f, &bundlePath, "bundle", "PRECACHE_BUNDLE", "", "the bundle bootstrap falls back to, under --root")
	envFlag(f, &stateFile, "state-file", "PRECACHE_STATE_FILE", DefaultStateFile, "the state bootstrap and the agent record, under --root")
	f.StringVarP(&output, "output", "o", "table", "table or json")
	f.BoolVar(&strict, "strict", false, "exit 1 on warnings too")
	return cmd
}

func (a *app) doctor(ctx context.Context, set *setFlags, rootDir, kubeletConfig, containerdConfig, bundlePath, stateFile string) []doctor.Result {
	// Every node file is read through root: links resolve inside it, as on the node.
	root := hostfs.Root(rootDir)
	host := func(p string) string {
		r, _ := root.Resolve(p)
		return r.Host
	}
	var results []doctor.Result

	// The image set and the cluster's DNS: the cluster if it can be read, else the flags, else the state.
	var (
		images []manifest.Image
		what   = "the set"
	)
	kubelet, kerr := doctor.FindKubelet(root, kubeletConfig)
	dns := doctor.NodeClusterDNS(root, kubelet)
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	// The images check covers the recovery set (--only narrows it).
	parts, derr := set.parts()
	if derr == nil {
		var (
			found      *discovered
			discovered []manifest.Image
		)
		found, discovered, derr = a.discoverSet(actx, set, parts, host(cluster.KubeletConfig))
		if derr == nil {
			images, what = discovered, "the recovery set"
			if found.Calico != nil {
				what += " (Calico " + found.Calico.Version + ")"
			}
		}
	}
	if cfg, _, err := cluster.Config(set.kubeconfig, host(cluster.KubeletConfig)); err == nil {
		cfg.Timeout = 5 * time.Second
		if clients, err := cluster.NewClients(cfg); err == nil {
			readClusterDNS(actx, clients, &dns)
		}
	} else {
		dns.ForwardUnknown = "no API access: " + firstLine(err.Error())
	}
	cancel()
	switch {
	case images != nil:
	case set.version != "" || len(set.images) > 0 || set.imagesFile != "":
		images, _ = set.build()
		what = "the flags' set"
	default:
		if _, st, err := readState(host(stateFile)); err == nil {
			images, what = st, "the set recorded in "+stateFile
		}
	}

	// 1. The loop.
	remedies := []string{"precache bootstrap --dns-fallback IP", "a bundle on disk (precache bootstrap --bundle FILE)"}
	var dnsPath []manifest.Part
	if r, err := doctor.ReadResolvers(rootDir); err != nil {
		results = append(results, doctor.Result{Check: "dns-loop", Status: doctor.Skip, Summary: err.Error()})
	} else {
		loop := doctor.Loop(r, dns, remedies)
		results = append(results, loop)
		dnsPath = doctor.DNSPath(r, dns, loop)
	}

	// 2–4. containerd, the images, the bundle.
	c := doctor.Containerd{Address: a.global.address, Snapshotter: a.global.snapshotter}
	store, err := a.openStore(ctx, storeFlags{})
	if err != nil {
		c.Reachable = err
	} else {
		defer store.Close()
		if v, err := store.Client().Version(ctx); err == nil {
			c.Version = v.Version
		}
		c.CRI, _ = doctor.CRIConfig(ctx, strings.TrimPrefix(a.global.address, "unix://"))
	}
	if cfg, p, err := doctor.ReadContainerdConfig(root, containerdConfig); err == nil {
		c.Config, c.ConfigPath = cfg, p.String()
	}
	results = append(results, doctor.ContainerdCheck(c))
	switch {
	case images == nil:
		results = append(results, doctor.Result{Check: "images", Status: doctor.Skip,
			Summary: "no image set: the cluster could not be read (" + firstLine(errString(derr)) + ") and no --calico-version or state file"})
	case store == nil:
		results = append(results, doctor.Result{Check: "images", Status: doctor.Skip, Summary: "containerd unreachable"})
	default:
		rows, err := cache.Status(ctx, store, images)
		if err != nil {
			results = append(results, doctor.Result{Check: "images", Status: doctor.Skip, Summary: err.Error()})
		} else {
			results = append(results, doctor.Images(images, rows, what, dnsPath))
		}
	}
	if bundlePath == "" {
		results = append(results, doctor.Bundle("", nil, nil, images))
	} else {
		var lock *manifest.Lock
		in, _, err := root.Open(bundlePath)
		if err == nil {
			lock, err = bundle.PeekLock(in)
			in.Close()
		}
		results = append(results, doctor.Bundle(bundlePath, lock, err, images))
	}

	// 5–6. Disk and the kubelet's image GC, on the containerd root (a node path: the CRI
	// reports it as the node sees it, and it may be a link to another disk).
	croot := "/var/lib/containerd"
	if c.CRI != nil {
		for _, key := range []string{"containerdRootDir", "rootDir"} {
			if p := findCRIString(c.CRI, key); p != "" {
				croot = strings.TrimSuffix(p, "/io.containerd.grpc.v1.cri")
				break
			}
		}
	}
	var fs syscall.Statfs_t
	cpath, err := root.Resolve(croot)
	if err == nil {
		err = syscall.Statfs(cpath.Host, &fs)
	}
	if err != nil {
		results = append(results, doctor.Result{Check: "disk", Status: doctor.Skip, Summary: fmt.Sprintf("%s: %v", cpath, err)})
	} else {
		free := fs.Bavail * uint64(fs.Bsize)
		total := fs.Blocks * uint64(fs.Bsize)
		results = append(results, doctor.Disk(cpath.String(), free, releaseBytes))
		used := 0
		if total > 0 {
			used = int((total - fs.Bfree*uint64(fs.Bsize)) * 100 / total)
		}
		if kerr != nil {
			kubelet.Path += " (not readable: kubelet defaults)"
		}
		results = append(results, doctor.KubeletGC(kubelet, used, c.Reachable == nil && doctor.PinningSupported(c.Version)))
	}

	// 7. Whether the kubelet re-checks, with the registry, images it did not pull itself.
	if kerr != nil {
		results = append(results, doctor.Result{Check: "kubelet-pull-verification", Status: doctor.Skip, Summary: kerr.Error()})
	} else {
		results = append(results, doctor.PullVerification(kubelet, images, what))
	}
	return results
}

// readClusterDNS adds what the API says of the cluster's DNS: the CoreDNS Service, and
// node-local DNS's ConfigMap (its addresses and where it forwards names outside the
// cluster) and DaemonSet (its image) — Kubespray's nodelocaldns or the NodeLocal DNSCache
// addon's node-local-dns. Each read is optional: a node's own credentials may not allow it.
func readClusterDNS(ctx context.Context, clients cluster.Clients, d *doctor.ClusterDNS) {
	core := clients.Kube.CoreV1()
	for _, name := range []string{"kube-dns", "coredns"} {
		svc, err := core.Services("kube-system").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			continue
		}
		ips := svc.Spec.ClusterIPs
		if len(ips) == 0 {
			ips = []string{svc.Spec.ClusterIP}
		}
		d.AddService("Service kube-system/"+name, ips...)
		break
	}
	var whyNot []string
	for _, name := range []string{"nodelocaldns", "node-local-dns"} {
		cm, err := core.ConfigMaps("kube-system").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			if !apierrors.IsNotFound(err) {
				whyNot = append(whyNot, fmt.Sprintf("ConfigMap kube-system/%s: %s", name, firstLine(err.Error())))
			}
			continue
		}
		d.AddCorefile("ConfigMap kube-system/"+name, cm.Data["Corefile"])
		if ds, err := clients.Kube.AppsV1().DaemonSets("kube-system").Get(ctx, name, metav1.GetOptions{}); err == nil && len(ds.Spec.Template.Spec.Containers) > 0 {
			d.Image, d.ImageSource = ds.Spec.Template.Spec.Containers[0].Image, "DaemonSet kube-system/"+name
		}
		return
	}
	if len(whyNot) > 0 {
		d.ForwardUnknown = strings.Join(whyNot, "; ")
	} else {
		d.ForwardUnknown = "no nodelocaldns or node-local-dns ConfigMap in kube-system"
	}
}

func findCRIString(m map[string]any, key string) string {
	for k, v := range m {
		if s, ok := v.(string); ok && k == key {
			return s
		}
		if inner, ok := v.(map[string]any); ok {
			if s := findCRIString(inner, key); s != "" {
				return s
			}
		}
	}
	return ""
}

func printDoctor(w io.Writer, results []doctor.Result) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CHECK\tSTATUS\tSUMMARY")
	for _, r := range results {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Check, r.Status, r.Summary)
	}
	tw.Flush()
	for _, r := range results {
		if r.Status == doctor.OK && len(r.Evidence) == 0 {
			continue
		}
		fmt.Fprintf(w, "\n%s (%s)\n", r.Check, r.Status)
		for _, e := range r.Evidence {
			fmt.Fprintln(w, "  evidence:", e)
		}
		if r.Fix != "" {
			fmt.Fprintln(w, "  fix:", r.Fix)
		}
	}
}
