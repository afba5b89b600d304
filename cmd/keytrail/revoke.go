package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/client"
	"github.com/keytrail/keytrail/policies"
)

// Admin client defaults.
const (
	defaultKeytrailAddr = "http://127.0.0.1:7700"
	adminClientTimeout  = 60 * time.Second
	// maxAdminResponse bounds an admin answer read: a receipt lists every
	// issuance a revocation matched (twice while pending: pending and
	// failed), about 130 bytes each, so 64 MiB holds some 500,000.
	maxAdminResponse = 64 << 20
	exitPending      = 3
	// exitRevokeAuditLate: the revocation was made, but the broker
	// answered 503 audit_unavailable naming it (its revoke event was not
	// durable in time).
	exitRevokeAuditLate = 4
)

func newRevokeCmd(e *env) *cobra.Command {
	var (
		sel          revokeBody
		jsonOut      bool
		addr         string
		tokenFile    string
		insecureHTTP bool
	)
	c := &cobra.Command{
		Use:   "revoke (--issuance ID | --session ID | --workload W | --owner O) --reason R [--block] [--force] [--json]",
		Short: "Revoke one credential, a session, a workload or everything an owner has",
		Long: `Revoke credentials on every keytrail instance at once, through the admin API
(POST /v1/admin/revoke). Exactly one of --issuance, --session, --workload or
--owner says what to end; --reason is required and goes to the audit log.
--block also refuses new credentials to the workload concerned (every workload
of the owner, with --owner) until the block is lifted with keytrail unblock
--workload W --revocation-id <this revocation's id> --reason R (the id names
the block to lift, so a retry never lifts a newer one). A --workload
or --owner that neither the policy in force nor any recorded issuance knows,
nor (for a workload) a standing block (a typo, a wrong case) is refused and
nothing is revoked or blocked; --force revokes and blocks the name anyway
(e.g. a workload about to be deployed).

` + revokeAccessHelp + `

Exit status:
  0  every matched credential is revoked
  3  revoked in keytrail, but some backend revocations (e.g. Vault) are still
     pending; the server retries them until they succeed
  1  the revocation was not made, or not confirmed (the error says which:
     refused, e.g. an unknown --workload; not made, the store unavailable;
     stored but confirmed by fewer replicas than store.min_replicas,
     store_unreplicated, finished by the server unless a failover loses it;
     or no answer): retry when it says so
  4  the revocation was made, but not confirmed in the audit log: the
     server answered 503 audit_unavailable naming it (its revoke event was
     late); it is in force and finished by the server; do not retry, check
     GET /v1/admin/revocations/<id> once the audit log takes writes again
  2  usage: a flag or argument is wrong or missing; nothing was sent`,
		Example: `  keytrail revoke --workload payments-api --block --reason "INC-4711: key leaked"
  keytrail revoke --issuance iss_01JD... --reason "seen in a public gist" --json
  KEYTRAIL_ADDR=https://keytrail.internal:7700 KEYTRAIL_ADMIN_TOKEN_FILE=~/.sso-token \
    keytrail revoke --owner team-data --reason "team offboarded"`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			n := 0
			for _, v := range []string{sel.IssuanceID, sel.SessionID, sel.Workload, sel.Owner} {
				if v != "" {
					n++
				}
			}
			if n != 1 {
				return exitError{code: exitUsage, msg: "revoke: give exactly one of --issuance, --session, --workload or --owner"}
			}
			if strings.TrimSpace(sel.Reason) == "" {
				return exitError{code: exitUsage, msg: "revoke: --reason is required (it is recorded in the audit log)"}
			}
			cl, err := newAdminClient(e, addr, tokenFile, insecureHTTP)
			if err != nil {
				return fmt.Errorf("revoke: %w", err)
			}
			var rc receipt
			status, err := cl.do(cmd.Context(), http.MethodPost, "/v1/admin/revoke", nil, sel, &rc)
			var ae *answerErr
			if errors.As(err, &ae) && ae.status == http.StatusServiceUnavailable && ae.revocationID != "" {
				// Made, its revoke event late: told by the answer's
				// revocation_id field, which only a revocation made has.
				return exitError{code: exitRevokeAuditLate, msg: "revoke: the revocation " + ae.revocationID +
					" was made, but not confirmed in the audit log (its revoke event was not durable in time); do not retry: check GET /v1/admin/revocations/" +
					ae.revocationID + " once the audit log takes writes again (" + err.Error() + ")"}
			}
			if err != nil {
				return fmt.Errorf("revoke: %w", err)
			}
			if jsonOut {
				enc := json.NewEncoder(e.stdout)
				enc.SetIndent("", "  ")
				if err := enc.Encode(rc); err != nil {
					return err
				}
			} else {
				printReceipt(e.stdout, &rc)
			}
			if status == http.StatusAccepted || len(rc.Pending) > 0 {
				return exitError{code: exitPending}
			}
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&sel.IssuanceID, "issuance", "", "revoke one credential by issuance id (iss_...)")
	f.StringVar(&sel.SessionID, "session", "", "revoke every active credential of a session (ses_...)")
	f.StringVar(&sel.Workload, "workload", "", "revoke every active credential of a workload")
	f.StringVar(&sel.Owner, "owner", "", "revoke every active credential of an owner: of its workloads in the policy and of any issuance recorded with that owner")
	f.StringVar(&sel.Reason, "reason", "", "why (required; recorded in the audit log)")
	f.BoolVar(&sel.Block, "block", false, "also refuse new credentials to the workload(s) until unblocked")
	f.BoolVar(&sel.Force, "force", false, "accept a --workload or --owner unknown to the policy in force, to every recorded issuance and (a workload) to the blocks")
	f.BoolVar(&jsonOut, "json", false, "print the receipt as JSON")
	f.StringVar(&addr, "addr", "", "keytrail server URL (default $KEYTRAIL_ADDR or "+defaultKeytrailAddr+")")
	f.StringVar(&tokenFile, "token-file", "", "file holding the admin's identity token (default $KEYTRAIL_ADMIN_TOKEN_FILE, then $KEYTRAIL_ADMIN_TOKEN)")
	adminInsecureHTTPFlags(c, &insecureHTTP)
	return c
}

