package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
)

// TestFiveHundredWithoutRequestIDIsNamedAsInFrontOfTheBroker: with no
// proxy, a 5xx without the X-Request-Id every answer of the broker carries
// is of something in front of it (an ingress, a load balancer), and read
// 'broker answered 502; retrying'. It says so now, still retried; the
// broker's own 503 reads as before.
func TestFiveHundredWithoutRequestIDIsNamedAsInFrontOfTheBroker(t *testing.T) {
	tokenFile := writeTokenFile(t, t.TempDir())
	ingress := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusBadGateway)
	}))
	defer ingress.Close()
	_, stderr, err := runCmd(t, context.Background(), ingress.URL,
		"fetch", "--grant", "g", "--identity-token-file", tokenFile, "--out", filepath.Join(t.TempDir(), "cred"), "--timeout", "1s")
	why := "something in front of the broker at " + ingress.URL + " (not the broker: its answer has no X-Request-Id) answered 502 Bad Gateway"
	if !strings.HasPrefix(stderr, "keytrail: g: "+why+"; retrying in ") || exitCode(err) != 1 || !strings.HasSuffix(err.Error(), "g: no credential after 1s; last failure: "+why) {
		t.Errorf("fetch from an ingress answering 502: %v, stderr %q; want it retried with %q", err, stderr, why)
	}
	f, addr := newFakeTokenBroker(t)
	f.byGrant["busy"] = tokenReply{503, `{"error":"temporarily_unavailable","error_description":"vault down","request_id":"req_503"}`}
	_, stderr, _ = runCmd(t, context.Background(), addr,
		"fetch", "--grant", "busy", "--identity-token-file", tokenFile, "--out", filepath.Join(t.TempDir(), "cred"), "--timeout", "1s")
	if !strings.HasPrefix(stderr, "keytrail: busy: broker answered 503 temporarily_unavailable; retrying in ") {
		t.Errorf("fetch from the broker answering 503: stderr %q, want the broker's answer", stderr)
	}
}
