package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/broker/client"
	"github.com/keytrail/keytrail/e2e/harness"
)

// workloadPolicy adds a workload for fetch/exec and a rate-limited one for
// the start-up storm.
const workloadPolicy = `version: 1
workloads:
  - name: fetch-worker
    owner: team-fetch
    match: {issuer: test, subject: "system:serviceaccount:apps:worker"}
    grants: [worker-vault, orders-jwt]
  - name: storm
    owner: team-storm
    match: {issuer: test, subject_pattern: "storm:[0-9]+"}
    grants: [storm-vault]
    rate: {per_second: 100, burst: 10}
grants:
  - name: worker-vault
    kind: vault_token
    ttl: 10m
    vault_token: {policies: [payments-read]}
  - name: storm-vault
    kind: vault_token
    ttl: 10m
    vault_token: {policies: [payments-read]}
`

// TestWorkloadsAgainstRealBroker drives keytrail fetch and exec (real
// processes) and the Go client against a real keytrail server and Vault.
func TestWorkloadsAgainstRealBroker(t *testing.T) {
	env := startStack(t, stackOptions{extraPolicy: workloadPolicy})
	dir := t.TempDir()
	idFile := filepath.Join(dir, "identity")
	writeIdentity := func(t *testing.T) {
		t.Helper()
		tok := env.issuer.token(t, "system:serviceaccount:apps:worker", map[string]any{"session": "pod-w"})
		if err := os.WriteFile(idFile, []byte(tok), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeIdentity(t)
	kt := func(args ...string) *exec.Cmd {
		cmd := exec.Command(harness.KeytrailBinary(t), args...)
		cmd.Env = append(os.Environ(), "KEYTRAIL_ADDR="+env.brokerURL)
		return cmd
	}

	t.Run("ok/fetch-two-grants-0600-usable", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "creds")
		cmd := kt("fetch", "--identity-token-file", idFile, "--grant", "worker-vault", "--grant", "orders-jwt", "--out-dir", out, "--format", "json")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("fetch: %v\n%s", err, stderr.String())
		}
		for _, g := range []string{"worker-vault", "orders-jwt"} {
			res := readCredentialFile(t, filepath.Join(out, g+".json"))
			if res.Grant != g || res.Workload != "fetch-worker" || !strings.HasPrefix(res.IssuanceID, "iss_") {
				t.Errorf("%s.json = %+v", g, res)
			}
			line := fmt.Sprintf("keytrail: %s: issuance %s, expires in ", g, res.IssuanceID)
			if !strings.Contains(stderr.String(), line) {
				t.Errorf("stderr lacks the status line %q:\n%s", line, stderr.String())
			}
			if g == "worker-vault" {
				vaultLookupSelf(t, env, res.AccessToken, res.IssuanceID)
			}
		}
		assertNoTempFiles(t, out)
	})

	t.Run("fail/permanent-errors-say-what-to-fix", func(t *testing.T) {
		stranger := filepath.Join(t.TempDir(), "stranger")
		os.WriteFile(stranger, []byte(env.issuer.token(t, "system:serviceaccount:other:x", nil)), 0o600)
		wrongAud := filepath.Join(t.TempDir(), "wrong-aud")
		os.WriteFile(wrongAud, []byte(env.issuer.tokenWith(t, map[string]any{"sub": "system:serviceaccount:apps:worker",
			"aud": "someone-else", "iat": time.Now().Unix(), "exp": time.Now().Add(time.Hour).Unix()})), 0o600)
		cases := []struct {
			name, token, grant, want string
		}{
			{"fail/401-audience", wrongAud, "worker-vault", "the identity token was rejected (keytrail broker: 401 invalid_grant"},
			{"fail/403-no-workload", stranger, "worker-vault", "403 access_denied"},
			{"fail/403-grant-not-allowed", idFile, "storm-vault", "403 access_denied"},
			{"fail/400-unknown-grant", idFile, "no-such-grant", "400 invalid_target"},
		}
		for _, c := range cases {
			outFile := filepath.Join(t.TempDir(), "cred")
			out, err := kt("fetch", "--identity-token-file", c.token, "--grant", c.grant, "--out", outFile).CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), c.want) {
				t.Errorf("%s: fetch = %v\n%s\nwant exit 1 and %q", c.name, err, out, c.want)
			}
			if _, err := os.Stat(outFile); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s: a credential file exists after a refusal", c.name)
			}
		}
	})

	t.Run("ok/exec-passes-credentials-and-exit-code", func(t *testing.T) {
		seen := filepath.Join(t.TempDir(), "seen")
		cmd := kt("exec", "--identity-token-file", idFile, "--grant", "worker-vault", "--env", "VAULT_TOKEN", "--env", "ISSUANCE=issuance_id",
			"--env", "ACCESSOR=accessor", "--", "sh", "-c", `printf '%s\n%s\n%s' "$VAULT_TOKEN" "$ISSUANCE" "$ACCESSOR" > "$1"; exit 7`, "sh", seen)
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 7 {
			t.Fatalf("exec = %v, want the child's exit status 7\n%s", err, out)
		}
		data, _ := os.ReadFile(seen)
		parts := strings.Split(string(data), "\n")
		if len(parts) != 3 || !strings.HasPrefix(parts[1], "iss_") || parts[2] == "" {
			t.Fatalf("child saw %q", data)
		}
		self := vaultLookupSelf(t, env, parts[0], parts[1])
		if self["accessor"] != parts[2] {
			t.Errorf("ACCESSOR = %q, Vault says %v", parts[2], self["accessor"])
		}
	})

	t.Run("ok/exec-forwards-signals", func(t *testing.T) {
		d := t.TempDir()
		log := filepath.Join(d, "log")
		p := startProc(t, kt("exec", "--identity-token-file", idFile, "--grant", "worker-vault", "--env", "T", "--",
			"sh", "-c", `trap 'echo hup >> "$1"' HUP; trap 'echo term >> "$1"; exit 3' TERM; echo started >> "$1"; while :; do sleep 0.05; done`, "sh", log))
		waitFor(t, 20*time.Second, "child started", func() bool { return fileHasLines(log, "started") })
		p.signal(t, syscall.SIGHUP)
		waitFor(t, 10*time.Second, "SIGHUP forwarded", func() bool { return fileHasLines(log, "started", "hup") })
		p.signal(t, syscall.SIGTERM)
		if code := p.wait(t, 10*time.Second); code != 3 {
			t.Errorf("exec exit status = %d, want the child's 3\n%s", code, p.stderr.String())
		}
		if !fileHasLines(log, "started", "hup", "term") {
			data, _ := os.ReadFile(log)
			t.Errorf("child log = %q, want started, hup, term", data)
		}
	})

	// The watch tests run side by side: each takes a few short TTLs.
	t.Run("watch", func(t *testing.T) {
		t.Run("ok/exec-watch-restarts-child-with-new-credential", func(t *testing.T) {
			t.Parallel()
			tokens := filepath.Join(t.TempDir(), "tokens")
			p := startProc(t, kt("exec", "--identity-token-file", idFile, "--grant", "worker-vault", "--env", "VAULT_TOKEN", "--env", "ISS=issuance_id",
				"--watch", "--ttl", "3s", "--", "sh", "-c", `echo "$ISS" >> "$1"; exec sleep 60`, "sh", tokens))
			waitFor(t, 20*time.Second, "two children with different issuances", func() bool { return distinctLines(tokens) >= 2 })
			// exec reports the restart once the new child has started, so
			// the child may have written its issuance a moment before.
			waitFor(t, 10*time.Second, "the restart line on stderr", func() bool {
				return strings.Contains(p.stderr.String(), "restarted sh with renewed credentials")
			})
			p.signal(t, syscall.SIGTERM)
			if code := p.wait(t, 10*time.Second); code != 128+int(syscall.SIGTERM) {
				t.Errorf("exec exit status = %d, want 143 (child killed by the forwarded SIGTERM)", code)
			}
		})
		t.Run("ok/exec-watch-signals-child", func(t *testing.T) {
			t.Parallel()
			d := t.TempDir()
			log, cred := filepath.Join(d, "log"), filepath.Join(d, "cred.json")
			p := startProc(t, kt("exec", "--identity-token-file", idFile, "--grant", "worker-vault", "--out", cred, "--format", "json",
				"--watch", "--ttl", "3s", "--on-renew", "signal:HUP", "--",
				"sh", "-c", `trap 'echo hup >> "$1"' HUP; trap 'exit 0' TERM; while :; do sleep 0.05; done`, "sh", log))
			first := readCredentialFile(t, cred).IssuanceID
			waitFor(t, 20*time.Second, "SIGHUP after renewal", func() bool { return fileHasLines(log, "hup") })
			if now := readCredentialFile(t, cred).IssuanceID; now == first {
				t.Errorf("child was signalled but %s still holds %s", cred, first)
			}
			p.signal(t, syscall.SIGTERM)
			if code := p.wait(t, 10*time.Second); code != 0 {
				t.Errorf("exec exit status = %d, want 0\n%s", code, p.stderr.String())
			}
		})
		t.Run("ok/fetch-watch-renews-atomically-and-survives-restart", func(t *testing.T) {
			t.Parallel()
			d := t.TempDir()
			cred := filepath.Join(d, "cred.json")
			w := watchFile(t, cred)
			p := startProc(t, kt("fetch", "--identity-token-file", idFile, "--grant", "worker-vault", "--out", cred, "--format", "json", "--watch", "--ttl", "3s"))
			waitFor(t, 20*time.Second, "two renewals", func() bool { return w.count() >= 3 })
			// Each renewal landed before the credential it replaced expired.
			seen := w.snapshot()
			for i := 1; i < len(seen); i++ {
				if gap := seen[i].at.Sub(seen[i-1].at); gap >= 3*time.Second-200*time.Millisecond {
					t.Errorf("issuance %s replaced after %v, not before the 3s TTL ran out", seen[i-1].id, gap)
				}
			}
			// Stop the broker mid-watch until a renewal has failed (the file
			// keeps the last credential), then start it again: renewal
			// resumes without the process restarting.
			before := w.count()
			if err := env.broker.Stop(); err != nil {
				t.Fatalf("stopping the broker: %v", err)
			}
			waitFor(t, 20*time.Second, "a failed renewal while the broker is down", func() bool {
				// Refused ("cannot reach"), or cut before the answer.
				return strings.Contains(p.stderr.String(), "keytrail: worker-vault: cannot reach the broker at ") ||
					strings.Contains(p.stderr.String(), "keytrail: worker-vault: the connection to the broker at ")
			})
			env.broker.Restart()
			restarted := time.Now()
			waitFor(t, 20*time.Second, "a renewal after the restart", func() bool {
				s := w.snapshot()
				return len(s) > before && s[len(s)-1].at.After(restarted)
			})
			select {
			case <-p.done:
				t.Fatalf("fetch --watch exited across the restart: %s", p.stderr.String())
			default:
			}
			p.signal(t, syscall.SIGTERM)
			if code := p.wait(t, 10*time.Second); code != 0 {
				t.Errorf("fetch --watch after SIGTERM: exit %d, want 0\n%s", code, p.stderr.String())
			}
			reads, bad := w.stop()
			if bad != "" {
				t.Errorf("a reader saw an incomplete or wrong credential file: %s", bad)
			}
			if reads < 100 {
				t.Errorf("the watcher read the file only %d times", reads)
			}
			// One status line per credential (the watcher may have stopped
			// just before the last file landed).
			if n := strings.Count(p.stderr.String(), "keytrail: worker-vault: issuance "); n != w.count() && n != w.count()+1 {
				t.Errorf("%d status lines for %d credentials:\n%s", n, w.count(), p.stderr.String())
			}
			assertNoTempFiles(t, d)
			t.Logf("fetch --watch: %d credentials, file read %d times, all complete", w.count(), reads)
		})
	})

	t.Run("ok/500-workloads-at-once-under-rate-limit", func(t *testing.T) {
		stormAgainst(t, env, 500)
	})
}

