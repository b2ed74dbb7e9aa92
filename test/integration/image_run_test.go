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
	"github.com/containerd/containerd/v2/pkg/oci"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/precache/precache/internal/cache"
	"github.com/precache/precache/internal/doctor"
	"github.com/precache/precache/test/testenv"
)

// TestImageRuns: the image, imported with `precache import` into a real containerd, runs
// as a container through containerd's runc shim the way deploy/base/daemonset.yaml runs
// it — host network, containerd's socket, the node's root read-only at /host, read-only
// root filesystem, no capabilities, uid 0 — as the CLI (version, doctor) and as the agent
// against the API server. PRECACHE_IMAGE_TAR gives a tar `make image` built; otherwise the
// test builds one.
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

	n := newNode(t)
	if r := n.precache(nil, "import", tarPath); r.code != 0 {
		t.Fatalf("precache import %s: exit %d\n%s%s", tarPath, r.code, r.stdout, r.stderr)
	}
	c, ctx := n.client()
	img, err := c.GetImage(ctx, name)
	if err != nil {
		t.Fatalf("%s after import: %v", name, err)
	}
	if img.Target().Digest != entry.Digest {
		t.Fatalf("%s is %s in containerd, %s in the tar", name, img.Target().Digest, entry.Digest)
	}
	d := &daemonSetPod{c: c, ctx: ctx, img: img, node: n}

	t.Run("version", func(t *testing.T) {
		r := d.run(t, []string{"version"}, nil, nil)
		want := fmt.Sprintf("precache %s (", version)
		if r.code != 0 || !strings.HasPrefix(r.stdout, want) || !strings.Contains(r.stdout, "linux/"+runtime.GOARCH) {
			t.Errorf("precache version: exit %d, %q; want %q… linux/%s\n%s", r.code, r.stdout, want, runtime.GOARCH, r.stderr)
		}
	})

	t.Run("doctor", func(t *testing.T) {
		manifestInstall(t, "docker.io", dockerVersion)
		root := kubesprayRoot(t, "[Resolve]\nDNS="+clusterDNSIP+"\nDomains=default.svc.cluster.local\n")
		copyNodeContainerdConfig(t, n, root)
		r := d.run(t, []string{"doctor", "--root", "/host", "-o", "json"}, []string{"KUBECONFIG=/etc/precache/kubeconfig"}, d.mounts(t, root, saKubecfg))
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
		const nodeName = "image-node"
		if _, err := kubeClient.CoreV1().Nodes().Create(t.Context(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = kubeClient.CoreV1().Nodes().Delete(testContext(), nodeName, metav1.DeleteOptions{}) })
		root := kubesprayRoot(t, "[Resolve]\nDNS="+clusterDNSIP+"\n") // the node is in the DNS loop
		addr := freeAddr(t)
		// As the DaemonSet: args agent --root=/host, NODE_NAME from the downward API, the
		// agent's own image kept too; the API server reached as precache's ServiceAccount.
		p := d.start(t, []string{"agent", "--root=/host"}, []string{
			"NODE_NAME=" + nodeName, "PRECACHE_SELF_IMAGE=" + name, "PRECACHE_LOG_FORMAT=json",
			"KUBECONFIG=/etc/precache/kubeconfig", "PRECACHE_METRICS_ADDRESS=" + addr, "PRECACHE_HOSTS_DIR=" + hostsDir,
		}, d.mounts(t, root, saKubecfg))
		start := time.Now()
		p.eventually(t, 60*time.Second, "/healthz over the host's network", func() error { return httpOK("http://" + addr + "/healthz") })
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
		p.eventually(t, 90*time.Second, "Calico's set and the agent's own image pinned", pinned(append(set, name)...))
		t.Logf("agent in the container: /healthz after %s, %d images pinned after %s", healthy.Round(time.Millisecond), len(set)+1, time.Since(start).Round(time.Millisecond))
		p.eventually(t, 10*time.Second, "/readyz", func() error { return httpOK("http://" + addr + "/readyz") })
		p.eventually(t, 30*time.Second, "the DNS loop read from /host reported on the Node", func() error { return nodeEvent(t, nodeName, "Warning", "PrecacheDNSLoop") })
		if code := p.stop(t); code != 0 {
			t.Errorf("agent exit %d after SIGTERM, want 0\n%s", code, tail(p.out.String(), 30))
		}
		if testing.Verbose() {
			t.Logf("agent log (tail):\n%s", tail(p.out.String(), 8))
		}
	})
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

