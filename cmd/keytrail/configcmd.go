package main

import (
	"errors"
	"fmt"
	"io/fs"

	"github.com/spf13/cobra"

	"github.com/keytrail/keytrail/policies"
)

func newConfigCmd(e *env) *cobra.Command {
	c := &cobra.Command{
		Use:   "config",
		Short: "Validate the server configuration",
	}
	c.AddCommand(newConfigCheckCmd(e))
	return c
}

func newConfigCheckCmd(e *env) *cobra.Command {
	var cfgPath string
	c := &cobra.Command{
		Use:   "check --config FILE",
		Short: "Validate a server configuration and the policy it names, as keytrail server does at start-up",
		Long: `Validate a server configuration file and the policy it names the way
'keytrail server --config FILE' does before it starts: the same strict
decoder, the same environment overrides (KEYTRAIL_LISTEN, VAULT_ADDR,
KEYTRAIL_REDIS_URL), the same validation, and the policy loaded as the
server loads it (its files, ca_file included, read). Every problem is
printed on stderr, one per line, named by file, field and line, e.g.
"keytrail.yaml: log.level: must be debug, info, warn or error (line 12)"
or "(from VAULT_ADDR)" for a value the environment set; the policy's
warnings as "warning: ...". On success it prints one "ok:" line for the
configuration and one for the policy.

Nothing is contacted or written: not Vault (its address, token and
AppRole or Kubernetes login are checked only by the server), not Redis,
not the audit file, which is neither created nor opened. Run it where the
server runs, with its environment, as paths and variables are read there.

Exit status: 0 the configuration and its policy are valid; 1 they are not
(every problem on stderr) or cannot be read; 2 usage.`,
		Example: `  keytrail config check --config /etc/keytrail/config.yaml
  VAULT_ADDR=https://vault.internal:8200 keytrail config check --config keytrail.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if cfgPath == "" {
				return exitError{code: exitUsage, msg: "config check: --config is required"}
			}
			cfg, err := LoadConfig(cfgPath, e.getenv)
			if err != nil {
				return configProblems(e, err)
			}
			store := "in-memory"
			if cfg.Store.Shared() {
				store = "redis"
			}
			fmt.Fprintf(e.stdout, "ok: config %s (listen %s, public_url %s, store %s, audit %s)\n",
				cfgPath, cfg.Listen, cfg.PublicURL, store, cfg.Audit.File)
			pol, err := checkServedPolicy(cfg.Policy)
			if err != nil {
				return policyProblems(e, err)
			}
			printPolicyWarnings(e, pol)
			fmt.Fprintf(e.stdout, "ok: policy %s: %d issuers, %d workloads, %d grants, %d admins, %d exceptions (hash %s)\n",
				cfg.Policy, len(pol.Issuers()), len(pol.Workloads()), len(pol.Grants()), len(pol.Admins()), len(pol.Exceptions()), pol.Hash()[:16])
			return nil
		},
	}
	c.Flags().StringVar(&cfgPath, "config", "", "server configuration file (YAML), as given to keytrail server")
	return c
}

// configProblems prints LoadConfig's problems, one per line, and returns
// exit status 1.
func configProblems(e *env, err error) error {
	var multi interface{ Unwrap() []error }
	if errors.As(err, &multi) {
		errs := multi.Unwrap()
		for _, p := range errs {
			fmt.Fprintln(e.stderr, p)
		}
		return exitError{code: 1, msg: fmt.Sprintf("%d problem(s) in the configuration", len(errs))}
	}
	fmt.Fprintln(e.stderr, err)
	if errors.As(err, new(*fs.PathError)) {
		return exitError{code: 1, msg: "configuration not read"}
	}
	return exitError{code: 1, msg: "invalid configuration"}
}

// checkServedPolicy loads the policy at path as the server serves it:
// validated, and the files it names (ca_file) readable.
func checkServedPolicy(path string) (*policies.Policy, error) {
	pol, err := policies.Load(path)
	if err != nil {
		return nil, err
	}
	if err := pol.CheckFiles(); err != nil {
		return nil, err
	}
	return pol, nil
}
