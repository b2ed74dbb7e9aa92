package main

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.uber.org/zap"

	pcontainerd "github.com/precache/precache/internal/containerd"
	"github.com/precache/precache/internal/logging"
	"github.com/precache/precache/internal/nodefiles"
)

// globalFlags are shared by every command.
type globalFlags struct {
	address     string
	namespace   string
	snapshotter string
	hostsDir    string
	dockerCfg   string
	platform    string
	logFormat   string
	verbosity   int
	// registryTimeout and registryStallTimeout: 0 turns precache's own limit off.
	registryTimeout      time.Duration
	registryStallTimeout time.Duration
	// root is where the node's root filesystem is (/ on the node, /host in the
	// DaemonSet); kubeletConfig and containerdConfig are node paths under it.
	root             string
	kubeletConfig    string
	containerdConfig string
}

type app struct {
	global globalFlags
	log    *zap.Logger
}

func newRootCommand() *cobra.Command {
	a := &app{log: zap.NewNop()}
	cmd := &cobra.Command{
		Use:   "precache",
		Short: "Keep a node's Calico images in containerd, pulled, verified, unpacked and pinned",
		Long: `precache keeps the images a node needs to bring its pod network and its DNS back in
containerd's k8s.io namespace: pulled, digest-verified, unpacked for the kubelet and pinned so
image garbage collection never removes them. A node whose resolver points at cluster DNS can
then restart calico-node without pulling anything. Discovered from the cluster and the node's
files (--kubeconfig, --from-cluster), the set is the recovery set: Calico, tigera-operator,
kube-proxy, node-local DNS, CoreDNS, the API server proxy and control-plane static pods, and
containerd's sandbox image; --only narrows it.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyEnv(cmd); err != nil {
				return &usageError{err}
			}
			if a.global.registryTimeout < 0 || a.global.registryStallTimeout < 0 {
				return &usageError{fmt.Errorf("--registry-timeout and --registry-stall-timeout cannot be negative (0 means no limit)")}
			}
			log, err := logging.New(cmd.ErrOrStderr(), logging.Format(a.global.logFormat), a.global.verbosity)
			if err != nil {
				return &usageError{err}
			}
			a.log = log
			return nil
		},
	}
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &usageError{err} })
	f := cmd.PersistentFlags()
	envFlag(f, &a.global.address, "containerd-address", "CONTAINERD_ADDRESS", "/run/containerd/containerd.sock", "containerd's socket")
	envFlag(f, &a.global.namespace, "namespace", "CONTAINERD_NAMESPACE", "k8s.io", "containerd namespace (the CRI's is k8s.io)")
	envFlag(f, &a.global.snapshotter, "snapshotter", "CONTAINERD_SNAPSHOTTER", "overlayfs", "snapshotter to unpack into (the CRI's)")
	envFlag(f, &a.global.hostsDir, "hosts-dir", "PRECACHE_HOSTS_DIR", "/etc/containerd/certs.d", "containerd registry host configuration directory (hosts.toml: mirrors, CAs, http)")
	envFlag(f, &a.global.dockerCfg, "docker-config", "PRECACHE_DOCKER_CONFIG", "", "docker config.json with registry credentials (default $DOCKER_CONFIG/config.json or ~/.docker/config.json)")
	f.DurationVar(&a.global.registryTimeout, "registry-timeout", pcontainerd.DefaultRegistryTimeout,
		"how long a registry host may take to answer a request (name, connection, TLS, first byte) before it is left for the next host of hosts.toml, or the bundle; 0: no limit of precache's own")
	annotateEnv(f.Lookup("registry-timeout"), "PRECACHE_REGISTRY_TIMEOUT")
	f.DurationVar(&a.global.registryStallTimeout, "registry-stall-timeout", pcontainerd.DefaultRegistryStallTimeout,
		"how long a download may receive nothing before it fails (a slow registry that keeps sending is waited for); 0: no limit")
	annotateEnv(f.Lookup("registry-stall-timeout"), "PRECACHE_REGISTRY_STALL_TIMEOUT")
	// The node's files, for every command that reads them (discovery, doctor). The agent
	// keeps flags of its own with the same names, environment and defaults.
	envFlag(f, &a.global.root, "root", "PRECACHE_ROOT", "/", "the node's root filesystem, where its files are read (the DaemonSet mounts it at /host)")
	envFlag(f, &a.global.kubeletConfig, "kubelet-config", "PRECACHE_KUBELET_CONFIG", "", "the kubelet's config file, under --root (default: "+strings.Join(nodefiles.KubeletConfigPaths, ", else ")+")")
	envFlag(f, &a.global.containerdConfig, "containerd-config", "PRECACHE_CONTAINERD_CONFIG", nodefiles.DefaultContainerdConfig, "containerd's config file, under --root")
	envFlag(f, &a.global.platform, "platform", "PRECACHE_PLATFORM", "", "node platform to fetch and unpack, e.g. linux/arm64 (default this node's)")
	envFlag(f, &a.global.logFormat, "log-format", "PRECACHE_LOG_FORMAT", "", "console or json (default console on a terminal, json otherwise)")
	f.CountVarP(&a.global.verbosity, "verbose", "v", "log more: -v debug, -vv the libraries' debug too")
	annotateEnv(f.Lookup("verbose"), "PRECACHE_VERBOSE")

	cmd.AddCommand(
		newAgentCommand(a),
		newBootstrapCommand(a),
		newDoctorCommand(a),
		newStatusCommand(a),
		newImagesCommand(a),
		newImportCommand(a),
		newBundleCommand(a),
		newVersionCommand(),
	)
	return cmd
}

const envAnnotation = "precache/env"

// envFlag defines a string flag that falls back to an environment variable.
func envFlag(f *pflag.FlagSet, p *string, name, env, def, usage string) {
	f.StringVar(p, name, def, usage)
	annotateEnv(f.Lookup(name), env)
}

func annotateEnv(fl *pflag.Flag, env string) {
	fl.Usage += " [$" + env + "]"
	if fl.Annotations == nil {
		fl.Annotations = map[string][]string{}
	}
	fl.Annotations[envAnnotation] = []string{env}
}

// applyEnv sets every flag not given on the command line from its environment variable.
func applyEnv(cmd *cobra.Command) error {
	var errs []string
	visit := func(fl *pflag.Flag) {
		env := fl.Annotations[envAnnotation]
		if fl.Changed || len(env) == 0 {
			return
		}
		v, ok := os.LookupEnv(env[0])
		if !ok {
			return
		}
		if sv, ok := fl.Value.(pflag.SliceValue); ok {
			if err := sv.Replace(splitList(v)); err != nil {
				errs = append(errs, fmt.Sprintf("$%s: %v", env[0], err))
			}
			return
		}
		if fl.Value.Type() == "count" {
			// A count flag adds on Set; the variable gives the level.
			if v == "" {
				return
			}
			if err := fl.Value.Set(v); err != nil {
				errs = append(errs, fmt.Sprintf("$%s=%q: %v", env[0], v, err))
			}
			return
		}
		if err := fl.Value.Set(v); err != nil {
			errs = append(errs, fmt.Sprintf("$%s=%q: %v", env[0], v, err))
		}
	}
	cmd.Flags().VisitAll(visit)
	cmd.InheritedFlags().VisitAll(visit)
	if len(errs) > 0 {
		return fmt.Errorf("invalid environment: %s", strings.Join(errs, "; "))
	}
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == '\n' }) {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
