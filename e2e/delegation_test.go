package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/trace"
	"github.com/keytrail/keytrail/e2e/harness"
)

const jwtTokenType = "urn:ietf:params:oauth:token-type:jwt"

// TestAgentActingForAUser: an AI agent (the workload, its identity token as
// subject_token) acts for a user whose SSO token it hands on as
// actor_token (SPEC "POST /v1/token": "recorded as the act chain"). The
// credentials are minted for the agent's workload; the issue events carry
// the user as `act`; the auditor who starts from the Vault token's
// issuance_id (what every Vault audit entry names) finds the user through
// GET /v1/admin/trace and through `keytrail trace`, online and offline. An
// actor token that does not verify (forged, expired, of an issuer policy
// does not trust) is refused with 401 invalid_grant, is written to the
// audit log as a deny without an act (its claims are not known to be
// true), and mints nothing in Vault; a wrong actor_token_type is 400
// invalid_request. An orchestrator's broker JWT as actor token (policy
// trusting the broker as an issuer) links the agent's issuance to the
// orchestrator's, and is refused (403) once revoked.
func TestAgentActingForAUser(t *testing.T) {
	sso := platformIssuer(t, "RS256", "https://sso.corp.example")
	stranger := platformIssuer(t, "RS256", "https://sso.other.example")
	extra := fmt.Sprintf(`version: 1
issuers:
  - {name: corp-sso, issuer: %q, jwks_url: %q, audiences: [keytrail], algorithms: [RS256], max_token_lifetime: 2h}
workloads:
  - name: support-agent
    owner: team-support
    match: {issuer: test, subject: "agent:support"}
    grants: [payments-vault, orders-jwt]
`, sso.iss, sso.jwks)
	env := startStack(t, stackOptions{extraPolicy: extra})
	bin := harness.KeytrailBinary(t)
	admin := env.issuer.token(t, "alice", map[string]any{"groups": "secops"})
	agent := env.issuer.token(t, "agent:support", map[string]any{"session": "conv-42"})
	user := sso.sign(t, jwt.MapClaims{"sub": "user:carol", "jti": "sso-carol-1", "email": "carol@corp.example"})
	onBehalf := url.Values{"actor_token": {user}, "actor_token_type": {jwtTokenType}}
	wantAct := []audit.Identity{{Iss: sso.iss, Sub: "user:carol", JTI: "sso-carol-1"}}

	vt := env.issue(t, agent, "payments-vault", onBehalf)
	jw := env.issue(t, agent, "orders-jwt", onBehalf)
	alone := env.issue(t, agent, "payments-vault", nil) // the agent on its own
	for _, r := range []tokenResponse{vt, jw, alone} {
		if r.Workload != "support-agent" || r.Owner != "team-support" {
			t.Fatalf("%s issued to %s of %s, want the agent's workload support-agent of team-support", r.IssuanceID, r.Workload, r.Owner)
		}
	}
	if vt.SessionID != jw.SessionID || vt.SessionID != alone.SessionID {
		t.Errorf("sessions %s, %s, %s: the actor token changed the agent's session (conv-42)", vt.SessionID, jw.SessionID, alone.SessionID)
	}

	// issueEvents maps issuance id to its issue event.
	issueEvents := func() map[string]*audit.Event {
		m := map[string]*audit.Event{}
		for _, ev := range readAudit(t, env.auditPath) {
			if ev.Type == audit.TypeIssue {
				m[ev.IssuanceID] = ev
			}
		}
		return m
	}

	// accessors counts the tokens Vault holds.
	accessors := func(t *testing.T) int {
		s, err := env.vault.Client.Logical().ListWithContext(context.Background(), "auth/token/accessors")
		if err != nil || s == nil {
			t.Fatalf("list Vault token accessors: %v", err)
		}
		keys, _ := s.Data["keys"].([]any)
		return len(keys)
	}
	// onlyDeny returns the one audit event of the request, which must be
	// a deny.
	onlyDeny := func(t *testing.T, requestID string) *audit.Event {
		t.Helper()
		var deny *audit.Event
		for _, ev := range readAudit(t, env.auditPath) {
			if ev.RequestID == requestID {
				if ev.Type != audit.TypeDeny || deny != nil {
					t.Errorf("audit event %s for the refused request %s, want one deny", ev.Type, requestID)
				}
				deny = ev
			}
		}
		return deny
	}

	t.Run("ok/issue-events-carry-the-act-chain", func(t *testing.T) {
		evs := issueEvents()
		for _, r := range []tokenResponse{vt, jw} {
			ev := evs[r.IssuanceID]
			if ev == nil {
				t.Fatalf("no issue event for %s", r.IssuanceID)
			}
			if !slices.Equal(ev.Act, wantAct) || ev.Identity == nil || ev.Identity.Sub != "agent:support" || ev.Workload != "support-agent" {
				t.Errorf("issue event of %s (%s): identity %+v act %+v, want identity agent:support and act %+v", r.IssuanceID, r.Kind, ev.Identity, ev.Act, wantAct)
			}
		}
		if ev := evs[alone.IssuanceID]; ev == nil || ev.Act != nil {
			t.Errorf("issue event of the exchange without an actor token = %+v, want no act", ev)
		}
		raw, err := os.ReadFile(env.auditPath)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(raw), user) || strings.Contains(string(raw), "carol@corp.example") {
			t.Errorf("the audit log holds the actor token or a claim the policy did not use")
		}
	})

	t.Run("ok/vault-token-leads-to-the-user", func(t *testing.T) {
		// Vault's audit entries name the token's meta issuance_id (SPEC
		// "Audit log"); from it the auditor gets who the agent acted for.
		_, self := env.vaultAs(t, vt.AccessToken, "the agent's Vault token")
		meta, _ := self.Data["meta"].(map[string]any)
		id, _ := meta["issuance_id"].(string)
		if id != vt.IssuanceID || meta["workload"] != "support-agent" {
			t.Fatalf("Vault token meta = %v, want issuance_id %s of support-agent", meta, vt.IssuanceID)
		}
		status, raw := traceGet(t, env.brokerURL+"/v1/admin/trace?q="+url.QueryEscape(id), admin)
		if status != 200 {
			t.Fatalf("GET /v1/admin/trace = %d %s", status, raw)
		}
		var got trace.Result
		mustJSON(t, raw, &got)
		want := []broker.IdentityRef{{Iss: sso.iss, Sub: "user:carol", JTI: "sso-carol-1"}}
		if got.Issuance == nil || got.Issuance.ID != vt.IssuanceID || !slices.Equal(got.Issuance.Act, want) || got.Issuance.Identity.Sub != "agent:support" {
			t.Errorf("trace %s = %s, want the issuance with identity agent:support and act %+v", id, raw, want)
		}
		// The JWT's jti is its issuance id: found the same way.
		status, raw = traceGet(t, env.brokerURL+"/v1/admin/trace?q="+url.QueryEscape(jw.AccessToken), admin)
		mustJSON(t, raw, &got)
		if status != 200 || got.Issuance == nil || got.Issuance.ID != jw.IssuanceID || !slices.Equal(got.Issuance.Act, want) {
			t.Errorf("trace of the JWT = %d %s, want issuance %s with act %+v", status, raw, jw.IssuanceID, want)
		}
	})

	t.Run("ok/keytrail-trace-online-and-offline", func(t *testing.T) {
		copyPath := filepath.Join(t.TempDir(), "audit-copy.jsonl")
		data, err := os.ReadFile(env.auditPath)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(copyPath, data, 0o600); err != nil {
			t.Fatal(err)
		}
		online := []string{"KEYTRAIL_ADDR=" + env.brokerURL, "KEYTRAIL_ADMIN_TOKEN=" + admin}
		for _, c := range []struct {
			name string
			env  []string
			args []string
		}{
			{"online", online, []string{"trace", vt.IssuanceID}},
			{"offline", nil, []string{"trace", vt.AccessToken, "--audit-log", copyPath}},
		} {
			var res trace.Result
			mustJSON(t, runKeytrail(t, bin, c.env, append(c.args, "--json")...), &res)
			if res.Issuance == nil || res.Issuance.ID != vt.IssuanceID || len(res.Issuance.Act) != 1 || res.Issuance.Act[0].Sub != "user:carol" || res.Issuance.Act[0].Iss != sso.iss {
				t.Errorf("keytrail trace (%s) --json: issuance %+v, want %s with act user:carol of %s", c.name, res.Issuance, vt.IssuanceID, sso.iss)
			}
			txt := string(runKeytrail(t, bin, c.env, c.args...))
			if want := "iss=" + sso.iss + " sub=user:carol"; !strings.Contains(txt, want) || !strings.Contains(txt, "sub=agent:support") {
				t.Errorf("keytrail trace (%s) does not show the agent and the user it acted for (%q):\n%s", c.name, want, txt)
			}
		}
	})

	t.Run("fail/bad-actor-token-mints-nothing", func(t *testing.T) {
		now := time.Now()
		forged := user[:strings.LastIndexByte(user, '.')+1] + strings.Repeat("A", 342)
		expired := sso.sign(t, jwt.MapClaims{"sub": "user:carol", "iat": now.Add(-2 * time.Hour).Unix(), "exp": now.Add(-time.Hour).Unix()})
		untrusted := stranger.sign(t, jwt.MapClaims{"sub": "user:carol"})
		before, issuedBefore := accessors(t), len(issueEvents())
		for _, c := range []struct {
			name, actor, typ string
			status           int
			code             string
		}{
			{"forged-signature", forged, jwtTokenType, 401, "invalid_grant"},
			{"expired", expired, jwtTokenType, 401, "invalid_grant"},
			{"untrusted-issuer", untrusted, jwtTokenType, 401, "invalid_grant"},
			{"garbage", "not-a-jwt", jwtTokenType, 401, "invalid_grant"},
			{"wrong-token-type", user, "urn:ietf:params:oauth:token-type:access_token", 400, "invalid_request"},
		} {
			for _, grant := range []string{"payments-vault", "orders-jwt"} {
				status, body, hdr := env.exchange(t, agent, grant, url.Values{"actor_token": {c.actor}, "actor_token_type": {c.typ}})
				var eb map[string]any
				_ = json.Unmarshal(body, &eb)
				if _, minted := eb["access_token"]; minted {
					t.Errorf("%s, %s: %d with issuance %v, want %d %s and no credential", c.name, grant, status, eb["issuance_id"], c.status, c.code)
					continue
				}
				if status != c.status || eb["error"] != c.code {
					t.Errorf("%s, %s: %d %s, want %d %s", c.name, grant, status, body, c.status, c.code)
				}
				if c.status != 401 {
					continue
				}
				// The refusal is audited as a deny of the agent, naming why,
				// without the unverified actor as act.
				deny := onlyDeny(t, hdr.Get("X-Request-Id"))
				if deny == nil || deny.Outcome == nil || deny.Outcome.Status != 401 || !strings.HasPrefix(deny.Outcome.Reason, "actor_") ||
					deny.Identity == nil || deny.Identity.Sub != "agent:support" || deny.Act != nil || deny.IssuanceID != "" {
					t.Errorf("%s, %s: deny event %+v (outcome %+v), want 401 with reason actor_*, identity agent:support, no act, no issuance", c.name, grant, deny, outcomeOf(deny))
				}
			}
		}
		if after := accessors(t); after != before {
			t.Errorf("Vault holds %d token accessors after the refused exchanges, %d before: something was minted", after, before)
		}
		if n := len(issueEvents()); n != issuedBefore {
			t.Errorf("%d issue events after the refused exchanges, %d before", n, issuedBefore)
		}
		// The agent still works with a good actor token.
		if r := env.issue(t, agent, "payments-vault", onBehalf); r.Workload != "support-agent" {
			t.Errorf("exchange after the refusals = %+v", r)
		}
	})

	// The agent's identity token names in may_act (RFC 8693 §4.4) the one
	// user it may be exchanged with: carol's token is refused (401
	// invalid_grant, reason actor_not_permitted, carol named as act),
	// dave's is taken. Dave's token expires in 2 minutes: the JWT minted
	// on it lives no longer (the grant's ttl is 5m). Introspecting that
	// JWT answers its aud, and the introspect event names dave as act,
	// as the issuance recorded him (docs/SPEC-ADDITIONS.md "Delegation").
	t.Run("ok/may-act-expiry-and-introspection", func(t *testing.T) {
		now := time.Now()
		restricted := env.issuer.token(t, "agent:support", map[string]any{"session": "conv-43",
			"may_act": map[string]any{"iss": sso.iss, "sub": "user:dave"}})
		dave := sso.sign(t, jwt.MapClaims{"sub": "user:dave", "jti": "sso-dave-1", "exp": now.Add(2 * time.Minute).Unix()})
		wantDave := []audit.Identity{{Iss: sso.iss, Sub: "user:dave", JTI: "sso-dave-1"}}

		issuedBefore := len(issueEvents())
		st, body, hdr := env.exchange(t, restricted, "orders-jwt", onBehalf)
		var eb map[string]any
		_ = json.Unmarshal(body, &eb)
		if _, minted := eb["access_token"]; minted || st != 401 || eb["error"] != "invalid_grant" {
			t.Errorf("exchange with an actor may_act does not name = %d %s, want 401 invalid_grant", st, body)
		}
		if deny := onlyDeny(t, hdr.Get("X-Request-Id")); deny == nil || deny.Outcome == nil || deny.Outcome.Reason != "actor_not_permitted" || !slices.Equal(deny.Act, wantAct) {
			t.Errorf("deny event %+v (outcome %v), want reason actor_not_permitted naming carol as act", deny, outcomeOf(deny))
		}
		if n := len(issueEvents()); n != issuedBefore {
			t.Errorf("%d issue events after the refusal, %d before", n, issuedBefore)
		}

		jd := env.issue(t, restricted, "orders-jwt", url.Values{"actor_token": {dave}, "actor_token_type": {jwtTokenType}})
		if jd.ExpiresIn > 120 || jd.ExpiresIn < 60 {
			t.Errorf("expires_in of the JWT minted on a 2-minute actor token = %d, want at most 120 (capped at the actor's exp)", jd.ExpiresIn)
		}
		claims := jwt.MapClaims{}
		if _, _, err := jwt.NewParser().ParseUnverified(jd.AccessToken, claims); err != nil {
			t.Fatal(err)
		}
		if exp, _ := claims.GetExpirationTime(); exp == nil || exp.After(now.Add(2*time.Minute)) {
			t.Errorf("the minted JWT's exp %v is after the actor token's %v", exp, now.Add(2*time.Minute))
		}

		st, raw := call(t, "POST", env.brokerURL+"/v1/introspect", admin, "application/x-www-form-urlencoded", strings.NewReader(url.Values{"token": {jd.AccessToken}}.Encode()))
		var intro map[string]any
		mustJSON(t, raw, &intro)
		if st != 200 || intro["active"] != true || intro["aud"] != "orders-api" || intro["jti"] != jd.IssuanceID {
			t.Errorf("introspect the delegated JWT = %d %s, want active with aud orders-api", st, raw)
		}
		// The party acted for, as acting_for; never as RFC 8693's act
		// (the acting party: here the workload, sub).
		if af, _ := intro["acting_for"].(map[string]any); af["iss"] != wantDave[0].Iss || af["sub"] != wantDave[0].Sub || intro["act"] != nil {
			t.Errorf("introspect the delegated JWT: acting_for %v, act %v; want acting_for %s %s and no act", intro["acting_for"], intro["act"], wantDave[0].Iss, wantDave[0].Sub)
		}
		var found bool
		for _, ev := range readAudit(t, env.auditPath) {
			if ev.Type == audit.TypeIntrospect && ev.IssuanceID == jd.IssuanceID {
				found = true
				if !slices.Equal(ev.Act, wantDave) || ev.Identity == nil || ev.Identity.Sub != "alice" {
					t.Errorf("introspect event identity %+v act %+v, want the caller alice and act %+v", ev.Identity, ev.Act, wantDave)
				}
			}
		}
		if !found {
			t.Errorf("no introspect event for %s", jd.IssuanceID)
		}
	})

	// RFC 8693 §4.4's own direction: the user's token (the actor token)
	// names in may_act the agent that may act for the user. A token of
	// erin's naming another agent is refused with this one (401
	// invalid_grant, reason subject_not_permitted, erin named as act,
	// nothing minted); erin's token naming this agent is taken.
	t.Run("ok/actor-may-act", func(t *testing.T) {
		erinFor := func(jti, agentSub string) url.Values {
			tok := sso.sign(t, jwt.MapClaims{"sub": "user:erin", "jti": jti,
				"may_act": map[string]any{"iss": env.issuer.url, "sub": agentSub}})
			return url.Values{"actor_token": {tok}, "actor_token_type": {jwtTokenType}}
		}
		wantErin := func(jti string) []audit.Identity { return []audit.Identity{{Iss: sso.iss, Sub: "user:erin", JTI: jti}} }

		issuedBefore := len(issueEvents())
		st, body, hdr := env.exchange(t, agent, "payments-vault", erinFor("sso-erin-1", "agent:billing"))
		var eb map[string]any
		_ = json.Unmarshal(body, &eb)
		if _, minted := eb["access_token"]; minted || st != 401 || eb["error"] != "invalid_grant" {
			t.Errorf("exchange by an agent the actor's may_act does not name = %d %s, want 401 invalid_grant", st, body)
		}
		if deny := onlyDeny(t, hdr.Get("X-Request-Id")); deny == nil || deny.Outcome == nil || deny.Outcome.Reason != "subject_not_permitted" || !slices.Equal(deny.Act, wantErin("sso-erin-1")) {
			t.Errorf("deny event %+v (outcome %v), want reason subject_not_permitted naming erin as act", deny, outcomeOf(deny))
		}
		if n := len(issueEvents()); n != issuedBefore {
			t.Errorf("%d issue events after the refusal, %d before", n, issuedBefore)
		}
		r := env.issue(t, agent, "payments-vault", erinFor("sso-erin-2", "agent:support"))
		if ev := issueEvents()[r.IssuanceID]; ev == nil || !slices.Equal(ev.Act, wantErin("sso-erin-2")) {
			t.Errorf("issue event %+v, want act %+v", ev, wantErin("sso-erin-2"))
		}
	})

	// An orchestrator hands the agent a broker JWT of its own (policy
	// trusts the broker as an issuer): the agent's issuance names the
	// orchestrator's in its act (jti = issuance id), so the trace goes
	// from one to the other. Once the orchestrator's JWT is revoked, it
	// is refused as actor token (README "Revocation": 403 access_denied,
	// reason credential_revoked) and nothing is minted.
	t.Run("ok/orchestrator-jwt-as-actor-then-revoked", func(t *testing.T) {
		reloadPolicy(t, env, filepath.Join(env.policyDir, "orchestrator.yaml"), fmt.Sprintf(`version: 1
issuers:
  - {name: keytrail-self, issuer: %[1]q, jwks_url: %[2]q, audiences: [keytrail-agents], algorithms: [ES256], max_token_lifetime: 1h}
workloads:
  - name: support-orchestrator
    owner: team-support
    match: {issuer: test, subject: "orchestrator:support"}
    grants: [delegate-jwt]
grants:
  - {name: delegate-jwt, kind: jwt, ttl: 10m, jwt: {audience: keytrail-agents, transit_key: keytrail-signing}}
`, env.brokerURL, env.brokerURL+"/.well-known/jwks.json"))
		orch := env.issue(t, env.issuer.token(t, "orchestrator:support", map[string]any{"session": "run-9"}), "delegate-jwt", nil)
		handed := url.Values{"actor_token": {orch.AccessToken}, "actor_token_type": {jwtTokenType}}
		got := env.issue(t, agent, "payments-vault", handed)
		wantOrch := []audit.Identity{{Iss: env.brokerURL, Sub: "support-orchestrator", JTI: orch.IssuanceID}}
		if ev := issueEvents()[got.IssuanceID]; ev == nil || !slices.Equal(ev.Act, wantOrch) {
			t.Fatalf("issue event of the agent's credential = %+v, want act %+v", ev, wantOrch)
		}
		status, raw := traceGet(t, env.brokerURL+"/v1/admin/trace?q="+url.QueryEscape(orch.IssuanceID), admin)
		var tr trace.Result
		mustJSON(t, raw, &tr)
		if status != 200 || tr.Issuance == nil || tr.Issuance.Workload != "support-orchestrator" || tr.Issuance.SessionID != orch.SessionID {
			t.Errorf("trace of the act's jti %s = %d %s, want the orchestrator's issuance", orch.IssuanceID, status, raw)
		}

		if st, rc := revokeOn(t, env.brokerURL, admin, fmt.Sprintf(`{"issuance_id":%q,"reason":"e2e: orchestrator run ended"}`, orch.IssuanceID)); st != 200 || !slices.Contains(rc.Revoked, orch.IssuanceID) {
			t.Fatalf("revoke %s = %d %+v", orch.IssuanceID, st, rc)
		}
		before, issuedBefore := accessors(t), len(issueEvents())
		st, body, hdr := env.exchange(t, agent, "payments-vault", handed)
		var eb map[string]any
		_ = json.Unmarshal(body, &eb)
		if _, minted := eb["access_token"]; minted || st != 403 || eb["error"] != "access_denied" {
			t.Errorf("exchange with the revoked orchestrator JWT as actor = %d (error %v, issuance %v), want 403 access_denied and no credential", st, eb["error"], eb["issuance_id"])
		}
		if deny := onlyDeny(t, hdr.Get("X-Request-Id")); deny == nil || deny.Outcome == nil || deny.Outcome.Reason != "actor_credential_revoked" {
			t.Errorf("deny event %+v (outcome %v), want reason actor_credential_revoked", deny, outcomeOf(deny))
		}
		if after := accessors(t); after != before {
			t.Errorf("Vault holds %d token accessors after the refusal, %d before", after, before)
		}
		if n := len(issueEvents()); n != issuedBefore {
			t.Errorf("%d issue events after the refusal, %d before", n, issuedBefore)
		}
	})

	// The store loses the orchestrator JWT's issuance record (this stack's
	// store is in memory: a restart loses it, as a Redis data loss would).
	// The JWT still verifies (the transit key is Vault's), but its
	// revocation and kept may_act are unknown: it is refused as actor
	// token (401 invalid_grant, actor_unknown_credential) as introspection
	// calls it inactive, where it used to pass unchecked.
	t.Run("fail/orchestrator-jwt-whose-record-was-lost", func(t *testing.T) {
		orch := env.issue(t, env.issuer.token(t, "orchestrator:support", map[string]any{"session": "run-10"}), "delegate-jwt", nil)
		handed := url.Values{"actor_token": {orch.AccessToken}, "actor_token_type": {jwtTokenType}}
		env.issue(t, agent, "payments-vault", handed) // accepted while its record is held
		env.broker.Restart()
		st, body, hdr := env.exchange(t, agent, "payments-vault", handed)
		var eb map[string]any
		_ = json.Unmarshal(body, &eb)
		if _, minted := eb["access_token"]; minted || st != 401 || eb["error"] != "invalid_grant" {
			t.Errorf("exchange with the orchestrator JWT whose record was lost = %d (error %v, issuance %v), want 401 invalid_grant and no credential", st, eb["error"], eb["issuance_id"])
		}
		if deny := onlyDeny(t, hdr.Get("X-Request-Id")); deny == nil || deny.Outcome == nil || deny.Outcome.Reason != "actor_unknown_credential" {
			t.Errorf("deny event %+v (outcome %v), want reason actor_unknown_credential", deny, outcomeOf(deny))
		}
		env.issue(t, agent, "payments-vault", nil) // the agent on its own still exchanges
	})
}

func outcomeOf(ev *audit.Event) any {
	if ev == nil || ev.Outcome == nil {
		return nil
	}
	b, _ := json.Marshal(ev.Outcome)
	return string(b)
}
