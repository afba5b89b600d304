package proxy_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/broker/proxy"
)

// TestProxyClientGoneIsNotAnUpstreamError: a caller that goes away while
// its request waits for the upstream is not an upstream failure. Its "http"
// access-log line says 499 (the client closed the request) at INFO, no line
// about it is logged at WARN, its use_result event records 499 with reason
// client_gone, keytrail_proxy_requests_total counts it as 499, and
// keytrail_denies_total does not count it.
func TestProxyClientGoneIsNotAnUpstreamError(t *testing.T) {
	logs := &brokertest.SyncBuffer{}
	f := newFixture(t, fixtureOpts{logs: logs})
	tok := f.credential(t, "stripe").AccessToken

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+f.addr+"/v1/proxy/stripe/up/hang", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	done := make(chan error, 1)
	go func() {
		res, err := f.client.Do(req)
		if err == nil {
			res.Body.Close()
		}
		done <- err
	}()
	waitFor(t, "the request to reach the upstream", func() bool { return f.up.Hits() == 1 })
	cancel() // the caller goes away while the upstream has not answered
	if err := <-done; err == nil {
		t.Fatal("the cancelled request got a response")
	}

	f.waitEvent(t, audit.TypeUseResult)
	var line string
	waitFor(t, "the request's \"http\" line", func() bool {
		for _, l := range strings.Split(logs.String(), "\n") {
			if strings.Contains(l, "msg=http ") && strings.Contains(l, "path=/v1/proxy/stripe/up/hang ") {
				line = l
				return true
			}
		}
		return false
	})
	if !strings.Contains(line, "level=INFO ") || !strings.Contains(line, " status=499 ") {
		t.Errorf("\"http\" line of the request the caller left = %s; want level=INFO status=499", line)
	}
	id := ""
	for _, kv := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(kv, "request_id="); ok {
			id = v
		}
	}
	for _, l := range strings.Split(logs.String(), "\n") {
		if id != "" && strings.Contains(l, "request_id="+id) && !strings.Contains(l, "level=INFO ") {
			t.Errorf("the caller going away is logged above INFO: %s", l)
		}
	}

	results := f.eventsOf(audit.TypeUseResult)
	if len(results) != 1 || results[0].Outcome == nil {
		t.Fatalf("use_result events = %+v, want one with an outcome", results)
	}
	got := []any{results[0].Outcome.Status, results[0].Outcome.Reason,
		counterValue(t, f, "keytrail_proxy_requests_total", map[string]string{"grant": "stripe", "status": "499"}),
		counterValue(t, f, "keytrail_proxy_requests_total", map[string]string{"grant": "stripe", "status": "502"}),
		counterValue(t, f, "keytrail_denies_total", map[string]string{"reason": "client_gone"})}
	want := []any{499, "client_gone", float64(1), float64(0), float64(0)}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("[use_result status, reason; proxy_requests{499} {502}; denies{client_gone}] (-want +got):\n%s", diff)
	}
}

// waitFor waits until cond holds, at most 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after 10s waiting for %s", what)
		}
		<-time.After(5 * time.Millisecond)
	}
}

// TestProxyUpstreamErrorsAreNotDenies pins the README's semantics of
// keytrail_denies_total: it counts requests the broker refused (an error
// answer and a deny audit event, nothing sent upstream), 503s of a backend
// the broker needs included. A proxied call that went upstream (its use
// event is durable) and failed there, 502 or 504, is no refusal: it is
// counted in keytrail_proxy_requests_total by status, and its use_result
// event says why.
func TestProxyUpstreamErrorsAreNotDenies(t *testing.T) {
	f := newFixture(t, fixtureOpts{timeouts: proxy.Timeouts{ResponseHeader: 100 * time.Millisecond}})
	tok := f.credential(t, "stripe").AccessToken
	var got []any
	for _, path := range []string{"/up/switch", "/up/hang"} {
		res := f.do(t, "GET", "/v1/proxy/stripe"+path, bearer(tok), nil)
		got = append(got, res.Status)
	}
	for _, reason := range []string{"upstream_error", "upstream_timeout"} {
		got = append(got, counterValue(t, f, "keytrail_denies_total", map[string]string{"reason": reason}))
	}
	for _, status := range []string{"502", "504"} {
		got = append(got, counterValue(t, f, "keytrail_proxy_requests_total", map[string]string{"grant": "stripe", "status": status}))
	}
	want := []any{502, 504, float64(0), float64(0), float64(1), float64(1)}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("[switch hang; denies{upstream_error} {upstream_timeout}; proxy_requests{502} {504}] (-want +got):\n%s", diff)
	}
	if n := len(f.eventsOf(audit.TypeDeny)); n != 0 {
		t.Errorf("deny events = %d, want 0", n)
	}
}
