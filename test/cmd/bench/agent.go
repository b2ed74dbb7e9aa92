package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
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
	// The agent keeps what the cluster runs: with these two Deployments the set is the 4
	// images of the pull benchmark.
	for name, image := range map[string]string{"calico-kube-controllers": img("kube-controllers"), "calico-typha": img("typha")} {
		labels := map[string]string{"k8s-app": name}
		if _, err := kube.AppsV1().Deployments("kube-system").Create(ctx, &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: name},
			Spec: appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: labels}, Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: name, Image: image}}}}}}, metav1.CreateOptions{}); err != nil {
			return err
		}
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
	logs := &testenv.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	pid := cmd.Process.Pid
	firstTook, err := waitReconciled(ctx, logs, 1)
	if err != nil {
		return err
	}
	time.Sleep(5 * time.Second) // settle: watches established, GC done
	first, _ := readRSS(pid)
	startup, err := agentRequests(metricsAddr)
	if err != nil {
		return err
	}
	cpu0, _ := cpuTicks(pid)
	// Idle as on a node: the kubelet's probes of deploy/base/daemonset.yaml (readiness
	// every 10 s, liveness every 30 s) and a Prometheus scrape every 30 s. RSS is read once
	// a second: idle work (the GC, the probes, a watch opened again) maps pages back, so
	// the end of the window and its highest point both count.
	var top rssSplit
	tick := time.NewTicker(time.Second)
	end := time.After(window)
idle:
	for n := 1; ; n++ {
		select {
		case <-ctx.Done():
			tick.Stop()
			return ctx.Err()
		case <-end:
			break idle
		case <-tick.C:
		}
		if n%10 == 0 {
			get(metricsAddr, "/readyz")
		}
		if n%30 == 0 {
			get(metricsAddr, "/healthz")
			get(metricsAddr, "/metrics")
		}
		if r, err := readRSS(pid); err == nil && r.total > top.total {
			top = r
		}
	}
	tick.Stop()
	cpu1, _ := cpuTicks(pid)
	after, err := agentRequests(metricsAddr)
	if err != nil {
		return err
	}
	last, _ := readRSS(pid)
	hwm, _ := procStatus(pid, "VmHWM")
	heap := metricValue(metricsAddr, "go_memstats_heap_inuse_bytes")
	heapIdle := metricValue(metricsAddr, "go_memstats_heap_idle_bytes")
	released := metricValue(metricsAddr, "go_memstats_heap_released_bytes")
	if resp, err := http.Get("http://" + metricsAddr + "/debug/pprof/heap"); err == nil {
		if data, err := io.ReadAll(resp.Body); err == nil {
			_ = os.WriteFile(filepath.Join(os.TempDir(), "precache-agent-heap.pprof"), data, 0o644)
		}
		resp.Body.Close()
	}
	sys := metricValue(metricsAddr, "go_memstats_sys_bytes")
	pulled := metricValue(metricsAddr, "precache_pull_duration_seconds_count")

	// A pull after the idle window, as an upgrade's: the set's records go and containerd
	// collects their content and snapshots; the agent hears of it and pulls the set again,
	// with whatever of its binary it gave back read in again. The agent is stopped while
	// the records are removed, so it sees the removal as one change.
	faults0, _ := majorFaults(pid)
	n := len(reconciled(logs))
	if err := removeImages(ctx, c.Address, pid); err != nil {
		return err
	}
	againTook, err := waitReconciled(ctx, logs, n+1)
	if err != nil {
		return err
	}
	faults1, _ := majorFaults(pid)
	repulled := metricValue(metricsAddr, "precache_pull_duration_seconds_count") - pulled

	fmt.Fprintf(w, "\n### Agent\n\n`precache agent` against kube-apiserver %s (envtest) and containerd %s, Calico %s's calico-node DaemonSet and kube-controllers and typha Deployments, after its first reconcile (%.0f images pulled), idle for %s:\n\n",
		testenv.KubeVersion, testenv.ContainerdVersion, calicoVersion, pulled, window)
	fmt.Fprintf(w, "| measure | value |\n|---|---|\n")
	fmt.Fprintf(w, "| idle RSS, end of the window | %s |\n", last)
	fmt.Fprintf(w, "| RSS 5 s after the first reconcile | %s |\n", first)
	fmt.Fprintf(w, "| highest RSS in the window (sampled every second) | %s |\n", top)
	fmt.Fprintf(w, "| peak RSS (the first pull) | %d MiB |\n", hwm/1024)
	fmt.Fprintf(w, "| Go heap in use / idle / of which returned to the OS | %.1f MiB / %.1f MiB / %.1f MiB (obtained from the OS in all: %.1f MiB) |\n",
		heap/(1<<20), heapIdle/(1<<20), released/(1<<20), sys/(1<<20))
	fmt.Fprintf(w, "| first reconcile (the set pulled) / the same after the idle window (%.0f images pulled again) | %s / %s (%d major page faults: the binary read again) |\n",
		repulled, firstTook, againTook, faults1-faults0)
	fmt.Fprintf(w, "| CPU while idle | %.2f s over %s (%.3f %% of one core) |\n", float64(cpu1-cpu0)/100, window, float64(cpu1-cpu0)/100/window.Seconds()*100)
	fmt.Fprintf(w, "| API requests at start (until first reconcile + 5 s), counted by the agent | %s |\n", diff(before, startup))
	fmt.Fprintf(w, "| API requests while idle | %s |\n", diff(startup, after))
	return nil
}

