package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/adapters/redisstore"
	"github.com/keytrail/keytrail/adapters/vault/devserver"
	"github.com/keytrail/keytrail/broker"
)

// probes are the CPU probes of a scenario: the given brokers, Vault,
// Redis and this process (load generator, upstreams, issuer).
func (b *benchRunner) probes(brokers ...*benchBroker) []cpuProbe {
	self := os.Getpid()
	return []cpuProbe{
		{name: "broker", pids: func() []int {
			var p []int
			for _, br := range brokers {
				p = append(p, br.pid())
			}
			return p
		}},
		{name: "vault", pids: func() []int { return []int{b.env.vault.PID()} }},
		{name: "redis", pids: func() []int { return []int{b.env.redis.pid()} }},
		{name: "bench", pids: func() []int { return []int{self} }},
		// The hypervisor's share: CPU time this virtual machine's CPUs
		// wanted and did not get, all CPUs together.
		{name: "steal", total: func() time.Duration {
			t, _ := machineCPU()
			return t.steal
		}},
	}
}

// auditOf reads the audit writes of the given brokers.
func (b *benchRunner) auditOf(brokers ...*benchBroker) *auditWrites {
	a := &auditWrites{client: b.env.client}
	for _, br := range brokers {
		a.urls = append(a.urls, br.url)
	}
	return a
}

// getOp sends GET u with a bearer token and expects 200.
func (b *benchRunner) getOp(u, bearer string) benchOp {
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return err
		}
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		return b.env.do(req, 200)
	}
}

// exchangeOp exchanges a rotating workload identity token for grant (64
// tokens: after the first round, each is one the broker has verified before,
// as when a workload renews or asks for a second grant).
func (b *benchRunner) exchangeOp(base, grant string) benchOp {
	return func(ctx context.Context) error {
		_, err := b.env.exchange(ctx, base, grant, b.env.nextToken())
		return err
	}
}

// newTokenExchangeOp exchanges an identity token never seen before for
// grant (a new session each time, as at a workload's start-up): the broker
// checks its signature. The tokens are signed (ES256) ahead of each run by
// the returned prepare, so that the load generator does not spend, on the
// CPUs the broker is measured on, an identity provider's work; a run that
// outlasts the pool signs the rest as it goes, counted in the pool.
func (b *benchRunner) newTokenExchangeOp(base, grant string) (benchOp, func(n int) error, *tokenPool) {
	pool := &tokenPool{sign: func() (string, error) {
		return b.env.identity(map[string]any{"sub": benchSubject, "session": "new-" + strconv.FormatUint(b.env.tokenNo.Add(1), 10)})
	}}
	op := func(ctx context.Context) error {
		tok, err := pool.take()
		if err != nil {
			return err
		}
		_, err = b.env.exchange(ctx, base, grant, tok)
		return err
	}
	return op, pool.fill, pool
}

// tokenPool holds identity tokens signed ahead of a run; each is taken once.
type tokenPool struct {
	sign   func() (string, error)
	mu     sync.Mutex
	toks   []string
	inline atomic.Int64 // tokens signed by take: the pool was empty
}

