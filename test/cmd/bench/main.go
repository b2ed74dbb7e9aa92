// Command bench measures precache against ctr and the CRI's own pull on the same loopback
// registry and the same containerd build, in the same run, alternating: pulling a
// Calico-like set of 4 multi-arch images (~500 MB compressed for the node platform) into a
// fresh k8s.io namespace, and the whole-process time of a no-op bootstrap. It prints a
// Markdown report (docs/benchmarks.md).
//
// The registry is Debian's docker-registry (distribution) with a filesystem root cached
// between runs, so the images are generated once.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/precache/precache/internal/manifest"
	"github.com/precache/precache/test/testenv"
)

const calicoVersion = "v3.28.1"

// imageSizes shape the set like Calico's: a big node image, a large cni, two smaller ones.
// Uncompressed MiB per layer × layers; the generated content compresses about 2.6:1.
var imageSizes = map[string]struct{ layers, mib int }{
	"node":             {8, 75},
	"cni":              {6, 75},
	"kube-controllers": {4, 60},
	"typha":            {4, 50},
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

type tool struct {
	name string
	run  func(ctx context.Context, c *testenv.Containerd) (sample, error)
	// daemonSide: a pull done inside containerd (transfer service, CRI), what precache is held to.
	daemonSide bool
}

type sample struct {
	wall   time.Duration
	maxRSS int64 // KiB, largest client process
	stdout string
}

func run() error {
	var (
		precache = flag.String("precache", "bin/precache", "precache binary")
		rounds   = flag.Int("rounds", 3, "rounds of each tool, alternating")
		noops    = flag.Int("noops", 20, "no-op bootstrap runs to time")
		mode     = flag.String("mode", "all", "pull, import, agent or all")
		window   = flag.Duration("agent-window", 2*time.Minute, "how long the agent is watched while idle")
		regBin   = flag.String("registry", "/usr/bin/docker-registry", "docker-registry (distribution) binary")
		cacheDir = flag.String("cache", filepath.Join(testenv.ToolsDir(), "..", "bench-registry"), "registry storage kept between runs")
	)
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	bin, err := filepath.Abs(*precache)
	if err != nil {
		return err
	}
	ctrBin := testenv.CtrBinary()
	for _, b := range []string{bin, ctrBin, *regBin, testenv.ContainerdBinary(), "/usr/bin/time"} {
		if _, err := os.Stat(b); err != nil {
			return fmt.Errorf("%w (make tools; apt-get install docker-registry time)", err)
		}
	}

	regAddr, stopReg, err := startRegistry(ctx, *regBin, *cacheDir)
	if err != nil {
		return err
	}
	defer stopReg()
	refs, totals, err := ensureImages(ctx, regAddr, *cacheDir)
	if err != nil {
		return err
	}
	hosts, err := os.MkdirTemp("", "precache-bench-hosts-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(hosts)
	if err := testenv.WriteHostsDir(hosts, "http://"+regAddr, "docker.io"); err != nil {
		return err
	}

	ctrPull := func(ctx context.Context, c *testenv.Containerd, ref string) (sample, error) {
		args := []string{"--address", c.Address, "-n", "k8s.io", "images", "pull"}
		if ctrHasLocal(ctrBin) {
			args = append(args, "--local")
		}
		args = append(args, "--hosts-dir", hosts, "--snapshotter", "overlayfs", ref)
		return timed(exec.CommandContext(ctx, ctrBin, args...))
	}
	tools := pullTools(bin, ctrBin, hosts, refs)

	if *mode == "import" {
		return benchImport(ctx, os.Stdout, bin, ctrBin, hosts, *rounds)
	}
	if *mode == "agent" {
		return benchAgent(ctx, os.Stdout, bin, hosts, *window)
	}
	results := make([][]sample, len(tools))
	for round := 0; round < *rounds; round++ {
		for k := range tools {
			i := (k + round) % len(tools) // rotate who goes first
			s, err := once(ctx, tools[i], hosts)
			if err != nil {
				return fmt.Errorf("%s: %w", tools[i].name, err)
			}
			fmt.Fprintf(os.Stderr, "round %d: %-40s %8s  maxrss %d MiB\n", round+1, tools[i].name, s.wall.Round(time.Millisecond), s.maxRSS/1024)
			results[i] = append(results[i], s)
		}
	}

	noop, noopCtr, err := measureNoop(ctx, bin, hosts, *noops, ctrPull, refs[0])
	if err != nil {
		return err
	}
	report(os.Stdout, tools, results, noop, noopCtr, totals, *rounds)
	if *mode == "all" {
		if err := benchImport(ctx, os.Stdout, bin, ctrBin, hosts, *rounds); err != nil {
			return err
		}
		return benchAgent(ctx, os.Stdout, bin, hosts, *window)
	}
	return nil
}

// once runs t against a fresh containerd with the CRI plugin on, as on a node.
func once(ctx context.Context, t tool, hosts string) (sample, error) {
	c, err := testenv.StartContainerd(ctx, testenv.ContainerdOptions{CRI: true, HostsDir: hosts})
	if err != nil {
		return sample{}, err
	}
	defer c.Stop()
	syncDisk()
	return t.run(ctx, c)
}

// syncDisk flushes the previous round's writes so they are not charged to this one.
func syncDisk() { syscall.Sync() }

// timed runs cmd under /usr/bin/time for its peak RSS: Linux charges a child exec'd
// straight from this (large) process with this process's high-water mark, so the
// measurement needs a small launcher in between.
func timed(cmd *exec.Cmd) (sample, error) {
	f, err := os.CreateTemp("", "precache-bench-rss-")
	if err != nil {
		return sample{}, err
	}
	f.Close()
	defer os.Remove(f.Name())
	args := append([]string{"-f", "%M", "-o", f.Name()}, cmd.Args...)
	wrapped := exec.CommandContext(context.Background(), "/usr/bin/time", args...)
	wrapped.Env = cmd.Env
	var out, stdout strings.Builder
	wrapped.Stdout, wrapped.Stderr = &stdout, &out
	start := time.Now()
	err = wrapped.Run()
	s := sample{wall: time.Since(start), stdout: stdout.String()}
	if data, rerr := os.ReadFile(f.Name()); rerr == nil {
		fields := strings.Fields(string(data))
		if len(fields) > 0 {
			s.maxRSS, _ = strconv.ParseInt(fields[len(fields)-1], 10, 64)
		}
	}
	if err != nil {
		return s, fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args, " "), err, tailLines(out.String(), 5))
	}
	return s, nil
}

