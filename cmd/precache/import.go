package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/precache/precache/internal/bundle"
	"github.com/precache/precache/internal/cache"
	pcontainerd "github.com/precache/precache/internal/containerd"
	"github.com/precache/precache/internal/logging"
	"github.com/precache/precache/internal/manifest"
)

func newImportCommand(a *app) *cobra.Command {
	var (
		baseName string
		lockPath string
	)
	cmd := &cobra.Command{
		Use:   "import FILE|-",
		Short: "Import an offline bundle into containerd: verified, unpacked, pinned (no network)",
		Long: `import reads an OCI image-layout tar, a docker save tar (Docker ≥ 25 or legacy), plain or
gzip/zstd-compressed (detected from the content, not the name; - is standard input), and
records its images in containerd exactly as a pull would: repo:tag and repo@digest, unpacked,
pinned. Every blob is verified; image digests are checked against --lock, or the lock a
precache bundle carries. A bundle that fails any check leaves containerd's images as they
were. Images already right are skipped.`,
		Example: `  precache import calico-v3.28.1.tar.zst
  zstdcat calico.tar.zst | precache import -
  precache import --base-name docker.io/calico/node oci-layout.tar`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 1 {
				return &usageError{fmt.Errorf("import takes one bundle file (or - for standard input), got %d arguments", len(args))}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			path := args[0]
			var lock *manifest.Lock
			if lockPath != "" {
				l, err := manifest.ReadLock(lockPath)
				if err != nil {
					return &usageError{err}
				}
				lock = l
			}
			in, size, err := openBundle(path)
			if err != nil {
				return err
			}
			defer in.Close()
			store, err := a.openStore(cmd.Context(), storeFlags{})
			if err != nil {
				return err
			}
			defer store.Close()

			var r io.Reader = in
			if logging.IsTerminal(cmd.ErrOrStderr()) {
				p := newProgress(cmd.ErrOrStderr(), in, size)
				defer p.stop()
				r = p
			}
			e := cache.NewEnsurer(store, cache.Options{Logger: a.log})
			res, err := bundle.Import(cmd.Context(), e, store, r, bundle.ImportOptions{BaseName: baseName, Lock: lock, LockSource: lockPath})
			if res != nil && res.Bundle != nil {
				printImport(cmd.OutOrStdout(), path, res)
			}
			if err != nil {
				return noSpace(cmd.Context(), store, size, bundleError(path, err))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&baseName, "base-name", "", "repository for images the bundle names only by tag, or not at all (REPO or REPO:TAG)")
	annotateEnv(cmd.Flags().Lookup("base-name"), "PRECACHE_BASE_NAME")
	cmd.Flags().StringVar(&lockPath, "lock", "", "lock file of expected digests (default: the lock inside a precache bundle)")
	annotateEnv(cmd.Flags().Lookup("lock"), "PRECACHE_LOCK")
	return cmd
}

func openBundle(path string) (io.ReadCloser, int64, error) {
	if path == "-" {
		return io.NopCloser(os.Stdin), -1, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, &usageError{fmt.Errorf("opening bundle: %w", err)}
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	if fi.IsDir() {
		f.Close()
		return nil, 0, &usageError{fmt.Errorf("%s is a directory: import takes a tar (tar -C DIR -cf - . | precache import -)", path)}
	}
	return f, fi.Size(), nil
}

// noSpace explains a full disk under containerd's root: the bundle is fine, the node is
// not, and the user needs to know where and how much.
func noSpace(ctx context.Context, store *pcontainerd.Store, size int64, err error) error {
	if !errors.Is(err, cache.ErrNoSpace) {
		return err
	}
	root := "containerd's root"
	if r, rerr := store.Root(ctx); rerr == nil && r != "" {
		root = r
	}
	need := "its blobs plus room to unpack them"
	if size > 0 {
		need = fmt.Sprintf("%s of blobs plus room to unpack them (about 2–3× that)", mib(size))
	}
	return fmt.Errorf("%w\nthe filesystem holding %s is full; the bundle needs %s. Free space there and import again; nothing was recorded", err, root, need)
}

// bundleError names the file and the consequence.
func bundleError(path string, err error) error {
	if path == "-" {
		path = "standard input"
	}
	if errors.Is(err, bundle.ErrInvalid) {
		return fmt.Errorf("%s: %w; nothing was imported", path, err)
	}
	return fmt.Errorf("%s: %w", path, err)
}

func printImport(w io.Writer, path string, res *bundle.ImportResult) {
	b := res.Bundle
	if len(res.Results) > 0 {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "IMAGE\tDIGEST\tACTION")
		for _, r := range res.Results {
			action := "failed: " + strings.SplitN(errString(r.Err), ":", 2)[0]
			if r.Err == nil {
				action = string(r.Actions[0])
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Image.Ref.Display(), shortDigest(r.Digest.String()), action)
		}
		tw.Flush()
	}
	for _, n := range res.Notes {
		fmt.Fprintln(w, "note:", n)
	}
	if b.Skipped {
		fmt.Fprintf(w, "%d images from %s already right: skipped after reading its index (%s)\n", len(res.Results), path, res.Duration.Round(time.Millisecond))
		return
	}
	fmt.Fprintf(w, "%d images from %s (%s, %s): %d blobs, %s, %d stored, in %s\n", len(res.Results), path, b.Format, b.Compression,
		b.Blobs, mib(b.Bytes), b.Stored, res.Duration.Round(time.Millisecond))
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// progress prints bytes read on a terminal, a few times a second.
type progress struct {
	r     io.Reader
	n     atomic.Int64
	total int64
	done  chan struct{}
}

func newProgress(w io.Writer, r io.Reader, total int64) *progress {
	p := &progress{r: r, total: total, done: make(chan struct{})}
	start := time.Now()
	go func() {
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-p.done:
				fmt.Fprint(w, "\r\033[K")
				return
			case <-t.C:
				n := p.n.Load()
				rate := float64(n) / time.Since(start).Seconds() / (1 << 20)
				if p.total > 0 {
					fmt.Fprintf(w, "\r\033[Kimporting: %s of %s (%d%%), %.0f MiB/s", mib(n), mib(p.total), n*100/p.total, rate)
				} else {
					fmt.Fprintf(w, "\r\033[Kimporting: %s, %.0f MiB/s", mib(n), rate)
				}
			}
		}
	}()
	return p
}

func (p *progress) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.n.Add(int64(n))
	return n, err
}

func (p *progress) stop() { close(p.done) }
