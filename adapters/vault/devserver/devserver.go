// Package devserver builds and runs a HashiCorp Vault dev server for
// `keytrail dev` and keytrail's tests: build the server once per machine from the tools module in
// e2e/vaultserver, start `vault server -dev` on a free loopback port, and set
// it up the way keytrail's tests and `keytrail dev` expect (transit mount,
// signing keys, file audit device with clear accessors).
//
// Unix only (flock, SIGTERM). Vault is only run in development and tests;
// keytrail does not ship or embed it.
package devserver

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
)

// Names of what Start sets up.
const (
	RootToken           = "root"
	TransitMount        = "transit"
	SigningKey          = "keytrail-signing" // ecdsa-p256 (ES256)
	Ed25519Key          = "keytrail-ed25519" // ed25519 (EdDSA)
	vaultModulePath     = "github.com/keytrail/keytrail"
	vaultBuildLockName  = ".vault-build.lock"
	vaultStopGrace      = 15 * time.Second
	vaultDefaultStartup = 60 * time.Second
)

// BuildVault makes sure root/bin/vault is built from the tools module in
// root/e2e/vaultserver and returns its path. It builds only when the binary
// is missing or older than that module's go.sum, with exactly
//
//	go build -trimpath -ldflags='-s -w' -o <root>/bin/vault github.com/hashicorp/vault
//
// (the flags are part of Go's build cache key: other flags mean a full
// 10-20 minute rebuild). An exclusive flock on root/bin/.vault-build.lock
// keeps parallel test binaries from building twice; the output is written
// next to the binary and renamed into place, so an interrupted build never
// leaves a truncated bin/vault that looks fresh. progress (may be nil)
// receives a line before building, the go command's output, a line every
// minute while it compiles (silently, for 10-20 minutes) and one after.
func BuildVault(ctx context.Context, root string, progress io.Writer) (string, error) {
	if progress == nil {
		progress = io.Discard
	}
	bin := filepath.Join(root, "bin", "vault")
	modDir := filepath.Join(root, "e2e", "vaultserver")
	sum := filepath.Join(modDir, "go.sum")
	if ok, err := vaultBinaryFresh(bin, sum); err != nil {
		return "", err
	} else if ok {
		return bin, nil
	}
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		return "", fmt.Errorf("build vault: %w", err)
	}
	unlock, err := vaultBuildLock(ctx, filepath.Join(filepath.Dir(bin), vaultBuildLockName), progress)
	if err != nil {
		return "", err
	}
	defer unlock()
	// Another process may have built it while we waited.
	if ok, err := vaultBinaryFresh(bin, sum); err != nil {
		return "", err
	} else if ok {
		return bin, nil
	}
	tmp := bin + ".tmp"
	_ = os.Remove(tmp)
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", tmp, "github.com/hashicorp/vault")
	cmd.Dir = modDir
	if err := runBuild(cmd, tmp, bin, progress, buildHeartbeat); err != nil {
		return "", err
	}
	return bin, nil
}

// buildHeartbeat is how often a Vault build says it is still going: the go
// command prints nothing while it compiles, for 10-20 minutes.
const buildHeartbeat = time.Minute

// runBuild runs cmd, which writes the binary to tmp, and renames tmp to bin.
// progress gets a line before, cmd's output, a line every every while cmd
// runs, and a line after.
func runBuild(cmd *exec.Cmd, tmp, bin string, progress io.Writer, every time.Duration) error {
	fmt.Fprintln(progress, "building Vault server (first time: 10-20 min)...")
	var mu sync.Mutex // cmd's stdout, its stderr and the heartbeat write at once
	out := LockedWriter(&mu, progress)
	var tail tailBuffer
	cmd.Stdout = io.MultiWriter(out, &tail)
	cmd.Stderr = io.MultiWriter(out, &tail)
	start := time.Now()
	done := make(chan struct{})
	beat := make(chan struct{})
	go func() {
		defer close(beat)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				fmt.Fprintf(out, "still building Vault (%s so far; the first build takes 10-20 min)...\n", time.Since(start).Round(time.Second))
			}
		}
	}()
	err := cmd.Run()
	close(done)
	<-beat
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("build vault in %s: %w\n%s", cmd.Dir, err, tail.String())
	}
	if err := os.Rename(tmp, bin); err != nil {
		return fmt.Errorf("build vault: %w", err)
	}
	fmt.Fprintf(progress, "built %s in %s\n", bin, time.Since(start).Round(time.Second))
	return nil
}