func measureNoop(ctx context.Context, bin, hosts string, n int, ctrPull func(context.Context, *testenv.Containerd, string) (sample, error), ref string) ([]sample, []sample, error) {
	c, err := testenv.StartContainerd(ctx, testenv.ContainerdOptions{})
	if err != nil {
		return nil, nil, err
	}
	defer c.Stop()
	args := []string{"bootstrap", "--calico-version", calicoVersion, "--containerd-address", c.Address, "--hosts-dir", hosts, "--log-format", "json"}
	if _, err := timed(exec.CommandContext(ctx, bin, args...)); err != nil {
		return nil, nil, err
	}
	var out, outCtr []sample
	for i := 0; i < n; i++ {
		s, err := timed(exec.CommandContext(ctx, bin, args...))
		if err != nil {
			return nil, nil, err
		}
		out = append(out, s)
		// ctr has no "already present" mode: a pull of a present image still asks the registry.
		s, err = ctrPull(ctx, c, ref)
		if err != nil {
			return nil, nil, err
		}
		outCtr = append(outCtr, s)
	}
	return out, outCtr, nil
}

func median(ss []sample) sample {
	w := make([]time.Duration, len(ss))
	r := make([]int64, len(ss))
	for i, s := range ss {
		w[i], r[i] = s.wall, s.maxRSS
	}
	slices.Sort(w)
	slices.Sort(r)
	return sample{wall: w[len(w)/2], maxRSS: r[len(r)/2]}
}

