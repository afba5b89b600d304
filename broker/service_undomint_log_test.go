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

// refsMinter mints a credential with every kind of reference a grant kind
// can carry (a PKI certificate's serial and mount, a lease, a generated
// user name, a JWT id) and secrets in its token and fields.
type refsMinter struct{ *brokertest.Minter }

const (
	refsSecret   = "hvs.SECRET-token-value"
	refsKey      = "-----BEGIN PRIVATE KEY-----SECRET"
	refsPassword = "SECRET-password"
)

func (m refsMinter) Mint(ctx context.Context, req broker.MintRequest) (*broker.Credential, error) {
	if _, err := m.Minter.Mint(ctx, req); err != nil {
		return nil, err
	}
	return &broker.Credential{
		AccessToken: refsSecret,
		Fields:      map[string]any{"private_key": refsKey, "password": refsPassword},
		Refs: broker.CredentialRefs{Accessor: "acc-1", LeaseID: "database/creds/ro/lease-1", Username: "v-payments-ro-1",
			JTI: "jti-1", Serial: "3d:0a:7f:11", Mount: "pki_int", ExpiresAt: req.Now.Add(req.TTL)},
	}, nil
}

// TestUndoMintFailureLogNamesTheCredential: when a credential that could
// not be recorded cannot be revoked either, the error line logged is the
// one place left that names it should its deny event fail too (a full
// disk fails the issue event and the deny event behind it): it names every
// reference the issue event would have carried (the certificate's serial
// too, and its mount, needed to revoke it), never the secret. Before, it
// named the accessor only: a PKI certificate's serial was named nowhere.
func TestUndoMintFailureLogNamesTheCredential(t *testing.T) {
	for _, tc := range []struct {
		name      string
		failStore bool
	}{{name: "audit-failed"}, {name: "store-failed", failStore: true}} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			if !tc.failStore {
				// A full disk: the issue event and the deny event fail.
				f.sink.Fail = func(ev *audit.Event) bool { return ev.Type == audit.TypeIssue || ev.Type == audit.TypeDeny }
			}
			f.minter.RevokeErr = errors.New("vault down")
			var st broker.Store = f.store
			if tc.failStore {
				bs := &blockingStore{Store: f.store, entered: make(chan struct{}, 1), release: make(chan struct{}),
					err: broker.Unavailable("store_unavailable", time.Second, errors.New("redis down"))}
				close(bs.release)
				st = bs
			}
			h := newRecordingHandler()
			m := refsMinter{f.minter}
			svc, err := broker.NewService(broker.Deps{
				Policy:   func() *policies.Policy { return f.pol },
				Authn:    func() broker.Authenticator { return f.authn },
				Minters:  map[string]broker.Minter{broker.KindVaultToken: m},
				Revokers: map[string]broker.Revoker{broker.KindVaultToken: f.minter},
				Store:    st,
				Audit:    f.sink,
				Now:      func() time.Time { return f.now },
				Logger:   slog.New(h),
			})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := svc.Exchange(context.Background(), broker.ExchangeRequest{SubjectToken: "payments", Grant: "payments-vault", RequestID: "req_01UNDO"}); !errors.Is(err, broker.ErrUnavailable) {
				t.Fatalf("Exchange() = %v, want ErrUnavailable", err)
			}
			var rec *recordedLog
			recs := h.records()
			for i := range recs {
				if recs[i].msg == "revoking unrecorded credential failed" {
					rec = &recs[i]
				}
			}
			if rec == nil {
				t.Fatalf("no line %q; log: %+v", "revoking unrecorded credential failed", recs)
			}
			want := map[string]string{
				"issuance_id": "", // any non-empty value
				"fingerprint": broker.Fingerprint(refsSecret),
				"accessor":    "acc-1",
				"lease_id":    "database/creds/ro/lease-1",
				"username":    "v-payments-ro-1",
				"jti":         "jti-1",
				"serial":      "3d:0a:7f:11",
				"mount":       "pki_int",
				"expires_at":  "", // any non-empty value
			}
			for k, v := range want {
				got, ok := rec.attrs[k]
				switch {
				case !ok || got.String() == "":
					t.Errorf("log line has no %s: %v", k, rec.attrs)
				case v != "" && got.String() != v:
					t.Errorf("log line %s = %q, want %q", k, got.String(), v)
				}
			}
			for _, r := range recs {
				for k, v := range r.attrs {
					for _, s := range []string{refsSecret, refsKey, refsPassword, "SECRET"} {
						if strings.Contains(v.String(), s) {
							t.Errorf("log line %q attribute %s holds a secret: %q", r.msg, k, v.String())
						}
					}
				}
			}
		})
	}
}
