package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/precache/precache/internal/manifest"
	"github.com/precache/precache/test/testenv"
)

// Dead registry paths: a mirror that accepts and never answers, one that stalls mid-blob,
// an address whose packets are dropped. Each must cost seconds, not containerd's 30 s
// header (or connect) timeout per host times the core's four tries — 4 min 4 s with these
// hosts.toml files before the deadlines — and a bundle must be taken as soon as the path
// is known dead. The 30 s bounds are correctness bounds that the old behaviour fails by
// minutes, not benchmarks; the measured times are in docs/benchmarks.md.

// deadPathDomain is a registry only the tests' hosts.toml files know (no DNS involved).
const deadPathDomain = "deadpath.test"

const deadPathBound = 30 * time.Second

var (
	deadPathOnce   sync.Once
	deadPathDigest string
	deadPathErr    error
)

// deadPathImage pushes deadpath.test/deadpath/x:v1 once: the node platform's single layer
// is about 1 MiB compressed (several reads, a visible stall, seconds at 200 KiB/s).
func deadPathImage(t *testing.T) (ref, dgst string) {
	t.Helper()
	needDaemons(t)
	deadPathOnce.Do(func() {
		node := "linux/" + runtime.GOARCH
		other := "linux/arm64"
		if runtime.GOARCH == "arm64" {
			other = "linux/amd64"
		}
		h, err := reg.Push(testContext(), "deadpath/x", "v1", testenv.ImageSpec{
			Platforms: []string{node, other}, SmallPlatforms: []string{other},
			Layers: 1, LayerSize: 3 << 20, Seed: 90,
		})
		deadPathDigest, deadPathErr = h.String(), err
	})
	if deadPathErr != nil {
		t.Fatal(deadPathErr)
	}
	return deadPathDomain + "/deadpath/x:v1", deadPathDigest
}

// deadPathHosts writes a hosts dir for deadpath.test listing hosts in order.
func deadPathHosts(t *testing.T, hosts ...string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "certs.d")
	if err := testenv.WriteHosts(dir, deadPathDomain, hosts...); err != nil {
		t.Fatal(err)
	}
	return dir
}

// deadPathBundle writes a bundle of ref from the working registry, and measures how long
// importing it into a fresh node takes: the bound a fallback is held to.
func deadPathBundle(t *testing.T, ref string) (string, time.Duration) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "x.tar.zst")
	n := newNode(t)
	env := []string{"PRECACHE_HOSTS_DIR=" + deadPathHosts(t, reg.URL())}
	if r := n.precache(env, "bundle", "--image", ref, "-o", file); r.code != 0 {
		t.Fatalf("bundle exit %d: %s", r.code, r.stderr)
	}
	r := n.precache(env, "import", file)
	if r.code != 0 {
		t.Fatalf("import exit %d: %s", r.code, r.stderr)
	}
	return file, r.took
}

// bootstrapDead runs bootstrap of ref on a fresh node with hostsDir.
func bootstrapDead(t *testing.T, hostsDir, ref string, extraEnv []string, args ...string) (*node, result) {
	t.Helper()
	n := newNode(t)
	env := append([]string{"PRECACHE_HOSTS_DIR=" + hostsDir}, extraEnv...)
	r := n.precache(env, append([]string{"bootstrap", "--image", ref}, args...)...)
	t.Logf("bootstrap %v took %s, exit %d", args, r.took.Round(10*time.Millisecond), r.code)
	if r.code != 0 {
		t.Logf("stderr (tail):\n%s", tail(r.stderr, 3))
	}
	return n, r
}

