package main

// The environment `keytrail bench` runs against: a real Vault dev server, a
// real redis-server, a demo identity issuer, two upstream APIs (one that
// answers at once, one that takes 1 ms) and keytrail brokers as child
// processes of this one (`keytrail server`), so that each process's CPU time
// can be read from /proc. Everything is started here and stopped by close,
// in reverse order.

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
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/redis/go-redis/v9"

	"github.com/keytrail/keytrail/adapters/vault/devserver"
	"github.com/keytrail/keytrail/broker/authn/authntest"
)

// Names in the bench policy.
const (
	benchWorkload     = "bench-svc"
	benchSubject      = "system:serviceaccount:bench:svc"
	benchVaultPolicy  = "bench-read"
	benchGrantVault   = "bench-vault"
	benchGrantJWT     = "bench-jwt"
	benchGrantProxy   = "bench-proxy"
	benchGrantProxy1  = "bench-proxy-1ms"
	benchKVPath       = "bench/upstream"
	benchUpstreamPath = "/v1/charges"
	benchUpstreamBody = `{"object":"list","data":[]}`
)

const benchPolicy = `version: 1
issuers:
  - name: bench
    issuer: %ISSUER%
    jwks_url: %ISSUER%/jwks.json
    audiences: [keytrail]
    algorithms: [ES256]
    max_token_lifetime: 2h
    session_claim: session
workloads:
  - name: bench-svc
    owner: team-bench
    match: {issuer: bench, subject: system:serviceaccount:bench:svc}
    grants: [bench-vault, bench-jwt, bench-proxy, bench-proxy-1ms]
grants:
  - name: bench-vault
    kind: vault_token
    ttl: 15m
    vault_token: {policies: [bench-read]}
  - name: bench-jwt
    kind: jwt
    ttl: 5m
    jwt: {audience: bench-api, transit_key: keytrail-signing}
  - name: bench-proxy
    kind: proxy
    ttl: 2h
    proxy:
      upstream: %UPSTREAM%
      allow_private: true
      secret: {vault_kv: secret/data/bench/upstream, field: api_key}
      inject: {header: Authorization, format: "Bearer {secret}"}
      methods: [GET]
      paths: ["/v1/charges"]
  - name: bench-proxy-1ms
    kind: proxy
    ttl: 2h
    proxy:
      upstream: %UPSTREAM1MS%
      allow_private: true
      secret: {vault_kv: secret/data/bench/upstream, field: api_key}
      inject: {header: Authorization, format: "Bearer {secret}"}
      methods: [GET]
      paths: ["/v1/charges"]
admins:
  - name: secops
    match: {issuer: bench, claims: {groups: secops}}
    roles: [revoke, trace]
`

// benchEnv is everything the scenarios run against.
type benchEnv struct {
	o        benchOptions
	dir      string
	progress func(format string, args ...any)
	client   *http.Client // the load generator's client

	vault     *devserver.Process
	redis     *benchProc
	redisURL  string
	issuer    *authntest.Issuer
	upstream  string // trivial upstream base URL
	upstream1 string // 1 ms upstream base URL
	secret    string // the upstream API key, kept in Vault KV
	policy    string // policy file
	ckptKey   string // audit checkpoint key file

	mu       sync.Mutex
	closers  []func()
	brokerNo int
	main     *benchBroker // Redis store, group commit: the production setup

	tokens  []string // identity tokens of the bench workload, one per session
	tokenNo atomic.Uint64
	admin   string // an admin identity token
}

// benchProc is a child process of the bench.
type benchProc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	log  string
}

func (p *benchProc) pid() int { return p.cmd.Process.Pid }

