package proxy_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/proxy"
)

// TestUseResultRecordsUpstreamBytes: a use_result event describes the
// upstream's response whenever there was one, with the bytes of its body
// relayed to the caller, 0 included (an empty body is a fact an auditor
// wants); the broker's own error body never counts as upstream bytes. When
// the upstream sent no response, upstream has neither status nor bytes.
func TestUseResultRecordsUpstreamBytes(t *testing.T) {
	f := newFixture(t, fixtureOpts{timeouts: proxy.Timeouts{ResponseHeader: 2 * time.Second}})
	tok := f.credential(t, "stripe").AccessToken
	tests := []struct {
		name       string
		path       string
		wantStatus int
		want       map[string]any // the event's upstream object, duration_ms aside
	}{
		{name: "ok/empty-body", path: "/up/encoded?as=empty", wantStatus: 200,
			want: map[string]any{"method": "GET", "path": "/up/encoded?as", "status": 200.0, "bytes": 0.0}},
		{name: "ok/no-content", path: "/up/encoded?as=empty&status=204", wantStatus: 204,
			want: map[string]any{"method": "GET", "path": "/up/encoded?as&status", "status": 204.0, "bytes": 0.0}},
		{name: "ok/body", path: "/v1/charges", wantStatus: 200,
			want: map[string]any{"method": "GET", "path": "/v1/charges", "status": 200.0, "bytes": float64(len(`{"object":"list","data":[]}`))}},
		{name: "fail/response-refused-nothing-relayed", path: "/up/encoded?as=plain&ce=br", wantStatus: 502,
			want: map[string]any{"method": "GET", "path": "/up/encoded?as&ce", "status": 200.0, "bytes": 0.0}},
		{name: "fail/no-upstream-response", path: "/up/hang", wantStatus: 504,
			want: map[string]any{"method": "GET", "path": "/up/hang"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(f.eventsOf(audit.TypeUseResult))
			res := f.do(t, "GET", "/v1/proxy/stripe"+tt.path, bearer(tok), nil)
			if res.Status != tt.wantStatus {
				t.Fatalf("GET %s = %d, want %d: %s", tt.path, res.Status, tt.wantStatus, res.Body)
			}
			f.waitEvent(t, audit.TypeUseResult)
			results := f.eventsOf(audit.TypeUseResult)
			if len(results) != before+1 {
				t.Fatalf("use_result events = %d, want %d", len(results), before+1)
			}
			var ev struct {
				Upstream map[string]any `json:"upstream"`
			}
			if err := json.Unmarshal([]byte(eventJSON(t, results[before])), &ev); err != nil {
				t.Fatal(err)
			}
			delete(ev.Upstream, "duration_ms")
			delete(ev.Upstream, "host") // the test upstream's address
			if diff := cmp.Diff(tt.want, ev.Upstream); diff != "" {
				t.Errorf("use_result upstream (-want +got):\n%s", diff)
			}
		})
	}
	// The use event, written before the upstream answers, describes no
	// response.
	for _, ev := range f.eventsOf(audit.TypeUse) {
		var got struct {
			Upstream map[string]any `json:"upstream"`
		}
		if err := json.Unmarshal([]byte(eventJSON(t, ev)), &got); err != nil {
			t.Fatal(err)
		}
		if _, ok := got.Upstream["status"]; ok {
			t.Errorf("use event upstream = %v, want no status", got.Upstream)
		}
		if _, ok := got.Upstream["bytes"]; ok {
			t.Errorf("use event upstream = %v, want no bytes", got.Upstream)
		}
	}
}
