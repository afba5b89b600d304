package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/trace"
)

func newTraceCmd(e *env) *cobra.Command {
	var (
		auditLogs    []string
		vaultLog     string
		asJSON       bool
		addr         string
		tokenFile    string
		insecureHTTP bool
		maxEvents    int
		noVerify     bool
		mustVerify   bool
	)
	c := &cobra.Command{
		Use:   "trace [VALUE] [--audit-log FILE...] [--vault-audit-log FILE] [--json]",
		Short: "Trace a credential, fingerprint, accessor, lease, user name, jti, serial or request id to its issuance",
		Long: `trace finds the one issuance behind a value seen in any log, and shows the
workload, owner, session, identity claims used, source addresses, every use
and every revocation, as a timeline (or --json).

VALUE may be a raw credential (hashed, never kept or sent as is when it has
the shape of a Vault token, a proxy credential or a JWT), a fingerprint
(sha256:<hex>, bare hex, base64 or base64url SHA-256), an issuance, use,
revocation or request id, the upstream API's own request id of a proxied
call (Stripe's req_..., x-amzn-RequestId, X-GitHub-Request-Id, CF-Ray...),
a Vault accessor, a lease id, a generated user name, a JWT jti or a
certificate serial: in hex in any case, with or without ':' separators and
leading zeros (Vault's 0f:3b:..., openssl's 0F3B..., f3b...),
or in decimal (PostgreSQL's ssl_client_serial()). An all-digit serial reads as
hex and as decimal: when both name an issuance, the other is listed as also
matched. A value may be copied with its quotes (PostgreSQL's role "kt-iss-..."),
an "Authorization: Bearer " prefix, the header name of the ids the proxy sends
upstream (X-Request-Id: use_..., X-Keytrail-Issuance: iss_...) or as
PostgreSQL's log shows a role (user=NAME or user="NAME", up to the first space
or comma): it is read without them.

Offline, with --audit-log FILE... (no broker needed; several files as
--audit-log A --audit-log B or --audit-log A,B): the files are read with
their rotated siblings (FILE.<timestamp>, oldest first); a directory stands
for every *.jsonl file in it. Files that take longer than 5 s to read get a
progress line on stderr every 5 s. Their hash chain is checked in the same
pass (seq, prev links, form, as 'keytrail audit verify' checks it, but not
the checkpoint signatures: no key is given): when it does not hold, a
warning on stderr names the first problem, and the answer, still printed,
rests on lines that may have been changed, inserted or removed. Run
'keytrail audit verify --key/--jwks' for the signatures. --no-verify skips
the check (less CPU on a large log). --require-verified makes a chain that
does not hold exit 3, after the answer is printed (for scripts that must
not take an answer from files that do not verify); also when nothing
matches: an issuance whose lines were removed is not found either. A chain
that starts after seq 1 in the files (retention removed its oldest files)
is checked from its first line, as 'keytrail audit verify
--allow-trimmed-start' does: a note on stderr says from which seq, and that
nothing the lines before it recorded is in the answer; it is not a failure.
Online, without --audit-log: GET /v1/admin/trace on the server named by
--addr, else $KEYTRAIL_ADDR, else ` + defaultKeytrailAddr + `, with your
identity token (an admin with the trace role) from --token-file, else the
file named by $KEYTRAIL_ADMIN_TOKEN_FILE, else $KEYTRAIL_ADMIN_TOKEN. The
server searches its own audit log and the store's issuances: the id of a
use, revocation or request made through another instance is only in that
instance's log (trace it offline, with --audit-log over every instance's logs).

--vault-audit-log FILE reads Vault's file audit device log: with VALUE, it
lists the Vault requests made with that credential, and a VALUE keytrail does
not know is looked up in it (an HMAC'd accessor or token, hmac-sha256:...,
or a Vault request id) and traced through the issuance the token of the
entries carrying it names; without VALUE (and with
--audit-log), it attributes every request made with a token to its keytrail
issuance (token metadata issuance_id, or the accessor where Vault logs
accessors in clear) and lists the attribution gaps: requests no keytrail
issuance explains, grouped by token display name and accessor. Requests made
with a root token and unauthenticated ones are counted, not gaps. Its reads
get the same progress lines on stderr.

Exit status: 0 found, 1 not found or an error (also a whole
--vault-audit-log with no Vault request entry in it: the wrong file), 2
usage, 3 (with --require-verified) the audit files do not verify: the
answer, or "no issuance matches", was still printed (an error that left no
answer is 1).`,
		Example: `  keytrail trace hvs.CAESI... --audit-log /var/lib/keytrail/audit.jsonl
  keytrail trace sha256:9f86d081... --json
  keytrail trace --vault-audit-log /var/log/vault/audit.log --audit-log /var/lib/keytrail/`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 1 {
				hint := auditLogsHint(cmd)
				if hint == "" {
					hint = "; quote a VALUE that has spaces"
				}
				return fmt.Errorf("takes one VALUE, got %d arguments%s", len(args), hint)
			}
			if len(args) == 1 && strings.TrimSpace(args[0]) == "" {
				// Asked anyway, the server (or the offline index, after
				// reading every file) answered "invalid request: empty
				// query", exit 1.
				return errors.New("VALUE is empty (a shell variable not set?)")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := onlineFlagsOffline(cmd, auditLogs); err != nil {
				return err
			}
			var x *trace.Index
			// verified is what the command returns once the answer (or
			// "no issuance matches": notFound) is written: with
			// --require-verified, the chain check's failure.
			verified := func(err error, notFound bool) error { return err }
			if len(auditLogs) > 0 {
				var err error
				if x, err = trace.NewIndex(trace.Options{MaxEvents: maxEvents}); err != nil {
					return err
				}
				vrep, err := loadAuditFiles(e, "keytrail trace", x, auditLogs, !noVerify)
				if err != nil {
					return fmt.Errorf("trace: --audit-log: %w", err)
				}
				for _, note := range trimmedNotes(vrep) {
					fmt.Fprintf(e.stderr, "keytrail: note: %s\n", note)
				}
				if note := chainNote(vrep); note != "" {
					fmt.Fprintf(e.stderr, "keytrail: warning: %s\n", note)
				}
				if mustVerify {
					verified = func(err error, notFound bool) error { return requireVerified(e, "trace", vrep, err, notFound) }
				}
				st := x.Stats()
				if st.Dropped > 0 {
					fmt.Fprintf(e.stderr, "keytrail: warning: %d oldest event(s) did not fit the index (--max-events %d)\n", st.Dropped, st.Max)
				}
				if st.Skipped > 0 {
					fmt.Fprintf(e.stderr, "keytrail: warning: %s\n", skippedNote(st.Skipped))
				}
			}
			if len(args) == 0 {
				if vaultLog == "" {
					return exitError{code: exitUsage, msg: "trace: give a VALUE, or --vault-audit-log with --audit-log to resolve a whole Vault audit log"}
				}
				if x == nil {
					return exitError{code: exitUsage, msg: "trace: resolving a whole Vault audit log needs keytrail's audit files (--audit-log)"}
				}
				return verified(resolveVaultLog(e, vaultLog, x, asJSON), false)
			}
			value := args[0]
			lookup := func(v string) (*trace.Result, error) {
				if x != nil {
					return x.Lookup(v)
				}
				return traceOnline(e, cmd, addr, tokenFile, insecureHTTP, v)
			}
			res, err := lookup(value)
			if errors.Is(err, broker.ErrNotFound) && vaultLog != "" {
				r, verr := traceThroughVaultLog(e, vaultLog, value, lookup)
				if !errors.Is(verr, broker.ErrNotFound) {
					res, err = r, verr
				} // else the first answer's, which says what the server searched
			}
			if err != nil {
				if errors.Is(err, broker.ErrNotFound) {
					return verified(exitError{code: 1, msg: "no issuance matches " + describeQuery(value) + notFoundDetail(err)}, true)
				}
				return fmt.Errorf("trace: %w", err)
			}
			if vaultLog != "" {
				f, closeLog, err := openVaultLog(e, vaultLog)
				if err != nil {
					return fmt.Errorf("trace: --vault-audit-log: %w", err)
				}
				var total int
				res.Vault, total, err = trace.VaultEntriesFor(f, res.Issuance)
				res.VaultTotal, res.VaultDropped = &total, total-len(res.Vault)
				closeLog()
				if err != nil {
					return err
				}
			}
			if asJSON {
				return verified(writeJSONOut(e.stdout, res), false)
			}
			return verified(res.WriteText(e.stdout), false)
		},
	}
	f := c.Flags()
	f.StringSliceVar(&auditLogs, "audit-log", nil, "trace offline over these keytrail audit files or directories (rotated siblings are found)")
	f.StringVar(&vaultLog, "vault-audit-log", "", "Vault's file audit device log to attribute")
	f.BoolVar(&asJSON, "json", false, "print JSON")
	f.StringVar(&addr, "addr", "", "keytrail server URL for online traces (default $KEYTRAIL_ADDR or "+defaultKeytrailAddr+")")
	f.StringVar(&tokenFile, "token-file", "", "file holding the admin's identity token (default $KEYTRAIL_ADMIN_TOKEN_FILE, then $KEYTRAIL_ADMIN_TOKEN)")
	adminInsecureHTTPFlags(c, &insecureHTTP)
	f.IntVar(&maxEvents, "max-events", 0, fmt.Sprintf("bound of the offline index (default %d events)", trace.DefaultMaxEvents))
	f.BoolVar(&noVerify, "no-verify", false, "do not check the hash chain of the --audit-log files while reading them")
	f.BoolVar(&mustVerify, "require-verified", false, "exit 3, after the answer (found or not), when the hash chain of the --audit-log files does not verify")
	return c
}

