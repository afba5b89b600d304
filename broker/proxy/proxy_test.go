package proxy_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	dto "github.com/prometheus/client_model/go"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
)

func TestProxyForwardsWithInjectedSecret(t *testing.T) {
	tests := []struct {
		name   string
		header string // where the caller puts its credential
	}{
		{name: "ok/authorization", header: "Authorization"},
		{name: "ok/proxy-authorization", header: "Proxy-Authorization"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, fixtureOpts{})
			cred := f.credential(t, "stripe")
			if !strings.HasPrefix(cred.AccessToken, "ktp_") {
				t.Fatalf("access token %q... lacks the ktp_ prefix", cred.AccessToken[:4])
			}
			hdr := http.Header{
				tt.header:             {"Bearer " + cred.AccessToken},
				"Cookie":              {"session=broker-cookie"},
				"X-Forwarded-For":     {"127.0.0.1"}, // trusted by the fixture: the source address
				"X-Forwarded-Host":    {"evil.example"},
				"Forwarded":           {"for=203.0.113.9;host=evil.example"},
				"X-Keytrail-Issuance": {"iss_SPOOFED"},
				"X-Request-Id":        {"req_SPOOFED"},
				"User-Agent":          {"payments/1.0"},
				"X-Custom":            {"kept"},
			}
			res := f.do(t, "GET", "/v1/proxy/stripe/v1/charges?limit=3&customer=cus_123", hdr, nil)
			if res.Status != 200 {
				t.Fatalf("GET = %d %s, want 200", res.Status, res.Body)
			}
			f.waitEvent(t, audit.TypeUseResult)
			if got := f.up.Hits(); got != 1 {
				t.Fatalf("upstream hits = %d, want 1", got)
			}
			uses := f.eventsOf(audit.TypeUse)
			if len(uses) != 1 {
				t.Fatalf("use events = %d, want 1", len(uses))
			}
			useID := uses[0].UseID
			seen := f.up.Last()
			upHost := strings.TrimPrefix(f.up.srv.URL, "https://")
			got := map[string]any{
				"method":        seen.Method,
				"path":          seen.Path,
				"query":         seen.Query,
				"host":          seen.Host,
				"authorization": seen.Header.Values("Authorization"),
				"proxy-auth":    seen.Header.Values("Proxy-Authorization"),
				"cookie":        seen.Header.Values("Cookie"),
				"xff":           seen.Header.Values("X-Forwarded-For"),
				"xfh":           seen.Header.Values("X-Forwarded-Host"),
				"forwarded":     seen.Header.Values("Forwarded"),
				"request-id":    seen.Header.Values("X-Request-Id"),
				"issuance":      seen.Header.Values("X-Keytrail-Issuance"),
				"user-agent":    seen.Header.Get("User-Agent"),
				"custom":        seen.Header.Get("X-Custom"),
			}
			want := map[string]any{
				"method":        "GET",
				"path":          "/v1/charges",
				"query":         "limit=3&customer=cus_123",
				"host":          upHost,
				"authorization": []string{"Bearer " + upstreamKey},
				"proxy-auth":    []string(nil),
				"cookie":        []string(nil),
				"xff":           []string(nil),
				"xfh":           []string(nil),
				"forwarded":     []string(nil),
				"request-id":    []string{useID},
				"issuance":      []string{cred.Issuance.ID},
				"user-agent":    "payments/1.0",
				"custom":        "kept",
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("upstream request (-want +got):\n%s", diff)
			}
			if !strings.HasPrefix(useID, broker.PrefixUse) {
				t.Errorf("use id = %q, want prefix %s", useID, broker.PrefixUse)
			}
			if got := res.Header.Get("X-Keytrail-Use"); got != useID {
				t.Errorf("response X-Keytrail-Use = %q, want %q", got, useID)
			}
			if leaks(res.raw()) {
				t.Errorf("response carries the upstream secret")
			}

			if diff := cmp.Diff([]string{audit.TypeIssue, audit.TypeUse, audit.TypeUseResult}, f.sink.Types()); diff != "" {
				t.Errorf("audit event types (-want +got):\n%s", diff)
			}
			is := cred.Issuance
			wantUse := &audit.Event{
				Type: audit.TypeUse, UseID: useID, IssuanceID: is.ID, Workload: "payments", Owner: "team-payments",
				SessionID: is.SessionID, Grant: "stripe", Kind: broker.KindProxy,
				Source:     &audit.Source{IP: "127.0.0.1", UserAgent: "payments/1.0"},
				Credential: &audit.Credential{Fingerprint: broker.Fingerprint(cred.AccessToken)},
				Upstream:   &audit.Upstream{Method: "GET", Host: upHost, Path: "/v1/charges?limit&customer"},
			}
			ignore := cmpopts.IgnoreFields(audit.Event{}, "RequestID")
			if diff := cmp.Diff(wantUse, uses[0], ignore); diff != "" {
				t.Errorf("use event (-want +got):\n%s", diff)
			}
			if uses[0].RequestID == "" || uses[0].RequestID != res.Header.Get("X-Request-Id") {
				t.Errorf("use event request_id = %q, want the response's X-Request-Id %q", uses[0].RequestID, res.Header.Get("X-Request-Id"))
			}
			results := f.eventsOf(audit.TypeUseResult)
			r := results[0]
			if r.UseID != useID || r.IssuanceID != is.ID || r.Upstream == nil || r.Upstream.Status != 200 ||
				r.Upstream.Bytes == nil || *r.Upstream.Bytes != int64(len(res.Body)) || r.Outcome == nil || r.Outcome.Status != 200 || r.Outcome.Error != "" {
				t.Errorf("use_result = %+v upstream %+v outcome %+v, want use %s, status 200, %d bytes", r, r.Upstream, r.Outcome, useID, len(res.Body))
			}
			for _, ev := range f.sink.Events() {
				if strings.Contains(eventJSON(t, ev), upstreamKey) || strings.Contains(eventJSON(t, ev), cred.AccessToken) {
					t.Errorf("audit event %s carries a secret", ev.Type)
				}
			}
			// The request is counted when the handler returns, which may be
			// just after the caller has the response: wait for it.
			deadline := time.Now().Add(5 * time.Second)
			for {
				got := counterValue(t, f, "keytrail_proxy_requests_total", map[string]string{"grant": "stripe", "status": "200"})
				if got == 1 {
					break
				}
				if got > 1 || time.Now().After(deadline) {
					t.Errorf("keytrail_proxy_requests_total{stripe,200} = %v, want 1", got)
					break
				}
				<-time.After(5 * time.Millisecond)
			}
		})
	}
}

