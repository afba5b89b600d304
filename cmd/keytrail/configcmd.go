package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime"
	"time"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	vaultad "github.com/keytrail/keytrail/adapters/vault"
	"github.com/keytrail/keytrail/policies"
)

func newConfigCmd(e *env) *cobra.Command {
	c := &cobra.Command{
		Use:     "config",
		Short:   "Validate the server configuration",
		Example: `  keytrail config check --config /etc/keytrail/config.yaml`,
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
decoder, the same environment overrides (KEYTRAIL_LISTEN, VAULT_ADDR, VAULT_NAMESPACE,
KEYTRAIL_REDIS_URL), the same validation (KEYTRAIL_RECONCILE,
KEYTRAIL_RECONCILE_INTERVAL and KEYTRAIL_RECONCILE_GRACE included: a value
the server refuses is a problem), and the policy loaded as the
server loads it (its files, ca_file included, read). Every problem is
printed on stderr, one per line, named by file, field and line, e.g.
"keytrail.yaml: log.level: must be debug, info, warn or error (line 12)"
or "(from VAULT_ADDR)" for a value the environment set; the policy's
warnings as "warning: ...". On success it prints one "ok:" line for the
configuration and one for the policy.

Once the configuration validates, every file it names that the server
reads is read and parsed with the server's own readers (most only after
its Vault login): vault.ca_file, vault.token_file, the AppRole role and
secret id files (or the Kubernetes jwt_file), store.ca_file,
audit.checkpoint_key_file (or the default key next to audit.file, if it
exists), tls.cert_file with tls.key_file (they must parse and match) and
tls.client_ca_file, e.g. "keytrail.yaml: tls.key_file: /x/key.pem: no PEM
private key (line 14)". A serving certificate (tls.cert_file) that has
expired or is not yet valid is a problem, and so is a CA bundle
(vault.ca_file, store.ca_file, tls.client_ca_file) none of whose
certificates is valid now. Warnings, which leave the exit status 0: a
serving certificate that expires within 7 days (the server reloads a
renewed one), a CA bundle's certificate that expires within 30 days, or
has expired (or is not yet valid) next to a valid one, and a token,
secret id, checkpoint key or TLS key file with mode bits in 027 (others,
or the group for writing, can read or change it). The policy's own
ca_files (issuers, proxy grants) have their dates judged the same way,
but as warnings only, as 'keytrail policy check --files' does.

Nothing is contacted or written: not Vault (whether it accepts the token
or the AppRole or Kubernetes login is checked only by the server), not
Redis, not the audit file, which is neither created nor opened, nor the
default checkpoint key, which the server creates on first start. Run it
where the server runs, with its environment, as paths and variables are
read there.

Vault's token: without vault.auth (or vault.approle) the server takes
exactly one of VAULT_TOKEN and vault.token_file; both is a problem, neither
a warning (the check may run where the server's secrets are not, as in CI).

Exit status: 0 the configuration and its policy are valid; 1 they are not
(every problem on stderr) or cannot be read; 2 usage.`,
		Example: `  keytrail config check --config /etc/keytrail/config.yaml
  VAULT_ADDR=https://vault.internal:8200 keytrail config check --config keytrail.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if cfgPath == "" {
				return exitError{code: exitUsage, msg: "config check: --config is required"}
			}
			cfg, doc, err := loadConfigDoc(cfgPath, e.getenv)
			if pe := (*fs.PathError)(nil); errors.As(err, &pe) && pe.Path == cfgPath {
				// The file could not be read: one line, named by the
				// command as other commands' errors are.
				return exitError{code: 1, msg: "config check: " + pe.Error()}
			}
			if err != nil {
				if st, serr := os.Stat(cfgPath); serr == nil && !st.Mode().IsRegular() {
					// A directory, a named pipe...: refused before a
					// byte was read; one line naming the path too.
					return exitError{code: 1, msg: "config check: " + policies.NotRegular(cfgPath, st.Mode()).Error()}
				}
				return configProblems(e, err)
			}
			problems, warnings := checkConfigFiles(cfgPath, cfg, doc, time.Now())
			p, w := checkVaultToken(cfg, e.getenv("VAULT_TOKEN") != "")
			problems, warnings = append(problems, p...), append(warnings, w...)
			if err := checkReconcileEnv(e.getenv); err != nil {
				problems = append(problems, err) // the server refuses to start with it
			}
			for _, w := range warnings {
				fmt.Fprintln(e.stderr, "warning: "+w)
			}
			if len(problems) > 0 {
				return configProblems(e, errors.Join(problems...))
			}
			store := "in-memory"
			if cfg.Store.Shared() {
				store = "redis"
			}
			fmt.Fprintf(e.stdout, "ok: config %s (listen %s, public_url %s, store %s, audit %s)\n",
				cfgPath, cfg.Listen, cfg.PublicURL, store, cfg.Audit.File)
			pol, fileWarnings, err := checkServedPolicy(cfg.Policy, time.Now())
			if err != nil {
				return policyProblems(e, err)
			}
			printPolicyWarnings(e, pol, fileWarnings)
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
	return printProblems(e, err, "configuration", func(err error) bool {
		return errors.As(err, new(*fs.PathError))
	})
}

