package main

import (
	"github.com/spf13/cobra"
)

func newTraceCmd(e *env) *cobra.Command {
	c := &cobra.Command{
		Use:   "trace VALUE [--audit-log FILE...]",
		Short: "Trace a credential, fingerprint, accessor, lease, user name, jti or request id to its issuance",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return notYet("keytrail trace", 5)
		},
	}
	c.Flags().StringSlice("audit-log", nil, "trace offline over these audit files")
	c.Flags().Bool("json", false, "print JSON")
	return c
}

func newReportCmd(e *env) *cobra.Command {
	c := &cobra.Command{
		Use:   "report [--format text|json|html]",
		Short: "Inventory, owners, active credentials and attribution gaps",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return notYet("keytrail report", 5)
		},
	}
	c.Flags().String("format", "text", "text, json or html")
	return c
}