// stormAgainst starts n Go-client workloads at once against one broker
// whose rate limit is far below n per second, and checks every one ends up
// with a credential, the wire carried nothing but 200, 429 and 503, and no
// client retried before the Retry-After it was given.
func stormAgainst(t *testing.T, env *stack, n int) {
	tr := &http.Transport{MaxIdleConns: n, MaxIdleConnsPerHost: n, IdleConnTimeout: 30 * time.Second}
	defer tr.CloseIdleConnections()
	recs := make([]*wireRecorder, n)
	toks := make([]string, n)
	for i := range n {
		recs[i] = &wireRecorder{next: tr}
		toks[i] = env.issuer.token(t, "storm:"+strconv.Itoa(i), map[string]any{"session": "storm-" + strconv.Itoa(i)})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	start := make(chan struct{})
	creds := make([]*client.Credential, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		c, err := client.New(client.Options{Addr: env.brokerURL, HTTPClient: &http.Client{Transport: recs[i], Timeout: 20 * time.Second}})
		if err != nil {
			t.Fatal(err)
		}
		src, err := client.NewSource(client.SourceOptions{Client: c, Grant: "storm-vault",
			Exchange: client.ExchangeOptions{Identity: client.IdentityFunc{Name: "static", Func: func(context.Context) (string, error) { return toks[i], nil }}}})
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			<-start
			creds[i], errs[i] = src.Fetch(ctx)
		})
	}
	began := time.Now()
	close(start)
	wg.Wait()
	took := time.Since(began)

	statuses := map[int]int{}
	issuances := map[string]bool{}
	var early []string
	for i := range n {
		if errs[i] != nil {
			t.Errorf("workload %d: %v", i, errs[i])
			continue
		}
		issuances[creds[i].IssuanceID] = true
		ev := recs[i].events()
		for j, e := range ev {
			statuses[e.status]++
			if e.status == 429 || e.status == 503 {
				if e.retryAfter <= 0 {
					t.Errorf("workload %d: %d without Retry-After", i, e.status)
				}
				if j+1 < len(ev) && ev[j+1].sent.Before(e.answered.Add(e.retryAfter)) {
					early = append(early, fmt.Sprintf("workload %d retried %v after a %d with Retry-After %v", i, ev[j+1].sent.Sub(e.answered), e.status, e.retryAfter))
				}
			}
		}
	}
	for s, c := range statuses {
		if s != 200 && s != 429 && s != 503 {
			t.Errorf("%d responses with status %d on the wire", c, s)
		}
	}
	if statuses[200] != n || len(issuances) != n {
		t.Errorf("%d 200s and %d distinct issuances, want %d each", statuses[200], len(issuances), n)
	}
	if statuses[429] == 0 {
		t.Errorf("no 429 at all: the rate limit was not exercised")
	}
	if len(early) > 0 {
		t.Errorf("%d retries before Retry-After, e.g. %s", len(early), early[0])
	}
	var transport int
	for _, r := range recs {
		transport += int(r.transportErrors.Load())
	}
	if transport > 0 {
		t.Errorf("%d transport errors", transport)
	}
	t.Logf("%d workloads: all credentialed in %v; wire: %v", n, took.Round(10*time.Millisecond), statuses)
}

