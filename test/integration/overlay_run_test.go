package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/oci"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/precache/precache/internal/manifest"
)

// The node the DaemonSet's pod runs on in TestImageRuns: its name for the downward API.
const imageNodeName = "image-node"

// renderedDaemonSet renders deploy/overlays/<overlay> pinned to the image in tarPath the way
// make release does (hack/render release, into a temporary directory; the tree's deploy/ is
// left alone) and returns the DaemonSet precache it holds.
func renderedDaemonSet(t *testing.T, tarPath, version, overlay string) *appsv1.DaemonSet {
	t.Helper()
	render := buildRender(t)
	deploy := filepath.Join("..", "..", "deploy")
	out := t.TempDir()
	cmd := exec.Command(render, "release", "-deploy", deploy, "-tar", tarPath, "-version", version, "-out", out,
		filepath.Join(deploy, "overlays", overlay))
	if _, err := cmd.Output(); err != nil {
		t.Fatalf("render release %s with %s: %v\n%s", overlay, tarPath, err, stderrOf(err))
	}
	file := filepath.Join(out, fmt.Sprintf("precache-%s-%s.yaml", version, overlay))
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range decodeAll(t, data) {
		if u.GetKind() != "DaemonSet" || u.GetName() != "precache" {
			continue
		}
		var ds appsv1.DaemonSet
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &ds); err != nil {
			t.Fatalf("%s: DaemonSet precache: %v", file, err)
		}
		return &ds
	}
	t.Fatalf("%s has no DaemonSet precache", file)
	return nil
}

// newDaemonSetPod takes the precache container of ds, rendered for the image imported from
// tarPath (entry is its layout entry), and resolves the image it names in containerd by the
// digest: a rendered digest that is not the image's fails here, naming both.
func newDaemonSetPod(t *testing.T, n *node, ds *appsv1.DaemonSet, version, tarPath string, entry ocispec.Descriptor) *daemonSetPod {
	t.Helper()
	pod := ds.Spec.Template.Spec
	i := slices.IndexFunc(pod.Containers, func(c corev1.Container) bool { return c.Name == "precache" })
	if i < 0 {
		t.Fatalf("the rendered DaemonSet has no container precache: %v", containerImages(pod.Containers))
	}
	ctr := pod.Containers[i]
	prefix := imageRepo + ":" + version + "@"
	ref, err := manifest.ParseRef(ctr.Image)
	if err != nil || !strings.HasPrefix(ctr.Image, prefix) || ref.Digest == "" {
		t.Fatalf("the rendered DaemonSet runs %q, want %ssha256:<digest> (err %v)", ctr.Image, prefix, err)
	}
	// The image as the kubelet would find it: by the digest the DaemonSet names.
	c, ctx := n.client()
	recs, err := c.ImageService().List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var img containerd.Image
	for _, r := range recs {
		if r.Target.Digest == ref.Digest {
			img = containerd.NewImage(c, r)
			break
		}
	}
	if img == nil || ref.Digest != entry.Digest {
		held := "containerd holds no image of that digest"
		if img != nil {
			held = "containerd holds that digest, but it is not the image under test"
		}
		t.Fatalf("the rendered DaemonSet runs %s, but the image imported from %s is %s@%s: %s",
			ctr.Image, tarPath, ref.TagName(), entry.Digest, held)
	}
	// The agent keeps the image it runs: PRECACHE_SELF_IMAGE must be it, as rendered.
	checkPinnedDaemonSet(t, ds, ctr.Image)
	return &daemonSetPod{c: c, ctx: ctx, img: img, ref: ref, node: n, pod: pod, ctr: ctr}
}

// podRun is what one run of the pod's container is given beyond the DaemonSet.
type podRun struct {
	args []string // in place of the DaemonSet's args (nil: the DaemonSet's); the command stays
	root string   // the node's root, the DaemonSet's hostPath / (empty: an empty one)
	// kubeconfig is mounted at /etc/precache/kubeconfig, named by KUBECONFIG: here there is
	// no ServiceAccount token to find in-cluster.
	kubeconfig string
	env        []string // what else the test's environment needs; never a variable the DaemonSet sets
}

// env is the container's environment: the DaemonSet's literal values, the downward API's
// spec.nodeName as the test's node, then the test's own (the hosts dir of the test
// registry, the kubeconfig, r.env).
func (d *daemonSetPod) env(t *testing.T, r podRun) []string {
	t.Helper()
	if len(d.ctr.EnvFrom) > 0 {
		t.Fatalf("the DaemonSet's container takes envFrom %v, which the test cannot give", d.ctr.EnvFrom)
	}
	var out []string
	set := map[string]bool{}
	for _, e := range d.ctr.Env {
		v := e.Value
		if e.ValueFrom != nil {
			if f := e.ValueFrom.FieldRef; f == nil || f.FieldPath != "spec.nodeName" {
				t.Fatalf("env %s: the test gives only spec.nodeName from the downward API, not %+v", e.Name, e.ValueFrom)
			}
			v = imageNodeName
		}
		out = append(out, e.Name+"="+v)
		set[e.Name] = true
	}
	// The hosts dir at its own path (see mounts), so containerd's transfer service reads the same one.
	add := []string{"PRECACHE_HOSTS_DIR=" + hostsDir}
	if r.kubeconfig != "" {
		add = append(add, "KUBECONFIG=/etc/precache/kubeconfig")
	}
	for _, kv := range append(add, r.env...) {
		if name, _, _ := strings.Cut(kv, "="); set[name] {
			t.Fatalf("the DaemonSet sets %s, which the test also sets for its environment (%s)", name, kv)
		}
		out = append(out, kv)
	}
	return out
}

