package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keytrail/keytrail/adapters/auditfile"
	vaultad "github.com/keytrail/keytrail/adapters/vault"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/policies"
)

// opsMetrics are the operational metrics wired here (the HTTP layer, the
// proxy and the revocation worker register their own).
type opsMetrics struct {
	policyReloads *prometheus.CounterVec
	policyInfo    *prometheus.GaugeVec
	auditSeconds  prometheus.Histogram
	auditSync     prometheus.Histogram
	auditFailures prometheus.Counter
	jwksFetches   *prometheus.CounterVec
	backendErrors *prometheus.CounterVec
	clockSkew     prometheus.Gauge
}

// auditBuckets are the audit histograms' buckets, from 50 µs (an fsync on
// fast local storage) to 5 s (a stalled disk; a checkpoint's signature may
// take up to 5 s).
var auditBuckets = []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}

func newOpsMetrics(reg prometheus.Registerer) (*opsMetrics, error) {
	m := &opsMetrics{
		policyReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keytrail_policy_reloads_total", Help: "Policy reload attempts by outcome (ok, error).",
		}, []string{"outcome"}),
		policyInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "keytrail_policy_info", Help: "The policy in force: 1 for its hash.",
		}, []string{"hash"}),
		auditSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "keytrail_audit_write_duration_seconds", Help: "Time until an audit event is durable (group commit included).",
			Buckets: auditBuckets,
		}),
		auditSync: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "keytrail_audit_sync_duration_seconds", Help: "Time to make one audit batch durable: journal write and append, or write and fsync (the disk's part of keytrail_audit_write_duration_seconds).",
			Buckets: auditBuckets,
		}),
		auditFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "keytrail_audit_write_failures_total", Help: "Audit events that could not be made durable.",
		}),
		jwksFetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keytrail_jwks_fetches_total", Help: "JWKS fetches by policy issuer and outcome (ok, error).",
		}, []string{"issuer", "outcome"}),
		backendErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keytrail_backend_errors_total", Help: "Errors from Vault and the store by backend and reason.",
		}, []string{"backend", "reason"}),
		clockSkew: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "keytrail_clock_skew_seconds", Help: "Vault's clock (Date header) minus the broker's, last measured.",
		}),
	}
	for _, c := range []prometheus.Collector{m.policyReloads, m.policyInfo, m.auditSeconds, m.auditSync, m.auditFailures, m.jwksFetches, m.backendErrors, m.clockSkew} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// registerSink exposes the audit sink's counters.
func (m *opsMetrics) registerSink(reg prometheus.Registerer, sink *auditfile.Sink) error {
	cs := []prometheus.Collector{
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "keytrail_audit_events_total", Help: "Audit events made durable."},
			func() float64 { return float64(sink.Stats().Events) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "keytrail_audit_writes_total", Help: "Audit batches written (each made durable by one journal write, or one fsync with audit.journal off, unless audit.fsync is off); events over writes is the group commit's batch size."},
			func() float64 { return float64(sink.Stats().Batches) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "keytrail_audit_checkpoints_total", Help: "Signed checkpoints written."},
			func() float64 { return float64(sink.Stats().Checkpoints) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "keytrail_audit_last_seq", Help: "Seq of the last durable line of the audit chain: keep its high-water mark outside the broker and check the files against it (keytrail audit verify --expect-seq)."},
			func() float64 { return float64(sink.Stats().Seq) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "keytrail_audit_last_checkpoint_seq", Help: "Seq of the last durable signed checkpoint line of the audit chain (0: none known yet)."},
			func() float64 { return float64(sink.Stats().CheckpointSeq) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "keytrail_audit_start_too_long_lines", Help: "Lines longer than any a broker writes that start-up read past while reading the audit file back to its last checkpoint (a corrupted or added line; each start logs an ERROR and keytrail audit verify reports them); 0 normally."},
			func() float64 {
				if r := sink.UnsignedResumed(); r != nil {
					return float64(r.TooLongLines)
				}
				return 0
			}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "keytrail_audit_chain_info", Help: "The audit chain this broker writes: 1 for its id.",
			ConstLabels: prometheus.Labels{"chain": sink.ChainID()}}, func() float64 { return 1 }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "keytrail_audit_healthy", Help: "1 when the last audit write succeeded."},
			func() float64 {
				if sink.Stats().Healthy {
					return 1
				}
				return 0
			}),
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// registerLogin exposes counters of the broker's own Vault login, read
// from status (the Login's Status) at each scrape.
func registerLogin(reg prometheus.Registerer, status func() vaultad.LoginStatus) error {
	for _, c := range []prometheus.Collector{
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "keytrail_vault_replaced_token_revoke_failures_total",
			Help: "Failed revocations of the broker's Vault token an AppRole or Kubernetes re-login replaced (each logged at WARN): that token stays valid until its TTL.",
		}, func() float64 { return float64(status().ReplacedRevokeFailures) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "keytrail_vault_refused_login_token_revoke_failures_total",
			Help: "Failed revocations of a Vault token an AppRole or Kubernetes login got and the broker refused (a use limit, or a login stopped while in flight; each logged at WARN): that token stays valid until its TTL or last use.",
		}, func() float64 { return float64(status().RefusedRevokeFailures) }),
	} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

