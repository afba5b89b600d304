package e2e

// SPEC "Scale-out": a revocation made through one instance is refused by
// every other within one second. TestRevokeAcrossInstances checks that for
// a workload revocation (with a block); this file checks it for the two
// narrower selectors an incident uses most: one credential (issuance_id)
// and one session (session_id).

import (
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestRevokeOneCredentialAndOneSessionAcrossInstances: credentials issued
// through A, used on A and C (so that both have them cached), are revoked
// through B, one credential then one session; within one second of B's
// receipt the proxies of A and C refuse the proxy credentials (403) and
// the introspection of A and C says every revoked credential is inactive,
// while the revoked credential's sibling in its session, and another
// session, stay valid.
func TestRevokeOneCredentialAndOneSessionAcrossInstances(t *testing.T) {
	c := startCluster(t, 3)
	const payments = "system:serviceaccount:payments:api"
	issue := func(session, grant string) credential {
		t.Helper()
		status, cr := c.exchange(t, nodeA, payments, session, grant)
		if status != 200 || cr.AccessToken == "" {
			t.Fatalf("exchange %s for session %s on A = %d %+v", grant, session, status, cr)
		}
		return cr
	}
	one := issue("pod-1", "pay-proxy")          // revoked alone
	sibling := issue("pod-1", "payments-vault") // its session's other credential: kept
	sesVault := issue("pod-2", "payments-vault")
	sesProxy := issue("pod-2", "pay-proxy")
	other := issue("pod-3", "pay-proxy") // another session: kept throughout
	if sesVault.SessionID != sesProxy.SessionID || sesVault.SessionID == one.SessionID || other.SessionID == sesVault.SessionID {
		t.Fatalf("sessions: pod-1 %s, pod-2 %s and %s, pod-3 %s", one.SessionID, sesVault.SessionID, sesProxy.SessionID, other.SessionID)
	}
	others := []int{nodeA, nodeC}
	// A and C have each answered for every credential before the revocation.
	for _, node := range others {
		for _, cr := range []credential{one, sesProxy, other} {
			if st := c.proxyStatus(t, node, cr.AccessToken); st != 200 {
				t.Fatalf("proxied call on node %d with fresh %s = %d, want 200", node, cr.IssuanceID, st)
			}
		}
		for _, cr := range []credential{one, sibling, sesVault, sesProxy, other} {
			if !c.active(t, node, cr.AccessToken) {
				t.Fatalf("fresh %s is not active on node %d", cr.IssuanceID, node)
			}
		}
	}
	// stillValid: credentials the revocation did not name work on A and C.
	stillValid := func(t *testing.T, kept []credential) {
		t.Helper()
		for _, node := range others {
			for _, cr := range kept {
				if !c.active(t, node, cr.AccessToken) {
					t.Errorf("%s (session %s), not named by the revocation, is inactive on node %d", cr.IssuanceID, cr.SessionID, node)
				}
			}
			if st := c.proxyStatus(t, node, other.AccessToken); st != 200 {
				t.Errorf("proxied call on node %d with another session's credential = %d, want 200", node, st)
			}
		}
	}

	t.Run("ok/one-credential-through-B", func(t *testing.T) {
		status, rc := c.revoke(t, nodeB, fmt.Sprintf(`{"issuance_id":%q,"reason":"INC-11: one key leaked"}`, one.IssuanceID))
		receipt := time.Now()
		if status != 200 || rc.Status != "revoked" || rc.Matched != 1 || !slices.Equal(rc.Revoked, []string{one.IssuanceID}) {
			t.Fatalf("revoke %s on B = %d %+v, want it alone revoked", one.IssuanceID, status, rc)
		}
		refusedWithinASecond(t, receipt, c.refusalChecks(others, []credential{one}))
		stillValid(t, []credential{sibling, sesVault, sesProxy, other})
	})

	t.Run("ok/one-session-through-B", func(t *testing.T) {
		status, rc := c.revoke(t, nodeB, fmt.Sprintf(`{"session_id":%q,"reason":"INC-12: pod-2 compromised"}`, sesVault.SessionID))
		receipt := time.Now()
		want := []string{sesVault.IssuanceID, sesProxy.IssuanceID}
		slices.Sort(want)
		got := slices.Clone(rc.Revoked)
		slices.Sort(got)
		if status != 200 || rc.Status != "revoked" || rc.Matched != 2 || !slices.Equal(got, want) {
			t.Fatalf("revoke session %s on B = %d %+v, want %v revoked", sesVault.SessionID, status, rc, want)
		}
		refusedWithinASecond(t, receipt, c.refusalChecks(others, []credential{sesVault, sesProxy}))
		stillValid(t, []credential{sibling, other})
	})
}

// refusalCheck is one way an instance must refuse a revoked credential:
// refused reports whether it does now.
type refusalCheck struct {
	what    string
	refused func() (bool, error)
}

// refusalChecks lists, for each node and credential, introspection saying
// inactive and, for a proxy credential (ktp_), the proxied call answering
// 403.
func (c *cluster) refusalChecks(nodes []int, creds []credential) []refusalCheck {
	var checks []refusalCheck
	for _, node := range nodes {
		for _, cr := range creds {
			checks = append(checks, refusalCheck{
				what: fmt.Sprintf("introspection on node %d says %s inactive", node, cr.IssuanceID),
				refused: func() (bool, error) {
					ok, err := c.tryActive(node, cr.AccessToken)
					return !ok, err
				},
			})
			if strings.HasPrefix(cr.AccessToken, "ktp_") {
				checks = append(checks, refusalCheck{
					what: fmt.Sprintf("proxy on node %d refuses %s", node, cr.IssuanceID),
					refused: func() (bool, error) {
						st, err := c.tryProxyStatus(node, cr.AccessToken)
						return st == http.StatusForbidden, err
					},
				})
			}
		}
	}
	return checks
}

// tryProxyStatus is proxyStatus without failing the test (for other
// goroutines).
func (c *cluster) tryProxyStatus(node int, token string) (int, error) {
	req, err := http.NewRequest("GET", c.nodes[node].URL+"/v1/proxy/pay-proxy/v1/charges", nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := httpClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusForbidden {
		return resp.StatusCode, fmt.Errorf("proxied call on node %d = %d %s", node, resp.StatusCode, raw)
	}
	return resp.StatusCode, nil
}

// refusedWithinASecond polls every check at once, from the receipt of the
// revocation on, until it refuses, and fails the test for each whose first
// refusing answer was asked for more than one second after the receipt (or
// never came). It never sleeps a fixed time: it stops as soon as every
// check refuses.
func refusedWithinASecond(t *testing.T, receipt time.Time, checks []refusalCheck) {
	t.Helper()
	deadline := receipt.Add(time.Second)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var slowest time.Duration
	nRefused := 0
	for _, ch := range checks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				asked := time.Now()
				refused, err := ch.refused()
				switch {
				case err != nil:
					t.Errorf("%s: %v", ch.what, err)
					return
				case refused && !asked.After(deadline):
					mu.Lock()
					slowest = max(slowest, asked.Sub(receipt))
					nRefused++
					mu.Unlock()
					return
				case asked.After(deadline):
					t.Errorf("%s: not within 1s of the receipt (refused: %v when asked %s after it)",
						ch.what, refused, asked.Sub(receipt).Round(time.Millisecond))
					return
				}
				<-time.After(10 * time.Millisecond)
			}
		}()
	}
	wg.Wait()
	t.Logf("%d of %d checks refused within 1s of the receipt, the slowest %s after it", nRefused, len(checks), slowest.Round(time.Millisecond))
}