// describeQuery names a query without repeating a credential.
func describeQuery(v string) string {
	if trace.LooksSecret(v) {
		return "the credential with fingerprint " + trace.SafeQuery(v)
	}
	if len(v) > 80 {
		return "the value with fingerprint " + broker.Fingerprint(v)
	}
	return fmt.Sprintf("%q", v)
}

// notFoundAnswer is the server's 404 to a trace: its error_description
// (which says what it searched: its own audit log, and the store).
type notFoundAnswer struct{ desc string }

func (e *notFoundAnswer) Error() string { return e.desc }
func (e *notFoundAnswer) Unwrap() error { return broker.ErrNotFound }

// notFoundDetail is what the server's not-found answer err says beyond
// "no issuance matches this value" (which the CLI says with the value),
// "" when nothing.
func notFoundDetail(err error) string {
	var nf *notFoundAnswer
	if !errors.As(err, &nf) {
		return ""
	}
	const plain = "no issuance matches this value"
	if rest, ok := strings.CutPrefix(nf.desc, plain); ok {
		return rest
	}
	return " (the server: " + nf.desc + ")"
}

// traceThroughVaultLog finds value in Vault's audit log (an HMAC'd
// accessor or token, a Vault request id) and traces the issuance the
// entries carrying it name; others they name are listed as also matched.
func traceThroughVaultLog(e *env, path, value string, lookup func(string) (*trace.Result, error)) (*trace.Result, error) {
	f, closeLog, err := openVaultLog(e, path)
	if err != nil {
		return nil, fmt.Errorf("--vault-audit-log: %w", err)
	}
	refs, err := trace.VaultRefs(f, value)
	closeLog()
	if err != nil {
		return nil, err
	}
	var res *trace.Result
	for _, ref := range refs {
		r, err := lookup(ref)
		if errors.Is(err, broker.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if res == nil {
			res = r
			continue
		}
		for _, id := range append([]string{r.Issuance.ID}, r.AlsoMatched...) {
			if id != res.Issuance.ID && !slices.Contains(res.AlsoMatched, id) {
				res.AlsoMatched = append(res.AlsoMatched, id)
			}
		}
	}
	if res == nil {
		return nil, broker.ErrNotFound
	}
	res.Query = trace.Match{Kind: trace.KindVaultAuditLog, Value: trace.SafeQuery(value)}
	return res, nil
}

// onlineFlagsOffline refuses, as a usage mistake, the flags of the online
// mode (server and admin token) together with --audit-log, which answers
// offline without them (an operator who names a server expects its answer,
// not the files'), --max-events, --no-verify or --require-verified without
// --audit-log, and --require-verified with --no-verify.
// auditLogsHint explains, after --audit-log, how to name several audit
// files: "--audit-log FILE..." takes one file per flag, so the second file
// of "--audit-log a.jsonl b.jsonl" (or of a shell glob) is an argument.
func auditLogsHint(cmd *cobra.Command) string {
	if !cmd.Flags().Changed("audit-log") {
		return ""
	}
	return "; name several audit files as --audit-log A --audit-log B, --audit-log A,B or their directory"
}

func onlineFlagsOffline(cmd *cobra.Command, auditLogs []string) error {
	if len(auditLogs) == 0 {
		if cmd.Flags().Changed("max-events") {
			return exitError{code: exitUsage, msg: fmt.Sprintf("%s: --max-events bounds the offline index (with --audit-log); online, the server answers", cmd.Name())}
		}
		if cmd.Flags().Changed("no-verify") {
			return exitError{code: exitUsage, msg: fmt.Sprintf("%s: --no-verify skips the hash chain check of the audit files (with --audit-log); online, the server answers", cmd.Name())}
		}
		if cmd.Flags().Changed("require-verified") {
			return exitError{code: exitUsage, msg: fmt.Sprintf("%s: --require-verified fails on audit files that do not verify (with --audit-log); online, the server answers", cmd.Name())}
		}
		return nil
	}
	rv, _ := cmd.Flags().GetBool("require-verified")
	nv, _ := cmd.Flags().GetBool("no-verify")
	if rv && nv {
		return exitError{code: exitUsage, msg: fmt.Sprintf("%s: --require-verified needs the hash chain check that --no-verify skips", cmd.Name())}
	}
	for _, name := range []string{"addr", "token-file", "allow-insecure-http", "insecure-http"} {
		if cmd.Flags().Changed(name) {
			return exitError{code: exitUsage, msg: fmt.Sprintf("%s: --%s is for the online mode; with --audit-log the answer comes from the files, not a server", cmd.Name(), name)}
		}
	}
	return nil
}

// traceOnline asks the server. A value shaped like a raw credential is sent
// as its fingerprint: the secret never leaves this machine.
func traceOnline(e *env, cmd *cobra.Command, addr, tokenFile string, insecureHTTP bool, value string) (*trace.Result, error) {
	cl, err := newAdminClient(e, addr, tokenFile, insecureHTTP)
	if err != nil {
		return nil, err
	}
	var res trace.Result
	status, err := adminGet(cmd.Context(), cl, "/v1/admin/trace", url.Values{"q": {trace.SafeQuery(value)}}, &res)
	if status == http.StatusNotFound {
		var ae *adminAnswerError
		if errors.As(err, &ae) && ae.desc != "" {
			return nil, &notFoundAnswer{desc: ae.desc}
		}
		return nil, broker.ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	return &res, nil
}

// adminGet sends GET path?query with the admin token and decodes a 200
// answer into out; any other answer becomes an error with the server's
// OAuth error text.
func adminGet(ctx context.Context, c *adminClient, path string, query url.Values, out any) (int, error) {
	u := c.base.JoinPath(path)
	u.RawQuery = query.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "keytrail-cli/"+version)
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, c.sendError(http.MethodGet, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxReportResponse+1))
	if err != nil {
		return resp.StatusCode, fmt.Errorf("reading the answer: %w", err)
	}
	if len(raw) > maxReportResponse {
		return resp.StatusCode, fmt.Errorf("the server's answer is larger than %d MiB, more than this command reads (status %s): run it offline instead, with --audit-log over the audit files", maxReportResponse>>20, resp.Status)
	}
	if resp.StatusCode != http.StatusOK {
		var oe oauthError
		_ = json.Unmarshal(raw, &oe) // answerError says when it is not JSON
		return resp.StatusCode, &adminAnswerError{error: c.answerError(resp, raw), desc: oe.Description}
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return resp.StatusCode, fmt.Errorf("the server's answer is not valid JSON: %w", err)
	}
	return resp.StatusCode, nil
}

