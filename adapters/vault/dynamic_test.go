package vault

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	vaultapi "github.com/hashicorp/vault/api"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/policies"
)

const readerToken = "hvs.reader-token-for-tests"

// tokenFake is an httptest Vault like fakeVault, except that each route
// names the token it must be called with (the broker's or the reader's).
// Any other request, or a route called with another token, fails the test.
type tokenFake struct {
	t      *testing.T
	srv    *httptest.Server
	routes map[string]tokenRoute

	mu    sync.Mutex
	order []string
}

type tokenRoute struct {
	token string
	h     http.HandlerFunc
}

func newTokenFake(t *testing.T, routes map[string]tokenRoute) *tokenFake {
	t.Helper()
	f := &tokenFake{t: t, routes: routes}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := r.Method + " " + r.URL.Path
		f.mu.Lock()
		f.order = append(f.order, key)
		f.mu.Unlock()
		rt, ok := f.routes[key]
		if !ok {
			f.t.Errorf("fake vault: unexpected request %s", key)
			http.Error(w, `{"errors":["unexpected"]}`, http.StatusInternalServerError)
			return
		}
		if got := r.Header.Get("X-Vault-Token"); got != rt.token {
			f.t.Errorf("%s: X-Vault-Token = %q, want %q", key, got, rt.token)
		}
		if ns := r.Header.Get("X-Vault-Namespace"); ns != "" {
			f.t.Errorf("%s: X-Vault-Namespace = %q, want none", key, ns)
		}
		if r.Header.Get("X-Vault-Request") != "true" {
			f.t.Errorf("%s: X-Vault-Request header missing", key)
		}
		rt.h(w, r)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *tokenFake) calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.order...)
}

func (f *tokenFake) client(t *testing.T) *vaultapi.Client {
	t.Helper()
	c, err := NewClient(ClientOptions{Address: f.srv.URL, Token: brokerToken, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	return c
}

const (
	createOrphan = "PUT /v1/auth/token/create-orphan"
	revokeAcc    = "PUT /v1/auth/token/revoke-accessor"
	revokeLease  = "PUT /v1/sys/leases/revoke"
	readCreds    = "GET /v1/database/creds/payments-rw"
	dynIssuance  = "iss_01JQ3V7K9M2X4H8R6T5B0C1D2E"
	dynUsername  = "kt-iss-01jq3v7k9m2x4h8r6t5b0c1d2e-x7k2m9qa"
	dynPassword  = "A1a-SECRET-PASSWORD"
	dynLease     = "database/creds/payments-rw/Lx3K"
)

func dynReq(mut func(*broker.MintRequest)) broker.MintRequest {
	r := broker.MintRequest{
		IssuanceID: dynIssuance,
		Workload:   "payments-api",
		Owner:      "team-payments",
		SessionID:  "ses_abc",
		Grant: policies.Grant{
			Name: "payments-db", Kind: broker.KindVaultDynamic, TTL: policies.Duration(15 * time.Minute),
			VaultDynamic: &policies.VaultDynamicGrant{Path: "database/creds/payments-rw"},
		},
		TTL: 15 * time.Minute,
		Now: t0,
	}
	if mut != nil {
		mut(&r)
	}
	return r
}

func wantReaderBody(ttl string) map[string]any {
	return map[string]any{
		"type":              "service",
		"policies":          []any{"keytrail-dynamic"},
		"no_default_policy": true,
		"ttl":               ttl,
		"explicit_max_ttl":  ttl,
		"renewable":         false,
		"num_uses":          float64(0),
		"display_name":      dynIssuance + "-payments-api",
		"meta": map[string]any{
			"workload":    "payments-api",
			"owner":       "team-payments",
			"session_id":  "ses_abc",
			"issuance_id": dynIssuance,
			"grant":       "payments-db",
		},
	}
}

func readerAuth(lease int, renewable bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		reply(w, 200, map[string]any{"auth": map[string]any{
			"client_token": readerToken, "accessor": "acc-reader",
			"policies": []string{"keytrail-dynamic"}, "lease_duration": lease, "renewable": renewable,
			"orphan": true,
		}})
	}
}

func credsReply(lease int, data map[string]any) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		reply(w, 200, map[string]any{"lease_id": dynLease, "lease_duration": lease, "renewable": true, "data": data})
	}
}

