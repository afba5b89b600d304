package main

import (
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/golang-jwt/jwt/v5"
	"github.com/spf13/cobra"

	vaultad "github.com/keytrail/keytrail/adapters/vault"
	"github.com/keytrail/keytrail/broker/authn"
	"github.com/keytrail/keytrail/policies"
)

func newPolicyCmd(e *env) *cobra.Command {
	c := &cobra.Command{
		Use:   "policy",
		Short: "Validate policies and explain what a token would get",
		Example: `  keytrail policy check /etc/keytrail/policies
  keytrail policy explain --policy /etc/keytrail/policies --token token.jwt --grant payments-vault
  keytrail policy vault /etc/keytrail/policies > keytrail-broker.hcl`,
	}
	c.AddCommand(newPolicyCheckCmd(e), newPolicyExplainCmd(e), newPolicyVaultCmd(e))
	return c
}

func newPolicyCheckCmd(e *env) *cobra.Command {
	var files bool
	c := &cobra.Command{
		Use:   "check PATH",
		Short: "Validate a policy file or directory; every problem is reported with its file, path and line",
		Long: `Validate a policy file or directory; every problem is reported with its
file, field path and line, e.g. "a.yaml: grants[2].ttl: must be > 0 (line 31)".
The files the policy names (ca_file) are not read unless --files is given:
run it with --files where the broker runs, as the broker checks them at
start and on every reload. With --files, a ca_file certificate that
expires within 30 days, has expired or is not yet valid is a warning,
naming the file, field and certificate: even a bundle none of whose
certificates is valid now, as the broker still loads the policy (only the
TLS connections that bundle verifies fail).

What is valid but likely not meant (an unquoted claims value such as 1.0,
which no number claim equals; an owner mixing Latin letters with Cyrillic
or Greek ones, which looks like an owner it is not) is printed on stderr as
"warning: ...", with the file, field path and line; it does not change the
exit status. The server logs the same warnings at every load.

Exit status: 0 the policy is valid; 1 it is not (every problem on stderr, one
per line) or cannot be read; 2 usage.`,
		Example: `  keytrail policy check policies/examples
  keytrail policy check --files /etc/keytrail/policies`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pol, err := policies.Load(args[0])
			var fileWarnings []*policies.Problem
			if err == nil && files {
				fileWarnings, err = pol.CheckFiles(time.Now())
			}
			if err != nil {
				return policyProblems(e, err)
			}
			printPolicyWarnings(e, pol, fileWarnings)
			fmt.Fprintf(e.stdout, "ok: %d issuers, %d workloads, %d grants, %d admins, %d exceptions (hash %s)\n",
				len(pol.Issuers()), len(pol.Workloads()), len(pol.Grants()), len(pol.Admins()), len(pol.Exceptions()), pol.Hash()[:16])
			return nil
		},
	}
	c.Flags().BoolVar(&files, "files", false, "also check the files the policy names (ca_file) are readable certificates")
	return c
}

// printPolicyWarnings prints the policy's warnings, then fileWarnings
// (CheckFiles'), on stderr, one a line.
func printPolicyWarnings(e *env, pol *policies.Policy, fileWarnings []*policies.Problem) {
	for _, w := range append(pol.Warnings(), fileWarnings...) {
		fmt.Fprintln(e.stderr, "warning: "+w.Error())
	}
}

// policyProblems prints one problem per line and returns exit status 1.
func policyProblems(e *env, err error) error {
	return printProblems(e, err, "policy", func(err error) bool {
		// Not a problem of the policy: its files could not be read.
		var p *policies.Problem
		return !errors.As(err, &p)
	})
}

// printProblems prints err's problems, one per line, and returns exit
// status 1 with a summary naming what was checked: how many problems, or
// "invalid <what>". When notRead says the lone error is a file that could
// not be read, nothing is printed: the one line is "<what> not read: " and
// the system's error naming the file (that of the *fs.PathError in err,
// without the loader's prefix).
func printProblems(e *env, err error, what string, notRead func(error) bool) error {
	var multi interface{ Unwrap() []error }
	if errors.As(err, &multi) {
		errs := multi.Unwrap()
		for _, p := range errs {
			fmt.Fprintln(e.stderr, p)
		}
		return exitError{code: 1, msg: fmt.Sprintf("%d problem(s) in the %s", len(errs), what)}
	}
	if notRead(err) {
		msg := err.Error()
		if pe := (*fs.PathError)(nil); errors.As(err, &pe) {
			msg = pe.Error()
		}
		return exitError{code: 1, msg: what + " not read: " + msg}
	}
	fmt.Fprintln(e.stderr, err)
	return exitError{code: 1, msg: "invalid " + what}
}

