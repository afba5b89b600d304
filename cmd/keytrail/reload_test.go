package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/keytrail/keytrail/adapters/auditfile"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/e2e/harness"
)

// reloadRuntime is a brokerRuntime with what reloadPolicy uses (metrics,
// an audit sink in dir, a logger writing to logs) and the policy at polFile
// in force; it needs no Vault (the policy names no transit key).
func reloadRuntime(t *testing.T, dir, polFile string, logs *brokertest.SyncBuffer) (*brokerRuntime, *auditfile.Sink) {
	t.Helper()
	m, err := newOpsMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	sink, err := auditfile.Open(auditfile.Options{Path: filepath.Join(dir, "audit.jsonl")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sink.Close() })
	rt := &brokerRuntime{cfg: &Config{Policy: polFile}, log: slog.New(slog.NewTextHandler(logs, nil)), metrics: m, sink: sink}
	pol, err := loadServedPolicy(polFile, rt.log)
	if err != nil {
		t.Fatal(err)
	}
	v, err := rt.newVerifier(context.Background(), pol)
	if err != nil {
		t.Fatal(err)
	}
	if err := rt.initPolicy(pol, v); err != nil {
		t.Fatal(err)
	}
	return rt, sink
}

// TestPolicyReloadWaitsForItsDurableEvent: a reloaded policy used to take
// effect before its policy_load event was written, and stayed in force when
// that write failed: credentials were then handed out under a policy the
// audit log never recorded. Now the event is made durable first; when the
// audit log cannot take it the policy in force stays (fail closed), the
// failure is logged and counted as a failed reload.
func TestPolicyReloadWaitsForItsDurableEvent(t *testing.T) {
	dir := t.TempDir()
	polFile := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(polFile, []byte(serverTestPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs brokertest.SyncBuffer
	rt, sink := reloadRuntime(t, dir, polFile, &logs)
	before := rt.state.Load().pol.Hash()

	if err := sink.Close(); err != nil { // every audit write fails from now on
		t.Fatal(err)
	}
	const extra = "  - name: late\n    owner: team-late\n    match: {issuer: test, subject: late}\n    grants: [payments-vault]\n"
	changed := strings.Replace(serverTestPolicy, "grants:\n  - name: payments-vault", strings.TrimSuffix(extra, "\n")+"\ngrants:\n  - name: payments-vault", 1)
	if err := os.WriteFile(polFile, []byte(changed), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := loadServedPolicy(polFile, rt.log); err != nil {
		t.Fatalf("the changed policy must be valid: %v", err)
	}
	rt.reloadPolicy(context.Background(), "sighup")

	if got := rt.state.Load().pol.Hash(); got != before {
		t.Errorf("policy in force after a reload whose policy_load event could not be written = %s, want the old %s", got, before)
	}
	if n := readCounter(t, rt.metrics.policyReloads.WithLabelValues("error")); n != 1 {
		t.Errorf("keytrail_policy_reloads_total{outcome=\"error\"} = %v, want 1", n)
	}
	if n := readCounter(t, rt.metrics.policyReloads.WithLabelValues("ok")); n != 0 {
		t.Errorf("keytrail_policy_reloads_total{outcome=\"ok\"} = %v, want 0", n)
	}
	if !strings.Contains(logs.String(), "keeping the policy in force") {
		t.Errorf("log does not say the reload was not applied:\n%s", logs.String())
	}
}

func readCounter(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// writeAtomically replaces path with data (rename), so a watcher never
// reads half of it.
func writeAtomically(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path+".tmp", []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

// waitReload polls cond until it holds or 20 s pass.
func waitReload(t *testing.T, what string, cond func() bool, logs *brokertest.SyncBuffer) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 20s\n%s", what, logs.String())
		}
		<-time.After(5 * time.Millisecond)
	}
}

// startWatch runs rt.watchPolicy with interval until the test ends.
func startWatch(t *testing.T, rt *brokerRuntime, interval time.Duration) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	last := policyStamp(rt.cfg.Policy) // the files of the policy in force, before the test changes them
	go func() { defer close(done); _ = rt.watchPolicy(ctx, interval, last) }()
	t.Cleanup(func() { cancel(); <-done })
}

// caFilePolicy is serverTestPolicy with the issuer's ca_file set to ca.
func caFilePolicy(ca string) string {
	return strings.Replace(serverTestPolicy, "    algorithms: [ES256]\n", "    algorithms: [ES256]\n    ca_file: "+ca+"\n", 1)
}

// TestFailedFileReloadIsRetried: a policy change whose reload fails for a
// passing reason (here the issuer's ca_file, a Secret the kubelet has not
// mounted yet) used to be retried only when the YAML changed again: the
// broker kept the old policy although the new one was loadable a moment
// later. The watcher now retries a failed reload with a backoff while the
// files are unchanged.
func TestFailedFileReloadIsRetried(t *testing.T) {
	dir := t.TempDir()
	polFile := filepath.Join(dir, "policy.yaml")
	writeAtomically(t, polFile, serverTestPolicy)
	var logs brokertest.SyncBuffer
	rt, _ := reloadRuntime(t, dir, polFile, &logs)
	startWatch(t, rt, 10*time.Millisecond)

	caDir := filepath.Join(dir, "ca")
	if err := os.Mkdir(caDir, 0o700); err != nil {
		t.Fatal(err)
	}
	writeAtomically(t, polFile, caFilePolicy(filepath.Join(caDir, "cert.pem")))
	waitReload(t, "the reload of the policy naming a missing ca_file fails", func() bool {
		return readCounter(t, rt.metrics.policyReloads.WithLabelValues("error")) >= 1
	}, &logs)

	writeCert(t, caDir, "issuer.example") // the Secret is mounted; the YAML does not change
	want, err := loadServedPolicy(polFile, rt.log)
	if err != nil {
		t.Fatal(err)
	}
	waitReload(t, "the failed reload is retried and takes the new policy", func() bool {
		return rt.state.Load().pol.Hash() == want.Hash()
	}, &logs)
}

// TestFailedFileReloadRetriesAreBounded: a policy that stays broken is
// retried policyReloadRetries times, then the watcher says it gives up
// (and a change of the files starts over).
func TestFailedFileReloadRetriesAreBounded(t *testing.T) {
	dir := t.TempDir()
	polFile := filepath.Join(dir, "policy.yaml")
	writeAtomically(t, polFile, serverTestPolicy)
	var logs brokertest.SyncBuffer
	rt, _ := reloadRuntime(t, dir, polFile, &logs)
	before := rt.state.Load().pol.Hash()
	startWatch(t, rt, time.Millisecond)

	writeAtomically(t, polFile, caFilePolicy(filepath.Join(dir, "never.pem")))
	waitReload(t, "the watcher gives up", func() bool { return strings.Contains(logs.String(), "no more retries") }, &logs)
	if n := readCounter(t, rt.metrics.policyReloads.WithLabelValues("error")); n != 1+policyReloadRetries {
		t.Errorf("failed reloads = %v, want the first attempt and %d retries", n, policyReloadRetries)
	}
	if got := rt.state.Load().pol.Hash(); got != before {
		t.Errorf("policy in force = %s, want the old %s", got, before)
	}
	// A change of the files is tried again.
	writeAtomically(t, polFile, serverTestPolicy+"\n")
	waitReload(t, "the changed files are loaded", func() bool {
		return readCounter(t, rt.metrics.policyReloads.WithLabelValues("ok")) == 1
	}, &logs)
}

// TestSIGTERMDuringHungReloadShutsDown: a SIGHUP reload ran on runServer's
// main loop and waits for its policy_load event to be durable. With the
// audit disk hung, the loop no longer saw SIGTERM (and the watcher of a
// second signal was not installed yet): the broker could not be stopped
// gracefully. Now the reload runs beside the loop: SIGTERM starts the
// shutdown at once, and the reload, once its event is durable, still
// completes (its policy applied) before the audit log closes. Real Vault;
// the hung disk is an audit write that does not return (its event is in
// the file, its writer not yet told).
func TestSIGTERMDuringHungReloadShutsDown(t *testing.T) {
	vp := harness.StartVault(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	pol := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(pol, []byte(serverTestPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	auditPath := filepath.Join(dir, "audit.jsonl")
	var hold atomic.Bool
	held, release := make(chan struct{}), make(chan struct{})
	var releaseOnce sync.Once
	open := func() { releaseOnce.Do(func() { close(release) }) }
	var logs brokertest.SyncBuffer
	e := &env{ctx: ctx, stdout: io.Discard, stderr: &logs, getenv: func(k string) string {
		return map[string]string{"VAULT_TOKEN": vp.RootToken, envReconcile: "off"}[k]
	}, auditWritten: func() {
		// Hold the batch holding the SIGHUP reload's policy_load event.
		if b, _ := os.ReadFile(auditPath); hold.Load() && bytes.Contains(b, []byte(`"trigger":"sighup"`)) {
			hold.Store(false)
			close(held)
			<-release
		}
	}}
	cfg := &Config{Listen: "127.0.0.1:0", PublicURL: "http://127.0.0.1:7700", Policy: pol,
		Vault: VaultConfig{Address: vp.Addr}, Audit: AuditConfig{File: auditPath}, Log: LogConfig{Level: "info", Format: "text"}}
	cfg.applyDefaults()
	if err := cfg.validate("test config"); err != nil {
		t.Fatal(err)
	}
	readyc, done := make(chan string, 1), make(chan struct{})
	var runErr error
	go func() { defer close(done); runErr = runServer(ctx, e, cfg, func(a string) { readyc <- a }) }()
	t.Cleanup(func() { // whatever failed: let the server end before the next test
		open()
		cancel()
		select {
		case <-done:
		case <-time.After(60 * time.Second):
		}
	})
	select {
	case <-readyc:
	case <-done:
		t.Fatalf("server: %v", runErr)
	case <-time.After(60 * time.Second):
		t.Fatal("server did not start")
	}

	hold.Store(true)
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	select {
	case <-held: // the reload waits for its policy_load event, which the disk holds
	case <-done:
		t.Fatalf("server ended: %v\n%s", runErr, logs.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("the SIGHUP reload never wrote its policy_load event\n%s", logs.String())
	}
	cancel() // SIGTERM
	waitReload(t, "shutdown starts while a SIGHUP reload waits for the audit log", func() bool {
		return strings.Contains(logs.String(), "shutting down")
	}, &logs)
	if strings.Contains(logs.String(), "policy reloaded") {
		t.Fatalf("the reload was applied before its policy_load event was acknowledged\n%s", logs.String())
	}

	open() // the disk answers
	select {
	case <-done:
		if runErr != nil {
			t.Fatalf("runServer() = %v, want a clean shutdown", runErr)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("runServer did not return once the audit write completed\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), "policy reloaded") || !strings.Contains(logs.String(), "why=sighup") {
		t.Errorf("the SIGHUP reload, its event durable, did not complete before the server ended\n%s", logs.String())
	}
}

// swapOnWarning is a log handler that, at the first "policy warning" it is
// given once armed, runs swap: loadServedPolicy logs the policy's warnings
// after CheckFiles read the ca_files and before the verifier is built, so
// swap changes a file between the two.
type swapOnWarning struct {
	slog.Handler
	armed *atomic.Bool
	swap  func()
}

func (h swapOnWarning) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "policy warning" && h.armed.CompareAndSwap(true, false) {
		h.swap()
	}
	return h.Handler.Handle(ctx, r)
}

// TestReloadUsesTheCAFileItChecked: a reload read an issuer's ca_file
// twice, once in CheckFiles and again in authn.New. Changed in between, the
// reload checked one bundle and trusted another: here replaced by one that
// holds no certificate, the reload CheckFiles accepted failed in authn.New
// ("holds no PEM certificate"). The verifier now trusts the bytes
// CheckFiles read (Policy.CAFile): the reload succeeds.
func TestReloadUsesTheCAFileItChecked(t *testing.T) {
	dir := t.TempDir()
	polFile := filepath.Join(dir, "policy.yaml")
	writeAtomically(t, polFile, serverTestPolicy)
	var logs brokertest.SyncBuffer
	rt, _ := reloadRuntime(t, dir, polFile, &logs)

	caDir := filepath.Join(dir, "ca")
	if err := os.Mkdir(caDir, 0o700); err != nil {
		t.Fatal(err)
	}
	ca, _, _ := writeCert(t, caDir, "issuer.example") // valid for an hour: CheckFiles warns of it
	var armed atomic.Bool
	armed.Store(true)
	rt.log = slog.New(swapOnWarning{Handler: rt.log.Handler(), armed: &armed, swap: func() {
		writeAtomically(t, ca, "not a certificate\n")
	}})
	writeAtomically(t, polFile, caFilePolicy(ca))
	if err := rt.reloadPolicy(context.Background(), "sighup"); err != nil {
		t.Fatalf("reloadPolicy = %v, want nil: the bundle CheckFiles accepted is the one used\n%s", err, logs.String())
	}
	if armed.Load() {
		t.Fatal("the ca_file was not swapped: no policy warning was logged between CheckFiles and authn.New")
	}
	if got, want := rt.state.Load().pol.Sources()[0].SHA256, sha256Hex(caFilePolicy(ca)); got != want {
		t.Errorf("policy in force has file sha256 %s, want the reloaded %s", got, want)
	}
}

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}
