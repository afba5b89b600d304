package harness

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keytrail/keytrail/adapters/vault/devserver"
)

// pgStartTimeout bounds initdb plus start-up until the first query answers.
const pgStartTimeout = 60 * time.Second

// pgStopTimeout is how long Stop waits for a fast shutdown before SIGKILL.
const pgStopTimeout = 15 * time.Second

// Postgres is a PostgreSQL server owned by one test: a fresh cluster in a
// temporary directory, listening on 127.0.0.1 on a free port, every
// connection authenticated by password (scram-sha-256), and every
// connection logged (log_connections=on) to LogPath.
type Postgres struct {
	Port int
	// Superuser is a login role with SUPERUSER for Vault's database engine
	// connection; SuperPassword is its password.
	Superuser     string
	SuperPassword string
	// LogPath is the server's log (its stderr).
	LogPath string

	bin     string // directory of postgres, initdb, psql
	psql    string
	dir     string
	data    string
	cred    *syscall.Credential // run the server as this user (when we are root)
	bootPwd string              // the bootstrap superuser "postgres"

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// StartPostgres initialises a cluster, starts it and creates Superuser. The
// server is stopped and its directory removed when the test ends. PostgreSQL
// refuses to run as root: when the test runs as root, the server runs as the
// system user "postgres" (Debian's package creates it). A missing PostgreSQL
// or a server that does not come up fails the test, never skips it.
func StartPostgres(t testing.TB) *Postgres {
	t.Helper()
	bin, err := postgresBinDir()
	if err != nil {
		t.Fatalf("harness: %v; install PostgreSQL, e.g. `apt-get install postgresql` on Debian/Ubuntu", err)
	}
	psql, err := exec.LookPath("psql")
	if err != nil {
		psql = filepath.Join(bin, "psql")
		if _, serr := os.Stat(psql); serr != nil {
			t.Fatalf("harness: psql not found (%v); install it, e.g. `apt-get install postgresql-client`", err)
		}
	}
	p := &Postgres{bin: bin, psql: psql, Superuser: "vault", SuperPassword: randomHex(t, 16), bootPwd: randomHex(t, 16)}

	// t.TempDir's parent is private to the test's user; the server may run
	// as another user, so its directory lives directly under the temp dir.
	p.dir, err = os.MkdirTemp("", "keytrail-pg-")
	if err != nil {
		t.Fatalf("harness: postgres dir: %v", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(p.dir) })
	p.data = filepath.Join(p.dir, "data")
	p.LogPath = filepath.Join(p.dir, "postgres.log")
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("harness: running as root and there is no user \"postgres\" to run PostgreSQL as (%v); install Debian's `postgresql` package, which creates it", err)
		}
		uid, _ := strconv.ParseUint(u.Uid, 10, 32)
		gid, _ := strconv.ParseUint(u.Gid, 10, 32)
		p.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(p.dir, int(uid), int(gid)); err != nil {
			t.Fatalf("harness: chown postgres dir: %v", err)
		}
	}
	t.Cleanup(p.Stop)

	ctx, cancel := context.WithTimeout(context.Background(), pgStartTimeout)
	defer cancel()
	if err := p.initdb(ctx); err != nil {
		t.Fatalf("harness: initdb: %v", err)
	}
	var lastErr error
	for range 5 {
		p.Port = FreePort(t)
		if lastErr = p.start(ctx); lastErr == nil {
			break
		}
	}
	if lastErr != nil {
		t.Fatalf("harness: postgres did not start: %v", lastErr)
	}
	// Quote the password as a SQL literal; it is hex, so no escaping is needed.
	if _, err := p.Query("postgres", p.bootPwd, fmt.Sprintf("CREATE ROLE %s WITH LOGIN SUPERUSER PASSWORD '%s'", p.Superuser, p.SuperPassword)); err != nil {
		t.Fatalf("harness: create role %s: %v", p.Superuser, err)
	}
	return p
}

// postgresBinDir finds the directory holding postgres and initdb: the PATH
// first, then Debian's /usr/lib/postgresql/<version>/bin, newest version
// first.
func postgresBinDir() (string, error) {
	if p, err := exec.LookPath("postgres"); err == nil {
		if _, err := os.Stat(filepath.Join(filepath.Dir(p), "initdb")); err == nil {
			return filepath.Dir(p), nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool {
		vi, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[i])))
		vj, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[j])))
		return vi > vj
	})
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "postgres")); err == nil {
			return d, nil
		}
	}
	return "", errors.New("postgres and initdb not found in PATH or /usr/lib/postgresql/*/bin")
}

func randomHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// serverCmd builds a command that runs as the server's user.
func (p *Postgres) serverCmd(ctx context.Context, name string, args ...string) *exec.Cmd {
	var cmd *exec.Cmd
	if ctx != nil {
		cmd = exec.CommandContext(ctx, filepath.Join(p.bin, name), args...)
	} else {
		cmd = exec.Command(filepath.Join(p.bin, name), args...)
	}
	cmd.Dir = p.dir
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + p.dir, "LC_ALL=C", "LANG=C", "TZ=UTC"}
	cmd.SysProcAttr = devserver.DieWithParent()
	cmd.SysProcAttr.Credential = p.cred // nil: as ourselves
	return cmd
}

func (p *Postgres) initdb(ctx context.Context) error {
	pwfile := filepath.Join(p.dir, "pwfile")
	if err := os.WriteFile(pwfile, []byte(p.bootPwd+"\n"), 0o600); err != nil {
		return err
	}
	if p.cred != nil {
		if err := os.Chown(pwfile, int(p.cred.Uid), int(p.cred.Gid)); err != nil {
			return err
		}
	}
	defer os.Remove(pwfile)
	cmd := p.serverCmd(ctx, "initdb", "-D", p.data, "-U", "postgres", "--pwfile="+pwfile,
		"--auth=scram-sha-256", "--encoding=UTF8", "--no-locale", "--no-sync")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%w: %s", err, out)
	}
	return nil
}

// start launches the server on p.Port and waits until a query answers, the
// process exits, or ctx ends.
func (p *Postgres) start(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	logf, err := os.OpenFile(p.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close() // the child keeps its own descriptor
	cmd := p.serverCmd(nil, "postgres", "-D", p.data, "-p", strconv.Itoa(p.Port), "-k", p.dir,
		"-c", "listen_addresses=127.0.0.1",
		"-c", "log_connections=on",
		"-c", "log_destination=stderr",
		"-c", "logging_collector=off",
		"-c", "fsync=off",
		"-c", "max_connections=50")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()

	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if _, err := p.Query("postgres", p.bootPwd, "SELECT 1"); err == nil {
			p.cmd, p.done = cmd, done
			return nil
		}
		select {
		case <-done:
			return fmt.Errorf("postgres exited early (port %d): %s", p.Port, p.LogTail(2000))
		case <-ctx.Done():
			_ = cmd.Process.Kill()
			<-done
			return fmt.Errorf("postgres on port %d did not answer within %s: %s", p.Port, pgStartTimeout, p.LogTail(2000))
		case <-tick.C:
		}
	}
}

// Stop shuts the server down (fast shutdown: SIGINT ends open sessions) and
// waits for it to exit, killing it after pgStopTimeout. A no-op when it is
// not running.
func (p *Postgres) Stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-p.done:
	case <-time.After(pgStopTimeout):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	p.cmd, p.done = nil, nil
}

// Addr is the server's host:port.
func (p *Postgres) Addr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(p.Port))
}

// ConnectionURL is a postgresql:// URL template for Vault's database engine
// (`{{username}}` and `{{password}}` are filled in by Vault).
func (p *Postgres) ConnectionURL() string {
	return "postgresql://{{username}}:{{password}}@" + p.Addr() + "/postgres?sslmode=disable"
}

// Query connects over TCP as user with password (psql, no .psqlrc, no
// password prompt) and runs sql; it returns psql's unaligned, tuples-only
// output, trimmed. A refused connection or a failed statement is an error
// carrying psql's message (which never contains the password).
func (p *Postgres) Query(username, password, sql string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	conn := fmt.Sprintf("host=127.0.0.1 port=%d dbname=postgres user=%s sslmode=disable connect_timeout=5 application_name=keytrail-e2e", p.Port, quoteConnValue(username))
	cmd := exec.CommandContext(ctx, p.psql, "-X", "-w", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", conn, "-c", sql)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + p.dir, "LC_ALL=C", "PGPASSWORD=" + password, "PGCONNECT_TIMEOUT=5"}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("psql as %s: %w: %s", username, err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), nil
}

// quoteConnValue quotes a libpq connection-string value.
func quoteConnValue(s string) string {
	return "'" + strings.ReplaceAll(strings.ReplaceAll(s, `\`, `\\`), `'`, `\'`) + "'"
}

// Log returns the server's log so far.
func (p *Postgres) Log() string {
	b, err := os.ReadFile(p.LogPath)
	if err != nil {
		return ""
	}
	return string(b)
}

// LogTail returns the last n bytes of the server's log.
func (p *Postgres) LogTail(n int) string {
	s := p.Log()
	if len(s) > n {
		s = s[len(s)-n:]
	}
	return s
}
