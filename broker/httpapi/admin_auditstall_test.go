package httpapi_test

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/broker/httpapi"
	"github.com/keytrail/keytrail/policies"
)

// stuckSink is a disk whose writes hang from the first revoke event on:
// that event and every later one wait until release is closed, then are
// recorded in order (one writer: a later event never overtakes a held one).
type stuckSink struct {
	rec     *brokertest.Sink
	mu      sync.Mutex // one writer
	stuck   atomic.Bool
	release chan struct{}
}

func (s *stuckSink) Append(ctx context.Context, ev *audit.Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ev.Type == audit.TypeRevoke {
		s.stuck.Store(true)
	}
	if s.stuck.Load() {
		<-s.release
	}
	return s.rec.Append(ctx, ev)
}

// TestAdminRevokeAuditStallGetAfterRecovery: a revocation whose revoke
// event hangs is made, and answered 503 audit_unavailable naming it; GET
// /v1/admin/revocations/{id} is an admin call, audited too, so it answers
// only once the audit log takes writes again (503 audit_unavailable until
// then), and the 503 of the revocation says so rather than promising the
// GET now.
func TestAdminRevokeAuditStallGetAfterRecovery(t *testing.T) {
	pol := testPolicy(t, "", adminRolesYAML)
	id := func(sub, group string) *broker.Identity {
		c := map[string]any{"sub": sub}
		if group != "" {
			c["groups"] = group
		}
		return &broker.Identity{IssuerName: "ci", Iss: "https://ci.example", Sub: sub, Claims: c}
	}
	authn := brokertest.Authn{"workload": id("repo:acme/deploy", ""), "revoker": id("alice", "secops")}
	sink := &stuckSink{rec: &brokertest.Sink{}, release: make(chan struct{})}
	var once sync.Once
	release := func() { once.Do(func() { close(sink.release) }) }
	t.Cleanup(release)
	f := &adminFixture{sink: sink.rec, rv: &switchRevoker{}, logs: &brokertest.SyncBuffer{}}
	svc, err := broker.NewService(broker.Deps{
		Policy:       func() *policies.Policy { return pol },
		Authn:        func() broker.Authenticator { return authn },
		Minters:      map[string]broker.Minter{broker.KindVaultToken: &brokertest.Minter{}},
		Revokers:     map[string]broker.Revoker{broker.KindVaultToken: f.rv},
		Store:        memstore.New(time.Now),
		Audit:        sink,
		AuditTimeout: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	api, err := httpapi.New(httpapi.Options{Service: svc, PublicURL: "https://keytrail.example", Extra: httpapi.RegisterAdmin,
		Logger: slog.New(slog.NewJSONHandler(f.logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	f.srv = httptest.NewServer(api.Routes())
	t.Cleanup(f.srv.Close)

	iss := f.issue(t)
	status, body, raw := f.do(t, "POST", "/v1/admin/revoke", "revoker", jsonCT, `{"issuance_id":"`+iss+`","reason":"leaked"}`)
	desc, _ := body["error_description"].(string)
	i := strings.Index(desc, "rev_")
	if status != 503 || i < 0 {
		t.Fatalf("revoke = %d %s; want 503 naming the revocation", status, raw)
	}
	revID := strings.TrimRight(strings.Fields(desc[i:])[0], ",;:.)")
	// The made revocation is named in a field of its own, which the CLI
	// reads (exit 4, not the 1 of a revocation not made), not in prose.
	if got, _ := body["revocation_id"].(string); got != revID {
		t.Errorf("revoke answer %s: revocation_id = %q, want %q", raw, got, revID)
	}
	if !strings.Contains(desc, "once the audit log takes writes again") {
		t.Errorf("revoke answer %q: want it to say GET shows the revocation once the audit log takes writes again", desc)
	}
	if status, got, raw := f.do(t, "GET", "/v1/admin/revocations/"+revID, "revoker", "", ""); status != 503 || !strings.Contains(raw, "temporarily_unavailable") {
		t.Errorf("GET revocation while the audit log hangs = %d %v; want 503 (its admin event hangs too)", status, got)
	}
	release()
	if status, got, _ := f.do(t, "GET", "/v1/admin/revocations/"+revID, "revoker", "", ""); status != 200 || got["revocation_id"] != revID || got["status"] != "revoked" {
		t.Errorf("GET revocation after the log recovers = %d %v; want 200, %s revoked", status, got, revID)
	}
}
