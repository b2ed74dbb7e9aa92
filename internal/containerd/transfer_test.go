package containerd

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/transfer"
	"github.com/containerd/platforms"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func TestParsePullPath(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		in      string
		want    PullPath
		wantErr bool
	}{
		{"", PullAuto, false},
		{"auto", PullAuto, false},
		{"transfer", PullTransfer, false},
		{"client", PullClient, false},
		{"local", "", true},
		{"Transfer", "", true},
	} {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			got, err := ParsePullPath(tt.in)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Fatalf("ParsePullPath(%q) = %q, %v; want %q, error %t", tt.in, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func entry(mediaType, platform string, seed string) ocispec.Descriptor {
	d := ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromString(seed + platform), Size: 100}
	if platform != "" {
		p := platforms.MustParse(platform)
		d.Platform = &p
	}
	return d
}

func TestExactPlatform(t *testing.T) {
	t.Parallel()
	const m, i = ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageIndex
	for _, tt := range []struct {
		name    string
		node    string
		entries []ocispec.Descriptor
		want    string // platform; empty: the client-side path
		why     string
	}{
		{"amd64 and 386 on amd64: amd64 alone", "linux/amd64",
			[]ocispec.Descriptor{entry(m, "linux/386", "a"), entry(m, "linux/amd64", "a"), entry(m, "linux/arm64", "a")}, "linux/amd64", ""},
		{"only 386 on amd64: 386, as the client-side path takes it", "linux/amd64",
			[]ocispec.Descriptor{entry(m, "linux/386", "a"), entry(m, "linux/arm64", "a")}, "linux/386", ""},
		{"attestations are not the node's", "linux/amd64",
			[]ocispec.Descriptor{entry(m, "unknown/unknown", "att"), entry(m, "linux/amd64", "a")}, "linux/amd64", ""},
		{"arm64 among arm variants", "linux/arm64",
			[]ocispec.Descriptor{entry(m, "linux/arm/v7", "a"), entry(m, "linux/arm64/v8", "a"), entry(m, "linux/amd64", "a")}, "linux/arm64", ""},
		{"no manifest for the node", "linux/amd64",
			[]ocispec.Descriptor{entry(m, "linux/arm64", "a"), entry(m, "linux/s390x", "a")}, "", "no manifest for the node's linux/amd64"},
		{"two manifests for the same platform", "linux/amd64",
			[]ocispec.Descriptor{entry(m, "linux/amd64", "gzip"), entry(m, "linux/amd64", "zstd")}, "", "2 manifests for linux/amd64"},
		{"a nested index", "linux/amd64",
			[]ocispec.Descriptor{entry(i, "linux/amd64", "a")}, "", "not a manifest"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			spec := platforms.MustParse(tt.node)
			got, why := exactPlatform(ocispec.Index{Manifests: tt.entries}, platforms.Only(spec), spec)
			if tt.want == "" {
				if why == "" || !strings.Contains(why, tt.why) {
					t.Fatalf("exactPlatform = %s, %q; want the client-side path because %q", platforms.Format(got), why, tt.why)
				}
				return
			}
			if why != "" || platforms.Format(platforms.Normalize(got)) != tt.want {
				t.Fatalf("exactPlatform = %s, %q; want %s", platforms.Format(got), why, tt.want)
			}
			// The transfer service's matcher for that platform takes exactly one entry.
			n := 0
			for _, e := range tt.entries {
				if platforms.Ordered(got).Match(*e.Platform) {
					n++
				}
			}
			if n != 1 {
				t.Fatalf("the transfer service would take %d manifests for %s", n, platforms.Format(got))
			}
		})
	}
}

func layerProgress(event string, got, size int64) transfer.Progress {
	d := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromString("layer"), Size: size}
	return transfer.Progress{Event: event, Name: "layer-" + d.Digest.String(), Progress: got, Total: size, Desc: &d}
}

// TestTransferWatch: a transfer that waits while another of the same store downloads is
// not stalled; once nothing moves for the stall timeout, each is cancelled, naming the
// download that stopped.
func TestTransferWatch(t *testing.T) {
	t.Parallel()
	x := &transferPath{stall: 200 * time.Millisecond}
	waitingCtx, cancelWaiting := context.WithCancelCause(t.Context())
	movingCtx, cancelMoving := context.WithCancelCause(t.Context())
	waiting, moving := x.watch(cancelWaiting), x.watch(cancelMoving)
	defer waiting.stop()
	defer moving.stop()
	waiting.progress(layerProgress("downloading", 262144, 1225122))

	start := time.Now()
	for time.Since(start) < 3*x.stall {
		moving.progress(layerProgress("downloading", int64(time.Since(start)), 1<<30))
		time.Sleep(20 * time.Millisecond)
	}
	if err := context.Cause(waitingCtx); err != nil {
		t.Fatalf("a transfer waiting while another moves was cancelled: %v", err)
	}

	for _, ctx := range []context.Context{waitingCtx, movingCtx} {
		select {
		case <-ctx.Done():
		case <-time.After(5 * x.stall):
			t.Fatal("nothing moved for the stall timeout, and a transfer was not cancelled")
		}
	}
	if since := time.Since(start); since < 3*x.stall+x.stall {
		t.Errorf("cancelled %s after start, before the stall timeout passed", since)
	}
	var stall *TransferStallError
	if err := context.Cause(waitingCtx); !errors.As(err, &stall) || !strings.Contains(err.Error(), "in the middle of blob sha256:") ||
		!strings.Contains(err.Error(), "(262144 of 1225122 bytes stored") {
		t.Fatalf("cause = %v, want a stall naming the blob and its bytes", err)
	}
}

func TestTransferWatchCompleteIsNotInProgress(t *testing.T) {
	t.Parallel()
	x := &transferPath{stall: 100 * time.Millisecond}
	ctx, cancel := context.WithCancelCause(t.Context())
	w := x.watch(cancel)
	defer w.stop()
	w.progress(layerProgress("downloading", 10, 20))
	w.progress(layerProgress("complete", 20, 20))
	<-ctx.Done()
	if err := context.Cause(ctx); err == nil || !strings.Contains(err.Error(), "made no progress for 100ms") {
		t.Fatalf("cause = %v, want no progress and no download named", err)
	}
}

func TestTransferWatchOff(t *testing.T) {
	t.Parallel()
	x := &transferPath{} // --registry-stall-timeout 0
	ctx, cancel := context.WithCancelCause(t.Context())
	w := x.watch(cancel)
	time.Sleep(100 * time.Millisecond)
	w.stop()
	if ctx.Err() != nil {
		t.Fatal("cancelled without a stall timeout")
	}
}

func TestTransferCredentialsFailureCancels(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancelCause(t.Context())
	boom := errors.New("credential helper exited 1")
	c := transferCredentials{get: func(string) (string, string, error) { return "", "", boom }, fail: cancel}
	if _, err := c.GetCredentials(ctx, "docker.io/x/y@sha256:00", "registry-1.docker.io"); !errors.Is(err, boom) {
		t.Fatalf("GetCredentials = %v", err)
	}
	var ce *credentialsError
	if err := context.Cause(ctx); !errors.As(err, &ce) || !errors.Is(err, boom) {
		t.Fatalf("the transfer was not cancelled with the helper's error: %v", err)
	}
	ok := transferCredentials{get: func(h string) (string, string, error) { return "u", "p", nil }, fail: cancel}
	got, err := ok.GetCredentials(t.Context(), "", "quay.io")
	if err != nil || got.Username != "u" || got.Secret != "p" || got.Host != "quay.io" {
		t.Fatalf("GetCredentials = %+v, %v", got, err)
	}
}
