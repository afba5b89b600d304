package harness

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/keytrail/keytrail/adapters/vault/devserver"
	"github.com/keytrail/keytrail/broker"
)

var (
	// binOverride, when set, is run instead of the keytrail binary
	// (the harness's own tests).
	binOverride string

	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// RepoRoot returns the keytrail repository root.
func RepoRoot() (string, error) { return devserver.RepoRoot() }

// KeytrailBinary builds cmd/keytrail once per test process (with -race when
// the tests run with it, so e2e covers the binary too) and returns its path.
func KeytrailBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		root, err := RepoRoot()
		if err != nil {
			buildErr = err
			return
		}
		dir, err := os.MkdirTemp("", "keytrail-bin-")
		if err != nil {
			buildErr = err
			return
		}
		buildPath = filepath.Join(dir, "keytrail")
		args := []string{"build", "-o", buildPath}
		if raceEnabled {
			args = append(args, "-race")
		}
		args = append(args, "./cmd/keytrail")
		cmd := exec.Command("go", args...)
		cmd.Dir = root
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build ./cmd/keytrail: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatalf("harness: %v", buildErr)
	}
	return buildPath
}

// NoRaceExitSleep returns gorace, a GORACE value, with atexit_sleep_ms=0
// added: a binary built with -race then does not wait the race detector's
// default 1 s before a normal exit (status 0; every CLI run that succeeds
// and every server stopped with SIGTERM). Its other options (halt_on_error,
// log_path, ...) are kept, and so is an atexit_sleep_ms it already sets.
func NoRaceExitSleep(gorace string) string {
	for _, f := range strings.Fields(gorace) {
		if strings.HasPrefix(f, "atexit_sleep_ms=") {
			return gorace
		}
	}
	return strings.TrimSpace(gorace + " atexit_sleep_ms=0")
}

// SkipRaceExitSleep sets GORACE (NoRaceExitSleep) in this process's
// environment when the tests run with -race, so that every keytrail
// binary a test runs with it exits without the sleep. Call it from
// TestMain before m.Run; the test process itself keeps its own GORACE
// (read when it started).
func SkipRaceExitSleep() error {
	if !raceEnabled {
		return nil
	}
	return os.Setenv("GORACE", NoRaceExitSleep(os.Getenv("GORACE")))
}

// RemoveBinary removes what KeytrailBinary built (its temporary
// directory, ~45 MB with -race): call it from TestMain after m.Run, since
// no test's cleanup outlives the binary's other users. Harmless when
// nothing was built.
func RemoveBinary() {
	if buildPath != "" {
		_ = os.RemoveAll(filepath.Dir(buildPath))
	}
}

// Keytrail is a running keytrail server process.
type Keytrail struct {
	t       testing.TB
	URL     string
	Config  string
	LogPath string
	Env     []string
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
	mu      sync.Mutex
	// logFrom is the size of LogPath when the process last started
	// (Restart appends to it): WaitReady looks for its serving line
	// after it only.
	logFrom int64
}

// StartKeytrail runs `keytrail server --config cfg` with env appended to the
// environment and waits until GET url/readyz answers 200. The process is
// stopped (SIGTERM) when the test ends, and the test fails when the server
// reported a data race (raceReported), also after a Restart or a Kill.
func StartKeytrail(t testing.TB, url, cfg string, env ...string) *Keytrail {
	t.Helper()
	k := &Keytrail{t: t, URL: strings.TrimRight(url, "/"), Config: cfg, Env: env}
	k.LogPath = filepath.Join(t.TempDir(), "keytrail.log")
	k.start()
	t.Cleanup(func() {
		if race := raceReported(k.Logs(), k.Stop()); race != "" {
			t.Errorf("harness: keytrail server %s\n--- log ---\n%s", race, k.Logs())
		}
	})
	if err := k.waitStarted(); err != nil {
		t.Fatalf("harness: keytrail not ready: %v\n--- log ---\n%s", err, k.Logs())
	}
	return k
}

func (k *Keytrail) start() {
	k.t.Helper()
	bin := binOverride
	if bin == "" {
		bin = KeytrailBinary(k.t)
	}
	logf, err := os.OpenFile(k.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		k.t.Fatalf("harness: %v", err)
	}
	var logFrom int64
	if fi, err := logf.Stat(); err == nil {
		logFrom = fi.Size()
	}
	cmd := exec.Command(bin, "server", "--config", k.Config)
	cmd.Env = append(append(os.Environ(), "VAULT_TOKEN="), k.Env...)
	cmd.SysProcAttr = devserver.DieWithParent()
	cmd.Stdout = logf
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		k.t.Fatalf("harness: starting keytrail: %v", err)
	}
	k.mu.Lock()
	k.cmd = cmd
	k.logFrom = logFrom
	k.done = make(chan struct{})
	done := k.done
	k.mu.Unlock()
	go func() {
		err := cmd.Wait()
		logf.Close()
		k.mu.Lock()
		k.waitErr = err
		k.mu.Unlock()
		close(done)
	}()
}