// assertFailedFast: exit 1 within the bound, stderr saying each of says, nothing recorded.
func assertFailedFast(t *testing.T, n *node, r result, says ...string) {
	t.Helper()
	if r.code != 1 {
		t.Fatalf("bootstrap exit %d, want 1\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	if r.took > deadPathBound {
		t.Errorf("failed after %s, want ≤ %s", r.took, deadPathBound)
	}
	for _, s := range says {
		if !strings.Contains(r.stderr, s) {
			t.Errorf("stderr does not say %q:\n%s", s, tail(r.stderr, 5))
		}
	}
	if names := n.imageNames(); len(names) != 0 {
		t.Errorf("records made although the pull failed: %v", names)
	}
}

// assertOnlyRight: the image is right in the kubelet's view, and every record in the
// namespace is one of its three names, pointing at its digest.
func (n *node) assertOnlyRight(ref, dgst string) {
	n.t.Helper()
	r := manifest.MustParseRef(ref)
	n.assertRight(r.TagName(), dgst)
	for _, name := range n.imageNames() {
		rec := n.image(name)
		ok := name == r.TagName() || name == r.Name+"@"+dgst || strings.HasPrefix(name, "sha256:")
		if !ok || rec.Target.Digest.String() != dgst {
			n.t.Errorf("record %s → %s: not one of %s's names at %s", name, rec.Target.Digest, ref, dgst)
		}
	}
}

// assertFellBack: exit 0 through the bundle, within the import time plus slack, the
// image right and nothing else recorded.
func assertFellBack(t *testing.T, n *node, r result, ref, dgst string, importTook, slack time.Duration) {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("bootstrap --bundle exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stdout, "path: bundle (the pull failed: ") {
		t.Errorf("path not reported as the bundle after a failed pull:\n%s", r.stdout)
	}
	since := logDuration(t, r.stderr, "falling back to the bundle", "since_start")
	if r.took > importTook+slack {
		t.Errorf("took %s; the import alone takes %s, the fallback may add %s (decided %s after start)", r.took, importTook, slack, since)
	}
	t.Logf("fell back %s after start; whole bootstrap %s; import alone %s", since.Round(10*time.Millisecond), r.took.Round(10*time.Millisecond), importTook.Round(10*time.Millisecond))
	n.assertOnlyRight(ref, dgst)
}

// TestDeadPathNoResponse: a mirror that accepts connections and never answers.
func TestDeadPathNoResponse(t *testing.T) {
	ref, dgst := deadPathImage(t)
	h, err := testenv.StartHanging()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	dead := deadPathHosts(t, h.URL())

	t.Run("no other source: fails with the reason", func(t *testing.T) {
		n, r := bootstrapDead(t, dead, ref, nil)
		assertFailedFast(t, n, r, "registry mirror "+h.Host+" (for "+deadPathDomain+") accepted the connection but sent no response within 2s")
	})
	t.Run("a working host after it: pulled", func(t *testing.T) {
		n, r := bootstrapDead(t, deadPathHosts(t, h.URL(), reg.URL()), ref, nil)
		if r.code != 0 || !strings.Contains(r.stdout, "1 pulled") || !strings.Contains(r.stdout, "path: registry") {
			t.Fatalf("bootstrap exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
		}
		if r.took > deadPathBound {
			t.Errorf("took %s, want ≤ %s", r.took, deadPathBound)
		}
		n.assertOnlyRight(ref, dgst)
	})
	t.Run("--registry-timeout from the environment", func(t *testing.T) {
		n, r := bootstrapDead(t, dead, ref, []string{"PRECACHE_REGISTRY_TIMEOUT=500ms"})
		assertFailedFast(t, n, r, "sent no response within 500ms")
	})
	t.Run("--bundle: falls back", func(t *testing.T) {
		bundle, importTook := deadPathBundle(t, ref)
		n, r := bootstrapDead(t, dead, ref, nil, "--bundle", bundle)
		assertFellBack(t, n, r, ref, dgst, importTook, 8*time.Second)
	})
}

// TestDeadPathStall: a mirror that sends the headers and part of a blob, then nothing; and
// one that is slow but keeps sending.
func TestDeadPathStall(t *testing.T) {
	ref, dgst := deadPathImage(t)
	stall, err := testenv.StartProxy(reg.URL(), testenv.ProxyOptions{StallAfter: 256 << 10})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stall.Close() })
	stalling := deadPathHosts(t, stall.URL())

	t.Run("no other source: fails after the stall timeout", func(t *testing.T) {
		n, r := bootstrapDead(t, stalling, ref, nil)
		assertFailedFast(t, n, r, "registry mirror "+stall.Host+" (for "+deadPathDomain+") stalled: sent no data for 10s in the middle of blob sha256:",
			"(262144 of ")
		if stall.Stalled.Load() == 0 {
			t.Error("the proxy never stalled a body: the test tests nothing")
		}
	})
	t.Run("slow but moving: pulled", func(t *testing.T) {
		slow, err := testenv.StartProxy(reg.URL(), testenv.ProxyOptions{Rate: 200 << 10})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = slow.Close() })
		n, r := bootstrapDead(t, deadPathHosts(t, slow.URL()), ref, nil, "--registry-stall-timeout", "2s")
		if r.code != 0 || !strings.Contains(r.stdout, "1 pulled") {
			t.Fatalf("bootstrap exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
		}
		// The blob alone takes about 5 s at 200 KiB/s: well over the 2 s stall timeout,
		// which limits silence, not the download.
		if r.took < 4*time.Second {
			t.Errorf("took %s: the blob was not slow, the test tests nothing", r.took)
		}
		n.assertOnlyRight(ref, dgst)
	})
	t.Run("--bundle: falls back", func(t *testing.T) {
		bundle, importTook := deadPathBundle(t, ref)
		n, r := bootstrapDead(t, stalling, ref, []string{"PRECACHE_REGISTRY_STALL_TIMEOUT=2s"}, "--bundle", bundle)
		assertFellBack(t, n, r, ref, dgst, importTook, 8*time.Second)
	})
}

