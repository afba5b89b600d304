package proxy_test

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
)

// TestProxyRevokedDuringForwardIsNotSent: a credential revoked (or its
// workload blocked) after the proxy's checks but before the request goes
// upstream, here while the secret is read, is refused with the checks' 403
// and nothing reaches the upstream. The revocation arrives as an
// announcement to this instance's revocation cache, as one made on another
// instance does; the use event already written is followed by a deny (the
// refusal, before the 403 leaves, as for a refusal by the checks) and a
// use_result saying the request was not sent.
func TestProxyRevokedDuringForwardIsNotSent(t *testing.T) {
	tests := []struct {
		name   string
		notice func(res *broker.ExchangeResult) broker.Notice
		reason string
	}{
		{name: "fail/credential-revoked", reason: "credential_revoked",
			notice: func(res *broker.ExchangeResult) broker.Notice {
				return broker.Notice{Revoked: []string{res.Issuance.ID}}
			}},
		{name: "fail/workload-blocked", reason: "workload_blocked",
			notice: func(*broker.ExchangeResult) broker.Notice { return broker.Notice{Blocked: []string{"payments"}} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, fixtureOpts{cache: true})
			cred := f.credential(t, "stripe")
			f.secrets.mu.Lock()
			f.secrets.onRead = func() { f.cache.Apply(tt.notice(cred)) }
			f.secrets.mu.Unlock()

			res := f.do(t, "GET", "/v1/proxy/stripe/v1/charges", bearer(cred.AccessToken), nil)
			f.waitEvent(t, audit.TypeUseResult)
			got := []any{res.Status, oauthError(t, res.Body), f.up.Hits()}
			want := []any{403, "access_denied", int64(0)}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("request revoked before it was sent: [status error upstream-hits] (-want +got):\n%s", diff)
			}
			results := f.eventsOf(audit.TypeUseResult)
			if len(results) != 1 {
				t.Fatalf("use_result events = %d, want 1", len(results))
			}
			r := results[0]
			gotEv := []any{*r.Outcome, r.Upstream.Status, r.Details["not_sent"]}
			wantEv := []any{audit.Outcome{Status: 403, Error: "access_denied", Reason: tt.reason}, 0, true}
			if diff := cmp.Diff(wantEv, gotEv); diff != "" {
				t.Errorf("use_result [outcome upstream-status not_sent] (-want +got):\n%s", diff)
			}
			// The refusal is a deny like the checks' own, written before
			// the 403 went out (so before the use_result), naming the
			// request and the issuance.
			var order []string
			var deny *audit.Event
			for _, ev := range f.sink.Events() {
				switch ev.Type {
				case audit.TypeUse, audit.TypeDeny, audit.TypeUseResult:
					order = append(order, ev.Type)
				}
				if ev.Type == audit.TypeDeny {
					deny = ev
				}
			}
			if diff := cmp.Diff([]string{audit.TypeUse, audit.TypeDeny, audit.TypeUseResult}, order); diff != "" {
				t.Fatalf("events of the refused request (-want +got):\n%s", diff)
			}
			gotDeny := []any{*deny.Outcome, deny.IssuanceID, deny.RequestID, deny.UseID}
			wantDeny := []any{audit.Outcome{Status: 403, Error: "access_denied", Reason: tt.reason}, cred.Issuance.ID, r.RequestID, r.UseID}
			if diff := cmp.Diff(wantDeny, gotDeny); diff != "" {
				t.Errorf("deny [outcome issuance request use] (-want +got):\n%s", diff)
			}

			// The next request is refused by the checks themselves.
			f.secrets.mu.Lock()
			f.secrets.onRead = nil
			f.secrets.mu.Unlock()
			if res := f.do(t, "GET", "/v1/proxy/stripe/v1/charges", bearer(cred.AccessToken), nil); res.Status != 403 || f.up.Hits() != 0 {
				t.Errorf("next request: status %d, upstream hits %d; want 403, 0", res.Status, f.up.Hits())
			}
		})
	}
}
