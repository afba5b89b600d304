package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"

	"github.com/keytrail/keytrail/adapters/auditfile"
	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/adapters/redisstore"
	vaultad "github.com/keytrail/keytrail/adapters/vault"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/authn"
	"github.com/keytrail/keytrail/broker/httpapi"
	"github.com/keytrail/keytrail/broker/jwks"
	"github.com/keytrail/keytrail/broker/proxy"
	"github.com/keytrail/keytrail/broker/trace"
	"github.com/keytrail/keytrail/policies"
)

func newServerCmd(e *env) *cobra.Command {
	var cfgPath string
	c := &cobra.Command{
		Use:   "server --config FILE",
		Short: "Run the broker",
		Long: `Run the keytrail broker with the given configuration file (YAML, decoded
strictly). Environment overrides: KEYTRAIL_LISTEN, VAULT_ADDR, VAULT_NAMESPACE, VAULT_TOKEN,
KEYTRAIL_REDIS_URL; KEYTRAIL_REDIS_PASSWORD is the password of store.addrs
(Sentinel, Cluster). The Vault token reconciliation is tuned with
KEYTRAIL_RECONCILE_INTERVAL (5m), KEYTRAIL_RECONCILE_GRACE (1m; raised, with
a warning, to at least the longer of vault.timeout and 5s, plus 14s) and
turned off with KEYTRAIL_RECONCILE=off (another value than on or off, or
an interval or grace that is not a positive duration, stops the start-up
before anything starts; docs/RELIABILITY.md). SIGHUP
reloads the policy (one received during start-up reloads once serving), and
so does a change to its *.yaml/*.yml files (polled every 2 s; a reload after
a change that fails is retried 10 times, 4 s doubling to 1 min apart). A
reload that fails, or whose policy_load audit event cannot be written, keeps
the policy in force. SIGINT/SIGTERM shut down gracefully: /readyz answers
503 for shutdown_drain while requests are still served, then in-flight
requests get shutdown_timeout (those cut off then get up to twice the
mint timeout, the longer of 5s and vault.timeout, plus 32s more to end,
42s by default: an exchange cut off in its mint ends with its credential
audited, revoked and its orphan_revoked and deny events written; a second
signal exits at once); until it serves, requests get 503 "starting";
from the first signal on, no reload starts (SIGHUP and file changes are
logged).
A start-up not serving within startup_timeout (5m; 0: none) logs an ERROR
naming what it waited for and exits 1; one whose close then hangs (a hung
audit disk), or a failed start-up's, exits 30s later, plus up to 10s to
stop its AppRole or Kubernetes login's renewals and revoke its token
(also before a second signal's exit). The close after serving is bounded
too: past 2 x the mint timeout + 42s (52s by default) an ERROR names the
step it waits for and the process exits 1, its login's token left valid.
The exit status is 0 after a clean shutdown, 1 when start-up fails, when
requests were still in flight after shutdown_timeout, or when closing failed
(e.g. the audit log's final signed checkpoint could not be written),
2 on a usage mistake.`,
		Example: `  keytrail config check --config /etc/keytrail/config.yaml && keytrail server --config /etc/keytrail/config.yaml
  VAULT_TOKEN=... KEYTRAIL_REDIS_URL=redis://redis:6379/0 keytrail server --config keytrail.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if cfgPath == "" {
				return exitError{code: exitUsage, msg: "server: --config is required"}
			}
			cfg, err := LoadConfig(cfgPath, e.getenv)
			if err != nil {
				return err
			}
			return runServer(cmd.Context(), e, cfg, nil)
		},
	}
	c.Flags().StringVar(&cfgPath, "config", "", "server configuration file (YAML); check it first with keytrail config check")
	return c
}

func newLogger(cfg LogConfig, w interface{ Write([]byte) (int, error) }) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(cfg.Level))
	opts := &slog.HandlerOptions{Level: lvl}
	if cfg.Format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// policyState is the policy in force and the authenticator built from its
// issuers; a reload swaps them at once. The key list of
// /.well-known/jwks.json is brokerRuntime.keys: a reload serves the new
// policy's keys just before the policy itself, so it serves every key the
// policy in force signs with.
type policyState struct {
	pol   *policies.Policy
	authn *authn.Verifier
}

// broker is everything runServer wires together.
type brokerRuntime struct {
	cfg     *Config
	log     *slog.Logger
	state   atomic.Pointer[policyState]
	keys    *jwks.Keys // the JWKS key list: the keys the policy in force signs with, and the retiring ones (initPolicy)
	svc     *broker.Service
	api     *httpapi.Server
	sink    *auditfile.Sink
	store   broker.Store
	vault   *vaultapi.Client
	login   *vaultad.Login     // the broker's own Vault login (token type checked on reload)
	pki     *vaultad.PKIMinter // its CheckRoles on reload: warns about an unreadable role once per change
	closers []func() error
	// afterStart are the background loops that write audit events (clock
	// watch, revocation worker, reconciler), started (goBackground) once
	// the start event is durable (goAfterStart).
	afterStart []func(context.Context) error
	reg        *prometheus.Registry
	metrics    *opsMetrics
	// deployment tags the Vault tokens this broker mints (deploymentID).
	deployment string
	// storeLostAtStart is 1 when the start-up found that the shared store
	// lost its data since this instance last started (checkStoreMarker).
	storeLostAtStart uint64
	// keepStoreID, when set, starts keepStoreID with the revocation
	// cache's count of losses (wireRevocationCache).
	keepStoreID func(ctx context.Context, losses func() uint64)
	// keepStoreMarker, when set, writes the store's deployment id into the
	// marker once the start event is durable (checkStoreMarker).
	keepStoreMarker func()
	// reloadMu serialises policy reloads (SIGHUP and the file watcher).
	reloadMu sync.Mutex
	// verifiersClosed (under verifierMu) is set by the closer that closes
	// the verifier in force: a reload that swaps in a new one after it
	// closes that one too (setState).
	verifierMu      sync.Mutex
	verifiersClosed bool
	// shuttingDown is set when the shutdown begins (SIGTERM, the drain
	// included): no policy reload starts after it.
	shuttingDown atomic.Bool
	// now is the clock of key retirement (keys); nil means time.Now.
	now func() time.Time
	// phase is phaseStarting until the listener serves the broker's
	// routes (phaseServed) or an unserved login's token is being revoked
	// (phaseRevoking: the routes are never served then): a start-up that
	// failed, or a process that exits before serving, revokes the Vault
	// token it logged in for (revokeUnservedLogin); one that served does
	// not.
	phase atomic.Int32
	// stopCause names why an unserved start-up ends (the first one set
	// wins): revokeLoginToken's log lines say it.
	stopCause atomic.Pointer[string]
	// tokenHealth answers /readyz's check of the broker's Vault token,
	// keeping a success for a second (one lookup-self per second, however
	// many probes).
	tokenHealth *vaultad.TokenChecker
	// step is what the start-up waits for now (waiting, startStep).
	step atomic.Pointer[string]
	// revokeUnserved, set once an AppRole or Kubernetes login succeeded,
	// revokes that login's token, once (revokeLoginToken), through
	// revokeUnservedLogin: the failed start-up's closer calls it, and so
	// do the hard exits (exitIfNotReturned) and a second signal's, which
	// do not wait for the closers (a sink.Close on a hung audit disk) and
	// would otherwise leave the token valid for its TTL.
	revokeUnserved atomic.Pointer[func()]
	// closeAt is the step the close waits for (closing, closeStep).
	closeAt atomic.Pointer[string]
	// sinkClosed is set once the audit sink's Close returned.
	sinkClosed atomic.Bool
	// loginRun is the login's renewal and re-login loop (login.Run),
	// stopped before revokeLoginToken revokes its token.
	loginRun atomic.Pointer[loginLoop]
}

// The phases of brokerRuntime.phase.
const (
	phaseStarting int32 = iota
	phaseServed
	phaseRevoking
)

// setStopCause records why an unserved start-up ends, unless a cause was
// recorded already.
func (rt *brokerRuntime) setStopCause(cause string) { rt.stopCause.CompareAndSwap(nil, &cause) }

// revokeUnservedLogin revokes an AppRole or Kubernetes login's token
// (revokeUnserved, once; bounded, revokeLoginToken) unless the broker
// served with it: credentials minted without an orphan token_role, and
// the leases of a pki role with generate_lease, are its children, which
// its revocation would revoke too. Once it begins, the routes are never
// served (phase).
func (rt *brokerRuntime) revokeUnservedLogin() {
	revoke := rt.revokeUnserved.Load()
	if revoke == nil {
		return
	}
	if !rt.phase.CompareAndSwap(phaseStarting, phaseRevoking) && rt.phase.Load() != phaseRevoking {
		return
	}
	(*revoke)()
}

// loginLoop is a running login.Run: stop ends it, done is closed once it
// has.
type loginLoop struct {
	stop context.CancelFunc
	done <-chan struct{}
}

// runServer wires the broker from cfg and serves until ctx ends. ready, when
// non-nil, is called with the listener's address once serving.
func runServer(ctx context.Context, e *env, cfg *Config, ready func(addr string)) error {
	// Refused before anything starts, not only after the Vault login.
	if err := checkReconcileEnv(e.getenv); err != nil {
		return err
	}
	// The words of config check: both VAULT_TOKEN and vault.token_file
	// is named as both, not as "exactly one ... is required".
	if msg, _ := cfg.vaultTokenProblem(e.getenv("VAULT_TOKEN") != ""); msg != "" {
		return errors.New(msg)
	}
	log := newLogger(cfg.Log, e.stderr)
	logConfigWarnings(cfg, log)
	// The listeners are bound, and the serving key pair loaded, before
	// anything else: a taken port or a bad certificate stops the start-up
	// before the Vault login, the store, the audit log (no start event)
	// and the background loops. From then on the listener serves, first
	// with httpapi.Starting (503 temporarily_unavailable with Retry-After
	// at once, /healthz 200, /readyz 503 "starting"): no request reaches
	// the broker's handlers before everything is wired and the start
	// event is durable (the swap below). pprof (a loopback debug listener, apart from the broker's routes)
	// serves from here on, the start-up included.
	// dev binds --listen itself, before it starts Vault (e.listener).
	var err error
	ln := e.listener
	if ln == nil {
		if ln, err = net.Listen("tcp", cfg.Listen); err != nil {
			return fmt.Errorf("listen %s: %w", cfg.Listen, err)
		}
	}
	defer ln.Close() // a failed start-up's; srv.Serve closes it otherwise
	var tlsConfig *tls.Config
	if cfg.TLS != nil {
		if tlsConfig, err = serverTLS(cfg.TLS, log); err != nil {
			return err
		}
	}
	if cfg.PprofListen != "" {
		_, stop, err := servePprof(cfg.PprofListen, log)
		if err != nil {
			return err
		}
		defer stop()
	}
	// Every handler is counted: one that outlives shutdown_timeout (cut
	// off: srv.Close does not wait for it) still writes audit events. The
	// handler is read per request (an atomic swap, the http.Server's own
	// fields untouched once serving): starting until wired.
	var (
		inflight inFlight
		handler  atomic.Pointer[http.Handler]
	)
	starting := httpapi.Starting(log, cfg.trustedProxies())
	handler.Store(&starting)
	srv := &http.Server{
		Handler: inflight.wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			(*handler.Load()).ServeHTTP(w, r)
		})),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      90 * time.Second, // above the proxy's 60s overall upstream timeout
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	serveLn := ln
	if tlsConfig != nil {
		srv.TLSConfig = tlsConfig
		serveLn = tls.NewListener(ln, tlsConfig)
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(serveLn) }()
	// A failed start-up closes the server (its starting answers are
	// instant) before it returns; the listener with it.
	wired := false
	defer func() {
		if !wired {
			_ = srv.Close()
			<-errc
		}
	}()
	if e.listening != nil {
		e.listening(ln)
	}
	// SIGHUP is caught from the start to the end, start-up and the final
	// close included: its default action ends the process at once, without
	// closing the audit log. One that arrives before serving reloads once
	// serving starts.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	// A second SIGINT/SIGTERM exits at once (1), from the first one (ctx
	// ends) to runServer's return: during the start-up too (one that waits
	// for a hung audit disk does not notice ctx), the drain, the shutdown
	// and the close of the runtime, of a failed start-up included (the
	// deferred rt.close below runs while this watches).
	// A login token nothing was served with is revoked (bounded) before
	// that exit.
	rt := &brokerRuntime{cfg: cfg, log: log}
	returned, watcherDone := make(chan struct{}), make(chan struct{})
	var bound sync.WaitGroup // a failed start-up's or the close's exitIfNotReturned
	defer func() { close(returned); <-watcherDone; bound.Wait() }()
	go exitOnSecondSignal(ctx, e, log, returned, watcherDone, func() {
		rt.setStopCause("start-up stopped by SIGINT/SIGTERM")
		rt.revokeUnservedLogin()
	})
	defer rt.close()
	// startup_timeout: a start-up that never ends (Vault or Redis that
	// never answer, a hung audit disk) is stopped, so a supervisor
	// restarts it; the bound listener answers /healthz 200 meanwhile.
	wctx, stopWire := context.WithCancel(ctx)
	defer stopWire()
	var startupTimeout time.Duration
	if cfg.StartupTimeout != nil {
		startupTimeout = time.Duration(*cfg.StartupTimeout)
	}
	deadline := rt.watchStartup(ctx, e, startupTimeout, stopWire, returned)
	err = rt.wire(wctx, e)
	if deadline.end() {
		// Stopped by the deadline: whatever wire did after it (its waits
		// were cancelled; one that finished anyway) is not served. The
		// closers below run as for any failed start-up: the sink, its
		// adopted lines unsigned unless the start event recorded them.
		if deadline.signalled {
			rt.setStopCause("start-up stopped by SIGINT/SIGTERM")
			return errors.Join(fmt.Errorf("start-up stopped by SIGINT/SIGTERM: still waiting for %s at startup_timeout (%s)", deadline.waitingFor, startupTimeout), err)
		}
		rt.setStopCause("start-up stopped by startup_timeout")
		return errors.Join(fmt.Errorf("start-up did not finish within startup_timeout (%s): waiting for %s", startupTimeout, deadline.waitingFor), err)
	}
	if err != nil {
		if ctx.Err() != nil {
			rt.setStopCause("start-up stopped by SIGINT/SIGTERM")
		} else {
			rt.setStopCause("start-up failed")
		}
		// A failed start-up's close (the deferred rt.close) is bounded as
		// the deadline's is: one that hangs (a sink.Close on a hung audit
		// disk) exits startupCloseGrace later, its login token revoked
		// first. It waited for a second signal before, its login's token
		// left valid.
		failed := slog.String("error", vaultad.HideUserinfo(err, cfg.Vault.Address).Error())
		bound.Add(1)
		go func() {
			defer bound.Done()
			rt.exitIfNotReturned(e, "start-up failed and", startupGrace(e), returned, func() slog.Attr { return failed })
		}()
		return err
	}

	// Wired, the start event durable: the broker's routes serve from the
	// next request on (those in flight on the starting handler end as
	// they began). serveErr: Serve returned before the shutdown (its
	// listener failed), during the start-up too: then the broker never
	// serves (no "serving" line, ready not called) and shuts down below.
	// The connections already open are still served: the server is shut
	// as at a signal (without the drain) before the runtime closes.
	wired = true
	var serveErr error
	select {
	case serveErr = <-errc:
	default:
		if !rt.phase.CompareAndSwap(phaseStarting, phaseServed) {
			// A second signal revokes the login's token before it
			// exits: nothing is served with it.
			break
		}
		routes := rt.api.Routes()
		handler.Store(&routes)
		log.Info("keytrail serving", slog.String("listen", ln.Addr().String()), slog.String("public_url", cfg.PublicURL),
			slog.String("policy_hash", rt.state.Load().pol.Hash()), slog.Bool("redis", cfg.Store.Shared()))
		if ready != nil {
			ready(ln.Addr().String())
		}
	}

	// SIGHUP reloads run beside this loop, one at a time (reloadMu), until
	// the runtime closes: a reload waits for its policy_load event to be
	// durable, and an audit disk that hangs must not keep SIGTERM from
	// starting the shutdown. One received during start-up is read now.
	rt.goBackground(ctx, func(ctx context.Context) error {
		for {
			select {
			case <-hup:
				_ = rt.reloadPolicy(ctx, "sighup") // logged and audited; the policy in force stays
			case <-ctx.Done():
				return nil
			}
		}
	})
	if serveErr == nil {
		select {
		case serveErr = <-errc:
		case <-ctx.Done():
		}
	}
	rt.shuttingDown.Store(true)

	// Graceful shutdown: drain (shutdown_drain: /readyz answers 503 while
	// the listener keeps serving, so load balancers stop sending new
	// requests first), stop accepting, finish in-flight requests within
	// shutdown_timeout, then flush and checkpoint the audit log
	// (rt.close). A second signal exits at once.
	drain := time.Duration(cfg.ShutdownDrain)
	if serveErr == nil {
		log.Info("shutting down", slog.Duration("drain", drain), slog.Duration("timeout", time.Duration(cfg.ShutdownTimeout)))
	}
	if drain > 0 && serveErr == nil {
		rt.api.Drain()
		// Each connection closes after its current response: keep-alive
		// clients reconnect, through the load balancer, to another
		// instance.
		srv.SetKeepAlivesEnabled(false)
		t := time.NewTimer(drain)
		select {
		case <-t.C:
		case serveErr = <-errc: // nothing closed the server: a failure
			t.Stop()
		}
	}
	if serveErr != nil {
		serveErr = fmt.Errorf("serve: %w", serveErr)
		log.Error("serving failed: shutting down", slog.String("error", serveErr.Error()),
			slog.Duration("timeout", time.Duration(cfg.ShutdownTimeout)))
	}
	sctx, cancel := context.WithTimeout(context.Background(), time.Duration(cfg.ShutdownTimeout))
	defer cancel()
	var incomplete error
	if err := srv.Shutdown(sctx); err != nil {
		// Requests still running past shutdown_timeout are cut off: the
		// exit status says so (1), so a supervisor sees an unclean stop.
		log.Error("shutdown incomplete: requests still in flight after shutdown_timeout are cut off",
			slog.Duration("shutdown_timeout", time.Duration(cfg.ShutdownTimeout)), slog.String("error", err.Error()))
		_ = srv.Close()
		incomplete = fmt.Errorf("shutdown incomplete: requests were still in flight after shutdown_timeout (%s)", time.Duration(cfg.ShutdownTimeout))
	}
	// srv.Close does not wait for the handlers it cut off: one still in a
	// mint, or writing its audit event (a proxied call's use_result), gets
	// up to cutOffGrace more before the store and the audit log close
	// under it: long enough for an exchange cut off in its mint to end
	// with its audit events written.
	if n := inflight.running(); n > 0 {
		grace := cutOffGrace(mintTimeout(time.Duration(cfg.Vault.Timeout)))
		log.Warn("waiting for requests cut off at shutdown_timeout to end, so their audit events are written",
			slog.Int("requests", n), slog.Duration("grace", grace))
		if n := inflight.wait(grace); n > 0 {
			log.Error("closing the audit log with requests still running: their audit events may be lost",
				slog.Int("requests", n))
		}
	}
	// The final flush and checkpoint of the audit log run here (the
	// deferred close is then a no-op); a second signal still exits at
	// once. A failure is the exit status: every acknowledged event was
	// durable already, but the last lines lack their signed checkpoint.
	// The close is bounded (a sink.Close on a hung audit disk, with no
	// second signal to come): a broker whose Serve failed before it
	// served exits startupCloseGrace later as a failed start-up does,
	// its login's token revoked first; one that served exits
	// shutdownCloseGrace later, its ERROR naming the closing step, its
	// login's token left valid (credentials and leases hang off it).
	served := rt.phase.Load() == phaseServed
	var failed slog.Attr
	if !served {
		rt.setStopCause("serving failed before it began")
		failed = slog.String("error", "second signal: not served")
		if serveErr != nil {
			failed = slog.String("error", serveErr.Error())
		}
	}
	closeGrace := shutdownCloseGrace(cfg, e)
	bound.Add(1)
	go func() {
		defer bound.Done()
		if served {
			rt.exitIfNotReturned(e, "the shutdown's close", closeGrace, returned, func() slog.Attr { return slog.String("waiting_for", rt.closeStep()) })
			return
		}
		rt.exitIfNotReturned(e, "serving failed before it began and its close", startupGrace(e), returned, func() slog.Attr { return failed })
	}()
	return errors.Join(serveErr, incomplete, rt.close())
}

// The bounds of the broker.Service's store calls and of an exchange's wait
// for its issue event (broker.Deps.StoreTimeout, AuditTimeout), named here
// for cutOffGrace.
const (
	serviceStoreTimeout = broker.DefaultStoreTimeout
	serviceAuditTimeout = broker.DefaultAuditTimeout
)

// cutOffGrace bounds runServer's wait, after shutdown_timeout, for the
// handlers it cut off, given the mint timeout: the longest an exchange cut
// off in its mint may still take to end with its audit trail written. A
// mint cannot be cut short (a Vault call cancelled mid-way may have made
// the credential all the same), and the credential it makes must be in
// the audit log: the mint (mint), its store write beside its issue event
// (serviceAuditTimeout), then, its caller gone, the credential's
// revocation (mint again), its issuance marked revoked
// (serviceStoreTimeout) and its orphan_revoked and deny events
// (serviceAuditTimeout each). It was a fixed 5 s: a credential a slower
// Vault made after that was in no audit event. The wait ends as soon as
// the handlers do; a second signal ends it at once.
// The formula is broker.Timeouts.CutOffGrace, shared with the e2e
// harness (its wait for a broker's stop) and the deploy tests.
func cutOffGrace(mint time.Duration) time.Duration {
	return broker.Timeouts{Mint: mint, Store: serviceStoreTimeout, Audit: serviceAuditTimeout}.CutOffGrace()
}

// inFlight counts the server's running handlers.
type inFlight struct {
	mu   sync.Mutex
	n    int
	idle chan struct{} // closed when n drops to 0, made by a wait
}

// wrap counts h's calls while they run.
func (f *inFlight) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.add(1)
		defer f.add(-1)
		h.ServeHTTP(w, r)
	})
}

func (f *inFlight) add(d int) {
	f.mu.Lock()
	f.n += d
	if f.n == 0 && f.idle != nil {
		close(f.idle)
		f.idle = nil
	}
	f.mu.Unlock()
}

// running is the number of handlers running.
func (f *inFlight) running() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n
}

// wait waits until no handler runs, for at most d; it returns the number
// still running then.
func (f *inFlight) wait(d time.Duration) int {
	f.mu.Lock()
	if f.n == 0 {
		f.mu.Unlock()
		return 0
	}
	if f.idle == nil {
		f.idle = make(chan struct{})
	}
	idle := f.idle
	f.mu.Unlock()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-idle:
	case <-t.C:
	}
	return f.running()
}

// exitOnSecondSignal waits for ctx to end (the first SIGINT/SIGTERM: main's
// signal.NotifyContext), then exits (status 1) on the next one, until
// returned is closed, once beforeExit (bounded) returned; it closes done
// when it ends.
func exitOnSecondSignal(ctx context.Context, e *env, log *slog.Logger, returned <-chan struct{}, done chan<- struct{}, beforeExit func()) {
	defer close(done)
	select {
	case <-ctx.Done():
	case <-returned:
		return
	}
	second := make(chan os.Signal, 1)
	signal.Notify(second, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(second)
	select {
	case <-second:
		log.Warn("second signal: exiting now")
		beforeExit()
		exit := os.Exit
		if e.exit != nil {
			exit = e.exit
		}
		exit(1)
	case <-returned:
	}
}

// startupCloseGrace is how long a start-up stopped by startup_timeout may
// take to close (its Vault waits cancelled, its login token revoked, its
// audit log closed) before the process exits: a wait that ignores the
// cancel (a write to a hung audit disk) would keep it forever. The exit
// first stops the login's loop and revokes its token, up to
// loginRevokeTimeout each: up to 40 s in all.
const startupCloseGrace = 30 * time.Second

// startupGrace is startupCloseGrace, or e's (tests).
func startupGrace(e *env) time.Duration {
	if e.startupCloseGrace > 0 {
		return e.startupCloseGrace
	}
	return startupCloseGrace
}

// shutdownCloseGrace bounds the close of a broker that served (its
// background loops stopped, the audit log's final flush and checkpoint):
// the longest a loop cut off in a Vault call may take to end with its
// audit events written (cutOffGrace) plus one audit write
// (serviceAuditTimeout), 52 s by default. Past it the process exits 1,
// the audit log left as it is.
func shutdownCloseGrace(cfg *Config, e *env) time.Duration {
	if e.shutdownCloseGrace > 0 {
		return e.shutdownCloseGrace
	}
	return cutOffGrace(mintTimeout(time.Duration(cfg.Vault.Timeout))) + serviceAuditTimeout
}

// startDeadline is runServer's startup_timeout (watchStartup).
type startDeadline struct {
	mu         sync.Mutex
	t          *time.Timer
	ended      bool
	expired    bool
	waitingFor string // what the start-up waited for when it expired
	// signalled: the stop had begun before it expired (ctx ended:
	// SIGINT/SIGTERM), so the timeout is not what stops the start-up.
	signalled bool
}

// watchStartup arms the start-up deadline d (none when d <= 0): unless
// end is called first, it logs an ERROR naming the step the start-up
// waits for (rt.startStep) (a WARN saying the signal stops it when ctx,
// runServer's, had ended before: a start-up whose wait ignores the
// cancel outlived SIGINT/SIGTERM), calls cancel (wire's context: its Vault,
// store and key waits end), and, if runServer has not returned
// startupCloseGrace later, logs again, revokes an AppRole or Kubernetes
// login's token (revokeUnserved) and exits (status 1) without closing
// anything: no checkpoint is written then, so none signs the audit lines
// the sink adopted and no start event recorded.
func (rt *brokerRuntime) watchStartup(ctx context.Context, e *env, d time.Duration, cancel context.CancelFunc, returned <-chan struct{}) *startDeadline {
	sd := &startDeadline{}
	if d <= 0 {
		return sd
	}
	sd.t = time.AfterFunc(d, func() {
		sd.mu.Lock()
		if sd.ended {
			sd.mu.Unlock()
			return
		}
		sd.expired = true
		step := rt.startStep()
		sd.waitingFor = step
		signalled := ctx.Err() != nil
		sd.signalled = signalled
		sd.mu.Unlock()
		stoppedBy := "startup_timeout"
		if signalled {
			stoppedBy = "SIGINT/SIGTERM"
			rt.log.Warn("start-up stopped by SIGINT/SIGTERM has not ended at startup_timeout: still waiting",
				slog.Duration("startup_timeout", d), slog.String("waiting_for", step))
		} else {
			rt.log.Error("start-up did not finish within startup_timeout: stopping (exit status 1)",
				slog.Duration("startup_timeout", d), slog.String("waiting_for", step))
		}
		cancel()
		rt.setStopCause("start-up stopped by " + stoppedBy)
		rt.exitIfNotReturned(e, "start-up stopped by "+stoppedBy, startupGrace(e), returned, func() slog.Attr { return slog.String("waiting_for", rt.startStep()) })
	})
	return sd
}

// exitIfNotReturned waits grace for runServer to return (returned closed)
// from a start-up that failed or was stopped, or from its close (what
// names it in the log); if it has not, it logs an ERROR (with attr),
// revokes an AppRole or Kubernetes login's token unless the broker served
// with it (revokeUnservedLogin) and exits (status 1) without waiting for
// the closers.
func (rt *brokerRuntime) exitIfNotReturned(e *env, what string, grace time.Duration, returned <-chan struct{}, attr func() slog.Attr) {
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-returned:
	case <-t.C:
		left := " did not end: exiting now, the audit log left as it is (no checkpoint written)"
		if rt.sinkClosed.Load() {
			left = " did not end: exiting now (the audit log closed)"
		}
		rt.log.Error(what+left, slog.Duration("waited", grace), attr())
		// The closers did not run (or hang): the login token nothing
		// was served with is revoked first, bounded by
		// loginRevokeTimeout (once: a closer already revoking it is
		// waited for). Nothing audited depends on it: its result is
		// only logged, and the sink is not waited for.
		rt.revokeUnservedLogin()
		exit := os.Exit
		if e.exit != nil {
			exit = e.exit
		}
		exit(1)
	}
}

// end disarms the deadline once wire returned; it reports whether the
// deadline had expired (the start-up must then fail).
func (sd *startDeadline) end() bool {
	sd.mu.Lock()
	defer sd.mu.Unlock()
	sd.ended = true
	if sd.t != nil {
		sd.t.Stop()
	}
	return sd.expired
}

// waiting records the step the start-up waits for now (watchStartup's
// log names it).
func (rt *brokerRuntime) waiting(step string) { rt.step.Store(&step) }

// startStep is the step the start-up waits for (waiting).
func (rt *brokerRuntime) startStep() string {
	if s := rt.step.Load(); s != nil {
		return *s
	}
	return "the start-up to begin"
}

// loginRevokeTimeout bounds the revoke-self of a failed start-up's login
// token.
const loginRevokeTimeout = 5 * time.Second

// revokeLoginToken revokes the Vault token the broker logged in for
// (revoke-self), bounded by loginRevokeTimeout; a failure is only logged.
func (rt *brokerRuntime) revokeLoginToken() {
	cause := "start-up failed"
	if c := rt.stopCause.Load(); c != nil {
		cause = *c
	}
	// The login's loop is stopped first (the failed start-up's closer
	// has; watchStartup's and exitIfNotReturned's hard exit has not): a
	// re-login it has in flight would otherwise leave the token it makes
	// valid, and the token one replaced waits for its revocation
	// (RevokeGrace) that the exit would cut short; stopped, it revokes
	// that one at once. Bounded by loginRevokeTimeout too.
	if l := rt.loginRun.Load(); l != nil {
		l.stop()
		t := time.NewTimer(loginRevokeTimeout)
		select {
		case <-l.done:
		case <-t.C:
			rt.log.Warn(cause + ": the Vault login's renewals did not stop; revoking its token anyway")
		}
		t.Stop()
	}
	ctx, cancel := context.WithTimeout(context.Background(), loginRevokeTimeout)
	defer cancel()
	if err := rt.vault.Auth().Token().RevokeSelfWithContext(ctx, ""); err != nil {
		rt.log.Warn(cause+": could not revoke the Vault token the broker logged in for; it stays valid until its ttl",
			slog.String("error", vaultad.HideUserinfo(err, rt.cfg.Vault.Address).Error()))
		return
	}
	rt.log.Info(cause + ": revoked the Vault token the broker logged in for")
}

// closing records the step the close waits for now (closeStep).
func (rt *brokerRuntime) closing(step string) { rt.closeAt.Store(&step) }

// closeStep is the step the close waits for (closing).
func (rt *brokerRuntime) closeStep() string {
	if s := rt.closeAt.Load(); s != nil {
		return *s
	}
	return "the close to begin"
}

// close runs the closers newest first, logs each failure and returns them
// joined.
func (rt *brokerRuntime) close() error {
	var errs []error
	for i := len(rt.closers) - 1; i >= 0; i-- {
		rt.closing("the store, the policy verifiers and the Vault client to close")
		if err := rt.closers[i](); err != nil {
			rt.log.Error("close", slog.String("error", err.Error()))
			errs = append(errs, err)
		}
	}
	rt.closers = nil
	return errors.Join(errs...)
}

func (rt *brokerRuntime) wire(ctx context.Context, e *env) error {
	cfg, log := rt.cfg, rt.log
	rt.reg = prometheus.NewRegistry()
	rt.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m, err := newOpsMetrics(rt.reg)
	if err != nil {
		return err
	}
	rt.metrics = m
	// The watcher, started later, compares with the files as they were
	// before this read: a change made while the broker starts is loaded.
	rt.waiting("the policy (policy) and its issuers' keys")
	polStamp := policyStamp(cfg.Policy)
	pol, err := loadServedPolicy(cfg.Policy, log)
	if err != nil {
		return fmt.Errorf("policy: %w", err)
	}
	m.setPolicy(pol.Hash())
	v, err := rt.newVerifier(ctx, pol)
	if err != nil {
		return fmt.Errorf("policy issuers: %w", err)
	}

	auth := cfg.Vault.Auth
	vaultToken := e.getenv("VAULT_TOKEN")
	if auth != nil && vaultToken != "" {
		log.Warn("VAULT_TOKEN is ignored: vault.auth logs the broker in", slog.String("method", auth.Method))
		vaultToken = ""
	}
	vc, err := vaultad.NewClient(vaultad.ClientOptions{
		Address:   cfg.Vault.Address,
		Token:     vaultToken,
		TokenFile: cfg.Vault.TokenFile,
		NoToken:   auth != nil,
		CAFile:    cfg.Vault.CAFile,
		Timeout:   time.Duration(cfg.Vault.Timeout),
		Namespace: cfg.Vault.Namespace,
	})
	if err != nil {
		if errors.Is(err, vaultad.ErrTokenRequired) {
			return fmt.Errorf("vault: %w (set VAULT_TOKEN, vault.token_file or vault.auth)", err)
		}
		return fmt.Errorf("vault: %w", err)
	}
	rt.vault = vc
	if rt.tokenHealth, err = vaultad.NewTokenChecker(vaultad.TokenCheckerOptions{Client: vc}); err != nil {
		return err
	}
	// The first closer, so the last to run: everything that talks to Vault
	// (the login, the audit sink's transit checkpoints) has stopped by then.
	rt.closers = append(rt.closers, func() error { vaultad.CloseIdleConnections(vc); return nil })
	if err := rt.initPolicy(pol, v); err != nil {
		v.Close()
		return err
	}
	rt.closers = append(rt.closers, rt.closeVerifiers)
	// Leases owned by the broker's token (a pki role with generate_lease)
	// stop the login from revoking the tokens its re-logins replace.
	leases := new(vaultad.TokenLeases)
	lo := vaultad.LoginOptions{Client: vc, Logger: log, Leases: leases}
	switch {
	case auth != nil && auth.Method == vaultad.LoginAppRole:
		lo.Method, lo.RoleIDFile, lo.SecretIDFile, lo.Mount = auth.Method, auth.RoleIDFile, auth.SecretIDFile, auth.Mount
	case auth != nil && auth.Method == vaultad.LoginKubernetes:
		lo.Method, lo.Role, lo.JWTFile, lo.Mount = auth.Method, auth.Role, auth.JWTFile, auth.Mount
	case cfg.Vault.TokenFile != "":
		lo.Method, lo.TokenFile = vaultad.LoginTokenFile, cfg.Vault.TokenFile
	default:
		lo.Method, lo.Token = vaultad.LoginToken, vaultToken
	}
	rt.waiting("the Vault login (vault.address)")
	login, err := vaultad.NewLogin(lo)
	if err != nil {
		return fmt.Errorf("vault login: %w", err)
	}
	if err := registerLogin(rt.reg, login.Status); err != nil {
		return err
	}
	if err := login.Start(ctx); err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			// The address's user info (basic auth for a front proxy: the
			// username may be a token too) is left out, here and in the
			// client's error (vaultad.HideUserinfo; the adapter's errors
			// already leave it out): the error still unwraps to the client's.
			hint := fmt.Errorf("vault login: %w; is Vault running at %s (from %s)?", err, vaultad.DisplayAddress(cfg.Vault.Address), cfg.vaultAddressSource())
			return vaultad.HideUserinfo(hint, cfg.Vault.Address)
		}
		return fmt.Errorf("vault login: %w", err)
	}
	if auth != nil {
		// The token of this login (AppRole, Kubernetes) is the broker's
		// own: when the start-up fails before anything was served, no
		// credential was made with it and nobody else holds it, so it is
		// revoked rather than left valid for its TTL at every failed start
		// (a crash loop would pile them up in Vault). Once serving, it
		// stays: credentials minted without an orphan token_role are its
		// children. Runs after the login's renewals stopped (Run below).
		revoke := sync.OnceFunc(rt.revokeLoginToken)
		rt.revokeUnserved.Store(&revoke)
		rt.closers = append(rt.closers, func() error {
			rt.closing("the revocation of the unserved Vault login's token")
			rt.revokeUnservedLogin()
			return nil
		})
	}
	if err := checkTokenType(login.Status().TokenType, pol); err != nil {
		return err
	}
	rt.login = login
	stopRun, runDone := rt.goBackground(ctx, login.Run)
	rt.loginRun.Store(&loginLoop{stop: stopRun, done: runDone})

	switch {
	case cfg.Store.Shared():
		ro := redisstore.Options{URL: cfg.Store.RedisURL, Prefix: cfg.Store.Prefix, AllowEvictingPolicy: cfg.Store.AllowEvictingPolicy,
			MinReplicas: cfg.Store.MinReplicas, Logger: log}
		if len(cfg.Store.Addrs) > 0 {
			ro.Universal = &redis.UniversalOptions{Addrs: cfg.Store.Addrs, MasterName: cfg.Store.MasterName,
				Password: e.getenv("KEYTRAIL_REDIS_PASSWORD")}
			if cfg.Store.TLS {
				ro.Universal.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
			}
		}
		if cfg.Store.CAFile != "" {
			pool, err := loadCAPool(cfg.Store.CAFile)
			if err != nil {
				return fmt.Errorf("store.ca_file: %w", err)
			}
			ro.RootCAs = pool
		}
		rt.waiting("the Redis store (store)")
		rs, err := redisstore.New(ctx, ro)
		if err != nil {
			return fmt.Errorf("store: %w", err)
		}
		rt.store = rs
		rt.closers = append(rt.closers, rs.Close)
	default:
		ms := memstore.New(time.Now)
		rt.store = ms
		// Without Redis nothing expires records: prune them once a
		// minute after the same retention as Redis keeps them.
		rt.goBackground(ctx, func(ctx context.Context) error {
			t := time.NewTicker(time.Minute)
			defer t.Stop()
			return ms.RunPrune(ctx, t.C, memstore.DefaultRetention)
		})
	}

	// The key files (the default one next to the audit log, on its disk:
	// the start-up's first touch of it, where a hung disk stops it).
	rt.waiting("the audit checkpoint key (audit.checkpoint_key_file, or the default next to audit.file)")
	var signer audit.Signer
	keyFile := cfg.Audit.CheckpointKeyFile
	if keyFile == "" && cfg.Audit.CheckpointTransitKey == "" {
		// Checkpoints are not optional (SPEC "Audit log"): without a
		// configured key, use (and on first start create) one next to the
		// audit file, and say that an external key is better.
		var pubFile string
		keyFile, pubFile = defaultCheckpointKey(cfg.Audit.File), cfg.Audit.File+".checkpoint.pub"
		created, err := ensureEd25519Key(keyFile, pubFile)
		if err != nil {
			return fmt.Errorf("audit: default checkpoint key: %w", err)
		}
		log.Warn("audit checkpoints signed with a local key; set audit.checkpoint_transit_key (or a checkpoint_key_file the broker's host cannot rewrite) for stronger tamper evidence",
			slog.String("key_file", keyFile), slog.String("public_key", pubFile), slog.Bool("created", created))
	}
	if keyFile != "" {
		s, err := loadCheckpointKey(keyFile)
		if err != nil {
			return fmt.Errorf("audit.checkpoint_key_file: %w", err)
		}
		signer = s
	}
	if k := cfg.Audit.CheckpointTransitKey; k != "" {
		ts, err := vaultad.NewTransitCheckpointSigner(vaultad.TransitCheckpointSignerOptions{Client: vc, Key: k, Log: log})
		if err != nil {
			return fmt.Errorf("audit.checkpoint_transit_key: %w", err)
		}
		rt.waiting("the checkpoint transit key (audit.checkpoint_transit_key)")
		if err := ts.Load(ctx); err != nil {
			return fmt.Errorf("audit.checkpoint_transit_key: %w", err)
		}
		signer = ts
	}
	rt.waiting("the audit log to open (audit.file)")
	sink, err := auditfile.Open(auditfile.Options{
		Path: cfg.Audit.File, Signer: signer, NoFsync: !*cfg.Audit.Fsync, Journal: *cfg.Audit.Journal, JournalBytes: cfg.Audit.JournalBytes,
		RotateBytes: cfg.Audit.RotateBytes, RotateEvery: time.Duration(cfg.Audit.RotateEvery), MaxBatch: cfg.Audit.MaxBatch, DeferFor: time.Duration(cfg.Audit.DeferFor), Logger: log,
		// The lines no checkpoint covered when the sink opened the file
		// are signed only once the start event recorded them
		// (auditPolicyLoad): a start-up that fails before leaves them to
		// the next one.
		RecordResumed: true,
		OnWrite: func(d time.Duration) {
			m.auditSync.Observe(d.Seconds())
			if e.auditWritten != nil {
				e.auditWritten()
			}
		},
	})
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	rt.sink = sink
	// Closers run in reverse: every background loop started from here on
	// (policy watcher, clock watch, revocation worker, reconciler) writes
	// audit events and so must stop before the sink closes.
	closeSink := func() error {
		rt.closing("the audit log's final flush and checkpoint (audit.file)")
		if e.auditClosing != nil {
			e.auditClosing()
		}
		err := sink.Close()
		rt.sinkClosed.Store(true)
		return err
	}
	rt.closers = append(rt.closers, closeSink)
	rt.waiting("the deployment id (store)")
	if rt.deployment, err = deploymentID(ctx, cfg, rt.store, sink.ChainID()); err != nil {
		return err
	}
	log.Info("deployment", slog.String("deployment", rt.deployment), slog.Bool("configured", cfg.Deployment != ""))
	if cfg.Store.Shared() {
		// The marker is on the audit log's disk: a hang there is named so.
		rt.waiting("the store's deployment id kept next to the audit log (store, audit.file)")
		lost, id, keep := checkStoreMarker(ctx, storeMarkerPath(cfg.Audit.File), rt.store, log)
		rt.keepStoreMarker = keep
		if lost {
			rt.storeLostAtStart = 1 // in keytrail_store_data_losses_total
		}
		if k, ok := rt.store.(deploymentKeeper); ok && id != "" {
			rt.keepStoreID = func(ctx context.Context, losses func() uint64) {
				rt.goBackground(ctx, func(ctx context.Context) error {
					t := time.NewTicker(time.Second)
					defer t.Stop()
					return keepStoreID(ctx, t.C, losses, k, id, storeMarkerPath(cfg.Audit.File), log)
				})
			}
		}
	}
	if err := m.registerSink(rt.reg, sink); err != nil {
		return err
	}
	rt.store = m.wrapStore(rt.store)
	// The keys an earlier run or another instance signed with or retired
	// stay in the JWKS here too, read now and at every JWKS refresh; the
	// keys this one signs with are recorded for the others.
	rt.keys.SetStore(rt.store)
	rt.waiting("the JWKS keys (Vault transit)")
	rt.keys.Refresh(ctx)
	rt.goBackground(ctx, func(ctx context.Context) error {
		t := time.NewTicker(jwks.RefreshEvery)
		defer t.Stop()
		return rt.keys.Run(ctx, t.C)
	})
	if err := rt.startClockWatch(ctx); err != nil {
		return err
	}

	tokenMinter, err := vaultad.NewTokenMinter(vaultad.TokenMinterOptions{Client: vc, Role: cfg.Vault.TokenRole, Deployment: rt.deployment, Log: rt.log})
	if err != nil {
		return fmt.Errorf("vault.token_role: %w", err)
	}
	rt.waiting("the Vault token role (vault.token_role)")
	if err := tokenMinter.CheckRole(ctx); err != nil {
		return fmt.Errorf("vault.token_role: %w", err)
	}
	// JWTs are signed only with a key version /.well-known/jwks.json
	// serves at that moment (rt.keys: the same cache).
	jwtMinter, err := vaultad.NewJWTMinter(vaultad.JWTMinterOptions{Client: vc, PublicURL: cfg.PublicURL, Published: rt.keys, Log: rt.log})
	if err != nil {
		return err
	}
	kv, err := vaultad.NewKVSecrets(vaultad.KVOptions{Client: vc})
	if err != nil {
		return err
	}
	proxyMinter, err := proxy.NewMinter(proxy.MinterOptions{PublicURL: cfg.PublicURL})
	if err != nil {
		return err
	}
	dynamicMinter, err := vaultad.NewDynamicMinter(vaultad.DynamicMinterOptions{Client: vc, Role: cfg.Vault.TokenRole, Deployment: rt.deployment, Log: rt.log})
	if err != nil {
		return err
	}
	pkiMinter, err := vaultad.NewPKIMinter(vaultad.PKIMinterOptions{Client: vc, Log: rt.log, Leases: leases,
		Grant: func(name string) (*policies.Grant, bool) { return rt.state.Load().pol.Grant(name) }})
	if err != nil {
		return err
	}
	// A pki role with no_store=true issues certificates nobody can revoke
	// by serial: refused here, and by policy reloads.
	rt.waiting("the pki roles (Vault)")
	if err := pkiMinter.CheckRoles(ctx, rt.state.Load().pol); err != nil {
		return err
	}
	rt.pki = pkiMinter
	rt.waiting("the revocation cache (store)")
	svcStore, err := rt.wireRevocationCache(ctx)
	if err != nil {
		return err
	}
	svc, err := broker.NewService(broker.Deps{
		Policy: func() *policies.Policy { return rt.state.Load().pol },
		Authn:  func() broker.Authenticator { return rt.state.Load().authn },
		Minters: map[string]broker.Minter{
			broker.KindVaultToken:   countedMinter{Minter: tokenMinter, backend: "vault", m: m},
			broker.KindJWT:          countedMinter{Minter: jwtMinter, backend: "vault", m: m},
			broker.KindProxy:        proxyMinter,
			broker.KindVaultDynamic: countedMinter{Minter: dynamicMinter, backend: "vault", m: m},
			broker.KindPKI:          countedMinter{Minter: pkiMinter, backend: "vault", m: m},
		},
		Revokers: map[string]broker.Revoker{broker.KindVaultToken: tokenMinter, broker.KindJWT: jwtMinter, broker.KindProxy: proxyMinter,
			broker.KindVaultDynamic: dynamicMinter, broker.KindPKI: pkiMinter},
		Store:      svcStore,
		Audit:      timedSink{AuditSink: sink, m: m},
		AuditChain: sink.ChainID(),
		Logger:     log,
		// A mint may take as long as one Vault request may.
		MintTimeout:      mintTimeout(time.Duration(cfg.Vault.Timeout)),
		StoreTimeout:     serviceStoreTimeout,
		AuditTimeout:     serviceAuditTimeout,
		RefusalLimits:    cfg.RefusalLimit.limits(),
		IntrospectLimits: cfg.IntrospectLimit.limits(),
		// The iss of jwtMinter's JWTs: one presented as an identity token
		// whose issuance the store lost is refused (unknown_credential).
		Issuer: cfg.PublicURL,
	})
	if err != nil {
		return err
	}
	rt.svc = svc
	if every := svc.RefusalSummaryEvery(); every > 0 {
		// Summaries of suppressed refusals; the last ones are written when
		// it stops, before the audit sink closes.
		rt.goBackground(ctx, func(ctx context.Context) error {
			t := time.NewTicker(every)
			defer t.Stop()
			return svc.RunRefusalSummaries(ctx, t.C)
		})
	}

	reg := rt.reg
	px, err := proxy.New(proxy.Options{Service: svc, Secrets: kv, Logger: log, PublicURL: cfg.PublicURL,
		Hosts: []string{cfg.Listen}, Registerer: reg})
	if err != nil {
		return err
	}
	rt.closers = append(rt.closers, func() error { px.CloseIdleConnections(); return nil })
	traceSrc, err := trace.NewLive(trace.LiveOptions{Path: cfg.Audit.File, Store: svcStore, Logger: log,
		Policy: func() *policies.Policy { return rt.state.Load().pol }})
	if err != nil {
		return err
	}
	api, err := httpapi.New(httpapi.Options{
		Service: svc, Keys: rt.keys, PublicURL: cfg.PublicURL, Logger: log, Registry: reg,
		TrustedProxies: cfg.trustedProxies(),
		Ready:          rt.ready,
		Extra: func(mux *http.ServeMux, s *httpapi.Server) {
			httpapi.RegisterAdmin(mux, s)
			httpapi.RegisterTrace(mux, s, traceSrc)
			px.Register(mux, s)
		},
	})
	if err != nil {
		return err
	}
	rt.api = api
	rt.waiting("the revocation worker and the token reconciliation (store, Vault)")
	if err := rt.startRevocationWorker(ctx, reg); err != nil {
		return err
	}
	if err := rt.startReconciler(ctx, e); err != nil {
		return err
	}
	rt.waiting("the start event to be durable (audit.file)")
	if err := rt.auditPolicyLoad(ctx, pol, "start", nil, rt.keys.Retiring()); err != nil {
		return err
	}
	// The loops that write audit events start after the start event: an
	// event of theirs before it (a clock_skew at once, a pending
	// revocation's result) is among the lines no checkpoint covers before
	// the start event, which records only the lines the sink adopted, and
	// audit verify warns of such lines as adopted ones (unrecorded_resumed).
	for _, fn := range rt.afterStart {
		rt.goBackground(ctx, fn)
	}
	rt.afterStart = nil
	if rt.keepStoreMarker != nil {
		// Only now: a start-up failing before this leaves the marker as
		// it was, and the next attempt reports the loss again.
		rt.waiting("the store's deployment id kept next to the audit log (store, audit.file)")
		rt.keepStoreMarker()
	}
	// The policy file watcher starts once the start's policy_load event is
	// durable: a change seen during the start-up (compared with polStamp,
	// the files as the policy in force was read from) is loaded after it,
	// so the audit log's policy_load events are in the order the policies
	// took effect, the last one naming the policy in force.
	rt.goBackground(ctx, func(ctx context.Context) error { return rt.watchPolicy(ctx, 2*time.Second, polStamp) })
	return nil
}

// maxMintTimeout caps the mint timeout vault.timeout sets: an exchange
// (its mint, the 2 s store write, the 10 s wait for its audit event) must
// end within the server's 90 s WriteTimeout.
const maxMintTimeout = broker.MaxMintTimeout

// mintTimeout is the bound of one mint: the longer of
// broker.DefaultMintTimeout (a mint may make several Vault requests) and
// vault.timeout (one request may take that long), at most maxMintTimeout
// (broker.TimeoutsFor, shared with the e2e harness).
func mintTimeout(vaultTimeout time.Duration) time.Duration {
	return broker.TimeoutsFor(vaultTimeout).Mint
}

// ready checks Vault (its health, and that it accepts the broker's own
// token: a success is kept for a second), the store and the audit sink.
func (rt *brokerRuntime) ready(ctx context.Context) error {
	if err := vaultad.Health(ctx, rt.vault); err != nil {
		return fmt.Errorf("%w: %v", httpapi.ReadyError{Component: "vault"}, err)
	}
	if err := rt.tokenHealth.Check(ctx); err != nil {
		return fmt.Errorf("%w: %v", httpapi.ReadyError{Component: "vault"}, err)
	}
	if err := rt.store.Ping(ctx); err != nil {
		return fmt.Errorf("%w: %v", httpapi.ReadyError{Component: "store"}, err)
	}
	if err := rt.sink.Ping(ctx); err != nil {
		return fmt.Errorf("%w: %v", httpapi.ReadyError{Component: "audit"}, err)
	}
	return nil
}

// newVerifier builds the identity-token verifier for pol's issuers, keeping
// the keys of the verifier in force for the issuers whose key source pol
// leaves unchanged.
func (rt *brokerRuntime) newVerifier(ctx context.Context, pol *policies.Policy) (*authn.Verifier, error) {
	var prev *authn.Verifier
	if st := rt.state.Load(); st != nil {
		prev = st.authn
	}
	// The ca_files as loadServedPolicy's CheckFiles read and checked them,
	// not read again (the file may have changed in between).
	return authn.New(ctx, authn.Options{Issuers: pol.Issuers(), ReadCAFile: pol.CAFile, Logger: rt.log, OnFetch: rt.metrics.onJWKSFetch,
		VerifiedCacheSize: rt.cfg.Authn.VerifiedCacheSize, Previous: prev})
}

// loadServedPolicy loads a policy for the server: validated, and the files
// it names (ca_file) readable, each problem named by policy file and field.
// Its warnings, and those of the dates of its ca_files' certificates, go to
// log.
func loadServedPolicy(path string, log *slog.Logger) (*policies.Policy, error) {
	pol, fileWarnings, err := checkServedPolicy(path, time.Now())
	if err != nil {
		return nil, err
	}
	for _, w := range append(pol.Warnings(), fileWarnings...) {
		log.Warn("policy warning", slog.String("problem", w.Error()))
	}
	return pol, nil
}

// reloadPolicy validates the new policy first and keeps the old one on any
// error; either way a policy_load event records the outcome. A new policy
// takes effect only once its policy_load event is durable: when the audit
// log cannot take it, the policy in force stays (fail closed), so every
// policy that ever served is in the log. Once the shutdown has begun (the
// drain included) no reload starts: it is logged and errReloadShuttingDown
// returned. It returns the reason a reload was not applied.
func (rt *brokerRuntime) reloadPolicy(ctx context.Context, why string) error {
	rt.reloadMu.Lock()
	defer rt.reloadMu.Unlock()
	if rt.shuttingDown.Load() {
		rt.log.Info("policy reload not started: shutting down", slog.String("why", why))
		return errReloadShuttingDown
	}
	pol, err := loadServedPolicy(rt.cfg.Policy, rt.log)
	if err == nil && rt.login != nil {
		// As at start-up: grants a batch token cannot serve are refused.
		err = checkTokenType(rt.login.Status().TokenType, pol)
	}
	switch {
	case err == nil && rt.pki != nil:
		// As at start-up: pki grants whose role sets no_store=true.
		err = rt.pki.CheckRoles(ctx, pol)
	case err == nil && rt.vault != nil:
		err = vaultad.CheckPKIRoles(ctx, rt.vault, pol, rt.log)
	}
	var (
		v      *authn.Verifier
		stored map[string]time.Time
		aerr   error // the policy_load event of a policy that loaded could not be written
	)
	if err == nil {
		v, err = rt.newVerifier(ctx, pol)
		if err == nil {
			// The new key list is served once the event naming its
			// retiring keys is durable, just before the policy.
			stored, _ = rt.keys.Stored(ctx)
			err = rt.keys.Update(jwks.SigningKeys(pol), stored, func(retiring map[string]time.Time) error {
				aerr = rt.auditPolicyLoad(ctx, pol, why, nil, retiring)
				return aerr
			})
		}
	}
	if err != nil && v != nil {
		v.Close() // never served
	}
	if err != nil && aerr == nil {
		rt.metrics.policyReloads.WithLabelValues("error").Inc()
		rt.log.Error("policy reload failed; keeping the policy in force", slog.String("why", why), slog.String("error", err.Error()))
		if aerr := rt.auditPolicyLoad(ctx, pol, why, err, nil); aerr != nil {
			rt.log.Error("audit policy_load failed", slog.String("error", aerr.Error()))
		}
		return err
	}
	if aerr != nil {
		rt.metrics.policyReloads.WithLabelValues("error").Inc()
		rt.log.Error("policy reload not applied: its policy_load audit event could not be written; keeping the policy in force",
			slog.String("why", why), slog.String("policy_hash", pol.Hash()), slog.String("error", aerr.Error()))
		return fmt.Errorf("audit policy_load: %w", aerr)
	}
	rt.setState(&policyState{pol: pol, authn: v})
	rt.keys.Record(ctx, stored)
	rt.metrics.setPolicy(pol.Hash())
	rt.metrics.policyReloads.WithLabelValues("ok").Inc()
	rt.log.Info("policy reloaded", slog.String("why", why), slog.String("policy_hash", pol.Hash()))
	return nil
}

// errReloadShuttingDown is reloadPolicy's answer once the shutdown has
// begun.
var errReloadShuttingDown = errors.New("policy reload not started: shutting down")

// auditPolicyLoad writes the policy_load event of pol (loadErr: why it was
// not loaded). retiring are the transit keys the JWKS keeps serving although
// pol names them no more (jwks.Keys.Retiring): details.retiring_keys
// gives each one's time of leaving, RFC 3339 UTC.
func (rt *brokerRuntime) auditPolicyLoad(ctx context.Context, pol *policies.Policy, why string, loadErr error, retiring map[string]time.Time) error {
	details := map[string]any{"path": rt.cfg.Policy, "trigger": why}
	resumed := false
	if r := rt.sink.UnsignedResumed(); r != nil && why == "start" {
		resumed = true
		// The lines no checkpoint covered when the sink resumed its
		// chain, which its next checkpoint signs as its own: said in the
		// file, where that checkpoint covers it too (audit verify
		// reports it), not only in the broker's log.
		details[audit.DetailUnsignedResumed] = unsignedResumedDetail(r)
	}
	ev := &audit.Event{Type: audit.TypePolicyLoad, Details: details}
	if pol != nil && loadErr == nil {
		details["hash"] = pol.Hash()
		files := map[string]string{}
		for _, s := range pol.Sources() {
			files[s.Path] = s.SHA256
		}
		details["files"] = files
		if len(retiring) > 0 {
			keys := make(map[string]string, len(retiring))
			for name, until := range retiring {
				keys[name] = until.UTC().Format(time.RFC3339Nano)
			}
			details["retiring_keys"] = keys
		}
		ev.Outcome = &audit.Outcome{Status: 200}
	} else {
		ev.Outcome = &audit.Outcome{Status: 400, Error: "invalid_policy", Reason: truncate(loadErr.Error(), 2000)}
	}
	if err := rt.sink.Append(context.WithoutCancel(ctx), ev); err != nil {
		return err
	}
	if resumed {
		// Durable: the sink's checkpoints, held until now, may sign
		// the lines it adopted (auditfile.Options.RecordResumed).
		rt.sink.ResumedRecorded()
	}
	return nil
}

// The audit sink checks, at Open, a transit checkpoint line against the
// transit key's versions (a forged one does not end the lines it adopts).
var _ auditfile.OwnVerifier = (*vaultad.TransitCheckpointSigner)(nil)

// unsignedResumedDetail is the start event's audit.DetailUnsignedResumed
// for the range r the sink adopted when it opened the file.
func unsignedResumedDetail(r *auditfile.UnsignedRange) map[string]any {
	d := map[string]any{"first_seq": r.FirstSeq, "last_seq": r.LastSeq, "lines": r.Lines, "last_checkpoint_seq": r.LastCheckpointSeq}
	if r.TooLongLines > 0 {
		// Lines too long to read, counted in lines (audit verify
		// reports each as a problem).
		d["too_long_lines"] = r.TooLongLines
	}
	return d
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// initPolicy serves pol first, with its verifier v, and builds the JWKS key
// list of its jwt grants (and of the checkpoint transit key, so verifiers
// of checkpoints find it in the JWKS), read from Vault transit and recorded
// in rt.store (when set; wire sets it once the store is ready).
func (rt *brokerRuntime) initPolicy(pol *policies.Policy, v *authn.Verifier) error {
	var always []string
	if k := rt.cfg.Audit.CheckpointTransitKey; k != "" {
		always = append(always, k)
	}
	keys, err := jwks.New(jwks.Options{
		Source: func(names []string) (broker.PublicKeySource, error) {
			return vaultad.NewTransitKeys(vaultad.TransitKeysOptions{Client: rt.vault, Keys: names, Log: rt.log})
		},
		ValidName: vaultad.TransitKeyName, Always: always, Store: rt.store, Log: rt.log, Now: rt.now,
	}, jwks.SigningKeys(pol))
	if err != nil {
		return err
	}
	rt.keys = keys
	rt.setState(&policyState{pol: pol, authn: v})
	return nil
}

// setState puts st in force and retires the verifier it replaces (the
// requests holding it finish with it, its fetches included; the idle
// connections no verifier in force shares any more are closed:
// authn.Verifier.Retire, which does not wait), or closes st's own verifier
// once closeVerifiers has run.
func (rt *brokerRuntime) setState(st *policyState) {
	rt.verifierMu.Lock()
	old := rt.state.Swap(st)
	closed := rt.verifiersClosed
	rt.verifierMu.Unlock()
	if old != nil && old.authn != st.authn {
		old.authn.Retire()
	}
	if closed {
		st.authn.Close()
	}
}

// closeVerifiers closes the verifier in force, and any a reload puts in
// force after it (setState): the shutdown's closer, so no JWKS fetch runs
// (or logs) past it and no keep-alive connection to an issuer stays.
func (rt *brokerRuntime) closeVerifiers() error {
	rt.verifierMu.Lock()
	rt.verifiersClosed = true
	st := rt.state.Load()
	rt.verifierMu.Unlock()
	if st != nil {
		st.authn.Close()
	}
	return nil
}

// checkTokenType fails when the broker's Vault token is a batch token and
// pol has grants that need it to create tokens: Vault refuses every token
// creation made with a batch token ("batch tokens cannot create more
// tokens"), so each vault_token grant and each vault_dynamic grant (its
// reader token) would answer 503.
func checkTokenType(tokenType string, pol *policies.Policy) error {
	if tokenType != vaultad.TokenTypeBatch {
		return nil
	}
	var names []string
	for _, g := range pol.Grants() {
		if g.VaultToken != nil || g.VaultDynamic != nil {
			names = append(names, g.Name)
		}
	}
	if len(names) == 0 {
		return nil
	}
	return fmt.Errorf("vault login: the broker's Vault token is a batch token, which cannot create tokens, so grants %s (vault_token, vault_dynamic) cannot be served: give the broker a service token (token_type=service on its AppRole or Kubernetes role, or a service token in vault.token_file / VAULT_TOKEN)",
		strings.Join(names, ", "))
}
