package vault

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/policies"
)

// warnLine is what the tests compare of a logged Vault warning.
type warnLine struct{ Op, Grant, IssuanceID, Warning string }

// warnLines returns the Vault warnings logged in buf (JSON lines), failing
// the test if the log holds any of the secrets.
func warnLines(t *testing.T, buf *bytes.Buffer, secrets ...string) []warnLine {
	t.Helper()
	for _, s := range secrets {
		if strings.Contains(buf.String(), s) {
			t.Errorf("log contains the secret %q:\n%s", s, buf)
		}
	}
	var got []warnLine
	for _, f := range warnFields(t, buf, "op", "grant", "issuance_id", "vault_warning") {
		got = append(got, warnLine{f[0], f[1], f[2], f[3]})
	}
	return got
}

// warnFields is, for each JSON log line in buf, its string fields keys (""
// where absent), failing the test on a line that is not JSON or not at
// level WARN.
func warnFields(t *testing.T, buf *bytes.Buffer, keys ...string) [][]string {
	t.Helper()
	var got [][]string
	for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		if m["level"] != "WARN" {
			t.Errorf("log line %q: level %v, want WARN", l, m["level"])
		}
		f := make([]string, len(keys))
		for i, k := range keys {
			f[i], _ = m[k].(string)
		}
		got = append(got, f)
	}
	return got
}

func TestTokenMinterLogsVaultWarnings(t *testing.T) {
	t.Parallel()
	const missing = `Policy "payments-raed" does not exist`
	f := newFakeVault(t, map[string]http.HandlerFunc{
		"PUT /v1/auth/token/create-orphan": func(w http.ResponseWriter, r *http.Request) {
			body := decodeBody(t, r)
			a := authReply(900, false, "payments-raed")
			if body["display_name"] == "keytrail-quiet" {
				reply(w, 200, a)
				return
			}
			a["warnings"] = []string{missing}
			reply(w, 200, a)
		},
	})
	var buf bytes.Buffer
	now := t0
	m, err := NewTokenMinter(TokenMinterOptions{
		Client: f.client(t), Log: slog.New(slog.NewJSONHandler(&buf, nil)),
		Now: func() time.Time { return now },
	})
	if err != nil {
		t.Fatal(err)
	}
	mint := func(grant, issuance, workload string) {
		t.Helper()
		req := tokenReq(func(r *broker.MintRequest) {
			r.Grant.Name, r.IssuanceID, r.Workload, r.Now = grant, issuance, workload, now
			r.Grant.VaultToken = &policies.VaultTokenGrant{Policies: []string{"payments-raed"}}
		})
		if _, err := m.Mint(context.Background(), req); err != nil {
			t.Fatalf("Mint(%s) = %v", issuance, err)
		}
	}
	mint("payments-vault", "iss_1", "payments-api")
	mint("payments-vault", "iss_2", "payments-api") // same grant and warning: not again
	mint("payments-vault", "iss_3", "payments-api")
	mint("billing-vault", "iss_4", "billing-api") // another grant: logged
	mint("quiet-vault", "iss_5", "quiet")         // no warning: nothing
	now = t0.Add(warnEvery - time.Second)
	mint("payments-vault", "iss_6", "payments-api") // within the interval: not again
	now = t0.Add(warnEvery)
	mint("payments-vault", "iss_7", "payments-api") // the interval is over: again

	want := []warnLine{
		{"create token", "payments-vault", "iss_1", missing},
		{"create token", "billing-vault", "iss_4", missing},
		{"create token", "payments-vault", "iss_7", missing},
	}
	if diff := cmp.Diff(want, warnLines(t, &buf, "hvs.minted-secret", brokerToken)); diff != "" {
		t.Errorf("logged warnings (-want +got):\n%s", diff)
	}
}

