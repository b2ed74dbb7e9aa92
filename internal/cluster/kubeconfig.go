package cluster

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// KubeletConfig is where a node's kubelet keeps its kubeconfig (kubeadm, Kubespray): the
// last resort of a bootstrap running on the node before anything else is configured.
const KubeletConfig = "/etc/kubernetes/kubelet.conf"

// ErrNoKubeconfig: no way to reach an API server was found.
var ErrNoKubeconfig = errors.New("no kubeconfig")

// Config finds the API server the way kubectl does: --kubeconfig (explicit), then
// $KUBECONFIG, then the in-cluster service account, then ~/.kube/config, then the
// extra paths given (e.g. KubeletConfig). It returns the config and where it came from.
func Config(explicit string, extra ...string) (*rest.Config, string, error) {
	load := func(path string) (*rest.Config, error) {
		return clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
			&clientcmd.ClientConfigLoadingRules{ExplicitPath: path}, &clientcmd.ConfigOverrides{}).ClientConfig()
	}
	if explicit != "" {
		c, err := load(explicit)
		if err != nil {
			return nil, "", fmt.Errorf("--kubeconfig %s: %w", explicit, err)
		}
		return c, explicit, nil
	}
	if env := os.Getenv("KUBECONFIG"); env != "" {
		rules := clientcmd.NewDefaultClientConfigLoadingRules() // honours the KUBECONFIG list
		c, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
		if err != nil {
			return nil, "", fmt.Errorf("$KUBECONFIG %s: %w", env, err)
		}
		return c, "$KUBECONFIG", nil
	}
	if c, err := rest.InClusterConfig(); err == nil {
		return c, "in-cluster service account", nil
	}
	paths := []string{}
	if home, err := os.UserHomeDir(); err == nil {
		paths = append(paths, filepath.Join(home, ".kube", "config"))
	}
	paths = append(paths, extra...)
	for _, p := range paths {
		if _, err := os.Stat(p); err != nil {
			continue
		}
		c, err := load(p)
		if err != nil {
			return nil, "", fmt.Errorf("%s: %w", p, err)
		}
		return c, p, nil
	}
	return nil, "", fmt.Errorf("%w: set --kubeconfig or $KUBECONFIG, run in a pod, or create ~/.kube/config", ErrNoKubeconfig)
}

// NewClients builds the typed and dynamic clients discovery reads with.
func NewClients(c *rest.Config) (Clients, error) {
	c = rest.CopyConfig(c)
	c.UserAgent = "precache"
	kube, err := kubernetes.NewForConfig(c)
	if err != nil {
		return Clients{}, err
	}
	dyn, err := dynamic.NewForConfig(c)
	if err != nil {
		return Clients{}, err
	}
	return Clients{Kube: kube, Dynamic: dyn}, nil
}