// wireRecorder is a RoundTripper that records every exchange's status,
// Retry-After and times.
type wireRecorder struct {
	next            http.RoundTripper
	mu              sync.Mutex
	ev              []wireEvent
	transportErrors atomic.Int64
}

type wireEvent struct {
	sent, answered time.Time
	status         int
	retryAfter     time.Duration
}

func (w *wireRecorder) RoundTrip(r *http.Request) (*http.Response, error) {
	sent := time.Now()
	resp, err := w.next.RoundTrip(r)
	if err != nil {
		w.transportErrors.Add(1)
		return nil, err
	}
	ra, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
	w.mu.Lock()
	w.ev = append(w.ev, wireEvent{sent: sent, answered: time.Now(), status: resp.StatusCode, retryAfter: time.Duration(ra) * time.Second})
	w.mu.Unlock()
	return resp, nil
}

func (w *wireRecorder) events() []wireEvent {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]wireEvent(nil), w.ev...)
}

// proc is a keytrail process started by a test.
type proc struct {
	cmd    *exec.Cmd
	stderr *brokertest.SyncBuffer
	done   chan struct{}
}

func startProc(t *testing.T, cmd *exec.Cmd) *proc {
	t.Helper()
	p := &proc{cmd: cmd, stderr: &brokertest.SyncBuffer{}, done: make(chan struct{})}
	cmd.Stdout = p.stderr
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

func (p *proc) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %v: %v", sig, err)
	}
}