// adminInsecureHTTPFlags defines --allow-insecure-http, the name fetch and
// exec use, and its older name --insecure-http (hidden, still accepted).
func adminInsecureHTTPFlags(c *cobra.Command, v *bool) {
	f := c.Flags()
	f.BoolVar(v, "allow-insecure-http", false, "allow sending the admin token over plain HTTP to a non-loopback address")
	f.BoolVar(v, "insecure-http", false, "older name of --allow-insecure-http")
	_ = f.MarkHidden("insecure-http")
}

// revokeBody is the POST /v1/admin/revoke request.
type revokeBody struct {
	IssuanceID string `json:"issuance_id,omitempty"`
	SessionID  string `json:"session_id,omitempty"`
	Workload   string `json:"workload,omitempty"`
	Owner      string `json:"owner,omitempty"`
	Reason     string `json:"reason"`
	Block      bool   `json:"block,omitempty"`
	Force      bool   `json:"force,omitempty"`
}

// receipt is the server's answer (SPEC "Security teams and auditors").
type receipt struct {
	RevocationID string   `json:"revocation_id"`
	Status       string   `json:"status"`
	Matched      int      `json:"matched"`
	Revoked      []string `json:"revoked"`
	Pending      []string `json:"pending"`
	Failed       []struct {
		IssuanceID string `json:"issuance_id"`
		Error      string `json:"error"`
	} `json:"failed"`
	Selector struct {
		IssuanceID string `json:"issuance_id,omitempty"`
		SessionID  string `json:"session_id,omitempty"`
		Workload   string `json:"workload,omitempty"`
		Owner      string `json:"owner,omitempty"`
	} `json:"selector"`
	Reason      string     `json:"reason"`
	Block       bool       `json:"block"`
	Blocks      []string   `json:"blocks,omitempty"` // nil from a server that does not name them
	Admin       string     `json:"admin,omitempty"`
	CreatedAt   time.Time  `json:"created_at"`
	SweepAt     *time.Time `json:"sweep_at,omitempty"`
	CompletedAt *time.Time `json:"completed_at,omitempty"`
}

