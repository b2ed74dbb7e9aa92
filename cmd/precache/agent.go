package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/precache/precache/internal/agent"
	"github.com/precache/precache/internal/cache"
	"github.com/precache/precache/internal/cluster"
	"github.com/precache/precache/internal/manifest"
)

func newAgentCommand(a *app) *cobra.Command {
	var (
		nodeName, metricsAddr, selfImage, kubeconfig, stateFile string
		resync                                                  time.Duration
		profiling                                               bool
		images                                                  []string
		sf                                                      storeFlags
		set                                                     setFlags
	)
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run as the DaemonSet: keep this node's recovery set right, ahead of upgrades",
		Long: `agent keeps this node's recovery set — Calico, and what the node needs with it to bring
its pod network and DNS back by itself: kube-proxy, node-local DNS, CoreDNS, tigera-operator
(from the cluster), the API server proxy and control-plane static pods and the sandbox image
(from the node's files under --root) — present, verified, unpacked and pinned.

It watches the calico-node DaemonSet and this node's calico-node pod, kube-system's
DaemonSets and Deployments and the tigera-operator Deployment, reads Calico's other
workloads (the kube-controllers and typha Deployments, csi-node-driver) when those change
and at each resync, and reads the node's files at each reconcile. As soon as an upgrade is
applied to a workload, its new images are pulled and pinned, before the rollout reaches
the node. Old images stay pinned until this node's calico-node runs the new version
(Calico), until the workload's rollout is done (the others), or until the files on disk
name the new image (static pods, sandbox). --only narrows the set.

It serves /metrics, /healthz and /readyz, records Events on the Node (failures,
recoveries, and whether the node's DNS depends on the cluster, as doctor's dns-loop check
sees it), and rides out containerd restarts and API server outages.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			cfg, from, err := cluster.Config(kubeconfig)
			if err != nil {
				return err
			}
			cfg.WrapTransport = agent.CountRequests
			clients, err := cluster.NewClients(cfg)
			if err != nil {
				return err
			}
			var extra []manifest.Image
			for _, s := range images {
				ref, err := manifest.ParseRef(s)
				if err != nil {
					return &usageError{fmt.Errorf("--image: %w", err)}
				}
				img := manifest.Image{Ref: ref, Source: "--image"}
				if ref.Digest != "" {
					img.DigestSource, img.ByDigest = img.Source, true // pulled by the digest it names, as the kubelet does
				}
				extra = append(extra, img)
			}
			if selfImage != "" {
				if _, err := manifest.ParseRef(selfImage); err != nil {
					return &usageError{fmt.Errorf("--self-image: %w", err)}
				}
			}
			parts, err := set.parts()
			if err != nil {
				return err
			}
			a.log.Info("starting agent", zap.String("kubeconfig", from), zap.String("api", cfg.Host), zap.String("node", nodeName))
			ag := agent.New(agent.Config{
				NodeName: nodeName, Clients: clients, Resync: resync, SelfImage: selfImage, Extra: extra,
				MetricsAddr: metricsAddr, Log: a.log, Profiling: profiling,
				Root: a.global.root, KubeletConfig: a.global.kubeletConfig, ContainerdConfig: a.global.containerdConfig,
				Parts: parts,
				Open: func(ctx context.Context) (agent.Store, func() error, error) {
					s, err := a.openStore(ctx, sf)
					if err != nil {
						return nil, nil, err
					}
					return s, s.Close, nil
				},
				OnSetRight: func(results []cache.Result, d *cluster.Discovery) {
					if stateFile == "" {
						return
					}
					from := "agent: cluster and node files"
					if d != nil {
						from += ", Calico " + d.Version
					}
					if err := writeState(stateFile, from, results); err != nil {
						a.log.Warn("recording the node's state", zap.String("file", stateFile), zap.Error(err))
					}
				},
			})
			return ag.Run(ctx)
		},
	}
	f := cmd.Flags()
	envFlag(f, &nodeName, "node-name", "NODE_NAME", "", "this node's name (downward API), for its calico-node pod and Events")
	envFlag(f, &metricsAddr, "metrics-address", "PRECACHE_METRICS_ADDRESS", ":9464", "address for /metrics, /healthz, /readyz (empty: none)")
	envFlag(f, &selfImage, "self-image", "PRECACHE_SELF_IMAGE", "", "the agent's own image, kept too so a restarted agent is never stuck")
	envFlag(f, &kubeconfig, "kubeconfig", "PRECACHE_KUBECONFIG", "", "kubeconfig (default: $KUBECONFIG, in-cluster, ~/.kube/config)")
	envFlag(f, &stateFile, "state-file", "PRECACHE_STATE_FILE", DefaultStateFile, "where the set last made right is recorded (read by bootstrap without the API)")
	f.DurationVar(&resync, "resync", 10*time.Minute, "periodic reconcile (jittered ±10 %), on top of watch events")
	annotateEnv(f.Lookup("resync"), "PRECACHE_RESYNC")
	set.registerOnly(f)
	f.BoolVar(&profiling, "profiling", false, "serve Go's pprof under /debug/pprof/ on --metrics-address")
	f.StringArrayVar(&images, "image", nil, "more images to keep (repeatable)")
	annotateEnv(f.Lookup("image"), "PRECACHE_IMAGES")
	f.IntVar(&sf.maxDownloads, "max-concurrent-downloads", 3, "layer downloads at once (client-side pulls; containerd's transfer service has its own max_concurrent_downloads)")
	annotateEnv(f.Lookup("max-concurrent-downloads"), "PRECACHE_MAX_CONCURRENT_DOWNLOADS")
	sf.registerPullPath(f)
	return cmd
}