func newPolicyExplainCmd(e *env) *cobra.Command {
	var tokenFile, grant, policyPath string
	var unverified bool
	c := &cobra.Command{
		Use:   "explain --token FILE --grant G [--policy PATH]",
		Short: "Say which workload a token matches (or why none does) and what the grant would mint",
		Long: `Explain reads an identity token, verifies it against the policy's issuers
(fetching their JWKS; --unverified skips the signature and time checks for
offline use, not the issuer's algorithms and token_types nor the claims'
shapes and a present exp) and prints, for
every workload of the token's issuer (with the file, path and line that
declare it), why it matched or not, and what the grant would mint. The
policy is --policy, else $KEYTRAIL_POLICY; one of them is required. The
policy's warnings (see 'keytrail policy check') go to stderr.

Exit status: 0 the token would get the grant; 1 it would not (token rejected,
issuer not trusted, no or several workloads match, grant unknown or not the
workload's), or the policy or token cannot be read; 2 usage.`,
		Example: `  keytrail policy explain --policy policies/examples --token .dev/tokens/payments-api.jwt --grant payments-vault
  KEYTRAIL_POLICY=/etc/keytrail/policies keytrail policy explain --unverified --token ci.jwt --grant deploy-vault`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case tokenFile == "" && grant == "":
				return exitError{code: exitUsage, msg: "policy explain: --token and --grant are required"}
			case tokenFile == "":
				return exitError{code: exitUsage, msg: "policy explain: --token is required"}
			case grant == "":
				return exitError{code: exitUsage, msg: "policy explain: --grant is required"}
			}
			if policyPath == "" {
				policyPath = e.getenv("KEYTRAIL_POLICY")
			}
			if policyPath == "" {
				return exitError{code: exitUsage, msg: "policy explain: --policy (or KEYTRAIL_POLICY) is required"}
			}
			pol, err := policies.Load(policyPath)
			if err != nil {
				return policyProblems(e, err)
			}
			printPolicyWarnings(e, pol, nil)
			raw, err := policies.ReadFile(tokenFile) // not blocked on a FIFO, nor /dev/zero read whole
			if err != nil {
				return fmt.Errorf("policy explain: --token: %w", err)
			}
			tok := strings.TrimSpace(string(raw))
			var issuerName string
			var claims map[string]any
			if unverified {
				mc := jwt.MapClaims{}
				// JSON numbers as the server's verifier reads them: exact,
				// not rounded to a float64.
				parsed, _, err := jwt.NewParser(jwt.WithJSONNumber()).ParseUnverified(tok, mc)
				if err != nil {
					return fmt.Errorf("policy explain: --token: not a JWT: %w", err)
				}
				// The issuer as the server's verifier chooses it
				// (authn's issuerFor): by the exact iss, or, for a
				// token with no iss member, by its sub's SPIFFE trust
				// domain.
				rawIss, hasIss := mc["iss"]
				iss, _ := rawIss.(string)
				sub, _ := mc["sub"].(string)
				subTD, subIsSPIFFE := policies.SPIFFEWorkloadTrustDomain(sub)
				var is *policies.Issuer
				var ok bool
				switch {
				case !hasIss && !subIsSPIFFE:
					fmt.Fprintln(e.stdout, "token has no iss claim and its sub is not a SPIFFE ID (missing_issuer): nothing would be granted (an issuer is chosen by its exact iss; SPIRE sets iss in JWT-SVIDs only when the server has jwt_issuer, else they go to the issuer spiffe://<trust domain>)")
					return exitError{code: 1}
				case !hasIss:
					if is, ok = pol.IssuerByTrustDomain(subTD); !ok {
						fmt.Fprintf(e.stdout, "token has no iss claim and no policy issuer is its sub's SPIFFE trust domain %q (untrusted_issuer): nothing would be granted (SPIRE sets iss in JWT-SVIDs only when the server has jwt_issuer)\n", "spiffe://"+subTD)
						return exitError{code: 1}
					}
				case rawIss == nil || rawIss == "":
					fmt.Fprintln(e.stdout, "token's iss claim is null or empty (missing_issuer): nothing would be granted")
					return exitError{code: 1}
				default:
					if is, ok = pol.IssuerByIss(iss); !ok {
						fmt.Fprintf(e.stdout, "token issuer %q is not trusted by any policy issuer: nothing would be granted\n", iss)
						return exitError{code: 1}
					}
				}
				if td := is.TrustDomain(); td != "" && (!subIsSPIFFE || subTD != td) {
					fmt.Fprintf(e.stdout, "token rejected: issuer %s is the SPIFFE trust domain %s and the token's sub is not a SPIFFE ID in it (untrusted_issuer): nothing would be granted\n", is.Name, is.Issuer)
					return exitError{code: 1}
				}
				// The issuer's algorithms and token_types need no key:
				// checked as the server checks them (unsupported_alg;
				// policies.Issuer.CheckTypHeader: bad_token_type, or
				// malformed for a typ not a string).
				alg, _ := parsed.Header["alg"].(string)
				typ, hasTyp := parsed.Header["typ"]
				typErr := is.CheckTypHeader(hasTyp, typ)
				switch {
				case !slices.Contains(is.Algorithms, alg):
					fmt.Fprintf(e.stdout, "token rejected: its alg %q is not in issuer %s's algorithms (unsupported_alg): nothing would be granted\n", alg, is.Name)
					return exitError{code: 1}
				case errors.Is(typErr, policies.ErrTypNotString):
					fmt.Fprintln(e.stdout, "token rejected: typ header is not a string (malformed): nothing would be granted")
					return exitError{code: 1}
				case typErr != nil:
					fmt.Fprintf(e.stdout, "token rejected: its typ header is not one of issuer %s's token_types (bad_token_type): nothing would be granted\n", is.Name)
					return exitError{code: 1}
				}
				// The claims' shapes need no key either: the server
				// refuses an exp, iat or nbf not a number in range, a sub
				// or jti not a string, an aud not a string or strings
				// (malformed), then a token with no exp (missing_exp),
				// then a missing or empty sub (missing_subject), whatever
				// matches the token (authn.CheckClaimShapes, identity).
				if reason, cause := authn.CheckClaimShapes(mc); reason != "" {
					fmt.Fprintf(e.stdout, "token rejected: %v (%s): nothing would be granted\n", cause, reason)
					return exitError{code: 1}
				}
				if sub == "" {
					fmt.Fprintln(e.stdout, "token rejected: its sub claim is missing or empty (missing_subject): nothing would be granted")
					return exitError{code: 1}
				}
				// The server refuses a sub no identifier holds
				// (authn.BadSubjectAt) whatever matches it; the sub is
				// not printed.
				if at := authn.BadSubjectAt(sub); at >= 0 {
					r, _ := utf8.DecodeRuneInString(sub[at:])
					fmt.Fprintf(e.stdout, "token rejected: its sub holds %U at byte %d, a control, format or separator character (bad_subject): nothing would be granted\n", r, at)
					return exitError{code: 1}
				}
				issuerName, claims = is.Name, mc
				fmt.Fprintln(e.stdout, "warning: token NOT verified (--unverified): signature, expiry and audience were not checked")
			} else {
				v, err := authn.New(cmd.Context(), authn.Options{Issuers: pol.Issuers()})
				if err != nil {
					return err
				}
				id, err := v.Authenticate(cmd.Context(), tok)
				if err != nil {
					fmt.Fprintf(e.stdout, "token rejected: %v\n", err)
					return exitError{code: 1}
				}
				issuerName, claims = id.IssuerName, id.Claims
				fmt.Fprintf(e.stdout, "token verified: issuer %s, sub %q\n", id.IssuerName, id.Sub)
			}
			ex := pol.Explain(issuerName, claims, grant)
			fmt.Fprint(e.stdout, ex.String())
			if !strings.HasSuffix(ex.String(), "\n") {
				fmt.Fprintln(e.stdout)
			}
			if !ex.Allowed {
				// As for a rejected token: the answer is on stdout, and a
				// script asking "would it get G?" gets no from the status.
				return exitError{code: 1}
			}
			return nil
		},
	}
	c.Flags().StringVar(&tokenFile, "token", "", "identity token file")
	c.Flags().StringVar(&grant, "grant", "", "grant name")
	c.Flags().StringVar(&policyPath, "policy", "", "policy file or directory (default $KEYTRAIL_POLICY)")
	c.Flags().BoolVar(&unverified, "unverified", false, "do not verify the token (offline explanation)")
	return c
}