// checkVaultToken says what the server would of its Vault token
// (Config.vaultTokenProblem): both VAULT_TOKEN and vault.token_file is a
// problem (the server refuses to start); neither is only a warning, as the
// check may run where the server's secrets are not (CI), while the server
// would refuse to start.
func checkVaultToken(c *Config, envToken bool) (problems []error, warnings []string) {
	msg, both := c.vaultTokenProblem(envToken)
	switch {
	case both:
		problems = append(problems, errors.New(msg))
	case msg != "":
		warnings = append(warnings, msg)
	}
	return problems, warnings
}

// checkServedPolicy loads the policy at path as the server serves it:
// validated, and the files it names (ca_file) readable. fileWarnings are
// CheckFiles' (the dates of the ca_files' certificates at now); the
// policy's own are pol.Warnings().
func checkServedPolicy(path string, now time.Time) (pol *policies.Policy, fileWarnings []*policies.Problem, err error) {
	pol, err = policies.Load(path)
	if err != nil {
		return nil, nil, err
	}
	fileWarnings, err = pol.CheckFiles(now)
	if err != nil {
		return nil, nil, err
	}
	return pol, fileWarnings, nil
}

// certExpiryWarning is how long before its certificate expires keytrail
// config check warns about tls.cert_file.
const certExpiryWarning = 7 * 24 * time.Hour

// looseSecretPerm are the mode bits that let others than the owner (and a
// group it shares the file with for reading) read or change a secret file:
// config check warns about them, as keytrail revoke does for the admin
// token.
const looseSecretPerm = adminTokenLoosePerm

// checkConfigFiles reads and parses every file of c that keytrail server
// reads at start-up, with the server's own readers, and contacts nothing.
// problems are errors, each named by file, field and line; warnings do not
// stop the server: a key or token file others can read or change, a
// serving certificate that expires within certExpiryWarning. c is as
// decoded, before LoadConfig turns vault.approle into vault.auth, so a
// problem names the field as written.
// kubernetesJWTFile is the service-account token a Kubernetes login reads
// when vault.auth.jwt_file is not set (a variable for the tests).
var kubernetesJWTFile = vaultad.DefaultKubernetesJWTFile

