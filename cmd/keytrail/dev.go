package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/spf13/cobra"

	"github.com/keytrail/keytrail/adapters/vault/devserver"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/authn/authntest"
	"github.com/keytrail/keytrail/policies"
)

// The example policies (policies/examples) trust this demo issuer.
const (
	devIssuerAddr = "127.0.0.1:7701"
	devIssuerURL  = "http://" + devIssuerAddr
)

func newDevCmd(e *env) *cobra.Command {
	var dir, listen, vaultBin, policyPath string
	var once bool
	c := &cobra.Command{
		Use:   "dev",
		Short: "Try keytrail locally: Vault dev server, in-memory store, example policies, demo issuer and workload",
		Long: `dev starts everything keytrail needs on this machine, for a first try:

  - a Vault dev server (bin/vault, built from the Go module proxy only when
    missing or older than e2e/vaultserver/go.sum, which takes 10-20 minutes
    on 2 cores; otherwise it starts at once), with transit keys and a file
    audit device;
  - a demo identity issuer on ` + devIssuerAddr + ` that hands out workload tokens;
  - the broker on --listen with policies/examples, the in-memory store and an
    audit log in --dir;
  - a demo workload that exchanges its token for a Vault token.

It then prints commands to try. Ctrl-C (SIGINT) or SIGTERM (to dev, or on
Linux to the go command of 'go run ./cmd/keytrail dev') stops the broker, the
demo issuer and Vault and says so; --dir is kept. One dev runs at a time: a
second one on the same --dir (locked by its dev.lock, which names the running
dev's pid), --listen or demo issuer port fails before starting anything,
naming the conflict. A dev that fails before Vault starts removes the --dir
it created (never one that existed before), once the rest has stopped, and
then says whether it did: a --dir something else was put in meanwhile (such
as another dev's dev.lock) is kept, and named with the reason. --once runs
the demo, verifies the audit log and exits (used by the tests). The Vault
binary comes from --vault-bin, else $KEYTRAIL_VAULT_BIN, else bin/vault in
the repository.

Exit status: 0 stopped by Ctrl-C or SIGTERM (with --once: the demo ran and
the audit log verified); 1 another dev runs on --dir, --listen or the demo
issuer's port is in use, something failed to start, the demo exchange failed,
the broker did not stop cleanly (requests still in flight 20 s after the
stop, or its audit log's final checkpoint not written) or (with --once) the
audit log did not verify; 2 usage.`,
		Example: `  go run ./cmd/keytrail dev
  keytrail dev --once
  keytrail dev --dir /tmp/kt-dev --listen 127.0.0.1:7710`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := stopWithGoRun(cmd.Context(), os.Getppid(), parentIsGoCommand)
			defer cancel()
			return runDev(ctx, e, devOptions{dir: dir, listen: listen, vaultBin: vaultBin, policy: policyPath, once: once})
		},
	}
	c.Flags().StringVar(&dir, "dir", ".dev", "state directory, kept after exit (audit log and checkpoint key, Vault logs, demo tokens)")
	c.Flags().StringVar(&listen, "listen", "127.0.0.1:7700", "broker listen address (loopback: dev serves plain HTTP)")
	c.Flags().StringVar(&vaultBin, "vault-bin", "", "Vault binary (default $KEYTRAIL_VAULT_BIN, else bin/vault, built if missing or older than e2e/vaultserver/go.sum)")
	c.Flags().StringVar(&policyPath, "policy", "", "policy file or directory (default policies/examples)")
	c.Flags().BoolVar(&once, "once", false, "run the demo, verify the audit log, then exit")
	return c
}

type devOptions struct {
	dir, listen, vaultBin, policy string
	once                          bool
}

