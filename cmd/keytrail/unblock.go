package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/spf13/cobra"

	"github.com/keytrail/keytrail/broker"
)

func newUnblockCmd(e *env) *cobra.Command {
	var (
		workload, revocationID, reason string
		jsonOut                        bool
		addr, tokenFile                string
		insecureHTTP                   bool
	)
	c := &cobra.Command{
		Use:   "unblock --workload W --reason R [--revocation-id ID] [--json]",
		Short: "Lift the block a revocation put on a workload",
		Long: `Lift the block on a workload (revoke --block put it), on every keytrail
instance at once, through the admin API (DELETE /v1/admin/blocks/{workload}).
--reason is required and goes to the audit log (the unblock event).
--revocation-id names the block to lift: the revocation_id of the revocation
that blocked the workload (its receipt, GET /v1/admin/blocks). With it the
block is lifted only while it is that revocation's; a newer block (another
revocation since) stays, and the command says which revocation holds it.
Without it, whatever block stands is lifted. A retry is safe either way: if
the first try went through, the retry lifts nothing and says the workload is
not blocked, exit 0 as for the first try (the server answers 404, and the
command then checks GET /v1/admin/blocks: the workload is not listed).

` + revokeAccessHelp + `

Exit status:
  0  the block is lifted, or the workload is not blocked (nothing to
     unblock: a retry after a success, or a workload that was not blocked;
     --json: {"workload": W, "unblocked": false, "not_blocked": true})
  1  it was not, or not confirmed (the error says which: blocked by another
     revocation than --revocation-id; the store unavailable, retry; stored
     but confirmed by fewer replicas than store.min_replicas,
     store_unreplicated; refused; or no answer)
  2  usage: a flag or argument is wrong or missing; nothing was sent`,
		Example: `  keytrail unblock --workload payments-api --revocation-id rev_01JD... --reason "INC-4711: key rotated"
  keytrail unblock --workload batch --reason "blocked by mistake" --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case workload == "":
				return exitError{code: exitUsage, msg: "unblock: --workload is required"}
			case workload == "." || workload == "..":
				return exitError{code: exitUsage, msg: fmt.Sprintf("unblock: --workload %q is not a workload name", workload)}
			case strings.TrimSpace(reason) == "":
				return exitError{code: exitUsage, msg: "unblock: --reason is required (it is recorded in the audit log)"}
			case revocationID != "" && !strings.HasPrefix(revocationID, broker.PrefixRevocation):
				return exitError{code: exitUsage, msg: fmt.Sprintf("unblock: --revocation-id must be a revocation id (%s...), as the revocation's receipt and GET /v1/admin/blocks show it", broker.PrefixRevocation)}
			}
			cl, err := newAdminClient(e, addr, tokenFile, insecureHTTP)
			if err != nil {
				return fmt.Errorf("unblock: %w", err)
			}
			q := url.Values{"reason": {reason}}
			if revocationID != "" {
				q.Set("revocation_id", revocationID)
			}
			var ans struct {
				Workload  string `json:"workload"`
				Unblocked bool   `json:"unblocked"`
			}
			if status, err := cl.do(cmd.Context(), http.MethodDelete, "/v1/admin/blocks/"+url.PathEscape(workload), q, nil, &ans); err != nil {
				if status != http.StatusNotFound || blockStands(cmd.Context(), cl, workload) {
					return fmt.Errorf("unblock: %w", err)
				}
				// Not blocked (the 404 of a retry whose first try went
				// through): what unblock is for holds, as a repeated
				// revoke exits 0.
				if jsonOut {
					enc := json.NewEncoder(e.stdout)
					enc.SetIndent("", "  ")
					return enc.Encode(map[string]any{"workload": workload, "unblocked": false, "not_blocked": true})
				}
				fmt.Fprintf(e.stdout, "workload %s is not blocked: nothing to unblock (an earlier unblock went through, or it was not blocked)\n", workload)
				return nil
			}
			if !ans.Unblocked || ans.Workload != workload {
				return fmt.Errorf("unblock: the server's answer does not confirm the unblock of %q", workload)
			}
			if jsonOut {
				enc := json.NewEncoder(e.stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(ans)
			}
			if revocationID != "" {
				fmt.Fprintf(e.stdout, "unblocked workload %s (the block of revocation %s): new credentials can be issued to it again\n", workload, revocationID)
			} else {
				fmt.Fprintf(e.stdout, "unblocked workload %s: new credentials can be issued to it again\n", workload)
			}
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&workload, "workload", "", "the blocked workload (required)")
	f.StringVar(&revocationID, "revocation-id", "", "lift the block only while it is this revocation's (rev_...)")
	f.StringVar(&reason, "reason", "", "why (required; recorded in the audit log)")
	f.BoolVar(&jsonOut, "json", false, "print the server's answer as JSON")
	f.StringVar(&addr, "addr", "", "keytrail server URL (default $KEYTRAIL_ADDR or "+defaultKeytrailAddr+")")
	f.StringVar(&tokenFile, "token-file", "", "file holding the admin's identity token (default $KEYTRAIL_ADMIN_TOKEN_FILE, then $KEYTRAIL_ADMIN_TOKEN)")
	adminInsecureHTTPFlags(c, &insecureHTTP)
	return c
}

// blockStands reports whether GET /v1/admin/blocks lists a block of
// workload, or cannot say (an error): only a listing without it tells a
// 404 of a workload that is not blocked from one of a block another
// revocation holds (block_changed), which the OAuth error code does not.
func blockStands(ctx context.Context, cl *adminClient, workload string) bool {
	var list struct {
		Blocks *[]broker.Block `json:"blocks"`
	}
	if _, err := cl.do(ctx, http.MethodGet, "/v1/admin/blocks", nil, nil, &list); err != nil || list.Blocks == nil {
		return true
	}
	for _, b := range *list.Blocks {
		if b.Workload == workload {
			return true
		}
	}
	return false
}
