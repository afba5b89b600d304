// Command keytrail is the one keytrail binary: the broker (server), a
// one-command development setup (dev), the workload client (fetch, exec), the
// security team's and auditor's tools (revoke, trace, audit verify, report)
// and policy tooling (policy check, policy explain). It is the only place
// that names concrete adapters and wires them together.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	if err != nil {
		var ee exitError
		if errors.As(err, &ee) {
			if ee.msg != "" {
				fmt.Fprintln(os.Stderr, "keytrail:", ee.msg)
			}
			os.Exit(ee.code)
		}
		fmt.Fprintln(os.Stderr, "keytrail:", err)
		os.Exit(1)
	}
}

// exitError carries a specific exit status.
type exitError struct {
	code int
	msg  string
}

func (e exitError) Error() string { return fmt.Sprintf("exit %d: %s", e.code, e.msg) }

// env is what every command gets from the outside world.
type env struct {
	ctx    context.Context
	getenv func(string) string
	stdout io.Writer
	stderr io.Writer
}

// run executes the CLI with explicit inputs and outputs (testable without a
// process).
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	e := &env{ctx: ctx, getenv: getenv, stdout: stdout, stderr: stderr}
	root := newRootCmd(e)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	return root.ExecuteContext(ctx)
}

func newRootCmd(e *env) *cobra.Command {
	root := &cobra.Command{
		Use:   "keytrail",
		Short: "Short-lived, attributable credentials for workloads, minted through Vault",
		Long: `keytrail is a secrets broker. Workloads exchange the identity token their
platform gives them (Kubernetes, GitHub Actions OIDC, SPIFFE JWT-SVID, any OIDC
issuer) for short-lived credentials minted through HashiCorp Vault. Every
credential is tagged with workload, owner and session, and every issuance, use
and revocation goes to a tamper-evident audit log.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(
		newServerCmd(e),
		newDevCmd(e),
		newFetchCmd(e),
		newExecCmd(e),
		newRevokeCmd(e),
		newTraceCmd(e),
		newAuditCmd(e),
		newPolicyCmd(e),
		newReportCmd(e),
		newVersionCmd(e),
		newBenchCmd(e),
	)
	return root
}

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func newVersionCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the keytrail version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			fmt.Fprintln(e.stdout, "keytrail", version)
			return nil
		},
	}
}

// notYet is the honest answer of a command whose issue has not landed.
func notYet(what string, issue int) error {
	return exitError{code: 2, msg: fmt.Sprintf("%s is not implemented yet (tracked in issue #%d)", what, issue)}
}