// TestProxyCredentialInProxyAuthorizationBesideAnotherBearer: SPEC lets the
// caller send its proxy credential as Proxy-Authorization. A client whose SDK
// insists on an Authorization header of its own (a placeholder API key) sends
// both; the credential is the broker's one, and the Authorization header is
// dropped like any caller credential. Where both headers carry a broker
// credential, Authorization's is the one checked (as before).
func TestProxyCredentialInProxyAuthorizationBesideAnotherBearer(t *testing.T) {
	tests := []struct {
		name       string
		auth       func(cred string) string // the Authorization header
		proxyAuth  func(cred string) string // the Proxy-Authorization header
		wantStatus int
		wantDeny   string
	}{
		{name: "ok/placeholder-bearer-in-authorization",
			auth:      func(string) string { return "Bearer sk_test_placeholder" },
			proxyAuth: func(c string) string { return "Bearer " + c }, wantStatus: 200},
		{name: "ok/same-credential-in-both",
			auth:      func(c string) string { return "Bearer " + c },
			proxyAuth: func(c string) string { return "Bearer " + c }, wantStatus: 200},
		{name: "ok/placeholder-bearer-in-proxy-authorization",
			auth:      func(c string) string { return "Bearer " + c },
			proxyAuth: func(string) string { return "Bearer sk_test_placeholder" }, wantStatus: 200},
		{name: "fail/unknown-broker-credential-in-authorization",
			auth:      func(string) string { return "Bearer ktp_" + strings.Repeat("A", 43) },
			proxyAuth: func(c string) string { return "Bearer " + c }, wantStatus: 401, wantDeny: "unknown_credential"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, fixtureOpts{})
			cred := f.credential(t, "stripe")
			hdr := http.Header{
				"Authorization":       {tt.auth(cred.AccessToken)},
				"Proxy-Authorization": {tt.proxyAuth(cred.AccessToken)},
			}
			res := f.do(t, "GET", "/v1/proxy/stripe/v1/charges", hdr, nil)
			if res.Status != tt.wantStatus {
				t.Fatalf("GET with Authorization %q = %d %s, want %d", hdr.Get("Authorization")[:12], res.Status, res.Body, tt.wantStatus)
			}
			if tt.wantStatus != 200 {
				if got := f.up.Hits(); got != 0 {
					t.Errorf("upstream hits = %d, want 0", got)
				}
				denies := f.eventsOf(audit.TypeDeny)
				if len(denies) != 1 || denies[0].Outcome == nil || denies[0].Outcome.Reason != tt.wantDeny {
					t.Errorf("deny events = %+v, want one with reason %s", denies, tt.wantDeny)
				}
				return
			}
			f.waitEvent(t, audit.TypeUseResult)
			seen := f.up.Last()
			got := map[string][]string{"authorization": seen.Header.Values("Authorization"), "proxy-auth": seen.Header.Values("Proxy-Authorization")}
			want := map[string][]string{"authorization": {"Bearer " + upstreamKey}, "proxy-auth": nil}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("upstream request headers (-want +got):\n%s", diff)
			}
			uses := f.eventsOf(audit.TypeUse)
			if len(uses) != 1 || uses[0].IssuanceID != cred.Issuance.ID {
				t.Errorf("use events = %+v, want one of issuance %s", uses, cred.Issuance.ID)
			}
		})
	}
}

