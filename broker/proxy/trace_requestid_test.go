package proxy_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/adapters/auditfile"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/trace"
)

// TestTraceFindsProxiedCallByUpstreamRequestID: with the proxy writing to
// a real audit file, the online trace source (what GET /v1/admin/trace
// answers from) resolves the upstream's own request id to the use and its
// issuance.
func TestTraceFindsProxiedCallByUpstreamRequestID(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	sink, err := auditfile.Open(auditfile.Options{Path: path, NoFsync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sink.Close() })
	appended := make(chan string, 16)
	f := newFixture(t, fixtureOpts{audit: appendNotifier{sink, appended}})
	cred := f.credential(t, "stripe")
	res := f.do(t, "POST", "/v1/proxy/stripe/up/request-ids?Request-Id=req_ABC", bearer(cred.AccessToken), strings.NewReader("amount=100"))
	if res.Status != 200 || res.Header.Get("Request-Id") != "req_ABC" {
		t.Fatalf("POST = %d, Request-Id %q, want 200 and req_ABC", res.Status, res.Header.Get("Request-Id"))
	}
	useID := res.Header.Get("X-Keytrail-Use")
	// The use_result is written after the response: wait for it.
	timeout := time.After(10 * time.Second)
	for typ := ""; typ != audit.TypeUseResult; {
		select {
		case typ = <-appended:
		case <-timeout:
			t.Fatal("no use_result event was written")
		}
	}
	live, err := trace.NewLive(trace.LiveOptions{Path: path, Store: f.store})
	if err != nil {
		t.Fatal(err)
	}
	got, err := live.Trace(context.Background(), "req_ABC")
	if err != nil {
		t.Fatalf("Trace(req_ABC) = %v, want the proxied call", err)
	}
	var uses []string
	for _, ev := range got.Uses {
		uses = append(uses, ev.Type+" "+ev.UseID)
	}
	want := []string{cred.Issuance.ID, trace.KindUpstreamRequestID, "req_ABC"}
	if diff := cmp.Diff(want, []string{got.Issuance.ID, got.Query.Kind, got.Query.Value}); diff != "" {
		t.Errorf("Trace(req_ABC) issuance, match kind, value (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{audit.TypeUse + " " + useID, audit.TypeUseResult + " " + useID}, uses); diff != "" {
		t.Errorf("Trace(req_ABC) uses (-want +got):\n%s", diff)
	}
}

// appendNotifier is an audit sink (without deferred appends) that announces
// each event type once it is written.
type appendNotifier struct {
	sink     broker.AuditSink
	appended chan<- string
}

func (a appendNotifier) Append(ctx context.Context, ev *audit.Event) error {
	err := a.sink.Append(ctx, ev)
	if err == nil {
		a.appended <- ev.Type
	}
	return err
}