type counts map[string]float64

// reconciled lists how long each reconcile that made the set right took, as the agent
// logged it.
func reconciled(logs *testenv.SyncBuffer) []string {
	var took []string
	for _, line := range strings.Split(logs.String(), "\n") {
		var l struct{ Msg, Took string }
		if json.Unmarshal([]byte(line), &l) == nil && l.Msg == "reconciled" {
			took = append(took, l.Took)
		}
	}
	return took
}

// waitReconciled waits for the agent's n-th reconcile that made the set right and returns
// how long it took.
func waitReconciled(ctx context.Context, logs *testenv.SyncBuffer, n int) (string, error) {
	deadline := time.Now().Add(5 * time.Minute)
	for {
		if took := reconciled(logs); len(took) >= n {
			return took[n-1], nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("agent did not reconcile (%d): %s", n, logs.String())
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// removeImages removes every image record of k8s.io and lets containerd collect what they
// held, with the agent (pid) stopped meanwhile.
func removeImages(ctx context.Context, address string, pid int) error {
	ctr := func(args ...string) ([]byte, error) {
		out, err := exec.CommandContext(ctx, testenv.CtrBinary(), append([]string{"--address", address, "-n", "k8s.io"}, args...)...).CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, out)
		}
		return out, nil
	}
	out, err := ctr("images", "ls", "-q")
	if err != nil {
		return err
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		return err
	}
	defer syscall.Kill(pid, syscall.SIGCONT)
	_, err = ctr(append([]string{"images", "rm", "--sync"}, strings.Fields(string(out))...)...)
	return err
}

// get reads an endpoint of the agent and drops the answer, as a probe or a scrape does.
func get(addr, path string) {
	if resp, err := http.Get("http://" + addr + path); err == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
}

// majorFaults is the process's count of page faults that had to read from storage.
func majorFaults(pid int) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(data[strings.LastIndex(string(data), ")")+2:]))
	return strconv.ParseInt(f[9], 10, 64)
}

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

// rssSplit is a process's resident memory, KiB: anonymous (heap, stacks, runtime) and
// file-backed (the binary's pages mapped).
type rssSplit struct{ total, anon, file int64 }

func (r rssSplit) String() string {
	return fmt.Sprintf("%.1f MiB (anonymous %.1f MiB, file-backed %.1f MiB)", float64(r.total)/1024, float64(r.anon)/1024, float64(r.file)/1024)
}

func readRSS(pid int) (rssSplit, error) {
	var r rssSplit
	var err error
	if r.total, err = procStatus(pid, "VmRSS"); err != nil {
		return r, err
	}
	if r.anon, err = procStatus(pid, "RssAnon"); err != nil {
		return r, err
	}
	r.file, err = procStatus(pid, "RssFile")
	return r, err
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
