package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/trace"
	"github.com/keytrail/keytrail/policies"
)

func newReportCmd(e *env) *cobra.Command {
	var (
		format       string
		auditLogs    []string
		policyPath   string
		out          string
		addr         string
		tokenFile    string
		insecureHTTP bool
		noVerify     bool
		mustVerify   bool
		maxEvents    int
	)
	c := &cobra.Command{
		Use:   "report [--format text|json|html] [--audit-log FILE... [--policy PATH]] [--out FILE]",
		Short: "Inventory, owners, active credentials and attribution gaps",
		Long: `report lists workloads with their owners, active credentials per workload
and grant, grants never issued, workloads with no issuance for 30 days,
unowned identities seen in denies, shared-use suspicions, policy exceptions
expired or expiring within 30 days, and deny counts by reason.

Formats: text (default), json, or html: one self-contained file (inline
styles and an inline script that draws a timeline chart of issuances, uses
and revocations per workload; nothing is loaded from anywhere).

Offline, with --audit-log FILE... (rotated siblings and directories as for
'keytrail trace'): the report covers those files; --policy names the policy
(file or directory) for owners, allowed grants and exceptions. Active
credentials are then derived from the log (issued, unexpired, unrevoked).
Their hash chain is checked in the same pass (as for 'keytrail trace'; not
the checkpoint signatures: run 'keytrail audit verify --key/--jwks' for
those): when it does not hold, the report still comes, with a note naming
the first problem (and a warning on stderr). A chain that starts after
seq 1 in the files (retention) is checked from there, with a note saying
so, not a failure (as for 'keytrail trace'). --no-verify skips the check;
--require-verified makes a chain that does not hold exit 3, once the report
is written.
Online, without --audit-log: GET /v1/admin/report (an admin with the report
role; server and token as for 'keytrail trace'), where active credentials of
every instance come from the shared store. Audit files that take longer
than 5 s to read get a progress line on stderr every 5 s.

Exit status: 0 the report was written; 1 an audit file, the policy or the
server could not be read (the error says which), or --out could not be
written; 2 usage; 3 (with --require-verified) the report was written, but
the audit files do not verify.`,
		Example: `  keytrail report
  keytrail report --format html --out report.html
  keytrail report --audit-log /var/lib/keytrail/ --policy /etc/keytrail/policies --format json`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 && cmd.Flags().Changed("audit-log") {
				return fmt.Errorf("unexpected argument %q: takes no arguments%s", args[0], auditLogsHint(cmd))
			}
			return cobra.NoArgs(cmd, args)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			switch format {
			case "text", "json", "html":
			default:
				return exitError{code: exitUsage, msg: fmt.Sprintf("report: --format must be text, json or html, not %q", format)}
			}
			if policyPath != "" && len(auditLogs) == 0 {
				return exitError{code: exitUsage, msg: "report: --policy is for offline reports (with --audit-log); online reports use the server's policy"}
			}
			if err := onlineFlagsOffline(cmd, auditLogs); err != nil {
				return err
			}
			// Before the audit files are read (minutes for a large log),
			// not after.
			if err := probeReportOut(out); err != nil {
				return err
			}
			var rep *trace.Report
			var vrep *audit.Report
			if len(auditLogs) > 0 {
				x, err := trace.NewIndex(trace.Options{MaxEvents: maxEvents})
				if err != nil {
					return err
				}
				if vrep, err = loadAuditFiles(e, "keytrail report", x, auditLogs, !noVerify); err != nil {
					return fmt.Errorf("report: --audit-log: %w", err)
				}
				in := trace.ReportInput{Now: time.Now(), Events: x.Events()}
				for _, note := range trimmedNotes(vrep) {
					fmt.Fprintf(e.stderr, "keytrail: note: %s\n", note)
					in.Notes = append(in.Notes, note)
				}
				if note := chainNote(vrep); note != "" {
					fmt.Fprintf(e.stderr, "keytrail: warning: %s\n", note)
					in.Notes = append(in.Notes, note)
				}
				st := x.Stats()
				if st.Dropped > 0 {
					in.Notes = append(in.Notes, fmt.Sprintf("only the last %d events are covered (--max-events); %d older ones were dropped", st.Max, st.Dropped))
				}
				if st.Skipped > 0 {
					in.Notes = append(in.Notes, skippedNote(st.Skipped))
				}
				if policyPath != "" {
					if in.Policy, err = policies.Load(policyPath); err != nil {
						return fmt.Errorf("report: --policy: %w", err)
					}
				}
				if rep, err = trace.BuildReport(in); err != nil {
					return err
				}
			} else {
				cl, err := newAdminClient(e, addr, tokenFile, insecureHTTP)
				if err != nil {
					return fmt.Errorf("report: %w", err)
				}
				rep = &trace.Report{}
				if _, err := adminGet(cmd.Context(), cl, "/v1/admin/report", nil, rep); err != nil {
					return fmt.Errorf("report: %w", err)
				}
			}
			err := writeReport(e.stdout, out, format, rep)
			if mustVerify {
				err = requireVerified(e, "report", vrep, err, false)
			}
			return err
		},
	}
	f := c.Flags()
	f.StringVar(&format, "format", "text", "text, json or html")
	f.StringSliceVar(&auditLogs, "audit-log", nil, "report offline over these keytrail audit files or directories")
	f.StringVar(&policyPath, "policy", "", "policy file or directory for offline reports")
	f.StringVar(&out, "out", "", "write the report to this file (0600, atomically) instead of standard output")
	f.StringVar(&addr, "addr", "", "keytrail server URL for online reports (default $KEYTRAIL_ADDR or "+defaultKeytrailAddr+")")
	f.StringVar(&tokenFile, "token-file", "", "file holding the admin's identity token (default $KEYTRAIL_ADMIN_TOKEN_FILE, then $KEYTRAIL_ADMIN_TOKEN)")
	adminInsecureHTTPFlags(c, &insecureHTTP)
	f.IntVar(&maxEvents, "max-events", 0, fmt.Sprintf("bound of the offline index (default %d events)", trace.DefaultMaxEvents))
	f.BoolVar(&noVerify, "no-verify", false, "do not check the hash chain of the --audit-log files while reading them")
	f.BoolVar(&mustVerify, "require-verified", false, "exit 3, once the report is written, when the hash chain of the --audit-log files does not verify")
	return c
}

