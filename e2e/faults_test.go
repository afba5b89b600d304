package e2e

// Faults (issue #8): each subtest breaks one dependency of a real keytrail
// process (Vault, Redis, the audit file system, an issuer's JWKS endpoint),
// checks that exchanges fail with the right status and no credential, that
// an audit event is written where one can be, and that keytrail recovers
// without a restart once the fault ends.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	vaultad "github.com/keytrail/keytrail/adapters/vault"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/authn/authntest"
	"github.com/keytrail/keytrail/e2e/harness"
)

const faultPolicy = `version: 1
issuers:
  - name: test
    issuer: %[1]s
    jwks_url: %[1]s/jwks.json
    audiences: [keytrail]
    algorithms: [ES256]
    max_token_lifetime: 2h
  - name: dark
    issuer: %[2]s
    jwks_url: %[2]s/jwks.json
    audiences: [keytrail]
    algorithms: [ES256]
    max_token_lifetime: 2h
workloads:
  - name: app
    owner: team-app
    match: {issuer: test, subject_pattern: "app-.*"}
    grants: [app-vault]
  - name: dark-app
    owner: team-app
    match: {issuer: dark, subject: dark-app}
    grants: [app-vault]
grants:
  - name: app-vault
    kind: vault_token
    ttl: 10m
    vault_token: {policies: [payments-read]}
`

// faultStack is one keytrail server with its own policy, issuers and
// configuration, over a Vault the test shares between subtests.
type faultStack struct {
	vault     *harness.Vault
	issuer    *testIssuer
	dark      *testIssuer // an issuer whose JWKS endpoint is down from the start
	broker    *harness.Keytrail
	url       string
	auditPath string
	dir       string
}

type faultOptions struct {
	vaultAddr    string // default the Vault's own address (a relay goes here)
	redisURL     string
	redisAddrs   string // store.addrs (the Sentinel/Cluster form) instead of redis_url
	auditDir     string // default a temporary directory
	vaultTimeout string // vault.timeout, default keytrail's
	auditExtra   string // more lines of the audit section ("  key: value\n")
	env          []string
}

func startIssuer(t testing.TB) *testIssuer {
	t.Helper()
	iss, err := authntest.NewIssuer("ES256")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(iss.Handler())
	t.Cleanup(srv.Close)
	iss.URL = srv.URL
	return &testIssuer{Issuer: iss, url: srv.URL}
}

// setupVaultPolicies writes the Vault policy the grants hand out (again
// after a dev server restart, which starts empty).
func setupVaultPolicies(t testing.TB, v *harness.Vault) {
	t.Helper()
	if err := v.Client.Sys().PutPolicyWithContext(context.Background(), "payments-read",
		`path "secret/data/payments/*" { capabilities = ["read"] }`); err != nil {
		t.Fatalf("vault policy: %v", err)
	}
}