func (m *opsMetrics) onJWKSFetch(issuer string, err error) {
	outcome := "ok"
	if err != nil {
		outcome = "error"
	}
	m.jwksFetches.WithLabelValues(issuer, outcome).Inc()
}

func (m *opsMetrics) setPolicy(hash string) {
	m.policyInfo.Reset()
	m.policyInfo.WithLabelValues(hash).Set(1)
}

// timedSink measures audit writes and counts failures.
var _ broker.QueuingAuditSink = timedSink{}

type timedSink struct {
	broker.AuditSink
	m *opsMetrics
}

func (s timedSink) Append(ctx context.Context, ev *audit.Event) error {
	start := time.Now()
	err := s.AuditSink.Append(ctx, ev)
	s.m.auditSeconds.Observe(time.Since(start).Seconds())
	if err != nil {
		s.m.auditFailures.Inc()
	}
	return err
}

// AppendBatch forwards to the sink's batch append (auditfile has one), so
// that a revocation's parts stay all or nothing behind the wrapper; each
// event's wait is the batch's. A sink without one refuses: appending the
// events one by one would not be all or nothing.
func (s timedSink) AppendBatch(ctx context.Context, evs []*audit.Event) error {
	b, ok := s.AuditSink.(broker.BatchAuditSink)
	if !ok {
		return broker.Unavailable("audit_unavailable", time.Second, fmt.Errorf("audit sink %T cannot make events durable together", s.AuditSink))
	}
	start := time.Now()
	err := b.AppendBatch(ctx, evs)
	d := time.Since(start).Seconds()
	for range evs {
		s.m.auditSeconds.Observe(d)
		if err != nil {
			s.m.auditFailures.Inc()
		}
	}
	return err
}

// AppendWithin forwards to the sink's bounded append (auditfile has one),
// so that a proxied call's events are waited for at most AuditTimeout
// behind the wrapper too (without it Service.Audit would call Append,
// which waits for as long as a write hangs); a sink without one is waited
// for on a goroutine of its own, at most d.
func (s timedSink) AppendWithin(ev *audit.Event, d time.Duration) error {
	start := time.Now()
	var err error
	if b, ok := s.AuditSink.(broker.BoundedAuditSink); ok {
		err = b.AppendWithin(ev, d)
	} else {
		done := make(chan error, 1)
		go func() { done <- s.AuditSink.Append(context.Background(), ev) }()
		t := time.NewTimer(d)
		select {
		case err = <-done:
		case <-t.C:
			err = broker.Unavailable("audit_unavailable", time.Second, fmt.Errorf("the event was not durable within %s: %w", d, broker.ErrAuditPending))
		}
		t.Stop()
	}
	s.m.auditSeconds.Observe(time.Since(start).Seconds())
	if err != nil {
		s.m.auditFailures.Inc()
	}
	return err
}

// AppendDeferred forwards to the sink's deferred append when it has one
// (auditfile does), measuring from the call to the outcome.
func (s timedSink) AppendDeferred(ev *audit.Event, done func(error)) {
	start := time.Now()
	report := func(err error) {
		s.m.auditSeconds.Observe(time.Since(start).Seconds())
		if err != nil {
			s.m.auditFailures.Inc()
		}
		if done != nil {
			done(err)
		}
	}
	if d, ok := s.AuditSink.(broker.DeferredAuditSink); ok {
		d.AppendDeferred(ev, report)
		return
	}
	go func() { report(s.AuditSink.Append(context.Background(), ev)) }()
}