func printReceipt(w io.Writer, rc *receipt) {
	target := ""
	switch s := rc.Selector; {
	case s.IssuanceID != "":
		target = "issuance " + s.IssuanceID
	case s.SessionID != "":
		target = "session " + s.SessionID
	case s.Workload != "":
		target = "workload " + s.Workload
	case s.Owner != "":
		target = "owner " + s.Owner
	}
	blocked := ""
	switch {
	case rc.Block && rc.Blocks == nil:
		blocked = ", new credentials blocked"
	case rc.Block && len(rc.Blocks) == 0:
		blocked = ", block asked for but no workload found to block: nothing blocked"
	case rc.Block:
		blocked = ", new credentials blocked for " + strings.Join(rc.Blocks, ", ")
	}
	fmt.Fprintf(w, "revocation %s (%s%s)\n", rc.RevocationID, target, blocked)
	fmt.Fprintf(w, "revoked %d of %d matched credential(s)\n", len(rc.Revoked), rc.Matched)
	for _, id := range rc.Revoked {
		fmt.Fprintf(w, "  revoked  %s\n", id)
	}
	if len(rc.Pending) > 0 {
		// keytrail's own checks refuse them, but whoever holds them can
		// still use them at their backend until the retry succeeds.
		fmt.Fprintf(w, "pending %d: refused by keytrail but NOT yet revoked at their backend: a Vault token, database login or certificate still works there until the server's retry succeeds\n", len(rc.Pending))
		errs := map[string]string{}
		for _, f := range rc.Failed {
			errs[f.IssuanceID] = f.Error
		}
		for _, id := range rc.Pending {
			fmt.Fprintf(w, "  pending  %s  %s\n", id, errs[id])
		}
		fmt.Fprintf(w, "follow with: GET /v1/admin/revocations/%s\n", rc.RevocationID)
	}
	if rc.SweepAt != nil {
		fmt.Fprintf(w, "credentials minted while it ran are looked for and revoked at %s\n", rc.SweepAt.UTC().Format(time.RFC3339))
	}
}

// adminClient calls the admin API with the admin's identity token.
type adminClient struct {
	base     *url.URL
	token    string
	tokenSrc string // where the token came from, for error messages
	addrSrc  string // where the server address came from, likewise
	http     *http.Client
}

func newAdminClient(e *env, addr, tokenFile string, insecureHTTP bool) (*adminClient, error) {
	addrSrc := "--addr"
	if addr == "" {
		addr, addrSrc = e.getenv("KEYTRAIL_ADDR"), "KEYTRAIL_ADDR"
	}
	if addr == "" {
		addr, addrSrc = defaultKeytrailAddr, "the default: neither --addr nor KEYTRAIL_ADDR is set"
	}
	// The workload client's check (shape, no credentials, errors that quote
	// no secret); plain HTTP gets the admin token's own message below.
	u, err := client.CheckAddr(addr, true)
	if err != nil {
		return nil, fmt.Errorf("server address (%s): %w", addrSrc, err)
	}
	if u.Scheme == "http" && !insecureHTTP && !policies.IsLoopbackHost(u.Hostname()) {
		return nil, fmt.Errorf("refusing to send the admin token over plain HTTP to %s; use https (or --allow-insecure-http)", u.Host)
	}
	token, src, err := adminToken(e, tokenFile)
	if err != nil {
		return nil, err
	}
	return &adminClient{base: u, token: token, tokenSrc: src, addrSrc: addrSrc, http: &http.Client{
		Timeout: adminClientTimeout,
		// Never follow a redirect with the token attached.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}, nil
}

// adminToken reads the admin's identity token: --token-file, else
// $KEYTRAIL_ADMIN_TOKEN_FILE, else $KEYTRAIL_ADMIN_TOKEN, and names where it
// came from.
func adminToken(e *env, tokenFile string) (string, string, error) {
	src := "--token-file"
	if tokenFile == "" {
		tokenFile, src = e.getenv("KEYTRAIL_ADMIN_TOKEN_FILE"), "KEYTRAIL_ADMIN_TOKEN_FILE"
	}
	var tok string
	if tokenFile != "" {
		b, err := readAdminTokenFile(e, tokenFile)
		if err != nil {
			return "", "", fmt.Errorf("admin token (%s): %w", src, err)
		}
		tok = strings.TrimSpace(string(b))
		if tok == "" {
			// The operator set a file: say that it is empty, not that
			// no token was given.
			return "", "", fmt.Errorf("admin token (%s): %s is empty", src, tokenFile)
		}
	} else {
		tok, src = strings.TrimSpace(e.getenv("KEYTRAIL_ADMIN_TOKEN")), "KEYTRAIL_ADMIN_TOKEN"
	}
	if tok == "" {
		return "", "", errors.New("no admin token: set --token-file, KEYTRAIL_ADMIN_TOKEN_FILE or KEYTRAIL_ADMIN_TOKEN")
	}
	if strings.ContainsAny(tok, " \t\r\n") {
		return "", "", fmt.Errorf("admin token (%s) must be one line without spaces", src)
	}
	return tok, src, nil
}

// adminTokenLoosePerm are the mode bits that let others than the owner
// (and a group it shares the file with for reading, as a Vault agent sink's
// default 0640 does) read or change the admin token.
const adminTokenLoosePerm = 0o027

// readAdminTokenFile reads the admin token file and warns on stderr when
// others can read or change it. A warning, not a refusal (as ssh does for
// private keys): the token is usually a short-lived SSO token kept where
// its tool puts it, and refusing would stop an incident response. Only a
// regular file (or a symlink to one) is read, as the config file is: a
// named pipe or a device is refused, naming it, instead of blocking the
// command forever.
func readAdminTokenFile(e *env, path string) ([]byte, error) {
	f, err := policies.OpenRegular(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && runtime.GOOS != "windows" && fi.Mode().Perm()&adminTokenLoosePerm != 0 {
		fmt.Fprintf(e.stderr, "keytrail: warning: admin token file %s has mode %#o: others can read or change it; chmod 600 %s\n", path, fi.Mode().Perm(), path)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxAdminTokenFile+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxAdminTokenFile {
		// Refused, not cut: a cut token is one the operator never had.
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxAdminTokenFile)
	}
	return b, nil
}

// maxAdminTokenFile bounds what is read from the admin token file.
const maxAdminTokenFile = 1 << 20

// oauthError is the server's error shape.
type oauthError struct {
	Error       string `json:"error"`
	Description string `json:"error_description"`
	RequestID   string `json:"request_id"`
	// RevocationID names a revocation made although the request failed
	// (503 audit_unavailable of POST /v1/admin/revoke).
	RevocationID string `json:"revocation_id"`
}

// answerErr is an admin API answer that is not a success.
type answerErr struct {
	status       int
	revocationID string // the answer's revocation_id, if any
	msg          string
}

func (e *answerErr) Error() string { return e.msg }

// do sends body (nil: none) as JSON, with query (nil: none), and decodes a
// 2xx answer into out. Any other answer becomes an error with the server's
// OAuth error text.
func (c *adminClient) do(ctx context.Context, method, path string, query url.Values, body, out any) (int, error) {
	var rd io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			return 0, err
		}
		rd = bytes.NewReader(raw)
	}
	u := c.base.JoinPath(path)
	u.RawQuery = query.Encode()
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "keytrail-cli/"+version)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, c.sendError(method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxAdminResponse+1))
	if err != nil {
		return resp.StatusCode, fmt.Errorf("reading the answer: %w", err)
	}
	if len(raw) > maxAdminResponse {
		return resp.StatusCode, fmt.Errorf("the server's answer is larger than %d MiB, more than this command reads (status %s)", maxAdminResponse>>20, resp.Status)
	}
	if resp.StatusCode/100 != 2 {
		return resp.StatusCode, c.answerError(resp, raw)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return resp.StatusCode, fmt.Errorf("the server's answer is not a receipt: %w", err)
		}
	}
	return resp.StatusCode, nil
}