// adminAnswerError is adminGet's error for a non-200 answer: answerError's
// text, and the server's error_description ("" when none).
type adminAnswerError struct {
	error
	desc string
}

// maxReportResponse caps trace and report answers (a report of a large
// fleet is bigger than a revocation receipt).
const maxReportResponse = 64 << 20

// openVaultLog opens Vault's audit log for one read; a regular file's
// reader prints audit verify's progress lines on stderr every
// e.progressEvery (a Vault audit log of many GiB takes minutes).
func openVaultLog(e *env, path string) (io.Reader, func(), error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		return f, func() { f.Close() }, nil
	}
	pr := &progress{w: e.stderr, what: "keytrail trace", total: fi.Size(), every: e.progressEvery, last: time.Now()}
	return progressReader{r: f, p: pr, name: path}, func() { f.Close() }, nil
}

func resolveVaultLog(e *env, path string, x *trace.Index, asJSON bool) error {
	f, closeLog, err := openVaultLog(e, path)
	if err != nil {
		return fmt.Errorf("trace: --vault-audit-log: %w", err)
	}
	defer closeLog()
	rep, err := trace.ResolveVaultLog(f, x)
	if err != nil {
		return err
	}
	if rep.Lines > 0 && rep.Requests == 0 {
		// The wrong file (keytrail's own audit log, another format): "no
		// attribution gaps" would be an all-clear with nothing checked.
		return fmt.Errorf("trace: --vault-audit-log %s: none of its %d line(s) is a Vault audit request entry (%d malformed): nothing was attributed; is it the log of Vault's file audit device?", path, rep.Lines, rep.Malformed)
	}
	if asJSON {
		return writeJSONOut(e.stdout, rep)
	}
	return rep.WriteText(e.stdout)
}

func writeJSONOut(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}