func writeReport(stdout io.Writer, out, format string, rep *trace.Report) error {
	render := func(w io.Writer) error {
		switch format {
		case "json":
			return writeJSONOut(w, rep)
		case "html":
			return rep.WriteHTML(w)
		default:
			return rep.WriteText(w)
		}
	}
	if out == "" {
		return render(stdout)
	}
	// Rendered in memory, then written as fetch writes credentials: a
	// temporary file, fsync, rename, fsync of the directory.
	var buf bytes.Buffer
	if err := render(&buf); err != nil {
		return fmt.Errorf("report: --out %s: %w", out, err)
	}
	if err := writeAtomic(out, buf.Bytes()); err != nil {
		return fmt.Errorf("report: --out: %w", err)
	}
	return nil
}

// probeReportOut checks that writeReport will be able to write out: not a
// directory, and a temporary file can be made next to it.
func probeReportOut(out string) error {
	if out == "" {
		return nil
	}
	if fi, err := os.Stat(out); err == nil && fi.IsDir() {
		return fmt.Errorf("report: --out %s: is a directory", out)
	}
	f, err := os.CreateTemp(filepath.Dir(out), ".keytrail-report-*")
	if err != nil {
		return fmt.Errorf("report: --out %s: cannot write in %s: %w", out, filepath.Dir(out), stripPath(err))
	}
	f.Close()
	return os.Remove(f.Name())
}