// fill signs tokens until the pool holds n, on every CPU.
func (p *tokenPool) fill(n int) error {
	p.mu.Lock()
	need := n - len(p.toks)
	p.mu.Unlock()
	if need <= 0 {
		return nil
	}
	workers := runtime.GOMAXPROCS(0)
	out := make([][]string, workers)
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := w; i < need; i += workers {
				tok, err := p.sign()
				if err != nil {
					errs[w] = err
					return
				}
				out[w] = append(out[w], tok)
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	p.mu.Lock()
	for _, toks := range out {
		p.toks = append(p.toks, toks...)
	}
	p.mu.Unlock()
	return nil
}

// take returns a token from the pool, or signs one when it is empty.
func (p *tokenPool) take() (string, error) {
	p.mu.Lock()
	if n := len(p.toks); n > 0 {
		tok := p.toks[n-1]
		p.toks = p.toks[:n-1]
		p.mu.Unlock()
		return tok, nil
	}
	p.mu.Unlock()
	p.inline.Add(1)
	return p.sign()
}

func (b *benchRunner) credential(ctx context.Context, br *benchBroker, grant string) (string, error) {
	ta, err := b.env.exchange(ctx, br.url, grant, b.env.nextToken())
	if err != nil {
		return "", fmt.Errorf("broker %s: %w", br.setup.name, err)
	}
	return ta.AccessToken, nil
}

// scenarioA: a request proxied through keytrail vs the same request sent
// directly to the same upstream, trivial and 1 ms upstreams.
func (b *benchRunner) scenarioA(ctx context.Context) (*scenarioResult, error) {
	res := &scenarioResult{ID: "A", Title: "Proxied use vs direct, same upstream, same request"}
	m, err := b.env.mainBroker(ctx)
	if err != nil {
		return nil, err
	}
	for _, c := range []struct{ id, title, grant, upstream string }{
		{"A1", "trivial upstream", benchGrantProxy, b.env.upstream},
		{"A2", "upstream taking 1 ms", benchGrantProxy1, b.env.upstream1},
	} {
		cred, err := b.credential(ctx, m, c.grant)
		if err != nil {
			return nil, err
		}
		cmp, err := b.compare(ctx, comparisonSpec{
			id: c.id, title: c.title, probes: b.probes(m), audit: b.auditOf(m), light: true,
			variants: []benchVariant{
				{name: "direct", op: b.getOp(c.upstream+benchUpstreamPath, b.env.secret)},
				{name: "proxied", op: b.getOp(m.url+"/v1/proxy/"+c.grant+benchUpstreamPath, cred)},
			},
		})
		if err != nil {
			return nil, err
		}
		res.Comparisons = append(res.Comparisons, cmp)
		p := cmp.variant("proxied")
		res.Targets = append(res.Targets,
			targetResult{c.id + " added p50 at half the proxied max rate", "≤ 250µs", fmtSigned(p.AddedP50us), p.AddedP50us <= 250},
			targetResult{c.id + " added p99 at half the proxied max rate", "≤ 1ms", fmtSigned(p.AddedP99us), p.AddedP99us <= 1000},
			targetResult{c.id + " broker CPU per proxied request at the maximum rate (closed loop)", "≤ 150µs", fmtUs(p.Closed.CPUusPerOp["broker"]), p.Closed.CPUusPerOp["broker"] > 0 && p.Closed.CPUusPerOp["broker"] <= 150},
			targetResult{c.id + " broker CPU per proxied request at half the maximum rate (open loop: fewer events per fsync, fixed costs shared by fewer requests)", "≤ 150µs", fmtUs(p.Open.CPUusPerOp["broker"]), p.Open.CPUusPerOp["broker"] > 0 && p.Open.CPUusPerOp["broker"] <= 150},
		)
		if c.id == "A2" {
			res.Targets = append(res.Targets, targetResult{"A2 proxied throughput vs direct", "≥ 0.90x", fmt.Sprintf("%.2fx", p.ThroughputRatio), p.ThroughputRatio >= 0.9})
		}
	}
	res.Notes = append(res.Notes,
		"the load generator, the upstreams, Redis, Vault and the broker share the machine's CPUs: the proxied max/s is bounded by all of them together, and the direct max/s by the generator and upstream alone",
		"per proxied request the broker answers the credential and block checks from its revocation cache while fresh (Redis only on a cache miss: fingerprint -> issuance id, the issuance) and makes two audit events durable (use before forwarding, use_result after the response is sent)")
	if cal := b.report.Calibration; cal != nil {
		what, p50, p99 := cal.durableWrite()
		res.Notes = append(res.Notes, fmt.Sprintf("the use event is durable before the request is forwarded (fail closed): on this disk %s alone takes p50 %s and p99 %s (the machine line above), against the 250µs added p50 and 1ms added p99 allowed",
			what, fmtUs(p50), fmtUs(p99)))
	}
	for _, c := range res.Comparisons {
		if p := c.variant("proxied"); p.Open.AuditSyncMeanUs > 0 {
			n := fmt.Sprintf("%s: under this run's load each durable audit write took %s (mean per batch) at half the maximum", c.ID, fmtUs(p.Open.AuditSyncMeanUs))
			if p.Light != nil && p.Light.AuditSyncMeanUs > 0 {
				n += fmt.Sprintf(" and %s at light load", fmtUs(p.Light.AuditSyncMeanUs))
			}
			res.Notes = append(res.Notes, n+"; a use event waits for the batch being written, then its own")
		}
	}
	return res, nil
}

// scenarioB: an exchange vs the raw Vault call it makes.
func (b *benchRunner) scenarioB(ctx context.Context) (*scenarioResult, error) {
	res := &scenarioResult{ID: "B", Title: "Exchange vs the raw Vault call it makes (same Vault, same concurrency)"}
	m, err := b.env.mainBroker(ctx)
	if err != nil {
		return nil, err
	}
	tokenCreate := func(ctx context.Context) error {
		body, err := json.Marshal(map[string]any{
			"type": "service", "policies": []string{benchVaultPolicy}, "ttl": "900s", "explicit_max_ttl": "900s",
			"renewable": false, "num_uses": 0, "display_name": "keytrail-" + benchWorkload,
			"meta": map[string]string{
				"workload": benchWorkload, "owner": "team-bench", "session_id": broker.SessionID("bench", "claim:bench-0"),
				"issuance_id": broker.NewID(broker.PrefixIssuance), "grant": benchGrantVault,
			},
		})
		if err != nil {
			return err
		}
		return b.env.vaultWrite(ctx, "auth/token/create-orphan", body)
	}
	transitSign := func(ctx context.Context) error {
		now := time.Now().Unix()
		tok := jwt.NewWithClaims(jwt.SigningMethodES256, jwt.MapClaims{
			"iss": "http://127.0.0.1", "sub": benchWorkload, "aud": "bench-api", "owner": "team-bench",
			"sid": broker.SessionID("bench", "claim:bench-0"), "jti": broker.NewID(broker.PrefixIssuance),
			"grant": benchGrantJWT, "iat": now, "nbf": now, "exp": now + 300,
		})
		tok.Header["kid"] = devserver.SigningKey + ":v1"
		signing, err := tok.SigningString()
		if err != nil {
			return err
		}
		body, err := json.Marshal(map[string]any{
			"input": base64.StdEncoding.EncodeToString([]byte(signing)), "key_version": 1,
			"hash_algorithm": "sha2-256", "marshaling_algorithm": "jws",
		})
		if err != nil {
			return err
		}
		return b.env.vaultWrite(ctx, devserver.TransitMount+"/sign/"+devserver.SigningKey, body)
	}
	for _, c := range []struct {
		id, title, raw, grant string
		rawOp                 benchOp
	}{
		{"B1", "vault_token grant vs auth/token/create-orphan with the same policies, TTL and meta", "raw token create", benchGrantVault, tokenCreate},
		{"B2", "jwt grant (ES256) vs transit/sign with the same key", "raw transit sign", benchGrantJWT, transitSign},
	} {
		cmp, err := b.compare(ctx, comparisonSpec{
			id: c.id, title: c.title, probes: b.probes(m), audit: b.auditOf(m), light: true,
			variants: []benchVariant{{name: c.raw, op: c.rawOp}, {name: "exchange", op: b.exchangeOp(m.url, c.grant)}},
		})
		if err != nil {
			return nil, err
		}
		res.Comparisons = append(res.Comparisons, cmp)
		x := cmp.variant("exchange")
		res.Targets = append(res.Targets,
			targetResult{c.id + " exchange throughput vs raw Vault", "≥ 0.80x", fmt.Sprintf("%.2fx", x.ThroughputRatio), x.ThroughputRatio >= 0.8},
			targetResult{c.id + " added p50 at half the slower variant's max rate", "≤ 1ms", fmtSigned(x.AddedP50us), x.AddedP50us <= 1000},
			targetResult{c.id + " added p99 at half the slower variant's max rate", "≤ 3ms", fmtSigned(x.AddedP99us), x.AddedP99us <= 3000},
		)
		if x.Light != nil {
			res.Targets = append(res.Targets,
				targetResult{c.id + " added p50 at light load (a twentieth of the max rate)", "≤ 1ms", fmtSigned(x.LightAddedP50us), x.LightAddedP50us <= 1000},
				targetResult{c.id + " added p99 at light load (a twentieth of the max rate)", "≤ 3ms", fmtSigned(x.LightAddedP99us), x.LightAddedP99us <= 3000},
			)
		}
	}
	res.Notes = append(res.Notes,
		"an exchange also verifies the ES256 identity token, evaluates policy, reads the workload's block and stores the issuance in Redis, and makes its audit event durable (group commit); the raw call is the Vault request alone, sent by the load generator with the root token",
		"Vault runs as a dev server (in-memory storage) with a file audit device; its own CPU per operation is in the 'vault' column")
	return res, nil
}

// scenarioC: the broker's own ceiling, Vault out of the loop: a proxy
// grant's exchange is minted by the broker itself (a random credential),
// so what remains is HTTP, identity-token verification, policy, Redis and
// the durable audit event.
func (b *benchRunner) scenarioC(ctx context.Context) (*scenarioResult, error) {
	res := &scenarioResult{ID: "C", Title: "The broker's own ceiling (Vault out of the loop)"}
	m, err := b.env.mainBroker(ctx)
	if err != nil {
		return nil, err
	}
	const reused, fresh = "exchange (proxy)", "exchange (proxy, new token)"
	freshOp, freshPrepare, pool := b.newTokenExchangeOp(m.url, benchGrantProxy)
	cmp, err := b.compare(ctx, comparisonSpec{
		id: "C1", title: "exchange of a proxy grant (minted in the broker, no Vault call) vs GET /healthz (the HTTP floor)",
		probes: b.probes(m), audit: b.auditOf(m),
		variants: []benchVariant{
			{name: "healthz", op: b.getOp(m.url+"/healthz", "")},
			{name: reused, op: b.exchangeOp(m.url, benchGrantProxy)},
			{name: fresh, op: freshOp, prepare: freshPrepare},
		},
	})
	if err != nil {
		return nil, err
	}
	res.Comparisons = append(res.Comparisons, cmp)
	cpuReused := cmp.variant(reused).Closed.CPUusPerOp["broker"]
	cpuFresh := cmp.variant(fresh).Closed.CPUusPerOp["broker"]
	ceiling := 0.0
	if cpuFresh > 0 {
		ceiling = float64(runtime.NumCPU()) * 1e6 / cpuFresh
	}
	res.Targets = append(res.Targets,
		targetResult{"C1 broker CPU per exchange at max rate, identity token seen before (HTTP, verified-token cache, policy, Redis, durable audit)", "≤ 250µs", fmtUs(cpuReused), cpuReused > 0 && cpuReused <= 250},
		targetResult{"C1 broker CPU per exchange at max rate, new identity token (the same plus an ES256 signature check)", "≤ 250µs", fmtUs(cpuFresh), cpuFresh > 0 && cpuFresh <= 250},
		targetResult{fmt.Sprintf("C1 exchanges/s the broker's CPU allows on %d cores, new tokens (cores / CPU per exchange)", runtime.NumCPU()), "≥ 5000/s", fmt.Sprintf("%.0f/s", ceiling), ceiling >= 5000},
	)
	res.Notes = append(res.Notes, "\""+reused+"\" rotates through 64 identity tokens (each verified once, then answered by the verified-token cache); \""+fresh+"\" presents a new token per request, so every exchange pays for a signature check (the load generator signs them before each run, not during it)")
	if n := pool.inline.Load(); n > 0 {
		res.Notes = append(res.Notes, fmt.Sprintf("%q: %d tokens were signed during the runs (the pool signed ahead ran out), by the load generator on the same CPUs", fresh, n))
	}
	res.Notes = append(res.Notes, "CPU per operation is the broker process's user+system time from /proc/<pid>/stat (10 ms ticks) over the run, divided by the requests sent")
	return res, nil
}

// scenarioD: durability and Redis costs.
// vaultKindsNote adds to C's notes the broker's CPU per exchange of the
// Vault-backed kinds, measured in B: the same figure as C's, Vault's wait
// excluded. It runs once every scenario has, since B runs after C.
func vaultKindsNote(scenarios []*scenarioResult) {
	var b, c *scenarioResult
	for _, s := range scenarios {
		switch s.ID {
		case "B":
			b = s
		case "C":
			c = s
		}
	}
	if b == nil || c == nil {
		return
	}
	for _, cmp := range b.Comparisons {
		v := cmp.variant("exchange")
		c.Notes = append(c.Notes, fmt.Sprintf("%s: broker CPU per exchange (Vault wait excluded: CPU time, not wall time) %s at max rate, %s at half rate",
			cmp.ID+" "+strings.SplitN(cmp.Title, " ", 2)[0], fmtUs(v.Closed.CPUusPerOp["broker"]), fmtUs(v.Open.CPUusPerOp["broker"])))
	}
}

// fellBehindNotes names the variants whose open-loop runs (at half rate or
// at light load) fell behind in some of their reps repetitions.
func fellBehindNotes(comparisons []*comparisonResult, reps int) []string {
	var notes []string
	for _, c := range comparisons {
		for _, v := range c.Variants {
			for _, ph := range []struct {
				name string
				s    *phaseSummary
				rate float64
			}{{"open loop", &v.Open, c.OpenRate}, {"light-load open loop", v.Light, c.LightRate}} {
				if ph.s == nil || ph.s.FellBehindRuns == 0 {
					continue
				}
				notes = append(notes, fmt.Sprintf("%s %s: the %s fell behind its rate in %d of %d runs (the slowest completed %.0f/s of %.0f/s): their latencies include the queue that built up, and the medians mix them with the runs that kept up",
					c.ID, v.Variant, ph.name, ph.s.FellBehindRuns, reps, ph.s.SlowestRunThroughput, ph.rate))
			}
		}
	}
	return notes
}

func (b *benchRunner) scenarioD(ctx context.Context) (*scenarioResult, error) {
	res := &scenarioResult{ID: "D", Title: "Durability and Redis costs"}
	m, err := b.env.mainBroker(ctx)
	if err != nil {
		return nil, err
	}
	noFsync, err := b.env.startBroker(ctx, brokerSetup{name: "audit-nofsync", noFsync: true})
	if err != nil {
		return nil, err
	}
	defer noFsync.stop(30 * time.Second)
	fsync, err := b.env.startBroker(ctx, brokerSetup{name: "audit-fsync", noJournal: true})
	if err != nil {
		return nil, err
	}
	defer fsync.stop(30 * time.Second)
	each, err := b.env.startBroker(ctx, brokerSetup{name: "audit-fsync-each", maxBatch: 1, noJournal: true})
	if err != nil {
		return nil, err
	}
	defer each.stop(30 * time.Second)
	cmp, err := b.compare(ctx, comparisonSpec{
		id: "D1", title: "audit log: written without fsync vs group commit (journal; fsync) vs fsync per record (proxy-grant exchange: one audit event each)",
		probes: b.probes(noFsync, m, fsync, each),
		// Each variant's audit figures are its own broker's: the others
		// are idle then, but not silent (checkpoints, the revocation
		// worker).
		variants: []benchVariant{
			{name: "no fsync", op: b.exchangeOp(noFsync.url, benchGrantProxy), audit: b.auditOf(noFsync)},
			{name: "group commit", op: b.exchangeOp(m.url, benchGrantProxy), audit: b.auditOf(m)},
			{name: "group commit, fsync", op: b.exchangeOp(fsync.url, benchGrantProxy), audit: b.auditOf(fsync)},
			{name: "fsync per record", op: b.exchangeOp(each.url, benchGrantProxy), audit: b.auditOf(each)},
		},
	})
	if err != nil {
		return nil, err
	}
	res.Comparisons = append(res.Comparisons, cmp)
	g := cmp.variant("group commit")
	res.Targets = append(res.Targets, targetResult{"D1 group-commit throughput vs audit without fsync", "≥ 0.80x", fmt.Sprintf("%.2fx", g.ThroughputRatio), g.ThroughputRatio >= 0.8})
	noFsync.stop(30 * time.Second)
	fsync.stop(30 * time.Second)
	each.stop(30 * time.Second)

	mem, err := b.env.startBroker(ctx, brokerSetup{name: "memstore", memStore: true})
	if err != nil {
		return nil, err
	}
	defer mem.stop(30 * time.Second)
	credMem, err := b.credential(ctx, mem, benchGrantProxy)
	if err != nil {
		return nil, err
	}
	credRedis, err := b.credential(ctx, m, benchGrantProxy)
	if err != nil {
		return nil, err
	}
	path := "/v1/proxy/" + benchGrantProxy + benchUpstreamPath
	cmp, err = b.compare(ctx, comparisonSpec{
		id: "D2", title: "proxied request, revocation state from the in-memory store vs Redis (trivial upstream)",
		probes: b.probes(mem, m), audit: b.auditOf(mem, m),
		variants: []benchVariant{
			{name: "memory store", op: b.getOp(mem.url+path, credMem)},
			{name: "redis store", op: b.getOp(m.url+path, credRedis)},
		},
	})
	if err != nil {
		return nil, err
	}
	res.Comparisons = append(res.Comparisons, cmp)
	r := cmp.variant("redis store")
	res.Targets = append(res.Targets, targetResult{"D2 Redis-backed revocation check, added p50 per proxied request", "≤ 50µs", fmtSigned(r.AddedP50us), r.AddedP50us <= 50})
	mem.stop(30 * time.Second)

	d3, err := b.storeComparison(ctx)
	if err != nil {
		return nil, err
	}
	res.Comparisons = append(res.Comparisons, d3)
	res.Notes = append(res.Notes,
		"'no fsync' (audit.fsync: false) stands in for audit off: the broker cannot run without an audit log; it still encodes, hashes and writes every event",
		"group commit is the default: up to 256 events per batch, each batch made durable by one direct write into the audit journal (audit.journal, docs/RELIABILITY.md); 'group commit, fsync' is audit.journal: false (each batch fsyncs the audit file); 'fsync per record' is that with audit.max_batch: 1",
		"D3 calls the stores in this process, one caller at a time: it isolates the store round trips the broker makes per proxied request (FindIssuance by fingerprint, then GetBlock)")
	return res, nil
}

// storeComparison is D3: FindIssuance + GetBlock against memstore and
// against redisstore on the bench's Redis.
func (b *benchRunner) storeComparison(ctx context.Context) (*comparisonResult, error) {
	rs, err := redisstore.New(ctx, redisstore.Options{URL: b.env.redisURL, Prefix: "keytrail-bench-d3:", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	ms := memstore.New(time.Now)
	const n = 1000
	fps := make([]string, n)
	now := time.Now()
	for i := range n {
		is := &broker.Issuance{
			ID: broker.NewID(broker.PrefixIssuance), Workload: benchWorkload, Owner: "team-bench",
			SessionID: broker.SessionID("bench", fmt.Sprint("claim:d3-", i)), Grant: benchGrantProxy, Kind: broker.KindProxy,
			Identity: broker.IdentityRef{Iss: b.env.issuer.URL, Sub: benchSubject}, IssuedAt: now, ExpiresAt: now.Add(time.Hour),
			Refs: broker.CredentialRefs{Fingerprint: broker.Fingerprint(fmt.Sprint("ktp_d3_", i)), ExpiresAt: now.Add(time.Hour)},
		}
		fps[i] = is.Refs.Fingerprint
		for _, s := range []broker.Store{ms, rs} {
			if err := s.PutIssuance(ctx, is); err != nil {
				return nil, err
			}
		}
	}
	var mu sync.Mutex
	next := 0
	pick := func() string {
		mu.Lock()
		defer mu.Unlock()
		next = (next + 1) % n
		return fps[next]
	}
	check := func(s broker.Store) benchOp {
		return func(ctx context.Context) error {
			is, err := s.FindIssuance(ctx, broker.RefFingerprint, pick())
			if err != nil {
				return err
			}
			if _, err := s.GetBlock(ctx, is.Workload); !errors.Is(err, broker.ErrNotFound) {
				return fmt.Errorf("GetBlock = %v, want not found", err)
			}
			return nil
		}
	}
	return b.compare(ctx, comparisonSpec{
		id: "D3", title: "the store calls of one proxied request (FindIssuance + GetBlock), in process, one caller",
		probes: b.probes(), workers: 1,
		variants: []benchVariant{{name: "memstore", op: check(ms)}, {name: "redisstore", op: check(rs)}},
	})
}

// propagationResult is scenario E's measurement.
type propagationResult struct {
	Lines  []propagationLine `json:"lines"`
	Errors int               `json:"errors"`
}

type propagationLine struct {
	Name  string  `json:"name"`
	N     int     `json:"n"`
	P50us float64 `json:"p50_us"`
	P99us float64 `json:"p99_us"`
	MaxUs float64 `json:"max_us"`
}

// scenarioE: revocation propagation across three instances sharing Redis.
// Credentials are issued by instance A, revoked through instance B, and A
// and C are asked (introspection) until they say inactive; Vault is asked
// (lookup-self) until it refuses the token. Times run from the moment the
// revoke request is sent.
func (b *benchRunner) scenarioE(ctx context.Context) (*scenarioResult, error) {
	res := &scenarioResult{ID: "E", Title: "Revocation propagation across three instances (one Redis, one Vault)"}
	a, err := b.env.mainBroker(ctx)
	if err != nil {
		return nil, err
	}
	nb, err := b.env.startBroker(ctx, brokerSetup{name: "node-b"})
	if err != nil {
		return nil, err
	}
	defer nb.stop(30 * time.Second)
	nc, err := b.env.startBroker(ctx, brokerSetup{name: "node-c"})
	if err != nil {
		return nil, err
	}
	defer nc.stop(30 * time.Second)

	var mu sync.Mutex
	lat := map[string][]time.Duration{}
	record := func(name string, d time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		lat[name] = append(lat[name], d)
	}
	errs := 0
	var firstErr error
	fail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		errs++
		if firstErr == nil {
			firstErr = err
		}
	}
	checks := []struct {
		name     string
		rejected func(ctx context.Context, tok string) (bool, error)
	}{
		{"introspect on A (issuer)", func(ctx context.Context, tok string) (bool, error) { return b.inactive(ctx, a.url, tok) }},
		{"introspect on C", func(ctx context.Context, tok string) (bool, error) { return b.inactive(ctx, nc.url, tok) }},
		{"vault lookup-self", b.vaultRefuses},
	}
	for rep := 1; rep <= b.o.reps; rep++ {
		type issued struct{ tok, id string }
		var creds []issued
		for i := range b.o.revocations {
			idTok, err := b.env.identity(map[string]any{"sub": benchSubject, "session": fmt.Sprintf("e-%d-%d", rep, i)})
			if err != nil {
				return nil, err
			}
			ta, err := b.env.exchange(ctx, a.url, benchGrantVault, idTok)
			if err != nil {
				return nil, err
			}
			creds = append(creds, issued{ta.AccessToken, ta.IssuanceID})
		}
		for _, cr := range creds {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			t0 := time.Now()
			if err := b.revoke(ctx, nb.url, cr.id); err != nil {
				fail(err)
				continue
			}
			record("revoke request on B", time.Since(t0))
			var wg sync.WaitGroup
			for _, ch := range checks {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						rejected, err := ch.rejected(ctx, cr.tok)
						switch {
						case err != nil:
							fail(fmt.Errorf("%s: %w", ch.name, err))
							return
						case rejected:
							record(ch.name, time.Since(t0))
							return
						case time.Since(t0) > 10*time.Second:
							fail(fmt.Errorf("%s: still active after 10s", ch.name))
							return
						}
					}
				}()
			}
			wg.Wait()
		}
		b.progress("E rep %d/%d: %d revocations, errors so far %d", rep, b.o.reps, len(creds), errs)
	}
	p := &propagationResult{Errors: errs}
	for _, name := range []string{"revoke request on B", checks[0].name, checks[1].name, checks[2].name} {
		ds := lat[name]
		slices.Sort(ds)
		l := propagationLine{Name: name, N: len(ds), P50us: us(percentile(ds, 0.5)), P99us: us(percentile(ds, 0.99))}
		if len(ds) > 0 {
			l.MaxUs = us(ds[len(ds)-1])
		}
		p.Lines = append(p.Lines, l)
	}
	res.Propagation = p
	worst := p.Lines[1]
	for _, l := range p.Lines[2:3] {
		if l.MaxUs > worst.MaxUs {
			worst = l
		}
	}
	for _, l := range p.Lines[1:3] {
		res.Targets = append(res.Targets, targetResult{
			"E " + l.Name + ": p50/p99/max from the revoke request", "≤ 1s each",
			fmt.Sprintf("%s / %s / %s", fmtUs(l.P50us), fmtUs(l.P99us), fmtUs(l.MaxUs)),
			l.N > 0 && l.MaxUs <= 1e6 && errs == 0,
		})
	}
	if firstErr != nil {
		res.Notes = append(res.Notes, "first error: "+truncate(firstErr.Error(), 300))
	}
	res.Notes = append(res.Notes,
		"B stores the revocation before it answers and announces it on Redis pub/sub; each instance's in-memory revocation state (refreshed from Redis every second, updated at once by the announcement) answers the per-request checks while fresh, so the other instances refuse the credential as soon as the announcement arrives and at the latest after one refresh",
		fmt.Sprintf("%d revocations per repetition, each of a Vault token issued by A, one at a time", b.o.revocations))
	return res, nil
}

