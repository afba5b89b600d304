package proxy_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/broker/proxy"
)

var secops = &broker.Admin{Name: "secops", Identity: broker.IdentityRef{Iss: "https://sso.example", Sub: "alice"}, Roles: []string{"revoke"}}

// cutDeadline bounds how long a revoked in-flight request may go on: far
// below the overall timeout (60 s), generous for a loaded machine.
const cutDeadline = 10 * time.Second

// revocations are the ways a revocation covering an in-flight request
// becomes known to the proxy's instance: made here, announced by another
// instance, or read from the shared store at a refresh.
var revocations = []struct {
	name   string
	revoke func(t *testing.T, f *fixture, cred *broker.ExchangeResult)
	status string // the check's reason when the upstream had not answered yet
}{
	{name: "cut/issuance-revoked-here", status: "credential_revoked",
		revoke: func(t *testing.T, f *fixture, cred *broker.ExchangeResult) {
			revokeHere(t, f.svc, broker.RevokeSelector{IssuanceID: cred.Issuance.ID}, false)
		}},
	{name: "cut/session-revoked-here", status: "credential_revoked",
		revoke: func(t *testing.T, f *fixture, cred *broker.ExchangeResult) {
			revokeHere(t, f.svc, broker.RevokeSelector{SessionID: cred.Issuance.SessionID}, false)
		}},
	{name: "cut/owner-revoked-here", status: "credential_revoked",
		revoke: func(t *testing.T, f *fixture, cred *broker.ExchangeResult) {
			revokeHere(t, f.svc, broker.RevokeSelector{Owner: "team-payments"}, false)
		}},
	{name: "cut/workload-blocked-here", status: "credential_revoked",
		revoke: func(t *testing.T, f *fixture, cred *broker.ExchangeResult) {
			revokeHere(t, f.svc, broker.RevokeSelector{Workload: "payments"}, true)
		}},
	{name: "cut/workload-block-announced", status: "workload_blocked",
		revoke: func(t *testing.T, f *fixture, cred *broker.ExchangeResult) {
			// A block alone (its issuances are marked by the instance that
			// made it; this one learns the block first).
			f.cache.Apply(broker.Notice{RevocationID: "rev_elsewhere", Blocked: []string{"payments"}})
		}},
	{name: "cut/issuance-revoked-elsewhere-read-at-refresh", status: "credential_revoked",
		revoke: func(t *testing.T, f *fixture, cred *broker.ExchangeResult) {
			other := otherInstance(t, f)
			revokeHere(t, other, broker.RevokeSelector{IssuanceID: cred.Issuance.ID}, false)
			if f.cache.Revoked(cred.Issuance.ID) {
				t.Fatal("the cache knew the revocation before its refresh")
			}
			if err := f.cache.Refresh(context.Background()); err != nil {
				t.Fatal(err)
			}
		}},
}

// descriptions are the error_description of the checks' refusals.
var descriptions = map[string]string{
	"credential_revoked": "the credential has been revoked",
	"workload_blocked":   "the workload is blocked",
}

// revocationCase is one of revocations over HTTP/1.1 or HTTP/2 upstream.
type revocationCase struct {
	name   string
	http2  bool
	revoke func(t *testing.T, f *fixture, cred *broker.ExchangeResult)
	status string
}

func cases() []revocationCase {
	var out []revocationCase
	for _, proto := range []string{"http1", "http2"} {
		for _, r := range revocations {
			out = append(out, revocationCase{name: proto + "/" + r.name, http2: proto == "http2", revoke: r.revoke, status: r.status})
		}
	}
	return out
}

func revokeHere(t *testing.T, svc *broker.Service, sel broker.RevokeSelector, block bool) {
	t.Helper()
	if _, err := svc.Revoke(context.Background(), secops, sel, "leaked", broker.RevokeOptions{Block: block}, "req_revoke"); err != nil {
		t.Fatalf("Revoke(%+v) = %v", sel, err)
	}
}

