package main

import (
	"archive/tar"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/precache/precache/internal/bundle"
	"github.com/precache/precache/test/testenv"
)

// benchImport compares `precache import` with `ctr images import --local` on the same
// uncompressed bundle of the bench set (both unpack), re-imports, and measures precache's
// peak RSS on synthetic 1 GiB and 2 GiB bundles.
func benchImport(ctx context.Context, w io.Writer, bin, ctrBin, hosts string, rounds int) error {
	dir, err := os.MkdirTemp("", "precache-bench-import-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	plain := filepath.Join(dir, "calico.tar")
	if _, err := timed(exec.CommandContext(ctx, bin, "bundle", "--calico-version", calicoVersion, "--hosts-dir", hosts,
		"--compression", "none", "-o", plain)); err != nil {
		return err
	}
	zst := filepath.Join(dir, "calico.tar.zst")
	if _, err := timed(exec.CommandContext(ctx, bin, "bundle", "--calico-version", calicoVersion, "--hosts-dir", hosts, "-o", zst)); err != nil {
		return err
	}
	plainSize, zstSize := fileSize(plain), fileSize(zst)

	// A DNS-dead recovery from a current bundle: the expected digests (the bundle's own
	// lock, as the cluster or the node's state would give them) and registries behind a
	// mirror that accepts connections and never answers. Local sources first: the
	// registry is never asked, so this should cost the import and nothing else.
	lockFile, deadHosts, stopDead, err := deadRecoverySetup(dir, plain)
	if err != nil {
		return err
	}
	defer stopDead()
	recoverCmd := func(c *testenv.Containerd) *exec.Cmd {
		return exec.CommandContext(ctx, bin, "bootstrap", "--containerd-address", c.Address, "--log-format", "json",
			"--calico-version", calicoVersion, "--lock", lockFile, "--bundle", plain, "--hosts-dir", deadHosts,
			"--state-file", "")
	}
	var recovery []sample

	type tool struct {
		name string
		cmd  func(c *testenv.Containerd, file string) *exec.Cmd
	}
	tools := []tool{
		{"precache import", func(c *testenv.Containerd, file string) *exec.Cmd {
			return exec.CommandContext(ctx, bin, "import", "--containerd-address", c.Address, "--log-format", "json", file)
		}},
		{"ctr images import --local", func(c *testenv.Containerd, file string) *exec.Cmd {
			return exec.CommandContext(ctx, ctrBin, "--address", c.Address, "-n", "k8s.io", "images", "import", "--local", "--snapshotter", "overlayfs", file)
		}},
	}
	first := make([][]sample, len(tools))
	again := make([][]sample, len(tools))
	var zstd []sample
	for round := 0; round < rounds; round++ {
		for k := range tools {
			i := (k + round) % len(tools)
			err := withContainerd(ctx, func(c *testenv.Containerd) error {
				s, err := timed(tools[i].cmd(c, plain))
				if err != nil {
					return err
				}
				first[i] = append(first[i], s)
				s2, err := timed(tools[i].cmd(c, plain))
				if err != nil {
					return err
				}
				again[i] = append(again[i], s2)
				fmt.Fprintf(os.Stderr, "import round %d: %-28s %8s (again %8s) maxrss %d MiB\n", round+1, tools[i].name, s.wall.Round(time.Millisecond), s2.wall.Round(time.Millisecond), s.maxRSS/1024)
				return nil
			})
			if err != nil {
				return fmt.Errorf("%s: %w", tools[i].name, err)
			}
		}
		if err := withContainerd(ctx, func(c *testenv.Containerd) error {
			s, err := timed(recoverCmd(c))
			if err == nil && !strings.Contains(s.stdout, "path: bundle (it carries the wanted digests") {
				err = fmt.Errorf("recovery took another path:\n%s", s.stdout)
			}
			recovery = append(recovery, s)
			fmt.Fprintf(os.Stderr, "import round %d: %-28s %8s\n", round+1, "bootstrap --bundle, DNS dead", s.wall.Round(time.Millisecond))
			return err
		}); err != nil {
			return fmt.Errorf("bootstrap --bundle with a dead registry: %w", err)
		}
		err := withContainerd(ctx, func(c *testenv.Containerd) error {
			s, err := timed(tools[0].cmd(c, zst))
			zstd = append(zstd, s)
			return err
		})
		if err != nil {
			return err
		}
	}

	// Memory against bundle size: synthetic uncompressed bundles of 1 and 2 GiB.
	var rss []struct {
		size          int64
		precache, ctr sample
	}
	for _, gib := range []int64{1, 2} {
		file := filepath.Join(dir, fmt.Sprintf("synthetic-%dg.tar", gib))
		if err := writeSynthetic(file, gib<<30); err != nil {
			return err
		}
		var p, c sample
		if err := withContainerd(ctx, func(cd *testenv.Containerd) error {
			var err error
			p, err = timed(tools[0].cmd(cd, file))
			return err
		}); err != nil {
			return err
		}
		if err := withContainerd(ctx, func(cd *testenv.Containerd) error {
			var err error
			c, err = timed(tools[1].cmd(cd, file))
			return err
		}); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "synthetic %d GiB: precache %s %d MiB, ctr %s %d MiB\n", gib, p.wall.Round(time.Millisecond), p.maxRSS/1024, c.wall.Round(time.Millisecond), c.maxRSS/1024)
		rss = append(rss, struct {
			size          int64
			precache, ctr sample
		}{fileSize(file), p, c})
		os.Remove(file)
	}

	fmt.Fprintf(w, "\n### Import\n\nBundle: `precache bundle --calico-version %s` of the same set, linux/amd64 layers, every platform's manifest: %s uncompressed (`.tar`, which ctr needs), %s as `.tar.zst`. Each round: a fresh containerd, the import, then the same import again into it. %d rounds alternating, median:\n\n",
		calicoVersion, mib(plainSize), mib(zstSize), rounds)
	fmt.Fprintln(w, "| tool | import (median) | all rounds | re-import of a present bundle (median) | peak client RSS |")
	fmt.Fprintln(w, "|---|---|---|---|---|")
	for i, t := range tools {
		m, a := median(first[i]), median(again[i])
		var all []string
		for _, s := range first[i] {
			all = append(all, s.wall.Round(10*time.Millisecond).String())
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %d MiB |\n", t.name, m.wall.Round(10*time.Millisecond), strings.Join(all, ", "), a.wall.Round(time.Millisecond), m.maxRSS/1024)
	}
	mp, mc := median(first[0]), median(first[1])
	ap, ac := median(again[0]), median(again[1])
	fmt.Fprintf(w, "\nRatios precache/ctr: import **%.2f**, re-import **%.3f**. `precache import` of the `.tar.zst`: median %s.\n",
		float64(mp.wall)/float64(mc.wall), float64(ap.wall)/float64(ac.wall), median(zstd).wall.Round(10*time.Millisecond))
	mr := median(recovery)
	fmt.Fprintf(w, "\nDNS-dead recovery from a current bundle (`bootstrap --lock … --bundle` of the same `.tar`, registries behind a mirror that accepts connections and never answers; the bundle carries the wanted digests, so the registry is never asked): median %s, **%+d ms** against `precache import` of the same file.\n",
		mr.wall.Round(10*time.Millisecond), (mr.wall - mp.wall).Milliseconds())
	fmt.Fprintln(w, "\nPeak RSS against bundle size (synthetic single-image bundles, uncompressed layers, unpacked):")
	fmt.Fprintln(w, "\n| bundle | precache import | peak RSS | ctr import --local | peak RSS |")
	fmt.Fprintln(w, "|---|---|---|---|---|")
	for _, r := range rss {
		fmt.Fprintf(w, "| %s | %s | %d MiB | %s | %d MiB |\n", mib(r.size), r.precache.wall.Round(10*time.Millisecond), r.precache.maxRSS/1024, r.ctr.wall.Round(10*time.Millisecond), r.ctr.maxRSS/1024)
	}
	return nil
}

func withContainerd(ctx context.Context, f func(*testenv.Containerd) error) error {
	c, err := testenv.StartContainerd(ctx, testenv.ContainerdOptions{})
	if err != nil {
		return err
	}
	defer c.Stop()
	syncDisk()
	return f(c)
}

func fileSize(p string) int64 {
	fi, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return fi.Size()
}

func mib(n int64) string { return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20)) }

