package broker_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/policies"
)

// reloadState is what a policy reload swaps at once (as keytrail server's
// policyState): the policy and the authenticator built from it.
type reloadState struct {
	pol   *policies.Policy
	authn broker.Authenticator
}

// reloadingDeps serves cur through Deps.Policy and Deps.Authn, one atomic
// state, and swaps it to next right after the first read of the function
// named by at ("policy" or "authn"): a reload landing between a request's
// reads.
func reloadingDeps(cur, next *reloadState, at string, minter *brokertest.Minter, sink *brokertest.Sink) broker.Deps {
	var state atomic.Pointer[reloadState]
	state.Store(cur)
	var swapped atomic.Bool
	swapAfter := func(name string) {
		if name == at && swapped.CompareAndSwap(false, true) {
			state.Store(next)
		}
	}
	return broker.Deps{
		Policy:  func() *policies.Policy { p := state.Load().pol; swapAfter("policy"); return p },
		Authn:   func() broker.Authenticator { a := state.Load().authn; swapAfter("authn"); return a },
		Minters: map[string]broker.Minter{broker.KindVaultToken: minter}, Revokers: map[string]broker.Revoker{broker.KindVaultToken: minter},
		Store: memstore.New(time.Now), Audit: sink,
	}
}

// TestRequestSeesOnePolicyAcrossAReload: a request reads the policy and the
// authenticator built from it as one state. A reload between the two reads
// used to pair the policy of one state with the authenticator of the other:
// a token only the new policy's issuers accept was matched against the old
// policy's workloads (or admins), and got what neither policy gives it.
func TestRequestSeesOnePolicyAcrossAReload(t *testing.T) {
	parse := func(name, src string) *policies.Policy {
		t.Helper()
		p, err := policies.Parse(name, []byte(src))
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	tok := identity("system:serviceaccount:payments:api", map[string]any{"kubernetes.io": map[string]any{"namespace": "payments"}})
	accepts, rejects := brokertest.Authn{"tok": tok}, brokertest.Authn{}

	t.Run("exchange", func(t *testing.T) {
		// Old: payments-api may have payments-vault, but its authenticator
		// refuses the token. New: the token is accepted, the grant removed.
		old := &reloadState{pol: parse("old.yaml", testPolicy), authn: rejects}
		next := &reloadState{pol: parse("new.yaml", strings.Replace(testPolicy, "    grants: [payments-vault]\n    rate:", "    grants: [orders-jwt]\n    rate:", 1)), authn: accepts}
		minter, sink := &brokertest.Minter{}, &brokertest.Sink{}
		svc, err := broker.NewService(reloadingDeps(old, next, "policy", minter, sink))
		if err != nil {
			t.Fatal(err)
		}
		res, err := svc.Exchange(context.Background(), broker.ExchangeRequest{SubjectToken: "tok", Grant: "payments-vault"})
		if err == nil || res != nil || !errors.Is(err, broker.ErrDenied) {
			t.Errorf("Exchange() = %v, %v; want access_denied from the new policy (which removed the grant)", res, err)
		}
		if len(minter.Calls()) != 0 {
			t.Errorf("minter called %d times; neither policy gives this token the grant", len(minter.Calls()))
		}
	})

	t.Run("admin", func(t *testing.T) {
		// Old: its authenticator accepts the token, but no admin matches.
		// New: it names the admin, and its authenticator refuses the token.
		admins := testPolicy + "admins:\n  - name: secops\n    match: {issuer: k8s, subject: system:serviceaccount:payments:api}\n    roles: [revoke]\n"
		old := &reloadState{pol: parse("old.yaml", testPolicy), authn: accepts}
		next := &reloadState{pol: parse("new.yaml", admins), authn: rejects}
		minter, sink := &brokertest.Minter{}, &brokertest.Sink{}
		svc, err := broker.NewService(reloadingDeps(old, next, "authn", minter, sink))
		if err != nil {
			t.Fatal(err)
		}
		a, err := svc.AuthorizeAdmin(context.Background(), broker.AdminRequest{Token: "tok", Role: broker.RoleRevoke, Action: "test"})
		if err == nil || a != nil {
			t.Errorf("AuthorizeAdmin() = %v, %v; want a refusal: neither policy makes this token an admin", a, err)
		}
	})
}
