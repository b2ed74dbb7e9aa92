// Command demo shows precache end to end on a throwaway containerd and a loopback
// registry: it generates Calico-named multi-arch images, runs `precache bootstrap`,
// `precache status`, bootstrap again (a no-op), and prints what the kubelet would see.
package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/precache/precache/internal/manifest"
	"github.com/precache/precache/test/testenv"
)

func main() { os.Exit(run()) }

func run() int {
	if err := demo(); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}
	return 0
}

const version = "v3.28.1"

func demo() error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	precache, err := filepath.Abs("bin/precache")
	if err != nil {
		return err
	}
	if len(os.Args) > 1 {
		precache = os.Args[1]
	}

	reg, err := testenv.StartRegistry(testenv.RegistryOptions{})
	if err != nil {
		return err
	}
	defer reg.Close()
	step("loopback registry at %s: pushing Calico %s images (linux/amd64 + linux/arm64)", reg.URL(), version)
	if _, err := reg.PushCalico(ctx, version, manifest.VariantManifest, testenv.ImageSpec{LayerSize: 1 << 20, Layers: 3}); err != nil {
		return err
	}

	hosts, err := os.MkdirTemp("", "precache-demo-hosts-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(hosts)
	if err := testenv.WriteHostsDir(hosts, reg.URL(), "docker.io", "quay.io"); err != nil {
		return err
	}
	ctrd, err := testenv.StartContainerd(ctx, testenv.ContainerdOptions{CRI: true, HostsDir: hosts})
	if err != nil {
		return err
	}
	defer ctrd.Stop()
	step("throwaway containerd %s (CRI enabled) at %s; docker.io and quay.io mirrored to the registry in %s", ctrd.Version, ctrd.Address, hosts)

	env := append(os.Environ(), "CONTAINERD_ADDRESS="+ctrd.Address, "PRECACHE_HOSTS_DIR="+hosts, "PRECACHE_CALICO_VERSION="+version,
		"PRECACHE_STATE_FILE="+filepath.Join(ctrd.Dir, "state.json"))
	runCmd := func(args ...string) error {
		fmt.Printf("\n$ precache %s\n", join(args))
		cmd := exec.CommandContext(ctx, precache, args...)
		cmd.Env, cmd.Stdout, cmd.Stderr = env, os.Stdout, os.Stderr
		return cmd.Run()
	}
	step("environment: CONTAINERD_ADDRESS=%s PRECACHE_HOSTS_DIR=%s PRECACHE_CALICO_VERSION=%s", ctrd.Address, hosts, version)
	if err := runCmd("images"); err != nil {
		return err
	}
	if err := runCmd("status"); err == nil {
		return fmt.Errorf("status said an empty containerd is right")
	}
	start := time.Now()
	if err := runCmd("bootstrap", "--log-format", "console"); err != nil {
		return err
	}
	step("first bootstrap took %s", time.Since(start).Round(time.Millisecond))
	if err := runCmd("status"); err != nil {
		return err
	}
	start = time.Now()
	if err := runCmd("bootstrap", "--log-format", "console"); err != nil {
		return err
	}
	step("second bootstrap (everything already right, no network) took %s", time.Since(start).Round(time.Millisecond))

	fmt.Printf("\n# what the kubelet sees (CRI ImageService on %s)\n", ctrd.Address)
	imgs, err := testenv.CRIImages(ctx, ctrd.Address)
	if err != nil {
		return err
	}
	for _, img := range imgs {
		fmt.Printf("  %v %v pinned=%t\n", img.RepoTags, img.RepoDigests, img.Pinned)
	}
	return nil
}

func step(format string, args ...any) {
	fmt.Printf("\n==> "+format+"\n", args...)
}

func join(args []string) string {
	s := ""
	for i, a := range args {
		if i > 0 {
			s += " "
		}
		s += a
	}
	return s
}