// writeSynthetic writes an OCI layout tar of one linux/amd64 image with uncompressed
// layers totalling size bytes, streaming (nothing large is held in memory).
func writeSynthetic(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	const layerSize = 128 << 20
	type desc struct {
		MediaType string            `json:"mediaType"`
		Digest    digest.Digest     `json:"digest"`
		Size      int64             `json:"size"`
		Platform  map[string]string `json:"platform,omitempty"`
		Ann       map[string]string `json:"annotations,omitempty"`
	}
	var layers []desc
	rng := rand.New(rand.NewPCG(uint64(size), 7))
	buf := make([]byte, layerSize)
	for n := int64(0); n*layerSize < size; n++ {
		// A layer is itself a tar with one file.
		var lt strings.Builder
		ltw := tar.NewWriter(&lt)
		content := buf[:layerSize-4096]
		for i := 0; i+8 <= len(content); i += 8 {
			v := rng.Uint64()
			for j := 0; j < 8; j++ {
				content[i+j] = byte(v >> (8 * j))
			}
		}
		_ = ltw.WriteHeader(&tar.Header{Name: fmt.Sprintf("data/%d.bin", n), Mode: 0o644, Size: int64(len(content)), Typeflag: tar.TypeReg})
		_, _ = ltw.Write(content)
		_ = ltw.Close()
		data := []byte(lt.String())
		d := digest.FromBytes(data)
		if err := writeEntry(tw, "blobs/sha256/"+d.Encoded(), data); err != nil {
			return err
		}
		layers = append(layers, desc{MediaType: "application/vnd.oci.image.layer.v1.tar", Digest: d, Size: int64(len(data))})
	}
	var diffIDs []digest.Digest
	for _, l := range layers {
		diffIDs = append(diffIDs, l.Digest)
	}
	cfg, _ := json.Marshal(map[string]any{"architecture": "amd64", "os": "linux", "rootfs": map[string]any{"type": "layers", "diff_ids": diffIDs}, "config": map[string]any{}})
	cd := digest.FromBytes(cfg)
	if err := writeEntry(tw, "blobs/sha256/"+cd.Encoded(), cfg); err != nil {
		return err
	}
	m, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": desc{MediaType: "application/vnd.oci.image.config.v1+json", Digest: cd, Size: int64(len(cfg))}, "layers": layers})
	md := digest.FromBytes(m)
	if err := writeEntry(tw, "blobs/sha256/"+md.Encoded(), m); err != nil {
		return err
	}
	idx, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
		"manifests": []desc{{MediaType: "application/vnd.oci.image.manifest.v1+json", Digest: md, Size: int64(len(m)),
			Ann: map[string]string{"io.containerd.image.name": "docker.io/bench/synthetic:v1", "org.opencontainers.image.ref.name": "v1"}}}})
	if err := writeEntry(tw, "oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return err
	}
	if err := writeEntry(tw, "index.json", idx); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return f.Close()
}

