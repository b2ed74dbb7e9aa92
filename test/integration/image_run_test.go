package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/precache/precache/internal/cache"
	"github.com/precache/precache/internal/doctor"
	"github.com/precache/precache/internal/manifest"
	"github.com/precache/precache/test/testenv"
)

// TestImageRuns: the image, imported with `precache import` into a real containerd, runs
// as a container through containerd's runc shim the way the kubespray overlay's DaemonSet,
// rendered as make release renders it, says: its image reference resolved by the digest
// it names, its command, args and env, its securityContext, its hostPath volumes (each at
// the test's stand-in), host network — as the CLI (version, doctor) and as the agent against
// the API server. A digest in the overlay that is not the image's, or a setting the image
// cannot run with, fails here. PRECACHE_IMAGE_TAR gives a tar `make image` built;
// otherwise the test builds one.
func TestImageRuns(t *testing.T) {
	needAPI(t)
	needRunc(t)
	tarPath := os.Getenv("PRECACHE_IMAGE_TAR")
	if tarPath == "" {
		tarPath = buildImage(t, t.TempDir())
	}
	entry := layoutEntry(t, tarPath)
	name := entry.Annotations["io.containerd.image.name"]
	version := entry.Annotations[ocispec.AnnotationRefName]
	if name == "" || version == "" {
		t.Fatalf("%s names no image: %v", tarPath, entry.Annotations)
	}
	ds := renderedDaemonSet(t, tarPath, version, "kubespray")

	n := newNode(t)
	if r := n.precache(nil, "import", tarPath); r.code != 0 {
		t.Fatalf("precache import %s: exit %d\n%s%s", tarPath, r.code, r.stdout, r.stderr)
	}
	d := newDaemonSetPod(t, n, ds, version, tarPath, entry)
	c, ctx := d.c, d.ctx

	t.Run("version", func(t *testing.T) {
		r := d.run(t, podRun{args: []string{"version"}})
		want := fmt.Sprintf("precache %s (", version)
		if r.code != 0 || !strings.HasPrefix(r.stdout, want) || !strings.Contains(r.stdout, "linux/"+runtime.GOARCH) {
			t.Errorf("precache version: exit %d, %q; want %q… linux/%s\n%s", r.code, r.stdout, want, runtime.GOARCH, r.stderr)
		}
	})

	t.Run("doctor", func(t *testing.T) {
		manifestInstall(t, "docker.io", dockerVersion)
		root := d.nodeRoot(t, "[Resolve]\nDNS="+clusterDNSIP+"\nDomains=default.svc.cluster.local\n")
		copyNodeContainerdConfig(t, n, root)
		r := d.run(t, podRun{args: []string{"doctor", "--root", "/host", "-o", "json"}, root: root, kubeconfig: saKubecfg})
		var list []doctor.Result
		if err := json.Unmarshal([]byte(r.stdout), &list); err != nil {
			t.Fatalf("doctor -o json: exit %d, %v\n%s\n%s", r.code, err, r.stdout, r.stderr)
		}
		res := map[string]doctor.Result{}
		for _, x := range list {
			res[x.Check] = x
		}
		// The loop is read from the node's files under /host and told in the node's paths.
		if loop := res["dns-loop"]; r.code != 2 || loop.Status != doctor.Fail || !strings.Contains(strings.Join(loop.Evidence, "\n"), "/etc/systemd/resolved.conf") {
			t.Errorf("exit %d (want 2), dns-loop %+v", r.code, loop)
		}
		// containerd answered through the mounted socket, with no capabilities.
		if st := res["containerd"].Status; st != doctor.OK && st != doctor.Warn {
			t.Errorf("containerd: %+v", res["containerd"])
		}
		if res["images"].Status == doctor.Skip {
			t.Errorf("images: %+v (the API server through the mounted kubeconfig)", res["images"])
		}
	})

	t.Run("agent", func(t *testing.T) {
		manifestInstall(t, "docker.io", dockerVersion)
		if _, err := kubeClient.CoreV1().Nodes().Create(t.Context(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: imageNodeName}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = kubeClient.CoreV1().Nodes().Delete(testContext(), imageNodeName, metav1.DeleteOptions{}) })
		root := d.nodeRoot(t, "[Resolve]\nDNS="+clusterDNSIP+"\n") // the node is in the DNS loop
		// The kubelet probes the port the DaemonSet names; that must be where the agent serves
		// by default. The test's agent serves on a free port instead: the host's network is shared.
		healthz, port := d.probe(t, "livenessProbe", d.ctr.LivenessProbe)
		readyz, readyPort := d.probe(t, "readinessProbe", d.ctr.ReadinessProbe)
		help := d.run(t, podRun{args: []string{"agent", "--help"}})
		if want := fmt.Sprintf(`(default ":%d")`, port); readyPort != port || !strings.Contains(metricsFlagLine(help.stdout+help.stderr), want) {
			t.Errorf("the probes GET ports %d and %d; the agent's --metrics-address is not %s:\n%s", port, readyPort, want, metricsFlagLine(help.stdout+help.stderr))
		}
		addr := freeAddr(t)
		// The DaemonSet's args and env; the API server reached as precache's ServiceAccount.
		p := d.start(t, podRun{root: root, kubeconfig: saKubecfg, env: []string{"PRECACHE_METRICS_ADDRESS=" + addr}})
		start := time.Now()
		p.eventually(t, 60*time.Second, healthz+" over the host's network", func() error { return httpOK("http://" + addr + healthz) })
		pinned := func(refs ...string) func() error {
			return func() error {
				for _, ref := range refs {
					rec, err := c.ImageService().Get(ctx, ref)
					if err != nil {
						return err
					}
					if rec.Labels[cache.LabelCRIPinned] != "pinned" {
						return fmt.Errorf("%s not pinned: %v", ref, rec.Labels)
					}
				}
				return nil
			}
		}
		var set []string
		for _, img := range calicoSet(t, dockerVersion) {
			set = append(set, img.Ref.TagName())
		}
		healthy := time.Since(start)
		// Its own image as the DaemonSet names it: by tag and by digest, as the CRI records a pull.
		self := []string{d.ref.TagName(), d.ref.DigestName(d.ref.Digest)}
		p.eventually(t, 90*time.Second, "Calico's set and the agent's own image pinned", pinned(append(set, self...)...))
		t.Logf("agent in the container: %s after %s, %d images pinned after %s", healthz, healthy.Round(time.Millisecond), len(set)+1, time.Since(start).Round(time.Millisecond))
		p.eventually(t, 10*time.Second, readyz, func() error { return httpOK("http://" + addr + readyz) })
		p.eventually(t, 30*time.Second, "the DNS loop read from /host reported on the Node", func() error { return nodeEvent(t, imageNodeName, "Warning", "PrecacheDNSLoop") })
		if code := p.stop(t); code != 0 {
			t.Errorf("agent exit %d after SIGTERM, want 0\n%s", code, tail(p.out.String(), 30))
		}
		if testing.Verbose() {
			t.Logf("agent log (tail):\n%s", tail(p.out.String(), 8))
		}
	})
}