// mounts are the container's volumeMounts, each hostPath volume at the test's stand-in for
// it (see hostPath), then the test's own: the test registry's hosts dir at its own path and
// the kubeconfig.
func (d *daemonSetPod) mounts(t *testing.T, r podRun) []specs.Mount {
	t.Helper()
	vols := map[string]corev1.Volume{}
	for _, v := range d.pod.Volumes {
		vols[v.Name] = v
	}
	var ms []specs.Mount
	for _, vm := range d.ctr.VolumeMounts {
		v, ok := vols[vm.Name]
		switch {
		case !ok:
			t.Fatalf("volumeMount %s names no volume of the pod", vm.Name)
		case vm.SubPath != "" || vm.SubPathExpr != "":
			t.Fatalf("volumeMount %s: subPath is not run here", vm.Name)
		}
		var src string
		switch {
		case v.HostPath != nil:
			src = d.hostPath(t, v.HostPath, r)
		case v.EmptyDir != nil:
			src = t.TempDir()
		default:
			t.Fatalf("volume %s: only hostPath and emptyDir volumes are run here", v.Name)
		}
		mode := "rw"
		if vm.ReadOnly {
			mode = "ro"
		}
		ms = append(ms, specs.Mount{Type: "bind", Source: src, Destination: vm.MountPath, Options: []string{"rbind", mode}})
	}
	ms = append(ms, specs.Mount{Type: "bind", Source: hostsDir, Destination: hostsDir, Options: []string{"rbind", "ro"}})
	if r.kubeconfig != "" {
		ms = append(ms, specs.Mount{Type: "bind", Source: r.kubeconfig, Destination: "/etc/precache/kubeconfig", Options: []string{"bind", "ro"}})
	}
	return ms
}

// hostPath is the test's stand-in for a node path the DaemonSet mounts: the test
// containerd's socket, the test registry's hosts dir, a fresh state directory, the test
// node's root. A path it has none for fails the test, as does a stand-in that is not what
// the volume's type says.
func (d *daemonSetPod) hostPath(t *testing.T, hp *corev1.HostPathVolumeSource, r podRun) string {
	t.Helper()
	var src string
	switch hp.Path {
	case "/run/containerd/containerd.sock":
		src = d.node.Address
	case "/etc/containerd/certs.d":
		src = hostsDir
	case "/var/lib/precache":
		src = t.TempDir()
	case "/":
		src = r.root
		if src == "" {
			src = t.TempDir()
		}
	default:
		t.Fatalf("the DaemonSet mounts hostPath %s, for which the test has no stand-in", hp.Path)
	}
	fi, err := os.Stat(src)
	if err != nil {
		t.Fatal(err)
	}
	var typ corev1.HostPathType
	if hp.Type != nil {
		typ = *hp.Type
	}
	ok := true
	switch typ {
	case corev1.HostPathSocket:
		ok = fi.Mode()&os.ModeSocket != 0
	case corev1.HostPathDirectory, corev1.HostPathDirectoryOrCreate:
		ok = fi.IsDir()
	case corev1.HostPathFile, corev1.HostPathFileOrCreate:
		ok = fi.Mode().IsRegular()
	}
	if !ok {
		t.Fatalf("hostPath %s is of type %s, its stand-in %s is %s", hp.Path, typ, src, fi.Mode().Type())
	}
	return src
}

