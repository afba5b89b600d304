package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/e2e/harness"
)

// TestStartupTimeoutConfig: startup_timeout defaults to
// DefaultStartupTimeout when absent, 0 turns it off, and a negative one
// is refused naming the file and the field.
func TestStartupTimeoutConfig(t *testing.T) {
	dir := t.TempDir()
	pol := writeFile(t, dir, "p.yaml", "version: 1\n")
	base := "public_url: http://127.0.0.1:7700\npolicy: " + pol + "\nvault: {address: http://v}\naudit: {file: a}\n"
	for _, tc := range []struct {
		name, yaml string
		want       time.Duration
		wantErr    string
	}{
		{"ok/absent-is-the-default", base, DefaultStartupTimeout, ""},
		{"ok/zero-is-none", base + "startup_timeout: 0s\n", 0, ""},
		{"ok/set", base + "startup_timeout: 90s\n", 90 * time.Second, ""},
		{"fail/negative", base + "startup_timeout: -1s\n", 0, "config.yaml: startup_timeout: must not be negative"},
		{"fail/not-a-duration", base + "startup_timeout: soon\n", 0, "config.yaml: startup_timeout: \"soon\" is not a duration"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := LoadConfig(writeFile(t, t.TempDir(), "config.yaml", tc.yaml), func(string) string { return "" })
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("LoadConfig() = %v, want an error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.StartupTimeout == nil || time.Duration(*cfg.StartupTimeout) != tc.want {
				t.Errorf("startup_timeout = %v, want %v", cfg.StartupTimeout, tc.want)
			}
		})
	}
}

// TestHarnessStartWaitsForTheDefaultStartupTimeout: the e2e harness's
// wait for a broker's /readyz (harness.StartWait) is derived from
// startup_timeout, whose default it names apart (it cannot import this
// package): the two stay in step. So does its bound of a stopped
// start-up's hard exit (harness.StartupExitBound): startupCloseGrace,
// then the login's renewals stopped and its token revoked
// (loginRevokeTimeout each); it was a 15 s slack, less than that.
func TestHarnessStartWaitsForTheDefaultStartupTimeout(t *testing.T) {
	if harness.DefaultStartupTimeout != DefaultStartupTimeout {
		t.Errorf("harness.DefaultStartupTimeout = %v, want DefaultStartupTimeout (%v)", harness.DefaultStartupTimeout, DefaultStartupTimeout)
	}
	if want := startupCloseGrace + 2*loginRevokeTimeout; harness.StartupExitBound != want {
		t.Errorf("harness.StartupExitBound = %v, want startupCloseGrace + 2 x loginRevokeTimeout (%v)", harness.StartupExitBound, want)
	}
	// The bound of a served broker's close (shutdownCloseGrace), which
	// the harness's stop wait (harness.StopWait) and the deploy files'
	// budgets add to the drain, shutdown_timeout and the cut-off grace.
	for _, vt := range []time.Duration{0, 5 * time.Second, 20 * time.Second, 2 * time.Minute} {
		cfg := &Config{}
		cfg.Vault.Timeout = duration(vt)
		if got, want := harness.ShutdownCloseBound(vt), shutdownCloseGrace(cfg, &env{}); got != want {
			t.Errorf("harness.ShutdownCloseBound(%v) = %v, want shutdownCloseGrace (%v)", vt, got, want)
		}
	}
}

// startupDeadlineEnv is the env of the start-up deadline tests: Vault's
// root token, no reconciliation, the log in logs and e.exit recorded in
// exited (never the test process's os.Exit).
func startupDeadlineEnv(logs io.Writer, exited chan int) *env {
	return &env{ctx: context.Background(), stdout: io.Discard, stderr: logs, getenv: func(k string) string {
		return map[string]string{"VAULT_TOKEN": harness.VaultRootToken, envReconcile: "off"}[k]
	}, exit: func(code int) {
		select {
		case exited <- code:
		default:
		}
	}}
}

// startupDeadlineConfig is serverTestConfig with startup_timeout 10s
// (generous for this machine); edit, if not nil, changes it before
// applyDefaults.
func startupDeadlineConfig(t *testing.T, dir, vaultAddr string, edit func(*Config)) *Config {
	t.Helper()
	cfg := serverTestConfig(t, dir, "127.0.0.1:0", vaultAddr)
	if edit != nil {
		edit(cfg)
	}
	cfg.applyDefaults()
	st := duration(10 * time.Second)
	cfg.StartupTimeout = &st
	return cfg
}