// metricsFlagLine is --metrics-address's line of `precache agent --help`.
func metricsFlagLine(help string) string {
	for _, line := range strings.Split(help, "\n") {
		if strings.Contains(line, "--metrics-address") {
			return strings.TrimSpace(line)
		}
	}
	return ""
}

// needRunc skips t (fails it in CI) when containerd cannot run containers here: no runc
// shim beside the test containerd, or no runc.
func needRunc(t *testing.T) {
	t.Helper()
	var missing []string
	if shim := testenv.ShimBinary(testenv.ContainerdBinary()); !executable(shim) {
		missing = append(missing, shim)
	}
	if _, err := exec.LookPath("runc"); err != nil && !executable("/usr/sbin/runc") && !executable("/usr/local/sbin/runc") {
		missing = append(missing, "runc")
	}
	if len(missing) == 0 {
		return
	}
	msg := fmt.Sprintf("cannot run containers: no %s — run `make tools` (builds the shim, installs runc as root)", strings.Join(missing, ", "))
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip("SKIPPED, " + msg + " (CI never skips)")
}

func executable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// copyNodeContainerdConfig puts the test containerd's config where doctor reads the
// node's: /etc/containerd/config.toml under the root.
func copyNodeContainerdConfig(t *testing.T, n *node, root string) {
	t.Helper()
	cfg, err := os.ReadFile(filepath.Join(n.Dir, "config.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "etc/containerd"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc/containerd/config.toml"), cfg, 0o644); err != nil {
		t.Fatal(err)
	}
}