func writeEntry(tw *tar.Writer, name string, data []byte) error {
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
		return err
	}
	_, err := tw.Write(data)
	return err
}

// deadRecoverySetup writes the bundle's own lock to a file and a hosts dir whose mirrors
// for docker.io and quay.io accept TCP connections and never answer.
func deadRecoverySetup(dir, bundlePath string) (lockFile, hostsDir string, stop func(), err error) {
	f, err := os.Open(bundlePath)
	if err != nil {
		return "", "", nil, err
	}
	lock, err := bundle.PeekLock(f)
	f.Close()
	if err != nil {
		return "", "", nil, err
	}
	lockFile = filepath.Join(dir, "calico.lock")
	out, err := os.Create(lockFile)
	if err != nil {
		return "", "", nil, err
	}
	if err := lock.Encode(out); err != nil {
		out.Close()
		return "", "", nil, err
	}
	if err := out.Close(); err != nil {
		return "", "", nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", "", nil, err
	}
	var held []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			held = append(held, c) // accepted, never answered
		}
	}()
	hostsDir = filepath.Join(dir, "dead-certs.d")
	if err := testenv.WriteHostsDir(hostsDir, "http://"+l.Addr().String(), "docker.io", "quay.io"); err != nil {
		l.Close()
		return "", "", nil, err
	}
	return lockFile, hostsDir, func() {
		l.Close()
		for _, c := range held {
			c.Close()
		}
	}, nil
}
