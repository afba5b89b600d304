package main

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keytrail/keytrail/adapters/auditfile"
	"github.com/keytrail/keytrail/adapters/memstore"
	vaultad "github.com/keytrail/keytrail/adapters/vault"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/broker/jwks"
)

// fakeTransit is a Vault that serves ed25519 transit keys (version 1) and
// nothing else, or, while down, 503 to everything.
type fakeTransit struct {
	keys map[string]string // name -> base64 public key
	down atomic.Bool
}

func newFakeTransit(t *testing.T, names ...string) (*fakeTransit, *vaultapi.Client) {
	t.Helper()
	f := &fakeTransit{keys: map[string]string{}}
	for _, n := range names {
		pub, _, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		f.keys[n] = base64.StdEncoding.EncodeToString(pub)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if f.down.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte(`{"errors":["Vault is sealed"]}`))
			return
		}
		name, ok := strings.CutPrefix(r.URL.Path, "/v1/transit/keys/")
		pub, found := f.keys[name]
		if !ok || !found || r.Method != http.MethodGet {
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"errors":[]}`))
			return
		}
		_, _ = fmt.Fprintf(w, `{"data":{"type":"ed25519","latest_version":1,"min_decryption_version":1,`+
			`"keys":{"1":{"public_key":%q,"creation_time":"2026-01-01T00:00:00Z"}}}}`, pub)
	}))
	t.Cleanup(srv.Close)
	vc, err := vaultad.NewClient(vaultad.ClientOptions{Address: srv.URL, Token: "test-token"})
	if err != nil {
		t.Fatal(err)
	}
	return f, vc
}

// flakyStore is a Store whose retiring-key calls fail while down is set.
type flakyStore struct {
	broker.Store
	down atomic.Bool
}

func (s *flakyStore) PutRetiringKey(ctx context.Context, name string, until time.Time) error {
	if s.down.Load() {
		return broker.Unavailable("store_unavailable", time.Second, errors.New("store down"))
	}
	return s.Store.PutRetiringKey(ctx, name, until)
}

func (s *flakyStore) RetiringKeys(ctx context.Context, now time.Time) (map[string]time.Time, error) {
	if s.down.Load() {
		return nil, broker.Unavailable("store_unavailable", time.Second, errors.New("store down"))
	}
	return s.Store.RetiringKeys(ctx, now)
}

// retiringInstance is one broker instance as far as the JWKS goes: its own
// policy file and audit log in a directory of its own, Vault vc, the shared
// store st, started as wire does (the policy, then the retiring keys the
// store records).
type retiringInstance struct {
	rt      *brokerRuntime
	polFile string
	audit   string
	logs    *brokertest.SyncBuffer
}

func startRetiringInstance(t *testing.T, vc *vaultapi.Client, st broker.Store, clock *testClock, key string) *retiringInstance {
	t.Helper()
	dir := t.TempDir()
	in := &retiringInstance{polFile: filepath.Join(dir, "policy.yaml"), audit: filepath.Join(dir, "audit.jsonl"), logs: &brokertest.SyncBuffer{}}
	in.setKey(t, key)
	m, err := newOpsMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	sink, err := auditfile.Open(auditfile.Options{Path: in.audit})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sink.Close() })
	in.rt = &brokerRuntime{cfg: &Config{Policy: in.polFile}, log: slog.New(slog.NewTextHandler(in.logs, nil)), metrics: m, sink: sink,
		store: st, vault: vc, now: clock.Now}
	pol, err := loadServedPolicy(in.polFile, in.rt.log)
	if err != nil {
		t.Fatal(err)
	}
	v, err := in.rt.newVerifier(t.Context(), pol)
	if err != nil {
		t.Fatal(err)
	}
	if err := in.rt.initPolicy(pol, v); err != nil {
		t.Fatal(err)
	}
	in.rt.keys.Refresh(t.Context())
	return in
}

// setKey makes the instance's orders-jwt grant sign with key.
func (in *retiringInstance) setKey(t *testing.T, key string) {
	t.Helper()
	writeAtomically(t, in.polFile, retiringPolicy(key))
}

func (in *retiringInstance) reload(t *testing.T, key string) {
	t.Helper()
	in.setKey(t, key)
	if err := in.rt.reloadPolicy(t.Context(), "sighup"); err != nil {
		t.Fatalf("reload to %s: %v\n%s", key, err, in.logs.String())
	}
}

func (in *retiringInstance) kids(t *testing.T) []string {
	t.Helper()
	return slices.Sorted(maps.Keys(servedKIDs(t, in.rt)))
}

// lastPolicyLoad is the details of the instance's last policy_load event.
func (in *retiringInstance) lastPolicyLoad(t *testing.T) map[string]any {
	t.Helper()
	f, err := os.Open(in.audit)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var last map[string]any
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var ev audit.Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		if ev.Type == audit.TypePolicyLoad {
			last = ev.Details
		}
	}
	if last == nil {
		t.Fatal("no policy_load event")
	}
	return last
}

// TestRetiringKeysSharedBetweenInstances: a key one instance's reload
// retires is served by every instance sharing its store, until its time:
// by one that runs beside it (at its next JWKS refresh) and never named the
// key, and by one started after the reload. The policy_load event of the
// reload names it. Fake Vault; time moves by the injected clock.
func TestRetiringKeysSharedBetweenInstances(t *testing.T) {
	_, vc := newFakeTransit(t, "key-a", "key-b")
	st := memstore.New(nil) // shared by the instances, as Redis would be
	clock := &testClock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	a1, b1 := "key-a:1", "key-b:1"

	y := startRetiringInstance(t, vc, st, clock, "key-b") // started before x: it never saw key-a
	if got := y.kids(t); !slices.Equal(got, []string{b1}) {
		t.Fatalf("instance y before the reload: JWKS %v, want [%s]", got, b1)
	}
	x := startRetiringInstance(t, vc, st, clock, "key-a")

	x.reload(t, "key-b")
	// At least orders-jwt's ttl plus the leeway; x recorded key-a as in
	// use at start-up, up to two refreshes later.
	stored, err := st.RetiringKeys(t.Context(), clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	until := stored["key-a"]
	if least := clock.Now().Add(5*time.Minute + jwks.RetireLeeway); until.Before(least) || until.After(least.Add(2*jwks.RefreshEvery+time.Millisecond)) {
		t.Fatalf("store after the reload: key-a until %v, want from %v to %v", until, least, least.Add(2*jwks.RefreshEvery))
	}
	if got := x.lastPolicyLoad(t)["retiring_keys"]; !maps.Equal(asStringMap(got), map[string]string{"key-a": until.Format(time.RFC3339Nano)}) {
		t.Errorf("policy_load of the reload: retiring_keys = %v, want key-a until %v", got, until)
	}

	clock.Set(clock.Now().Add(30 * time.Second))
	y.rt.keys.Refresh(t.Context()) // its next JWKS refresh
	z := startRetiringInstance(t, vc, st, clock, "key-b")
	for name, in := range map[string]*retiringInstance{"x (reloaded)": x, "y (beside it)": y, "z (started after)": z} {
		if got := in.kids(t); !slices.Equal(got, []string{a1, b1}) {
			t.Errorf("instance %s while key-a's JWTs may live: JWKS %v, want [%s %s]", name, got, a1, b1)
		}
	}

	clock.Set(until)
	for name, in := range map[string]*retiringInstance{"x": x, "y": y, "z": z} {
		in.rt.keys.Refresh(t.Context())
		if got := in.kids(t); !slices.Equal(got, []string{b1}) {
			t.Errorf("instance %s at %v: JWKS %v, want [%s]", name, until, got, b1)
		}
	}
	if stored, err := st.RetiringKeys(t.Context(), clock.Now().Add(-time.Hour)); err != nil || !stored["key-a"].IsZero() {
		t.Errorf("store at %v: %v, %v; want key-a removed", until, stored, err)
	}
}

func asStringMap(v any) map[string]string {
	m, _ := v.(map[string]any)
	out := map[string]string{}
	for k, v := range m {
		out[k], _ = v.(string)
	}
	return out
}

// TestRetiringKeysOutages: neither a store nor a Vault outage takes a key
// out of the JWKS. A reload while the store is down keeps the key it
// retires (in memory) and records it at the next refresh; an instance that
// learned a key from the store keeps serving it while the store is down,
// through reloads too; and a refresh that finds a new key while Vault is
// down keeps the key list it serves (with its cache) until Vault answers.
func TestRetiringKeysOutages(t *testing.T) {
	vault, vc := newFakeTransit(t, "key-a", "key-b")
	st := &flakyStore{Store: memstore.New(nil)}
	clock := &testClock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	a1, b1 := "key-a:1", "key-b:1"

	y := startRetiringInstance(t, vc, st, clock, "key-b")
	if got := y.kids(t); !slices.Equal(got, []string{b1}) { // y's key list cached
		t.Fatalf("instance y: JWKS %v, want [%s]", got, b1)
	}

	st.down.Store(true)
	x := startRetiringInstance(t, vc, st, clock, "key-a") // records nothing
	x.reload(t, "key-b")
	if got := x.kids(t); !slices.Equal(got, []string{a1, b1}) {
		t.Errorf("instance x after a reload while the store is down: JWKS %v, want [%s %s]", got, a1, b1)
	}
	if !strings.Contains(x.logs.String(), "cannot read the retiring transit keys from the store") {
		t.Errorf("the store outage is not logged:\n%s", x.logs.String())
	}
	st.down.Store(false)
	clock.Set(clock.Now().Add(30 * time.Second))
	x.rt.keys.Refresh(t.Context()) // records what the reload could not
	if stored, err := st.RetiringKeys(t.Context(), clock.Now()); err != nil || stored["key-a"].IsZero() {
		t.Fatalf("store after x's refresh: %v, %v; want key-a recorded", stored, err)
	}

	vault.down.Store(true)
	y.rt.keys.Refresh(t.Context())
	if got := y.kids(t); !slices.Equal(got, []string{b1}) {
		t.Errorf("instance y, refresh while Vault is down: JWKS %v, want [%s] (what it served, from its cache)", got, b1)
	}
	vault.down.Store(false)
	y.rt.keys.Refresh(t.Context())
	if got := y.kids(t); !slices.Equal(got, []string{a1, b1}) {
		t.Errorf("instance y, refresh with Vault back: JWKS %v, want [%s %s]", got, a1, b1)
	}

	st.down.Store(true)
	y.rt.keys.Refresh(t.Context())
	y.reload(t, "key-b")
	if got := y.kids(t); !slices.Equal(got, []string{a1, b1}) {
		t.Errorf("instance y, store down (a refresh and a reload): JWKS %v, want [%s %s] still", got, a1, b1)
	}
}

// TestSigningKeyServedAfterRestartWithChangedPolicy: the policy changed
// while the broker was stopped (moving orders-jwt from key-a to key-b), or
// a rolling update starts instances with it while the old ones still sign
// with key-a: no reload ever retires key-a, so the instances started with
// the new policy served key-b alone and refused the live JWTs key-a signed
// (unknown kid). Every instance now records the keys it signs with at each
// JWKS refresh, for two refreshes past the longest life of their JWTs, so
// an instance started with the new policy serves key-a until then. Fake
// Vault; the shared store stands for Redis; time moves by the injected
// clock.
func TestSigningKeyServedAfterRestartWithChangedPolicy(t *testing.T) {
	_, vc := newFakeTransit(t, "key-a", "key-b")
	st := memstore.New(nil)
	start := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	clock := &testClock{now: start}
	a1, b1 := "key-a:1", "key-b:1"

	old := startRetiringInstance(t, vc, st, clock, "key-a")
	clock.Set(start.Add(2 * time.Minute))
	old.rt.keys.Refresh(t.Context()) // its last refresh: it stops after it
	lastRefresh := clock.Now()
	// JWTs it signs until its next refresh (which never comes) live until
	// then plus orders-jwt's ttl; verifiers allow the leeway.
	until := lastRefresh.Add(2*jwks.RefreshEvery + 5*time.Minute + jwks.RetireLeeway)

	clock.Set(lastRefresh.Add(10 * time.Second))
	restarted := startRetiringInstance(t, vc, st, clock, "key-b")
	if got := restarted.kids(t); !slices.Equal(got, []string{a1, b1}) {
		t.Fatalf("instance started with the changed policy: JWKS %v, want [%s %s] (JWTs key-a signed may live until %v)", got, a1, b1, until)
	}
	clock.Set(until.Add(-time.Millisecond))
	restarted.rt.keys.Refresh(t.Context())
	if got := restarted.kids(t); !slices.Equal(got, []string{a1, b1}) {
		t.Errorf("JWKS just before %v: %v, want [%s %s]", until, got, a1, b1)
	}
	clock.Set(until)
	restarted.rt.keys.Refresh(t.Context())
	if got := restarted.kids(t); !slices.Equal(got, []string{b1}) {
		t.Errorf("JWKS at %v: %v, want [%s]", until, got, b1)
	}
}

// TestFailedFileReloadRetriedAcrossJWKSRefresh: the policy watcher retries
// a failed file-triggered reload until a reload succeeds in the meantime,
// which it told by the policy state in force changing. A JWKS refresh that
// serves a retiring key the store records swaps that state too, without
// loading any policy: the watcher took it for a reload and stopped
// retrying, so the new policy files (here naming an issuer ca_file not
// mounted yet) were never loaded once they could be. Now only a change of
// the policy in force ends the retries.
func TestFailedFileReloadRetriedAcrossJWKSRefresh(t *testing.T) {
	_, vc := newFakeTransit(t, "key-a", "key-b")
	st := memstore.New(nil)
	clock := &testClock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	in := startRetiringInstance(t, vc, st, clock, "key-b")
	startWatch(t, in.rt, 20*time.Millisecond)

	caDir := filepath.Join(t.TempDir(), "ca")
	if err := os.Mkdir(caDir, 0o700); err != nil {
		t.Fatal(err)
	}
	withCA := strings.Replace(retiringPolicy("key-b"), "    algorithms: [ES256]\n",
		"    algorithms: [ES256]\n    ca_file: "+filepath.Join(caDir, "cert.pem")+"\n", 1)
	writeAtomically(t, in.polFile, withCA)
	waitReload(t, "the reload of the policy naming a missing ca_file fails", func() bool {
		return readCounter(t, in.rt.metrics.policyReloads.WithLabelValues("error")) >= 1
	}, in.logs)

	// Another instance's reload retired key-a: this one's next JWKS
	// refresh serves it (a retry holding the reload lock makes it wait).
	if err := st.PutRetiringKey(t.Context(), "key-a", clock.Now().Add(10*time.Minute)); err != nil {
		t.Fatal(err)
	}
	waitReload(t, "a JWKS refresh serves key-a", func() bool {
		in.rt.keys.Refresh(t.Context())
		_, ok := in.rt.keys.Retiring()["key-a"]
		return ok
	}, in.logs)

	writeCert(t, caDir, "issuer.example") // the Secret is mounted; the YAML does not change
	want, err := loadServedPolicy(in.polFile, in.rt.log)
	if err != nil {
		t.Fatal(err)
	}
	waitReload(t, "the failed reload is retried and takes the new policy", func() bool {
		return in.rt.state.Load().pol.Hash() == want.Hash()
	}, in.logs)
}

// TestExpiredRetiringKeyLeavesKeyList: a retiring key past its time was
// only hidden from the JWKS; the key list kept it until the next reload,
// so every instance that learned it from the store (after a rolling update
// that moved a grant to another key, all of them) kept reading it from
// Vault every 30 s, and, once the operator deleted the old key, logged
// every 30 s that it was left out and that its grants fail. The JWKS
// refresh now drops it from the list once its time has passed, keeping
// the list while Vault cannot be read for the new one.
func TestExpiredRetiringKeyLeavesKeyList(t *testing.T) {
	vault, vc := newFakeTransit(t, "key-a", "key-b")
	st := memstore.New(nil)
	clock := &testClock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	a1, b1 := "key-a:1", "key-b:1"
	until := clock.Now().Add(10 * time.Minute)
	if err := st.PutRetiringKey(t.Context(), "key-a", until); err != nil {
		t.Fatal(err)
	}
	in := startRetiringInstance(t, vc, st, clock, "key-b")
	if got := in.kids(t); !slices.Equal(got, []string{a1, b1}) {
		t.Fatalf("JWKS before %v: %v, want [%s %s]", until, got, a1, b1)
	}
	read := func() []string { return in.rt.keys.Names() }

	clock.Set(until)
	vault.down.Store(true)
	in.rt.keys.Refresh(t.Context())
	if got := in.kids(t); !slices.Equal(got, []string{b1}) {
		t.Errorf("JWKS at %v, Vault down: %v, want [%s] (the list it serves, key-a hidden)", until, got, b1)
	}
	if got := read(); !slices.Equal(got, []string{"key-a", "key-b"}) {
		t.Errorf("keys read from Vault after a refresh while Vault is down: %v, want the list served, [key-a key-b]", got)
	}

	vault.down.Store(false)
	in.rt.keys.Refresh(t.Context())
	if got := read(); !slices.Equal(got, []string{"key-b"}) {
		t.Errorf("keys read from Vault after the refresh past key-a's time: %v, want [key-b]", got)
	}
	if got := in.kids(t); !slices.Equal(got, []string{b1}) {
		t.Errorf("JWKS after key-a left the list: %v, want [%s]", got, b1)
	}
	if _, ok := in.rt.keys.Retiring()["key-a"]; ok {
		t.Errorf("key-a still retiring after its time: %v", in.rt.keys.Retiring())
	}
}

// TestLastRetiringKeyLeavesKeyList: when the last jwt grant is gone and its
// key's time has passed, the refresh leaves no key list at all (and an
// empty JWKS) rather than reading one.
func TestLastRetiringKeyLeavesKeyList(t *testing.T) {
	_, vc := newFakeTransit(t, "key-a", "key-b")
	st := memstore.New(nil)
	clock := &testClock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	in := startRetiringInstance(t, vc, st, clock, "key-b")
	writeAtomically(t, in.polFile, serverTestPolicy) // no jwt grant
	if err := in.rt.reloadPolicy(t.Context(), "sighup"); err != nil {
		t.Fatal(err)
	}
	if got := in.kids(t); !slices.Equal(got, []string{"key-b:1"}) {
		t.Fatalf("JWKS after the reload that dropped the jwt grant: %v, want [key-b:1]", got)
	}
	clock.Set(clock.Now().Add(time.Hour))
	in.rt.keys.Refresh(t.Context())
	if got := in.kids(t); len(got) != 0 {
		t.Errorf("JWKS an hour later: %v, want none", got)
	}
	if names := in.rt.keys.Names(); len(names) != 0 {
		t.Errorf("keys read from Vault an hour later: %v, want none", names)
	}
}

// TestJWKSRefreshIsTheKeyCacheTime: broker/jwks, which names no adapter,
// refreshes the key list every jwks.RefreshEvery; it must stay the transit
// key cache time the refresh was derived from when server.go held it.
func TestJWKSRefreshIsTheKeyCacheTime(t *testing.T) {
	if jwks.RefreshEvery != vaultad.DefaultPublicKeysTTL {
		t.Errorf("jwks.RefreshEvery = %v, want vault.DefaultPublicKeysTTL %v", jwks.RefreshEvery, vaultad.DefaultPublicKeysTTL)
	}
}