// Enqueue forwards to the sink's queuing append when it has one (auditfile
// does), measuring from the call to the outcome as Append does; without
// one nothing is queued and the caller appends through Append.
func (s timedSink) Enqueue(ev *audit.Event, done func(error)) bool {
	q, ok := s.AuditSink.(broker.QueuingAuditSink)
	if !ok {
		return false
	}
	start := time.Now()
	return q.Enqueue(ev, func(err error) {
		s.m.auditSeconds.Observe(time.Since(start).Seconds())
		if err != nil {
			s.m.auditFailures.Inc()
		}
		done(err)
	})
}

// countedMinter counts backend errors of a Vault minter.
type countedMinter struct {
	broker.Minter
	backend string
	m       *opsMetrics
}

func (c countedMinter) Mint(ctx context.Context, req broker.MintRequest) (*broker.Credential, error) {
	cred, err := c.Minter.Mint(ctx, req)
	if err != nil {
		c.m.backendErrors.WithLabelValues(c.backend, broker.AsError(err).Reason).Inc()
	}
	return cred, err
}

// countStoreErr counts store outages (not ErrNotFound, which is an answer).
func (m *opsMetrics) countStoreErr(err error) error {
	if err != nil && errors.Is(err, broker.ErrUnavailable) {
		m.backendErrors.WithLabelValues("store", broker.AsError(err).Reason).Inc()
	}
	return err
}

// countedStore counts outages of the hot store calls. It keeps the
// Notifier of the store it wraps (see countedNotifierStore).
type countedStore struct {
	broker.Store
	m *opsMetrics
}

func (s countedStore) PutIssuance(ctx context.Context, is *broker.Issuance) error {
	return s.m.countStoreErr(s.Store.PutIssuance(ctx, is))
}

// MarkRevoked is counted as PutIssuance was, which wrote the marks before.
func (s countedStore) MarkRevoked(ctx context.Context, is *broker.Issuance) (*broker.Issuance, error) {
	out, err := s.Store.MarkRevoked(ctx, is)
	return out, s.m.countStoreErr(err)
}

func (s countedStore) FindIssuance(ctx context.Context, k broker.RefKind, v string) (*broker.Issuance, error) {
	is, err := s.Store.FindIssuance(ctx, k, v)
	return is, s.m.countStoreErr(err)
}

func (s countedStore) FindIssuances(ctx context.Context, k broker.RefKind, vs []string) ([]*broker.Issuance, error) {
	list, err := s.Store.FindIssuances(ctx, k, vs)
	return list, s.m.countStoreErr(err)
}

// AcksReplicas passes on the wrapped store's broker.ReplicaAcker answer, so
// the revocation flow (which cannot see through this wrapper) settles a
// found mark at once without store.min_replicas, as README says. A store
// that does not say is taken to wait for replicas (the safe side).
func (s countedStore) AcksReplicas() bool {
	a, ok := s.Store.(broker.ReplicaAcker)
	return !ok || a.AcksReplicas()
}

// ListRevocationPages passes on the wrapped store's paged listing
// (broker.RevocationPager, Redis's), so that the revocation cache's full
// read, which cannot see through this wrapper, holds one page of decoded
// records at a time; a store without one lists them all as one page.
func (s countedStore) ListRevocationPages(ctx context.Context, f broker.RevocationFilter, fn func([]*broker.Revocation) error) error {
	if p, ok := s.Store.(broker.RevocationPager); ok {
		return p.ListRevocationPages(ctx, f, fn)
	}
	revs, err := s.Store.ListRevocations(ctx, f)
	if err != nil || len(revs) == 0 {
		return err
	}
	return fn(revs)
}

func (s countedStore) GetBlock(ctx context.Context, workload string) (*broker.Block, error) {
	b, err := s.Store.GetBlock(ctx, workload)
	return b, s.m.countStoreErr(err)
}

type countedNotifierStore struct {
	countedStore
	broker.Notifier
}