func newPolicyVaultCmd(e *env) *cobra.Command {
	var checkpointKey, tokenRole string
	var reconcile bool
	c := &cobra.Command{
		Use:   "vault PATH",
		Short: "Print the minimum Vault policy the broker's own token needs for these policies",
		Long: `vault prints, as HCL, the least-privilege Vault policy for the broker's own
token (mint and revoke what the grants need, read and sign with their
transit keys, read proxy secrets), then, as comments, the policies the token
must also hold because Vault lets a token without sudo hand out only
policies it has itself.

Exit status: 0 printed; 1 the policy is not valid (every problem on stderr)
or cannot be read; 2 usage.`,
		Example: `  keytrail policy vault /etc/keytrail/policies > keytrail-broker.hcl
  keytrail policy vault --token-role keytrail /etc/keytrail/policies`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pol, err := policies.Load(args[0])
			if err != nil {
				return policyProblems(e, err)
			}
			o := vaultad.BrokerPolicyOptions{CheckpointTransitKey: checkpointKey, Reconcile: reconcile, TokenRole: tokenRole}
			hcl, err := vaultad.MinimumBrokerPolicy(pol, o)
			if err != nil {
				return err
			}
			fmt.Fprint(e.stdout, hcl)
			if held := vaultad.HeldPolicies(pol, o); len(held) > 0 {
				fmt.Fprintf(e.stdout, "# the broker token must also hold: %s\n", strings.Join(held, ", "))
			}
			return nil
		},
	}
	c.Flags().StringVar(&checkpointKey, "checkpoint-transit-key", "", "audit.checkpoint_transit_key, if used")
	c.Flags().BoolVar(&reconcile, "reconcile", false, "include what the Vault token reconciliation needs (sudo list of accessors)")
	c.Flags().StringVar(&tokenRole, "token-role", "", "vault.token_role, if used: mint through this token role instead of create-orphan")
	return c
}