// otherInstance is a broker instance sharing f's store, without its
// revocation cache, notices or audit log.
func otherInstance(t *testing.T, f *fixture) *broker.Service {
	t.Helper()
	minter, err := proxy.NewMinter(proxy.MinterOptions{PublicURL: "https://keytrail.example"})
	if err != nil {
		t.Fatal(err)
	}
	svc, err := broker.NewService(broker.Deps{
		Policy: f.svc.Policy, Authn: func() broker.Authenticator { return brokertest.Authn{} },
		Revokers: map[string]broker.Revoker{broker.KindProxy: minter},
		Store:    f.store, Audit: &brokertest.Sink{}, Now: f.clk.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

// TestProxyRevokedInFlightIsCut: a proxied response streaming when its
// credential is revoked (by issuance, session, owner or workload, made on
// this instance, announced, or read at a refresh) or its workload blocked,
// from an HTTP/1.1 or HTTP/2 upstream, is cut at once, not at the overall timeout: the caller's body read
// fails without the rest of the stream, the upstream's request ends, and
// the use_result says why (outcome aborted, revoked_in_flight, status as
// relayed).
func TestProxyRevokedInFlightIsCut(t *testing.T) {
	for _, tt := range cases() {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, fixtureOpts{cache: true, http2: tt.http2})
			if err := f.cache.Refresh(context.Background()); err != nil { // loaded, as Run does at start
				t.Fatal(err)
			}
			cred := f.credential(t, "stripe")
			h := f.up.holdRequest(t)
			req, err := http.NewRequest("GET", "http://"+f.addr+"/v1/proxy/stripe/up/hold", nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Authorization", "Bearer "+cred.AccessToken)
			res, err := f.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			first := make([]byte, len(holdFirst))
			if _, err := io.ReadFull(res.Body, first); err != nil || string(first) != holdFirst {
				t.Fatalf("first chunk = %q, %v; want %q", first, err, holdFirst)
			}

			tt.revoke(t, f, cred)

			type read struct {
				rest []byte
				err  error
			}
			done := make(chan read, 1)
			go func() {
				rest, err := io.ReadAll(res.Body)
				done <- read{rest, err}
			}()
			select {
			case got := <-done:
				if got.err == nil || len(got.rest) != 0 {
					t.Errorf("rest of the body = %q, %v; want nothing and an error (cut)", got.rest, got.err)
				}
			case <-time.After(cutDeadline):
				t.Fatalf("the response was still streaming %v after the revocation", cutDeadline)
			}
			select {
			case <-h.gone:
			case <-time.After(cutDeadline):
				t.Fatalf("the upstream's request still ran %v after the revocation", cutDeadline)
			}

			f.waitEvent(t, audit.TypeUseResult)
			results := f.eventsOf(audit.TypeUseResult)
			if len(results) != 1 {
				t.Fatalf("use_result events = %d, want 1", len(results))
			}
			r := results[0]
			var bytes any // nil: not recorded
			if r.Upstream.Bytes != nil {
				bytes = *r.Upstream.Bytes
			}
			got := []any{*r.Outcome, r.Upstream.Status, bytes, r.Details["not_sent"]}
			want := []any{audit.Outcome{Status: 200, Error: "aborted", Reason: "revoked_in_flight"}, 200, int64(len(holdFirst)), nil}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("use_result [outcome upstream-status bytes not_sent] (-want +got):\n%s", diff)
			}
		})
	}
}

