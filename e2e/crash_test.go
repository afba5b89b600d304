package e2e

// Crash consistency (issue #8): the broker is SIGKILLed at random moments
// while 200 exchanges run concurrently, then restarted. The reconciliation
// (at start-up and every second here) must leave exactly the Vault tokens
// the audit log explains: after the run, the live keytrail tokens in Vault
// are the issued, unexpired issuances of the audit log that no revoke or
// orphan_revoked event ended.

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/e2e/harness"
)

func TestCrashConsistency(t *testing.T) {
	const (
		rounds      = 3
		concurrency = 200
		grace       = 10 * time.Second // > Vault timeout (5s) + store + audit time
	)
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, seed>>1))
	t.Logf("seed %d", seed)

	v := harness.StartVault(t)
	setupVaultPolicies(t, v)
	s := startFaultStack(t, v, faultOptions{env: []string{
		"KEYTRAIL_RECONCILE_INTERVAL=1s", "KEYTRAIL_RECONCILE_GRACE=" + grace.String(),
	}})

	var (
		mu       sync.Mutex
		returned []string // issuance ids handed to clients
		statuses = map[int]int{}
		errs     int
	)
	var lastKill time.Time
	for round := range rounds {
		tokens := make([]string, concurrency)
		for i := range tokens {
			tokens[i] = s.token(t, fmt.Sprintf("app-crash-%d-%d", round, i))
		}
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range concurrency {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				r, err := tryExchange(s.url, tokens[i])
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					errs++
					return
				}
				statuses[r.status]++
				if r.status == 200 && r.credential {
					returned = append(returned, r.issuanceID)
				}
			}()
		}
		close(start)
		delay := time.Duration(20+rng.IntN(400)) * time.Millisecond
		timer := time.NewTimer(delay)
		<-timer.C
		s.broker.Kill()
		lastKill = time.Now()
		wg.Wait()
		t.Logf("round %d: killed after %v", round, delay)
		s.broker.Restart()
	}
	t.Logf("responses by status %v, connection errors %d, credentials handed out %d", statuses, errs, len(returned))
	for st := range statuses {
		if st != 200 && st != 503 {
			t.Errorf("an exchange answered %d, want only 200 or 503", st)
		}
	}

	// expected is what the audit log says is live: issued, unexpired, and
	// not ended by a revoke or orphan_revoked event.
	expected := func() []string {
		issued := map[string]bool{}
		ended := map[string]bool{}
		now := time.Now()
		for _, ev := range auditEvents(t, s.auditPath) {
			switch ev.Type {
			case audit.TypeIssue:
				if ev.Credential != nil {
					if exp, err := time.Parse(time.RFC3339, ev.Credential.ExpiresAt); err == nil && exp.Before(now) {
						continue
					}
				}
				issued[ev.IssuanceID] = true
			case audit.TypeOrphanRevoked, audit.TypeRevoke:
				ended[ev.IssuanceID] = true
			}
		}
		var out []string
		for id := range issued {
			if !ended[id] {
				out = append(out, id)
			}
		}
		sort.Strings(out)
		return out
	}
	live := func() []string {
		var out []string
		for id := range liveKeytrailTokens(t, v) {
			out = append(out, id)
		}
		sort.Strings(out)
		return out
	}

	// Wait past the grace after the last kill, then for the reconciliation
	// to converge.
	var gotLive, want []string
	waitFor(t, grace+30*time.Second, "live keytrail tokens to equal the audit log's live issuances", func() bool {
		if time.Since(lastKill) < grace+2*time.Second {
			return false
		}
		gotLive, want = live(), expected()
		return slices.Equal(gotLive, want)
	})
	t.Logf("live keytrail tokens in Vault %d == issued, unexpired, unrevoked issuances in the audit log %d", len(gotLive), len(want))

	issuedIDs := map[string]bool{}
	orphans := 0
	for _, ev := range auditEvents(t, s.auditPath) {
		switch ev.Type {
		case audit.TypeIssue:
			issuedIDs[ev.IssuanceID] = true
		case audit.TypeOrphanRevoked:
			orphans++
		}
	}
	t.Logf("orphan_revoked events: %d", orphans)
	for _, id := range returned {
		if !issuedIDs[id] {
			t.Errorf("credential of issuance %s was handed out without an issue event", id)
		}
	}
	if rep, err := audit.VerifyFiles([]string{s.auditPath}, audit.VerifyOptions{}); err != nil {
		t.Errorf("audit verify: %v", err)
	} else if !rep.OK() {
		t.Logf("audit verify after crashes reports %d problems (a torn last line is expected after SIGKILL): %v", len(rep.Problems), rep.Problems)
	}
}