// specOpts translate the pod's settings and the container's into the OCI spec, as the
// kubelet and containerd's CRI would: command and args, the user, the securityContext
// (read-only root, capabilities, no_new_privs), the host's network and resolv.conf, the
// memory limit; then env and mounts.
func (d *daemonSetPod) specOpts(t *testing.T, r podRun, env []string, mounts []specs.Mount) []oci.SpecOpts {
	t.Helper()
	args := d.args(r)
	var opts []oci.SpecOpts
	if len(d.ctr.Command) > 0 { // the image's entrypoint and cmd both replaced
		opts = append(opts, oci.WithImageConfig(d.img), oci.WithProcessArgs(append(slices.Clone(d.ctr.Command), args...)...))
	} else {
		opts = append(opts, oci.WithImageConfigArgs(d.img, args))
	}
	if d.ctr.WorkingDir != "" {
		opts = append(opts, oci.WithProcessCwd(d.ctr.WorkingDir))
	}

	sc := corev1.SecurityContext{}
	if d.ctr.SecurityContext != nil {
		sc = *d.ctr.SecurityContext
	}
	if psc := d.pod.SecurityContext; psc != nil { // the container's settings win over the pod's
		if sc.RunAsUser == nil {
			sc.RunAsUser = psc.RunAsUser
		}
		if sc.RunAsGroup == nil {
			sc.RunAsGroup = psc.RunAsGroup
		}
		if sc.RunAsNonRoot == nil {
			sc.RunAsNonRoot = psc.RunAsNonRoot
		}
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Fatal("the DaemonSet's container is privileged: precache must not need it")
	}
	switch {
	case sc.RunAsUser != nil && sc.RunAsGroup != nil:
		opts = append(opts, oci.WithUIDGID(uint32(*sc.RunAsUser), uint32(*sc.RunAsGroup)))
	case sc.RunAsUser != nil:
		opts = append(opts, oci.WithUserID(uint32(*sc.RunAsUser)))
	case sc.RunAsGroup != nil:
		t.Fatal("runAsGroup without runAsUser is not run here")
	}
	if sc.RunAsNonRoot != nil && *sc.RunAsNonRoot && sc.RunAsUser != nil && *sc.RunAsUser == 0 {
		t.Fatal("runAsNonRoot with runAsUser 0: the kubelet refuses to start the container")
	}
	if sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem {
		opts = append(opts, oci.WithRootFSReadonly())
	}
	if c := sc.Capabilities; c != nil {
		if slices.Contains(c.Drop, "ALL") {
			opts = append(opts, oci.WithCapabilities(nil))
		} else {
			opts = append(opts, oci.WithDroppedCapabilities(capNames(c.Drop)))
		}
		opts = append(opts, oci.WithAddedCapabilities(capNames(c.Add)))
	}
	// Unset, privilege escalation is allowed, as the kubelet has it.
	if sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation {
		opts = append(opts, oci.WithNoNewPrivileges)
	}

	if d.pod.HostNetwork {
		opts = append(opts, oci.WithHostNamespace(specs.NetworkNamespace), oci.WithHostHostsFile)
	}
	// dnsPolicy Default is the node's resolv.conf; so is ClusterFirst on the host's network
	// (the kubelet falls back to Default). Anything else resolves through the cluster DNS
	// the agent must not depend on: it runs before the CNI is up.
	switch p := d.pod.DNSPolicy; {
	case p == corev1.DNSDefault, d.pod.HostNetwork && (p == "" || p == corev1.DNSClusterFirst):
		opts = append(opts, oci.WithHostResolvconf)
	default:
		t.Fatalf("dnsPolicy %q (hostNetwork %t) resolves through the cluster's DNS, which is not up before the CNI", p, d.pod.HostNetwork)
	}
	if m, ok := d.ctr.Resources.Limits[corev1.ResourceMemory]; ok {
		opts = append(opts, oci.WithMemoryLimit(uint64(m.Value())))
	}
	return append(opts, oci.WithEnv(env), oci.WithMounts(mounts))
}

// args are the container's args for r: r.args, else the DaemonSet's.
func (d *daemonSetPod) args(r podRun) []string {
	if r.args != nil {
		return r.args
	}
	return d.ctr.Args
}

// capNames are Kubernetes capability names as the OCI spec names them.
func capNames(caps []corev1.Capability) []string {
	out := make([]string, 0, len(caps))
	for _, c := range caps {
		out = append(out, "CAP_"+strings.ToUpper(string(c)))
	}
	return out
}

// probe is where the kubelet would GET for p: its path, and its port as a number (a named
// port looked up in the container's ports).
func (d *daemonSetPod) probe(t *testing.T, what string, p *corev1.Probe) (string, int32) {
	t.Helper()
	if p == nil || p.HTTPGet == nil {
		t.Fatalf("the DaemonSet's %s is not an HTTP GET: %+v", what, p)
	}
	port := p.HTTPGet.Port
	if port.IntVal != 0 {
		return p.HTTPGet.Path, port.IntVal
	}
	for _, cp := range d.ctr.Ports {
		if cp.Name == port.StrVal {
			return p.HTTPGet.Path, cp.ContainerPort
		}
	}
	t.Fatalf("the DaemonSet's %s names port %q, which the container does not declare", what, port.StrVal)
	return "", 0
}

// nodeRoot is a Kubespray node's files (kubesprayRoot) with the kubelet's config also where
// the DaemonSet's PRECACHE_KUBELET_CONFIG says the node keeps it.
func (d *daemonSetPod) nodeRoot(t *testing.T, resolved string) string {
	t.Helper()
	root := kubesprayRoot(t, resolved)
	for _, e := range d.ctr.Env {
		if e.Name != "PRECACHE_KUBELET_CONFIG" || e.Value == "" {
			continue
		}
		data, err := os.ReadFile(filepath.Join(root, "var/lib/kubelet/config.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(root, e.Value)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}
