package integration

import (
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
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/platforms"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/precache/precache/internal/cache"
	"github.com/precache/precache/internal/cluster"
	pcontainerd "github.com/precache/precache/internal/containerd"
	"github.com/precache/precache/internal/manifest"
	"github.com/precache/precache/test/testenv"
)

// TestAgentFollowsAnUpgrade: the agent against the real API server and a real containerd.
// Changing the DaemonSet's tag pre-pulls and pins the new images within seconds; the old
// ones stay pinned until this node's calico-node pod runs the new version.
func TestAgentFollowsAnUpgrade(t *testing.T) {
	needAPI(t)
	const oldV, newV = dockerVersion, "v3.29.1"
	if _, err := reg.PushCalico(t.Context(), newV, manifest.VariantManifest, testenv.ImageSpec{Seed: 40}); err != nil {
		t.Fatal(err)
	}
	manifestInstall(t, "docker.io", oldV)
	const self = "docker.io/precache/precache:it"
	if _, err := reg.Push(t.Context(), "precache/precache", "it", testenv.ImageSpec{Seed: 41}); err != nil {
		t.Fatal(err)
	}
	const nodeName = "node-1"
	if _, err := kubeClient.CoreV1().Nodes().Create(t.Context(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = kubeClient.CoreV1().Nodes().Delete(testContext(), nodeName, metav1.DeleteOptions{}) })
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "calico-node-abcde", Labels: map[string]string{"k8s-app": "calico-node"}},
		Spec:       corev1.PodSpec{NodeName: nodeName, Containers: []corev1.Container{{Name: "calico-node", Image: "docker.io/calico/node:" + oldV}}},
	}
	if _, err := kubeClient.CoreV1().Pods("kube-system").Create(t.Context(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = kubeClient.CoreV1().Pods("kube-system").Delete(testContext(), pod.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
	})

	n := newNode(t)
	addr := freeAddr(t)
	var logs bytes.Buffer
	root := kubesprayRoot(t, "[Resolve]\nDNS="+clusterDNSIP+"\n") // the node is in the DNS loop
	cmd := exec.Command(binary, "agent", "--kubeconfig", adminKubecfg, "--node-name", nodeName, "--metrics-address", addr, "--resync", "1h", "--root", root, "--self-image", self)
	cmd.Env = append(os.Environ(), "CONTAINERD_ADDRESS="+n.Address, "PRECACHE_HOSTS_DIR="+hostsDir, "PRECACHE_LOG_FORMAT=json",
		"PRECACHE_STATE_FILE="+filepath.Join(n.Dir, "state.json"))
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		if t.Failed() {
			t.Logf("agent log:\n%s", tail(logs.String(), 40))
		}
	})

	pinnedSet := func(version string) func() error {
		return func() error {
			s, err := pcontainerd.Open(t.Context(), pcontainerd.Config{Address: n.Address, Namespace: "k8s.io", Snapshotter: "overlayfs"})
			if err != nil {
				return err // containerd may be restarting
			}
			defer s.Close()
			for _, img := range calicoSet(t, version) {
				rec, err := s.Image(t.Context(), img.Ref.TagName())
				if err != nil {
					return err
				}
				if rec.Labels[cache.LabelCRIPinned] != "pinned" {
					return fmt.Errorf("%s not pinned", img.Ref.TagName())
				}
			}
			return nil
		}
	}
	start := time.Now()
	eventually(t, 60*time.Second, "the running version's images pinned", pinnedSet(oldV))
	t.Logf("agent made %s right %s after start", oldV, time.Since(start).Round(time.Millisecond))
	// The agent's own image is part of the same reconcile (the fifth image, after the four).
	eventually(t, 30*time.Second, "the agent's own image pinned", func() error {
		s, err := pcontainerd.Open(t.Context(), pcontainerd.Config{Address: n.Address, Namespace: "k8s.io", Snapshotter: "overlayfs"})
		if err != nil {
			return err
		}
		defer s.Close()
		rec, err := s.Image(t.Context(), self)
		if err != nil {
			return err
		}
		if rec.Labels[cache.LabelCRIPinned] != "pinned" {
			return fmt.Errorf("labels %v", rec.Labels)
		}
		return nil
	})
	eventually(t, 10*time.Second, "/readyz ok", func() error { return httpOK("http://" + addr + "/readyz") })

	// An upgrade is applied as kubectl apply -f calico-typha.yaml applies it: the DaemonSet,
	// then the kube-controllers and typha Deployments, move to the new tag.
	changed := time.Now()
	upgradeWorkloads(t, oldV, newV)
	eventually(t, 30*time.Second, "the new version's images pinned", pinnedSet(newV))
	t.Logf("new version pre-pulled and pinned %s after the DaemonSet changed", time.Since(changed).Round(time.Millisecond))
	if err := pinnedSet(oldV)(); err != nil {
		t.Fatalf("old images unpinned before the rollout reached the node: %v", err)
	}

	// The rollout reaches this node: its calico-node pod now runs the new version.
	p, err := kubeClient.CoreV1().Pods("kube-system").Get(t.Context(), pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Spec.Containers[0].Image = "docker.io/calico/node:" + newV
	if _, err := kubeClient.CoreV1().Pods("kube-system").Update(t.Context(), p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the old version's images unpinned", func() error {
		if pinnedSet(oldV)() == nil {
			return fmt.Errorf("still pinned")
		}
		for _, img := range calicoSet(t, oldV) {
			rec, err := n.store().Image(t.Context(), img.Ref.TagName())
			if err != nil {
				return err
			}
			if rec.Labels[cache.LabelCRIPinned] == "pinned" {
				return fmt.Errorf("%s still pinned", img.Ref.TagName())
			}
		}
		return nil
	})
	if err := pinnedSet(newV)(); err != nil {
		t.Fatalf("new images not pinned after the rollout: %v", err)
	}

	// containerd crashes and stays down a moment: the agent reports it (readyz, a Warning
	// Event on the Node) and recovers by itself once containerd is back (a Normal Event).
	unpin := calicoSet(t, newV)[0].Ref.TagName()
	rec, err := n.store().Image(t.Context(), unpin)
	if err != nil {
		t.Fatal(err)
	}
	rec.Labels = map[string]string{}
	n.putImage(rec) // something to repair once containerd is back
	go func() { _ = n.Restart(3 * time.Second) }()
	time.Sleep(200 * time.Millisecond)
	// Any change triggers a reconcile; touch the DaemonSet's labels.
	touch(t)
	eventually(t, 20*time.Second, "a Warning Event on the Node", func() error { return nodeEvent(t, nodeName, "Warning", "PrecacheImagesNotRight") })
	eventually(t, 60*time.Second, "recovery after the containerd restart", func() error {
		if err := pinnedSet(newV)(); err != nil {
			return err
		}
		return nodeEvent(t, nodeName, "Normal", "PrecacheRecovered")
	})

	body := httpGet(t, "http://"+addr+"/metrics")
	if err := nodeEvent(t, nodeName, "Warning", "PrecacheDNSLoop"); err != nil {
		t.Errorf("the DNS loop was not reported on the Node: %v", err)
	}
	for _, want := range []string{"precache_images_desired 5", "precache_images_pinned 5", "precache_reconciles_total{result=\"ok\"}", "precache_last_success_timestamp_seconds",
		"precache_dns_depends_on_cluster 1",
		// calico-node and this node's pods in kube-system and calico-system; kube-system's
		// DaemonSets and Deployments and the tigera-operator Deployment (the rest of the
		// recovery set): 7 watches, kept open while idle.
		"precache_api_requests_total{kind=\"watch\",method=\"GET\"} 7"} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	// SIGTERM: a clean, prompt exit.
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("agent exit after SIGTERM: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("agent did not exit within 10s of SIGTERM")
	}
}