// hardExitEnv is startupDeadlineEnv with a fresh log and exit channel and
// startupCloseGrace 2s: the env of a start-up that startup_timeout's hard
// exit ends.
func hardExitEnv() (*brokertest.SyncBuffer, chan int, *env) {
	logs := new(brokertest.SyncBuffer)
	exited := make(chan int, 1)
	e := startupDeadlineEnv(logs, exited)
	e.startupCloseGrace = 2 * time.Second
	return logs, exited, e
}

// holdFirstAuditWrite makes e's first audit write (the start's
// policy_load event) hang: held is closed when it starts, open (safe to
// call more than once) lets it go on.
func holdFirstAuditWrite(e *env) (held <-chan struct{}, open func()) {
	var hold atomic.Bool
	hold.Store(true)
	heldc, release := make(chan struct{}), make(chan struct{})
	var releaseOnce sync.Once
	open = func() { releaseOnce.Do(func() { close(release) }) }
	e.auditWritten = func() {
		if hold.CompareAndSwap(true, false) {
			close(heldc)
			<-release
		}
	}
	return heldc, open
}

// goRunServer runs runServer(ctx, e, cfg, nil) in a goroutine: done is
// closed when it returns, and runErr, once done is closed, is what it
// returned.
func goRunServer(ctx context.Context, e *env, cfg *Config) (done <-chan struct{}, runErr func() error) {
	donec := make(chan struct{})
	var err error
	go func() { defer close(donec); err = runServer(ctx, e, cfg, nil) }()
	return donec, func() error { return err }
}

