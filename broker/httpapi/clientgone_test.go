package httpapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/broker/httpapi"
	"github.com/keytrail/keytrail/policies"
)

// gateMinter holds each mint until released.
type gateMinter struct {
	*brokertest.Minter
	entered chan struct{}
	release chan struct{}
}

func (m *gateMinter) Mint(ctx context.Context, req broker.MintRequest) (*broker.Credential, error) {
	close(m.entered)
	<-m.release
	return m.Minter.Mint(ctx, req)
}

// TestTokenClientGoneIs499: a POST /v1/token whose caller goes away while
// its credential is minted is recorded, at the HTTP layer, as its deny
// event records it: status 499 in the access log (nothing else written,
// no WARN "request failed"), outcome client_gone in
// keytrail_exchanges_total. (It was a 503 temporarily_unavailable with
// Retry-After, logged at WARN and counted as a backend failure.)
func TestTokenClientGoneIs499(t *testing.T) {
	pol := testPolicy(t, "", "")
	m := &gateMinter{Minter: &brokertest.Minter{}, entered: make(chan struct{}), release: make(chan struct{})}
	authn := brokertest.Authn{goodToken: {IssuerName: "ci", Iss: "https://ci.example", Sub: "repo:acme/deploy",
		Claims: map[string]any{"sub": "repo:acme/deploy"}}}
	sink := &brokertest.Sink{}
	svc, err := broker.NewService(broker.Deps{
		Policy:   func() *policies.Policy { return pol },
		Authn:    func() broker.Authenticator { return authn },
		Minters:  map[string]broker.Minter{broker.KindVaultToken: m},
		Revokers: map[string]broker.Revoker{broker.KindVaultToken: m.Minter},
		Store:    memstore.New(time.Now),
		Audit:    sink,
	})
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	reg := prometheus.NewRegistry()
	api, err := httpapi.New(httpapi.Options{Service: svc, PublicURL: "https://keytrail.example", Registry: reg,
		Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	h := api.Routes()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req := httptest.NewRequest(http.MethodPost, "/v1/token", strings.NewReader(form().Encode())).WithContext(ctx)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	rec := httptest.NewRecorder()
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.ServeHTTP(rec, req)
	}()
	<-m.entered
	cancel() // the caller goes away while the credential is minted
	close(m.release)
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the handler did not return")
	}

	if rec.Code != broker.StatusClientClosedRequest || rec.Body.Len() != 0 || rec.Header().Get("Retry-After") != "" {
		t.Errorf("answer = %d, Retry-After %q, body %q; want 499, nothing else", rec.Code, rec.Header().Get("Retry-After"), rec.Body.String())
	}
	var sawHTTP bool
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if rec["level"] == "WARN" || rec["level"] == "ERROR" {
			t.Errorf("logged %s: %s", rec["level"], line)
		}
		if rec["msg"] == "http" {
			sawHTTP = true
			if rec["status"] != float64(499) {
				t.Errorf("access log status = %v, want 499: %s", rec["status"], line)
			}
		}
	}
	if !sawHTTP {
		t.Errorf("no access log line in %q", logs.String())
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	outcomes := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "keytrail_exchanges_total" {
			continue
		}
		for _, mt := range mf.GetMetric() {
			for _, l := range mt.GetLabel() {
				if l.GetName() == "outcome" {
					outcomes[l.GetValue()] += mt.GetCounter().GetValue()
				}
			}
		}
	}
	if len(outcomes) != 1 || outcomes["client_gone"] != 1 {
		t.Errorf("keytrail_exchanges_total by outcome = %v, want client_gone 1", outcomes)
	}
}