func (p *benchProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, then SIGKILL after grace, and waits.
func (p *benchProc) stop(grace time.Duration) {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *benchProc) logTail() string {
	b, _ := os.ReadFile(p.log)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// startProc starts bin with args, output to dir/name.log. The child runs in
// e.dir; a relative bin (--keytrail-bin ./keytrail) still names the file
// relative to the bench's own working directory.
func (e *benchEnv) startProc(name, bin string, env []string, args ...string) (*benchProc, error) {
	if strings.ContainsRune(bin, os.PathSeparator) {
		abs, err := filepath.Abs(bin)
		if err != nil {
			return nil, fmt.Errorf("start %s: %w", name, err)
		}
		bin = abs
	}
	logPath := filepath.Join(e.dir, name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = e.dir
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = f, f
	// Die with the bench (the bench never ends threads it started
	// children from, see pacer.close), in a process group of its own so
	// Ctrl-C in a terminal reaches only the bench, which then stops the
	// children in order.
	cmd.SysProcAttr = devserver.DieWithParent()
	cmd.SysProcAttr.Setpgid = true
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &benchProc{name: name, cmd: cmd, done: make(chan struct{}), log: logPath}
	go func() { _ = cmd.Wait(); f.Close(); close(p.done) }()
	return p, nil
}

func (e *benchEnv) onClose(f func()) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.closers = append(e.closers, f)
}

// close stops everything, newest first.
func (e *benchEnv) close() {
	e.mu.Lock()
	cl := e.closers
	e.closers = nil
	e.mu.Unlock()
	for i := len(cl) - 1; i >= 0; i-- {
		cl[i]()
	}
}

// setupBenchEnv starts Vault, Redis, the issuer and the upstreams.
func setupBenchEnv(ctx context.Context, o benchOptions, progress func(string, ...any)) (_ *benchEnv, err error) {
	e := &benchEnv{o: o, progress: progress}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	e.client = &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			Proxy:               nil,
			MaxIdleConns:        4096,
			MaxIdleConnsPerHost: 1024,
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	e.onClose(e.client.CloseIdleConnections)

	if o.dir != "" {
		e.dir, err = filepath.Abs(o.dir)
		if err == nil {
			err = os.MkdirAll(e.dir, 0o700)
		}
	} else {
		e.dir, err = os.MkdirTemp("", "keytrail-bench-")
		if err == nil {
			dir := e.dir
			e.onClose(func() { _ = os.RemoveAll(dir) })
		}
	}
	if err != nil {
		return nil, err
	}

	// Vault.
	bin := o.vaultBin
	if bin == "" {
		root, rerr := devserver.RepoRoot()
		if rerr != nil {
			return nil, exitError{code: exitUsage, msg: fmt.Sprintf("bench: --vault-bin (or KEYTRAIL_VAULT_BIN) is required outside the keytrail repository (%v) (see keytrail bench --help)", rerr)}
		}
		progress("getting the Vault server (bin/vault; built from the Go module proxy if missing: 10-20 min)")
		if bin, err = devserver.BuildVault(ctx, root, io.Discard); err != nil {
			return nil, fmt.Errorf("building Vault: %w", err)
		}
	}
	progress("starting Vault dev server")
	sctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	e.vault, err = devserver.Start(sctx, bin, devserver.Options{Dir: filepath.Join(e.dir, "vault")})
	cancel()
	if err != nil {
		return nil, fmt.Errorf("starting Vault: %w", err)
	}
	e.onClose(func() { _ = e.vault.Stop() })
	if err := e.vault.Client.Sys().PutPolicyWithContext(ctx, benchVaultPolicy, `path "secret/data/bench/*" { capabilities = ["read"] }`); err != nil {
		return nil, fmt.Errorf("vault policy: %w", err)
	}
	e.secret = "sk_bench_" + strconv.FormatInt(time.Now().UnixNano(), 36)
	if _, err := e.vault.Client.KVv2("secret").Put(ctx, benchKVPath, map[string]any{"api_key": e.secret}); err != nil {
		return nil, fmt.Errorf("vault kv put: %w", err)
	}

	// Redis.
	if err := e.startRedis(ctx); err != nil {
		return nil, err
	}

	// The identity issuer and the upstream APIs, in this process.
	if e.issuer, err = authntest.NewIssuer("ES256"); err != nil {
		return nil, err
	}
	issURL, err := e.serve(e.issuer.Handler())
	if err != nil {
		return nil, err
	}
	e.issuer.URL = issURL
	if e.upstream, err = e.serve(e.upstreamHandler(0)); err != nil {
		return nil, err
	}
	if e.upstream1, err = e.serve(e.upstreamHandler(time.Millisecond)); err != nil {
		return nil, err
	}

	e.policy = filepath.Join(e.dir, "policy.yaml")
	pol := strings.NewReplacer("%ISSUER%", issURL, "%UPSTREAM%", e.upstream, "%UPSTREAM1MS%", e.upstream1).Replace(benchPolicy)
	if err := os.WriteFile(e.policy, []byte(pol), 0o600); err != nil {
		return nil, err
	}
	if e.ckptKey, _, err = devCheckpointKey(e.dir); err != nil {
		return nil, err
	}
	for i := range 64 {
		tok, err := e.identity(map[string]any{"sub": benchSubject, "session": "bench-" + strconv.Itoa(i)})
		if err != nil {
			return nil, err
		}
		e.tokens = append(e.tokens, tok)
	}
	if e.admin, err = e.identity(map[string]any{"sub": "bench-admin", "groups": "secops"}); err != nil {
		return nil, err
	}
	return e, nil
}

// identity signs a 2-hour identity token with the given claims.
func (e *benchEnv) identity(claims map[string]any) (string, error) {
	now := time.Now()
	c := jwt.MapClaims{"iss": e.issuer.URL, "aud": "keytrail", "iat": now.Unix(), "exp": now.Add(2 * time.Hour).Unix()}
	for k, v := range claims {
		c[k] = v
	}
	return e.issuer.Sign(c)
}

// nextToken rotates through the workload's identity tokens (64 sessions).
func (e *benchEnv) nextToken() string {
	return e.tokens[e.tokenNo.Add(1)%uint64(len(e.tokens))]
}

// serve runs h on a loopback port until close.
func (e *benchEnv) serve(h http.Handler) (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 120 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	e.onClose(func() { _ = srv.Close() })
	return "http://" + ln.Addr().String(), nil
}

// upstreamHandler answers GET /v1/charges after delay when the request
// carries the upstream key, 401 otherwise.
func (e *benchEnv) upstreamHandler(delay time.Duration) http.Handler {
	want := "Bearer " + e.secret
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != want {
			http.Error(w, "bad key", http.StatusUnauthorized)
			return
		}
		if r.URL.Path != benchUpstreamPath {
			http.NotFound(w, r)
			return
		}
		if delay > 0 {
			time.Sleep(delay)
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, benchUpstreamBody)
	})
}