// upgradeWorkloads moves the images of calico-node, calico-kube-controllers and
// calico-typha in kube-system from one release to another, in the order of the release
// manifest.
func upgradeWorkloads(t *testing.T, from, to string) {
	t.Helper()
	move := func(spec *corev1.PodSpec) {
		for _, cs := range [][]corev1.Container{spec.InitContainers, spec.Containers} {
			for i := range cs {
				cs[i].Image = strings.Replace(cs[i].Image, ":"+from, ":"+to, 1)
			}
		}
	}
	ds, err := kubeClient.AppsV1().DaemonSets("kube-system").Get(t.Context(), "calico-node", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	move(&ds.Spec.Template.Spec)
	if _, err := kubeClient.AppsV1().DaemonSets("kube-system").Update(t.Context(), ds, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"calico-kube-controllers", "calico-typha"} {
		d, err := kubeClient.AppsV1().Deployments("kube-system").Get(t.Context(), name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		move(&d.Spec.Template.Spec)
		if _, err := kubeClient.AppsV1().Deployments("kube-system").Update(t.Context(), d, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

func eventually(t *testing.T, d time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
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

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func httpOK(url string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("%s: %d %s", url, resp.StatusCode, b)
	}
	return nil
}

// fetch GETs url's body, or says why not.
func fetch(url string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func touch(t *testing.T) {
	t.Helper()
	ds, err := kubeClient.AppsV1().DaemonSets("kube-system").Get(t.Context(), "calico-node", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ds.Labels == nil {
		ds.Labels = map[string]string{}
	}
	ds.Labels["touched"] = time.Now().Format("150405.000")
	if _, err := kubeClient.AppsV1().DaemonSets("kube-system").Update(t.Context(), ds, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// nodeEvent finds an Event of type typ and reason from precache about the Node.
func nodeEvent(t *testing.T, node, typ, reason string) error {
	evs, err := kubeClient.CoreV1().Events("default").List(t.Context(), metav1.ListOptions{})
	if err != nil {
		return err
	}
	var seen []string
	for _, e := range evs.Items {
		seen = append(seen, e.Type+"/"+e.Reason)
		if e.InvolvedObject.Kind == "Node" && e.InvolvedObject.Name == node && e.Type == typ && e.Reason == reason && e.Source.Component == "precache" {
			return nil
		}
	}
	return fmt.Errorf("no %s event for node %s; events: %v", typ, node, seen)
}

// TestAgentRepairsWhatContainerdLoses: with the resync an hour away, a wanted record
// deleted in containerd (one name, then all three with their content collected, as
// `crictl rmi` and the kubelet's image GC do) is back, pinned, within seconds: the agent
// follows containerd's image events. Its own writes do not keep it reconciling.
func TestAgentRepairsWhatContainerdLoses(t *testing.T) {
	needAPI(t)
	manifestInstall(t, "docker.io", dockerVersion)
	n := newNode(t)
	p := startAgent(t, n, nil, "--resync", "1h")
	c, ctx := n.client()
	node := "docker.io/calico/node:" + dockerVersion
	cni := "docker.io/calico/cni:" + dockerVersion
	names := func(tag string) []string {
		img, err := c.ImageService().Get(ctx, tag)
		if err != nil {
			t.Fatal(err)
		}
		id, err := img.Config(ctx, c.ContentStore(), platforms.Default())
		if err != nil {
			t.Fatal(err)
		}
		return []string{tag, manifest.MustParseRef(tag).DigestName(img.Target.Digest), id.Digest.String()}
	}
	pinnedByPrecache := func(names ...string) func() error {
		return func() error {
			for _, name := range names {
				img, err := c.ImageService().Get(ctx, name)
				if err != nil {
					return err
				}
				if img.Labels[cache.LabelCRIPinned] != "pinned" || img.Labels[cache.LabelPinnedBy] != "true" || img.Labels[cache.LabelManaged] != "true" {
					return fmt.Errorf("%s: labels %v", name, img.Labels)
				}
			}
			return nil
		}
	}
	eventually(t, 60*time.Second, "the set pinned", pinnedByPrecache(node, cni))
	all := names(node)
	eventually(t, 10*time.Second, "all three names pinned", pinnedByPrecache(all...))
	eventually(t, 10*time.Second, "/readyz ok", func() error { return httpOK("http://" + p.addr + "/readyz") })

	// One name deleted (ctr images rm): the content is still referenced by the others.
	start := time.Now()
	if err := c.ImageService().Delete(ctx, node); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the deleted tag record back", pinnedByPrecache(all...))
	t.Logf("one record deleted: back in %s", time.Since(start).Round(time.Millisecond))

	// Its pin removed by someone else.
	if _, err := c.ImageService().Update(ctx, images.Image{Name: all[1]}, "labels."+cache.LabelCRIPinned); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the pin back", pinnedByPrecache(all...))

	// Every name deleted and the content collected, as crictl rmi does: pulled again.
	start = time.Now()
	for i, name := range all {
		var opts []images.DeleteOpt
		if i == len(all)-1 {
			opts = append(opts, images.SynchronousDelete())
		}
		if err := c.ImageService().Delete(ctx, name, opts...); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 15*time.Second, "the image pulled again and pinned under its three names", pinnedByPrecache(all...))
	t.Logf("image removed with its content: back in %s", time.Since(start).Round(time.Millisecond))
	if n.PinningSupported() {
		if img, ok := n.criImages(node)[node]; !ok || !img.Pinned {
			t.Errorf("the kubelet's view of %s: %+v, want pinned", node, img)
		}
	}

	// The agent's own writes came back as events; once they are handled it stays quiet.
	time.Sleep(time.Second)
	before := p.reconciles(t)
	time.Sleep(2 * time.Second)
	if after := p.reconciles(t); after != before {
		t.Errorf("the agent keeps reconciling with nothing changing: %v reconciles in 2s", after-before)
	}
	p.stop(t)
}

// TestAgentLeavesOthersPins: an image someone else pinned (the CRI pins its sandbox
// image), that precache wanted too and then stops wanting, keeps its pin; what precache
// pinned itself is unpinned.
func TestAgentLeavesOthersPins(t *testing.T) {
	needAPI(t)
	const (
		pause   = "registry.k8s.io/pause:3.10"
		extra   = "docker.io/precache/extra:1"
		ownNode = "node-pins"
	)
	hosts := filepath.Join(t.TempDir(), "certs.d")
	if err := testenv.WriteHostsDir(hosts, reg.URL(), "docker.io", "quay.io", "registry.k8s.io"); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Push(t.Context(), "pause", "3.10", testenv.ImageSpec{Seed: 50}); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Push(t.Context(), "precache/extra", "1", testenv.ImageSpec{Seed: 51}); err != nil {
		t.Fatal(err)
	}
	manifestInstall(t, "docker.io", dockerVersion)
	runCalicoNode(t, ownNode, "docker.io/calico/node:"+dockerVersion) // unpinning is on
	n := newNode(t)

	// The sandbox image as the CRI leaves it: content stored, the record pinned by the CRI.
	s, err := pcontainerd.Open(t.Context(), pcontainerd.Config{Address: n.Address, Namespace: "k8s.io", Snapshotter: "overlayfs", HostsDir: hosts})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	desc, err := s.Resolve(t.Context(), pause)
	if err != nil {
		t.Fatal(err)
	}
	lctx, done, err := s.WithLease(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Fetch(lctx, manifest.MustParseRef(pause).DigestName(desc.Digest), desc); err != nil {
		t.Fatal(err)
	}
	c, ctx := n.client()
	if _, err := c.ImageService().Create(ctx, images.Image{Name: pause, Target: desc, Labels: map[string]string{
		cache.LabelCRIManaged: "managed", cache.LabelCRIPinned: "pinned"}}); err != nil {
		t.Fatal(err)
	}
	if err := done(t.Context()); err != nil {
		t.Fatal(err)
	}
	labels := func(name string) (map[string]string, error) {
		img, err := c.ImageService().Get(ctx, name)
		return img.Labels, err
	}

	env := []string{"PRECACHE_HOSTS_DIR=" + hosts}
	p := startAgent(t, n, env, "--node-name", ownNode, "--image", pause, "--image", extra)
	eventually(t, 60*time.Second, "both extra images kept", func() error {
		for _, name := range []string{pause, extra} {
			l, err := labels(name)
			if err != nil {
				return err
			}
			if l[cache.LabelManaged] != "true" || l[cache.LabelCRIPinned] != "pinned" {
				return fmt.Errorf("%s: labels %v", name, l)
			}
		}
		return nil
	})
	if l, _ := labels(pause); l[cache.LabelPinnedBy] != "" {
		t.Fatalf("precache took the CRI's pin of %s as its own: %v", pause, l)
	}
	p.stop(t)

	// The agent restarts wanting other tags of the two repositories (a repository the agent
	// does not keep at all is left alone: bootstrap may keep it as part of the recovery set).
	for path, tag := range map[string]string{"pause": "3.11", "precache/extra": "2"} {
		if _, err := reg.Push(t.Context(), path, tag, testenv.ImageSpec{Seed: 52}); err != nil {
			t.Fatal(err)
		}
	}
	startAgent(t, n, env, "--node-name", ownNode, "--image", "registry.k8s.io/pause:3.11", "--image", "docker.io/precache/extra:2")
	eventually(t, 60*time.Second, "the image precache pinned unpinned", func() error {
		l, err := labels(extra)
		if err != nil {
			return err
		}
		if l[cache.LabelCRIPinned] != "" || l[cache.LabelManaged] != "" || l[cache.LabelPinnedBy] != "" {
			return fmt.Errorf("%s: labels %v", extra, l)
		}
		return nil
	})
	// The same pass lets go of pause too; wait for it rather than read it mid-pass.
	eventually(t, 30*time.Second, "pause no longer kept by precache", func() error {
		l, err := labels(pause)
		if err != nil {
			return err
		}
		if l[cache.LabelManaged] != "" {
			return fmt.Errorf("%s still marked as kept by precache: %v", pause, l)
		}
		return nil
	})
	l, err := labels(pause)
	if err != nil {
		t.Fatal(err)
	}
	if l[cache.LabelCRIPinned] != "pinned" {
		t.Errorf("the CRI's pin of %s was removed: %v", pause, l)
	}
	if n.PinningSupported() {
		if img, ok := n.criImages(pause)[pause]; !ok || !img.Pinned {
			t.Errorf("the kubelet's view of %s: %+v, want pinned", pause, img)
		}
	}
}

// TestAgentOperatorImageSet: with an ImageSet the operator runs every image by digest only
// (no tag). The agent, as its ServiceAccount, learns the release from the Installation and
// the ImageSet and pins each image under "repo:tag" and "repo@sha256:…".
func TestAgentOperatorImageSet(t *testing.T) {
	needAPI(t)
	const v = "v3.30.2"
	pushed, err := reg.PushCalico(t.Context(), v, manifest.VariantOperator, testenv.ImageSpec{Seed: 60})
	if err != nil {
		t.Fatal(err)
	}
	digests := map[string]string{}
	for _, c := range operatorComponents {
		digests[c] = pushed["quay.io/calico/"+c+":"+v]
	}
	operatorWorkloads(t, func(c string) string { return "quay.io/calico/" + c + "@" + digests[c] })
	createCR(t, cluster.Installations, "default", map[string]any{"spec": map[string]any{}, "status": map[string]any{
		"calicoVersion": v, "variant": "Calico", "imageSet": "calico-" + v}})
	imageSetCR(t, v, digests)

	n := newNode(t)
	startAgent(t, n, nil, "--kubeconfig", saKubecfg)
	c, ctx := n.client()
	eventually(t, 60*time.Second, "the calico-node DaemonSet's images pinned under both names", func() error {
		for _, comp := range []string{"node", "cni", "pod2daemon-flexvol"} {
			for _, name := range []string{"quay.io/calico/" + comp + ":" + v, "quay.io/calico/" + comp + "@" + digests[comp]} {
				img, err := c.ImageService().Get(ctx, name)
				if err != nil {
					return err
				}
				if img.Target.Digest.String() != digests[comp] || img.Labels[cache.LabelCRIPinned] != "pinned" {
					return fmt.Errorf("%s: target %s labels %v", name, img.Target.Digest, img.Labels)
				}
			}
		}
		return nil
	})
}

// TestAgentRunsWhatTheClusterRuns: on a manifest install made from the release's
// calico.yaml (calico-node and calico-kube-controllers, no calico-typha Deployment), the
// agent — as its ServiceAccount, with deploy/'s RBAC — keeps exactly the images those
// workloads run: once it has reconciled, containerd holds no calico/typha record, though
// the registry has the image.
func TestAgentRunsWhatTheClusterRuns(t *testing.T) {
	needAPI(t)
	applyRelease(t, "calico-v3.30.2.yaml", "docker.io", dockerVersion)
	n := newNode(t)
	p := startAgent(t, n, nil, "--kubeconfig", saKubecfg)
	eventually(t, 60*time.Second, "a reconcile that left the set right", func() error {
		body, err := fetch("http://" + p.addr + "/metrics")
		if err != nil {
			return err // not serving yet
		}
		if !strings.Contains(body, `precache_reconciles_total{result="ok"}`) {
			return fmt.Errorf("no successful reconcile yet")
		}
		return nil
	})
	want := []string{"docker.io/calico/cni:" + dockerVersion, "docker.io/calico/kube-controllers:" + dockerVersion, "docker.io/calico/node:" + dockerVersion}
	for _, name := range want {
		if l := n.image(name).Labels; l[cache.LabelCRIPinned] != "pinned" || l[cache.LabelManaged] != "true" {
			t.Errorf("%s: labels %v", name, l)
		}
	}
	for _, name := range n.imageNames() {
		if manifest.MustParseRef(name).Path() == "calico/typha" {
			t.Errorf("containerd holds %s: the cluster runs no typha", name)
		}
	}
	if body := httpGet(t, "http://"+p.addr+"/metrics"); !strings.Contains(body, "precache_images_desired 3\n") {
		t.Errorf("/metrics: want precache_images_desired 3 (node, cni, kube-controllers)\n%s", grepLines(body, "precache_images_"))
	}
	p.stop(t)
}

// TestAgentNodeLocalDNSLoop: on a node as Kubespray leaves it by default (node-local DNS,
// upstream_dns_servers empty: the nodelocaldns ConfigMap forwards names outside the cluster
// to its resolv.conf, the kubelet's resolvConf, which names node-local DNS), the agent — as
// its ServiceAccount — reads the ConfigMap as doctor does and reports that the node's DNS
// depends on the cluster: the metric is 1 and the Node gets a Warning naming node-local DNS.
func TestAgentNodeLocalDNSLoop(t *testing.T) {
	needAPI(t)
	pushAddons(t) // the agent keeps nodelocaldns's image with Calico's
	applyRelease(t, "calico-v3.30.2.yaml", "docker.io", dockerVersion)
	kubeDNS(t)
	nodeLocalDNS(t, "/etc/resolv.conf")
	const nodeName = "node-nodelocal"
	n := newNode(t)
	root := ubuntuNodeLocalRoot(t, "")
	p := startAgent(t, n, nil, "--kubeconfig", saKubecfg, "--node-name", nodeName, "--root", root)
	eventually(t, 60*time.Second, "the DNS loop reported", func() error {
		body, err := fetch("http://" + p.addr + "/metrics")
		if err != nil {
			return err // not serving yet
		}
		if !strings.Contains(body, "precache_dns_depends_on_cluster 1\n") {
			return fmt.Errorf("%s", grepLines(body, "precache_dns_depends_on_cluster "))
		}
		return nodeEvent(t, nodeName, "Warning", "PrecacheDNSLoop")
	})
	evs, err := kubeClient.CoreV1().Events("default").List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range evs.Items {
		if e.InvolvedObject.Name == nodeName && e.Reason == "PrecacheDNSLoop" && !strings.Contains(e.Message, "node-local DNS sends names outside the cluster back into the cluster") {
			t.Errorf("the Event does not name node-local DNS's forwarding: %s", e.Message)
		}
	}
	p.stop(t)
}

// grepLines keeps the lines of s that start with prefix.
func grepLines(s, prefix string) string {
	var out []string
	for _, line := range strings.Split(s, "\n") {
		if strings.HasPrefix(line, prefix) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// runCalicoNode creates node's calico-node pod, running image.
func runCalicoNode(t *testing.T, node, image string) {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "calico-node-" + node, Labels: map[string]string{"k8s-app": "calico-node"}},
		Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "calico-node", Image: image}}},
	}
	if _, err := kubeClient.CoreV1().Pods("kube-system").Create(t.Context(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = kubeClient.CoreV1().Pods("kube-system").Delete(testContext(), pod.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
	})
}

// agentProc is a running `precache agent`.
type agentProc struct {
	cmd    *exec.Cmd
	logs   *testenv.SyncBuffer
	exited chan error
	addr   string
}

// startAgent runs `precache agent` against n's containerd and the test API server until
// stop or the end of the test.
func startAgent(t *testing.T, n *node, env []string, args ...string) *agentProc {
	t.Helper()
	p := &agentProc{logs: &testenv.SyncBuffer{}, exited: make(chan error, 1), addr: freeAddr(t)}
	args = append([]string{"agent", "--kubeconfig", adminKubecfg, "--metrics-address", p.addr, "--root", t.TempDir()}, args...)
	p.cmd = exec.Command(binary, args...)
	p.cmd.Env = append(os.Environ(), "CONTAINERD_ADDRESS="+n.Address, "PRECACHE_HOSTS_DIR="+hostsDir, "PRECACHE_LOG_FORMAT=json",
		"PRECACHE_STATE_FILE="+filepath.Join(n.Dir, "state.json"))
	p.cmd.Env = append(p.cmd.Env, env...)
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.exited <- p.cmd.Wait() }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		if t.Failed() {
			t.Logf("agent %v log:\n%s", args, tail(p.logs.String(), 40))
		}
	})
	return p
}

// stop sends SIGTERM and waits for a clean exit.
func (p *agentProc) stop(t *testing.T) {
	t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.exited:
		if err != nil {
			t.Fatalf("agent exit after SIGTERM: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("agent did not exit within 10s of SIGTERM")
	}
}

// reconciles is the agent's precache_reconciles_total{result="ok"}.
func (p *agentProc) reconciles(t *testing.T) float64 {
	t.Helper()
	for _, line := range strings.Split(httpGet(t, "http://"+p.addr+"/metrics"), "\n") {
		if v, ok := strings.CutPrefix(line, `precache_reconciles_total{result="ok"} `); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	return 0
}

// TestAgentEventSourceSurvivesARestart: the agent's event source on the real containerd
// names the records created, updated and deleted in k8s.io (not in other namespaces), and
// after containerd restarts says that events may have been missed ("") and names records
// again, on the same subscription.
func TestAgentEventSourceSurvivesARestart(t *testing.T) {
	needDaemons(t)
	n := newNode(t)
	s := n.store()
	names, errs := s.Events(t.Context())
	c, ctx := n.client()
	target := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString("events"), Size: 1}
	next := func(within time.Duration) (string, bool) {
		select {
		case name := <-names:
			return name, true
		case <-time.After(within):
			return "", false
		}
	}
	expect := func(what, want string, within time.Duration) {
		t.Helper()
		deadline := time.Now().Add(within)
		for {
			name, ok := next(time.Until(deadline))
			if !ok {
				t.Fatalf("%s: no event %q within %s", what, want, within)
			}
			if name == want {
				return
			}
		}
	}
	// Another namespace first: if it came through it would arrive before the k8s.io one.
	other := namespaces.WithNamespace(t.Context(), "moby")
	if _, err := c.ImageService().Create(other, images.Image{Name: "example.com/other:1", Target: target}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ImageService().Create(ctx, images.Image{Name: "example.com/a:1", Target: target}); err != nil {
		t.Fatal(err)
	}
	if name, ok := next(5 * time.Second); !ok || name != "example.com/a:1" {
		t.Fatalf("first event: %q (received: %t), want example.com/a:1", name, ok)
	}
	if _, err := c.ImageService().Update(ctx, images.Image{Name: "example.com/a:1", Labels: map[string]string{"k": "v"}}, "labels.k"); err != nil {
		t.Fatal(err)
	}
	expect("update", "example.com/a:1", 5*time.Second)
	if err := c.ImageService().Delete(ctx, "example.com/a:1"); err != nil {
		t.Fatal(err)
	}
	expect("delete", "example.com/a:1", 5*time.Second)

	if err := n.Restart(time.Second); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errs:
		t.Logf("stream broke: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("no error for the broken stream")
	}
	expect("after the restart", "", 10*time.Second)
	c2, ctx2 := n.client()
	if _, err := c2.ImageService().Create(ctx2, images.Image{Name: "example.com/b:1", Target: target}); err != nil {
		t.Fatal(err)
	}
	expect("a record created after the restart", "example.com/b:1", 5*time.Second)
}