func TestDynamicMinterLogsVaultWarnings(t *testing.T) {
	t.Parallel()
	const missing = `Policy "keytrail-dynamic" does not exist`
	const readWarn = `the role's default_ttl exceeds the mount's max`
	f := newTokenFake(t, map[string]tokenRoute{
		createOrphan: {brokerToken, func(w http.ResponseWriter, r *http.Request) {
			reply(w, 200, map[string]any{"warnings": []string{missing}, "auth": map[string]any{
				"client_token": readerToken, "accessor": "acc-reader",
				"policies": []string{"keytrail-dynamic"}, "lease_duration": 900, "orphan": true,
			}})
		}},
		readCreds: {readerToken, func(w http.ResponseWriter, r *http.Request) {
			reply(w, 200, map[string]any{"lease_id": dynLease, "lease_duration": 600, "warnings": []string{readWarn},
				"data": map[string]any{"username": dynUsername, "password": dynPassword}})
		}},
	})
	var buf bytes.Buffer
	m, err := NewDynamicMinter(DynamicMinterOptions{Client: f.client(t), Log: slog.New(slog.NewJSONHandler(&buf, nil)), Now: func() time.Time { return t0 }})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := m.Mint(context.Background(), dynReq(nil)); err != nil {
			t.Fatalf("Mint() = %v", err)
		}
	}
	want := []warnLine{
		{"create reader token", "payments-db", dynIssuance, missing},
		{"read dynamic secret", "payments-db", dynIssuance, readWarn},
	}
	if diff := cmp.Diff(want, warnLines(t, &buf, readerToken, dynPassword, brokerToken)); diff != "" {
		t.Errorf("logged warnings (-want +got):\n%s", diff)
	}
}

// TestWarnLogBounded: past maxWarnKeys distinct warnings the oldest are
// forgotten, so the memory stays bounded.
func TestWarnLogBounded(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	now := t0
	w := newWarnLog(slog.New(slog.NewJSONHandler(&buf, nil)), func() time.Time { return now })
	for i := range 3 * maxWarnKeys {
		now = t0.Add(time.Duration(i) * time.Millisecond)
		w.note("create token", "g", "iss", []string{strings.Repeat("x", i%50) + string(rune('a'+i%26)) + time.Duration(i).String()})
	}
	if n := len(w.last); n > maxWarnKeys {
		t.Errorf("remembered %d warnings, want at most %d", n, maxWarnKeys)
	}
	if n := strings.Count(buf.String(), "\n"); n != 3*maxWarnKeys {
		t.Errorf("logged %d distinct warnings, want %d", n, 3*maxWarnKeys)
	}
}