// approleLogin enables AppRole in the Vault of c with a role kt whose
// tokens have policy (allowed everything), and writes its role and secret
// ids to files in dir.
func approleLogin(t *testing.T, c *vaultapi.Client, policy, dir string) (roleFile, secretFile string) {
	t.Helper()
	if err := c.Sys().EnableAuthWithOptions("approle", &vaultapi.EnableAuthOptions{Type: "approle"}); err != nil {
		t.Fatal(err)
	}
	if err := c.Sys().PutPolicy(policy, `path "*" { capabilities = ["create", "read", "update", "delete", "list", "sudo"] }`); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Logical().Write("auth/approle/role/kt", map[string]any{"token_policies": policy}); err != nil {
		t.Fatal(err)
	}
	rid, err := c.Logical().Read("auth/approle/role/kt/role-id")
	if err != nil {
		t.Fatal(err)
	}
	sid, err := c.Logical().Write("auth/approle/role/kt/secret-id", nil)
	if err != nil {
		t.Fatal(err)
	}
	roleFile, secretFile = filepath.Join(dir, "role_id"), filepath.Join(dir, "secret_id")
	if err := os.WriteFile(roleFile, []byte(rid.Data["role_id"].(string)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(secretFile, []byte(sid.Data["secret_id"].(string)), 0o600); err != nil {
		t.Fatal(err)
	}
	return roleFile, secretFile
}

// vaultTokenCount is the number of tokens the Vault of c holds.
func vaultTokenCount(t *testing.T, c *vaultapi.Client) int {
	t.Helper()
	sec, err := c.Logical().List("auth/token/accessors")
	if err != nil {
		t.Fatal(err)
	}
	keys, _ := sec.Data["keys"].([]any)
	return len(keys)
}

// TestStartupTimeoutStopsAStartupThatHangs: a start-up that waits for
// ever (here Vault answers everything but the read of vault.token_role,
// which hangs; vault.timeout is long) was never stopped: outside
// Kubernetes nothing restarted it, and its listener answered /healthz 200
// all along. Now startup_timeout stops it: an ERROR naming what it waited
// for, runServer's error (exit status 1), the failed start-up's usual
// close. The audit sink had already opened the file, adopting a line no
// checkpoint covered: no start event recorded it, so no checkpoint may
// sign it (the next start that succeeds records it).
func TestStartupTimeoutStopsAStartupThatHangs(t *testing.T) {
	vp := harness.StartVault(t)
	dir := t.TempDir()
	auditPath := filepath.Join(dir, "audit.jsonl")
	newCfg := func(vaultAddr string) *Config {
		cfg := serverTestConfig(t, dir, "127.0.0.1:0", vaultAddr)
		cfg.applyDefaults()
		return cfg
	}
	// A clean first run: the file ends with a checkpoint; then a line is
	// added that no checkpoint covers.
	var logs brokertest.SyncBuffer
	exited := make(chan int, 1)
	ctx, cancel := context.WithCancel(context.Background())
	readyc, errc := make(chan string, 1), make(chan error, 1)
	go func() {
		errc <- runServer(ctx, startupDeadlineEnv(&logs, exited), newCfg(vp.Addr), func(a string) { readyc <- a })
	}()
	select {
	case <-readyc:
	case err := <-errc:
		t.Fatalf("first start: %v\n%s", err, logs.String())
	case <-time.After(60 * time.Second):
		t.Fatal("first start did not serve")
	}
	cancel()
	if err := <-errc; err != nil {
		t.Fatalf("first run: %v", err)
	}
	data, c := resumeAuditFile(t, auditPath)
	cpSeq, _ := c.Head()
	added, err := c.Seal(&audit.Event{Type: audit.TypeIssue, RequestID: "req_added", IssuanceID: "iss_ADDED", Workload: "payments-api"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(auditPath, append(append(data, added...), '\n'), 0o600); err != nil {
		t.Fatal(err)
	}

	target, err := url.Parse(vp.Addr)
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(target)
	var hung atomic.Bool
	unhang := make(chan struct{})
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/v1/auth/token/roles/") {
			hung.Store(true)
			select { // until the broker gives up (or the test ends)
			case <-r.Context().Done():
			case <-unhang:
			}
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	defer front.Close()
	defer close(unhang) // before Close, which waits for the handlers
	cfg := newCfg(front.URL)
	cfg.Vault.TokenRole = "keytrail-hangs"
	cfg.Vault.Timeout = duration(time.Hour)
	st := duration(10 * time.Second) // generous: the start-up reaches the role read in about a second
	cfg.StartupTimeout = &st
	var logs2 brokertest.SyncBuffer
	errc = make(chan error, 1)
	readyc = make(chan string, 1)
	go func() {
		errc <- runServer(context.Background(), startupDeadlineEnv(&logs2, exited), cfg, func(a string) { readyc <- a })
	}()
	select {
	case err := <-errc:
		if err == nil || !strings.Contains(err.Error(), "startup_timeout") || !strings.Contains(err.Error(), "vault.token_role") {
			t.Errorf("runServer() = %v, want the start-up timeout naming vault.token_role", err)
		}
	case <-readyc:
		t.Fatal("the start-up served although its token role read hangs")
	case <-time.After(90 * time.Second):
		t.Fatalf("a start-up whose Vault read hangs did not end within 90s (startup_timeout 10s)\n%s", logs2.String())
	}
	if !hung.Load() {
		t.Errorf("the start-up never read the token role\n%s", logs2.String())
	}
	select {
	case code := <-exited:
		t.Errorf("exited at once (%d): a start-up whose waits end on the cancel closes as any failed one", code)
	default:
	}
	if l := logs2.String(); !strings.Contains(l, "level=ERROR") || !strings.Contains(l, "start-up did not finish within startup_timeout") ||
		!strings.Contains(l, `waiting_for="the Vault token role (vault.token_role)"`) {
		t.Errorf("log has no ERROR naming the step the start-up waited for\n%s", l)
	}
	for _, l := range bytes.Split(bytes.TrimSpace(mustRead(t, auditPath)), []byte("\n")) {
		ev, err := audit.ParseLine(l)
		if err != nil {
			t.Fatal(err)
		}
		if ev.Seq > cpSeq && ev.Type == audit.TypeCheckpoint {
			t.Errorf("checkpoint at seq %d signs the adopted line (seq %d) that no start event recorded", ev.Seq, cpSeq+1)
		}
		if ev.Seq > cpSeq+1 {
			t.Errorf("the timed-out start-up wrote %s at seq %d", ev.Type, ev.Seq)
		}
	}
}

// TestStartupTimeoutExitsWhenTheStartupIgnoresIt: a start-up blocked where
// the cancel does not reach (here: its start event's write to an audit
// disk that hangs) is ended by the process's exit (status 1) once
// startupCloseGrace has passed after startup_timeout, with an ERROR naming
// the step; nothing is closed, so no checkpoint is written.
func TestStartupTimeoutExitsWhenTheStartupIgnoresIt(t *testing.T) {
	vp := harness.StartVault(t)
	dir := t.TempDir()
	cfg := startupDeadlineConfig(t, dir, vp.Addr, nil)
	logs, exited, e := hardExitEnv()
	held, open := holdFirstAuditWrite(e)
	done, _ := goRunServer(context.Background(), e, cfg)
	t.Cleanup(func() { // let the server end before the next test
		open()
		select {
		case <-done:
		case <-time.After(60 * time.Second):
		}
	})
	select {
	case <-held:
	case <-done:
		t.Fatalf("server ended\n%s", logs.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("the start-up never wrote its start event\n%s", logs.String())
	}
	select {
	case code := <-exited:
		if code != 1 {
			t.Errorf("exit status = %d, want 1", code)
		}
	case <-done:
		t.Fatalf("runServer returned while its start event's write hangs\n%s", logs.String())
	case <-time.After(90 * time.Second):
		t.Fatalf("a start-up hung on its audit write did not exit within 90s (startup_timeout 10s)\n%s", logs.String())
	}
	if l := logs.String(); !strings.Contains(l, "start-up stopped by startup_timeout did not end: exiting now") ||
		!strings.Contains(l, `waiting_for="the start event to be durable (audit.file)"`) {
		t.Errorf("log does not say why the process exits, naming the step\n%s", l)
	}
}

// TestStartupTimeoutHardExitNextStartResumes: the state a hard exit
// (startupCloseGrace after startup_timeout, nothing closed) leaves behind
// is one the next start takes up: here the start-up adopted a line no
// checkpoint covered and hung on its start event's write (the line
// written, the writer never told, the journal on). The audit directory as
// it stood at the exit is put back after the in-process runServer (which
// cannot os.Exit) ended, and a second start must serve, stop cleanly and
// leave a file audit verify accepts: every line signed, each start event's
// unsigned_resumed record matching the lines no checkpoint covered.
func TestStartupTimeoutHardExitNextStartResumes(t *testing.T) {
	vp := harness.StartVault(t)
	dir := t.TempDir()
	auditPath := filepath.Join(dir, "audit.jsonl")
	newCfg := func() *Config { return startupDeadlineConfig(t, dir, vp.Addr, nil) }
	serveAndStop := func(name string) {
		t.Helper()
		var logs brokertest.SyncBuffer
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		readyc, errc := make(chan string, 1), make(chan error, 1)
		go func() {
			errc <- runServer(ctx, startupDeadlineEnv(&logs, make(chan int, 1)), newCfg(), func(a string) { readyc <- a })
		}()
		select {
		case <-readyc:
		case err := <-errc:
			t.Fatalf("%s: %v\n%s", name, err, logs.String())
		case <-time.After(60 * time.Second):
			t.Fatalf("%s did not serve\n%s", name, logs.String())
		}
		cancel()
		if err := <-errc; err != nil {
			t.Fatalf("%s: %v\n%s", name, err, logs.String())
		}
	}
	serveAndStop("first start")
	data, c := resumeAuditFile(t, auditPath)
	added, err := c.Seal(&audit.Event{Type: audit.TypeIssue, RequestID: "req_added", IssuanceID: "iss_ADDED", Workload: "payments-api"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(auditPath, append(append(data, added...), '\n'), 0o600); err != nil {
		t.Fatal(err)
	}

	// The start-up that hangs on its start event and is exited.
	logs, exited, e := hardExitEnv()
	held, open := holdFirstAuditWrite(e)
	defer open()
	done, _ := goRunServer(context.Background(), e, newCfg())
	select {
	case <-held:
	case <-done:
		t.Fatalf("server ended\n%s", logs.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("the start-up never wrote its start event\n%s", logs.String())
	}
	select {
	case <-exited:
	case <-done:
		t.Fatalf("runServer returned while its start event's write hangs\n%s", logs.String())
	case <-time.After(90 * time.Second):
		t.Fatalf("no exit within 90s\n%s", logs.String())
	}
	// The files as the exit leaves them.
	snap := map[string][]byte{}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, de := range ents {
		if de.Type().IsRegular() {
			snap[de.Name()] = mustRead(t, filepath.Join(dir, de.Name()))
		}
	}
	open()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatalf("runServer did not end once the write was released\n%s", logs.String())
	}
	ents, err = os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, de := range ents {
		if _, ok := snap[de.Name()]; !ok {
			if err := os.RemoveAll(filepath.Join(dir, de.Name())); err != nil {
				t.Fatal(err)
			}
		}
	}
	for name, b := range snap {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	serveAndStop("the start after the exit")
	out, stderr, err := runCLI(t, nil, "audit", "verify", "--key", auditPath+".checkpoint.pub", "--require-checkpoint", auditPath)
	if err != nil || strings.Contains(out+stderr, "WARN") {
		t.Errorf("audit verify after the exit and a clean restart: %v\n%s%s\n%s", err, out, stderr, mustRead(t, auditPath))
	}
}

// TestStartupTimeoutNamesTheStoreMarkerWait: with Redis, the start-up
// reads (and on a first start or a loss writes) the store's deployment id
// kept next to the audit log (.<audit file>.store, checkStoreMarker), on
// the audit log's disk, after the deployment id's store read. A start-up
// stuck there (a disk that hangs; here the marker is a FIFO nobody
// writes, whose read waits for ever and ignores the cancel) was reported
// as waiting for "the deployment id (store)": an operator looked at Redis
// while the audit disk hung. The ERROR names the marker, the store and
// audit.file.
func TestStartupTimeoutNamesTheStoreMarkerWait(t *testing.T) {
	rd := harness.StartRedis(t)
	vp := harness.StartVault(t)
	dir := t.TempDir()
	cfg := startupDeadlineConfig(t, dir, vp.Addr, func(cfg *Config) { cfg.Store.RedisURL = rd.URL() })
	marker := storeMarkerPath(cfg.Audit.File)
	if err := syscall.Mkfifo(marker, 0o600); err != nil {
		t.Fatal(err)
	}
	logs, exited, e := hardExitEnv()
	done, _ := goRunServer(context.Background(), e, cfg)
	t.Cleanup(func() {
		// A writer that closes at once: the marker's read sees its end.
		if f, err := os.OpenFile(marker, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			f.Close()
		}
		select {
		case <-done:
		case <-time.After(60 * time.Second):
		}
	})
	select {
	case <-exited:
	case <-done:
		t.Fatalf("runServer returned while the marker's read hangs\n%s", logs.String())
	case <-time.After(90 * time.Second):
		t.Fatalf("no exit within 90s (startup_timeout 10s)\n%s", logs.String())
	}
	if l := logs.String(); !strings.Contains(l, `waiting_for="the store's deployment id kept next to the audit log (store, audit.file)"`) {
		t.Errorf("the ERROR does not name the marker next to the audit log\n%s", l)
	}
}

// TestStartupTimeoutNamesTheCheckpointKeyWait: without a configured key
// the start-up reads (on a first start creates) the checkpoint key next
// to the audit log, on its disk, before it opens the log: the first place
// a hung audit disk stops it. startup_timeout's ERROR named the step
// before (here "the Vault login (vault.address)"; with Redis the store).
// Here the public key's path is a FIFO nobody reads, so its write waits
// for ever and ignores the cancel.
func TestStartupTimeoutNamesTheCheckpointKeyWait(t *testing.T) {
	vp := harness.StartVault(t)
	dir := t.TempDir()
	cfg := startupDeadlineConfig(t, dir, vp.Addr, nil)
	pub := cfg.Audit.File + ".checkpoint.pub"
	if err := syscall.Mkfifo(pub, 0o600); err != nil {
		t.Fatal(err)
	}
	logs, exited, e := hardExitEnv()
	done, _ := goRunServer(context.Background(), e, cfg)
	t.Cleanup(func() {
		// A reader: the key's write goes through.
		if f, err := os.OpenFile(pub, os.O_RDONLY|syscall.O_NONBLOCK, 0); err == nil {
			defer f.Close()
			for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
				select {
				case <-done:
					return
				case <-time.After(100 * time.Millisecond):
				}
				_, _ = io.Copy(io.Discard, f)
			}
		}
	})
	select {
	case <-exited:
	case <-done:
		t.Fatalf("runServer returned while the key's write hangs\n%s", logs.String())
	case <-time.After(90 * time.Second):
		t.Fatalf("no exit within 90s (startup_timeout 10s)\n%s", logs.String())
	}
	if l := logs.String(); !strings.Contains(l, `waiting_for="the audit checkpoint key (audit.checkpoint_key_file, or the default next to audit.file)"`) {
		t.Errorf("the ERROR does not name the checkpoint key\n%s", l)
	}
}