func (m *opsMetrics) wrapStore(st broker.Store) broker.Store {
	cs := countedStore{Store: st, m: m}
	if n, ok := st.(broker.Notifier); ok {
		return countedNotifierStore{countedStore: cs, Notifier: n}
	}
	return cs
}

// certReloader serves the listener's certificate and re-reads the files
// when they change (checked at most every 5 s), so a rotated certificate is
// picked up without a restart. A broken new pair keeps the old one.
type certReloader struct {
	certFile, keyFile string
	every             time.Duration // how often the files are checked
	log               *slog.Logger
	mu                sync.Mutex
	cert              *tls.Certificate
	stamp             string
	checked           time.Time
}

func fileStamp(paths ...string) string {
	h := sha256.New()
	for _, p := range paths {
		if fi, err := os.Stat(p); err == nil {
			fmt.Fprintf(h, "%s|%d|%d\n", p, fi.Size(), fi.ModTime().UnixNano())
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

func (c *certReloader) load() error {
	cert, err := loadKeyPair(c.certFile, c.keyFile)
	if err != nil {
		return err
	}
	c.cert, c.stamp = &cert, fileStamp(c.certFile, c.keyFile)
	return nil
}

func (c *certReloader) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Since(c.checked) >= c.every {
		c.checked = time.Now()
		if fileStamp(c.certFile, c.keyFile) != c.stamp {
			if err := c.load(); err != nil {
				c.log.Error("tls certificate reload failed; keeping the old one", slog.String("error", err.Error()))
			} else {
				c.log.Info("tls certificate reloaded", slog.String("cert_file", c.certFile))
			}
		}
	}
	return c.cert, nil
}

func newCertReloader(certFile, keyFile string, every time.Duration, log *slog.Logger) (*certReloader, error) {
	r := &certReloader{certFile: certFile, keyFile: keyFile, every: every, log: log, checked: time.Now()}
	if err := r.load(); err != nil {
		return nil, err
	}
	return r, nil
}

func serverTLS(c *TLSConfig, log *slog.Logger) (*tls.Config, error) {
	r, err := newCertReloader(c.CertFile, c.KeyFile, 5*time.Second, log)
	if err != nil {
		return nil, err
	}
	warnServingKeyPair(log, c.CertFile, c.KeyFile, r.cert.Leaf, time.Now())
	tc := &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: r.getCertificate}
	if c.ClientCAFile != "" {
		pool, err := loadCAPool(c.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("tls.client_ca_file: %w", err)
		}
		tc.ClientCAs, tc.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return tc, nil
}

// warnServingKeyPair logs, at start-up, what keytrail config check says of
// the serving key pair that does not stop the server: a certificate
// (leaf) that has expired or is not yet valid (clients refuse it until a
// renewed one is written, which the server picks up), and a key file
// whose mode lets others read or change it. One WARN each, naming the
// field and the file; never the key.
func warnServingKeyPair(log *slog.Logger, certFile, keyFile string, leaf *x509.Certificate, now time.Time) {
	switch {
	case leaf == nil:
	case now.After(leaf.NotAfter):
		log.Warn("tls certificate has expired: clients will refuse it until a renewed one is written",
			slog.String("field", "tls.cert_file"), slog.String("file", certFile), slog.Time("not_after", leaf.NotAfter.UTC()))
	case now.Before(leaf.NotBefore):
		log.Warn("tls certificate is not valid yet: clients will refuse it until then",
			slog.String("field", "tls.cert_file"), slog.String("file", certFile), slog.Time("not_before", leaf.NotBefore.UTC()))
	}
	if fi, err := os.Stat(keyFile); err == nil && runtime.GOOS != "windows" && fi.Mode().Perm()&looseSecretPerm != 0 {
		log.Warn("tls key file can be read or changed by others than its owner; chmod 600 it",
			slog.String("field", "tls.key_file"), slog.String("file", keyFile), slog.String("mode", fmt.Sprintf("%#o", fi.Mode().Perm())))
	}
}

// policyStamp summarises the policy files' names, sizes and mtimes, so a
// change is noticed without reading them. In a directory only the entries
// the loader reads or reports count (policies.Considers).
func policyStamp(path string) string {
	var files []string
	fi, err := os.Stat(path)
	if err != nil {
		return "missing"
	}
	if fi.IsDir() {
		entries, _ := os.ReadDir(path)
		for _, e := range entries {
			if policies.Considers(e) {
				files = append(files, filepath.Join(path, e.Name()))
			}
		}
		sort.Strings(files)
	} else {
		files = []string{path}
	}
	return fileStamp(files...)
}

// policyReloadRetries bounds the retries of a failed file-triggered reload
// (watchPolicy).
const policyReloadRetries = 10

// watchPolicy reloads the policy when its files change (polled every
// interval) from last, their policyStamp when the policy in force was read.
// Reload validates first and keeps the old policy on error. A reload that
// failed is retried while the files stay as they are, since what failed
// may be passing (a ca_file not mounted yet, the audit log full): after
// 2, 4, 8 ... intervals, at most 30 intervals apart (1 min at 2 s),
// policyReloadRetries times, each attempt logged and audited as a
// file_change_retry. A change of the files starts over; a reload by SIGHUP
// that succeeds in the meantime ends the retries (a new policy in force: a
// JWKS refresh that serves retiring keys changes no policy state).
func (rt *brokerRuntime) watchPolicy(ctx context.Context, interval time.Duration, last string) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	var (
		failedAt *policies.Policy // the policy in force when the last attempt failed; nil: none failed
		retries  int
		delay    time.Duration
		retryAt  time.Time
	)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		var err error
		switch st := policyStamp(rt.cfg.Policy); {
		case st != last:
			last, retries, delay = st, 0, 0
			err = rt.reloadPolicy(ctx, "file_change")
		case failedAt == nil || retries >= policyReloadRetries || time.Now().Before(retryAt):
			continue
		case rt.state.Load().pol != failedAt: // reloaded since (SIGHUP)
			failedAt = nil
			continue
		default:
			retries++
			err = rt.reloadPolicy(ctx, "file_change_retry")
		}
		if err == nil || errors.Is(err, errReloadShuttingDown) {
			failedAt = nil
			continue
		}
		failedAt = rt.state.Load().pol
		delay = min(max(2*delay, 2*interval), 30*interval)
		retryAt = time.Now().Add(delay)
		if retries < policyReloadRetries {
			rt.log.Warn("policy reload from the files failed; retrying", slog.Duration("in", delay),
				slog.Int("retry", retries+1), slog.Int("of", policyReloadRetries))
		} else {
			rt.log.Error("policy reload from the files failed; no more retries: change the files or send SIGHUP",
				slog.Int("retries", retries))
		}
	}
}