// wait returns the exit status, failing the test after timeout.
func (p *proc) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(timeout):
		t.Fatalf("process did not exit within %v\n%s", timeout, p.stderr.String())
		return -1
	}
}

// fileWatcher reads a credential file over and over while it is being
// replaced, and records every issuance it saw and when it first saw it.
type fileWatcher struct {
	path  string
	stopc chan struct{}
	done  chan struct{}
	mu    sync.Mutex
	seen  []seenIssuance
	reads int
	bad   string
}

type seenIssuance struct {
	id string
	at time.Time
}

func watchFile(t *testing.T, path string) *fileWatcher {
	w := &fileWatcher{path: path, stopc: make(chan struct{}), done: make(chan struct{})}
	go w.loop()
	t.Cleanup(func() { w.stop() })
	return w
}

func (w *fileWatcher) loop() {
	defer close(w.done)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-w.stopc:
			return
		case <-tick.C:
		}
		data, err := os.ReadFile(w.path)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		fi, serr := os.Stat(w.path)
		w.mu.Lock()
		w.reads++
		var res tokenResponse
		switch {
		case err != nil || serr != nil:
			w.bad = fmt.Sprintf("read: %v %v", err, serr)
		case fi.Mode().Perm() != 0o600:
			w.bad = fmt.Sprintf("mode %v", fi.Mode().Perm())
		case json.Unmarshal(data, &res) != nil || res.AccessToken == "" || !strings.HasPrefix(res.IssuanceID, "iss_"):
			w.bad = fmt.Sprintf("incomplete content (%d bytes)", len(data))
		case len(w.seen) == 0 || w.seen[len(w.seen)-1].id != res.IssuanceID:
			w.seen = append(w.seen, seenIssuance{res.IssuanceID, time.Now()})
		}
		w.mu.Unlock()
	}
}

