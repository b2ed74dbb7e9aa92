package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/precache/precache/internal/cache"
)

func newStatusCommand(a *app) *cobra.Command {
	var (
		set    setFlags
		output string
	)
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show whether each image of the set is present, complete, unpacked and pinned",
		Long: `status reads containerd (never the registry) and prints one row per desired image. It exits
1 if any image is not right, so it can serve as a check: precache status ... || precache bootstrap ...
With --kubeconfig or --from-cluster the set is the discovered recovery set (see precache images).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := outputFormat(output).validate(); err != nil {
				return err
			}
			images, found, err := a.imageSet(cmd.Context(), &set)
			if err != nil {
				return err
			}
			store, err := a.openStore(cmd.Context(), storeFlags{})
			if err != nil {
				return err
			}
			defer store.Close()
			rows, err := cache.Status(cmd.Context(), store, images)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if found != nil && output != "json" {
				printFacts(w, found)
			}
			if output == "json" {
				if err := writeJSON(w, rows); err != nil {
					return err
				}
			} else {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "IMAGE\tPART\tDIGEST\tPRESENT\tCOMPLETE\tUNPACKED\tPINNED\tPROBLEM")
				for i, r := range rows {
					part := string(images[i].Part)
					if part == "" {
						part = "-"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", images[i].Ref.Display(), part, shortDigest(r.Digest.String()),
						yesNo(r.Present && r.DigestOK), yesNo(r.Complete), yesNo(r.Unpacked), yesNo(r.Pinned), r.Problem)
				}
				tw.Flush()
			}
			bad := 0
			for _, r := range rows {
				if !r.OK() {
					bad++
				}
			}
			if bad > 0 {
				return &exitError{code: 1, msg: fmt.Sprintf("%d of %d images not right; run precache bootstrap with the same flags", bad, len(rows))}
			}
			return nil
		},
	}
	set.register(cmd.Flags())
	set.registerOnly(cmd.Flags())
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	return cmd
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