func TestProxyRefusesBadCredentials(t *testing.T) {
	tests := []struct {
		name       string
		setup      func(t *testing.T, f *fixture) (token string)
		audit      func(ev *audit.Event) bool // failing sink
		wantStatus int
		wantCode   string
		wantDeny   string // reason of the deny event; "" = none
		anonymous  bool   // the deny event names no issuance (unknown credential)
	}{
		{
			name:       "fail/missing-credential",
			setup:      func(t *testing.T, f *fixture) string { f.credential(t, "stripe"); return "" },
			wantStatus: 401, wantCode: "invalid_token", wantDeny: "missing_credential", anonymous: true,
		},
		{
			name:       "fail/unknown-credential",
			setup:      func(t *testing.T, f *fixture) string { return "ktp_" + strings.Repeat("A", 43) },
			wantStatus: 401, wantCode: "invalid_token", wantDeny: "unknown_credential", anonymous: true,
		},
		{
			name:       "fail/not-a-proxy-credential",
			setup:      func(t *testing.T, f *fixture) string { return "hvs.something" },
			wantStatus: 401, wantCode: "invalid_token", wantDeny: "unknown_credential", anonymous: true,
		},
		{
			name:       "fail/credential-of-another-grant",
			setup:      func(t *testing.T, f *fixture) string { return f.credential(t, "other").AccessToken },
			wantStatus: 403, wantCode: "access_denied", wantDeny: "wrong_grant",
		},
		{
			name: "fail/expired",
			setup: func(t *testing.T, f *fixture) string {
				tok := f.credential(t, "stripe").AccessToken
				f.clk.Advance(10*time.Minute + time.Second)
				return tok
			},
			wantStatus: 401, wantCode: "invalid_token", wantDeny: "credential_expired",
		},
		{
			name: "fail/revoked",
			setup: func(t *testing.T, f *fixture) string {
				res := f.credential(t, "stripe")
				is, err := f.store.GetIssuance(context.Background(), res.Issuance.ID)
				if err != nil {
					t.Fatal(err)
				}
				is.RevokedAt, is.RevocationID = f.clk.Now(), "rev_TEST"
				if err := f.store.PutIssuance(context.Background(), is); err != nil {
					t.Fatal(err)
				}
				return res.AccessToken
			},
			wantStatus: 403, wantCode: "access_denied", wantDeny: "credential_revoked",
		},
		{
			name: "fail/workload-blocked",
			setup: func(t *testing.T, f *fixture) string {
				tok := f.credential(t, "stripe").AccessToken
				if err := f.store.PutBlock(context.Background(), broker.Block{Workload: "payments", Reason: "incident", CreatedAt: f.clk.Now()}); err != nil {
					t.Fatal(err)
				}
				return tok
			},
			wantStatus: 403, wantCode: "access_denied", wantDeny: "workload_blocked",
		},
		{
			name:       "fail/use-not-auditable",
			setup:      func(t *testing.T, f *fixture) string { return f.credential(t, "stripe").AccessToken },
			audit:      func(ev *audit.Event) bool { return ev.Type == audit.TypeUse },
			wantStatus: 503, wantCode: "temporarily_unavailable", wantDeny: "audit_unavailable",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, fixtureOpts{})
			tok := tt.setup(t, f)
			f.sink.Fail = tt.audit
			var hdr http.Header
			if tok != "" {
				hdr = bearer(tok)
			}
			res := f.do(t, "GET", "/v1/proxy/stripe/v1/charges", hdr, nil)
			got := []any{res.Status, oauthError(t, res.Body), f.up.Hits()}
			want := []any{tt.wantStatus, tt.wantCode, int64(0)}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("GET with %s = [status code upstream-hits] (-want +got):\n%s", tt.name, diff)
			}
			if tt.wantStatus == 401 {
				// RFC 6750 §3.1: a request that carried no credential gets
				// a challenge without an error code.
				want := `Bearer error="invalid_token"`
				if tok == "" {
					want = `Bearer realm="keytrail"`
				}
				if got := res.Header.Get("WWW-Authenticate"); got != want {
					t.Errorf("WWW-Authenticate = %q, want %q", got, want)
				}
			}
			if tt.wantStatus == 503 && res.Header.Get("Retry-After") == "" {
				t.Errorf("503 without Retry-After")
			}
			if tt.wantDeny != "" {
				f.waitEvent(t, audit.TypeDeny)
				denies := f.eventsOf(audit.TypeDeny)
				if len(denies) != 1 || denies[0].Outcome == nil || denies[0].Outcome.Reason != tt.wantDeny || (denies[0].IssuanceID == "") != tt.anonymous {
					t.Errorf("deny events = %+v, want one with reason %s (naming the issuance: %v)", denies, tt.wantDeny, !tt.anonymous)
				}
				if tok != "" && strings.Contains(eventJSON(t, denies[0]), tok) {
					t.Errorf("deny event carries the presented credential")
				}
			}
			if n := len(f.eventsOf(audit.TypeUse)); n != 0 {
				t.Errorf("use events = %d, want 0", n)
			}
			if leaks(res.raw()) {
				t.Errorf("response carries the upstream secret")
			}
		})
	}
}