// loadCAPool reads a PEM bundle of CA certificates (tls.client_ca_file,
// store.ca_file) with the reader of vault.ca_file: one reader, one message.
func loadCAPool(path string) (*x509.CertPool, error) {
	return vaultad.LoadCAFile(path)
}

// startClockWatch compares the broker's clock with Vault's every few
// minutes; a difference over 2 s is a clock_skew audit event (audit times
// from two clocks that disagree mislead a trace) and the gauge shows it.
func (rt *brokerRuntime) startClockWatch(ctx context.Context) error {
	cw, err := vaultad.NewClockWatch(vaultad.ClockWatchOptions{
		Client: rt.vault, Logger: rt.log,
		OnMeasure: func(off time.Duration) { rt.metrics.clockSkew.Set(off.Seconds()) },
		OnSkew: func(ctx context.Context, off time.Duration) {
			ev := &audit.Event{Type: audit.TypeClockSkew, Reason: "vault_clock_differs",
				Details: map[string]any{"offset_seconds": off.Seconds(), "peer": "vault", "threshold_seconds": 2}}
			if err := rt.sink.Append(context.WithoutCancel(ctx), ev); err != nil {
				rt.log.Warn("audit clock_skew event failed", slog.String("error", err.Error()))
			}
		},
	})
	if err != nil {
		return err
	}
	rt.goAfterStart(cw.Run)
	return nil
}

// servePprof serves net/http/pprof on addr (validated as loopback by the
// config) until the returned stop is called; bound is the address listened on.
func servePprof(addr string, log *slog.Logger) (bound string, stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("pprof_listen %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	log.Info("pprof serving", slog.String("listen", ln.Addr().String()))
	return ln.Addr().String(), func() { _ = srv.Close() }, nil
}