func runDev(ctx context.Context, e *env, o devOptions) (retErr error) {
	out := e.stdout
	progress := func(format string, args ...any) { fmt.Fprintf(e.stderr, "keytrail dev: "+format+"\n", args...) }
	// Checked before anything starts, as a usage mistake: the broker
	// validates the same address only once Vault is up.
	if host, _, err := net.SplitHostPort(o.listen); err != nil || !policies.IsLoopbackHost(host) {
		return exitError{code: exitUsage, msg: fmt.Sprintf("dev: --listen %q: want a loopback host:port such as 127.0.0.1:7700 (dev serves plain HTTP) (see keytrail dev --help)", o.listen)}
	}
	dir, err := filepath.Abs(o.dir)
	if err != nil {
		return err
	}
	// Usage mistakes first (nothing created yet), then what another dev
	// may hold.
	root, rootErr := devserver.RepoRoot()
	defaultPolicy := o.policy == ""
	if defaultPolicy {
		if rootErr != nil {
			return exitError{code: exitUsage, msg: fmt.Sprintf("dev: --policy is required outside the keytrail repository (%v) (see keytrail dev --help)", rootErr)}
		}
		o.policy = filepath.Join(root, "policies", "examples")
	}
	bin := o.vaultBin
	if bin == "" {
		bin = e.getenv("KEYTRAIL_VAULT_BIN")
	}
	if bin == "" && rootErr != nil {
		return exitError{code: exitUsage, msg: fmt.Sprintf("dev: --vault-bin is required outside the keytrail repository (%v) (see keytrail dev --help)", rootErr)}
	}
	// The broker reads the policy only once Vault is up: a missing one is
	// said before anything starts.
	if _, err := os.Stat(o.policy); err != nil {
		if defaultPolicy {
			// No --policy was given: name the default and how to choose.
			return fmt.Errorf("dev: the default policy %s (policies/examples of the repository): %w; restore it, or give one with --policy", o.policy, pathErrText(err))
		}
		return fmt.Errorf("dev: --policy %s: %w", o.policy, pathErrText(err))
	}
	// The broker would refuse them only once Vault is up.
	if err := checkReconcileEnv(e.getenv); err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	// Only --dir (and its missing parents) before the lock: --dir/tokens
	// is made once Vault has started. A dev that fails removes what it
	// made after it has released the lock, when another dev may hold it
	// and use --dir; a tokens directory that this one made before its lock
	// would be removed under that dev.
	created, err := mkdirAllNew(dir, 0o700)
	if err != nil {
		return fmt.Errorf("dev: --dir %s: %w", o.dir, pathErrText(err))
	}
	// Until Vault starts, --dir holds nothing worth keeping: when dev fails
	// before (another dev holds --dir, --listen or the demo issuer's port is
	// taken), the directories this run created are removed again, empty
	// ones only (not one where another dev took the lock meanwhile). A
	// directory that existed before is never removed; once Vault has
	// started, --dir holds its logs and is kept.
	beforeVault := true
	dirIsNew := slices.Contains(created, dir)
	// What was started, said once it has all stopped, and what became of
	// --dir, said once it was removed or kept: this runs last, after the
	// deferred stops and the lock's release below.
	var started []string
	defer func() {
		var said []string
		if len(started) > 0 {
			said = append(said, "stopped "+strings.Join(started, ", "))
		}
		switch {
		case retErr != nil && beforeVault && dirIsNew:
			said = append(said, removeNewDirsSaid(created)...)
		case len(started) > 0:
			said = append(said, fmt.Sprintf("state kept in %s (remove it to start afresh)", dir))
		}
		if len(said) > 0 {
			progress("%s", strings.Join(said, "; "))
		}
	}()
	// A second dev is refused before it starts anything: on the same --dir
	// it would write over the first one's tokens and logs, and either way it
	// would find 127.0.0.1:7701 or --listen taken only after starting Vault.
	unlock, err := lockDevDir(dir)
	if err != nil {
		return err
	}
	defer func() {
		if retErr != nil && beforeVault && dirIsNew {
			// This run's own lock file, removed while still held.
			_ = os.Remove(filepath.Join(dir, "dev.lock"))
		}
		unlock()
		if e.devUnlocked != nil && retErr != nil && beforeVault {
			e.devUnlocked()
		}
	}()
	// The broker's listener, bound here and handed to the broker once
	// Vault is up: a port checked here and bound only then could be taken
	// in between, found only after starting Vault. Connections wait in the
	// listen backlog until the broker's start-up takes the listener (then
	// answered 503 "starting" until it serves). The demo issuer's port is
	// bound (and served) here too.
	brokerLn, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("dev: --listen %s is in use (another keytrail dev or broker?): %w", o.listen, err)
	}
	defer brokerLn.Close() // a failed start's; the broker closes it otherwise
	if e.devListenHeld != nil {
		e.devListenHeld()
	}
	iss, err := authntest.NewIssuer("ES256")
	if err != nil {
		return err
	}
	iss.URL = devIssuerURL
	ln, err := net.Listen("tcp", devIssuerAddr)
	if err != nil {
		return fmt.Errorf("dev: the demo issuer needs %s (the example policies trust it), which is in use (another keytrail dev?): %w", devIssuerAddr, err)
	}
	issSrv := &http.Server{Handler: devIssuerHandler(iss), ReadHeaderTimeout: 5 * time.Second}
	go issSrv.Serve(ln)
	defer issSrv.Close()
	started = append(started, "the demo issuer")

	if bin == "" {
		progress("getting the Vault server (bin/vault; built from the Go module proxy only when missing or older than e2e/vaultserver/go.sum)...")
		bin, err = devserver.BuildVault(ctx, root, e.stderr)
		if err != nil {
			return fmt.Errorf("building Vault: %w", err)
		}
	}

	beforeVault = false
	progress("starting Vault dev server...")
	sctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	vp, err := devserver.Start(sctx, bin, devserver.Options{Dir: filepath.Join(dir, "vault")})
	cancel()
	if err != nil {
		return fmt.Errorf("starting Vault: %w", err)
	}
	defer vp.Stop()
	started = append([]string{fmt.Sprintf("Vault (pid %d)", vp.PID())}, started...)
	for name, rules := range map[string]string{
		"payments-read": `path "secret/data/payments/*" { capabilities = ["read"] }`,
		"deploy":        `path "secret/data/deploy/*" { capabilities = ["read", "list"] }`,
	} {
		if err := vp.Client.Sys().PutPolicyWithContext(ctx, name, rules); err != nil {
			return fmt.Errorf("vault policy %s: %w", name, err)
		}
	}
	progress("Vault dev server at %s (pid %d, root token %q, audit log %s)", vp.Addr, vp.PID(), vp.RootToken, vp.AuditLogPath)

	if err := os.MkdirAll(filepath.Join(dir, "tokens"), 0o700); err != nil {
		return err
	}
	tokens := map[string]string{}
	for _, name := range []string{"payments-api", "ci-deploy", "secops"} {
		tok, err := devToken(iss, name, "demo-"+name)
		if err != nil {
			return err
		}
		p := filepath.Join(dir, "tokens", name+".jwt")
		// No trailing newline: curl --data-urlencode subject_token@FILE
		// sends the file's bytes exactly.
		if err := os.WriteFile(p, []byte(tok), 0o600); err != nil {
			return err
		}
		tokens[name] = p
	}

	auditPath := filepath.Join(dir, "audit.jsonl")
	keyPath, pubPath, err := devCheckpointKey(dir)
	if err != nil {
		return err
	}
	host, port, _ := net.SplitHostPort(o.listen)
	publicURL := "http://" + net.JoinHostPort(host, port)
	cfg := &Config{
		Listen: o.listen, PublicURL: publicURL, Policy: o.policy,
		Vault: VaultConfig{Address: vp.Addr},
		Audit: AuditConfig{File: auditPath, CheckpointKeyFile: keyPath},
		Log:   LogConfig{Level: "warn", Format: "text"},
	}
	cfg.applyDefaults()
	if err := cfg.validate("dev config"); err != nil {
		return err
	}
	devEnv := &env{ctx: ctx, stdout: e.stdout, stderr: e.stderr, listener: brokerLn, getenv: func(k string) string {
		if k == "VAULT_TOKEN" {
			return vp.RootToken
		}
		return e.getenv(k)
	}}

	sctx, stop := context.WithCancel(ctx)
	defer stop()
	readyc := make(chan string, 1)
	errc := make(chan error, 1)
	go func() { errc <- runServer(sctx, devEnv, cfg, func(addr string) { readyc <- addr }) }()
	select {
	case err := <-errc:
		return fmt.Errorf("broker: %w", err)
	case <-readyc:
	}
	started = append([]string{"the broker"}, started...)
	progress("broker at %s (policy %s, audit log %s)", publicURL, o.policy, auditPath)

	// The demo workload: exchange its identity token for a Vault token.
	demo, err := devExchange(ctx, publicURL, tokens["payments-api"], "payments-vault")
	if err != nil {
		stop()
		<-errc
		return fmt.Errorf("demo workload: %w", err)
	}
	// The demo workload uses its token once, so Vault's audit log has a
	// request made with it that names the issuance.
	if vc, err := vp.Client.Clone(); err == nil {
		vc.SetToken(demo.AccessToken)
		if _, err := vc.Auth().Token().LookupSelfWithContext(ctx); err != nil {
			progress("demo workload's lookup-self failed: %v", err)
		}
	}
	r := strings.NewReplacer(
		"{ISS}", demo.IssuanceID, "{WORKLOAD}", demo.Workload, "{OWNER}", demo.Owner,
		"{SESSION}", demo.SessionID, "{KIND}", demo.Kind, "{EXPIRES}", fmt.Sprint(demo.ExpiresIn),
		"{ACCESSOR}", fmt.Sprint(demo.Credential["accessor"]), "{URL}", publicURL,
		"{TOKEN}", tokens["payments-api"], "{ADMIN}", tokens["secops"], "{ISSUER}", devIssuerURL, "{AUDIT}", auditPath,
		"{VAULTAUDIT}", vp.AuditLogPath, "{POLICY}", o.policy, "{VAULTADDR}", vp.Addr, "{VAULTTOKEN}", vp.RootToken, "{PUB}", pubPath,
	)
	fmt.Fprint(out, r.Replace(devNextSteps))

	if o.once {
		stop()
		if err := <-errc; err != nil {
			return err
		}
		pubPEM, err := os.ReadFile(pubPath)
		if err != nil {
			return err
		}
		kid, pub, err := audit.LoadEd25519PublicKey(pubPEM)
		if err != nil {
			return err
		}
		rep, err := audit.VerifyFiles([]string{auditPath}, audit.VerifyOptions{Keys: map[string]ed25519.PublicKey{kid: pub}, RequireCheckpoint: true})
		if err != nil {
			return fmt.Errorf("audit log %s does not verify: %w", auditPath, err)
		}
		fmt.Fprintf(out, "\naudit log verified: %d lines, %d chain(s), every line covered by a signed checkpoint\n", rep.Lines, len(rep.Chains))
		return nil
	}
	fmt.Fprintln(out, "\nkeytrail dev is running; Ctrl-C stops everything.")
	select {
	case <-ctx.Done():
		return <-errc
	case err := <-errc:
		return err
	}
}

