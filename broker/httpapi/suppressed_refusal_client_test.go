package httpapi_test

import (
	"context"
	"errors"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/client"
)

// TestSuppressedRefusalStaysPermanentForClient: past
// refusal_limit.per_identity, an authenticated caller's refusal (here a
// workload asking for a grant it is not allowed, after a policy change) was
// answered 429 slow_down with Retry-After instead of its real 403: the
// client (keytrail fetch / exec) took it for a rate limit and retried it
// until its timeout, instead of exiting with the refusal's fix-it message.
// With per_identity 20, a fleet of 25 pods of one workload got the clear
// error for 20 of them; the other 5 spun. Every one now gets the same
// permanent error, never retried; the 5 past the limit still have no audit
// event of their own, counted by the caller's summary and by
// keytrail_refusals_suppressed_total{scope="identity"}.
func TestSuppressedRefusalStaysPermanentForClient(t *testing.T) {
	const pods, perIdentity = 25, 20
	f := newRefusalFixtureWith(t, &broker.RefusalLimits{PerIdentity: perIdentity}, testPolicy(t, "", `
  - name: other-vault
    kind: vault_token
    ttl: 10m
    vault_token: {policies: [other]}
`), broker.IntrospectLimits{})
	srv := httptest.NewServer(f.h)
	t.Cleanup(srv.Close)
	c, err := client.New(client.Options{Addr: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	before := len(f.sink.Events())
	var first *client.Error
	for i := range pods {
		retries := 0
		src, err := client.NewSource(client.SourceOptions{Client: c, Grant: "other-vault",
			Exchange: client.ExchangeOptions{Identity: client.IdentityFunc{Name: "test",
				Func: func(context.Context) (string, error) { return goodToken, nil }}},
			// A retry ends the fetch at once: the test counts it.
			Sleep: func(context.Context, time.Duration) error {
				retries++
				return context.Canceled
			}})
		if err != nil {
			t.Fatal(err)
		}
		_, err = src.Fetch(context.Background())
		var ce *client.Error
		if retries != 0 || !client.IsPermanent(err) || !errors.As(err, &ce) {
			t.Fatalf("fetch of pod %d: %v (%d retries), want the permanent refusal, no retry", i+1, err, retries)
		}
		if first == nil {
			first = ce
			if ce.Status != 403 || ce.Code != "access_denied" {
				t.Fatalf("fetch of pod 1: %+v, want 403 access_denied", ce)
			}
		}
		if ce.Status != first.Status || ce.Code != first.Code || ce.Description != first.Description || ce.RetryAfter != 0 {
			t.Fatalf("fetch of pod %d: %+v, want the same refusal as pod 1's (%+v), no Retry-After", i+1, ce, first)
		}
	}
	if got := suppressedOf(t, f.reg, broker.RefusalScopeIdentity); got != pods-perIdentity {
		t.Errorf("keytrail_refusals_suppressed_total{scope=identity} = %v, want %d", got, pods-perIdentity)
	}
	f.svc.FlushRefusalSummaries(context.Background(), true)
	events, summed := 0, 0
	for _, ev := range f.sink.Events()[before:] {
		switch {
		case ev.Type == audit.TypeDeny && ev.Details["scope"] == broker.RefusalScopeIdentity:
			n, _ := ev.Details["suppressed"].(int)
			summed += n
		case ev.Type == audit.TypeDeny && ev.Outcome != nil && ev.Outcome.Reason == "grant_not_allowed":
			events++
		}
	}
	if events != perIdentity || summed != pods-perIdentity {
		t.Errorf("%d refused fetches: %d grant_not_allowed events, %d in summaries; want %d, %d", pods, events, summed, perIdentity, pods-perIdentity)
	}
}
