package main

import (
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/precache/precache/internal/cluster"
	"github.com/precache/precache/internal/manifest"
)

func newImagesCommand(a *app) *cobra.Command {
	var (
		set    setFlags
		output string
	)
	cmd := &cobra.Command{
		Use:   "images",
		Short: "Print the desired image set, without touching containerd",
		Long: `images prints the set precache keeps, one row per image: its part of the recovery set,
its component, the digest it must have and where each fact comes from (the object and
container, or the node file and line), then why each part is on the node's path back to
a working pod network and DNS. With --kubeconfig or --from-cluster the set is discovered:
Calico, tigera-operator, kube-proxy, node-local DNS and CoreDNS from the cluster, the
static pods of the kubelet's staticPodPath and containerd's sandbox image from the node's
files under --root. --only narrows it.`,
		Example: `  precache images --kubeconfig ~/.kube/config
  precache images --from-cluster --only calico,sandbox -o json
  precache images --calico-version v3.28.1
  precache images --calico-version v3.30.2 --variant operator -o json
  precache images --calico-version v3.28.1 --registry registry.local:5000 --image-path mirror/calico`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := outputFormat(output).validate(); err != nil {
				return err
			}
			images, found, err := a.imageSet(cmd.Context(), &set)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if output == "json" {
				if found != nil {
					out := map[string]any{"cluster": found.Kubeconfig, "root": a.global.root, "parts": found.Parts,
						"facts": found.Facts, "warnings": found.Warnings, "images": images}
					if c := found.Calico; c != nil {
						out["version"], out["variant"], out["disagreements"] = c.Version, c.Variant, c.Disagreements
						out["facts"] = append(append([]cluster.Fact{}, c.Facts...), found.Facts...)
					}
					return writeJSON(w, out)
				}
				return writeJSON(w, images)
			}
			if found != nil {
				printFacts(w, found)
			}
			return printImages(w, images)
		},
	}
	set.register(cmd.Flags())
	set.registerOnly(cmd.Flags())
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	return cmd
}

// printImages prints one row per image, then why each part of the set is on the path.
func printImages(w io.Writer, images []manifest.Image) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "IMAGE\tPART\tCOMPONENT\tOPTIONAL\tEXPECTED DIGEST\tSOURCE")
	var parts []manifest.Part
	for _, img := range images {
		part, comp, exp := string(img.Part), img.Component, "-"
		if part == "" {
			part = "-"
		} else if !manifest.HasPart(parts, img.Part) {
			parts = append(parts, img.Part)
		}
		if comp == "" {
			comp = "-"
		}
		if img.Ref.Digest != "" {
			exp = shortDigest(img.Ref.Digest.String()) + " (" + img.DigestSource + ")"
		}
		opt := ""
		if img.Optional {
			opt = "optional"
		}
		src := img.Source
		if img.TagSource != "" {
			// The cluster names the image by digest only; say where its tag comes from.
			src += "; tag from " + img.TagSource
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", img.Ref.Display(), part, comp, opt, exp, src)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(parts) > 1 || len(parts) == 1 && parts[0] != manifest.PartCalico {
		fmt.Fprintln(w, "\nwhy each part is on the path:")
		for _, p := range manifest.Parts {
			if !manifest.HasPart(parts, p) {
				continue
			}
			fmt.Fprintf(w, "  %-18s %s\n", p, p.Role())
			if p == manifest.PartCalico {
				continue // the catalog's roles say which workload, not why
			}
			seen := map[string]bool{}
			for _, img := range images {
				if img.Part == p && img.Role != "" && img.Role != p.Role() && !seen[img.Component] {
					seen[img.Component] = true
					fmt.Fprintf(w, "    %-16s %s\n", img.Component, img.Role)
				}
			}
		}
	}
	return nil
}