// LockedWriter returns a writer that passes each Write to w while holding
// mu, so writers sharing mu never interleave within one Write (fmt's
// Fprint* make one Write per call). keytrail's CLI uses it too, for the
// lines its concurrent renewals write to stderr.
func LockedWriter(mu *sync.Mutex, w io.Writer) io.Writer { return lockedWriter{mu: mu, w: w} }

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// vaultBinaryFresh reports whether bin exists, is non-empty and is newer than
// the tools module's go.sum.
func vaultBinaryFresh(bin, sum string) (bool, error) {
	si, err := os.Stat(sum)
	if err != nil {
		return false, fmt.Errorf("vault tools module: %w", err)
	}
	bi, err := os.Stat(bin)
	if err != nil {
		return false, nil
	}
	return bi.Mode().IsRegular() && bi.Size() > 0 && bi.ModTime().After(si.ModTime()), nil
}

// vaultBuildLock takes an exclusive flock on path, polling so that ctx can
// cancel the wait.
func vaultBuildLock(ctx context.Context, path string, progress io.Writer) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("vault build lock: %w", err)
	}
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	said := false
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() {
				_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
				_ = f.Close()
			}, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			_ = f.Close()
			return nil, fmt.Errorf("vault build lock: %w", err)
		}
		if !said {
			fmt.Fprintf(progress, "waiting for another Vault build (%s)...\n", path)
			said = true
		}
		select {
		case <-ctx.Done():
			_ = f.Close()
			return nil, fmt.Errorf("vault build lock: %w", ctx.Err())
		case <-tick.C:
		}
	}
}

// RepoRoot walks up from the working directory to the directory whose
// go.mod declares module github.com/keytrail/keytrail.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && vaultModuleLine(b) == vaultModulePath {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod of module %s above the working directory", vaultModulePath)
		}
		dir = parent
	}
}

// vaultModuleLine returns the module path a go.mod declares.
func vaultModuleLine(gomod []byte) string {
	sc := bufio.NewScanner(bytes.NewReader(gomod))
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "module"); ok && rest != "" && (rest[0] == ' ' || rest[0] == '\t') {
			return strings.Trim(strings.TrimSpace(rest), `"`)
		}
	}
	return ""
}

// Options configure Start.
type Options struct {
	// Dir holds the server's HOME, its log (vault.log) and the audit log
	// (vault-audit.log). Required; created if missing.
	Dir string
	// Port to listen on at 127.0.0.1; 0 picks a free one.
	Port int
	// RootToken is the dev root token id; default RootToken.
	RootToken string
	// Log, when set, also receives the server's output.
	Log io.Writer
}

// Process is a running `vault server -dev`. Its state lives in memory
// only: Restart brings up an empty server on the same address and repeats the
// setup, so transit keys are new and earlier tokens are gone.
type Process struct {
	Addr         string           // http://127.0.0.1:<port>
	RootToken    string           // dev root token
	AuditLogPath string           // file audit device, hmac_accessor=false
	LogPath      string           // server output
	Dir          string           // working directory (HOME is Dir/home)
	Client       *vaultapi.Client // authenticated with RootToken, no retries

	bin  string
	port int
	logW io.Writer // extra log destination, may be nil

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
}

