package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

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
		Example: `  precache images --calico-version v3.28.1
  precache images --calico-version v3.30.2 --variant operator -o json
  precache images --calico-version v3.28.1 --registry registry.local:5000 --image-path mirror/calico`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := outputFormat(output).validate(); err != nil {
				return err
			}
			var (
				images []manifest.Image
				found  *discovered
				err    error
			)
			if set.discover() {
				found, images, err = a.discoverSet(cmd.Context(), &set)
			} else {
				images, err = set.build()
			}
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if output == "json" {
				if found != nil {
					return writeJSON(w, map[string]any{"cluster": found.Kubeconfig, "version": found.Version, "variant": found.Variant,
						"facts": found.Facts, "disagreements": found.Disagreements, "images": images})
				}
				return writeJSON(w, images)
			}
			if found != nil {
				printFacts(w, found)
			}
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "IMAGE\tCOMPONENT\tOPTIONAL\tEXPECTED DIGEST\tSOURCE")
			for _, img := range images {
				comp, exp := img.Component, "-"
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
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", img.Ref.Display(), comp, opt, exp, src)
			}
			return tw.Flush()
		},
	}
	set.register(cmd.Flags())
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	return cmd
}