// daemonSetPod runs the image's containers as a rendered DaemonSet's pod spec says
// (newDaemonSetPod; the translation into the OCI spec is in overlay_run_test.go).
type daemonSetPod struct {
	c    *containerd.Client
	ctx  context.Context
	img  containerd.Image // the image the DaemonSet names, found by its digest
	ref  manifest.Ref     // as the DaemonSet names it
	node *node
	pod  corev1.PodSpec   // the DaemonSet's pod template
	ctr  corev1.Container // its precache container
	seq  int
}

// imageTask is one running container of the image.
type imageTask struct {
	task containerd.Task
	wait <-chan containerd.ExitStatus
	out  *testenv.SyncBuffer
	ctx  context.Context
}

// create makes a container of the image as the DaemonSet's pod spec says, with r's
// additions, and its task (the shim starts runc's init; nothing runs yet). The container
// goes when the test ends.
func (d *daemonSetPod) create(t *testing.T, r podRun, stdout, stderr io.Writer) containerd.Task {
	t.Helper()
	d.seq++
	id := fmt.Sprintf("precache-it-%d-%d", os.Getpid(), d.seq)
	ctr, err := d.c.NewContainer(d.ctx, id,
		containerd.WithImage(d.img),
		containerd.WithSnapshotter("overlayfs"),
		containerd.WithNewSnapshot(id, d.img),
		containerd.WithNewSpec(d.specOpts(t, r, d.env(t, r), d.mounts(t, r))...),
	)
	if err != nil {
		t.Fatalf("creating the container: %v", err)
	}
	var task containerd.Task
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(d.ctx), 30*time.Second)
		defer cancel()
		if task != nil {
			if st, err := task.Status(ctx); err == nil && st.Status != containerd.Stopped {
				_ = task.Kill(ctx, syscall.SIGKILL)
				if w, err := task.Wait(ctx); err == nil {
					select {
					case <-w:
					case <-ctx.Done():
					}
				}
			}
			_, _ = task.Delete(ctx)
		}
		if err := ctr.Delete(ctx, containerd.WithSnapshotCleanup); err != nil {
			t.Logf("deleting container %s: %v", id, err)
		}
	})
	task, err = ctr.NewTask(d.ctx, cio.NewCreator(cio.WithStreams(nil, stdout, stderr)))
	if err != nil {
		t.Fatalf("creating the task (containerd's runc shim, runc): %v", err)
	}
	return task
}

// start runs a container of the image in the background (nil r.args: the DaemonSet's).
func (d *daemonSetPod) start(t *testing.T, r podRun) *imageTask {
	t.Helper()
	p := &imageTask{out: &testenv.SyncBuffer{}, ctx: d.ctx}
	p.task = d.create(t, r, p.out, p.out)
	var err error
	if p.wait, err = p.task.Wait(d.ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.task.Start(d.ctx); err != nil {
		t.Fatalf("starting %v: %v\n%s", d.args(r), err, p.out.String())
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%v in the container:\n%s", d.args(r), tail(p.out.String(), 40))
		}
	})
	return p
}

// eventually waits for f to succeed, as eventually does, and fails at once if the
// container exits meanwhile.
func (p *imageTask) eventually(t *testing.T, d time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		select {
		case st := <-p.wait:
			t.Fatalf("%s: the container exited (%d)", what, st.ExitCode())
		default:
		}
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, d, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stop sends SIGTERM and returns the exit code (-1 when it did not exit within 10s).
func (p *imageTask) stop(t *testing.T) int {
	t.Helper()
	if err := p.task.Kill(p.ctx, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case st := <-p.wait:
		p.wait = nil
		return int(st.ExitCode())
	case <-time.After(10 * time.Second):
		return -1
	}
}

// run runs a container of the image to its end; stdout and stderr are kept apart.
func (d *daemonSetPod) run(t *testing.T, r podRun) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	task := d.create(t, r, &stdout, &stderr)
	ctx, cancel := context.WithTimeout(d.ctx, 2*time.Minute)
	defer cancel()
	wait, err := task.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := task.Start(ctx); err != nil {
		t.Fatalf("starting %v: %v", d.args(r), err)
	}
	code := -1
	select {
	case st := <-wait:
		code = int(st.ExitCode())
	case <-ctx.Done():
		_ = task.Kill(d.ctx, syscall.SIGKILL)
		<-wait
	}
	took := time.Since(start)
	// Deleting the task waits for its output to be copied.
	if _, err := task.Delete(d.ctx); err != nil {
		t.Logf("deleting the task: %v", err)
	}
	return result{stdout: stdout.String(), stderr: stderr.String(), code: code, took: took}
}