// stopWithGoRun returns a context that also ends when dev's parent, ppid,
// is the go command and ends. Under `go run ./cmd/keytrail dev`, the
// README's command, a SIGTERM to the go command (a supervisor, an IDE's
// stop button, timeout(1)) ended it without passing the signal on, which
// left dev, its Vault dev server and its ports running; Ctrl-C reaches both
// through the terminal's process group. Only under go: a dev started from a
// shell with nohup must outlive that shell. (Not a parent-death signal: the
// kernel sends one as each of the go command's threads exits, and a second
// SIGTERM makes the broker exit at once.)
func stopWithGoRun(ctx context.Context, ppid int, isGo func(ppid int) bool) (context.Context, context.CancelFunc) {
	if !isGo(ppid) {
		return ctx, func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if os.Getppid() != ppid {
					cancel()
					return
				}
			}
		}
	}()
	return ctx, cancel
}

// lockDevDir takes an exclusive flock on dir/dev.lock and writes our pid
// into it, so that a second dev on the same state directory is refused with
// the first one's pid. The lock ends with the process, however it ends.
func lockDevDir(dir string) (unlock func(), err error) {
	path := filepath.Join(dir, "dev.lock")
	// A dev that fails before Vault removes the dev.lock it created while
	// it still holds it: one opened before that and locked after holds a
	// file no longer at path, which the next dev would create and lock
	// again. Locked, the file must still be the one at path, else it is
	// opened again.
	for range 3 {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("dev: --dir %s was removed while this dev started (by another dev that failed?); run it again", dir)
		}
		if err != nil {
			return nil, fmt.Errorf("dev: %w", err)
		}
		if devLockOpened != nil {
			devLockOpened()
		}
		unlock, err := flockDevLock(f, path, dir)
		if err != nil {
			return nil, err
		}
		held, err1 := f.Stat()
		at, err2 := os.Stat(path)
		if err1 == nil && err2 == nil && os.SameFile(held, at) {
			return unlock, nil
		}
		unlock()
	}
	return nil, fmt.Errorf("dev: %s kept changing while this dev took it (other devs starting on --dir %s?); run it again", path, dir)
}