func TestProxyRateLimit(t *testing.T) {
	// burst 2: the exchange takes one token, the first use the second.
	f := newFixture(t, fixtureOpts{ratePerSecond: 0.001, burst: 2})
	tok := f.credential(t, "stripe").AccessToken
	first := f.do(t, "GET", "/v1/proxy/stripe/v1/charges", bearer(tok), nil)
	second := f.do(t, "GET", "/v1/proxy/stripe/v1/charges", bearer(tok), nil)
	got := []any{first.Status, second.Status, oauthError(t, second.Body), second.Header.Get("Retry-After") != "", f.up.Hits()}
	want := []any{200, 429, "slow_down", true, int64(1)}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("[first second code retry-after hits] (-want +got):\n%s", diff)
	}
	// The README's metrics: a 429 of the proxy is counted like one of the
	// token endpoint, and as a refusal by its reason.
	gotM := []float64{
		counterValue(t, f, "keytrail_rate_limited_total", map[string]string{"endpoint": "proxy"}),
		counterValue(t, f, "keytrail_denies_total", map[string]string{"reason": "rate_limited"}),
	}
	if diff := cmp.Diff([]float64{1, 1}, gotM); diff != "" {
		t.Errorf("[rate_limited{endpoint=proxy} denies{reason=rate_limited}] (-want +got):\n%s", diff)
	}
}