// freePort returns a loopback port that was free a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// startRedis runs redis-server on a free loopback port with an append-only
// file synced every second (the usual production setting).
func (e *benchEnv) startRedis(ctx context.Context) error {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return fmt.Errorf("redis-server not found in PATH (%v); install it, e.g. `apt-get install redis-server`", err)
	}
	dir := filepath.Join(e.dir, "redis")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	var lastErr error
	for range 3 {
		port, err := freePort()
		if err != nil {
			return err
		}
		addr := "127.0.0.1:" + strconv.Itoa(port)
		e.progress("starting redis-server on %s", addr)
		p, err := e.startProc("redis", bin, os.Environ(), "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
			"--dir", dir, "--save", "", "--appendonly", "yes", "--appendfsync", "everysec", "--daemonize", "no")
		if err != nil {
			return err
		}
		if lastErr = waitFor(ctx, p, 15*time.Second, func() error { return pingRedis(ctx, addr) }); lastErr == nil {
			e.redis, e.redisURL = p, "redis://"+addr+"/0"
			e.onClose(func() { p.stop(10 * time.Second) })
			return nil
		}
		p.stop(time.Second)
	}
	return fmt.Errorf("redis-server did not start: %w", lastErr)
}

// waitFor polls check until it succeeds, the process exits or timeout.
func waitFor(ctx context.Context, p *benchProc, timeout time.Duration, check func() error) error {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		if last = check(); last == nil {
			return nil
		}
		if p.exited() {
			return fmt.Errorf("%s exited: %s", p.name, p.logTail())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %s: %v", p.name, timeout, last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// pingRedis asks the server at addr for PONG with go-redis, once.
func pingRedis(ctx context.Context, addr string) error {
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: time.Second, ReadTimeout: time.Second})
	defer c.Close()
	return c.Ping(ctx).Err()
}

// brokerSetup is how one broker is configured.
type brokerSetup struct {
	name      string
	memStore  bool // the embedded store instead of Redis
	noFsync   bool // audit written but not fsynced
	noJournal bool // audit.journal: false: each batch fsyncs the file
	maxBatch  int  // audit events per durable write; 1 = one per record; 0 = default
}

// benchBroker is a running `keytrail server` child.
type benchBroker struct {
	*benchProc
	setup brokerSetup
	url   string
}

