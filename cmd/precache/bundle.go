package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/platforms"
	"github.com/spf13/cobra"

	"github.com/precache/precache/internal/bundle"
	"github.com/precache/precache/internal/cache"
	pcontainerd "github.com/precache/precache/internal/containerd"
)

func newBundleCommand(a *app) *cobra.Command {
	var (
		set            setFlags
		output         string
		compression    string
		platformList   []string
		fromContainerd bool
	)
	cmd := &cobra.Command{
		Use:   "bundle -o FILE",
		Short: "Write an offline bundle of the image set (from the registry, or from this node's containerd)",
		Long: `bundle writes the image set as an OCI image-layout tar that keeps the registry's index
digests, with a lock (references → digests) inside that import verifies by default. It
reads from the registry through --hosts-dir and --docker-config like a pull, and needs no
containerd; --from-containerd exports what this node already has instead.`,
		Example: `  precache bundle --calico-version v3.28.1 --platform linux/amd64,linux/arm64 -o calico-v3.28.1.tar.zst
  precache bundle --calico-version v3.28.1 --from-containerd -o /var/lib/precache/calico.tar.zst
  precache bundle --kubeconfig ~/.kube/config --root /mnt/worker --platform linux/amd64,linux/arm64 -o recovery.tar.zst`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output == "" {
				return &usageError{fmt.Errorf("set -o FILE (.tar.zst, .tar.gz or .tar; - for standard output)")}
			}
			if compression == "" {
				compression = compressionFor(output)
			}
			matcher, err := platformMatcher(platformList, a.global.platform)
			if err != nil {
				return &usageError{err}
			}
			images, _, err := a.imageSet(cmd.Context(), &set)
			if err != nil {
				return err
			}
			start := time.Now()
			ctx := cmd.Context()
			var (
				src  bundle.Source
				imgs []bundle.Image
			)
			if fromContainerd {
				store, err := a.openStore(ctx, storeFlags{})
				if err != nil {
					return err
				}
				defer store.Close()
				rows, err := cache.Status(ctx, store, images)
				if err != nil {
					return err
				}
				for i, r := range rows {
					if r.Digest == "" || !r.DigestOK {
						return fmt.Errorf("%s: %s on this node; run precache bootstrap first", images[i].Ref, r.Problem)
					}
					rec, err := store.Image(ctx, images[i].Ref.Display())
					if err != nil {
						return err
					}
					imgs = append(imgs, bundle.Image{Name: images[i].Ref.Display(), Target: rec.Target})
				}
				src = store
			} else {
				reg, err := pcontainerd.NewRegistry(ctx, a.registryConfig())
				if err != nil {
					return err
				}
				for _, img := range images {
					resolveRef := img.Ref.Display()
					desc, err := reg.Resolve(ctx, resolveRef)
					if err != nil {
						return fmt.Errorf("%s: resolving: %w%s", img.Ref, err, hint(err))
					}
					if img.Ref.Digest != "" && desc.Digest != img.Ref.Digest {
						return fmt.Errorf("%s: %w: the registry serves %s but %s expects %s", img.Ref, cache.ErrDigestMismatch, desc.Digest, img.DigestSource, img.Ref.Digest)
					}
					imgs = append(imgs, bundle.Image{Name: img.Ref.Display(), Target: desc})
				}
				src = reg
			}

			// Write to a temporary file beside the output and rename: a failed run leaves no
			// half bundle under the final name.
			var out *os.File
			tmp := ""
			if output == "-" {
				out = os.Stdout
			} else {
				if err := os.MkdirAll(filepath.Dir(output), 0o755); err != nil {
					return err
				}
				out, err = os.CreateTemp(filepath.Dir(output), "."+filepath.Base(output)+".*")
				if err != nil {
					return err
				}
				tmp = out.Name()
				defer func() { _ = os.Remove(tmp) }()
			}
			res, err := bundle.Write(ctx, out, imgs, src, bundle.WriteOptions{Platforms: matcher, Compression: compression})
			if err != nil {
				return err
			}
			if tmp != "" {
				if err := out.Close(); err != nil {
					return err
				}
				if err := os.Rename(tmp, output); err != nil {
					return err
				}
				fi, err := os.Stat(output)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "wrote %s: %d images, %d blobs, %s → %s (%s) in %s\n", output, res.Images, res.Blobs,
					mib(res.Bytes), mib(fi.Size()), compression, time.Since(start).Round(time.Millisecond))
			}
			return nil
		},
	}
	set.register(cmd.Flags())
	set.registerOnly(cmd.Flags())
	cmd.Flags().StringVarP(&output, "output", "o", "", "bundle file to write (- for standard output)")
	cmd.Flags().StringVar(&compression, "compression", "", "zstd, gzip or none (default from the file name; zstd)")
	cmd.Flags().StringSliceVar(&platformList, "platform", nil, "platforms whose layers to carry, e.g. linux/amd64,linux/arm64 (default --platform or this node's)")
	cmd.Flags().BoolVar(&fromContainerd, "from-containerd", false, "export from this node's containerd instead of the registry")
	return cmd
}

func compressionFor(name string) string {
	switch {
	case strings.HasSuffix(name, ".gz"), strings.HasSuffix(name, ".tgz"):
		return "gzip"
	case strings.HasSuffix(name, ".tar"):
		return "none"
	}
	return "zstd"
}

func platformMatcher(list []string, global string) (platforms.Matcher, error) {
	if len(list) == 0 && global != "" {
		list = []string{global}
	}
	if len(list) == 0 {
		return platforms.Default(), nil
	}
	var ps []platforms.Platform
	for _, s := range list {
		p, err := platforms.Parse(s)
		if err != nil {
			return nil, fmt.Errorf("invalid --platform %q: %w", s, err)
		}
		ps = append(ps, p)
	}
	return platforms.Any(ps...), nil
}
