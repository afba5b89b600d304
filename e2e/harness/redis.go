package harness

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keytrail/keytrail/adapters/vault/devserver"
)

// redisStartTimeout bounds how long StartRedis and Restart wait for PING.
const redisStartTimeout = 15 * time.Second

// RedisOption configures StartRedis.
type RedisOption func(*redisConfig)

type redisConfig struct {
	persistence bool
	args        []string
}

// WithPersistence turns on the append-only file (appendfsync always), so that
// data written before Stop or Kill is there again after Restart.
func WithPersistence() RedisOption {
	return func(c *redisConfig) { c.persistence = true }
}

// WithArgs appends redis-server command-line arguments, e.g.
// WithArgs("--maxmemory-policy", "allkeys-lru").
func WithArgs(args ...string) RedisOption {
	return func(c *redisConfig) { c.args = append(c.args, args...) }
}

// Redis is a redis-server process owned by one test. It listens on a loopback
// port and keeps its files in a temporary directory; both stay the same across
// Restart.
type Redis struct {
	t    testing.TB
	bin  string
	port int
	dir  string
	cfg  redisConfig

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
}

// StartRedis starts redis-server on a free loopback port and waits until it
// answers PING. The server is killed when the test ends. A missing binary or a
// server that does not come up fails the test.
func StartRedis(t testing.TB, opts ...RedisOption) *Redis {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("harness: redis-server not found in PATH (%v); install it, e.g. `apt-get install redis-server` on Debian/Ubuntu or `brew install redis` on macOS", err)
	}
	r := &Redis{t: t, bin: bin, dir: t.TempDir()}
	for _, o := range opts {
		o(&r.cfg)
	}
	t.Cleanup(r.Kill)

	// A port picked by FreePort can be taken by someone else before
	// redis-server binds it; try a few ports before giving up.
	var lastErr error
	for range 5 {
		r.port = FreePort(t)
		if lastErr = r.start(); lastErr == nil {
			return r
		}
	}
	t.Fatalf("harness: redis-server did not start: %v", lastErr)
	return nil
}

// Addr is the server's host:port.
func (r *Redis) Addr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(r.port))
}

// URL is the server's redis:// URL (database 0).
func (r *Redis) URL() string {
	return "redis://" + r.Addr() + "/0"
}

// Dir is the server's working directory (AOF and log file).
func (r *Redis) Dir() string { return r.dir }

// PID is the running server's process id (0 when it is not running).
func (r *Redis) PID() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil {
		return 0
	}
	return r.cmd.Process.Pid
}

// Stop shuts the server down gracefully (SIGTERM) and waits for it to exit.
func (r *Redis) Stop() {
	r.t.Helper()
	r.signal(syscall.SIGTERM)
}

// Kill ends the server with SIGKILL and waits for it to exit. It is a no-op
// when the server is not running.
func (r *Redis) Kill() {
	r.signal(syscall.SIGKILL)
}

// Pause freezes the server (SIGSTOP): connections stay open but nothing is
// answered, as with a hung or partitioned server. Resume undoes it; the
// cleanup kills a paused server too.
func (r *Redis) Pause() {
	r.t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil {
		r.t.Fatalf("harness: Pause: redis-server is not running")
	}
	if err := r.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		r.t.Fatalf("harness: Pause: %v", err)
	}
}

// Resume continues a paused server (SIGCONT).
func (r *Redis) Resume() {
	r.t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil {
		r.t.Fatalf("harness: Resume: redis-server is not running")
	}
	if err := r.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		r.t.Fatalf("harness: Resume: %v", err)
	}
}

// Restart stops the server if it runs and starts it again on the same port
// with the same directory, waiting until it answers PING.
func (r *Redis) Restart() {
	r.t.Helper()
	r.Stop()
	if err := r.start(); err != nil {
		r.t.Fatalf("harness: redis-server did not restart: %v", err)
	}
}

func (r *Redis) signal(sig syscall.Signal) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil {
		return
	}
	_ = r.cmd.Process.Signal(sig)
	if sig == syscall.SIGTERM {
		// A paused server cannot act on SIGTERM until continued.
		_ = r.cmd.Process.Signal(syscall.SIGCONT)
	}
	select {
	case <-r.done:
	case <-time.After(redisStartTimeout):
		_ = r.cmd.Process.Kill()
		<-r.done
	}
	r.cmd, r.done = nil, nil
}