func startFaultStack(t testing.TB, v *harness.Vault, o faultOptions) *faultStack {
	t.Helper()
	s := &faultStack{vault: v, dir: t.TempDir()}
	s.issuer = startIssuer(t)
	s.dark = startIssuer(t)
	s.dark.SetDown(true)
	polDir := filepath.Join(s.dir, "policies")
	if err := os.MkdirAll(polDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(polDir, "faults.yaml"), []byte(fmt.Sprintf(faultPolicy, s.issuer.url, s.dark.url)), 0o600); err != nil {
		t.Fatal(err)
	}
	auditDir := o.auditDir
	if auditDir == "" {
		auditDir = s.dir
	}
	s.auditPath = filepath.Join(auditDir, "audit.jsonl")
	vaultAddr := o.vaultAddr
	if vaultAddr == "" {
		vaultAddr = v.Addr
	}
	port := harness.FreePort(t)
	s.url = fmt.Sprintf("http://127.0.0.1:%d", port)
	cfg := fmt.Sprintf("listen: 127.0.0.1:%d\npublic_url: %s\npolicy: %s\nvault:\n  address: %s\n", port, s.url, polDir, vaultAddr)
	if o.vaultTimeout != "" {
		cfg += "  timeout: " + o.vaultTimeout + "\n"
	}
	cfg += "audit:\n  file: " + s.auditPath + "\n" + o.auditExtra + "log: {level: debug}\n"
	if o.redisURL != "" {
		cfg += "store:\n  redis_url: " + o.redisURL + "\n"
	}
	if o.redisAddrs != "" {
		cfg += "store:\n  addrs: [" + o.redisAddrs + "]\n"
	}
	cfgPath := filepath.Join(s.dir, "config.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	s.broker = harness.StartKeytrail(t, s.url, cfgPath, append([]string{"VAULT_TOKEN=" + v.RootToken}, o.env...)...)
	return s
}

// exchangeResult is what the fault tests look at of one exchange.
type exchangeResult struct {
	status     int
	errCode    string
	retryAfter string
	requestID  string
	credential bool // the body carries an access_token
	issuanceID string
}

func faultExchange(t testing.TB, base, subjectToken string) exchangeResult {
	t.Helper()
	r, err := tryExchange(base, subjectToken)
	if err != nil {
		t.Fatalf("POST /v1/token: %v", err)
	}
	return r
}

// tryExchange posts one exchange for the app-vault grant.
func tryExchange(base, subjectToken string) (exchangeResult, error) {
	form := url.Values{
		"grant_type":         {"urn:ietf:params:oauth:grant-type:token-exchange"},
		"subject_token":      {subjectToken},
		"subject_token_type": {"urn:ietf:params:oauth:token-type:jwt"},
		"audience":           {"app-vault"},
	}
	c := &http.Client{Timeout: 30 * time.Second}
	resp, err := c.Post(base+"/v1/token", "application/x-www-form-urlencoded", strings.NewReader(form.Encode()))
	if err != nil {
		return exchangeResult{}, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var out struct {
		AccessToken string `json:"access_token"`
		Error       string `json:"error"`
		IssuanceID  string `json:"issuance_id"`
	}
	_ = json.Unmarshal(body, &out)
	return exchangeResult{
		status: resp.StatusCode, errCode: out.Error, retryAfter: resp.Header.Get("Retry-After"),
		requestID: resp.Header.Get("X-Request-Id"), credential: out.AccessToken != "", issuanceID: out.IssuanceID,
	}, nil
}

func (s *faultStack) token(t testing.TB, sub string) string {
	t.Helper()
	now := time.Now()
	tok, err := s.issuer.Sign(jwt.MapClaims{"iss": s.issuer.url, "aud": "keytrail", "sub": sub, "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// wantUnavailable checks a 503 temporarily_unavailable with Retry-After and
// no credential.
func wantUnavailable(t testing.TB, what string, r exchangeResult) {
	t.Helper()
	if r.status != http.StatusServiceUnavailable || r.errCode != "temporarily_unavailable" || r.retryAfter == "" || r.credential {
		t.Errorf("%s: exchange = status %d, error %q, Retry-After %q, credential %v; want 503 temporarily_unavailable with Retry-After and no credential",
			what, r.status, r.errCode, r.retryAfter, r.credential)
	}
}

// auditEvents reads every parseable event of an audit file.
func auditEvents(t testing.TB, path string) []*audit.Event {
	t.Helper()
	var out []*audit.Event
	eachAuditEvent(t, path, func(ev *audit.Event) { out = append(out, ev) })
	return out
}

// eachAuditEvent calls fn with every parseable event of an audit file,
// streaming it (a soak's log is hundreds of MB).
func eachAuditEvent(t testing.TB, path string, fn func(*audit.Event)) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("read audit: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), audit.MaxLineBytes+1)
	for sc.Scan() {
		if ev, err := audit.ParseLine(sc.Bytes()); err == nil {
			fn(ev)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("read audit: %v", err)
	}
}

// denyRecorded reports whether the audit log has a deny event with the
// request id and status.
func denyRecorded(t testing.TB, path, requestID string, status int) bool {
	t.Helper()
	for _, ev := range auditEvents(t, path) {
		if ev.Type == audit.TypeDeny && ev.RequestID == requestID && ev.Outcome != nil && ev.Outcome.Status == status {
			return true
		}
	}
	return false
}

func readyStatus(t testing.TB, base string) int {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(base + "/readyz")
	if err != nil {
		t.Fatalf("GET /readyz: %v", err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// readyBecomes probes /readyz until it answers want, for at most 5 s, and
// returns the last answer: the broker keeps a readiness answer for 1 s
// (concurrent probes share one check), so a fault shows there up to 1 s
// after a probe that found the backends well (the stack's own start-up
// waits on /readyz).
func readyBecomes(t testing.TB, base string, want int) int {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		got := readyStatus(t, base)
		if got == want || time.Now().After(deadline) {
			return got
		}
		<-tick.C
	}
}

// liveKeytrailTokens counts the live Vault tokens that carry keytrail meta,
// asked of Vault with its root token.
func liveKeytrailTokens(t testing.TB, v *harness.Vault) map[string]string {
	t.Helper()
	return liveKeytrailTokensOf(t, v, "")
}

// liveKeytrailTokensOf lists the live keytrail tokens in v (issuance id ->
// accessor): every deployment's when deployment is "", else those the
// reconciliation of that deployment would look at.
func liveKeytrailTokensOf(t testing.TB, v *harness.Vault, deployment string) map[string]string {
	t.Helper()
	inv, err := vaultad.NewTokenInventory(vaultad.TokenInventoryOptions{Client: v.Client, Deployment: deployment})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	creds, err := inv.ListTagged(ctx, nil)
	if err != nil {
		t.Fatalf("list keytrail tokens: %v", err)
	}
	out := map[string]string{}
	for _, c := range creds {
		out[c.IssuanceID] = c.Ref
	}
	return out
}

// liveTokens is liveKeytrailTokens narrowed to this stack's deployment
// (the in-memory store's default: its audit chain id): other stacks on the
// same Vault leave their tokens alone since 97fad65, so a stack's checks
// must not count theirs.
func (s *faultStack) liveTokens(t testing.TB, v *harness.Vault) map[string]string {
	t.Helper()
	evs := auditEvents(t, s.auditPath)
	if len(evs) == 0 || evs[0].Chain == "" {
		t.Fatalf("%s: no audit line to read the chain (deployment) id from", s.auditPath)
	}
	return liveKeytrailTokensOf(t, v, evs[0].Chain)
}

func TestFaults(t *testing.T) {
	v := harness.StartVault(t)
	setupVaultPolicies(t, v)

	t.Run("vault-killed", func(t *testing.T) {
		s := startFaultStack(t, v, faultOptions{})
		if r := faultExchange(t, s.url, s.token(t, "app-1")); r.status != 200 || !r.credential {
			t.Fatalf("before the fault: exchange = %+v, want 200 with a credential", r)
		}
		if err := v.Kill(); err != nil {
			t.Fatal(err)
		}
		r := faultExchange(t, s.url, s.token(t, "app-1"))
		wantUnavailable(t, "vault killed", r)
		if !denyRecorded(t, s.auditPath, r.requestID, 503) {
			t.Errorf("vault killed: no deny event with status 503 for request %s", r.requestID)
		}
		if got := readyBecomes(t, s.url, 503); got != 503 {
			t.Errorf("vault killed: /readyz = %d, want 503", got)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if err := v.Restart(ctx); err != nil {
			t.Fatalf("restart vault: %v", err)
		}
		setupVaultPolicies(t, v)
		waitFor(t, 20*time.Second, "an exchange to succeed after Vault came back", func() bool {
			r := faultExchange(t, s.url, s.token(t, "app-1"))
			return r.status == 200 && r.credential
		})
	})

	t.Run("vault-slow-past-deadline", func(t *testing.T) {
		rl := startDelayRelay(t, strings.TrimPrefix(v.Addr, "http://"))
		s := startFaultStack(t, v, faultOptions{vaultAddr: rl.URL(), vaultTimeout: "1s",
			env: []string{"KEYTRAIL_RECONCILE_INTERVAL=1s", "KEYTRAIL_RECONCILE_GRACE=20s"}}) // > the broker's floor, 19s
		if r := faultExchange(t, s.url, s.token(t, "app-slow")); r.status != 200 || !r.credential {
			t.Fatalf("before the fault: exchange = %+v, want 200 with a credential", r)
		}
		rl.SetDelay(3 * time.Second)
		start := time.Now()
		r := faultExchange(t, s.url, s.token(t, "app-slow"))
		took := time.Since(start)
		wantUnavailable(t, "vault slow", r)
		if took > 2500*time.Millisecond {
			t.Errorf("vault slow: exchange took %v, want the 1s Vault timeout to answer before the 3s delay", took)
		}
		if !denyRecorded(t, s.auditPath, r.requestID, 503) {
			t.Errorf("vault slow: no deny event with status 503 for request %s", r.requestID)
		}
		// The delayed create reaches Vault after keytrail gave up: a token
		// nobody recorded, tagged with the issuance id of the deny event.
		// The reconciliation must revoke it with an orphan_revoked event.
		var lost string
		for _, ev := range auditEvents(t, s.auditPath) {
			if ev.Type == audit.TypeDeny && ev.RequestID == r.requestID {
				lost = ev.IssuanceID
			}
		}
		if lost == "" {
			t.Fatalf("vault slow: the deny event names no issuance id")
		}
		rl.SetDelay(0)
		waitFor(t, 50*time.Second, "an orphan_revoked event for the late token "+lost, func() bool {
			for _, ev := range auditEvents(t, s.auditPath) {
				if ev.Type == audit.TypeOrphanRevoked && ev.IssuanceID == lost {
					return true
				}
			}
			return false
		})
		issued := map[string]bool{}
		for _, ev := range auditEvents(t, s.auditPath) {
			if ev.Type == audit.TypeIssue {
				issued[ev.IssuanceID] = true
			}
		}
		for id := range s.liveTokens(t, v) {
			if !issued[id] {
				t.Errorf("vault slow: live keytrail token of issuance %s has no issue event", id)
			}
		}
		waitFor(t, 20*time.Second, "an exchange to succeed once Vault is fast again", func() bool {
			r := faultExchange(t, s.url, s.token(t, "app-slow"))
			return r.status == 200 && r.credential
		})
	})

	t.Run("vault-sealed", func(t *testing.T) {
		s := startFaultStack(t, v, faultOptions{})
		if r := faultExchange(t, s.url, s.token(t, "app-seal")); r.status != 200 {
			t.Fatalf("before the fault: exchange = %+v, want 200", r)
		}
		if err := v.Client.Sys().SealWithContext(context.Background()); err != nil {
			t.Fatalf("seal: %v", err)
		}
		r := faultExchange(t, s.url, s.token(t, "app-seal"))
		wantUnavailable(t, "vault sealed", r)
		if !denyRecorded(t, s.auditPath, r.requestID, 503) {
			t.Errorf("vault sealed: no deny event with status 503 for request %s", r.requestID)
		}
		if got := readyBecomes(t, s.url, 503); got != 503 {
			t.Errorf("vault sealed: /readyz = %d, want 503", got)
		}
		key := unsealKey(t, v)
		if _, err := v.Client.Sys().UnsealWithContext(context.Background(), key); err != nil {
			t.Fatalf("unseal: %v", err)
		}
		waitFor(t, 20*time.Second, "an exchange to succeed after unsealing", func() bool {
			r := faultExchange(t, s.url, s.token(t, "app-seal"))
			return r.status == 200 && r.credential
		})
	})

	// Two instances share Redis through store.addrs (the Sentinel/Cluster
	// form of the config): each one's reconciliation must keep the Vault
	// tokens the other issued (its audit log does not hold their issue
	// events; the shared Store explains them). It used to treat store.addrs
	// as a single instance and revoke them as not_audited.
	t.Run("reconcile-shared-store-addrs", func(t *testing.T) {
		rd := harness.StartRedis(t)
		reconcile := []string{"KEYTRAIL_RECONCILE_INTERVAL=1s", "KEYTRAIL_RECONCILE_GRACE=20s"}
		a := startFaultStack(t, v, faultOptions{redisAddrs: rd.Addr(), env: reconcile})
		b := startFaultStack(t, v, faultOptions{redisAddrs: rd.Addr(), env: reconcile})
		r := faultExchange(t, b.url, b.token(t, "app-shared"))
		if r.status != 200 || !r.credential {
			t.Fatalf("exchange on b = %+v, want 200 with a credential", r)
		}
		orphaned := func() bool {
			for _, ev := range auditEvents(t, a.auditPath) {
				if ev.Type == audit.TypeOrphanRevoked && ev.IssuanceID == r.issuanceID {
					return true
				}
			}
			return false
		}
		// a's first pass after the exchange either explains b's token by
		// the Store (known >= 1: nothing else is in this Redis) or, past
		// the grace, revokes it.
		waitFor(t, 30*time.Second, "a reconciliation on a that judged b's token", func() bool {
			return orphaned() || regexp.MustCompile(`"msg":"reconciliation"[^\n]*"known":[1-9]`).MatchString(a.broker.Logs())
		})
		if orphaned() {
			t.Fatalf("a revoked b's recorded token %s as an orphan", r.issuanceID)
		}
		if _, ok := liveKeytrailTokens(t, v)[r.issuanceID]; !ok {
			t.Errorf("b's token %s is no longer live in Vault", r.issuanceID)
		}
	})

	t.Run("redis-killed", func(t *testing.T) {
		rd := harness.StartRedis(t)
		s := startFaultStack(t, v, faultOptions{redisURL: rd.URL()})
		if r := faultExchange(t, s.url, s.token(t, "app-redis")); r.status != 200 {
			t.Fatalf("before the fault: exchange = %+v, want 200", r)
		}
		rd.Kill()
		r := faultExchange(t, s.url, s.token(t, "app-redis"))
		wantUnavailable(t, "redis killed", r)
		if !denyRecorded(t, s.auditPath, r.requestID, 503) {
			t.Errorf("redis killed: no deny event with status 503 for request %s", r.requestID)
		}
		if got := readyBecomes(t, s.url, 503); got != 503 {
			t.Errorf("redis killed: /readyz = %d, want 503", got)
		}
		rd.Restart()
		waitFor(t, 30*time.Second, "an exchange to succeed after Redis came back", func() bool {
			r := faultExchange(t, s.url, s.token(t, "app-redis"))
			return r.status == 200 && r.credential
		})
	})

	t.Run("audit-disk-full", func(t *testing.T) {
		mnt := t.TempDir()
		if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", mnt).CombinedOutput(); err != nil {
			t.Fatalf("mount a 64k tmpfs for the audit log (needs root): %v: %s", err, out)
		}
		t.Cleanup(func() {
			if out, err := exec.Command("umount", "-l", mnt).CombinedOutput(); err != nil {
				t.Errorf("umount %s: %v: %s", mnt, err, out)
			}
		})
		s := startFaultStack(t, v, faultOptions{auditDir: mnt})
		if r := faultExchange(t, s.url, s.token(t, "app-disk")); r.status != 200 {
			t.Fatalf("before the fault: exchange = %+v, want 200", r)
		}
		filler := filepath.Join(mnt, "filler")
		fillDisk(t, filler)
		before := len(s.liveTokens(t, v))
		// The audit file's last page still has room: exchanges succeed
		// until it is used up, then every one must fail.
		var r exchangeResult
		ok := 0
		for range 200 {
			if r = faultExchange(t, s.url, s.token(t, "app-disk")); r.status != 200 {
				break
			}
			ok++
		}
		t.Logf("audit disk full: %d exchanges fit in the last page", ok)
		wantUnavailable(t, "audit disk full", r)
		if r2 := faultExchange(t, s.url, s.token(t, "app-disk")); r2.status != 503 || r2.credential {
			t.Errorf("audit disk full, again: exchange = %+v, want 503 and no credential", r2)
		}
		if got := len(s.liveTokens(t, v)); got != before+ok {
			t.Errorf("audit disk full: live keytrail tokens %d -> %d after %d successes, want the unaudited tokens revoked", before, got, ok)
		}
		if got := readyBecomes(t, s.url, 503); got != 503 {
			t.Errorf("audit disk full: /readyz = %d, want 503 (free space below auditfile.MinFreeBytes)", got)
		}
		if err := os.Remove(filler); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 20*time.Second, "an exchange to succeed once the disk has room", func() bool {
			r := faultExchange(t, s.url, s.token(t, "app-disk"))
			return r.status == 200 && r.credential
		})
		if rep, err := audit.VerifyFiles([]string{s.auditPath}, audit.VerifyOptions{}); err != nil || !rep.OK() {
			t.Errorf("audit log after the full disk does not verify: %v %+v", err, rep)
		}
	})

	t.Run("jwks-down", func(t *testing.T) {
		s := startFaultStack(t, v, faultOptions{})
		if r := faultExchange(t, s.url, s.token(t, "app-jwks")); r.status != 200 {
			t.Fatalf("before the fault: exchange = %+v, want 200", r)
		}
		s.issuer.SetDown(true)
		fetches := s.issuer.JWKSFetches()
		if r := faultExchange(t, s.url, s.token(t, "app-jwks")); r.status != 200 || !r.credential {
			t.Errorf("jwks down, cached keys: exchange = %+v, want 200 with a credential", r)
		}
		if got := s.issuer.JWKSFetches(); got != fetches {
			t.Errorf("jwks down, cached keys: JWKS fetched %d more times, want none", got-fetches)
		}
		// A rotated key (unknown kid) while the endpoint is down: refused,
		// no credential. Within 30 s of the last successful fetch the
		// verifier may not refetch and answers 401 unknown_key; after a
		// failed refetch it answers 503 (see docs/RELIABILITY.md).
		if _, err := s.issuer.Rotate("ES256", false); err != nil {
			t.Fatal(err)
		}
		rot := faultExchange(t, s.url, s.token(t, "app-jwks"))
		t.Logf("jwks down, unknown kid: status %d %s", rot.status, rot.errCode)
		if rot.credential || (rot.status != 401 && rot.status != 503) {
			t.Errorf("jwks down, unknown kid: exchange = %+v, want 401 or 503 and no credential", rot)
		}
		// An issuer whose keys were never had: refusal, as unavailable.
		now := time.Now()
		dark, err := s.dark.Sign(jwt.MapClaims{"iss": s.dark.url, "aud": "keytrail", "sub": "dark-app", "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()})
		if err != nil {
			t.Fatal(err)
		}
		r := faultExchange(t, s.url, dark)
		wantUnavailable(t, "jwks never fetched", r)
		if !denyRecorded(t, s.auditPath, r.requestID, 503) {
			t.Errorf("jwks never fetched: no deny event with status 503 for request %s", r.requestID)
		}
		s.dark.SetDown(false)
		s.issuer.SetDown(false)
		waitFor(t, 45*time.Second, "the dark issuer's tokens to be accepted once its JWKS is up", func() bool {
			return faultExchange(t, s.url, dark).status == 200
		})
	})
}

// fillDisk writes to path until the file system is full.
func fillDisk(t testing.TB, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for {
		if _, err := f.Write(buf); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				return
			}
			t.Fatalf("fill disk: %v", err)
		}
	}
}

var unsealKeyRE = regexp.MustCompile(`Unseal Key: (\S+)`)

// unsealKey reads the dev server's unseal key from its log.
func unsealKey(t testing.TB, v *harness.Vault) string {
	t.Helper()
	raw, err := os.ReadFile(v.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	m := unsealKeyRE.FindAllSubmatch(raw, -1)
	if len(m) == 0 {
		t.Fatalf("no unseal key in the dev server log %s", v.LogPath)
	}
	return string(m[len(m)-1][1])
}

// delayRelay forwards TCP connections to target, holding each chunk from
// the client for the current delay before passing it on: a slow Vault.
type delayRelay struct {
	target string
	addr   string

	mu    sync.Mutex
	delay time.Duration
	ln    net.Listener
	conns map[net.Conn]bool
}

func startDelayRelay(t testing.TB, target string) *delayRelay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &delayRelay{target: target, addr: ln.Addr().String(), ln: ln, conns: map[net.Conn]bool{}}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go r.pipe(c)
		}
	}()
	t.Cleanup(r.close)
	return r
}

func (r *delayRelay) URL() string { return "http://" + r.addr }

// SetDelay sets the delay applied to client bytes from now on.
func (r *delayRelay) SetDelay(d time.Duration) {
	r.mu.Lock()
	r.delay = d
	r.mu.Unlock()
}

func (r *delayRelay) currentDelay() time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.delay
}

func (r *delayRelay) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ln.Close()
	for c := range r.conns {
		c.Close()
	}
}

func (r *delayRelay) pipe(c net.Conn) {
	up, err := net.Dial("tcp", r.target)
	if err != nil {
		c.Close()
		return
	}
	r.mu.Lock()
	r.conns[c], r.conns[up] = true, true
	r.mu.Unlock()
	done := make(chan struct{}, 2)
	go func() {
		// Client to Vault, delayed: the request still arrives (and a create
		// still happens) after the client gave up.
		buf := make([]byte, 32<<10)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				if d := r.currentDelay(); d > 0 {
					timer := time.NewTimer(d)
					<-timer.C
				}
				if _, werr := up.Write(buf[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		done <- struct{}{}
	}()
	go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
	<-done
	// Give a request that arrived late the time to complete at Vault
	// (closing at once would cancel it there) before closing both ends.
	timer := time.NewTimer(5 * time.Second)
	select {
	case <-done:
	case <-timer.C:
	}
	timer.Stop()
	c.Close()
	up.Close()
	r.mu.Lock()
	delete(r.conns, c)
	delete(r.conns, up)
	r.mu.Unlock()
}
