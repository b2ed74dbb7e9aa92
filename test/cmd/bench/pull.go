package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/precache/precache/test/testenv"
)

// pullTools are the pulls of the 4-image set compared, each into a fresh containerd with the
// CRI plugin on (as on a node): precache on each of its paths, ctr client-side (one after
// another, 4 at once), and the two daemon-side pulls precache is held to — ctr through the
// transfer service and the CRI's own pull, 4 at once each.
//
// Against containerd 1.6 (PRECACHE_CONTAINERD, PRECACHE_CTR) there is no transfer service:
// ctr's pull is client-side with no --local flag, precache takes its client-side path, and
// the CRI's pull is the daemon-side one.
func pullTools(bin, ctrBin, hosts string, refs []string) []tool {
	if !ctrHasLocal(ctrBin) {
		return legacyPullTools(bin, ctrBin, hosts, refs)
	}
	precache := func(path string) func(ctx context.Context, c *testenv.Containerd) (sample, error) {
		return func(ctx context.Context, c *testenv.Containerd) (sample, error) {
			cmd := exec.CommandContext(ctx, bin, "bootstrap", "--calico-version", calicoVersion,
				"--containerd-address", c.Address, "--hosts-dir", hosts, "--log-format", "json", "--state-file", "")
			cmd.Env = append(os.Environ(), "PRECACHE_PULL_PATH="+path)
			return timed(cmd)
		}
	}
	ctrPull := func(local bool) func(ctx context.Context, c *testenv.Containerd, ref string) (sample, error) {
		return func(ctx context.Context, c *testenv.Containerd, ref string) (sample, error) {
			args := []string{"--address", c.Address, "-n", "k8s.io", "images", "pull"}
			if local {
				args = append(args, "--local")
			}
			args = append(args, "--hosts-dir", hosts, "--snapshotter", "overlayfs", ref)
			return timed(exec.CommandContext(ctx, ctrBin, args...))
		}
	}
	return []tool{
		{name: "precache bootstrap (transfer service)", run: precache("transfer")},
		{name: "precache bootstrap, client-side (`PRECACHE_PULL_PATH=client`)", run: precache("client")},
		{name: "ctr pull --local, one after another", run: oneAfterAnother(refs, ctrPull(true))},
		{name: "ctr pull --local, 4 at once", run: allAtOnce(refs, ctrPull(true))},
		{name: "ctr pull (transfer service), 4 at once", run: allAtOnce(refs, ctrPull(false)), daemonSide: true},
		{name: "CRI PullImage (the kubelet's pull, `crictl pull`), 4 at once", run: allAtOnce(refs, criPull), daemonSide: true},
	}
}

// legacyPullTools are pullTools for a containerd without the transfer service (1.6).
func legacyPullTools(bin, ctrBin, hosts string, refs []string) []tool {
	ctrPull := func(ctx context.Context, c *testenv.Containerd, ref string) (sample, error) {
		return timed(exec.CommandContext(ctx, ctrBin, "--address", c.Address, "-n", "k8s.io", "images", "pull",
			"--hosts-dir", hosts, "--snapshotter", "overlayfs", ref))
	}
	precache := func(ctx context.Context, c *testenv.Containerd) (sample, error) {
		return timed(exec.CommandContext(ctx, bin, "bootstrap", "--calico-version", calicoVersion,
			"--containerd-address", c.Address, "--hosts-dir", hosts, "--log-format", "json", "--state-file", ""))
	}
	return []tool{
		{name: "precache bootstrap (client-side: no transfer service)", run: precache},
		{name: "ctr pull, one after another", run: oneAfterAnother(refs, ctrPull)},
		{name: "ctr pull, 4 at once", run: allAtOnce(refs, ctrPull)},
		{name: "CRI PullImage (the kubelet's pull, `crictl pull`), 4 at once", run: allAtOnce(refs, criPull), daemonSide: true},
	}
}

// ctrHasLocal tells a ctr with the transfer service (1.7+: `images pull --local` pulls
// client-side) from one without (1.6: every pull is client-side).
func ctrHasLocal(ctrBin string) bool {
	out, _ := exec.Command(ctrBin, "images", "pull", "--help").CombinedOutput()
	return strings.Contains(string(out), "--local")
}

// oneAfterAnother pulls refs one at a time.
func oneAfterAnother(refs []string, pull func(context.Context, *testenv.Containerd, string) (sample, error)) func(context.Context, *testenv.Containerd) (sample, error) {
	return func(ctx context.Context, c *testenv.Containerd) (sample, error) {
		var total sample
		start := time.Now()
		for _, ref := range refs {
			s, err := pull(ctx, c, ref)
			if err != nil {
				return s, err
			}
			total.maxRSS = max(total.maxRSS, s.maxRSS)
		}
		total.wall = time.Since(start)
		return total, nil
	}
}

// allAtOnce runs pull for every ref at the same time; the client processes' peak memory adds up.
func allAtOnce(refs []string, pull func(context.Context, *testenv.Containerd, string) (sample, error)) func(context.Context, *testenv.Containerd) (sample, error) {
	return func(ctx context.Context, c *testenv.Containerd) (sample, error) {
		start := time.Now()
		type res struct {
			s   sample
			err error
		}
		out := make(chan res, len(refs))
		for _, ref := range refs {
			go func() {
				s, err := pull(ctx, c, ref)
				out <- res{s, err}
			}()
		}
		var total sample
		var firstErr error
		for range refs {
			r := <-out
			if r.err != nil && firstErr == nil {
				firstErr = r.err
			}
			total.maxRSS += r.s.maxRSS
		}
		total.wall = time.Since(start)
		return total, firstErr
	}
}

// criPull asks the CRI ImageService to pull ref, as the kubelet (and crictl pull) does. The
// client is this process: no client memory is measured.
func criPull(ctx context.Context, c *testenv.Containerd, ref string) (sample, error) {
	conn, err := grpc.NewClient("unix://"+c.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return sample{}, err
	}
	defer conn.Close()
	start := time.Now()
	_, err = runtimeapi.NewImageServiceClient(conn).PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
	if err != nil {
		return sample{}, fmt.Errorf("CRI PullImage %s: %w", ref, err)
	}
	return sample{wall: time.Since(start)}, nil
}
