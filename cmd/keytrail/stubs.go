package main

import (
	"github.com/spf13/cobra"
)

func newFetchCmd(e *env) *cobra.Command {
	c := &cobra.Command{
		Use:   "fetch --grant G --identity-token-file F --out FILE [--watch]",
		Short: "Exchange the workload's identity token for a credential and write it atomically (0600)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return notYet("keytrail fetch", 7)
		},
	}
	c.Flags().StringSlice("grant", nil, "grant to fetch (repeatable)")
	c.Flags().String("identity-token-file", "/var/run/secrets/tokens/keytrail", "identity token file (re-read on every exchange)")
	c.Flags().String("out", "", "file to write the credential to")
	c.Flags().Bool("watch", false, "keep running and renew before expiry")
	return c
}

func newExecCmd(e *env) *cobra.Command {
	c := &cobra.Command{
		Use:   "exec --grant G [--identity-token-file F] --env NAME [...] -- CMD [ARGS...]",
		Short: "Run a command with credentials in its environment",
		RunE: func(cmd *cobra.Command, args []string) error {
			return notYet("keytrail exec", 7)
		},
	}
	c.Flags().StringSlice("grant", nil, "grant to fetch (repeatable)")
	c.Flags().String("identity-token-file", "/var/run/secrets/tokens/keytrail", "identity token file")
	c.Flags().StringSlice("env", nil, "environment variable to set, NAME or NAME=field")
	return c
}

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
