// Package testenv starts the real daemons precache's integration tests, benchmarks and
// demo run against: a containerd (2.x with the CRI plugin, or Debian's 1.6), and an OCI
// registry on loopback holding generated multi-arch images under Calico's names.
package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ContainerdVersion of the daemon the project builds and tests against.
const ContainerdVersion = "v2.4.2"

// ToolsDir is where `make tools` puts the binaries it builds: $PRECACHE_TOOLS or ~/.cache/precache/tools.
func ToolsDir() string {
	if d := os.Getenv("PRECACHE_TOOLS"); d != "" {
		return d
	}
	home, err := os.UserHomeDir()
	if err != nil {
		home = os.TempDir()
	}
	return filepath.Join(home, ".cache", "precache", "tools")
}

// ContainerdBinary is $PRECACHE_CONTAINERD, or the containerd `make tools` built.
func ContainerdBinary() string {
	if b := os.Getenv("PRECACHE_CONTAINERD"); b != "" {
		return b
	}
	return filepath.Join(ToolsDir(), "containerd-"+ContainerdVersion, "containerd")
}

// CtrBinary is the ctr matching ContainerdBinary's build: $PRECACHE_CTR or the one `make tools` built.
func CtrBinary() string {
	if b := os.Getenv("PRECACHE_CTR"); b != "" {
		return b
	}
	return filepath.Join(ToolsDir(), "containerd-"+ContainerdVersion, "ctr")
}

// Containerd is a running containerd daemon with all its state under Dir.
type Containerd struct {
	Dir     string
	Address string
	// Major, Minor are the daemon's version.
	Major, Minor int
	Version      string
	cmd          *exec.Cmd
	exited       chan struct{}
	log          *bytes.Buffer
}

// ContainerdOptions configure StartContainerd.
type ContainerdOptions struct {
	// Binary defaults to ContainerdBinary().
	Binary string
	// CRI enables the CRI plugin, as on a node, so the kubelet's view can be checked.
	CRI bool
	// HostsDir is the CRI's registry config_path.
	HostsDir string
	// RootSize, if set, puts containerd's root on a tmpfs of that many bytes: a disk that fills.
	RootSize int64
}

