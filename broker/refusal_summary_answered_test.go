package broker_test

import (
	"context"
	"fmt"
	"strconv"
	"testing"

	"github.com/keytrail/keytrail/broker"
)

// TestSuppressedRefusalSummarySaysHowAnswered: since the refusals of an
// authenticated caller past refusal_limit.per_identity are answered as
// themselves (403, 400, 401) rather than 429, the caller's summary still
// had outcome 429 slow_down rate_limited (as keytrail report and trace
// read it) and nothing saying that none of the requests it stands for
// was answered 429: an auditor read that the caller had been rate
// limited. The summary's details.answered now counts them by the status
// they were answered with; a summary of 429s alone has none (as before).
func TestSuppressedRefusalSummarySaysHowAnswered(t *testing.T) {
	const perIdentity = 20
	svc, sink := refusedService(t, &broker.RefusalLimits{PerIdentity: perIdentity})
	ctx := context.Background()
	reqs := []broker.ExchangeRequest{
		{SubjectToken: "payments", Grant: "payments-vault"},                     // 403 grant_not_allowed
		{SubjectToken: "payments", Grant: "nope"},                               // 400 unknown_grant
		{SubjectToken: "payments", ActorToken: "garbage", Grant: "handoff-jwt"}, // 401 actor_bad_signature
	}
	before := len(sink.Events())
	want := map[string]int{}
	for i := range 150 {
		_, err := svc.Exchange(ctx, reqs[i%len(reqs)])
		if err == nil {
			t.Fatal("a refused exchange succeeded")
		}
		if broker.SuppressedScope(err) == broker.RefusalScopeIdentity {
			want[strconv.Itoa(broker.StatusOf(broker.AsError(err)))]++
		}
	}
	if len(want) != 3 {
		t.Fatalf("unaudited refusals by status %v, want 400, 401 and 403", want)
	}
	svc.FlushRefusalSummaries(ctx, true)
	var sum map[string]any
	for _, ev := range sink.Events()[before:] {
		if ev.Details["scope"] == broker.RefusalScopeIdentity {
			if sum != nil {
				t.Fatal("two summaries, want one")
			}
			sum = ev.Details
			if ev.Outcome == nil || ev.Outcome.Status != 429 || ev.Outcome.Reason != broker.ReasonRateLimited {
				t.Errorf("summary outcome %+v, want 429 rate_limited (as report and trace read it)", ev.Outcome)
			}
		}
	}
	if sum == nil {
		t.Fatal("no summary")
	}
	if got := fmt.Sprint(sum["answered"]); got != fmt.Sprint(want) {
		t.Errorf("summary details.answered = %s, want %s (the statuses the suppressed requests were answered with); details %v", got, fmt.Sprint(want), sum)
	}
}