// inactive introspects tok on base with the admin's identity.
func (b *benchRunner) inactive(ctx context.Context, base, tok string) (bool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/introspect", strings.NewReader(url.Values{"token": {tok}}.Encode()))
	if err != nil {
		return false, err
	}
	req.Header.Set("Authorization", "Bearer "+b.env.admin)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := b.env.client.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	var ans struct {
		Active *bool `json:"active"`
	}
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != 200 || json.Unmarshal(raw, &ans) != nil || ans.Active == nil {
		return false, fmt.Errorf("introspect: %s", resp.Status)
	}
	return !*ans.Active, nil
}

// vaultRefuses asks Vault directly whether tok still works.
func (b *benchRunner) vaultRefuses(ctx context.Context, tok string) (bool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.env.vault.Addr+"/v1/auth/token/lookup-self", nil)
	if err != nil {
		return false, err
	}
	req.Header.Set("X-Vault-Token", tok)
	resp, err := b.env.client.Do(req)
	if err != nil {
		return false, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	switch resp.StatusCode {
	case 200:
		return false, nil
	case 403:
		return true, nil
	}
	return false, fmt.Errorf("vault lookup-self: %s", resp.Status)
}

// revoke revokes one issuance through base's admin API.
func (b *benchRunner) revoke(ctx context.Context, base, issuanceID string) error {
	body, _ := json.Marshal(map[string]any{"issuance_id": issuanceID, "reason": "keytrail bench"})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/admin/revoke", strings.NewReader(string(body)))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+b.env.admin)
	req.Header.Set("Content-Type", "application/json")
	resp, err := b.env.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var rc struct {
		Status string `json:"status"`
	}
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != 200 || json.Unmarshal(raw, &rc) != nil || rc.Status != "revoked" {
		return fmt.Errorf("revoke: %s %s", resp.Status, rc.Status)
	}
	return nil
}