// Start starts `vault server -dev -dev-root-token-id=<token>
// -dev-listen-address=127.0.0.1:<port> -dev-no-store-token` with HOME in
// o.Dir and no VAULT_* variables in its environment, waits for sys/health,
// then enables the transit engine at transit/, creates the keys
// keytrail-signing (ecdsa-p256) and keytrail-ed25519 (ed25519), and enables
// a file audit device writing to Dir/vault-audit.log with hmac_accessor=false
// so token accessors appear in clear.
//
// ctx bounds the start-up only; the server runs until Stop or Kill (it is
// not a child of ctx). When the chosen free port is taken before Vault binds
// it, another one is tried.
func Start(ctx context.Context, bin string, o Options) (*Process, error) {
	if o.Dir == "" {
		return nil, errors.New("start vault: Dir is required")
	}
	if fi, err := os.Stat(bin); err != nil || !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("start vault: binary %q not found", bin)
	}
	// The server runs in o.Dir, and exec resolves a relative binary path
	// against the child's working directory: "bin/vault" must mean the file
	// just found, relative to ours.
	bin, err := filepath.Abs(bin)
	if err != nil {
		return nil, fmt.Errorf("start vault: %w", err)
	}
	if o.Port < 0 || o.Port > 65535 {
		return nil, fmt.Errorf("start vault: bad port %d", o.Port)
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return nil, fmt.Errorf("start vault: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "home"), 0o700); err != nil {
		return nil, fmt.Errorf("start vault: %w", err)
	}
	tok := o.RootToken
	if tok == "" {
		tok = RootToken
	}
	p := &Process{
		RootToken:    tok,
		AuditLogPath: filepath.Join(dir, "vault-audit.log"),
		LogPath:      filepath.Join(dir, "vault.log"),
		Dir:          dir,
		bin:          bin,
		logW:         o.Log,
	}
	for attempt := 0; ; attempt++ {
		port := o.Port
		if port == 0 {
			if port, err = vaultFreePort(); err != nil {
				return nil, fmt.Errorf("start vault: %w", err)
			}
		}
		err = p.launch(ctx, port)
		if err == nil {
			return p, nil
		}
		if !errors.Is(err, errVaultAddrInUse) || o.Port != 0 || attempt == 2 {
			return nil, err
		}
	}
}

var errVaultAddrInUse = errors.New("address already in use")

// launch starts the server on port, waits for it and sets it up.
func (p *Process) launch(ctx context.Context, port int) error {
	logf, err := os.OpenFile(p.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("start vault: %w", err)
	}
	var start int64
	if fi, err := logf.Stat(); err == nil {
		start = fi.Size()
	}
	out := io.Writer(logf)
	if p.logW != nil {
		out = io.MultiWriter(logf, p.logW)
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	cmd := exec.Command(p.bin, "server", "-dev",
		"-dev-root-token-id="+p.RootToken,
		"-dev-listen-address="+addr,
		"-dev-no-store-token")
	cmd.Dir = p.Dir
	cmd.Env = vaultChildEnv(filepath.Join(p.Dir, "home"))
	cmd.SysProcAttr = DieWithParent()
	cmd.Stdout = out
	cmd.Stderr = out
	if err := cmd.Start(); err != nil {
		_ = logf.Close()
		return fmt.Errorf("start vault: %w", err)
	}
	done := make(chan struct{})
	p.mu.Lock()
	p.cmd, p.done, p.waitErr, p.port = cmd, done, nil, port
	p.mu.Unlock()
	go func() {
		err := cmd.Wait()
		_ = logf.Close()
		p.mu.Lock()
		p.waitErr = err
		p.mu.Unlock()
		close(done)
	}()

	// Addr and Client change only while Start picks a port;
	// Restart keeps both.
	if url := "http://" + addr; p.Client == nil || p.Addr != url {
		c, err := vaultRootClient(url, p.RootToken)
		if err != nil {
			_ = p.Kill()
			return err
		}
		p.Addr, p.Client = url, c
	}
	if err := p.waitHealthy(ctx, done); err != nil {
		_ = p.Kill()
		out := p.logSince(start)
		if strings.Contains(out, "address already in use") {
			return fmt.Errorf("start vault on %s: %w", addr, errVaultAddrInUse)
		}
		return fmt.Errorf("start vault on %s: %w\nserver log:\n%s", addr, err, lastBytes(out, 4096))
	}
	if err := p.setup(ctx); err != nil {
		_ = p.Kill()
		return fmt.Errorf("set up vault on %s: %w\nserver log:\n%s", addr, err, lastBytes(p.logSince(start), 4096))
	}
	return nil
}

// waitHealthy polls sys/health until the server is initialised, unsealed and
// active, the process exits, or ctx ends.
func (p *Process) waitHealthy(ctx context.Context, done <-chan struct{}) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		hctx, cancel := context.WithTimeout(ctx, time.Second)
		h, err := p.Client.Sys().HealthWithContext(hctx)
		cancel()
		switch {
		case err != nil:
			last = err
		case !h.Initialized || h.Sealed || h.Standby:
			last = fmt.Errorf("not ready: initialized=%v sealed=%v standby=%v", h.Initialized, h.Sealed, h.Standby)
		default:
			return nil
		}
		select {
		case <-done:
			p.mu.Lock()
			werr := p.waitErr
			p.mu.Unlock()
			return fmt.Errorf("vault exited before it was healthy: %v", werr)
		case <-ctx.Done():
			return fmt.Errorf("vault not healthy in time: %w (last: %v)", ctx.Err(), last)
		case <-tick.C:
		}
	}
}