func checkConfigFiles(file string, c *Config, doc *yaml.Node, now time.Time) (problems []error, warnings []string) {
	at := func(field string) string {
		if line := policies.NodeLine(doc, field); line > 0 {
			return fmt.Sprintf(" (line %d)", line)
		}
		return ""
	}
	bad := func(field string, err error) {
		problems = append(problems, fmt.Errorf("%s: %s: %v%s", file, field, err, at(field)))
	}
	warn := func(field, format string, args ...any) {
		warnings = append(warnings, fmt.Sprintf("%s: %s: %s%s", file, field, fmt.Sprintf(format, args...), at(field)))
	}
	secret := func(field, path string) {
		fi, err := os.Stat(path)
		if err != nil || runtime.GOOS == "windows" || fi.Mode().Perm()&looseSecretPerm == 0 {
			return
		}
		warn(field, "%s has mode %#o: others can read or change it; chmod 600 %s", path, fi.Mode().Perm(), path)
	}

	// caBundle reads a CA bundle, as the server does, and judges the
	// dates of its certificates.
	caBundle := func(field, path string) {
		if path == "" {
			return
		}
		_, data, err := vaultad.ReadCAFile(path) // one read: the dates judged are of the bundle checked
		if err != nil {
			bad(field, err)
			return
		}
		u, w := policies.CABundleDates(path, data, now)
		for _, m := range u {
			bad(field, errors.New(m))
		}
		for _, m := range w {
			warn(field, "%s", m)
		}
	}
	for _, w := range c.fieldWarnings() {
		warn(w.field, "%s", w.msg)
	}
	caBundle("vault.ca_file", c.Vault.CAFile)
	// credential reads a file the Vault login reads (a token, an AppRole
	// id, a service-account token).
	credential := func(field, path string, isSecret bool) {
		if path == "" {
			return
		}
		if _, err := vaultad.ReadCredentialFile(path); err != nil {
			bad(field, err)
		} else if isSecret {
			secret(field, path)
		}
	}
	credential("vault.token_file", c.Vault.TokenFile, true)
	auth, prefix := c.Vault.Auth, "vault.auth."
	if a := c.Vault.AppRole; a != nil {
		auth, prefix = &VaultAuthConfig{Method: vaultad.LoginAppRole, RoleIDFile: a.RoleIDFile, SecretIDFile: a.SecretIDFile}, "vault.approle."
	}
	if auth != nil {
		switch auth.Method {
		case vaultad.LoginAppRole:
			credential(prefix+"role_id_file", auth.RoleIDFile, false)
			credential(prefix+"secret_id_file", auth.SecretIDFile, true)
		case vaultad.LoginKubernetes:
			jwt := auth.JWTFile
			if jwt == "" {
				jwt = kubernetesJWTFile
				if _, err := os.Stat(jwt); errors.Is(err, fs.ErrNotExist) {
					// Not in a pod (a CI job checking the file, say):
					// where the server runs, Kubernetes mounts it.
					warn(prefix+"jwt_file", "not set, and the pod's service-account token %s is not here: the server reads it there (run the check in the pod, or set jwt_file)", jwt)
					break
				}
			}
			credential(prefix+"jwt_file", jwt, false)
		}
	}
	caBundle("store.ca_file", c.Store.CAFile)
	if p := c.Audit.CheckpointKeyFile; p != "" {
		if _, err := loadCheckpointKey(p); err != nil {
			bad("audit.checkpoint_key_file", err)
		} else {
			secret("audit.checkpoint_key_file", p)
		}
	} else if c.Audit.CheckpointTransitKey == "" && c.Audit.File != "" {
		// The server uses, or creates on first start, a key next to
		// the audit file: one already there must parse.
		p := defaultCheckpointKey(c.Audit.File)
		if _, err := os.Stat(p); err == nil {
			if _, err := loadCheckpointKey(p); err != nil {
				bad("audit.file", fmt.Errorf("default checkpoint key %w", err))
			}
		}
	}
	if t := c.TLS; t != nil && t.CertFile != "" && t.KeyFile != "" {
		cert, err := loadKeyPair(t.CertFile, t.KeyFile)
		var kp *keyPairError
		switch {
		case errors.As(err, &kp):
			bad(kp.field, fmt.Errorf("%s: %s", kp.path, kp.msg))
		case err != nil:
			bad("tls", err)
		default:
			secret("tls.key_file", t.KeyFile)
			leaf := cert.Leaf
			switch {
			case leaf == nil:
			case now.After(leaf.NotAfter):
				bad("tls.cert_file", fmt.Errorf("%s: certificate expired at %s", t.CertFile, leaf.NotAfter.UTC().Format(time.RFC3339)))
			case now.Before(leaf.NotBefore):
				bad("tls.cert_file", fmt.Errorf("%s: certificate not valid before %s", t.CertFile, leaf.NotBefore.UTC().Format(time.RFC3339)))
			case leaf.NotAfter.Sub(now) < certExpiryWarning:
				warn("tls.cert_file", "%s: certificate expires at %s, in less than %d days", t.CertFile,
					leaf.NotAfter.UTC().Format(time.RFC3339), certExpiryWarning/(24*time.Hour))
			}
		}
	}
	if t := c.TLS; t != nil {
		caBundle("tls.client_ca_file", t.ClientCAFile)
	}
	return problems, warnings
}