// devLockOpened, when set, is called by lockDevDir between opening
// dev.lock and locking it (tests: a dev that fails in between).
var devLockOpened func()

// flockDevLock locks the open dev.lock f (without waiting) and writes this
// process's pid in it.
func flockDevLock(f *os.File, path, dir string) (unlock func(), err error) {
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder, _ := io.ReadAll(io.LimitReader(f, 32))
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("dev: another keytrail dev (pid %s) is running with --dir %s; stop it (Ctrl-C) or pass another --dir",
				strings.TrimSpace(string(holder)), dir)
		}
		return nil, fmt.Errorf("dev: lock %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return func() {
		_ = f.Truncate(0)
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		_ = f.Close()
	}, nil
}

// devClaims are the demo identities: a Kubernetes-style service account, a
// GitHub Actions-style CI job and a security-team admin.
func devClaims(name, session string) (jwt.MapClaims, error) {
	switch name {
	case "payments-api":
		return jwt.MapClaims{"sub": "system:serviceaccount:payments:api", "namespace": "payments", "session": session}, nil
	case "ci-deploy":
		return jwt.MapClaims{"sub": "repo:acme/deploy:ref:refs/heads/main", "run_id": session}, nil
	case "secops":
		return jwt.MapClaims{"sub": "alice@example.com", "groups": "secops"}, nil
	}
	return nil, fmt.Errorf("unknown demo identity %q", name)
}

