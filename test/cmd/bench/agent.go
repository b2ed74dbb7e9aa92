package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/precache/precache/test/testenv"
)

// benchAgent runs `precache agent` against a real kube-apiserver and containerd and
// measures, once it has made the node right: idle RSS, CPU over the window, and the API
// requests it makes (from the API server's own apiserver_request_total counters).
func benchAgent(ctx context.Context, w io.Writer, bin, hosts string, window time.Duration) error {
	env := &envtest.Environment{BinaryAssetsDirectory: testenv.KubeAssets()}
	cfg, err := env.Start()
	if err != nil {
		return fmt.Errorf("envtest: %w", err)
	}
	defer env.Stop()
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	admin, err := env.AddUser(envtest.User{Name: "bench", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return err
	}
	kc, err := admin.KubeConfig()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "precache-bench-agent-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, kc, 0o600); err != nil {
		return err
	}
	img := func(c string) string { return "docker.io/calico/" + c + ":" + calicoVersion }
	sel := &metav1.LabelSelector{MatchLabels: map[string]string{"k8s-app": "calico-node"}}
	tmpl := corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: sel.MatchLabels}, Spec: corev1.PodSpec{
		InitContainers: []corev1.Container{{Name: "install-cni", Image: img("cni")}},
		Containers:     []corev1.Container{{Name: "calico-node", Image: img("node")}},
	}}
	if _, err := kube.AppsV1().DaemonSets("kube-system").Create(ctx, &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "calico-node"},
		Spec: appsv1.DaemonSetSpec{Selector: sel, Template: tmpl}}, metav1.CreateOptions{}); err != nil {
		return err
	}
	c, err := testenv.StartContainerd(ctx, testenv.ContainerdOptions{})
	if err != nil {
		return err
	}
	defer c.Stop()

	metricsAddr := freePort()
	before := counts{}
	cmd := exec.CommandContext(ctx, bin, "agent", "--kubeconfig", kubeconfig, "--node-name", "node-1", "--metrics-address", metricsAddr, "--profiling",
		"--containerd-address", c.Address, "--hosts-dir", hosts, "--state-file", filepath.Join(dir, "state.json"), "--log-format", "json")
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	deadline := time.Now().Add(5 * time.Minute)
	for !strings.Contains(logs.String(), `"msg":"reconciled"`) {
		if time.Now().After(deadline) {
			return fmt.Errorf("agent did not reconcile: %s", logs.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(5 * time.Second) // settle: watches established, GC done
	startup, err := agentRequests(metricsAddr)
	if err != nil {
		return err
	}
	cpu0, _ := cpuTicks(cmd.Process.Pid)
	time.Sleep(window)
	cpu1, _ := cpuTicks(cmd.Process.Pid)
	after, err := agentRequests(metricsAddr)
	if err != nil {
		return err
	}
	rss, _ := procStatus(cmd.Process.Pid, "VmRSS")
	hwm, _ := procStatus(cmd.Process.Pid, "VmHWM")
	anon, _ := procStatus(cmd.Process.Pid, "RssAnon")
	file, _ := procStatus(cmd.Process.Pid, "RssFile")
	heap := metricValue(metricsAddr, "go_memstats_heap_inuse_bytes")
	if resp, err := http.Get("http://" + metricsAddr + "/debug/pprof/heap"); err == nil {
		if data, err := io.ReadAll(resp.Body); err == nil {
			_ = os.WriteFile(filepath.Join(os.TempDir(), "precache-agent-heap.pprof"), data, 0o644)
		}
		resp.Body.Close()
	}
	sys := metricValue(metricsAddr, "go_memstats_sys_bytes")

	fmt.Fprintf(w, "\n### Agent\n\n`precache agent` against kube-apiserver %s (envtest) and containerd %s, a calico-node DaemonSet for %s, after its first reconcile (4 images pulled), idle for %s:\n\n",
		testenv.KubeVersion, testenv.ContainerdVersion, calicoVersion, window)
	fmt.Fprintf(w, "| measure | value |\n|---|---|\n")
	fmt.Fprintf(w, "| idle RSS | %d MiB (anonymous %d MiB, file-backed %d MiB; peak during the first pull: %d MiB) |\n", rss/1024, anon/1024, file/1024, hwm/1024)
	fmt.Fprintf(w, "| Go heap in use / obtained from the OS | %.1f MiB / %.1f MiB |\n", heap/(1<<20), sys/(1<<20))
	fmt.Fprintf(w, "| CPU while idle | %.2f s over %s (%.3f %% of one core) |\n", float64(cpu1-cpu0)/100, window, float64(cpu1-cpu0)/100/window.Seconds()*100)
	fmt.Fprintf(w, "| API requests at start (until first reconcile + 5 s), counted by the agent | %s |\n", diff(before, startup))
	fmt.Fprintf(w, "| API requests while idle | %s |\n", diff(startup, after))
	return nil
}

type counts map[string]float64

func freePort() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "127.0.0.1:19464"
	}
	defer l.Close()
	return l.Addr().String()
}

// agentRequests reads the agent's own precache_api_requests_total counters.
func agentRequests(addr string) (counts, error) {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	out := counts{}
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "precache_api_requests_total{") {
			continue
		}
		labels := line[strings.Index(line, "{")+1 : strings.LastIndex(line, "}")]
		val, _ := strconv.ParseFloat(strings.TrimSpace(line[strings.LastIndex(line, "}")+1:]), 64)
		var method, kind string
		for _, kv := range strings.Split(labels, ",") {
			k, v, _ := strings.Cut(kv, "=")
			v = strings.Trim(v, `"`)
			switch k {
			case "method":
				method = v
			case "kind":
				kind = v
			}
		}
		out[kind+" ("+method+")"] += val
	}
	return out, sc.Err()
}

func diff(a, b counts) string {
	var parts []string
	total := 0.0
	for k, v := range b {
		if d := v - a[k]; d > 0 {
			parts = append(parts, fmt.Sprintf("%s ×%.0f", k, d))
			total += d
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	sortStrings(parts)
	return fmt.Sprintf("%.0f: %s", total, strings.Join(parts, ", "))
}

func sortStrings(s []string) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

func cpuTicks(pid int) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(data[strings.LastIndex(string(data), ")")+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return ut + st, nil
}

func procStatus(pid int, key string) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, key+":") {
			f := strings.Fields(line)
			return strconv.ParseInt(f[1], 10, 64)
		}
	}
	return 0, fmt.Errorf("%s not in /proc/%d/status", key, pid)
}

// metricValue reads one unlabelled metric from the agent's /metrics.
func metricValue(addr, name string) float64 {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(raw), "\n") {
		if strings.HasPrefix(line, name+" ") {
			v, _ := strconv.ParseFloat(strings.TrimSpace(strings.TrimPrefix(line, name)), 64)
			return v
		}
	}
	return 0
}