func report(w io.Writer, tools []tool, results [][]sample, noop, noopCtr []sample, totals setSize, rounds int) {
	daemon := "containerd " + testenv.ContainerdVersion + " and ctr built from the module proxy"
	if os.Getenv("PRECACHE_CONTAINERD") != "" {
		daemon = testenv.ContainerdBinary() + " and " + testenv.CtrBinary()
	}
	fmt.Fprintf(w, "Run %s on %d cores (%s), %s, registry: Debian docker-registry on loopback.\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 MST"), runtime.NumCPU(), runtime.GOARCH, daemon)
	fmt.Fprintf(w, "Image set: 4 images (calico/node, cni, kube-controllers, typha %s), OCI index linux/amd64 + linux/arm64, %d layers, %.0f MiB compressed / %.0f MiB uncompressed for the node platform.\n\n",
		calicoVersion, totals.layers, float64(totals.compressed)/(1<<20), float64(totals.uncompressed)/(1<<20))
	fmt.Fprintf(w, "Pull into a fresh containerd (CRI plugin on, k8s.io, overlayfs, unpacked), %d rounds alternating, median:\n\n", rounds)
	fmt.Fprintln(w, "| tool | wall (median) | all rounds | peak client RSS | ratio to the best daemon-side pull, 4 at once |")
	fmt.Fprintln(w, "|---|---|---|---|---|")
	var base time.Duration
	for i, t := range tools {
		if m := median(results[i]).wall; t.daemonSide && (base == 0 || m < base) {
			base = m
		}
	}
	for i, t := range tools {
		m := median(results[i])
		var all []string
		for _, s := range results[i] {
			all = append(all, s.wall.Round(10*time.Millisecond).String())
		}
		rss := fmt.Sprintf("%d MiB", m.maxRSS/1024)
		if m.maxRSS == 0 {
			rss = "— (in the daemon)"
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %.2f |\n", t.name, m.wall.Round(10*time.Millisecond), strings.Join(all, ", "), rss, float64(m.wall)/float64(base))
	}
	// The same ratio round by round: each round's tools run back to back, so a machine
	// whose load drifts between rounds moves this less than the medians.
	for i, t := range tools {
		if !strings.HasPrefix(t.name, "precache") {
			continue
		}
		var per []string
		var ratios []float64
		for r := range results[i] {
			var best time.Duration
			for k, o := range tools {
				if o.daemonSide && r < len(results[k]) && (best == 0 || results[k][r].wall < best) {
					best = results[k][r].wall
				}
			}
			ratios = append(ratios, float64(results[i][r].wall)/float64(best))
			per = append(per, fmt.Sprintf("%.2f", ratios[len(ratios)-1]))
		}
		slices.Sort(ratios)
		fmt.Fprintf(w, "\n%s against the best daemon-side pull of the same round: %s (median **%.2f**).\n", t.name, strings.Join(per, ", "), ratios[len(ratios)/2])
		// And against the best client-side ctr pull (the reference where the daemon has no
		// transfer service, as on 1.6).
		var cs []float64
		for r := range results[i] {
			var best time.Duration
			for k, o := range tools {
				if !o.daemonSide && strings.HasPrefix(o.name, "ctr") && r < len(results[k]) && (best == 0 || results[k][r].wall < best) {
					best = results[k][r].wall
				}
			}
			if best > 0 {
				cs = append(cs, float64(results[i][r].wall)/float64(best))
			}
		}
		if len(cs) > 0 {
			slices.Sort(cs)
			fmt.Fprintf(w, "%s against the best client-side ctr pull of the same round: median **%.2f** (%.2f–%.2f).\n", t.name, cs[len(cs)/2], cs[0], cs[len(cs)-1])
		}
	}
	mn, mc := median(noop), median(noopCtr)
	noopTool := "ctr images pull --local"
	if !ctrHasLocal(testenv.CtrBinary()) {
		noopTool = "ctr images pull"
	}
	slices.SortFunc(noop, func(a, b sample) int { return int(a.wall - b.wall) })
	fmt.Fprintf(w, "\nNo-op (all 4 images already right), whole process, %d runs: precache bootstrap median %s, max %s, peak RSS %d MiB. For scale, one `%s` of one present image: median %s.\n",
		len(noop), mn.wall.Round(100*time.Microsecond), noop[len(noop)-1].wall.Round(100*time.Microsecond), mn.maxRSS/1024, noopTool, mc.wall.Round(100*time.Microsecond))
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// startRegistry runs docker-registry on a free loopback port with storage in dir.
func startRegistry(ctx context.Context, bin, dir string) (string, func(), error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	addr := l.Addr().String()
	l.Close()
	cfg := filepath.Join(dir, "config.yml")
	conf := fmt.Sprintf("version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n", filepath.Join(dir, "data"), addr)
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		return "", nil, err
	}
	cmd := exec.Command(bin, "serve", cfg)
	var logb strings.Builder
	cmd.Stdout, cmd.Stderr = &logb, &logb
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	stopFn := func() { _ = cmd.Process.Kill(); <-exited }
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			select {
			case <-exited:
				return "", nil, fmt.Errorf("docker-registry exited: %s", logb.String())
			default:
				return addr, stopFn, nil
			}
		}
		if time.Now().After(deadline) {
			stopFn()
			return "", nil, fmt.Errorf("docker-registry did not answer on %s: %s", addr, logb.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

type setSize struct {
	layers                   int
	compressed, uncompressed int64
}

// ensureImages pushes the set once (stamped in dir) and returns its references.
func ensureImages(ctx context.Context, addr, dir string) ([]string, setSize, error) {
	set, err := manifest.Build(manifest.Options{Version: calicoVersion})
	if err != nil {
		return nil, setSize{}, err
	}
	var refs []string
	var size setSize
	stamp := filepath.Join(dir, "pushed-v1")
	_, stampErr := os.Stat(stamp)
	for i, img := range set {
		refs = append(refs, img.Ref.String())
		sz := imageSizes[img.Component]
		spec := testenv.ImageSpec{Layers: sz.layers, LayerSize: int64(sz.mib) << 20, Seed: uint64(i + 1), SmallPlatforms: []string{"linux/arm64"}}
		target := addr + "/" + img.Ref.Path() + ":" + img.Ref.Tag
		if stampErr != nil {
			fmt.Fprintf(os.Stderr, "bench: generating and pushing %s (%d × %d MiB, once; cached in %s)\n", img.Ref, sz.layers, sz.mib, dir)
			if _, err := (&testenv.Registry{Host: addr}).Push(ctx, img.Ref.Path(), img.Ref.Tag, spec); err != nil {
				return nil, size, err
			}
		}
		n, c, u, err := measure(ctx, target)
		if err != nil {
			return nil, size, err
		}
		size.layers += n
		size.compressed += c
		size.uncompressed += u
	}
	if stampErr != nil {
		if err := os.WriteFile(stamp, []byte(time.Now().String()), 0o644); err != nil {
			return nil, size, err
		}
	}
	return refs, size, nil
}

// measure reads the node platform's layer sizes from the registry.
func measure(ctx context.Context, target string) (layers int, compressed, uncompressed int64, err error) {
	ref, err := name.ParseReference(target, name.Insecure)
	if err != nil {
		return 0, 0, 0, err
	}
	img, err := remote.Image(ref, remote.WithContext(ctx))
	if err != nil {
		return 0, 0, 0, err
	}
	m, err := img.Manifest()
	if err != nil {
		return 0, 0, 0, err
	}
	for _, l := range m.Layers {
		layers++
		compressed += l.Size
	}
	imgSize := imageSizes[strings.TrimPrefix(ref.Context().RepositoryStr(), "calico/")]
	uncompressed = int64(imgSize.layers) * int64(imgSize.mib) << 20
	return layers, compressed, uncompressed, nil
}