func devToken(iss *authntest.Issuer, name, session string) (string, error) {
	c, err := devClaims(name, session)
	if err != nil {
		return "", err
	}
	now := time.Now()
	c["iss"], c["aud"], c["iat"], c["exp"] = devIssuerURL, "keytrail", now.Unix(), now.Add(time.Hour).Unix()
	return iss.Sign(c)
}

// devIssuerHandler serves the issuer's JWKS and discovery, and mints demo
// tokens at /token/{name}: the token alone, no newline, so that a file
// saved from it (curl -o) is what the broker takes as a subject_token.
func devIssuerHandler(iss *authntest.Issuer) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", iss.Handler())
	mux.HandleFunc("GET /token/{name}", func(w http.ResponseWriter, r *http.Request) {
		tok, err := devToken(iss, r.PathValue("name"), "demo-"+time.Now().Format("150405.000"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		io.WriteString(w, tok)
	})
	return mux
}

type devResult struct {
	AccessToken string         `json:"access_token"`
	IssuanceID  string         `json:"issuance_id"`
	Workload    string         `json:"workload"`
	Owner       string         `json:"owner"`
	SessionID   string         `json:"session_id"`
	Kind        string         `json:"kind"`
	ExpiresIn   int64          `json:"expires_in"`
	Credential  map[string]any `json:"credential"`
	Error       string         `json:"error"`
	Desc        string         `json:"error_description"`
}

func devExchange(ctx context.Context, base, tokenFile, grant string) (*devResult, error) {
	raw, err := os.ReadFile(tokenFile)
	if err != nil {
		return nil, err
	}
	form := url.Values{
		"grant_type":         {"urn:ietf:params:oauth:grant-type:token-exchange"},
		"subject_token_type": {"urn:ietf:params:oauth:token-type:jwt"},
		"subject_token":      {string(raw)}, // exactly the file, as the printed curl command sends it
		"audience":           {grant},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/token", strings.NewReader(form.Encode()))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var res devResult
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&res); err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, errors.New(resp.Status + ": " + res.Error + ": " + res.Desc)
	}
	return &res, nil
}