func expectBody(t *testing.T, want map[string]any, then http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if diff := cmp.Diff(want, decodeBody(t, r)); diff != "" {
			t.Errorf("%s %s body (-want +got):\n%s", r.Method, r.URL.Path, diff)
		}
		then(w, r)
	}
}

func TestDynamicMinterMint(t *testing.T) {
	t.Parallel()
	dbData := map[string]any{"username": dynUsername, "password": dynPassword}
	revokeBoth := map[string]tokenRoute{
		revokeLease: {brokerToken, func(w http.ResponseWriter, r *http.Request) {
			if diff := cmp.Diff(map[string]any{"lease_id": dynLease}, decodeBody(t, r)); diff != "" {
				t.Errorf("lease revoke body (-want +got):\n%s", diff)
			}
			w.WriteHeader(204)
		}},
		revokeAcc: {brokerToken, expectBody(t, map[string]any{"accessor": "acc-reader"}, replyRaw(204, ""))},
	}
	tokenOnly := map[string]tokenRoute{revokeAcc: revokeBoth[revokeAcc]}
	tests := []struct {
		name      string
		opts      DynamicMinterOptions
		req       broker.MintRequest
		token     http.HandlerFunc // reply to the reader token create; nil: not called
		read      http.HandlerFunc // reply to the read; nil: not called
		cleanup   map[string]tokenRoute
		wantCalls []string
		want      *broker.Credential
		wantErr   errShape
	}{
		{
			name:      "ok/database-creds-capped-by-reader-token",
			req:       dynReq(nil),
			token:     expectBody(t, wantReaderBody("900s"), readerAuth(900, false)),
			read:      credsReply(3600, dbData),
			wantCalls: []string{createOrphan, readCreds},
			want: &broker.Credential{
				AccessToken: dynPassword,
				Fields:      map[string]any{"username": dynUsername, "password": dynPassword, "lease_id": dynLease, "lease_duration": 900},
				Refs:        broker.CredentialRefs{LeaseID: dynLease, Username: dynUsername, Accessor: "acc-reader", ExpiresAt: t0.Add(15 * time.Minute)},
			},
		},
		{
			name:      "ok/shorter-lease",
			req:       dynReq(func(r *broker.MintRequest) { r.TTL = 90*time.Second + 400*time.Millisecond }),
			token:     expectBody(t, wantReaderBody("90s"), readerAuth(90, false)),
			read:      credsReply(60, dbData),
			wantCalls: []string{createOrphan, readCreds},
			want: &broker.Credential{
				AccessToken: dynPassword,
				Fields:      map[string]any{"username": dynUsername, "password": dynPassword, "lease_id": dynLease, "lease_duration": 60},
				Refs:        broker.CredentialRefs{LeaseID: dynLease, Username: dynUsername, Accessor: "acc-reader", ExpiresAt: t0.Add(time.Minute)},
			},
		},
		{
			name:      "ok/other-engine-without-username",
			req:       dynReq(nil),
			token:     readerAuth(900, false),
			read:      credsReply(600, map[string]any{"access_key": "AKIAEXAMPLE", "secret_key": "sk-SECRET"}),
			wantCalls: []string{createOrphan, readCreds},
			want: &broker.Credential{
				AccessToken: "sk-SECRET",
				Fields:      map[string]any{"access_key": "AKIAEXAMPLE", "secret_key": "sk-SECRET", "lease_id": dynLease, "lease_duration": 600},
				Refs:        broker.CredentialRefs{LeaseID: dynLease, Accessor: "acc-reader", ExpiresAt: t0.Add(10 * time.Minute)},
			},
		},
		{
			name:      "ok/untagged-username-allowed",
			opts:      DynamicMinterOptions{AllowUntaggedUsernames: true},
			req:       dynReq(nil),
			token:     readerAuth(900, false),
			read:      credsReply(900, map[string]any{"username": "v-token-payments-rw-abc", "password": dynPassword}),
			wantCalls: []string{createOrphan, readCreds},
			want: &broker.Credential{
				AccessToken: dynPassword,
				Fields:      map[string]any{"username": "v-token-payments-rw-abc", "password": dynPassword, "lease_id": dynLease, "lease_duration": 900},
				Refs:        broker.CredentialRefs{LeaseID: dynLease, Username: "v-token-payments-rw-abc", Accessor: "acc-reader", ExpiresAt: t0.Add(15 * time.Minute)},
			},
		},
		{
			name:      "fail/untagged-username-revoked",
			req:       dynReq(nil),
			token:     readerAuth(900, false),
			read:      credsReply(900, map[string]any{"username": "v-token-payments-rw-abc", "password": dynPassword}),
			cleanup:   revokeBoth,
			wantCalls: []string{createOrphan, readCreds, revokeLease, revokeAcc},
			wantErr:   errShape{unavailable, ReasonConfig},
		},
		{
			name:      "fail/no-secret-field-revoked",
			req:       dynReq(nil),
			token:     readerAuth(900, false),
			read:      credsReply(900, map[string]any{"username": dynUsername}),
			cleanup:   revokeBoth,
			wantCalls: []string{createOrphan, readCreds, revokeLease, revokeAcc},
			wantErr:   errShape{unavailable, ReasonBadResponse},
		},
		{
			name:      "fail/not-leased-kv-path",
			req:       dynReq(nil),
			token:     readerAuth(900, false),
			read:      func(w http.ResponseWriter, r *http.Request) { reply(w, 200, map[string]any{"data": dbData}) },
			cleanup:   tokenOnly,
			wantCalls: []string{createOrphan, readCreds, revokeAcc},
			wantErr:   errShape{unavailable, ReasonConfig},
		},
		{
			name:      "fail/unknown-role-404",
			req:       dynReq(nil),
			token:     readerAuth(900, false),
			read:      replyRaw(404, `{"errors":[]}`),
			cleanup:   tokenOnly,
			wantCalls: []string{createOrphan, readCreds, revokeAcc},
			wantErr:   errShape{unavailable, ReasonRejected},
		},
		{
			name:      "fail/reader-policy-denied-403",
			req:       dynReq(nil),
			token:     readerAuth(900, false),
			read:      replyRaw(403, `{"errors":["1 error occurred:\n\t* permission denied\n\n"]}`),
			cleanup:   tokenOnly,
			wantCalls: []string{createOrphan, readCreds, revokeAcc},
			wantErr:   errShape{unavailable, ReasonDenied},
		},
		{
			name:      "fail/database-down-500",
			req:       dynReq(nil),
			token:     readerAuth(900, false),
			read:      replyRaw(500, `{"errors":["dial tcp 127.0.0.1:5432: connect: connection refused"]}`),
			cleanup:   tokenOnly,
			wantCalls: []string{createOrphan, readCreds, revokeAcc},
			wantErr:   errShape{unavailable, ReasonUnavailable},
		},
		{
			name:      "fail/reader-token-outlives-ttl",
			req:       dynReq(nil),
			token:     readerAuth(3600, false),
			cleanup:   tokenOnly,
			wantCalls: []string{createOrphan, revokeAcc},
			wantErr:   errShape{unavailable, ReasonBadResponse},
		},
		{
			name:      "fail/reader-token-renewable",
			req:       dynReq(nil),
			token:     readerAuth(900, true),
			cleanup:   tokenOnly,
			wantCalls: []string{createOrphan, revokeAcc},
			wantErr:   errShape{unavailable, ReasonBadResponse},
		},
		{
			name: "fail/reader-token-not-an-orphan",
			req:  dynReq(nil),
			token: func(w http.ResponseWriter, r *http.Request) {
				reply(w, 200, map[string]any{"auth": map[string]any{
					"client_token": readerToken, "accessor": "acc-reader",
					"policies": []string{"keytrail-dynamic"}, "lease_duration": 900, "renewable": false,
					"orphan": false, // a token role edited to orphan=false
				}})
			},
			cleanup:   tokenOnly,
			wantCalls: []string{createOrphan, revokeAcc},
			wantErr:   errShape{unavailable, ReasonConfig},
		},
		{
			name:      "fail/create-token-sealed",
			req:       dynReq(nil),
			token:     replyRaw(503, `{"errors":["Vault is sealed"]}`),
			wantCalls: []string{createOrphan},
			wantErr:   errShape{unavailable, ReasonUnavailable},
		},
		{
			name:    "fail/wrong-kind",
			req:     dynReq(func(r *broker.MintRequest) { r.Grant.Kind = broker.KindPKI }),
			wantErr: errShape{unavailable, ReasonConfig},
		},
		{
			name:    "fail/dot-dot-path",
			req:     dynReq(func(r *broker.MintRequest) { r.Grant.VaultDynamic.Path = "database/../sys/raw" }),
			wantErr: errShape{unavailable, ReasonConfig},
		},
		{
			name:    "fail/ttl-under-a-second",
			req:     dynReq(func(r *broker.MintRequest) { r.TTL = 500 * time.Millisecond }),
			wantErr: errShape{invalid, "ttl_too_short"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			routes := map[string]tokenRoute{}
			if tc.token != nil {
				routes[createOrphan] = tokenRoute{brokerToken, tc.token}
			}
			if tc.read != nil {
				routes[readCreds] = tokenRoute{readerToken, tc.read}
			}
			for k, v := range tc.cleanup {
				routes[k] = v
			}
			f := newTokenFake(t, routes)
			o := tc.opts
			o.Client = f.client(t)
			o.Now = func() time.Time { return t0 }
			m, err := NewDynamicMinter(o)
			if err != nil {
				t.Fatal(err)
			}
			got, err := m.Mint(context.Background(), tc.req)
			if diff := cmp.Diff(tc.wantErr, shapeOf(err)); diff != "" {
				t.Errorf("Mint() error = %v, want %+v", err, tc.wantErr)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Mint() credential (-want +got):\n%s", diff)
			}
			if err != nil && strings.Contains(err.Error(), dynPassword) {
				t.Errorf("Mint() error leaks the password: %v", err)
			}
			if err != nil && strings.Contains(err.Error(), readerToken) {
				t.Errorf("Mint() error leaks the reader token: %v", err)
			}
			if diff := cmp.Diff(tc.wantCalls, f.calls()); diff != "" {
				t.Errorf("Vault calls (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDynamicMinterRole(t *testing.T) {
	t.Parallel()
	const createRole = "PUT /v1/auth/token/create/keytrail-reader"
	f := newTokenFake(t, map[string]tokenRoute{
		createRole: {brokerToken, func(w http.ResponseWriter, r *http.Request) {
			body := decodeBody(t, r)
			if diff := cmp.Diff([]any{"db-a", "db-b"}, body["policies"]); diff != "" {
				t.Errorf("policies (-want +got):\n%s", diff)
			}
			readerAuth(900, false)(w, r)
		}},
		readCreds: {readerToken, credsReply(900, map[string]any{"username": dynUsername, "password": dynPassword})},
	})
	m, err := NewDynamicMinter(DynamicMinterOptions{Client: f.client(t), Role: "keytrail-reader", ReaderPolicies: []string{"db-a", "db-b"}, Now: func() time.Time { return t0 }})
	if err != nil {
		t.Fatal(err)
	}
	got, err := m.Mint(context.Background(), dynReq(nil))
	if err != nil {
		t.Fatalf("Mint() = %v", err)
	}
	if got.Refs.Username != dynUsername || got.Refs.LeaseID != dynLease {
		t.Errorf("Mint() refs = %+v, want username %s and lease %s", got.Refs, dynUsername, dynLease)
	}
	if diff := cmp.Diff([]string{createRole, readCreds}, f.calls()); diff != "" {
		t.Errorf("Vault calls (-want +got):\n%s", diff)
	}
}

func TestDynamicMinterRevoke(t *testing.T) {
	t.Parallel()
	both := &broker.Issuance{ID: dynIssuance, Refs: broker.CredentialRefs{LeaseID: dynLease, Accessor: "acc-reader"}}
	tests := []struct {
		name      string
		is        *broker.Issuance
		lease     http.HandlerFunc
		token     http.HandlerFunc
		wantCalls []string
		wantErr   errShape
	}{
		{"ok/lease-then-token", both, replyRaw(204, ""), replyRaw(204, ""), []string{revokeLease, revokeAcc}, errShape{}},
		{"ok/already-gone", both, replyRaw(204, ""), replyRaw(400, `{"errors":["token not found"]}`), []string{revokeLease, revokeAcc}, errShape{}},
		{"ok/lease-only", &broker.Issuance{Refs: broker.CredentialRefs{LeaseID: dynLease}}, replyRaw(204, ""), nil, []string{revokeLease}, errShape{}},
		{"ok/token-only", &broker.Issuance{Refs: broker.CredentialRefs{Accessor: "acc-reader"}}, nil, replyRaw(204, ""), []string{revokeAcc}, errShape{}},
		{"fail/database-down-keeps-token", both, replyRaw(500, `{"errors":["failed to revoke entry: connection refused"]}`), nil, []string{revokeLease}, errShape{unavailable, ReasonUnavailable}},
		{"fail/lease-denied", both, replyRaw(403, `{"errors":["permission denied"]}`), nil, []string{revokeLease}, errShape{unavailable, ReasonDenied}},
		{"fail/token-500", both, replyRaw(204, ""), replyRaw(500, `{"errors":["boom"]}`), []string{revokeLease, revokeAcc}, errShape{unavailable, ReasonUnavailable}},
		{"fail/no-refs", &broker.Issuance{ID: dynIssuance}, nil, nil, nil, errShape{invalid, "missing_lease"}},
		{"fail/nil-issuance", nil, nil, nil, nil, errShape{invalid, "missing_lease"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			routes := map[string]tokenRoute{}
			if tc.lease != nil {
				routes[revokeLease] = tokenRoute{brokerToken, expectBody(t, map[string]any{"lease_id": dynLease}, tc.lease)}
			}
			if tc.token != nil {
				routes[revokeAcc] = tokenRoute{brokerToken, expectBody(t, map[string]any{"accessor": "acc-reader"}, tc.token)}
			}
			f := newTokenFake(t, routes)
			m, err := NewDynamicMinter(DynamicMinterOptions{Client: f.client(t)})
			if err != nil {
				t.Fatal(err)
			}
			err = m.Revoke(context.Background(), tc.is)
			if diff := cmp.Diff(tc.wantErr, shapeOf(err)); diff != "" {
				t.Errorf("Revoke() = %v, want %+v", err, tc.wantErr)
			}
			if diff := cmp.Diff(tc.wantCalls, f.calls()); diff != "" {
				t.Errorf("Vault calls (-want +got):\n%s", diff)
			}
		})
	}
}

func TestNewDynamicMinterValidates(t *testing.T) {
	t.Parallel()
	c := newFakeVault(t, nil).client(t)
	for _, tc := range []struct {
		name string
		o    DynamicMinterOptions
		ok   bool
	}{
		{"ok/defaults", DynamicMinterOptions{Client: c}, true},
		{"ok/role-and-policies", DynamicMinterOptions{Client: c, Role: "r", ReaderPolicies: []string{"db"}}, true},
		{"fail/no-client", DynamicMinterOptions{}, false},
		{"fail/role-with-slash", DynamicMinterOptions{Client: c, Role: "a/b"}, false},
		{"fail/root-reader-policy", DynamicMinterOptions{Client: c, ReaderPolicies: []string{"db", "root"}}, false},
		{"fail/blank-reader-policy", DynamicMinterOptions{Client: c, ReaderPolicies: []string{" "}}, false},
	} {
		_, err := NewDynamicMinter(tc.o)
		if (err == nil) != tc.ok {
			t.Errorf("%s: NewDynamicMinter() = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

var usernameCases = []struct {
	name     string
	username string
	want     string
	ok       bool
}{
	{"ok/template-output", dynUsername, dynIssuance, true},
	{"ok/no-suffix", "kt-iss-01jq3v7k9m2x4h8r6t5b0c1d2e", dynIssuance, true},
	{"ok/upper-case", "KT-ISS-01JQ3V7K9M2X4H8R6T5B0C1D2E-AB", dynIssuance, true},
	{"fail/vault-default-template", "v-token-payments-rw-Ab12Cd34-1700000000", "", false},
	{"fail/short", "kt-iss-01jq3v", "", false},
	{"fail/not-crockford", "kt-iss-01jq3v7k9m2x4h8r6t5b0c1dUU", "", false},
	{"fail/glued-suffix", "kt-iss-01jq3v7k9m2x4h8r6t5b0c1d2exyz", "", false},
	{"fail/empty", "", "", false},
}

func TestIssuanceIDFromUsername(t *testing.T) {
	t.Parallel()
	for _, tc := range usernameCases {
		got, ok := IssuanceIDFromUsername(tc.username)
		if got != tc.want || ok != tc.ok {
			t.Errorf("%s: IssuanceIDFromUsername(%q) = %q, %v, want %q, %v", tc.name, tc.username, got, ok, tc.want, tc.ok)
		}
	}
	if got, want := UsernameTag(dynIssuance), "iss-01jq3v7k9m2x4h8r6t5b0c1d2e"; got != want {
		t.Errorf("UsernameTag(%q) = %q, want %q", dynIssuance, got, want)
	}
	if !strings.Contains(dynUsername, UsernameTag(dynIssuance)) {
		t.Errorf("the test's username %q does not carry UsernameTag(%q)", dynUsername, dynIssuance)
	}
}

func FuzzIssuanceIDFromUsername(f *testing.F) {
	for _, tc := range usernameCases {
		f.Add(tc.username)
	}
	f.Fuzz(func(t *testing.T, username string) {
		id, ok := IssuanceIDFromUsername(username)
		if !ok {
			if id != "" {
				t.Fatalf("IssuanceIDFromUsername(%q) = %q, false: want no id", username, id)
			}
			return
		}
		if !strings.HasPrefix(id, broker.PrefixIssuance) || len(id) != len(broker.PrefixIssuance)+26 {
			t.Fatalf("IssuanceIDFromUsername(%q) = %q: not an issuance id", username, id)
		}
		if !strings.HasPrefix(strings.ToLower(username), "kt-"+UsernameTag(id)) {
			t.Fatalf("IssuanceIDFromUsername(%q) = %q, whose tag %q the name does not carry", username, id, UsernameTag(id))
		}
		if back, ok := IssuanceIDFromUsername("kt-" + UsernameTag(id) + "-r4nd0m"); !ok || back != id {
			t.Fatalf("round trip of %q = %q, %v", id, back, ok)
		}
	})
}