// TestProxyRevokedBeforeUpstreamAnswersIsCut: a request already sent
// upstream whose credential is revoked before the upstream answers is cut
// too: the caller gets the checks' 403 and the use_result says
// revoked_in_flight (the request did go upstream: no not_sent, no deny).
func TestProxyRevokedBeforeUpstreamAnswersIsCut(t *testing.T) {
	for _, tt := range cases() {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, fixtureOpts{cache: true, http2: tt.http2})
			if err := f.cache.Refresh(context.Background()); err != nil {
				t.Fatal(err)
			}
			cred := f.credential(t, "stripe")
			h := f.up.holdRequest(t)
			req, err := http.NewRequest("GET", "http://"+f.addr+"/v1/proxy/stripe/up/hold?headers=late", nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Authorization", "Bearer "+cred.AccessToken)
			done := make(chan *response, 1)
			go func() {
				res, err := f.client.Do(req)
				if err != nil {
					done <- &response{Err: err}
					return
				}
				defer res.Body.Close()
				b, err := io.ReadAll(res.Body)
				done <- &response{Status: res.StatusCode, Body: string(b), Err: err}
			}()
			select {
			case <-h.arrived:
			case <-time.After(cutDeadline):
				t.Fatal("the request did not reach the upstream")
			}

			tt.revoke(t, f, cred)

			var res *response
			select {
			case res = <-done:
			case <-time.After(cutDeadline):
				t.Fatalf("no answer %v after the revocation", cutDeadline)
			}
			if res.Err != nil {
				t.Fatalf("answer: %v", res.Err)
			}
			var body struct {
				Description string `json:"error_description"`
			}
			_ = json.Unmarshal([]byte(res.Body), &body)
			got := []any{res.Status, oauthError(t, res.Body), body.Description, f.up.Hits()}
			want := []any{403, "access_denied", descriptions[tt.status], int64(1)}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("answer [status error description upstream-hits] (-want +got):\n%s", diff)
			}
			select {
			case <-h.gone:
			case <-time.After(cutDeadline):
				t.Fatalf("the upstream's request still ran %v after the revocation", cutDeadline)
			}

			f.waitEvent(t, audit.TypeUseResult)
			results := f.eventsOf(audit.TypeUseResult)
			if len(results) != 1 {
				t.Fatalf("use_result events = %d, want 1", len(results))
			}
			r := results[0]
			got = []any{*r.Outcome, r.Upstream.Status, r.Details["not_sent"], len(f.eventsOf(audit.TypeDeny))}
			want = []any{audit.Outcome{Status: 403, Error: "access_denied", Reason: "revoked_in_flight"}, 0, nil, 0}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("use_result [outcome upstream-status not_sent] and denies (-want +got):\n%s", diff)
			}
		})
	}
}

// TestProxyRevokedBeforeResponseStartsIsCut: a request cut while its
// response had not started to reach the caller (here a streamed body whose
// first bytes had not come, ReverseProxy's early header flush dropped, as
// when it loses its race) gets the checks' 403 as one the upstream had not
// answered, not a connection cut with nothing sent, which the client would
// take for an idle connection closed and send again (to be refused by the
// checks, with a deny event).
func TestProxyRevokedBeforeResponseStartsIsCut(t *testing.T) {
	f := newFixture(t, fixtureOpts{cache: true})
	proxy.DropEarlyFlush(f.proxy)
	if err := f.cache.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	cred := f.credential(t, "stripe")
	h := f.up.holdRequest(t)
	req, err := http.NewRequest("GET", "http://"+f.addr+"/v1/proxy/stripe/up/encoded?as=gzip&stream=1&hold=1", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+cred.AccessToken)
	done := make(chan *response, 1)
	go func() {
		res, err := f.client.Do(req)
		if err != nil {
			done <- &response{Err: err}
			return
		}
		defer res.Body.Close()
		b, err := io.ReadAll(res.Body)
		done <- &response{Status: res.StatusCode, Body: string(b), Err: err}
	}()
	select {
	case <-h.arrived:
	case <-time.After(cutDeadline):
		t.Fatal("the request did not reach the upstream")
	}
	revokeHere(t, f.svc, broker.RevokeSelector{IssuanceID: cred.Issuance.ID}, false)
	var res *response
	select {
	case res = <-done:
	case <-time.After(cutDeadline):
		t.Fatalf("no answer %v after the revocation", cutDeadline)
	}
	if res.Err != nil || res.Status != 403 || oauthError(t, res.Body) != "access_denied" {
		t.Fatalf("answer %d %q (%v), want 403 access_denied", res.Status, res.Body, res.Err)
	}
	f.waitEvent(t, audit.TypeUseResult)
	results := f.eventsOf(audit.TypeUseResult)
	r := results[0]
	got := []any{len(results), *r.Outcome, f.up.Hits(), len(f.eventsOf(audit.TypeDeny))}
	want := []any{1, audit.Outcome{Status: 403, Error: "access_denied", Reason: "revoked_in_flight"}, int64(1), 0}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("[use_results outcome upstream-hits denies] (-want +got):\n%s", diff)
	}
	// Cut after the upstream's headers came (then its status, with 0
	// bytes relayed) or before (neither).
	if s := r.Upstream.Status; s != 0 && (s != 200 || r.Upstream.Bytes == nil || *r.Upstream.Bytes != 0) {
		t.Errorf("use_result upstream status %d bytes %v, want 200 and 0, or neither", s, r.Upstream.Bytes)
	}
}