// answerError is the error for an admin API answer that is not a success:
// the server's OAuth error text and, for a 401 (the admin token refused),
// where the token came from.
func (c *adminClient) answerError(resp *http.Response, raw []byte) error {
	var oe oauthError
	if json.Unmarshal(raw, &oe) != nil || oe.Error == "" {
		return fmt.Errorf("server answered %s", resp.Status)
	}
	msg := fmt.Sprintf("%d %s", resp.StatusCode, oe.Error)
	if oe.Description != "" {
		msg += ": " + oe.Description
	}
	if oe.RequestID != "" {
		msg += " (request_id " + oe.RequestID + ")"
	}
	if resp.StatusCode == http.StatusUnauthorized {
		msg += "; the admin token (from " + c.tokenSrc + ") was refused: check its issuer, audience and expiry"
	}
	return &answerErr{status: resp.StatusCode, revocationID: oe.RevocationID, msg: msg}
}

// sendError is the error for a request that got no answer: a timeout, or
// where it went and, when nothing listens there or the host name does not
// resolve, where that address came from and what to do.
func (c *adminClient) sendError(method, path string, err error) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("%s %s: no answer within %s", method, path, adminClientTimeout)
	}
	// Scheme and host only: never user info, path or query.
	where := (&url.URL{Scheme: c.base.Scheme, Host: c.base.Host}).String()
	var dnsErr *net.DNSError
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("no keytrail server at %s (from %s): connection refused; start it there, or give the running server's URL with --addr or KEYTRAIL_ADDR", where, c.addrSrc)
	case errors.As(err, &dnsErr) && dnsErr.IsNotFound:
		return fmt.Errorf("no keytrail server at %s (from %s): host %q not found; check --addr or KEYTRAIL_ADDR", where, c.addrSrc, c.base.Hostname())
	}
	return fmt.Errorf("%s %s: %w", method, c.base.Host, unwrapURLError(err))
}

