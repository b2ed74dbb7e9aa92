package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/precache/precache/internal/agent"
	"github.com/precache/precache/internal/cache"
	"github.com/precache/precache/internal/cluster"
	"github.com/precache/precache/internal/doctor"
	"github.com/precache/precache/internal/hostfs"
	"github.com/precache/precache/internal/manifest"
)

func newAgentCommand(a *app) *cobra.Command {
	var (
		nodeName, metricsAddr, selfImage, kubeconfig, stateFile string
		resync                                                  time.Duration
		profiling                                               bool
		root, kubeletConfig                                     string
		images                                                  []string
		sf                                                      storeFlags
	)
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run as the DaemonSet: keep this node's Calico images right, ahead of upgrades",
		Long: `agent watches the calico-node DaemonSet and this node's calico-node pod, and keeps the
images the cluster runs — and, as soon as an upgrade is applied, the new version's — present,
verified, unpacked and pinned, before the rollout reaches the node. The previous version's
images stay pinned until this node's calico-node runs the new one. It serves /metrics,
/healthz and /readyz, records Events on the Node, and rides out containerd restarts and
API server outages.`,
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
			a.log.Info("starting agent", zap.String("kubeconfig", from), zap.String("api", cfg.Host), zap.String("node", nodeName))
			ag := agent.New(agent.Config{
				NodeName: nodeName, Clients: clients, Resync: resync, SelfImage: selfImage, Extra: extra,
				MetricsAddr: metricsAddr, Log: a.log, Profiling: profiling,
				Root: root, ClusterDNS: clusterDNS(ctx, clients, hostfs.Root(root), kubeletConfig),
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
					if err := writeState(stateFile, "agent: cluster, Calico "+d.Version, results); err != nil {
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
	envFlag(f, &root, "root", "PRECACHE_ROOT", "/", "the node's root filesystem, for the DNS-loop check (the DaemonSet mounts it at /host)")
	envFlag(f, &kubeletConfig, "kubelet-config", "PRECACHE_KUBELET_CONFIG", "", "the kubelet's config file under --root, for its clusterDNS (default: "+strings.Join(doctor.KubeletConfigPaths, ", else ")+")")
	f.BoolVar(&profiling, "profiling", false, "serve Go's pprof under /debug/pprof/ on --metrics-address")
	f.StringArrayVar(&images, "image", nil, "more images to keep (repeatable)")
	annotateEnv(f.Lookup("image"), "PRECACHE_IMAGES")
	f.IntVar(&sf.maxDownloads, "max-concurrent-downloads", 3, "layer downloads at once")
	annotateEnv(f.Lookup("max-concurrent-downloads"), "PRECACHE_MAX_CONCURRENT_DOWNLOADS")
	return cmd
}

// clusterDNS is the kubelet's clusterDNS (its config file read under root), or the
// kube-dns/coredns Service's IPs (one GET, at start).
func clusterDNS(ctx context.Context, clients cluster.Clients, root hostfs.Root, kubeletConfig string) []string {
	if k, err := doctor.FindKubelet(root, kubeletConfig); err == nil && len(k.ClusterDNS) > 0 {
		return k.ClusterDNS
	}
	for _, name := range []string{"kube-dns", "coredns"} {
		svc, err := clients.Kube.CoreV1().Services("kube-system").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			continue
		}
		if len(svc.Spec.ClusterIPs) > 0 {
			return svc.Spec.ClusterIPs
		}
		return []string{svc.Spec.ClusterIP}
	}
	return nil
}