// startBroker writes a config for s and runs `keytrail server` with it,
// waiting until /readyz answers 200.
func (e *benchEnv) startBroker(ctx context.Context, s brokerSetup) (*benchBroker, error) {
	e.mu.Lock()
	e.brokerNo++
	n := e.brokerNo
	e.mu.Unlock()
	var lastErr error
	for range 3 {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		base := "http://127.0.0.1:" + strconv.Itoa(port)
		var cfg strings.Builder
		fmt.Fprintf(&cfg, "listen: 127.0.0.1:%d\npublic_url: %s\npolicy: %s\nvault:\n  address: %s\n", port, base, e.policy, e.vault.Addr)
		if !s.memStore {
			fmt.Fprintf(&cfg, "store:\n  redis_url: %s\n", e.redisURL)
		}
		fmt.Fprintf(&cfg, "audit:\n  file: %s\n  checkpoint_key_file: %s\n  fsync: %v\n",
			filepath.Join(e.dir, fmt.Sprintf("audit-%d-%s.jsonl", n, s.name)), e.ckptKey, !s.noFsync)
		if s.maxBatch > 0 {
			fmt.Fprintf(&cfg, "  max_batch: %d\n", s.maxBatch)
		}
		if s.noJournal {
			cfg.WriteString("  journal: false\n")
		}
		cfg.WriteString("log:\n  level: warn\n")
		pprofNote := ""
		if e.o.pprof {
			pp, err := freePort()
			if err != nil {
				return nil, err
			}
			fmt.Fprintf(&cfg, "pprof_listen: 127.0.0.1:%d\n", pp)
			pprofNote = fmt.Sprintf(" (pprof on http://127.0.0.1:%d/debug/pprof/)", pp)
		}
		cfgPath := filepath.Join(e.dir, fmt.Sprintf("config-%d-%s.yaml", n, s.name))
		if err := os.WriteFile(cfgPath, []byte(cfg.String()), 0o600); err != nil {
			return nil, err
		}
		e.progress("starting broker %s on %s%s", s.name, base, pprofNote)
		p, err := e.startProc(fmt.Sprintf("keytrail-%d-%s", n, s.name), e.o.keytrailBin, e.childEnv(), "server", "--config", cfgPath)
		if err != nil {
			return nil, err
		}
		b := &benchBroker{benchProc: p, setup: s, url: base}
		lastErr = waitFor(ctx, p, 60*time.Second, func() error {
			resp, err := e.client.Get(base + "/readyz")
			if err != nil {
				return err
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				return errors.New("readyz: " + resp.Status)
			}
			return nil
		})
		if lastErr == nil {
			e.onClose(func() { b.stop(30 * time.Second) })
			return b, nil
		}
		p.stop(5 * time.Second)
		if !strings.Contains(p.logTail(), "address already in use") {
			break
		}
	}
	return nil, fmt.Errorf("broker %s: %w", s.name, lastErr)
}

// childEnv is the brokers' environment: this one's, without what would
// override their config, plus the Vault token and o.childEnv.
func (e *benchEnv) childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "KEYTRAIL_LISTEN", "KEYTRAIL_REDIS_URL", "VAULT_ADDR", "VAULT_TOKEN":
			continue
		}
		env = append(env, kv)
	}
	// The Vault token reconciliation lists every token in Vault at start-up
	// and every 5 minutes: after scenario B has created tens of thousands,
	// a broker started later would spend the next minute on it, and so
	// would Vault, under the figures of whatever runs then.
	env = append(env, "VAULT_TOKEN="+e.vault.RootToken, "KEYTRAIL_RECONCILE=off")
	return append(env, e.o.childEnv...)
}

// mainBroker is the production-like broker (Redis store, audit group
// commit), started on first use and shared by the scenarios.
func (e *benchEnv) mainBroker(ctx context.Context) (*benchBroker, error) {
	e.mu.Lock()
	b := e.main
	e.mu.Unlock()
	if b != nil {
		return b, nil
	}
	b, err := e.startBroker(ctx, brokerSetup{name: "main"})
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	e.main = b
	e.mu.Unlock()
	return b, nil
}

// tokenAnswer is the part of a /v1/token answer the bench reads.
type tokenAnswer struct {
	AccessToken string `json:"access_token"`
	IssuanceID  string `json:"issuance_id"`
	Error       string `json:"error"`
}

// exchange asks broker b for grant with an identity token of the workload.
func (e *benchEnv) exchange(ctx context.Context, base, grant, identity string) (*tokenAnswer, error) {
	form := url.Values{
		"grant_type":         {"urn:ietf:params:oauth:grant-type:token-exchange"},
		"subject_token":      {identity},
		"subject_token_type": {"urn:ietf:params:oauth:token-type:jwt"},
		"audience":           {grant},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/token", strings.NewReader(form.Encode()))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := e.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	var ta tokenAnswer
	if err := json.Unmarshal(raw, &ta); err != nil || resp.StatusCode != 200 {
		return nil, fmt.Errorf("exchange %s: %s %s", grant, resp.Status, ta.Error)
	}
	return &ta, nil
}

// do sends req and expects status want; the body is read and dropped.
func (e *benchEnv) do(req *http.Request, want int) error {
	resp, err := e.client.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != want {
		return fmt.Errorf("%s %s: %s", req.Method, req.URL.Path, resp.Status)
	}
	return nil
}

// postJSON sends body as JSON to Vault with the root token.
func (e *benchEnv) vaultWrite(ctx context.Context, path string, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.vault.Addr+"/v1/"+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("X-Vault-Token", e.vault.RootToken)
	req.Header.Set("Content-Type", "application/json")
	return e.do(req, 200)
}