// daemonSetPod runs the image's containers as deploy/base/daemonset.yaml's pod spec would.
type daemonSetPod struct {
	c    *containerd.Client
	ctx  context.Context
	img  containerd.Image
	node *node
	seq  int
}

// mounts are the DaemonSet's volumes: containerd's socket, the hosts dir (at its own path,
// so containerd's transfer service reads the same one), precache's state directory, the
// node's root read-only at /host; and a kubeconfig standing in for the ServiceAccount's
// token.
func (d *daemonSetPod) mounts(t *testing.T, root, kubeconfig string) []specs.Mount {
	t.Helper()
	state := t.TempDir()
	ms := []specs.Mount{
		{Type: "bind", Source: d.node.Address, Destination: "/run/containerd/containerd.sock", Options: []string{"bind", "rw"}},
		{Type: "bind", Source: hostsDir, Destination: hostsDir, Options: []string{"rbind", "ro"}},
		{Type: "bind", Source: state, Destination: "/var/lib/precache", Options: []string{"rbind", "rw"}},
		{Type: "bind", Source: root, Destination: "/host", Options: []string{"rbind", "ro"}},
	}
	if kubeconfig != "" {
		ms = append(ms, specs.Mount{Type: "bind", Source: kubeconfig, Destination: "/etc/precache/kubeconfig", Options: []string{"bind", "ro"}})
	}
	return ms
}

// imageTask is one running container of the image.
type imageTask struct {
	task containerd.Task
	wait <-chan containerd.ExitStatus
	out  *syncBuffer
	ctx  context.Context
}

// create makes a container of the image with args after the entrypoint, and its task (the
// shim starts runc's init; nothing runs yet). The spec is the DaemonSet's pod settings
// and securityContext. The container goes when the test ends.
func (d *daemonSetPod) create(t *testing.T, args, env []string, mounts []specs.Mount, stdout, stderr io.Writer) containerd.Task {
	t.Helper()
	d.seq++
	id := fmt.Sprintf("precache-it-%d-%d", os.Getpid(), d.seq)
	ctr, err := d.c.NewContainer(d.ctx, id,
		containerd.WithImage(d.img),
		containerd.WithSnapshotter("overlayfs"),
		containerd.WithNewSnapshot(id, d.img),
		containerd.WithNewSpec(
			oci.WithImageConfigArgs(d.img, args),
			oci.WithUserID(0),                             // runAsUser: 0 (the image's own default is 65532)
			oci.WithHostNamespace(specs.NetworkNamespace), // hostNetwork: true
			oci.WithHostHostsFile,
			oci.WithHostResolvconf,    // dnsPolicy: Default, the node's resolv.conf
			oci.WithRootFSReadonly(),  // readOnlyRootFilesystem: true
			oci.WithCapabilities(nil), // capabilities: drop: [ALL]
			oci.WithNoNewPrivileges,   // allowPrivilegeEscalation: false
			oci.WithEnv(env),
			oci.WithMounts(mounts),
		),
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

// start runs a container of the image in the background.
func (d *daemonSetPod) start(t *testing.T, args, env []string, mounts []specs.Mount) *imageTask {
	t.Helper()
	p := &imageTask{out: &syncBuffer{}, ctx: d.ctx}
	p.task = d.create(t, args, env, mounts, p.out, p.out)
	var err error
	if p.wait, err = p.task.Wait(d.ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.task.Start(d.ctx); err != nil {
		t.Fatalf("starting %v: %v\n%s", args, err, p.out.String())
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%v in the container:\n%s", args, tail(p.out.String(), 40))
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
func (d *daemonSetPod) run(t *testing.T, args, env []string, mounts []specs.Mount) result {
	t.Helper()
	if mounts == nil {
		mounts = d.mounts(t, t.TempDir(), "")
	}
	var stdout, stderr bytes.Buffer
	task := d.create(t, args, env, mounts, &stdout, &stderr)
	ctx, cancel := context.WithTimeout(d.ctx, 2*time.Minute)
	defer cancel()
	wait, err := task.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := task.Start(ctx); err != nil {
		t.Fatalf("starting %v: %v", args, err)
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