// TestJWTMinterLogsVaultWarnings: transit sign's warnings are logged as
// token creates' are, with the grant and issuance of the mint, once per
// grant and warning every warnEvery.
func TestJWTMinterLogsVaultWarnings(t *testing.T) {
	t.Parallel()
	const warning = `Endpoint ignored these unrecognized parameters: [marshaling_algorithm]`
	key := newFakeKey(t, KeyTypeECDSAP256, 1)
	routes := fakeTransit(t, "sig", key, nil)
	sign := routes["PUT /v1/transit/sign/sig"]
	routes["PUT /v1/transit/sign/sig"] = func(w http.ResponseWriter, r *http.Request) {
		rec := httptest.NewRecorder()
		sign(rec, r)
		var out map[string]any
		if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
			t.Errorf("fake sign answer: %v", err)
		}
		out["warnings"] = []string{warning}
		reply(w, rec.Code, out)
	}
	f := newFakeVault(t, routes)
	var buf bytes.Buffer
	now := t0
	m, err := NewJWTMinter(JWTMinterOptions{Client: f.client(t), PublicURL: "https://keytrail.test",
		Log: slog.New(slog.NewJSONHandler(&buf, nil)), Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	var tokens []string
	mint := func(grant, issuance string) {
		t.Helper()
		req := jwtReq("sig")
		req.Grant.Name, req.IssuanceID, req.Now = grant, issuance, now
		cred, err := m.Mint(context.Background(), req)
		if err != nil {
			t.Fatalf("Mint(%s) = %v", issuance, err)
		}
		tokens = append(tokens, cred.AccessToken)
	}
	mint("orders-jwt", "iss_1")
	mint("orders-jwt", "iss_2") // same grant and warning: not again
	mint("billing-jwt", "iss_3")
	now = t0.Add(warnEvery)
	mint("orders-jwt", "iss_4") // the interval is over: again

	want := []warnLine{
		{"sign", "orders-jwt", "iss_1", warning},
		{"sign", "billing-jwt", "iss_3", warning},
		{"sign", "orders-jwt", "iss_4", warning},
	}
	if diff := cmp.Diff(want, warnLines(t, &buf, tokens...)); diff != "" {
		t.Errorf("logged warnings (-want +got):\n%s", diff)
	}
}

// TestTransitKeyReadsLogVaultWarnings: the warnings of Vault's answer to a
// transit key read (a 200 with the key and something Vault would have the
// operator know) are logged as sign's are, with the transit key instead of
// a grant, once per key and warning every warnEvery, by each reader of
// keys: the jwt minter's key cache, the JWKS key list and the audit
// checkpoint signer.
func TestTransitKeyReadsLogVaultWarnings(t *testing.T) {
	t.Parallel()
	const warning = `Key "sig" is scheduled for deletion review`
	key := newFakeKey(t, KeyTypeECDSAP256, 1)
	var reads int
	mu := new(sync.Mutex)
	routes := fakeTransit(t, "sig", key, nil)
	routes["GET /v1/transit/keys/sig"] = func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		reads++
		mu.Unlock()
		out := key.readReply(t)
		out["warnings"] = []string{warning}
		reply(w, 200, out)
	}
	f := newFakeVault(t, routes)
	type keyLine struct{ Op, TransitKey, Warning string }
	lines := func(buf *bytes.Buffer) []keyLine {
		t.Helper()
		var got []keyLine
		for _, f := range warnFields(t, buf, "op", "transit_key", "vault_warning") {
			got = append(got, keyLine{f[0], f[1], f[2]})
		}
		if strings.Contains(buf.String(), brokerToken) {
			t.Errorf("log contains the broker token:\n%s", buf)
		}
		return got
	}
	readsSoFar := func() int { mu.Lock(); defer mu.Unlock(); return reads }
	// Each reader reads the key three times: at t0, once its cache is
	// stale within warnEvery (not logged again), and at t0+warnEvery.
	times := []time.Duration{0, time.Minute, warnEvery}
	want := []keyLine{{"read transit key", "transit/keys/sig", warning}, {"read transit key", "transit/keys/sig", warning}}
	for _, tc := range []struct {
		name string
		read func(t *testing.T, log *slog.Logger, now func() time.Time) func()
	}{
		{"jwt-minter", func(t *testing.T, log *slog.Logger, now func() time.Time) func() {
			m, err := NewJWTMinter(JWTMinterOptions{Client: f.client(t), PublicURL: "https://keytrail.test", KeyRefresh: time.Second, Log: log, Now: now})
			if err != nil {
				t.Fatal(err)
			}
			return func() {
				req := jwtReq("sig")
				req.Now = now()
				if _, err := m.Mint(context.Background(), req); err != nil {
					t.Fatalf("Mint() = %v", err)
				}
			}
		}},
		{"jwks-keys", func(t *testing.T, log *slog.Logger, now func() time.Time) func() {
			k, err := NewTransitKeys(TransitKeysOptions{Client: f.client(t), Keys: []string{"sig"}, CacheTTL: time.Second, Log: log, Now: now})
			if err != nil {
				t.Fatal(err)
			}
			return func() {
				if _, err := k.PublicKeys(context.Background()); err != nil {
					t.Fatalf("PublicKeys() = %v", err)
				}
			}
		}},
		{"checkpoint-signer", func(t *testing.T, log *slog.Logger, now func() time.Time) func() {
			s, err := NewTransitCheckpointSigner(TransitCheckpointSignerOptions{Client: f.client(t), Key: "sig", KeyRefresh: time.Second, Log: log, Now: now})
			if err != nil {
				t.Fatal(err)
			}
			return func() {
				if _, err := s.Sign(context.Background(), []byte("checkpoint")); err != nil {
					t.Fatalf("Sign() = %v", err)
				}
			}
		}},
	} {
		var buf bytes.Buffer
		now := t0
		read := tc.read(t, slog.New(slog.NewJSONHandler(&buf, nil)), func() time.Time { return now })
		before := readsSoFar()
		for _, d := range times {
			now = t0.Add(d)
			read()
		}
		if n := readsSoFar() - before; n != len(times) {
			t.Errorf("%s: %d key reads, want %d", tc.name, n, len(times))
		}
		if diff := cmp.Diff(want, lines(&buf)); diff != "" {
			t.Errorf("%s: logged warnings (-want +got):\n%s", tc.name, diff)
		}
	}
}

