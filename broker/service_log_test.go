package broker_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/policies"
)

// TestUnrecordedCredentialLogLinesNameTheRequest: when an exchange minted a
// credential it then could not record (the audit log or the store failed),
// or whose caller went away, the lines logged about taking it back name the
// exchange's request id, as its "request failed" line and its audit events
// do, and say what happened: a credential whose caller left was recorded.
// (Before, the client_gone lines said "could not be recorded" /
// "unrecorded" too.)
func TestUnrecordedCredentialLogLinesNameTheRequest(t *testing.T) {
	tests := []struct {
		name       string
		failAudit  func(ev *audit.Event) bool
		failStore  bool
		failRevoke bool
		clientGone bool // the caller leaves during the mint
		msg        string
	}{
		{name: "audit-failed/revoked", failAudit: isType(audit.TypeIssue),
			msg: "revoked credential that could not be recorded"},
		{name: "audit-failed/revoke-failed", failAudit: isType(audit.TypeIssue), failRevoke: true,
			msg: "revoking unrecorded credential failed"},
		{name: "store-failed/revoked", failStore: true,
			msg: "revoked credential that could not be recorded"},
		{name: "client-gone/revoked", clientGone: true,
			msg: "revoked recorded credential: its caller went away before it was handed out"},
		{name: "client-gone/revoke-failed", clientGone: true, failRevoke: true,
			msg: "revoking recorded credential whose caller went away failed"},
		{name: "client-gone/orphan-event-failed", clientGone: true, failAudit: isType(audit.TypeOrphanRevoked),
			msg: "recording the revocation of a credential whose caller went away failed"},
		{name: "store-failed/orphan-event-failed", failStore: true, failAudit: isType(audit.TypeOrphanRevoked),
			msg: "recording an unrecorded issuance failed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			f.sink.Fail = tt.failAudit
			if tt.failRevoke {
				f.minter.RevokeErr = errors.New("vault down")
			}
			var st broker.Store = f.store
			if tt.failStore {
				bs := &blockingStore{Store: f.store, entered: make(chan struct{}, 1), release: make(chan struct{}),
					err: broker.Unavailable("store_unavailable", time.Second, errors.New("redis down"))}
				close(bs.release)
				st = bs
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var minter broker.Minter = f.minter
			if tt.clientGone {
				minter = &leavingCallerMinter{Minter: f.minter, leave: cancel}
			}
			logs := &brokertest.SyncBuffer{}
			svc, err := broker.NewService(broker.Deps{
				Policy:   func() *policies.Policy { return f.pol },
				Authn:    func() broker.Authenticator { return f.authn },
				Minters:  map[string]broker.Minter{broker.KindVaultToken: minter},
				Revokers: map[string]broker.Revoker{broker.KindVaultToken: f.minter},
				Store:    st,
				Audit:    f.sink,
				Now:      func() time.Time { return f.now },
				Logger:   slog.New(slog.NewTextHandler(logs, nil)),
			})
			if err != nil {
				t.Fatal(err)
			}
			const reqID = "req_01TESTUNRECORDED"
			if _, err := svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: "payments", Grant: "payments-vault", RequestID: reqID}); !errors.Is(err, broker.ErrUnavailable) {
				t.Fatalf("Exchange() = %v, want ErrUnavailable", err)
			}
			var line string
			for _, l := range strings.Split(logs.String(), "\n") {
				if strings.Contains(l, `msg="`+tt.msg+`"`) {
					line = l
				}
			}
			if line == "" {
				t.Fatalf("no log line %q; log:\n%s", tt.msg, logs.String())
			}
			if !strings.Contains(line, " request_id="+reqID) {
				t.Errorf("log line does not name its request (request_id=%s):\n%s", reqID, line)
			}
			if l := logs.String(); tt.clientGone && (strings.Contains(l, "could not be recorded") || strings.Contains(l, "unrecorded")) {
				t.Errorf("a recorded credential is logged as unrecorded:\n%s", l)
			}
		})
	}
}

// leavingCallerMinter mints, its caller going away (leave) meanwhile.
type leavingCallerMinter struct {
	*brokertest.Minter
	leave context.CancelFunc
}

func (m *leavingCallerMinter) Mint(ctx context.Context, req broker.MintRequest) (*broker.Credential, error) {
	m.leave()
	return m.Minter.Mint(ctx, req)
}

func isType(typ string) func(ev *audit.Event) bool {
	return func(ev *audit.Event) bool { return ev.Type == typ }
}
