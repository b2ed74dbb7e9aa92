package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"
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
			images, err := set.build()
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if output == "json" {
				return writeJSON(w, images)
			}
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "IMAGE\tCOMPONENT\tOPTIONAL\tEXPECTED DIGEST\tSOURCE")
			for _, img := range images {
				comp, exp := img.Component, "-"
				if comp == "" {
					comp = "-"
				}
				if img.Ref.Digest != "" {
					exp = img.Ref.Digest.String()
				}
				opt := ""
				if img.Optional {
					opt = "optional"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", img.Ref.Display(), comp, opt, exp, img.Source)
			}
			return tw.Flush()
		},
	}
	set.register(cmd.Flags())
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	return cmd
}
