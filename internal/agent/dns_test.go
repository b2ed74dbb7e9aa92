package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/record"

	"github.com/precache/precache/internal/cluster"
)

// nodeRoot writes a node's files under a fresh root: path → content, or "-> DEST" for a
// symbolic link to DEST as written.
func nodeRoot(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for p, c := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		var err error
		if dest, ok := strings.CutPrefix(c, "-> "); ok {
			err = os.Symlink(dest, full)
		} else {
			err = os.WriteFile(full, []byte(c), 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// kubesprayNode is an Ubuntu node as Kubespray leaves it: /etc/resolv.conf a link to
// systemd-resolved's stub, DNS= in Kubespray's drop-in, the kubelet's config at Kubespray's
// path with clusterDNS dns and resolvConf systemd-resolved's own list (which holds dns).
func kubesprayNode(t *testing.T, dns string) string {
	t.Helper()
	return nodeRoot(t, map[string]string{
		"etc/resolv.conf":                            "-> /run/systemd/resolve/stub-resolv.conf",
		"run/systemd/resolve/stub-resolv.conf":       "nameserver 127.0.0.53\noptions edns0 trust-ad\n",
		"run/systemd/resolve/resolv.conf":            "nameserver " + dns + "\n",
		"etc/systemd/resolved.conf.d/kubespray.conf": "[Resolve]\nDNS=" + dns + "\nFallbackDNS=\n",
		"etc/kubernetes/kubelet-config.yaml": "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nclusterDNS:\n- " + dns +
			"\nresolvConf: \"/run/systemd/resolve/resolv.conf\"\n",
	})
}

// nodelocaldnsConfigMap is Kubespray's nodelocaldns ConfigMap (nodelocaldns-config.yml.j2,
// abridged): cluster names to CoreDNS, the rest to upstream (its default, with
// upstream_dns_servers empty: /etc/resolv.conf).
func nodelocaldnsConfigMap(upstream string) *corev1.ConfigMap {
	corefile := "cluster.local:53 {\n    errors\n    bind 169.254.25.10\n    forward . 10.233.0.3 {\n        force_tcp\n    }\n}\n" +
		".:53 {\n    errors\n    cache 30\n    reload\n    loop\n    bind 169.254.25.10\n    forward . " + upstream + "\n    prometheus :9253\n}\n"
	return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "nodelocaldns"}, Data: map[string]string{"Corefile": corefile}}
}

func coredns() *corev1.Service {
	return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "coredns"},
		Spec: corev1.ServiceSpec{ClusterIP: "10.233.0.3", ClusterIPs: []string{"10.233.0.3"}}}
}

// dnsAgent is an agent on a node root whose API serves objs, recording its Events.
func dnsAgent(t *testing.T, root string, objs ...runtime.Object) (*Agent, *fake.Clientset, *record.FakeRecorder) {
	t.Helper()
	kube := fake.NewClientset(objs...)
	a := New(Config{Root: root, NodeName: "n1", Clients: cluster.Clients{Kube: kube}})
	rec := record.NewFakeRecorder(10)
	a.recorder = rec
	return a, kube, rec
}

