// Package integration runs precache against real daemons it starts itself: a containerd
// (2.4.x with the CRI plugin by default; PRECACHE_CONTAINERD selects another, e.g. Debian's
// 1.6.20 for the compatibility run), an OCI registry on loopback reached through a
// hosts.toml mirror for docker.io, quay.io and registry.k8s.io, and the CRI ImageService
// for the kubelet's view.
package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/precache/precache/internal/manifest"
	"github.com/precache/precache/test/testenv"
)

// Shared by every test: one registry, the Calico images pushed once.
var (
	reg      *testenv.Registry
	hostsDir string
	binary   string
	// digests of the pushed Calico sets: reference → index digest.
	calico = map[string]string{}
)

const (
	dockerVersion = "v3.28.1" // a docker.io release
	quayVersion   = "v3.31.0" // a quay.io release
)

// Why the daemons could not be had, outside CI: each test that needs them skips, visibly,
// naming the reason (go test -v lists them; the summary is not a silent "ok").
var (
	envErr error // containerd or the registry
	apiErr error // kube-apiserver + etcd
)

func TestMain(m *testing.M) {
	code, err := setup(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		os.Exit(1)
	}
	os.Exit(code)
}

// needDaemons skips t when containerd or the registry could not be started (never in CI).
func needDaemons(t *testing.T) {
	t.Helper()
	if envErr != nil {
		t.Skipf("SKIPPED, no containerd/registry: %v — run `make tools` (CI never skips)", envErr)
	}
}

// needAPI skips t when kube-apiserver + etcd could not be started (never in CI).
func needAPI(t *testing.T) {
	t.Helper()
	needDaemons(t)
	if apiErr != nil {
		t.Skipf("SKIPPED, no kube-apiserver: %v — run `make tools` (CI never skips)", apiErr)
	}
}

// soft turns a missing daemon into a per-test skip outside CI; in CI it is fatal.
func soft(err error) error {
	if err == nil || os.Getenv("CI") != "" {
		return err
	}
	fmt.Fprintln(os.Stderr, "integration:", err, "— tests that need it are skipped (CI never skips)")
	return nil
}

func setup(m *testing.M) (int, error) {
	if os.Getenv(inNetns) != "" {
		// A fresh network namespace has loopback down.
		if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
			return 0, fmt.Errorf("ip link set lo up: %w: %s", err, out)
		}
	}
	// The adapter used in-process logs through containerd's logrus; keep test output readable.
	logrus.SetLevel(logrus.WarnLevel)
	if _, err := os.Stat(testenv.ContainerdBinary()); err != nil {
		envErr = fmt.Errorf("no containerd at %s: %w", testenv.ContainerdBinary(), err)
		if err := soft(envErr); err != nil {
			return 0, err
		}
		return m.Run(), nil
	}
	tmp, err := os.MkdirTemp("", "precache-it-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(tmp)

	binary = os.Getenv("PRECACHE_BIN")
	if binary == "" {
		binary = filepath.Join(tmp, "precache")
		out, err := exec.Command("go", "build", "-o", binary, "github.com/precache/precache/cmd/precache").CombinedOutput()
		if err != nil {
			return 0, fmt.Errorf("building precache: %w\n%s", err, out)
		}
	}

	reg, err = testenv.StartRegistry(testenv.RegistryOptions{})
	if err != nil {
		return 0, err
	}
	defer reg.Close()
	hostsDir = filepath.Join(tmp, "certs.d")
	if err := testenv.WriteHostsDir(hostsDir, reg.URL(), "docker.io", "quay.io", "registry.k8s.io"); err != nil {
		return 0, err
	}
	ctx := context.Background()
	for i, v := range []string{dockerVersion, quayVersion} {
		d, err := reg.PushCalico(ctx, v, manifest.VariantManifest, testenv.ImageSpec{Seed: uint64(i + 1)})
		if err != nil {
			return 0, err
		}
		for k, dg := range d {
			calico[k] = dg
		}
	}
	if os.Getenv(inNetns) == "" {
		stopAPI, err := startAPIServer(tmp)
		if stopAPI != nil {
			defer stopAPI()
		}
		if err != nil {
			apiErr = err
			if err := soft(err); err != nil {
				return 0, err
			}
		}
	} else {
		apiErr = errors.New("not started inside the test network namespace")
	}
	return m.Run(), nil
}

func testContext() context.Context { return context.Background() }

// node is one test's containerd, fresh and empty.
type node struct {
	*testenv.Containerd
	t *testing.T
}

func newNode(t *testing.T) *node {
	t.Helper()
	needDaemons(t)
	c, err := testenv.StartContainerd(t.Context(), testenv.ContainerdOptions{CRI: true, HostsDir: hostsDir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("containerd log (tail):\n%s", tail(c.Log(), 30))
		}
		if err := c.Stop(); err != nil {
			t.Error(err)
		}
	})
	return &node{Containerd: c, t: t}
}

type result struct {
	stdout, stderr string
	code           int
	took           time.Duration
}

// precache runs the binary against n with the test hosts dir; env adds variables.
func (n *node) precache(env []string, args ...string) result {
	n.t.Helper()
	ctx, cancel := context.WithTimeout(n.t.Context(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = append(os.Environ(), "CONTAINERD_ADDRESS="+n.Address, "PRECACHE_HOSTS_DIR="+hostsDir, "PRECACHE_LOG_FORMAT=json",
		"PRECACHE_STATE_FILE="+filepath.Join(n.Dir, "state.json"))
	cmd.Env = append(cmd.Env, env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String(), took: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		n.t.Fatalf("running precache %v: %v", args, err)
	}
	return r
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// criImages waits for the CRI plugin (which adopts images through events, asynchronously)
// to report want repo tags, and returns its view by tag.
func (n *node) criImages(wantTags ...string) map[string]testenv.CRIImage {
	n.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		imgs, err := testenv.CRIImages(n.t.Context(), n.Address)
		if err != nil {
			n.t.Fatal(err)
		}
		byTag := map[string]testenv.CRIImage{}
		for _, img := range imgs {
			for _, tag := range img.RepoTags {
				byTag[tag] = img
			}
		}
		missing := 0
		for _, tag := range wantTags {
			if _, ok := byTag[tag]; !ok {
				missing++
			}
		}
		if missing == 0 || time.Now().After(deadline) {
			return byTag
		}
		time.Sleep(50 * time.Millisecond)
	}
}
