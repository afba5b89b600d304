package proxy_test

import (
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/broker/proxy"
)

// TestProxyLogLinesNameTheRequest: every line the proxy logs about one
// proxied request names that request's id (the X-Request-Id the caller
// got), so an operator can join it with the request's "http" line, its
// error and its audit events.
func TestProxyLogLinesNameTheRequest(t *testing.T) {
	tests := []struct {
		name string
		fail func(ev *audit.Event) bool // audit events the sink refuses
		path string
		xff  string
		msg  string // the log line to find
	}{
		{name: "shared-use", path: "/v1/charges", xff: "192.0.2.7",
			msg: "proxy credential used from a new address"},
		{name: "shared-use-audit-failed", path: "/v1/charges", xff: "192.0.2.7",
			fail: func(ev *audit.Event) bool { return ev.Type == audit.TypeSharedUse },
			msg:  "audit shared_use_suspected event failed"},
		{name: "use-result-audit-failed", path: "/v1/charges",
			fail: func(ev *audit.Event) bool { return ev.Type == audit.TypeUseResult },
			msg:  "audit use_result event failed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			logs := &brokertest.SyncBuffer{}
			fo := fixtureOpts{logs: logs}
			if tt.fail != nil {
				fo.audit = &brokertest.Sink{Fail: tt.fail}
			}
			f := newFixture(t, fo)
			tok := f.credential(t, "stripe").AccessToken
			hdr := bearer(tok)
			if tt.xff != "" {
				hdr.Set("X-Forwarded-For", tt.xff)
			}
			res := f.do(t, "GET", "/v1/proxy/stripe"+tt.path, hdr, nil)
			if res.Status != 200 {
				t.Fatalf("status %d %s, want 200", res.Status, res.Body)
			}
			id := res.Header.Get("X-Request-Id")
			var line string
			deadline := time.Now().Add(10 * time.Second)
			for line == "" {
				for _, l := range strings.Split(logs.String(), "\n") {
					if strings.Contains(l, `msg="`+tt.msg+`"`) {
						line = l
					}
				}
				if line == "" && time.Now().After(deadline) {
					t.Fatalf("no log line %q within 10s; log:\n%s", tt.msg, logs.String())
				}
				if line == "" {
					<-time.After(5 * time.Millisecond)
				}
			}
			if !strings.Contains(line, " request_id="+id) {
				t.Errorf("log line does not name its request (request_id=%s):\n%s", id, line)
			}
		})
	}
}

// TestProxyErrorLogNamesTheStatusSent: the "request failed" line of a
// proxied request refused with a status outside the OAuth categories
// (413 for a body over the cap, 504 for an upstream that did not answer in
// time) names the status the caller got, not the category's (400, 503),
// so the log and the response agree.
func TestProxyErrorLogNamesTheStatusSent(t *testing.T) {
	tests := []struct {
		name   string
		method string
		path   string
		body   string
		want   int
	}{
		{name: "fail/body-too-large", method: "POST", path: "/v1/charges", body: strings.Repeat("a", maxReqBytes+1), want: 413},
		{name: "fail/upstream-timeout", method: "GET", path: "/up/hang", want: 504},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			logs := &brokertest.SyncBuffer{}
			f := newFixture(t, fixtureOpts{logs: logs, timeouts: proxy.Timeouts{ResponseHeader: 100 * time.Millisecond}})
			tok := f.credential(t, "stripe").AccessToken
			var body io.Reader
			if tt.body != "" {
				body = strings.NewReader(tt.body)
			}
			res := f.do(t, tt.method, "/v1/proxy/stripe"+tt.path, bearer(tok), body)
			if res.Status != tt.want {
				t.Fatalf("status %d %s, want %d", res.Status, res.Body, tt.want)
			}
			id := res.Header.Get("X-Request-Id")
			var line string
			for _, l := range strings.Split(logs.String(), "\n") {
				if strings.Contains(l, `msg="request failed"`) && strings.Contains(l, " request_id="+id) {
					line = l
				}
			}
			if line == "" {
				t.Fatalf("no \"request failed\" line for %s; log:\n%s", id, logs.String())
			}
			if !strings.Contains(line, " status="+strconv.Itoa(tt.want)+" ") {
				t.Errorf("\"request failed\" line does not name status %d:\n%s", tt.want, line)
			}
		})
	}
}

// TestProxyAbortedRequestIsLogged: a proxied response cut off after its
// status went out (a streamed body over the cap: the server aborts the
// connection) still gets its "http" access-log line, with its request id
// and the status sent, like every other request.
func TestProxyAbortedRequestIsLogged(t *testing.T) {
	logs := &brokertest.SyncBuffer{}
	f := newFixture(t, fixtureOpts{logs: logs})
	tok := f.credential(t, "stripe").AccessToken
	res := f.do(t, "GET", "/v1/proxy/stripe/up/stream-big", bearer(tok), nil)
	if res.Status != 200 || res.Err == nil {
		t.Fatalf("status %d, body error %v; want 200 and a cut-off body", res.Status, res.Err)
	}
	id := res.Header.Get("X-Request-Id")
	var line string
	deadline := time.Now().Add(10 * time.Second)
	for line == "" {
		for _, l := range strings.Split(logs.String(), "\n") {
			if strings.Contains(l, `msg=http `) && strings.Contains(l, " request_id="+id) {
				line = l
			}
		}
		if line == "" && time.Now().After(deadline) {
			t.Fatalf("no \"http\" line for the aborted request %s within 10s; log:\n%s", id, logs.String())
		}
		if line == "" {
			<-time.After(5 * time.Millisecond)
		}
	}
	if !strings.Contains(line, " status=200 ") {
		t.Errorf("\"http\" line of the aborted request does not name the status sent (200):\n%s", line)
	}
}
