package monitoring

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/textparse"

	"github.com/precache/precache/test/testenv"
)

// node is one simulated node: its own containerd (CRI plugin on, as on a node), its own
// registry (so it can be made to refuse without touching the other nodes), a root
// filesystem with its DNS configuration, and `precache agent` running there as the
// DaemonSet's pod would.
type node struct {
	name     string
	pod      string
	reg      *testenv.Registry
	ctrd     *testenv.Containerd
	addr     string // the agent's --metrics-address
	cmd      *exec.Cmd
	logs     *testenv.SyncBuffer
	exited   chan error
	stopOnce sync.Once
}

// startNode starts containerd, a registry holding Calico calicoVersion's images, and the
// agent, whose node resolves names through resolver (a systemd-resolved DNS= line, as
// Kubespray writes it).
func startNode(t *testing.T, name, resolver string) *node {
	t.Helper()
	needDaemons(t)
	n := &node{name: name, pod: "precache-" + name, logs: &testenv.SyncBuffer{}, exited: make(chan error, 1)}
	var err error
	if n.reg, err = testenv.StartRegistry(testenv.RegistryOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.reg.Close() })
	if _, err := n.reg.PushCalico(t.Context(), calicoVersion, "manifest", // calico.yaml's set (an internal package's constant, spelled out)
		testenv.ImageSpec{Seed: 1}); err != nil {
		t.Fatal(err)
	}
	hosts := filepath.Join(t.TempDir(), "certs.d")
	if err := testenv.WriteHostsDir(hosts, n.reg.URL(), "docker.io", "quay.io", "registry.k8s.io"); err != nil {
		t.Fatal(err)
	}
	if n.ctrd, err = testenv.StartContainerd(t.Context(), testenv.ContainerdOptions{CRI: true, HostsDir: hosts}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("containerd %s log (tail):\n%s", name, tail(n.ctrd.Log(), 20))
		}
		_ = n.ctrd.Stop()
	})
	root := kubesprayRoot(t, resolver)
	n.addr = freeAddr(t)
	n.cmd = exec.Command(binary, "agent", "--kubeconfig", adminKubecfg, "--node-name", name, "--metrics-address", n.addr, "--root", root)
	n.cmd.Env = append(os.Environ(), "CONTAINERD_ADDRESS="+n.ctrd.Address, "PRECACHE_HOSTS_DIR="+hosts, "PRECACHE_LOG_FORMAT=json",
		"PRECACHE_STATE_FILE="+filepath.Join(n.ctrd.Dir, "state.json"))
	n.cmd.Stdout, n.cmd.Stderr = n.logs, n.logs
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { n.exited <- n.cmd.Wait() }()
	t.Cleanup(func() {
		n.stop(t)
		if t.Failed() {
			t.Logf("agent %s log (tail):\n%s", name, tail(n.logs.String(), 30))
		}
	})
	return n
}

// stop ends the agent with SIGTERM, as the kubelet does.
func (n *node) stop(t *testing.T) {
	t.Helper()
	n.stopOnce.Do(func() {
		_ = n.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-n.exited:
		case <-time.After(10 * time.Second):
			_ = n.cmd.Process.Kill()
			t.Errorf("agent %s did not exit within 10s of SIGTERM", n.name)
		}
	})
}

// loseImages deletes every image record in the k8s.io namespace and lets containerd collect
// their content, as a node wiped by an aggressive image GC is: the agent must pull again.
func (n *node) loseImages(t *testing.T) {
	t.Helper()
	c, err := containerd.New(n.ctrd.Address)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := namespaces.WithNamespace(t.Context(), "k8s.io")
	imgs, err := c.ImageService().List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i, img := range imgs {
		var opts []images.DeleteOpt
		if i == len(imgs)-1 {
			opts = append(opts, images.SynchronousDelete())
		}
		if err := c.ImageService().Delete(ctx, img.Name, opts...); err != nil {
			t.Fatal(err)
		}
	}
}

// kubesprayRoot lays out a Kubespray node's resolver files (systemd-resolved's stub in
// resolv.conf, DNS= in resolved.conf, the servers it uses in its runtime file) and the
// kubelet's config naming the cluster DNS service.
func kubesprayRoot(t *testing.T, resolver string) string {
	t.Helper()
	root := t.TempDir()
	files := map[string]string{
		"etc/resolv.conf":                 "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n",
		"etc/systemd/resolved.conf":       "[Resolve]\nDNS=" + resolver + "\n",
		"run/systemd/resolve/resolv.conf": "nameserver " + resolver + "\n",
		"var/lib/kubelet/config.yaml":     "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nclusterDNS:\n- " + clusterDNSIP + "\n",
	}
	for p, c := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// scrape is one scrape of an agent, as Prometheus makes it: the samples of its /metrics
// with the target's labels, and up.
type scrape struct {
	at      time.Time
	samples []sample
}

type sample struct {
	lset labels.Labels
	v    float64
}

// value is the first sample of the metric name whose labels include match.
func (s scrape) value(name string, match ...string) (float64, bool) {
	for _, smp := range s.samples {
		if smp.lset.Get(model.MetricNameLabel) != name {
			continue
		}
		ok := true
		for i := 0; i+1 < len(match); i += 2 {
			ok = ok && smp.lset.Get(match[i]) == match[i+1]
		}
		if ok {
			return smp.v, true
		}
	}
	return 0, false
}

// scrape GETs the agent's /metrics and parses it with Prometheus' own text parser, adding
// the labels the PodMonitor gives the target (target). A failed scrape is up 0 and nothing
// else, as in Prometheus.
func (n *node) scrape(t *testing.T, target labels.Labels) scrape {
	t.Helper()
	s := scrape{at: time.Now()}
	up := 1.0
	body, err := get("http://" + n.addr + "/metrics")
	if err != nil {
		up = 0
	} else {
		p := textparse.NewPromParser(body, labels.NewSymbolTable(), false)
		for {
			e, err := p.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("parsing /metrics of %s: %v", n.name, err)
			}
			if e != textparse.EntrySeries {
				continue
			}
			var l labels.Labels
			p.Labels(&l)
			_, _, v := p.Series()
			b := labels.NewBuilder(l)
			target.Range(func(tl labels.Label) { b.Set(tl.Name, tl.Value) })
			s.samples = append(s.samples, sample{lset: b.Labels(), v: v})
		}
	}
	b := labels.NewBuilder(target)
	b.Set(model.MetricNameLabel, "up")
	s.samples = append(s.samples, sample{lset: b.Labels(), v: up})
	return s
}

// waitScrape scrapes until cond holds on a scrape, or fails after d.
func (n *node) waitScrape(t *testing.T, target labels.Labels, d time.Duration, what string, cond func(scrape) error) scrape {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		s := n.scrape(t, target)
		err := cond(s)
		if err == nil {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s: not within %s: %v", n.name, what, d, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func get(url string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", url, resp.Status)
	}
	return io.ReadAll(resp.Body)
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