// TestCheckpointSignerLogsVaultWarnings: the warnings of Vault's answer to
// the audit checkpoint signer's transit sign (a 200 with a signature and
// something Vault would have the operator know) are logged as the key
// reads' are: op "sign checkpoint" and the transit key's path, each
// distinct warning once per warnEvery, never the signature or the token.
func TestCheckpointSignerLogsVaultWarnings(t *testing.T) {
	t.Parallel()
	warnings := []string{`Endpoint ignored these unrecognized parameters: [x]`, `Key "sig" is scheduled for deletion review`}
	key := newFakeKey(t, KeyTypeEd25519, 1)
	routes := fakeTransit(t, "sig", key, nil)
	sign := routes["PUT /v1/transit/sign/sig"]
	var sigs []string
	mu := new(sync.Mutex)
	routes["PUT /v1/transit/sign/sig"] = func(w http.ResponseWriter, r *http.Request) {
		rec := httptest.NewRecorder()
		sign(rec, r)
		var out map[string]any
		if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
			t.Errorf("fake sign answer: %v", err)
		}
		if d, ok := out["data"].(map[string]any); ok {
			s, _ := d["signature"].(string)
			mu.Lock()
			sigs = append(sigs, strings.TrimPrefix(s, "vault:v1:"))
			mu.Unlock()
		}
		out["warnings"] = warnings
		reply(w, rec.Code, out)
	}
	f := newFakeVault(t, routes)
	var buf bytes.Buffer
	now := t0
	s, err := NewTransitCheckpointSigner(TransitCheckpointSignerOptions{Client: f.client(t), Key: "sig",
		Log: slog.New(slog.NewJSONHandler(&buf, nil)), Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []time.Duration{0, time.Minute, warnEvery - time.Second, warnEvery} {
		now = t0.Add(d)
		if _, err := s.Sign(context.Background(), []byte("checkpoint")); err != nil {
			t.Fatalf("Sign() at +%s = %v", d, err)
		}
	}
	type keyLine struct{ Op, TransitKey, Warning string }
	var got []keyLine
	for _, f := range warnFields(t, &buf, "op", "transit_key", "vault_warning") {
		got = append(got, keyLine{f[0], f[1], f[2]})
	}
	var want []keyLine
	for range 2 { // at t0, and again once warnEvery has passed
		for _, w := range warnings {
			want = append(want, keyLine{"sign checkpoint", "transit/keys/sig", w})
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("logged warnings (-want +got):\n%s", diff)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(sigs) != 4 {
		t.Fatalf("%d signatures, want 4", len(sigs))
	}
	for _, sig := range append(sigs, brokerToken) {
		if sig != "" && strings.Contains(buf.String(), sig) {
			t.Errorf("log contains %q (a signature or the token):\n%s", sig, &buf)
		}
	}
}