func TestProxyQueryInjection(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	tok := f.credential(t, "query-api").AccessToken
	res := f.do(t, "GET", "/v1/proxy/query-api/search?q=shoes&api_key=callers-own&API_KEY=x&page=2", bearer(tok), nil)
	if res.Status != 200 {
		t.Fatalf("GET = %d %s", res.Status, res.Body)
	}
	f.waitEvent(t, audit.TypeUseResult)
	seen := f.up.Last()
	got := []string{seen.Path, seen.Query, seen.Header.Get("Authorization")}
	want := []string{"/base/search", "q=shoes&page=2&api_key=" + queryKey, ""}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("upstream [path query authorization] (-want +got):\n%s", diff)
	}
	use := f.eventsOf(audit.TypeUse)[0]
	if use.Upstream.Path != "/base/search?q&page" {
		t.Errorf("use event path = %q, want parameter names only and no api_key", use.Upstream.Path)
	}
}

func TestProxySharedUseSignal(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	cred := f.credential(t, "stripe")
	steps := []struct {
		name string
		xff  string // source address as the trusted front proxy reports it
		want int    // shared_use_suspected events so far
	}{
		{name: "ok/issued-address", xff: "", want: 0},
		{name: "fail/second-address", xff: "192.0.2.7", want: 1},
		{name: "ok/same-second-address-again", xff: "192.0.2.7", want: 1},
		{name: "fail/third-address", xff: "198.51.100.4", want: 2},
		{name: "ok/issued-address-again", xff: "127.0.0.1", want: 2},
	}
	for _, s := range steps {
		hdr := bearer(cred.AccessToken)
		if s.xff != "" {
			hdr.Set("X-Forwarded-For", s.xff)
		}
		res := f.do(t, "GET", "/v1/proxy/stripe/v1/charges", hdr, nil)
		if res.Status != 200 {
			t.Fatalf("%s: status %d %s", s.name, res.Status, res.Body)
		}
		f.waitEvent(t, audit.TypeUseResult)
		// Written deferred: nobody waits for it (the fixture's sink takes
		// it on a goroutine of its own, the audit file with the use event).
		waitFor(t, "the shared_use_suspected events", func() bool { return len(f.eventsOf(audit.TypeSharedUse)) >= s.want })
		evs := f.eventsOf(audit.TypeSharedUse)
		if len(evs) != s.want {
			t.Fatalf("%s: shared_use_suspected events = %d, want %d", s.name, len(evs), s.want)
		}
	}
	evs := f.eventsOf(audit.TypeSharedUse)
	got := []any{evs[0].IssuanceID, evs[0].Source.IP, evs[0].Details["first_address"], evs[1].Source.IP}
	want := []any{cred.Issuance.ID, "192.0.2.7", "127.0.0.1", "198.51.100.4"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("shared-use events [issuance ip first second-ip] (-want +got):\n%s", diff)
	}
	waitFor(t, "keytrail_shared_use_suspected_total", func() bool {
		return counterValue(t, f, "keytrail_shared_use_suspected_total", map[string]string{"grant": "stripe"}) >= 2
	})
	if v := counterValue(t, f, "keytrail_shared_use_suspected_total", map[string]string{"grant": "stripe"}); v != 2 {
		t.Errorf("keytrail_shared_use_suspected_total{stripe} = %v, want 2", v)
	}
}

func TestMinterCredential(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	a := f.credential(t, "stripe")
	b := f.credential(t, "stripe")
	if a.AccessToken == b.AccessToken {
		t.Fatalf("two credentials are equal")
	}
	body := strings.TrimPrefix(a.AccessToken, "ktp_")
	if len(body) != 43 || strings.ContainsAny(body, "+/=") {
		t.Errorf("credential body has %d base64url characters, want 43 (256 bits, unpadded)", len(body))
	}
	got := []any{a.Fields["grant"], a.Fields["proxy_url"], a.Issuance.ExpiresAt, a.Issuance.Refs.Fingerprint, a.ExpiresIn}
	want := []any{"stripe", "https://keytrail.example/v1/proxy/stripe/", f.clk.Now().Add(10 * time.Minute),
		broker.Fingerprint(a.AccessToken), int64(600)}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("credential [grant proxy_url expires fingerprint expires_in] (-want +got):\n%s", diff)
	}
	stored, err := f.store.FindIssuance(context.Background(), broker.RefFingerprint, broker.Fingerprint(a.AccessToken))
	if err != nil || stored.ID != a.Issuance.ID {
		t.Fatalf("FindIssuance(fingerprint) = %v, %v; want the issuance", stored, err)
	}
	if strings.Contains(eventJSON(t, stored), a.AccessToken) {
		t.Errorf("stored issuance holds the credential itself")
	}
}