// setup enables transit with the two signing keys and the file audit device.
func (p *Process) setup(ctx context.Context) error {
	steps := []struct {
		path string
		body map[string]any
	}{
		{"sys/mounts/" + TransitMount, map[string]any{"type": "transit"}},
		{TransitMount + "/keys/" + SigningKey, map[string]any{"type": "ecdsa-p256"}},
		{TransitMount + "/keys/" + Ed25519Key, map[string]any{"type": "ed25519"}},
		{"sys/audit/file", map[string]any{"type": "file", "options": map[string]any{
			"file_path":     p.AuditLogPath,
			"hmac_accessor": "false",
		}}},
	}
	for _, s := range steps {
		if _, err := p.Client.Logical().WriteWithContext(ctx, s.path, s.body); err != nil {
			return fmt.Errorf("write %s: %w", s.path, err)
		}
	}
	return nil
}

// PID is the process id of the server started last (0 before Start);
// benchmarks read its CPU time from /proc.
func (p *Process) PID() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Done is closed when the current server process exits.
func (p *Process) Done() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.done
}

// Stop asks the server to shut down (SIGTERM), kills it after 15 s, and
// waits for it. Stopping a stopped server is a no-op.
func (p *Process) Stop() error {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return nil
	}
	select {
	case <-done:
		return nil
	default:
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stop vault: %w", err)
	}
	timer := time.NewTimer(vaultStopGrace)
	defer timer.Stop()
	select {
	case <-done:
		return nil
	case <-timer.C:
		return p.Kill()
	}
}

// Kill ends the server at once (SIGKILL), as a crash would, and waits for it.
func (p *Process) Kill() error {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return nil
	}
	if err := cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill vault: %w", err)
	}
	<-done
	return nil
}

// Restart stops the server and starts a new one on the same address with
// the same root token, audit log and setup. The dev server keeps everything
// in memory: tokens, leases and transit keys of the old server are gone.
func (p *Process) Restart(ctx context.Context) error {
	if err := p.Stop(); err != nil {
		return err
	}
	p.mu.Lock()
	port := p.port
	p.mu.Unlock()
	return p.launch(ctx, port)
}

// LogTail returns up to the last n bytes of the server's log.
func (p *Process) LogTail(n int) string {
	b, err := os.ReadFile(p.LogPath)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	return lastBytes(string(b), n)
}

// logSince returns the server log from byte offset off on.
func (p *Process) logSince(off int64) string {
	b, err := os.ReadFile(p.LogPath)
	if err != nil || int64(len(b)) < off {
		return ""
	}
	return string(b[off:])
}

func lastBytes(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}

// vaultRootClient is a vault/api client for the harness: no retries, a
// request timeout, and the given token whatever VAULT_TOKEN says.
func vaultRootClient(addr, token string) (*vaultapi.Client, error) {
	cfg := vaultapi.DefaultConfig()
	if cfg.Error != nil {
		return nil, fmt.Errorf("vault client config: %w", cfg.Error)
	}
	cfg.Address = addr
	cfg.AgentAddress = ""
	cfg.MaxRetries = 0
	cfg.Timeout = 10 * time.Second
	c, err := vaultapi.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("vault client: %w", err)
	}
	c.SetToken(token)
	c.ClearNamespace()
	return c, nil
}

// vaultChildEnv is the environment of the server: ours without VAULT_*
// variables and with HOME replaced.
func vaultChildEnv(home string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "VAULT_") || strings.HasPrefix(kv, "HOME=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "HOME="+home)
}

// vaultFreePort asks the kernel for a free loopback TCP port.
func vaultFreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// tailBuffer keeps the last 8 KiB written to it.
type tailBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if over := len(t.b) - 8192; over > 0 {
		t.b = t.b[over:]
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}