// raceExitCode is the race detector's exit status (GORACE exitcode) of a
// process that reported a data race and would otherwise have exited 0.
const raceExitCode = 66

// raceReported says how a server whose log is logs and whose exit error
// is exitErr reported a data race ("" when it did not): by the race
// detector's report in its log (written when the race happens, so also
// when the test killed it) or by its exit status (its reports sent
// elsewhere by GORACE log_path). GORACE atexit_sleep_ms=0
// (SkipRaceExitSleep) changes neither: it only skips the wait before the
// exit.
func raceReported(logs string, exitErr error) string {
	if strings.Contains(logs, "WARNING: DATA RACE") {
		return "reported a DATA RACE in its log"
	}
	var ee *exec.ExitError
	if errors.As(exitErr, &ee) && ee.ExitCode() == raceExitCode {
		return fmt.Sprintf("exited with the race detector's status %d (a data race)", raceExitCode)
	}
	return ""
}

// servingLine is the message keytrail server logs once its start-up has
// ended and it serves the broker's routes.
const servingLine = "keytrail serving"

// servingReadyWait bounds WaitReady once the server has logged
// servingLine: its start-up is over, and a /readyz still failing then
// (Vault, the store or the audit sink unhealthy) is not a start-up the
// server may still finish within its startup_timeout. Without it, such a
// broker took the whole StartWait (5m55s by default) to fail its test,
// and a dozen tests failing so, more than the e2e package's go test
// -timeout (scripts/test.sh), which then panics instead of failing each.
var servingReadyWait = 30 * time.Second

// deadlineMargin is what waitStarted leaves before the test binary's
// deadline (go test -timeout), beyond the stop's bound (StopWait): the
// test's failure and its other cleanups.
const deadlineMargin = 30 * time.Second

// waitStarted waits for a process just started (StartKeytrail, Restart)
// to be ready: StartWait, but no later than the test binary's deadline
// allows for the test to fail and its cleanup to stop the server (a
// panic "test timed out" reports neither the failure nor the log), and
// never less than servingReadyWait (the fixed wait it once was).
func (k *Keytrail) waitStarted() error {
	wait := StartWait(k.Config)
	d, ok := k.t.(interface{ Deadline() (time.Time, bool) })
	if !ok {
		return k.WaitReady(wait)
	}
	end, ok := d.Deadline()
	if !ok {
		return k.WaitReady(wait)
	}
	left := max(time.Until(end)-StopWait(k.Config)-deadlineMargin, servingReadyWait)
	if left >= wait {
		return k.WaitReady(wait)
	}
	if err := k.WaitReady(left); err != nil {
		return fmt.Errorf("%w (waited %v of StartWait %v: the test binary's deadline, go test -timeout, leaves no more before the stop's %v)",
			err, left, wait, StopWait(k.Config))
	}
	return nil
}

// serving reports whether the process started last has logged
// servingLine.
func (k *Keytrail) serving() bool {
	k.mu.Lock()
	from := k.logFrom
	k.mu.Unlock()
	f, err := os.Open(k.LogPath)
	if err != nil {
		return false
	}
	defer f.Close()
	if _, err := f.Seek(from, io.SeekStart); err != nil {
		return false
	}
	b, _ := io.ReadAll(f)
	return strings.Contains(string(b), servingLine)
}

// WaitReady polls /readyz until it answers 200 or the timeout passes, or
// servingReadyWait after the server logged that it serves.
func (k *Keytrail) WaitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	client := &http.Client{Timeout: time.Second}
	var (
		last    error
		serving bool
	)
	for time.Now().Before(deadline) {
		select {
		case <-k.done:
			return fmt.Errorf("keytrail exited: %v", k.exitErr())
		default:
		}
		resp, err := client.Get(k.URL + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
			last = fmt.Errorf("readyz: %s", resp.Status)
		} else {
			last = err
		}
		if !serving && k.serving() {
			serving = true
			if d := time.Now().Add(servingReadyWait); d.Before(deadline) {
				deadline = d
			}
		}
		select {
		case <-k.done:
		case <-time.After(50 * time.Millisecond):
		}
	}
	if serving {
		return fmt.Errorf("serving (its log says %q) but not ready within %v: %v", servingLine, servingReadyWait, last)
	}
	return fmt.Errorf("timed out: %v", last)
}

func (k *Keytrail) exitErr() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.waitErr
}

// Logs returns what the process wrote so far.
func (k *Keytrail) Logs() string {
	b, _ := os.ReadFile(k.LogPath)
	return string(b)
}

// Stop sends SIGTERM and waits for a graceful exit; it returns the exit error.
func (k *Keytrail) Stop() error {
	k.mu.Lock()
	cmd, done := k.cmd, k.done
	k.mu.Unlock()
	if cmd == nil {
		return nil
	}
	select {
	case <-done:
		return k.exitErr()
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(StopWait(k.Config)):
		_ = cmd.Process.Kill()
		<-done
	}
	return k.exitErr()
}