func counterValue(t *testing.T, f *fixture, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := f.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if labelsMatch(m, labels) {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func labelsMatch(m *dto.Metric, want map[string]string) bool {
	n := 0
	for _, lp := range m.GetLabel() {
		if v, ok := want[lp.GetName()]; ok {
			if v != lp.GetValue() {
				return false
			}
			n++
		}
	}
	return n == len(want)
}

// TestProxyRefusedRequestsDoNotConsumeTheRateLimit: like a token exchange
// refused by policy (grant not allowed, workload blocked), a proxied
// request the grant refuses (a method or path it does not allow, a path
// the normaliser refuses, a declared body over the cap) takes
// nothing from the workload's rate: only requests that go on to the
// secret read, the use event and the upstream do. A client that sent a
// few bad requests still has its budget for good ones.
func TestProxyRefusedRequestsDoNotConsumeTheRateLimit(t *testing.T) {
	// burst 2: the exchange takes one token, one is left for a use.
	f := newFixture(t, fixtureOpts{ratePerSecond: 0.001, burst: 2})
	tok := f.credential(t, "stripe").AccessToken
	refused := []struct {
		method, path string
		hdr          http.Header
		body         string
		want         int
	}{
		{"GET", "/v1/proxy/stripe/v1/customers", bearer(tok), "", 403},
		{"DELETE", "/v1/proxy/stripe/v1/charges", bearer(tok), "", 403},
		{"GET", "/v1/proxy/stripe/v1/charges/a%2fb", bearer(tok), "", 400},
		{"POST", "/v1/proxy/stripe/v1/charges", bearer(tok), strings.Repeat("a", maxReqBytes+1), 413},
	}
	var got []int
	for _, r := range refused {
		var body io.Reader
		if r.body != "" {
			body = strings.NewReader(r.body)
		}
		got = append(got, f.do(t, r.method, r.path, r.hdr, body).Status)
	}
	ok := f.do(t, "GET", "/v1/proxy/stripe/v1/charges", bearer(tok), nil)
	got = append(got, ok.Status)
	again := f.do(t, "GET", "/v1/proxy/stripe/v1/charges", bearer(tok), nil)
	got = append(got, again.Status)
	want := []int{403, 403, 400, 413, 200, 429}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("[customers DELETE encoded-slash too-large; then good good] statuses (-want +got):\n%s", diff)
	}
	if n := f.up.Hits(); n != 1 {
		t.Errorf("upstream hits = %d, want 1", n)
	}
}

// TestProxyRateOwnBucket: a workload whose policy sets proxy_rate has a
// bucket for its proxied requests apart from the one rate gives its token
// exchanges, so heavy proxy use cannot starve its credential renewals
// (nor renewals its proxied calls). Without proxy_rate both share one
// bucket, as TestProxyRateLimit shows.
func TestProxyRateOwnBucket(t *testing.T) {
	f := newFixture(t, fixtureOpts{ratePerSecond: 0.001, burst: 2, proxyRate: "proxy_rate: {per_second: 0.001, burst: 2}"})
	tok := f.credential(t, "stripe").AccessToken // rate: one token left
	var got []int
	for range 3 { // proxy_rate: two, then 429
		got = append(got, f.do(t, "GET", "/v1/proxy/stripe/v1/charges", bearer(tok), nil).Status)
	}
	renew, err := f.svc.Exchange(context.Background(), broker.ExchangeRequest{
		SubjectToken: identityToken, Grant: "stripe", RequestID: "req_renew"})
	got = append(got, statusOf(renew, err))
	_, err = f.svc.Exchange(context.Background(), broker.ExchangeRequest{
		SubjectToken: identityToken, Grant: "stripe", RequestID: "req_renew2"})
	got = append(got, statusOf(nil, err))
	want := []int{200, 200, 429, 200, 429}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("[use use use renew renew] statuses (-want +got):\n%s", diff)
	}
}

func statusOf(_ *broker.ExchangeResult, err error) int {
	if err != nil {
		return broker.StatusOf(broker.AsError(err))
	}
	return 200
}