// devNextSteps is printed after the demo; {NAME}s are filled in.
const devNextSteps = `
demo workload payments-api exchanged its identity token:
  issuance   {ISS}
  workload   {WORKLOAD} (owner {OWNER})
  session    {SESSION}
  kind       {KIND}, expires in {EXPIRES}s
  accessor   {ACCESSOR}

Try it yourself (in another shell):

  # exchange the demo workload's token for a Vault token
  curl -s {URL}/v1/token \
    -d grant_type=urn:ietf:params:oauth:grant-type:token-exchange \
    -d subject_token_type=urn:ietf:params:oauth:token-type:jwt \
    -d audience=payments-vault \
    --data-urlencode subject_token@{TOKEN}

  # a JWT for the orders API, signed in Vault transit, verifiable with {URL}/.well-known/jwks.json
  curl -s {URL}/v1/token -d grant_type=urn:ietf:params:oauth:grant-type:token-exchange \
    -d subject_token_type=urn:ietf:params:oauth:token-type:jwt -d audience=orders-jwt \
    --data-urlencode subject_token@{TOKEN}

  # a fresh demo identity token (valid 1h), written where the commands here read it
  curl -s {ISSUER}/token/payments-api -o {TOKEN}

  # the audit trail, and the check that it is intact up to its last line (seq and time printed)
  tail -n 3 {AUDIT}
  go run ./cmd/keytrail audit verify --key {PUB} {AUDIT}

  # Vault's own audit log names the issuance of every request made with the token
  grep -c {ISS} {VAULTAUDIT}

  # what would this token get, and why?
  go run ./cmd/keytrail policy explain --policy {POLICY} --token {TOKEN} --grant payments-vault

  # a proxy grant (kind: proxy): dev runs no upstream API, so the example policy's demo-api grant is
  # commented out (see {POLICY}); with it enabled and an API on 127.0.0.1:8081:
  #   CRED=$(go run ./cmd/keytrail fetch --addr {URL} --grant demo-api --identity-token-file {TOKEN} --out - --format raw)
  #   curl -s -H "Authorization: Bearer $CRED" {URL}/v1/proxy/demo-api/hello

  # as the demo security team (secops, an admin in the policy): trace, report, revoke
  export KEYTRAIL_ADDR={URL} KEYTRAIL_ADMIN_TOKEN_FILE={ADMIN}
  go run ./cmd/keytrail trace {ISS}
  go run ./cmd/keytrail report
  go run ./cmd/keytrail revoke --session {SESSION} --reason "trying keytrail dev"

Vault: export VAULT_ADDR={VAULTADDR} VAULT_TOKEN={VAULTTOKEN}
`

// devCheckpointKey creates (once) the Ed25519 key that signs the dev audit
// log's checkpoints.
func devCheckpointKey(dir string) (keyPath, pubPath string, err error) {
	keyPath, pubPath = filepath.Join(dir, "checkpoint.key"), filepath.Join(dir, "checkpoint.pub")
	_, err = ensureEd25519Key(keyPath, pubPath)
	return keyPath, pubPath, err
}

// ensureEd25519Key creates an Ed25519 key pair as PKCS#8 (0600) and PKIX
// PEM files, as openssl genpkey -algorithm ed25519 and openssl pkey -pubout
// would, unless keyPath exists. created says whether it made them.
func ensureEd25519Key(keyPath, pubPath string) (created bool, err error) {
	if _, err := os.Stat(keyPath); err == nil {
		return false, nil
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return false, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return false, err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return false, err
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return false, err
	}
	if err := os.WriteFile(pubPath, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o644); err != nil {
		return false, err
	}
	return true, nil
}

// mkdirAllNew is os.MkdirAll(path, perm) that also returns the directories
// it created, outermost first (none when path existed).
func mkdirAllNew(path string, perm os.FileMode) ([]string, error) {
	var missing []string
	for p := filepath.Clean(path); ; p = filepath.Dir(p) {
		if _, err := os.Lstat(p); err == nil || !errors.Is(err, fs.ErrNotExist) {
			break
		}
		missing = append([]string{p}, missing...)
		if filepath.Dir(p) == p {
			break
		}
	}
	if err := os.MkdirAll(path, perm); err != nil {
		removeNewDirs(missing)
		return nil, err
	}
	return missing, nil
}

// removeNewDirs removes the directories mkdirAllNew created, innermost
// first, each only while empty (os.Remove); it stops at the first one it
// cannot remove (not empty: another dev took --dir meanwhile, or something
// else was put there), which it returns with the error. removed is the
// outermost directory it removed ("" for none).
func removeNewDirs(dirs []string) (removed, kept string, err error) {
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := os.Remove(dirs[i]); err != nil {
			return removed, dirs[i], err
		}
		removed = dirs[i]
	}
	return removed, "", nil
}

// removeNewDirsSaid removes the directories mkdirAllNew created (see
// removeNewDirs) and says what it did, once done: "removed DIR, which it
// had created", and for one it could not remove, "kept DIR, which it had
// created: why".
func removeNewDirsSaid(dirs []string) []string {
	removed, kept, err := removeNewDirs(dirs)
	var said []string
	if removed != "" {
		said = append(said, fmt.Sprintf("removed %s, which it had created", removed))
	}
	if kept != "" {
		said = append(said, fmt.Sprintf("kept %s, which it had created: %v", kept, pathErrText(err)))
	}
	return said
}

// pathErrText is err without the operation and path of an *os.PathError
// ("mkdir /x/y: not a directory" is "not a directory"), for messages that
// name the flag and path themselves.
func pathErrText(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