func gauge(t *testing.T, a *Agent, name string) float64 {
	t.Helper()
	mfs, err := a.metrics.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

func events(rec *record.FakeRecorder) []string {
	var out []string
	for {
		select {
		case e := <-rec.Events:
			out = append(out, e)
		default:
			return out
		}
	}
}

// TestDNSLoopAsDoctorSeesIt: the agent's precache_dns_depends_on_cluster and Node Event
// follow doctor's dns-loop check with doctor's inputs. On Kubespray's default node-local
// DNS, whose ConfigMap forwards names outside the cluster to its resolv.conf — the
// kubelet's resolvConf, which names node-local DNS again — nothing outside the cluster is
// reached: 1, and a Warning that names node-local DNS. With upstream servers it is 0.
func TestDNSLoopAsDoctorSeesIt(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		dns    string
		objs   []runtime.Object
		metric float64
		event  string // in the Warning Event; "" for none
	}{
		{
			name: "node-local DNS forwarding to its resolv.conf (Kubespray's default)",
			dns:  "169.254.25.10", objs: []runtime.Object{coredns(), nodelocaldnsConfigMap("/etc/resolv.conf")},
			metric: 1, event: "node-local DNS sends names outside the cluster back into the cluster",
		},
		{
			name: "node-local DNS forwarding to upstream_dns_servers",
			dns:  "169.254.25.10", objs: []runtime.Object{coredns(), nodelocaldnsConfigMap("192.0.2.53 192.0.2.54")},
			metric: 0,
		},
		{
			name: "node-local DNS whose ConfigMap is not there",
			dns:  "169.254.25.10", objs: []runtime.Object{coredns()},
			metric: 0,
		},
		{
			name: "the CoreDNS service IP (enable_nodelocaldns: false)",
			dns:  "10.233.0.3", objs: []runtime.Object{coredns()},
			metric: 1, event: "the CoreDNS service (10.233.0.3",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			a, _, rec := dnsAgent(t, kubesprayNode(t, tt.dns), tt.objs...)
			a.checkDNS(t.Context())
			if got := gauge(t, a, "precache_dns_depends_on_cluster"); got != tt.metric {
				t.Errorf("precache_dns_depends_on_cluster %v, want %v", got, tt.metric)
			}
			evs := events(rec)
			switch {
			case tt.event == "" && len(evs) > 0:
				t.Errorf("events %q, want none", evs)
			case tt.event != "" && (len(evs) != 1 || !strings.HasPrefix(evs[0], "Warning PrecacheDNSLoop ") || !strings.Contains(evs[0], tt.event)):
				t.Errorf("events %q, want one Warning PrecacheDNSLoop saying %q", evs, tt.event)
			}
		})
	}
}

// TestDNSObjectsReadOncePerResync: the API's DNS objects are read at the first check and
// again at each resync, not at every reconcile; a read that fails keeps the last verdict
// (an API outage is not a DNS change), and a change seen at the resync is reported.
func TestDNSObjectsReadOncePerResync(t *testing.T) {
	t.Parallel()
	a, kube, rec := dnsAgent(t, kubesprayNode(t, "169.254.25.10"), coredns(), nodelocaldnsConfigMap("/etc/resolv.conf"))
	resync := func() {
		a.mu.Lock()
		a.dns.readAt = time.Now().Add(-a.cfg.Resync)
		a.mu.Unlock()
	}
	check := func(what string, reads bool, metric float64, event string) {
		t.Helper()
		before := len(kube.Actions())
		a.checkDNS(t.Context())
		if n := len(kube.Actions()) - before; reads != (n > 0) {
			t.Errorf("%s: %d API requests, want reads: %t", what, n, reads)
		}
		if got := gauge(t, a, "precache_dns_depends_on_cluster"); got != metric {
			t.Errorf("%s: precache_dns_depends_on_cluster %v, want %v", what, got, metric)
		}
		evs := events(rec)
		if event == "" && len(evs) > 0 || event != "" && (len(evs) != 1 || !strings.Contains(evs[0], event)) {
			t.Errorf("%s: events %q, want %q", what, evs, event)
		}
	}
	check("the first check", true, 1, "Warning PrecacheDNSLoop")
	check("the next reconcile", false, 1, "")

	// The API fails at the resync: the verdict stays.
	kube.PrependReactor("get", "configmaps", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewServiceUnavailable("the API server is restarting")
	})
	resync()
	check("a resync whose read fails", true, 1, "")
	check("the reconcile after it", false, 1, "")

	// upstream_dns_servers set (the ConfigMap now forwards out of the cluster): seen at the resync.
	kube.ReactionChain = kube.ReactionChain[1:]
	if _, err := kube.CoreV1().ConfigMaps("kube-system").Update(t.Context(), nodelocaldnsConfigMap("192.0.2.53"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	check("before the resync", false, 1, "")
	resync()
	check("at the resync", true, 0, "Normal PrecacheDNSLoopResolved")
}