// stopSlack is what StopWait adds to the broker's own bound of its stop
// (the race detector's exit, a loaded machine).
const stopSlack = 15 * time.Second

// StopWait is how long Stop waits after SIGTERM before SIGKILL for a
// server run with the configuration file cfg: shutdown_drain,
// shutdown_timeout (20s by default), then the grace keytrail server gives
// the handlers it cut off (broker.TimeoutsFor(vault.timeout).CutOffGrace,
// the server's own formula), then the bound of its close
// (ShutdownCloseBound; a close after a Serve failed before serving is
// bounded sooner, StartupExitBound), plus stopSlack. A kill before that
// would lose what the stop writes (the audit events of cut-off
// exchanges, the final checkpoint, or the ERROR naming the step a hung
// close waits for). A file it cannot read counts as the defaults.
func StopWait(cfg string) time.Duration {
	var c struct {
		ShutdownDrain   string `yaml:"shutdown_drain"`
		ShutdownTimeout string `yaml:"shutdown_timeout"`
		Vault           struct {
			Timeout string `yaml:"timeout"`
		} `yaml:"vault"`
	}
	if data, err := os.ReadFile(cfg); err == nil {
		_ = yaml.Unmarshal(data, &c)
	}
	dur := func(s string, def time.Duration) time.Duration {
		if d, err := time.ParseDuration(s); err == nil && d > 0 {
			return d
		}
		return def
	}
	vaultTimeout := dur(c.Vault.Timeout, 0)
	return dur(c.ShutdownDrain, 0) + dur(c.ShutdownTimeout, 20*time.Second) +
		broker.TimeoutsFor(vaultTimeout).CutOffGrace() + ShutdownCloseBound(vaultTimeout) + stopSlack
}

// ShutdownCloseBound is how long a broker that served, run with
// vault.timeout vaultTimeout (0: its default), may take to close after
// its cut-off handlers' grace (its loops stopped, the audit log's final
// flush and checkpoint) before it logs an ERROR naming the step it waits
// for and exits 1: cmd/keytrail's shutdownCloseGrace, the cut-off grace
// (broker.TimeoutsFor(vault.timeout).CutOffGrace) plus one audit write,
// 52 s by default. A test there keeps the two in step.
func ShutdownCloseBound(vaultTimeout time.Duration) time.Duration {
	return broker.TimeoutsFor(vaultTimeout).CutOffGrace() + broker.DefaultAuditTimeout
}

// DefaultStartupTimeout is keytrail server's startup_timeout when the
// configuration leaves it out (cmd/keytrail's DefaultStartupTimeout; a
// test there keeps the two in step).
const DefaultStartupTimeout = 5 * time.Minute

// startSlack is what StartWait adds to the broker's own bound of its
// start-up (the process's start under the race detector, a loaded
// machine).
const startSlack = 15 * time.Second

// StartupExitBound is how long after startup_timeout a stopped start-up
// whose close hangs still runs: cmd/keytrail's startupCloseGrace (30 s),
// then the hard exit stops the login's renewals and revokes its token, up
// to loginRevokeTimeout (5 s) each. A test there keeps them in step.
const StartupExitBound = 40 * time.Second

// StartWait is how long StartKeytrail and Restart wait for /readyz to
// answer 200 from a server run with the configuration file cfg: its
// startup_timeout (absent, 0 or unreadable: DefaultStartupTimeout), by
// which the server stops a start-up that does not serve (exit 1, which
// ends the wait at once; StartupExitBound later if its close hangs), plus
// StartupExitBound and startSlack. A fixed 30 s wait failed a
// start-up the server itself would still have let finish (a slow Vault
// login, a long audit log read back).
func StartWait(cfg string) time.Duration {
	var c struct {
		StartupTimeout string `yaml:"startup_timeout"`
	}
	if data, err := os.ReadFile(cfg); err == nil {
		_ = yaml.Unmarshal(data, &c)
	}
	d, err := time.ParseDuration(c.StartupTimeout)
	if err != nil || d <= 0 {
		d = DefaultStartupTimeout
	}
	return d + StartupExitBound + startSlack
}

// Kill sends SIGKILL and waits for the process to end.
func (k *Keytrail) Kill() {
	k.mu.Lock()
	cmd, done := k.cmd, k.done
	k.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}

// Restart starts the process again with the same config and waits for it.
func (k *Keytrail) Restart() {
	k.t.Helper()
	k.Stop()
	k.start()
	if err := k.waitStarted(); err != nil {
		k.t.Fatalf("harness: keytrail not ready after restart: %v\n%s", err, k.Logs())
	}
}

// Signal sends sig to the process.
func (k *Keytrail) Signal(sig os.Signal) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.cmd.Process.Signal(sig)
}

// Done is closed when the process has exited.
func (k *Keytrail) Done() <-chan struct{} {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.done
}