// StartContainerd starts a containerd daemon in a new short temp directory (unix socket
// paths must stay under 108 bytes) and waits until it answers.
func StartContainerd(ctx context.Context, o ContainerdOptions) (*Containerd, error) {
	bin := o.Binary
	if bin == "" {
		bin = ContainerdBinary()
	}
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("containerd binary: %w (run `make tools`, or set PRECACHE_CONTAINERD)", err)
	}
	out, err := exec.CommandContext(ctx, bin, "--version").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("%s --version: %w: %s", bin, err, out)
	}
	m := regexp.MustCompile(`\s(v?(\d+)\.(\d+)\.\d+\S*)`).FindStringSubmatch(string(out))
	if m == nil {
		return nil, fmt.Errorf("cannot read version from %q", out)
	}
	dir, err := os.MkdirTemp("/tmp", "pc-")
	if err != nil {
		return nil, err
	}
	c := &Containerd{Dir: dir, Address: filepath.Join(dir, "c.sock"), Version: m[1], exited: make(chan struct{}), log: &bytes.Buffer{}}
	c.Major, _ = strconv.Atoi(m[2])
	c.Minor, _ = strconv.Atoi(m[3])
	cfg := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfg, []byte(c.config(o)), 0o644); err != nil {
		return nil, err
	}
	if o.RootSize > 0 {
		root := filepath.Join(dir, "root")
		if err := os.MkdirAll(root, 0o700); err != nil {
			return nil, err
		}
		if err := syscall.Mount("tmpfs", root, "tmpfs", 0, fmt.Sprintf("size=%d", o.RootSize)); err != nil {
			_ = os.RemoveAll(dir)
			return nil, fmt.Errorf("mounting a %d-byte tmpfs for containerd's root: %w", o.RootSize, err)
		}
	}
	c.cmd = exec.Command(bin, "--config", cfg)
	c.cmd.Env = daemonEnv(bin)
	c.cmd.Stdout, c.cmd.Stderr = c.log, c.log
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := c.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { _ = c.cmd.Wait(); close(c.exited) }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case <-c.exited:
			return nil, fmt.Errorf("containerd exited: %s", c.log)
		default:
		}
		if conn, err := net.Dial("unix", c.Address); err == nil {
			conn.Close()
			return c, nil
		}
		if time.Now().After(deadline) {
			c.Stop()
			return nil, fmt.Errorf("containerd did not listen on %s within 20s: %s", c.Address, c.log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// daemonEnv puts the daemon's own directory first on its PATH, so that it starts the runc
// shim built beside it (`make tools`) and not another version's from the system (Debian's
// containerd package puts its 1.6 shim in /usr/bin), and makes sure the shim finds runc
// in the sbin directories.
func daemonEnv(bin string) []string {
	path := filepath.Dir(bin) + string(os.PathListSeparator) + os.Getenv("PATH")
	for _, d := range []string{"/usr/local/sbin", "/usr/sbin", "/sbin"} {
		if !slices.Contains(filepath.SplitList(path), d) {
			path += string(os.PathListSeparator) + d
		}
	}
	return append(os.Environ(), "PATH="+path)
}

// ShimBinary is the runc shim a daemon started from the containerd binary runs containers
// with: the one beside it (`make tools` builds it there; daemonEnv puts it first).
func ShimBinary(containerd string) string {
	return filepath.Join(filepath.Dir(containerd), "containerd-shim-runc-v2")
}

func (c *Containerd) config(o ContainerdOptions) string {
	var b strings.Builder
	if c.Major >= 2 {
		// Top-level keys first: anything after a [table] header belongs to that table.
		fmt.Fprintf(&b, "version = 4\nroot = %q\nstate = %q\n", c.Dir+"/root", c.Dir+"/state")
		if o.CRI {
			b.WriteString("disabled_plugins = ['io.containerd.nri.v1.nri']\n")
		} else {
			b.WriteString(`disabled_plugins = ['io.containerd.grpc.v1.cri', 'io.containerd.cri.v1.images', 'io.containerd.cri.v1.runtime', 'io.containerd.podsandbox.controller.v1.podsandbox', 'io.containerd.nri.v1.nri']` + "\n")
		}
		// Schema 4 moved the servers' settings into plugins; a [grpc] table is ignored.
		fmt.Fprintf(&b, "[plugins.'io.containerd.server.v1.grpc']\n  address = %q\n", c.Address)
		fmt.Fprintf(&b, "[plugins.'io.containerd.server.v1.ttrpc']\n  address = %q\n", c.Address+".ttrpc")
		fmt.Fprintf(&b, "[plugins.'io.containerd.internal.v1.opt']\n  path = %q\n", c.Dir+"/opt")
		if o.CRI {
			fmt.Fprintf(&b, "[plugins.'io.containerd.cri.v1.images']\n  snapshotter = \"overlayfs\"\n")
			fmt.Fprintf(&b, "[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = %q\n", o.HostsDir)
			fmt.Fprintf(&b, "[plugins.'io.containerd.cri.v1.runtime'.cni]\n  bin_dirs = [%q]\n  conf_dir = %q\n", c.Dir+"/cni/bin", c.Dir+"/cni/net.d")
		}
		return b.String()
	}
	// containerd 1.x: config schema version 2.
	fmt.Fprintf(&b, "version = 2\nroot = %q\nstate = %q\n", c.Dir+"/root", c.Dir+"/state")
	if !o.CRI {
		b.WriteString(`disabled_plugins = ["io.containerd.grpc.v1.cri"]` + "\n")
	}
	fmt.Fprintf(&b, "[grpc]\n  address = %q\n", c.Address)
	fmt.Fprintf(&b, "[plugins.\"io.containerd.internal.v1.opt\"]\n  path = %q\n", c.Dir+"/opt")
	if o.CRI {
		fmt.Fprintf(&b, "[plugins.\"io.containerd.grpc.v1.cri\"]\n")
		fmt.Fprintf(&b, "  [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n    snapshotter = \"overlayfs\"\n")
		fmt.Fprintf(&b, "  [plugins.\"io.containerd.grpc.v1.cri\".cni]\n    bin_dir = %q\n    conf_dir = %q\n", c.Dir+"/cni/bin", c.Dir+"/cni/net.d")
		fmt.Fprintf(&b, "  [plugins.\"io.containerd.grpc.v1.cri\".registry]\n    config_path = %q\n", o.HostsDir)
	}
	return b.String()
}

// Restart stops the daemon (SIGKILL, like a crash) and starts it again on the same state,
// waiting until it answers: what a node's containerd does under an agent.
func (c *Containerd) Restart(down time.Duration) error {
	_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
	<-c.exited
	time.Sleep(down)
	cmd := exec.Command(c.cmd.Path, c.cmd.Args[1:]...)
	cmd.Env = c.cmd.Env
	cmd.Stdout, cmd.Stderr = c.log, c.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	_ = os.Remove(c.Address)
	if err := cmd.Start(); err != nil {
		return err
	}
	c.cmd, c.exited = cmd, make(chan struct{})
	exited := c.exited
	go func() { _ = cmd.Wait(); close(exited) }()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if conn, err := net.Dial("unix", c.Address); err == nil {
			conn.Close()
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("containerd did not come back on %s", c.Address)
}

// Log is what the daemon has printed so far.
func (c *Containerd) Log() string { return c.log.String() }

// PinningSupported: the CRI honours io.cri-containerd.pinned from containerd 1.7.3 (FACTS: 1.6 reports false).
func (c *Containerd) PinningSupported() bool { return c.Major >= 2 || (c.Major == 1 && c.Minor >= 7) }

// Stop ends the daemon and removes its state. Overlay mounts left by the snapshotter
// are unmounted first so the directory can be removed.
func (c *Containerd) Stop() error {
	if c.cmd.Process != nil {
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.exited:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
			<-c.exited
		}
	}
	unmountUnder(c.Dir)
	if err := os.RemoveAll(c.Dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

func unmountUnder(dir string) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var mounts []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			mounts = append(mounts, f[4])
		}
	}
	for i := len(mounts) - 1; i >= 0; i-- {
		_ = syscall.Unmount(mounts[i], syscall.MNT_DETACH)
	}
}

// KubeVersion of the API server and etcd `make tools` builds for the tests.
const KubeVersion = "v1.37.2"

// KubeAssets is the directory with kube-apiserver and etcd (envtest's KUBEBUILDER_ASSETS):
// $KUBEBUILDER_ASSETS, or what `make tools` built.
func KubeAssets() string {
	if d := os.Getenv("KUBEBUILDER_ASSETS"); d != "" {
		return d
	}
	return filepath.Join(ToolsDir(), "kube-"+KubeVersion)
}