func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// wireRevocationCache fronts rt.store with a revocation cache that re-reads
// the revocation state every second and applies announcements at once
// (Redis pub/sub with a Redis store, an in-process fan-out otherwise),
// registers keytrail_store_data_losses_total,
// keytrail_store_data_loss_records_dropped_total and
// keytrail_revocation_notices_refused_total, and starts it. The result is
// the store the Service uses: checks deny when the store or the cache says
// so.
func (rt *brokerRuntime) wireRevocationCache(ctx context.Context) (broker.Store, error) {
	n, ok := rt.store.(broker.Notifier)
	if !ok {
		n = memstore.NewNotifier()
	}
	cache, err := broker.NewRevocationCache(rt.store, broker.CacheOptions{Notifier: n, Logger: rt.log, FastReads: true})
	if err != nil {
		return nil, err
	}
	if err := rt.reg.Register(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "keytrail_store_data_losses_total",
		Help: "Times the revocation cache saw the store lose data (its revocation change number went back: Redis restarted without persistence, flushed, or failed over to a replica that lacked writes), and 1 when this instance started on a store whose deployment id changed since its last start; each is logged at ERROR.",
	}, func() float64 { return float64(cache.StoreLosses() + rt.storeLostAtStart) })); err != nil {
		return nil, err
	}
	if err := rt.reg.Register(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "keytrail_store_data_loss_records_dropped_total",
		Help: "Revocation records the revocation cache kept to write back after a store data loss that did not decode, and so were not written back (lost with the store's data); each is logged at ERROR. Not to happen.",
	}, func() float64 { return float64(cache.WriteBackDropped()) })); err != nil {
		return nil, err
	}
	if err := rt.reg.Register(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "keytrail_revocation_notices_refused_total",
		Help: "Entries notices alone would have had the revocation cache keep that it refused, its cap (400,000 of each kind: revoked ids no store read has listed, blocks kept here only, lifted blocks remembered) being reached; forged notices on the channel, likely. Nothing known is dropped; a WARN at most once a minute. 0 normally.",
	}, func() float64 { return float64(cache.NoticesRefused()) })); err != nil {
		return nil, err
	}
	rt.goBackground(ctx, cache.Run)
	if rt.keepStoreID != nil {
		// The id goes back once the blocks and records are written back,
		// not at the loss: an instance dying in between leaves the store
		// without it, so that the next start reports the loss.
		rt.keepStoreID(ctx, cache.LossesWrittenBack)
	}
	return cache.Store(), nil
}

// startRevocationWorker runs the worker that retries pending backend
// revocations and registers the keytrail_revocations_pending gauge.
func (rt *brokerRuntime) startRevocationWorker(ctx context.Context, reg prometheus.Registerer) error {
	w, err := broker.NewRevocationWorker(rt.svc, broker.WorkerOptions{})
	if err != nil {
		return err
	}
	if err := reg.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "keytrail_revocations_pending",
		Help: "Revocations whose backend part (e.g. Vault) has not succeeded yet and is being retried.",
	}, func() float64 { return float64(w.PendingCount()) })); err != nil {
		return err
	}
	rt.goAfterStart(w.Run)
	return nil
}

// goAfterStart runs fn as goBackground does once the start event is durable
// (rt.afterStart); never when the start-up fails before it.
func (rt *brokerRuntime) goAfterStart(fn func(context.Context) error) {
	rt.afterStart = append(rt.afterStart, fn)
}

// goBackground runs fn until the runtime closes (after the HTTP server has
// shut down). Closers run in reverse order, so a loop started after the
// audit sink opened (as every loop that writes audit events must be) stops
// before the sink closes. stop ends fn's context at once (the closer
// then only waits), and done is closed when fn has returned.
func (rt *brokerRuntime) goBackground(ctx context.Context, fn func(context.Context) error) (stop context.CancelFunc, done <-chan struct{}) {
	bctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	donec := make(chan struct{})
	go func() { defer close(donec); _ = fn(bctx) }()
	rt.closers = append(rt.closers, func() error {
		rt.closing("the background loops to stop (policy reloads, revocation worker, reconciler, key refresh)")
		stop()
		<-donec
		return nil
	})
	return stop, donec
}

// revokeAccessHelp is the --help paragraph of the commands that call the
// admin API with the revoke role (revoke, unblock): which server, which
// token.
const revokeAccessHelp = `Server:      --addr, else $KEYTRAIL_ADDR, else ` + defaultKeytrailAddr + `
Admin token: your identity token (an identity that policy lists under admins
             with the revoke role), read from --token-file, else from the file
             named by $KEYTRAIL_ADMIN_TOKEN_FILE, else from $KEYTRAIL_ADMIN_TOKEN
             (a file others can read gets a warning: chmod 600 it).`