// TestDeadPathRetries5xx: a registry that answers 503 three times, then serves: transient
// errors that answer at once are still retried, and the bundle is not needed.
func TestDeadPathRetries5xx(t *testing.T) {
	ref, dgst := deadPathImage(t)
	for _, withBundle := range []bool{false, true} {
		name := "no bundle"
		if withBundle {
			name = "--bundle: not needed"
		}
		t.Run(name, func(t *testing.T) {
			busy, err := testenv.StartProxy(reg.URL(), testenv.ProxyOptions{FailFirst: 3})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = busy.Close() })
			var args []string
			if withBundle {
				bundle, _ := deadPathBundle(t, ref)
				args = append(args, "--bundle", bundle)
			}
			n, r := bootstrapDead(t, deadPathHosts(t, busy.URL()), ref, nil, args...)
			if r.code != 0 || !strings.Contains(r.stdout, "1 pulled") || !strings.Contains(r.stdout, "path: registry") {
				t.Fatalf("bootstrap exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
			}
			if !strings.Contains(r.stderr, `"msg":"retrying"`) || busy.Failed.Load() != 3 {
				t.Errorf("%d requests answered 503, and the log says:\n%s", busy.Failed.Load(), tail(r.stderr, 5))
			}
			if r.took > deadPathBound {
				t.Errorf("took %s, want ≤ %s", r.took, deadPathBound)
			}
			n.assertOnlyRight(ref, dgst)
		})
	}
}

// blackholed is an address whose packets go nowhere inside the test's network namespace:
// routed out through loopback, where nothing owns it and nothing forwards it.
const blackholed = "10.255.0.2:5000"

// TestDeadPathBlackhole: a registry at an address whose packets are dropped (a dead
// Service IP, a black-holed route): connect hangs. Run in a network namespace of its own.
func TestDeadPathBlackhole(t *testing.T) {
	if os.Getenv(inNetns) == "" {
		if os.Geteuid() != 0 {
			if os.Getenv("CI") != "" {
				t.Fatal("the black-hole test needs root for a network namespace, and CI must not skip it")
			}
			t.Skip("needs root for unshare --net --mount")
		}
		needDaemons(t)
		exe, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.CommandContext(t.Context(), "unshare", "--net", "--mount", "--", exe, "-test.run", "^TestDeadPathBlackhole$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), inNetns+"=1", "PRECACHE_BIN="+binary)
		out, err := cmd.CombinedOutput()
		t.Logf("inside the namespace:\n%s", filterLog(string(out)))
		if err != nil {
			t.Fatalf("black-hole test in a namespace failed: %v", err)
		}
		return
	}

	if out, err := exec.Command("ip", "route", "add", "10.255.0.0/24", "dev", "lo").CombinedOutput(); err != nil {
		t.Fatalf("ip route add: %v: %s", err, out)
	}
	ref, dgst := deadPathImage(t)
	dead := deadPathHosts(t, "http://"+blackholed)

	t.Run("no other source: fails with the reason", func(t *testing.T) {
		n, r := bootstrapDead(t, dead, ref, nil)
		assertFailedFast(t, n, r, "registry mirror "+blackholed+" (for "+deadPathDomain+") did not answer: no connection within 2s, its packets get no reply")
	})
	t.Run("a working host after it: pulled", func(t *testing.T) {
		n, r := bootstrapDead(t, deadPathHosts(t, "http://"+blackholed, reg.URL()), ref, nil)
		if r.code != 0 || !strings.Contains(r.stdout, "1 pulled") {
			t.Fatalf("bootstrap exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
		}
		if r.took > deadPathBound {
			t.Errorf("took %s, want ≤ %s", r.took, deadPathBound)
		}
		n.assertOnlyRight(ref, dgst)
	})
	t.Run("--bundle: falls back", func(t *testing.T) {
		bundle, importTook := deadPathBundle(t, ref)
		n, r := bootstrapDead(t, dead, ref, nil, "--bundle", bundle)
		assertFellBack(t, n, r, ref, dgst, importTook, 8*time.Second)
	})
}