func (w *fileWatcher) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.seen)
}

func (w *fileWatcher) snapshot() []seenIssuance {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]seenIssuance(nil), w.seen...)
}

// stop ends the loop (idempotent) and returns the reads and any bad read.
func (w *fileWatcher) stop() (int, string) {
	select {
	case <-w.stopc:
	default:
		close(w.stopc)
	}
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.reads, w.bad
}

func readCredentialFile(t *testing.T, path string) tokenResponse {
	t.Helper()
	var res tokenResponse
	waitFor(t, 20*time.Second, path, func() bool {
		_, err := os.Stat(path)
		return err == nil
	})
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %v, want 0600", path, fi.Mode().Perm())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	mustJSON(t, data, &res)
	return res
}

func vaultLookupSelf(t *testing.T, env *stack, token, issuanceID string) map[string]any {
	t.Helper()
	_, self := env.vaultAs(t, token, "the fetched token")
	if meta, _ := self.Data["meta"].(map[string]any); meta["issuance_id"] != issuanceID {
		t.Errorf("token meta = %v, want issuance_id %s", self.Data["meta"], issuanceID)
	}
	return self.Data
}

func assertNoTempFiles(t *testing.T, dir string) {
	t.Helper()
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("temporary file %s left behind", e.Name())
		}
	}
}

func fileHasLines(path string, want ...string) bool {
	data, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	lines := strings.Fields(string(data))
	i := 0
	for _, l := range lines {
		if i < len(want) && l == want[i] {
			i++
		}
	}
	return i == len(want)
}

func distinctLines(path string) int {
	data, _ := os.ReadFile(path)
	m := map[string]bool{}
	for _, l := range strings.Fields(string(data)) {
		m[l] = true
	}
	return len(m)
}