func (r *Redis) args() []string {
	a := []string{
		"--port", strconv.Itoa(r.port),
		"--bind", "127.0.0.1",
		"--dir", r.dir,
		"--logfile", filepath.Join(r.dir, "redis.log"),
		"--daemonize", "no",
		"--save", "",
	}
	if r.cfg.persistence {
		a = append(a, "--appendonly", "yes", "--appendfsync", "always")
	} else {
		a = append(a, "--appendonly", "no")
	}
	return append(a, r.cfg.args...)
}

// start launches the process and waits until PING answers, the process
// exits, or the deadline passes.
func (r *Redis) start() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	cmd := exec.Command(r.bin, r.args()...)
	cmd.Dir = r.dir
	cmd.SysProcAttr = devserver.DieWithParent()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", r.bin, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()

	deadline := time.NewTimer(redisStartTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if pingRedis(r.Addr()) == nil {
			r.cmd, r.done = cmd, done
			return nil
		}
		select {
		case <-done:
			return fmt.Errorf("redis-server exited early (port %d): %s%s", r.port, out.String(), r.logTail())
		case <-deadline.C:
			_ = cmd.Process.Kill()
			<-done
			return fmt.Errorf("redis-server on port %d did not answer PING within %s: %s", r.port, redisStartTimeout, r.logTail())
		case <-tick.C:
		}
	}
}

func (r *Redis) logTail() string {
	b, err := os.ReadFile(filepath.Join(r.dir, "redis.log"))
	if err != nil {
		return ""
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// pingRedis sends one inline PING and expects +PONG.
func pingRedis(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return errors.New("unexpected PING reply " + strconv.Quote(line))
	}
	return nil
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
// Whoever binds it must cope with losing a race for it.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("harness: FreePort: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Sentinel is a redis-server in sentinel mode monitoring one master under
// the name "keytrail".
type Sentinel struct {
	Addr       string
	MasterName string
}

// StartSentinel runs a Sentinel (Debian's redis-server --sentinel) on a free
// port that monitors master, and waits until it reports the master's
// address. It is stopped when the test ends.
func StartSentinel(t testing.TB, master *Redis) *Sentinel {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("harness: redis-server not found (apt-get install -y redis-server): %v", err)
	}
	dir := t.TempDir()
	port := FreePort(t)
	host, mport, _ := net.SplitHostPort(master.Addr())
	conf := filepath.Join(dir, "sentinel.conf")
	body := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\nsentinel monitor keytrail %s %s 1\nsentinel down-after-milliseconds keytrail 1000\n", port, dir, host, mport)
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, conf, "--sentinel")
	cmd.Dir = dir
	cmd.SysProcAttr = devserver.DieWithParent()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("harness: start sentinel: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-done })
	s := &Sentinel{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), MasterName: "keytrail"}
	deadline := time.Now().Add(redisStartTimeout)
	for {
		if got, err := sentinelMaster(s.Addr); err == nil && got == master.Addr() {
			return s
		}
		select {
		case <-done:
			t.Fatalf("harness: sentinel exited: %s", out.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("harness: sentinel on %s did not report the master within %s: %s", s.Addr, redisStartTimeout, out.String())
		}
	}
}

// sentinelMaster asks a sentinel for the keytrail master's address.
func sentinelMaster(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("SENTINEL get-master-addr-by-name keytrail\r\n")); err != nil {
		return "", err
	}
	r := bufio.NewReader(c)
	var parts []string
	head, err := r.ReadString('\n')
	if err != nil || !strings.HasPrefix(head, "*2") {
		return "", fmt.Errorf("unexpected reply %q", head)
	}
	for range 2 {
		if _, err := r.ReadString('\n'); err != nil { // $len
			return "", err
		}
		v, err := r.ReadString('\n')
		if err != nil {
			return "", err
		}
		parts = append(parts, strings.TrimRight(v, "\r\n"))
	}
	return net.JoinHostPort(parts[0], parts[1]), nil
}
