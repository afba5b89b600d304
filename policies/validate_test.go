package policies

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/policies/yamlcheck"
)

// baseSections is a valid policy in flow style, one line per section, so
// that cases can replace one section without worrying about indentation.
var baseSections = map[string]string{
	"version":    `1`,
	"issuers":    `[{name: i, issuer: "https://issuer.example", jwks_url: "https://issuer.example/jwks", audiences: [keytrail], algorithms: [RS256]}]`,
	"workloads":  `[{name: w, owner: team, match: {issuer: i, subject: s}, grants: [g]}]`,
	"grants":     `[{name: g, kind: vault_token, ttl: 5m, vault_token: {policies: [p]}}]`,
	"admins":     `[{name: a, match: {issuer: i, subject: admin}, roles: [revoke]}]`,
	"exceptions": `[{name: e, owner: team, reason: r, expires: 2030-01-01}]`,
}

// doc renders the base policy with some sections replaced; an empty
// replacement drops the section.
func doc(over map[string]string) string {
	var b strings.Builder
	for _, k := range []string{"version", "issuers", "workloads", "grants", "admins", "exceptions"} {
		v, ok := over[k]
		if !ok {
			v = baseSections[k]
		}
		if v == "" {
			continue
		}
		b.WriteString(k + ": " + v + "\n")
	}
	return b.String()
}

// proxyGrant renders a grants section with one proxy grant g whose proxy
// block is body.
func proxyGrant(body string) string {
	return `[{name: g, kind: proxy, ttl: 5m, proxy: {` + body + `}}]`
}

const okProxy = `upstream: "https://api.example.com", secret: {vault_kv: secret/data/x, field: key}, inject: {header: Authorization, format: "Bearer {secret}"}, paths: ["/v1/x"]`

// problemStrings returns the individual problems of err as strings, without
// the line a problem's path was located at (Problem.Line: see
// TestProblemsNameTheLine and the golden files); a line the message itself
// gives (YAML errors) is kept.
func problemStrings(err error) []string {
	if err == nil {
		return nil
	}
	u, ok := err.(interface{ Unwrap() []error })
	if !ok {
		return []string{"not a multi-error: " + err.Error()}
	}
	var out []string
	for _, e := range u.Unwrap() {
		if p, ok := e.(*Problem); ok {
			c := *p
			c.Line = 0
			e = &c
		}
		out = append(out, e.Error())
	}
	return out
}

// locatedProblemStrings returns the problems of err as printed, lines
// included.
func locatedProblemStrings(err error) []string {
	var multi interface{ Unwrap() []error }
	if !errors.As(err, &multi) {
		return []string{"not a multi-error: " + fmt.Sprint(err)}
	}
	var out []string
	for _, e := range multi.Unwrap() {
		out = append(out, e.Error())
	}
	return out
}

// warningStrings returns the warnings of p as printed, lines included.
func warningStrings(p *Policy) []string {
	var out []string
	for _, w := range p.Warnings() {
		out = append(out, w.Error())
	}
	return out
}

// parseValid parses policy, failing the test unless it is valid, and
// returns it and its warnings (warningStrings).
func parseValid(t *testing.T, policy string) (*Policy, []string) {
	t.Helper()
	p, err := Parse("t.yaml", []byte(policy))
	if err != nil {
		t.Fatalf("Parse() = %v, want a valid policy", err)
	}
	return p, warningStrings(p)
}

func TestParseValidation(t *testing.T) {
	tests := []struct {
		name string
		over map[string]string
		want []string // every problem, in order; nil = valid
	}{
		{"ok/base", nil, nil},

		// version
		{"fail/version-missing", map[string]string{"version": ""}, []string{"t.yaml: version: required, must be 1"}},
		{"fail/version-2", map[string]string{"version": "2"}, []string{"t.yaml: version: unsupported version 2, must be 1"}},

		// names
		{"ok/name-dots-dashes", map[string]string{"exceptions": `[{name: a.b-c_9, owner: o, reason: r, expires: 2030-01-01}]`}, nil},
		{"fail/name-empty", map[string]string{"exceptions": `[{owner: o, reason: r, expires: 2030-01-01}]`}, []string{"t.yaml: exceptions[0].name: required"}},
		{"fail/name-pattern", map[string]string{"exceptions": `[{name: Bad_Name, owner: o, reason: r, expires: 2030-01-01}]`},
			[]string{`t.yaml: exceptions[0].name: "Bad_Name" must match ^[a-z0-9][a-z0-9._-]{0,62}$`}},
		{"fail/name-too-long", map[string]string{"exceptions": `[{name: ` + strings.Repeat("a", 64) + `, owner: o, reason: r, expires: 2030-01-01}]`},
			[]string{`t.yaml: exceptions[0].name: "` + strings.Repeat("a", 64) + `" must match ^[a-z0-9][a-z0-9._-]{0,62}$`}},
		{"fail/name-pattern-no-cascade", map[string]string{
			"issuers":   `[{name: I, issuer: "https://x", jwks_url: "https://x/j", audiences: [k], algorithms: [RS256]}]`,
			"workloads": `[{name: w, owner: o, match: {issuer: I, subject: s}, grants: [g]}]`,
			"admins":    `[{name: a, match: {issuer: I, subject: admin}, roles: [revoke]}]`},
			[]string{`t.yaml: issuers[0].name: "I" must match ^[a-z0-9][a-z0-9._-]{0,62}$`}},
		{"fail/name-duplicate", map[string]string{"exceptions": `[{name: e, owner: o, reason: r, expires: 2030-01-01}, {name: e, owner: o, reason: r, expires: 2030-01-01}]`},
			[]string{`t.yaml: exceptions[1].name: duplicate exception "e" (first declared at t.yaml: exceptions[0])`}},

		// issuers
		{"ok/issuer-discovery", map[string]string{"issuers": `[{name: i, issuer: "https://issuer.example", discovery: true, audiences: [k], algorithms: [ES256]}]`}, nil},
		{"ok/issuer-http-loopback-v4", map[string]string{"issuers": `[{name: i, issuer: "http://127.0.0.2:1", jwks_url: "http://127.0.0.2:1/jwks", audiences: [k], algorithms: [EdDSA]}]`}, nil},
		{"ok/issuer-http-loopback-v6", map[string]string{"issuers": `[{name: i, issuer: "http://[::1]:1", jwks_url: "http://[::1]:1/jwks", audiences: [k], algorithms: [PS256]}]`}, nil},
		{"ok/issuer-http-localhost", map[string]string{"issuers": `[{name: i, issuer: "http://localhost:1", jwks_url: "http://localhost:1/jwks", audiences: [k], algorithms: [ES384]}]`}, nil},
		{"ok/issuer-session-claim-dotted", map[string]string{"issuers": `[{name: i, issuer: "https://x", jwks_url: "https://x/j", audiences: [k], algorithms: [RS256], session_claim: kubernetes.io.pod.uid}]`}, nil},
		{"fail/issuer-url-missing", map[string]string{"issuers": `[{name: i, jwks_url: "https://x/j", audiences: [k], algorithms: [RS256]}]`},
			[]string{"t.yaml: issuers[0].issuer: required: the exact iss value of its tokens"}},
		{"fail/issuer-url-not-absolute", map[string]string{"issuers": `[{name: i, issuer: "issuer.example", jwks_url: "https://x/j", audiences: [k], algorithms: [RS256]}]`},
			[]string{"t.yaml: issuers[0].issuer: must be an absolute http(s) URL"}},
		{"fail/issuer-discovery-http", map[string]string{"issuers": `[{name: i, issuer: "http://issuer.example", discovery: true, audiences: [k], algorithms: [RS256]}]`},
			[]string{"t.yaml: issuers[0].issuer: must be https for discovery (http only for a loopback host)"}},
		{"fail/issuer-jwks-and-discovery", map[string]string{"issuers": `[{name: i, issuer: "https://x", jwks_url: "https://x/j", discovery: true, audiences: [k], algorithms: [RS256]}]`},
			[]string{"t.yaml: issuers[0].discovery: set exactly one of jwks_url and discovery, not both"}},
		{"fail/issuer-no-keys", map[string]string{"issuers": `[{name: i, issuer: "https://x", audiences: [k], algorithms: [RS256]}]`},
			[]string{"t.yaml: issuers[0].jwks_url: required (or discovery: true)"}},
		{"fail/issuer-jwks-http", map[string]string{"issuers": `[{name: i, issuer: "https://x", jwks_url: "http://x/j", audiences: [k], algorithms: [RS256]}]`},
			[]string{"t.yaml: issuers[0].jwks_url: must be https (http only for a loopback host)"}},
		{"fail/issuer-jwks-http-private-not-loopback", map[string]string{"issuers": `[{name: i, issuer: "https://x", jwks_url: "http://10.0.0.1/j", audiences: [k], algorithms: [RS256]}]`},
			[]string{"t.yaml: issuers[0].jwks_url: must be https (http only for a loopback host)"}},
		{"fail/issuer-jwks-relative", map[string]string{"issuers": `[{name: i, issuer: "https://x", jwks_url: "/jwks", audiences: [k], algorithms: [RS256]}]`},
			[]string{"t.yaml: issuers[0].jwks_url: must be an absolute https URL"}},
		{"fail/issuer-audiences-empty", map[string]string{"issuers": `[{name: i, issuer: "https://x", jwks_url: "https://x/j", audiences: [], algorithms: [RS256]}]`},
			[]string{"t.yaml: issuers[0].audiences: required: at least one audience"}},
		// Compared exactly with the token's aud: spaces around one make an
		// audience that matches nothing, silently (as an owner's would).
		{"fail/issuer-audience-spaces", map[string]string{"issuers": `[{name: i, issuer: "https://x", jwks_url: "https://x/j", audiences: [k, " keytrail", "keytrail\t"], algorithms: [RS256]}]`},
			[]string{`t.yaml: issuers[0].audiences[1]: " keytrail" starts or ends with a space: audiences are compared exactly with the token's aud, so it would match none`,
				`t.yaml: issuers[0].audiences[2]: "keytrail\t" starts or ends with a space: audiences are compared exactly with the token's aud, so it would match none`}},
		{"fail/issuer-algorithms-empty", map[string]string{"issuers": `[{name: i, issuer: "https://x", jwks_url: "https://x/j", audiences: [k]}]`},
			[]string{"t.yaml: issuers[0].algorithms: required: at least one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, ES512, EdDSA, Ed25519"}},
		{"ok/issuer-alg-ed25519", map[string]string{"issuers": `[{name: i, issuer: "https://x", jwks_url: "https://x/j", audiences: [k], algorithms: [EdDSA, Ed25519]}]`}, nil},
		{"fail/issuer-alg-ed25519-case", map[string]string{"issuers": `[{name: i, issuer: "https://x", jwks_url: "https://x/j", audiences: [k], algorithms: [ed25519]}]`},
			[]string{`t.yaml: issuers[0].algorithms[0]: unsupported algorithm "ed25519" (want one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, ES512, EdDSA, Ed25519)`}},
		{"ok/issuer-alg-es512", map[string]string{"issuers": `[{name: i, issuer: "https://x", jwks_url: "https://x/j", audiences: [k], algorithms: [ES512]}]`}, nil},
		{"fail/issuer-alg-none", map[string]string{"issuers": `[{name: i, issuer: "https://x", jwks_url: "https://x/j", audiences: [k], algorithms: [RS256, none]}]`},
			[]string{`t.yaml: issuers[0].algorithms[1]: "none" is never allowed: it accepts unsigned tokens`}},
		{"fail/issuer-alg-hs256", map[string]string{"issuers": `[{name: i, issuer: "https://x", jwks_url: "https://x/j", audiences: [k], algorithms: [HS256]}]`},
			[]string{`t.yaml: issuers[0].algorithms[0]: "HS256" is not allowed: HMAC needs a shared secret, so anyone who can verify tokens could forge them`}},
		{"fail/issuer-alg-unknown", map[string]string{"issuers": `[{name: i, issuer: "https://x", jwks_url: "https://x/j", audiences: [k], algorithms: [rs256]}]`},
			[]string{`t.yaml: issuers[0].algorithms[0]: unsupported algorithm "rs256" (want one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, ES512, EdDSA, Ed25519)`}},
		{"fail/issuer-lifetime-negative", map[string]string{"issuers": `[{name: i, issuer: "https://x", jwks_url: "https://x/j", audiences: [k], algorithms: [RS256], max_token_lifetime: -1h}]`},
			[]string{"t.yaml: issuers[0].max_token_lifetime: must be > 0"}},
		// 0 reads as "no limit" to some (Vault's explicit_max_ttl) and as
		// "the default" to others (Vault's max_ttl): it silently meant 24h.
		{"fail/issuer-lifetime-zero", map[string]string{"issuers": `[{name: i, issuer: "https://x", jwks_url: "https://x/j", audiences: [k], algorithms: [RS256], max_token_lifetime: 0s}]`},
			[]string{"t.yaml: issuers[0].max_token_lifetime: must be > 0 (omit it for the default, 24h)"}},
		{"fail/issuer-lifetime-bare-zero", map[string]string{"issuers": `[{name: i, issuer: "https://x", jwks_url: "https://x/j", audiences: [k], algorithms: [RS256], max_token_lifetime: 0}]`},
			[]string{"t.yaml: issuers[0].max_token_lifetime: must be > 0 (omit it for the default, 24h)"}},
		{"fail/issuer-lifetime-no-value", map[string]string{"issuers": `[{name: i, issuer: "https://x", jwks_url: "https://x/j", audiences: [k], algorithms: [RS256], max_token_lifetime: }]`},
			[]string{"t.yaml: issuers[0].max_token_lifetime: must be > 0 (omit it for the default, 24h)"}},
		{"ok/issuer-lifetime-omitted", map[string]string{"issuers": `[{name: i, issuer: "https://x", jwks_url: "https://x/j", audiences: [k], algorithms: [RS256]}]`}, nil},
		{"fail/issuer-session-claim", map[string]string{"issuers": `[{name: i, issuer: "https://x", jwks_url: "https://x/j", audiences: [k], algorithms: [RS256], session_claim: "a..b"}]`},
			[]string{`t.yaml: issuers[0].session_claim: "a..b" is not a dotted claim path (or several joined by +)`}},
		{"ok/issuer-session-claims", map[string]string{"issuers": `[{name: i, issuer: "https://x", jwks_url: "https://x/j", audiences: [k], algorithms: [RS256], session_claim: "run_id+run_attempt"}]`}, nil},

		// token_types (RFC 8725 §3.11): media types, "" for no typ header.
		{"ok/issuer-token-types", map[string]string{"issuers": `[{name: i, issuer: "https://x", jwks_url: "https://x/j", audiences: [k], algorithms: [RS256], token_types: [JWT, at+jwt, "application/secevent+jwt", JOSE, ""]}]`}, nil},
		{"fail/issuer-token-types-empty", map[string]string{"issuers": `[{name: i, issuer: "https://x", jwks_url: "https://x/j", audiences: [k], algorithms: [RS256], token_types: []}]`},
			[]string{`t.yaml: issuers[0].token_types: empty: every token would be refused; list the typ values to accept (e.g. [JWT]; "" for tokens without typ), or remove the field to accept any`}},
		{"fail/issuer-token-types-no-value", map[string]string{"issuers": `[{name: i, issuer: "https://x", jwks_url: "https://x/j", audiences: [k], algorithms: [RS256], token_types: }]`},
			[]string{`t.yaml: issuers[0].token_types: no value: list the typ values to accept (e.g. [JWT]; "" for tokens without typ), or remove the field to accept any`}},
		{"fail/issuer-token-types-entries", map[string]string{"issuers": `[{name: i, issuer: "https://x", jwks_url: "https://x/j", audiences: [k], algorithms: [RS256], token_types: [JWT, " at+jwt", "application/jwt; charset=utf-8", "a b", "application/", "/jwt", application/JWT, jwt, at+jwt, "", ""]}]`},
			[]string{
				`t.yaml: issuers[0].token_types[1]: " at+jwt" starts or ends with a space: typ values are compared without spaces, so it would match none`,
				`t.yaml: issuers[0].token_types[2]: "application/jwt; charset=utf-8" has media type parameters: write the type alone (e.g. at+jwt)`,
				`t.yaml: issuers[0].token_types[3]: "a b" is not a media type (e.g. JWT, at+jwt, application/jwt; "" for tokens without typ)`,
				`t.yaml: issuers[0].token_types[4]: "application/" is not a media type (e.g. JWT, at+jwt, application/jwt; "" for tokens without typ)`,
				`t.yaml: issuers[0].token_types[5]: "/jwt" is not a media type (e.g. JWT, at+jwt, application/jwt; "" for tokens without typ)`,
				`t.yaml: issuers[0].token_types[6]: "application/JWT" is the same typ as token_types[0] (compared without case, application/ implied)`,
				`t.yaml: issuers[0].token_types[7]: "jwt" is the same typ as token_types[0] (compared without case, application/ implied)`,
				`t.yaml: issuers[0].token_types[10]: "" is the same typ as token_types[9] (compared without case, application/ implied)`,
			}},
		// An entry written without a value ("~", "- " with nothing after
		// it) in any list is refused with its place in the file: the
		// decoder would leave it out, so the value would be missing
		// silently and later entries would be named one place too early.
		{"fail/issuer-token-types-null-entry", map[string]string{"issuers": `[{name: i, issuer: "https://x", jwks_url: "https://x/j", audiences: [k], algorithms: [RS256], token_types: [JWT, ~, "a b"]}]`},
			[]string{`t.yaml: issuers[0].token_types[1]: ` + nullStringEntry + ` (line 2)`}},
		{"fail/null-entry-audiences", map[string]string{"issuers": `[{name: i, issuer: "https://x", jwks_url: "https://x/j", audiences: [~], algorithms: [RS256]}]`},
			[]string{`t.yaml: issuers[0].audiences[0]: ` + nullStringEntry + ` (line 2)`}},
		{"fail/null-entry-audiences-kept-valid", map[string]string{"issuers": `[{name: i, issuer: "https://x", jwks_url: "https://x/j", audiences: [k, null], algorithms: [RS256]}]`},
			[]string{`t.yaml: issuers[0].audiences[1]: ` + nullStringEntry + ` (line 2)`}},
		{"fail/null-entry-algorithms", map[string]string{"issuers": `[{name: i, issuer: "https://x", jwks_url: "https://x/j", audiences: [k], algorithms: [~, HS256]}]`},
			[]string{`t.yaml: issuers[0].algorithms[0]: ` + nullStringEntry + ` (line 2)`}},
		{"fail/null-entry-workload-grants", map[string]string{"workloads": `[{name: w, owner: team, match: {issuer: i, subject: s}, grants: [~, nope]}]`},
			[]string{`t.yaml: workloads[0].grants[0]: ` + nullStringEntry + ` (line 3)`}},
		{"fail/null-entry-admin-roles", map[string]string{"admins": `[{name: a, match: {issuer: i, subject: admin}, roles: [revoke, ~]}]`},
			[]string{`t.yaml: admins[0].roles[1]: ` + nullStringEntry + ` (line 5)`}},
		{"fail/null-entry-vault-policies", map[string]string{"grants": `[{name: g, kind: vault_token, ttl: 5m, vault_token: {policies: [p, ~, root]}}]`},
			[]string{`t.yaml: grants[0].vault_token.policies[1]: ` + nullStringEntry + ` (line 4)`}},
		{"fail/null-entry-proxy-methods-paths", map[string]string{"grants": proxyGrant(okProxy + `, methods: [~, GET]`)},
			[]string{`t.yaml: grants[0].proxy.methods[0]: ` + nullStringEntry + ` (line 4)`}},
		{"fail/null-entry-proxy-paths", map[string]string{"grants": proxyGrant(`upstream: "https://api.example.com", secret: {vault_kv: secret/data/x, field: key}, inject: {header: Authorization}, paths: ["/v1/x", ~]`)},
			[]string{`t.yaml: grants[0].proxy.paths[1]: ` + nullStringEntry + ` (line 4)`}},
		{"fail/null-entry-sections", map[string]string{
			"issuers":    `[~, {name: i, issuer: "https://issuer.example", jwks_url: "https://issuer.example/jwks", audiences: [keytrail], algorithms: [RS256]}]`,
			"workloads":  `[{name: w, owner: team, match: {issuer: i, subject: s}, grants: [g]}, null]`,
			"grants":     `[~, {name: g, kind: vault_token, ttl: 5m, vault_token: {policies: [p]}}]`,
			"admins":     `[~]`,
			"exceptions": `[~, {name: e, owner: team, reason: r, expires: 2030-01-01}]`,
		}, []string{
			`t.yaml: issuers[0]: ` + nullEntry + ` (line 2)`,
			`t.yaml: workloads[1]: ` + nullEntry + ` (line 3)`,
			`t.yaml: grants[0]: ` + nullEntry + ` (line 4)`,
			`t.yaml: admins[0]: ` + nullEntry + ` (line 5)`,
			`t.yaml: exceptions[0]: ` + nullEntry + ` (line 6)`,
		}},
		// An alias to a value-less node is no value either.
		{"fail/null-entry-alias", map[string]string{"workloads": `[{name: w, owner: team, match: {issuer: i, subject: s, claims: {x: &n null}}, grants: [g, *n]}]`},
			[]string{`t.yaml: workloads[0].grants[1]: ` + nullStringEntry + ` (line 3)`}},
		{"ok/empty-string-entry-is-a-value", map[string]string{"issuers": `[{name: i, issuer: "https://x", jwks_url: "https://x/j", audiences: [k], algorithms: [RS256], token_types: [""]}]`}, nil},
		{"fail/empty-string-entries", map[string]string{
			"issuers":   `[{name: i, issuer: "https://issuer.example", jwks_url: "https://issuer.example/jwks", audiences: [keytrail, ""], algorithms: [RS256, ""]}]`,
			"workloads": `[{name: w, owner: team, match: {issuer: i, subject: s}, grants: [g, ""]}]`,
			"grants":    `[{name: g, kind: vault_token, ttl: 5m, vault_token: {policies: [p, ""]}}]`,
			"admins":    `[{name: a, match: {issuer: i, subject: admin}, roles: [revoke, ""]}]`,
		}, []string{
			`t.yaml: issuers[0].audiences[1]: must not be empty`,
			`t.yaml: issuers[0].algorithms[1]: unsupported algorithm "" (want one of ` + strings.Join(algorithms, ", ") + `)`,
			`t.yaml: grants[0].vault_token.policies[1]: must not be empty`,
			`t.yaml: workloads[0].grants[1]: must not be empty`,
			`t.yaml: admins[0].roles[1]: unknown role "" (want one of ` + strings.Join(roles, ", ") + `)`,
		}},
		{"fail/empty-string-proxy-entries", map[string]string{"grants": proxyGrant(`upstream: "https://api.example.com", secret: {vault_kv: secret/data/x, field: key}, inject: {header: Authorization}, methods: [GET, ""], paths: ["/v1/x", ""]`)},
			[]string{
				`t.yaml: grants[0].proxy.methods[1]: "" is not an uppercase HTTP method (want one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS)`,
				`t.yaml: grants[0].proxy.paths[1]: "" must start with "/"`,
			}},
		{"fail/issuer-session-claims-empty-part", map[string]string{"issuers": `[{name: i, issuer: "https://x", jwks_url: "https://x/j", audiences: [k], algorithms: [RS256], session_claim: "run_id+"}]`},
			[]string{`t.yaml: issuers[0].session_claim: "run_id+" is not a dotted claim path (or several joined by +)`}},
		// One session claim is looked up as written: " session" never names
		// a claim, and every token would silently get a session of its own.
		{"fail/issuer-session-claim-leading-space", map[string]string{"issuers": `[{name: i, issuer: "https://x", jwks_url: "https://x/j", audiences: [k], algorithms: [RS256], session_claim: " session"}]`},
			[]string{`t.yaml: issuers[0].session_claim: " session" is not a dotted claim path (or several joined by +)`}},
		{"fail/issuer-session-claim-space-in-segment", map[string]string{"issuers": `[{name: i, issuer: "https://x", jwks_url: "https://x/j", audiences: [k], algorithms: [RS256], session_claim: "kubernetes.io. pod.uid"}]`},
			[]string{`t.yaml: issuers[0].session_claim: "kubernetes.io. pod.uid" is not a dotted claim path (or several joined by +)`}},
		{"ok/issuer-session-claims-spaces-around-plus", map[string]string{"issuers": `[{name: i, issuer: "https://x", jwks_url: "https://x/j", audiences: [k], algorithms: [RS256], session_claim: "run_id + run_attempt"}]`}, nil},
		{"fail/workload-claim-path-space", map[string]string{"workloads": `[{name: w, owner: o, match: {issuer: i, subject: s, claims: {"namespace ": b}}, grants: [g]}]`},
			[]string{`t.yaml: workloads[0].match.claims["namespace "]: "namespace " is not a dotted claim path`}},
		{"fail/issuer-iss-duplicate", map[string]string{"issuers": `[{name: i, issuer: "https://x", jwks_url: "https://x/j", audiences: [k], algorithms: [RS256]}, {name: j, issuer: "https://x", jwks_url: "https://x/j", audiences: [k], algorithms: [RS256]}]`},
			[]string{`t.yaml: issuers[1].issuer: issuer "https://x" is already declared by t.yaml: issuers[0]; iss values must be unique`}},

		// A SPIFFE trust domain as issuer: spiffe://<td>, no path, keys
		// from its bundle endpoint; tokens without iss are routed to it by
		// their sub's trust domain, so a trust domain has one issuer.
		{"ok/issuer-spiffe-trust-domain", map[string]string{"issuers": `[{name: i, issuer: "spiffe://prod.example.org", jwks_url: "https://spire.example.org/bundle", audiences: [k], algorithms: [ES256]}]`}, nil},
		{"fail/issuer-spiffe-duplicate-trust-domain", map[string]string{"issuers": `[{name: i, issuer: "spiffe://example.org", jwks_url: "https://a.example/bundle", audiences: [k], algorithms: [ES256]}, {name: j, issuer: "spiffe://example.org", jwks_url: "https://b.example/bundle", audiences: [k], algorithms: [ES256]}]`},
			[]string{`t.yaml: issuers[1].issuer: trust domain "spiffe://example.org" is already claimed by t.yaml: issuers[0]; one issuer per trust domain`}},
		{"fail/issuer-spiffe-with-path", map[string]string{"issuers": `[{name: i, issuer: "spiffe://example.org/ns/prod", jwks_url: "https://x/j", audiences: [k], algorithms: [ES256]}]`},
			[]string{`t.yaml: issuers[0].issuer: "spiffe://example.org/ns/prod": a SPIFFE issuer is a trust domain id, spiffe://<trust domain>, without a path`}},
		{"fail/issuer-spiffe-trailing-slash", map[string]string{"issuers": `[{name: i, issuer: "spiffe://example.org/", jwks_url: "https://x/j", audiences: [k], algorithms: [ES256]}]`},
			[]string{`t.yaml: issuers[0].issuer: "spiffe://example.org/": not a SPIFFE ID: empty path segment (or a trailing slash)`}},
		{"fail/issuer-spiffe-upper-case", map[string]string{"issuers": `[{name: i, issuer: "spiffe://Example.org", jwks_url: "https://x/j", audiences: [k], algorithms: [ES256]}]`},
			[]string{`t.yaml: issuers[0].issuer: "spiffe://Example.org": not a SPIFFE ID: the trust domain must be 1 to 255 characters [a-z0-9._-]`}},
		{"fail/issuer-spiffe-scheme-case", map[string]string{"issuers": `[{name: i, issuer: "SPIFFE://example.org", jwks_url: "https://x/j", audiences: [k], algorithms: [ES256]}]`},
			[]string{`t.yaml: issuers[0].issuer: "SPIFFE://example.org": not a SPIFFE ID: must start with "spiffe://"`}},
		{"fail/issuer-spiffe-port", map[string]string{"issuers": `[{name: i, issuer: "spiffe://example.org:8443", jwks_url: "https://x/j", audiences: [k], algorithms: [ES256]}]`},
			[]string{`t.yaml: issuers[0].issuer: "spiffe://example.org:8443": not a SPIFFE ID: the trust domain must be 1 to 255 characters [a-z0-9._-]`}},
		{"fail/issuer-spiffe-discovery", map[string]string{"issuers": `[{name: i, issuer: "spiffe://example.org", discovery: true, audiences: [k], algorithms: [ES256]}]`},
			[]string{`t.yaml: issuers[0].discovery: a SPIFFE trust domain has no discovery document: set jwks_url to its bundle endpoint`}},

		// workloads
		{"ok/workload-subject-pattern-and-claims", map[string]string{"workloads": `[{name: w, owner: o, match: {issuer: i, subject_pattern: "repo:acme/.*", claims: {kubernetes.io.namespace: ns}, claim_patterns: {ref: "refs/tags/v.*"}}, grants: [g]}]`}, nil},
		{"ok/workload-rate", map[string]string{"workloads": `[{name: w, owner: o, match: {issuer: i, subject: s}, grants: [g], rate: {per_second: 0.5, burst: 1}}]`}, nil},
		{"ok/workloads-disjoint-by-claims", map[string]string{"workloads": `[{name: w, owner: o, match: {issuer: i, subject: s, claims: {ns: a}}}, {name: x, owner: o, match: {issuer: i, subject: s, claims: {ns: b}}}]`}, nil},
		{"ok/workload-claim-empty-string", map[string]string{"workloads": `[{name: w, owner: o, match: {issuer: i, subject: s, claims: {head_ref: ""}}, grants: [g]}]`}, nil},
		{"fail/workload-claim-no-value", map[string]string{"workloads": `[{name: w, owner: o, match: {issuer: i, subject: s, claims: {ns: ~, ref: null}}, grants: [g]}]`},
			[]string{`t.yaml: workloads[0].match.claims["ns"]: no value (line 3): write "" to require an empty claim, or remove the entry`,
				`t.yaml: workloads[0].match.claims["ref"]: no value (line 3): write "" to require an empty claim, or remove the entry`}},
		{"fail/workload-owner", map[string]string{"workloads": `[{name: w, match: {issuer: i, subject: s}, grants: [g]}]`},
			[]string{"t.yaml: workloads[0].owner: required: every workload has exactly one owner"}},
		{"fail/workload-owner-blank", map[string]string{"workloads": `[{name: w, owner: " ", match: {issuer: i, subject: s}, grants: [g]}]`},
			[]string{"t.yaml: workloads[0].owner: required: every workload has exactly one owner"}},
		// Owners are compared exactly: "team-payments " would be an owner of
		// its own, missed by a revocation of team-payments.
		{"ok/workload-owner-free-text", map[string]string{"workloads": `[{name: w, owner: "Alice Example <alice@example.com>", match: {issuer: i, subject: s}, grants: [g]}]`}, nil},
		{"fail/workload-owner-trailing-space", map[string]string{"workloads": `[{name: w, owner: "team-payments ", match: {issuer: i, subject: s}, grants: [g]}]`},
			[]string{`t.yaml: workloads[0].owner: "team-payments " starts or ends with a space: owners are compared exactly`}},
		{"fail/workload-owner-leading-tab", map[string]string{"workloads": `[{name: w, owner: "\tteam-payments", match: {issuer: i, subject: s}, grants: [g]}]`},
			[]string{`t.yaml: workloads[0].owner: "\tteam-payments" starts or ends with a space: owners are compared exactly`}},
		{"fail/workload-owner-control", map[string]string{"workloads": `[{name: w, owner: "team\npayments", match: {issuer: i, subject: s}, grants: [g]}]`},
			[]string{`t.yaml: workloads[0].owner: "team\npayments" contains a control character`}},
		// Nor may an owner hold what cannot be seen, or a second spelling of
		// the same text: "team\u200bpayments" and an NFD "équipe" print as
		// "team-payments" and "équipe", and revoke --owner missed them.
		{"ok/workload-owner-accents-and-scripts", map[string]string{"workloads": `[{name: w, owner: "équipe-paiements", match: {issuer: i, subject: s}, grants: [g]}, {name: x, owner: "チーム 決済", match: {issuer: i, subject: s2}, grants: [g]}]`}, nil},
		{"fail/workload-owner-zero-width", map[string]string{"workloads": `[{name: w, owner: "team\u200bpayments", match: {issuer: i, subject: s}, grants: [g]}]`},
			[]string{`t.yaml: workloads[0].owner: "team\u200bpayments" contains U+200B, an invisible or non-printing character: owners are compared exactly`}},
		{"fail/workload-owner-nbsp", map[string]string{"workloads": `[{name: w, owner: "team\u00a0payments", match: {issuer: i, subject: s}, grants: [g]}]`},
			[]string{`t.yaml: workloads[0].owner: "team\u00a0payments" contains U+00A0, an invisible or non-printing character: owners are compared exactly`}},
		{"fail/exception-owner-bidi", map[string]string{"exceptions": `[{name: e, owner: "\u202eteam", reason: r, expires: 2030-01-01}]`},
			[]string{`t.yaml: exceptions[0].owner: "\u202eteam" contains U+202E, an invisible or non-printing character: owners are compared exactly`}},
		{"fail/workload-owner-nfd", map[string]string{"workloads": `[{name: w, owner: "e\u0301quipe", match: {issuer: i, subject: s}, grants: [g]}]`},
			[]string{`t.yaml: workloads[0].owner: "e\u0301quipe" is not in Unicode NFC form: owners are compared exactly; write "\u00e9quipe" (composed characters)`}},
		{"fail/exception-owner-trailing-space", map[string]string{"exceptions": `[{name: e, owner: "team-data ", reason: r, expires: 2030-01-01}]`},
			[]string{`t.yaml: exceptions[0].owner: "team-data " starts or ends with a space: owners are compared exactly`}},
		{"fail/workload-issuer-unknown", map[string]string{"workloads": `[{name: w, owner: o, match: {issuer: nope, subject: s}, grants: [g]}]`},
			[]string{`t.yaml: workloads[0].match.issuer: unknown issuer "nope"`}},
		{"fail/workload-issuer-missing", map[string]string{"workloads": `[{name: w, owner: o, match: {subject: s}, grants: [g]}]`},
			[]string{`t.yaml: workloads[0].match.issuer: required`}},
		{"fail/workload-subject-and-pattern", map[string]string{"workloads": `[{name: w, owner: o, match: {issuer: i, subject: s, subject_pattern: s.*}, grants: [g]}]`},
			[]string{"t.yaml: workloads[0].match.subject_pattern: set exactly one of subject and subject_pattern, not both"}},
		{"fail/workload-no-subject", map[string]string{"workloads": `[{name: w, owner: o, match: {issuer: i, claims: {a: b}}, grants: [g]}]`},
			[]string{"t.yaml: workloads[0].match.subject: required (or subject_pattern)"}},
		{"fail/workload-subject-pattern-regexp", map[string]string{"workloads": `[{name: w, owner: o, match: {issuer: i, subject_pattern: "a(b"}, grants: [g]}]`},
			[]string{"t.yaml: workloads[0].match.subject_pattern: invalid regexp: missing closing )"}},
		// On its own \Q quotes to the end of the pattern; wrapped in
		// ^(?:...)$ it quoted the ")$" too, and the message was
		// "missing closing )".
		{"fail/workload-subject-pattern-unterminated-quote", map[string]string{"workloads": `[{name: w, owner: o, match: {issuer: i, subject_pattern: "repo:\\Qacme/api.v1"}, grants: [g]}]`},
			[]string{"t.yaml: workloads[0].match.subject_pattern: invalid regexp: \\Q without a closing \\E: end the quoted text with \\E"}},
		{"fail/workload-claim-pattern-unterminated-quote", map[string]string{"workloads": `[{name: w, owner: o, match: {issuer: i, subject: s, claim_patterns: {ns: "\\Qa\\Eb\\Qc"}}, grants: [g]}]`},
			[]string{"t.yaml: workloads[0].match.claim_patterns[\"ns\"]: invalid regexp: \\Q without a closing \\E: end the quoted text with \\E"}},
		{"ok/workload-subject-pattern-quoted", map[string]string{"workloads": `[{name: w, owner: o, match: {issuer: i, subject_pattern: "repo:\\Qacme/api.v1\\E"}, grants: [g]}]`}, nil},
		// Wrapped in ^(?:...)$ this compiles and escapes the anchors: it
		// would give the workload to sub "repo:acme/api-evil-fork".
		{"fail/workload-subject-pattern-escapes-anchors", map[string]string{"workloads": `[{name: w, owner: o, match: {issuer: i, subject_pattern: "repo:acme/api)|(?:repo:acme/web"}, grants: [g]}]`},
			[]string{"t.yaml: workloads[0].match.subject_pattern: invalid regexp: unexpected )"}},
		{"fail/workload-claim-pattern-escapes-anchors", map[string]string{"workloads": `[{name: w, owner: o, match: {issuer: i, subject: s, claim_patterns: {ns: "a)|(b"}}, grants: [g]}]`},
			[]string{"t.yaml: workloads[0].match.claim_patterns[\"ns\"]: invalid regexp: unexpected )"}},
		{"fail/workload-claim-pattern-regexp", map[string]string{"workloads": `[{name: w, owner: o, match: {issuer: i, subject: s, claim_patterns: {ns: "[z-a]"}}, grants: [g]}]`},
			[]string{"t.yaml: workloads[0].match.claim_patterns[\"ns\"]: invalid regexp: invalid character class range: `z-a`"}},
		{"fail/workload-claim-path", map[string]string{"workloads": `[{name: w, owner: o, match: {issuer: i, subject: s, claims: {"a.": b}}, grants: [g]}]`},
			[]string{`t.yaml: workloads[0].match.claims["a."]: "a." is not a dotted claim path`}},
		{"fail/workload-grant-unknown", map[string]string{"workloads": `[{name: w, owner: o, match: {issuer: i, subject: s}, grants: [g, nope]}]`},
			[]string{`t.yaml: workloads[0].grants[1]: unknown grant "nope"`}},
		{"fail/workload-grant-twice", map[string]string{"workloads": `[{name: w, owner: o, match: {issuer: i, subject: s}, grants: [g, g]}]`},
			[]string{`t.yaml: workloads[0].grants[1]: grant "g" is listed twice`}},
		{"fail/workload-rate-zero", map[string]string{"workloads": `[{name: w, owner: o, match: {issuer: i, subject: s}, grants: [g], rate: {per_second: 0, burst: 3}}]`},
			[]string{"t.yaml: workloads[0].rate.per_second: must be > 0"}},
		{"fail/workload-rate-inf", map[string]string{"workloads": `[{name: w, owner: o, match: {issuer: i, subject: s}, grants: [g], rate: {per_second: .inf}}]`},
			[]string{"t.yaml: workloads[0].rate.per_second: must be at most 1e+06"}},
		{"ok/workload-proxy-rate", map[string]string{"workloads": `[{name: w, owner: o, match: {issuer: i, subject: s}, grants: [g], rate: {per_second: 0.5}, proxy_rate: {per_second: 50, burst: 100}}]`}, nil},
		{"fail/workload-proxy-rate-zero", map[string]string{"workloads": `[{name: w, owner: o, match: {issuer: i, subject: s}, grants: [g], proxy_rate: {per_second: 0, burst: -1}}]`},
			[]string{"t.yaml: workloads[0].proxy_rate.per_second: must be > 0", "t.yaml: workloads[0].proxy_rate.burst: must be >= 1"}},
		{"fail/workload-burst-negative", map[string]string{"workloads": `[{name: w, owner: o, match: {issuer: i, subject: s}, grants: [g], rate: {per_second: 1, burst: -1}}]`},
			[]string{"t.yaml: workloads[0].rate.burst: must be >= 1"}},
		// A written burst of 0 (or no value) was silently replaced by the
		// default of a burst left out, though -1 was refused.
		{"fail/workload-burst-zero", map[string]string{"workloads": `[{name: w, owner: o, match: {issuer: i, subject: s}, grants: [g], rate: {per_second: 5, burst: 0}}]`},
			[]string{"t.yaml: workloads[0].rate.burst: must be >= 1 (omit it for the default, ceil(per_second))"}},
		{"fail/workload-proxy-burst-no-value", map[string]string{"workloads": `[{name: w, owner: o, match: {issuer: i, subject: s}, grants: [g], proxy_rate: {per_second: 5, burst: }}]`},
			[]string{"t.yaml: workloads[0].proxy_rate.burst: must be >= 1 (omit it for the default, ceil(per_second))"}},
		{"fail/workload-claims-no-value", map[string]string{"workloads": `[{name: w, owner: o, match: {issuer: i, subject: s, claims: }, grants: [g]}]`},
			[]string{"t.yaml: workloads[0].match.claims: no value: write the claims to require, or remove the field"}},
		{"fail/admin-claim-patterns-null", map[string]string{"admins": `[{name: a, match: {issuer: i, subject: admin, claim_patterns: ~}, roles: [revoke]}]`},
			[]string{"t.yaml: admins[0].match.claim_patterns: no value: write the claims to require, or remove the field"}},
		{"ok/workload-claims-empty-mapping", map[string]string{"workloads": `[{name: w, owner: o, match: {issuer: i, subject: s, claims: {}}, grants: [g]}]`}, nil},
		{"fail/workload-rate-no-value", map[string]string{"workloads": `[{name: w, owner: o, match: {issuer: i, subject: s}, grants: [g], rate: }]`},
			[]string{"t.yaml: workloads[0].rate: no value: write {per_second: N}, or remove the field for no limit"}},
		{"fail/workload-proxy-rate-null", map[string]string{"workloads": `[{name: w, owner: o, match: {issuer: i, subject: s}, grants: [g], proxy_rate: ~}]`},
			[]string{"t.yaml: workloads[0].proxy_rate: no value: write {per_second: N}, or remove the field for no limit"}},
		{"fail/workloads-same-match", map[string]string{"workloads": `[{name: w, owner: o, match: {issuer: i, subject: s, claims: {ns: a}}}, {name: x, owner: o, match: {issuer: i, subject: s, claims: {ns: a}}}]`},
			[]string{`t.yaml: workloads[1].match: same match as workload "w" (t.yaml: workloads[0]): a token would match both; make workload matches disjoint`}},

		// grants
		{"ok/grant-jwt", map[string]string{"grants": `[{name: g, kind: jwt, ttl: 5m, jwt: {audience: a, transit_key: k}}]`}, nil},
		{"ok/grant-vault-dynamic", map[string]string{"grants": `[{name: g, kind: vault_dynamic, ttl: 30m, vault_dynamic: {path: database/creds/x}}]`}, nil},
		{"ok/grant-pki", map[string]string{"grants": `[{name: g, kind: pki, ttl: 1h, pki: {path: pki/issue/w, trust_domain: acme.internal}}]`}, nil},
		{"ok/grant-vault-token-num-uses", map[string]string{"grants": `[{name: g, kind: vault_token, ttl: 5m, vault_token: {policies: [p, q], num_uses: 3}}]`}, nil},
		{"fail/grant-kind-unknown", map[string]string{"grants": `[{name: g, kind: aws, ttl: 5m}]`},
			[]string{`t.yaml: grants[0].kind: unknown kind "aws" (want one of vault_token, jwt, vault_dynamic, proxy, pki)`}},
		{"fail/grant-kind-missing", map[string]string{"grants": `[{name: g, ttl: 5m, vault_token: {policies: [p]}}]`},
			[]string{`t.yaml: grants[0].kind: required (one of vault_token, jwt, vault_dynamic, proxy, pki)`, `t.yaml: grants[0].vault_token: must not be set for kind ""`}},
		{"fail/grant-block-missing", map[string]string{"grants": `[{name: g, kind: jwt, ttl: 5m}]`},
			[]string{"t.yaml: grants[0].jwt: required for kind jwt"}},
		{"fail/grant-other-block", map[string]string{"grants": `[{name: g, kind: vault_token, ttl: 5m, vault_token: {policies: [p]}, pki: {path: pki/issue/x}}]`},
			[]string{`t.yaml: grants[0].pki: must not be set for kind "vault_token"`}},
		{"fail/grant-ttl-missing", map[string]string{"grants": `[{name: g, kind: vault_token, vault_token: {policies: [p]}}]`},
			[]string{"t.yaml: grants[0].ttl: required, must be > 0"}},
		{"fail/grant-ttl-negative", map[string]string{"grants": `[{name: g, kind: vault_token, ttl: -5m, vault_token: {policies: [p]}}]`},
			[]string{"t.yaml: grants[0].ttl: must be > 0"}},
		// Every minter issues whole seconds and refuses a ttl under 1s
		// (ttl_too_short): such a grant was accepted but no exchange worked.
		{"fail/grant-ttl-under-a-second", map[string]string{"grants": `[{name: g, kind: vault_token, ttl: 500ms, vault_token: {policies: [p]}}]`},
			[]string{"t.yaml: grants[0].ttl: 500ms is less than 1s: credentials are issued for whole seconds"}},
		{"ok/grant-ttl-one-second", map[string]string{"grants": `[{name: g, kind: vault_token, ttl: 1s, vault_token: {policies: [p]}}]`}, nil},
		// Minted as whole seconds (1s here) while policy explain said 1.5s.
		{"fail/grant-ttl-fraction-of-a-second", map[string]string{"grants": `[{name: g, kind: jwt, ttl: 1500ms, jwt: {audience: a, transit_key: k}}]`},
			[]string{"t.yaml: grants[0].ttl: 1.5s is not whole seconds: credentials are issued for whole seconds (write 1s or 2s)"}},
		{"fail/grant-ttl-minutes-and-a-fraction", map[string]string{"grants": `[{name: g, kind: vault_token, ttl: 5m0.25s, vault_token: {policies: [p]}}]`},
			[]string{"t.yaml: grants[0].ttl: 5m0.25s is not whole seconds: credentials are issued for whole seconds (write 5m0s or 5m1s)"}},
		{"ok/grant-ttl-hours-and-seconds", map[string]string{"grants": `[{name: g, kind: vault_token, ttl: 1h30s, vault_token: {policies: [p]}}]`}, nil},
		// YAML turns 1.5 into 1 for an integer field: a fraction where a
		// whole number belongs was silently truncated.
		{"fail/fraction-for-integer", map[string]string{"version": "1.5",
			"workloads": `[{name: w, owner: team, match: {issuer: i, subject: s}, grants: [g], rate: {per_second: 1, burst: 2.5}}]`,
			"grants":    `[{name: g, kind: vault_token, ttl: 5m, vault_token: {policies: [p], num_uses: 0.5}}]`},
			[]string{"t.yaml: version: must be a whole number, not 1.5 (line 1)",
				"t.yaml: workloads[0].rate.burst: must be a whole number, not 2.5 (line 3)",
				"t.yaml: grants[0].vault_token.num_uses: must be a whole number, not 0.5 (line 4)"}},
		{"fail/fraction-for-integer-merged", map[string]string{
			"workloads": `[{<<: [{rate: &r {per_second: 1, burst: 2.5}}], name: w, owner: team, match: {issuer: i, subject: s}, grants: [g]}, {name: w2, owner: team, match: {issuer: i, subject: s2}, rate: *r}]`},
			[]string{"t.yaml: workloads[0].rate.burst: must be a whole number, not 2.5 (line 3)",
				"t.yaml: workloads[1].rate.burst: must be a whole number, not 2.5 (line 3)"}},
		{"fail/grant-vault-token-num-uses-no-value", map[string]string{"grants": `[{name: g, kind: vault_token, ttl: 5m, vault_token: {policies: [p], num_uses: }}]`},
			[]string{"t.yaml: grants[0].vault_token.num_uses: no value: write a number of uses (0 = unlimited), or remove the field"}},
		{"fail/grant-ttl-over-10-years", map[string]string{"grants": `[{name: g, kind: vault_token, ttl: 2562047h, vault_token: {policies: [p]}}]`},
			[]string{"t.yaml: grants[0].ttl: 2562047h0m0s is over 10 years (87600h0m0s): credentials are short-lived"}},
		{"fail/max-token-lifetime-over-10-years", map[string]string{"issuers": `[{name: i, issuer: "https://issuer.example", jwks_url: "https://issuer.example/jwks", audiences: [k], algorithms: [RS256], max_token_lifetime: 87601h}]`},
			[]string{"t.yaml: issuers[0].max_token_lifetime: 87601h0m0s is over 10 years (87600h0m0s): identity tokens are short-lived"}},
		{"ok/grant-ttl-10-years", map[string]string{"grants": `[{name: g, kind: vault_token, ttl: 87600h, vault_token: {policies: [p]}}]`}, nil},
		{"ok/grant-vault-token-num-uses-zero", map[string]string{"grants": `[{name: g, kind: vault_token, ttl: 5m, vault_token: {policies: [p], num_uses: 0}}]`}, nil},
		{"ok/integral-float-for-integer", map[string]string{"grants": `[{name: g, kind: vault_token, ttl: 5m, vault_token: {policies: [p], num_uses: 2.0}}]`}, nil},
		{"fail/grant-vault-token-no-policies", map[string]string{"grants": `[{name: g, kind: vault_token, ttl: 5m, vault_token: {}}]`},
			[]string{"t.yaml: grants[0].vault_token.policies: required: at least one Vault policy"}},
		{"fail/grant-vault-token-root", map[string]string{"grants": `[{name: g, kind: vault_token, ttl: 5m, vault_token: {policies: [p, root]}}]`},
			[]string{"t.yaml: grants[0].vault_token.policies[1]: the root policy is never granted"}},
		{"fail/grant-vault-token-root-spaced", map[string]string{"grants": `[{name: g, kind: vault_token, ttl: 5m, vault_token: {policies: [p, " Root "]}}]`},
			[]string{"t.yaml: grants[0].vault_token.policies[1]: the root policy is never granted"}},
		{"fail/grant-vault-token-policy-spaced", map[string]string{"grants": `[{name: g, kind: vault_token, ttl: 5m, vault_token: {policies: ["p "]}}]`},
			[]string{`t.yaml: grants[0].vault_token.policies[0]: "p " starts or ends with a space: Vault trims policy names, so write it without`}},
		{"fail/grant-vault-token-num-uses", map[string]string{"grants": `[{name: g, kind: vault_token, ttl: 5m, vault_token: {policies: [p], num_uses: -1}}]`},
			[]string{"t.yaml: grants[0].vault_token.num_uses: must be >= 0 (0 = unlimited)"}},
		{"fail/grant-jwt-fields", map[string]string{"grants": `[{name: g, kind: jwt, ttl: 5m, jwt: {}}]`},
			[]string{"t.yaml: grants[0].jwt.audience: required", "t.yaml: grants[0].jwt.transit_key: required"}},
		{"fail/grant-jwt-audience-spaces", map[string]string{"grants": `[{name: g, kind: jwt, ttl: 5m, jwt: {audience: "api ", transit_key: k}}]`},
			[]string{`t.yaml: grants[0].jwt.audience: "api " starts or ends with a space: it is the minted JWT's aud, which its verifiers compare exactly`}},
		{"fail/grant-vault-dynamic-path-missing", map[string]string{"grants": `[{name: g, kind: vault_dynamic, ttl: 5m, vault_dynamic: {}}]`},
			[]string{"t.yaml: grants[0].vault_dynamic.path: required"}},
		{"fail/grant-vault-dynamic-leading-slash", map[string]string{"grants": `[{name: g, kind: vault_dynamic, ttl: 5m, vault_dynamic: {path: /database/creds/x}}]`},
			[]string{`t.yaml: grants[0].vault_dynamic.path: must not start with "/" (it is relative to /v1/)`}},
		{"fail/grant-vault-dynamic-dotdot", map[string]string{"grants": `[{name: g, kind: vault_dynamic, ttl: 5m, vault_dynamic: {path: database/../sys/x}}]`},
			[]string{`t.yaml: grants[0].vault_dynamic.path: must not contain empty, "." or ".." segments`}},
		// Characters the Vault adapters refuse at mint time (every mint of
		// the grant would fail with vault_config) are refused here, where
		// the problem names the file and field.
		{"fail/grant-vault-dynamic-query", map[string]string{"grants": `[{name: g, kind: vault_dynamic, ttl: 5m, vault_dynamic: {path: "database/creds/x?list=true"}}]`},
			[]string{`t.yaml: grants[0].vault_dynamic.path: must not contain "?", "#", "%", "\" or spaces`}},
		{"fail/grant-vault-dynamic-escaped-slash", map[string]string{"grants": `[{name: g, kind: vault_dynamic, ttl: 5m, vault_dynamic: {path: "database/creds/x%2F..%2Fsys"}}]`},
			[]string{`t.yaml: grants[0].vault_dynamic.path: must not contain "?", "#", "%", "\" or spaces`}},
		{"fail/grant-pki-path-fragment", map[string]string{"grants": `[{name: g, kind: pki, ttl: 5m, pki: {path: "pki/issue/web#x"}}]`},
			[]string{`t.yaml: grants[0].pki.path: must not contain "?", "#", "%", "\" or spaces`}},
		{"fail/grant-jwt-transit-key-path", map[string]string{"grants": `[{name: g, kind: jwt, ttl: 5m, jwt: {audience: a, transit_key: "../sys/x"}}]`},
			[]string{`t.yaml: grants[0].jwt.transit_key: "../sys/x" must be a transit key name (one path segment, no ":", "?", "#", "%", "\" or spaces)`}},
		{"fail/grant-jwt-transit-key-dotdot", map[string]string{"grants": `[{name: g, kind: jwt, ttl: 5m, jwt: {audience: a, transit_key: ".."}}]`},
			[]string{`t.yaml: grants[0].jwt.transit_key: ".." must be a transit key name (one path segment, no ":", "?", "#", "%", "\" or spaces)`}},
		{"ok/grant-jwt-transit-key-dots-dashes", map[string]string{"grants": `[{name: g, kind: jwt, ttl: 5m, jwt: {audience: a, transit_key: keytrail-signing.v2_x}}]`}, nil},
		{"ok/proxy-kv-path-with-space", map[string]string{"grants": proxyGrant(strings.Replace(okProxy, "vault_kv: secret/data/x,", `vault_kv: "secret/data/my x",`, 1))}, nil},
		{"fail/proxy-kv-path-query", map[string]string{"grants": proxyGrant(strings.Replace(okProxy, "vault_kv: secret/data/x,", `vault_kv: "secret/data/x?version=1",`, 1))},
			[]string{`t.yaml: grants[0].proxy.secret.vault_kv: must not contain "?" or "#"`}},
		{"fail/grant-pki-path", map[string]string{"grants": `[{name: g, kind: pki, ttl: 5m, pki: {trust_domain: x}}]`},
			[]string{"t.yaml: grants[0].pki.path: required"}},
		{"ok/grant-pki-issuer-path", map[string]string{"grants": `[{name: g, kind: pki, ttl: 5m, pki: {path: pki/int/issuer/default/issue/web}}]`}, nil},
		{"fail/grant-pki-sign-path", map[string]string{"grants": `[{name: g, kind: pki, ttl: 5m, pki: {path: pki/sign/w}}]`},
			[]string{"t.yaml: grants[0].pki.path: must be an issue path: <mount>/issue/<role> or <mount>/issuer/<ref>/issue/<role>"}},
		{"fail/grant-pki-kv-path", map[string]string{"grants": `[{name: g, kind: pki, ttl: 5m, pki: {path: secret/data/x}}]`},
			[]string{"t.yaml: grants[0].pki.path: must be an issue path: <mount>/issue/<role> or <mount>/issuer/<ref>/issue/<role>"}},
		{"fail/grant-pki-trust-domain-upper", map[string]string{"grants": `[{name: g, kind: pki, ttl: 5m, pki: {path: pki/issue/w, trust_domain: Prod.Example.ORG}}]`},
			[]string{"t.yaml: grants[0].pki.trust_domain: must be a bare lowercase trust domain name like example.org ([a-z0-9._-])"}},
		{"fail/grant-pki-trust-domain-escaped", map[string]string{"grants": `[{name: g, kind: pki, ttl: 5m, pki: {path: pki/issue/w, trust_domain: "exa%2fmple.org"}}]`},
			[]string{"t.yaml: grants[0].pki.trust_domain: must be a bare lowercase trust domain name like example.org ([a-z0-9._-])"}},

		// proxy grants
		{"ok/proxy", map[string]string{"grants": proxyGrant(okProxy)}, nil},
		{"ok/proxy-query-inject", map[string]string{"grants": proxyGrant(`upstream: "https://api.example.com/base", secret: {vault_kv: secret/data/x, field: key}, inject: {query: api_key}, methods: [GET, POST, DELETE], paths: ["/", "/v1/*"]`)}, nil},
		{"ok/proxy-http-loopback-allow-private", map[string]string{"grants": proxyGrant(`upstream: "http://127.0.0.1:8080", allow_private: true, secret: {vault_kv: secret/data/x, field: key}, inject: {header: X-Api-Key}, paths: ["/x"]`)}, nil},
		{"fail/proxy-http", map[string]string{"grants": proxyGrant(strings.Replace(okProxy, "https://", "http://", 1))},
			[]string{"t.yaml: grants[0].proxy.upstream: must be https"}},
		{"fail/proxy-http-loopback-without-allow-private", map[string]string{"grants": proxyGrant(strings.Replace(okProxy, "https://api.example.com", "http://localhost:8080", 1))},
			[]string{"t.yaml: grants[0].proxy.upstream: must be https (http to a loopback host needs allow_private: true)"}},
		{"fail/proxy-http-allow-private-not-loopback", map[string]string{"grants": proxyGrant("allow_private: true, " + strings.Replace(okProxy, "https://api.example.com", "http://10.1.2.3", 1))},
			[]string{"t.yaml: grants[0].proxy.upstream: must be https"}},
		{"fail/proxy-upstream-missing", map[string]string{"grants": proxyGrant(strings.Replace(okProxy, `upstream: "https://api.example.com", `, "", 1))},
			[]string{"t.yaml: grants[0].proxy.upstream: required"}},
		{"fail/proxy-upstream-relative", map[string]string{"grants": proxyGrant(strings.Replace(okProxy, "https://api.example.com", "api.example.com/v1", 1))},
			[]string{"t.yaml: grants[0].proxy.upstream: must be an absolute https URL"}},
		{"fail/proxy-upstream-query", map[string]string{"grants": proxyGrant(strings.Replace(okProxy, "https://api.example.com", "https://api.example.com/?a=1", 1))},
			[]string{"t.yaml: grants[0].proxy.upstream: must not have a query"}},
		{"fail/proxy-upstream-fragment", map[string]string{"grants": proxyGrant(strings.Replace(okProxy, "https://api.example.com", "https://api.example.com/#f", 1))},
			[]string{"t.yaml: grants[0].proxy.upstream: must not have a fragment"}},
		{"fail/proxy-upstream-userinfo", map[string]string{"grants": proxyGrant(strings.Replace(okProxy, "https://api.example.com", "https://u:p@api.example.com", 1))},
			[]string{"t.yaml: grants[0].proxy.upstream: must not carry user info"}},
		{"fail/proxy-secret", map[string]string{"grants": proxyGrant(strings.Replace(okProxy, "secret: {vault_kv: secret/data/x, field: key}", "secret: {}", 1))},
			[]string{"t.yaml: grants[0].proxy.secret.vault_kv: required", "t.yaml: grants[0].proxy.secret.field: required"}},
		{"fail/proxy-inject-both", map[string]string{"grants": proxyGrant(strings.Replace(okProxy, "header: Authorization,", "header: Authorization, query: k,", 1))},
			[]string{"t.yaml: grants[0].proxy.inject: set exactly one of header and query, not both"}},
		{"fail/proxy-inject-none", map[string]string{"grants": proxyGrant(strings.Replace(okProxy, `inject: {header: Authorization, format: "Bearer {secret}"}`, "inject: {}", 1))},
			[]string{"t.yaml: grants[0].proxy.inject: required: one of header or query"}},
		{"fail/proxy-inject-format", map[string]string{"grants": proxyGrant(strings.Replace(okProxy, "Bearer {secret}", "Bearer secret", 1))},
			[]string{"t.yaml: grants[0].proxy.inject.format: must contain {secret}"}},
		// A written empty format (or no value) was silently replaced by the
		// default of a format left out, the bare secret.
		{"fail/proxy-inject-format-empty", map[string]string{"grants": proxyGrant(strings.Replace(okProxy, `"Bearer {secret}"`, `""`, 1))},
			[]string{`t.yaml: grants[0].proxy.inject.format: must contain {secret} (omit it for the default, "{secret}")`}},
		{"fail/proxy-inject-format-no-value", map[string]string{"grants": proxyGrant(strings.Replace(okProxy, `"Bearer {secret}"`, ``, 1))},
			[]string{`t.yaml: grants[0].proxy.inject.format: must contain {secret} (omit it for the default, "{secret}")`}},
		{"fail/proxy-inject-format-control", map[string]string{"grants": proxyGrant(strings.Replace(okProxy, "Bearer {secret}", `Bearer\x01{secret}`, 1))},
			[]string{"t.yaml: grants[0].proxy.inject.format: must not contain control characters (other than a tab)"}},
		{"fail/proxy-inject-format-del", map[string]string{"grants": proxyGrant(strings.Replace(okProxy, "Bearer {secret}", `Bearer {secret}\x7f`, 1))},
			[]string{"t.yaml: grants[0].proxy.inject.format: must not contain control characters (other than a tab)"}},
		{"fail/proxy-inject-format-newline", map[string]string{"grants": proxyGrant(strings.Replace(okProxy, "Bearer {secret}", `Bearer {secret}\n`, 1))},
			[]string{"t.yaml: grants[0].proxy.inject.format: must not contain control characters (other than a tab)"}},
		{"ok/proxy-inject-format-tab", map[string]string{"grants": proxyGrant(strings.Replace(okProxy, "Bearer {secret}", `Bearer\t{secret}`, 1))}, nil},
		{"fail/proxy-inject-header-name", map[string]string{"grants": proxyGrant(strings.Replace(okProxy, "header: Authorization", `header: "Bad Header"`, 1))},
			[]string{`t.yaml: grants[0].proxy.inject.header: "Bad Header" is not a valid header name`}},
		{"fail/proxy-inject-header-host", map[string]string{"grants": proxyGrant(strings.Replace(okProxy, "header: Authorization", `header: host`, 1))},
			[]string{`t.yaml: grants[0].proxy.inject.header: "host" cannot carry a secret`}},
		{"fail/proxy-inject-header-accept-encoding", map[string]string{"grants": proxyGrant(strings.Replace(okProxy, "header: Authorization", `header: accept-encoding`, 1))},
			[]string{`t.yaml: grants[0].proxy.inject.header: "accept-encoding" cannot carry a secret`}},
		{"fail/proxy-inject-header-proxy-authorization", map[string]string{"grants": proxyGrant(strings.Replace(okProxy, "header: Authorization", `header: Proxy-Authorization`, 1))},
			[]string{`t.yaml: grants[0].proxy.inject.header: "Proxy-Authorization" cannot carry a secret`}},
		{"fail/proxy-inject-query-format", map[string]string{"grants": proxyGrant(strings.Replace(okProxy, "header: Authorization", "query: k", 1))},
			[]string{"t.yaml: grants[0].proxy.inject.format: applies to header injection only"}},
		{"fail/proxy-method-lowercase", map[string]string{"grants": proxyGrant(okProxy + ", methods: [GET, post]")},
			[]string{`t.yaml: grants[0].proxy.methods[1]: "post" is not an uppercase HTTP method (want one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS)`}},
		// A written empty list (or no value) was silently replaced by the
		// default of a list left out, [GET]: a method the policy did not
		// list was allowed.
		{"fail/proxy-methods-empty", map[string]string{"grants": proxyGrant(okProxy + ", methods: []")},
			[]string{"t.yaml: grants[0].proxy.methods: required: at least one method (omit it for the default, [GET])"}},
		{"fail/proxy-methods-no-value", map[string]string{"grants": proxyGrant(okProxy + ", methods: ")},
			[]string{"t.yaml: grants[0].proxy.methods: required: at least one method (omit it for the default, [GET])"}},
		{"fail/proxy-method-trace", map[string]string{"grants": proxyGrant(okProxy + ", methods: [TRACE]")},
			[]string{"t.yaml: grants[0].proxy.methods[0]: TRACE is not allowed: it would expose the injected secret or tunnel past the proxy"}},
		{"fail/proxy-paths-empty", map[string]string{"grants": proxyGrant(strings.Replace(okProxy, `paths: ["/v1/x"]`, "paths: []", 1))},
			[]string{"t.yaml: grants[0].proxy.paths: required: at least one path"}},
		{"fail/proxy-path-relative", map[string]string{"grants": proxyGrant(strings.Replace(okProxy, `"/v1/x"`, `"v1/x"`, 1))},
			[]string{`t.yaml: grants[0].proxy.paths[0]: "v1/x" must start with "/"`}},
		{"fail/proxy-path-inner-wildcard", map[string]string{"grants": proxyGrant(strings.Replace(okProxy, `"/v1/x"`, `"/v1/x", "/v1/*/y"`, 1))},
			[]string{`t.yaml: grants[0].proxy.paths[1]: "/v1/*/y" may use a wildcard only as a final "/*"`}},
		{"fail/proxy-path-suffix-wildcard", map[string]string{"grants": proxyGrant(strings.Replace(okProxy, `"/v1/x"`, `"/v1/x*"`, 1))},
			[]string{`t.yaml: grants[0].proxy.paths[0]: "/v1/x*" may use a wildcard only as a final "/*"`}},
		{"fail/proxy-path-dotdot", map[string]string{"grants": proxyGrant(strings.Replace(okProxy, `"/v1/x"`, `"/v1/../admin/*"`, 1))},
			[]string{`t.yaml: grants[0].proxy.paths[0]: "/v1/../admin/*" must be a clean path (no "//", "." or ".." segments)`}},

		// admins
		{"ok/admin-claims-only", map[string]string{"admins": `[{name: a, match: {issuer: i, claims: {groups: secops}}, roles: [revoke, trace, report]}]`}, nil},
		{"ok/admin-claim-patterns-only", map[string]string{"admins": `[{name: a, match: {issuer: i, claim_patterns: {email: ".*@acme.example"}}, roles: [trace]}]`}, nil},
		{"fail/admin-claim-pattern-no-value", map[string]string{"admins": `[{name: a, match: {issuer: i, claim_patterns: {email: }}, roles: [trace]}]`},
			[]string{`t.yaml: admins[0].match.claim_patterns["email"]: no value (line 5): write "" to require an empty claim, or remove the entry`}},
		{"fail/admin-match-empty", map[string]string{"admins": `[{name: a, match: {issuer: i}, roles: [revoke]}]`},
			[]string{"t.yaml: admins[0].match: required: at least one of subject, subject_pattern, claims, claim_patterns"}},
		{"fail/admin-issuer-unknown", map[string]string{"admins": `[{name: a, match: {issuer: x, subject: s}, roles: [revoke]}]`},
			[]string{`t.yaml: admins[0].match.issuer: unknown issuer "x"`}},
		{"fail/admin-roles-empty", map[string]string{"admins": `[{name: a, match: {issuer: i, subject: s}}]`},
			[]string{"t.yaml: admins[0].roles: required: at least one of revoke, trace, report"}},
		{"fail/admin-role-unknown", map[string]string{"admins": `[{name: a, match: {issuer: i, subject: s}, roles: [revoke, root]}]`},
			[]string{`t.yaml: admins[0].roles[1]: unknown role "root" (want one of revoke, trace, report)`}},

		// exceptions
		{"fail/exception-fields", map[string]string{"exceptions": `[{name: e}]`},
			[]string{"t.yaml: exceptions[0].owner: required", "t.yaml: exceptions[0].reason: required", "t.yaml: exceptions[0].expires: required (YYYY-MM-DD)"}},

		// sections may be absent: an empty policy denies everything.
		{"ok/only-version", map[string]string{"issuers": "", "workloads": "", "grants": "", "admins": "", "exceptions": ""}, nil},
	}
	seen := map[string]bool{}
	for _, tt := range tests {
		if seen[tt.name] {
			t.Fatalf("duplicate case name %s", tt.name)
		}
		seen[tt.name] = true
		t.Run(tt.name, func(t *testing.T) {
			in := doc(tt.over)
			p, err := Parse("t.yaml", []byte(in))
			got := problemStrings(err)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Fatalf("Parse(%s) problems = %q, want %q\n(-want +got):\n%s", in, got, tt.want, diff)
			}
			if (p == nil) != (tt.want != nil) {
				t.Fatalf("Parse(%s) policy = %v, want policy only when valid", in, p)
			}
			for _, e := range multiErrors(err) {
				var pr *Problem
				if !errors.As(e, &pr) || pr.File != "t.yaml" {
					t.Errorf("problem %v is not a *Problem naming the file", e)
				}
			}
		})
	}
}

// nullStringEntry and nullEntry are the messages of a list entry written
// without a value (yamlcheck.NullEntries), in a list of strings and of
// mappings.
const (
	nullStringEntry = `no value: it would be left out of the list (not read as ""), moving later entries up; write its value (quoted "" for an empty one), or remove the entry`
	nullEntry       = `no value: it would be left out of the list, moving later entries up; write the entry, or remove it`
)

func multiErrors(err error) []error {
	if u, ok := err.(interface{ Unwrap() []error }); ok {
		return u.Unwrap()
	}
	return nil
}

func TestDefaults(t *testing.T) {
	in := doc(map[string]string{
		"workloads": `[{name: w, owner: o, match: {issuer: i, subject: s}, grants: [g], rate: {per_second: 2.5}}]`,
		"grants":    `[{name: g, kind: proxy, ttl: 5m, proxy: {upstream: "https://api.example.com", secret: {vault_kv: secret/data/x, field: k}, inject: {header: X-Api-Key}, paths: ["/x"]}}]`,
	})
	p, err := Parse("t.yaml", []byte(in))
	if err != nil {
		t.Fatalf("Parse(%s) = %v, want nil", in, err)
	}
	is, _ := p.Issuer("i")
	w, _ := p.Workload("w")
	g, _ := p.Grant("g")
	type defaults struct {
		MaxTokenLifetime time.Duration
		Burst            int
		Methods          []string
		Format           string
	}
	got := defaults{time.Duration(is.MaxTokenLifetime), w.Rate.Burst, g.Proxy.Methods, g.Proxy.Inject.Format}
	want := defaults{24 * time.Hour, 3, []string{"GET"}, "{secret}"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("defaults = %+v, want %+v (-want +got):\n%s", got, want, diff)
	}
}

// TestValidationReportsEverything checks that one file with many problems
// reports all of them at once, against a golden list.
func TestValidationReportsEverything(t *testing.T) {
	_, err := Load("testdata/many-problems.yaml")
	got := locatedProblemStrings(err)
	want := readGoldenLines(t, "testdata/many-problems.golden", got)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("Load(many-problems.yaml) problems = %q, want %q (-want +got):\n%s", got, want, diff)
	}
	if len(got) < 20 {
		t.Fatalf("Load(many-problems.yaml) reported %d problems, want every one (>= 20)", len(got))
	}
	if !strings.HasPrefix(err.Error(), "policy invalid: ") {
		t.Errorf("Load(many-problems.yaml) error = %q, want a 'policy invalid' summary", err)
	}
}

// TestCheckFiles: a ca_file that a broker would refuse (unreadable, or
// holding no PEM certificate) is a CheckFiles problem naming the policy file
// and field; Parse does not read files (a policy repository's CI has none).
// The dates of a ca_file's certificates are warnings, never problems (a
// problem would stop the server at start and refuse a reload): one expired
// or not yet valid, alone or next to a valid one, or one that expires
// within 30 days. Before, the dates were not looked at.
func TestCheckFiles(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	cert := func(name string, notBefore, notAfter time.Time) string {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
			NotBefore: notBefore, NotAfter: notAfter, IsCA: true, BasicConstraintsValid: true}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			t.Fatal(err)
		}
		return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	}
	write := func(name, content string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	goodPEM := cert("good", now.Add(-time.Hour), now.Add(365*24*time.Hour))
	expiredPEM := cert("old", now.Add(-48*time.Hour), now.Add(-time.Hour))
	good := write("ca.pem", goodPEM)
	garbage := write("garbage.pem", "not a certificate\n")
	missing := filepath.Join(dir, "missing.pem")
	expired := write("expired.pem", expiredPEM)
	future := write("future.pem", cert("future", now.Add(time.Hour), now.Add(365*24*time.Hour)))
	expiring := write("expiring.pem", cert("soon", now.Add(-time.Hour), now.Add(20*24*time.Hour)))
	mixed := write("mixed.pem", goodPEM+expiredPEM)
	at := func(t time.Time) string { return t.UTC().Format(time.RFC3339) }
	issuer := func(ca string) string {
		return `[{name: i, issuer: "https://issuer.example", jwks_url: "https://issuer.example/jwks", audiences: [keytrail], algorithms: [RS256], ca_file: "` + ca + `"}]`
	}
	proxy := func(ca string) string {
		return proxyGrant(`upstream: "https://api.example.com", ca_file: "` + ca + `", secret: {vault_kv: secret/data/x, field: key}, inject: {header: X-Api-Key}, paths: ["/x"]`)
	}
	tests := []struct {
		name     string
		over     map[string]string
		want     string // "" = valid; the line is that of the ca_file
		wantWarn []string
	}{
		{name: "ok/issuer", over: map[string]string{"issuers": issuer(good)}},
		{name: "ok/proxy", over: map[string]string{"grants": proxy(good)}},
		{name: "fail/issuer-missing", over: map[string]string{"issuers": issuer(missing)}, want: "t.yaml: issuers[0].ca_file: cannot read " + missing + ": no such file or directory (line 2)"},
		{name: "fail/issuer-garbage", over: map[string]string{"issuers": issuer(garbage)}, want: "t.yaml: issuers[0].ca_file: " + garbage + " holds no PEM certificate (line 2)"},
		{name: "fail/proxy-missing", over: map[string]string{"grants": proxy(missing)}, want: "t.yaml: grants[0].proxy.ca_file: cannot read " + missing + ": no such file or directory (line 4)"},
		{name: "fail/proxy-garbage", over: map[string]string{"grants": proxy(garbage)}, want: "t.yaml: grants[0].proxy.ca_file: " + garbage + " holds no PEM certificate (line 4)"},
		{name: "warn/issuer-ca-expired", over: map[string]string{"issuers": issuer(expired)}, wantWarn: []string{
			"t.yaml: issuers[0].ca_file: " + expired + `: certificate "old" expired at ` + at(now.Add(-time.Hour)) + ": no certificate of the bundle is valid now (line 2)"}},
		{name: "warn/issuer-ca-not-yet-valid", over: map[string]string{"issuers": issuer(future)}, wantWarn: []string{
			"t.yaml: issuers[0].ca_file: " + future + `: certificate "future" not valid before ` + at(now.Add(time.Hour)) + ": no certificate of the bundle is valid now (line 2)"}},
		{name: "warn/proxy-ca-expires-within-30-days", over: map[string]string{"grants": proxy(expiring)}, wantWarn: []string{
			"t.yaml: grants[0].proxy.ca_file: " + expiring + `: certificate "soon" expires at ` + at(now.Add(20*24*time.Hour)) + ", in less than 30 days (line 4)"}},
		{name: "warn/proxy-ca-holds-an-expired-cert", over: map[string]string{"grants": proxy(mixed)}, wantWarn: []string{
			"t.yaml: grants[0].proxy.ca_file: " + mixed + `: certificate "old" expired at ` + at(now.Add(-time.Hour)) + ": it verifies nothing (remove it) (line 4)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse("t.yaml", []byte(doc(tt.over)))
			if err != nil {
				t.Fatalf("Parse() = %v; it must not read the files a policy names", err)
			}
			warnings, err := p.CheckFiles(now)
			var got []string
			var ve *ValidationError
			if errors.As(err, &ve) {
				for _, p := range ve.Problems {
					got = append(got, p.Error())
				}
			} else if err != nil {
				t.Fatalf("CheckFiles() = %v, want a *ValidationError or nil", err)
			}
			var want []string
			if tt.want != "" {
				want = []string{tt.want}
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("problems (-want +got):\n%s", diff)
			}
			var gotWarn []string
			for _, w := range warnings {
				gotWarn = append(gotWarn, w.Error())
			}
			if diff := cmp.Diff(tt.wantWarn, gotWarn); diff != "" {
				t.Errorf("warnings (-want +got):\n%s", diff)
			}
		})
	}
}

// TestProblemsNameTheLine: keytrail policy check names, for every problem,
// the file, the field path and the line of that field (or of the entry that
// lacks it), so a problem in a long file or a directory is found at once.
func TestProblemsNameTheLine(t *testing.T) {
	const policy = `version: 1
issuers:
  - name: i
    issuer: "https://x"
    jwks_url: "https://x/j"
    audiences: [k]
    algorithms: [RS256]
    session_claim: "a..b"
workloads:
  - name: w
    owner: o
    match: &m
      issuer: i
      subject: s
      claims:
        kubernetes.io.namespace: ok
        "a.": b
    grants:
      - g
      - nope
  - name: x
    match: *m
grants:
  - name: g
    kind: vault_token
    ttl: 5m
    vault_token:
      policies: [root]
`
	_, err := Parse("t.yaml", []byte(policy))
	want := []string{
		`t.yaml: issuers[0].session_claim: "a..b" is not a dotted claim path (or several joined by +) (line 8)`,
		`t.yaml: grants[0].vault_token.policies[0]: the root policy is never granted (line 28)`,
		`t.yaml: workloads[0].match.claims["a."]: "a." is not a dotted claim path (line 17)`,
		`t.yaml: workloads[0].grants[1]: unknown grant "nope" (line 20)`,
		// An entry without the field: the entry's line.
		`t.yaml: workloads[1].owner: required: every workload has exactly one owner (line 21)`,
		// A path through an alias: the line where it is written.
		`t.yaml: workloads[1].match.claims["a."]: "a." is not a dotted claim path (line 17)`,
		`t.yaml: workloads[1].match: same match as workload "w" (t.yaml: workloads[0]): a token would match both; make workload matches disjoint (line 22)`,
	}
	if diff := cmp.Diff(want, locatedProblemStrings(err)); diff != "" {
		t.Fatalf("Parse() problems (-want +got):\n%s", diff)
	}
}

// TestSubSecondTTLNamesTheLine: a grant ttl that is not whole seconds is a
// problem naming the file, the field and its line.
func TestSubSecondTTLNamesTheLine(t *testing.T) {
	const policy = `version: 1
grants:
  - name: g
    kind: vault_token
    ttl: 1500ms
    vault_token:
      policies: [p]
`
	_, err := Parse("t.yaml", []byte(policy))
	want := []string{`t.yaml: grants[0].ttl: 1.5s is not whole seconds: credentials are issued for whole seconds (write 1s or 2s) (line 5)`}
	if diff := cmp.Diff(want, locatedProblemStrings(err)); diff != "" {
		t.Fatalf("Parse() problems (-want +got):\n%s", diff)
	}
}

// TestMergeKeysSeenByEveryCheck: a value reached through a YAML merge key
// ("<<: *defaults") is decoded like one written in place, so every check
// must see it too. A merged max_token_lifetime of 0 was silently replaced
// by the 24h default, a merged claims entry without a value silently
// required an empty claim, and a problem in a merged field was given the
// line of the "<<" instead of the line where the value is written. A key
// written next to the merge overrides the merged one, as in the decoder.
func TestMergeKeysSeenByEveryCheck(t *testing.T) {
	const policy = `version: 1
issuers:
  - &iss
    name: i
    issuer: "https://x"
    jwks_url: "https://x/j"
    audiences: [k]
    algorithms: [RS256]
    max_token_lifetime: 0
  - <<: *iss
    name: j
    issuer: "https://y"
  - <<: [{max_token_lifetime: 1h}, *iss]
    name: k
    issuer: "https://z"
  - <<: *iss
    name: l
    issuer: "https://w"
    max_token_lifetime: 1h
workloads:
  - &w
    name: w
    owner: " o"
    match: {issuer: i, subject: s}
    grants: [g]
  - <<: *w
    name: x
    match: {issuer: i, subject: s2}
grants:
  - name: g
    kind: vault_token
    ttl: 5m
    vault_token: {policies: [p]}
`
	p, err := Parse("t.yaml", []byte(policy))
	want := []string{
		`t.yaml: issuers[0].max_token_lifetime: must be > 0 (omit it for the default, 24h) (line 9)`,
		`t.yaml: issuers[1].max_token_lifetime: must be > 0 (omit it for the default, 24h) (line 9)`,
		`t.yaml: workloads[0].owner: " o" starts or ends with a space: owners are compared exactly (line 23)`,
		`t.yaml: workloads[1].owner: " o" starts or ends with a space: owners are compared exactly (line 23)`,
	}
	if diff := cmp.Diff(want, locatedProblemStrings(err)); diff != "" || p != nil {
		t.Errorf("Parse() = %v, problems (-want +got):\n%s", p, diff)
	}

	const claims = `version: 1
issuers:
  - name: i
    issuer: "https://x"
    jwks_url: "https://x/j"
    audiences: [k]
    algorithms: [RS256]
workloads:
  - name: w
    owner: o
    match:
      issuer: i
      subject: s
      claims: &c
        <<: {namespace: }
        team: t
    grants: [g]
  - name: x
    owner: o
    match:
      issuer: i
      subject: s2
      claims:
        <<: *c
        namespace: payments
    grants: [g]
grants:
  - name: g
    kind: vault_token
    ttl: 5m
    vault_token: {policies: [p]}
`
	p, err = Parse("t.yaml", []byte(claims))
	want = []string{
		`t.yaml: workloads[0].match.claims["namespace"]: no value (line 15): write "" to require an empty claim, or remove the entry`,
	}
	if diff := cmp.Diff(want, locatedProblemStrings(err)); diff != "" || p != nil {
		t.Errorf("Parse() = %v, problems (-want +got):\n%s", p, diff)
	}
}

// TestUnquotedClaimScalarsWarn: a claims value is compared as the text
// written, so an unquoted 1.0, 1e3, 0x1F or True never equals a number or
// boolean claim (compared as "1", "1000", "31", "true"): the workload
// silently never matched. Such a value still matches the same text in a
// string claim (a GitLab ref named 1.0), so it is a warning naming the
// file, the field and the line, not a problem. The canonical forms (1,
// 1.5, true), quoted values and claim_patterns draw none.
func TestUnquotedClaimScalarsWarn(t *testing.T) {
	const policy = `version: 1
issuers:
  - name: i
    issuer: "https://x"
    jwks_url: "https://x/j"
    audiences: [k]
    algorithms: [RS256]
workloads:
  - name: w
    owner: o
    match:
      issuer: i
      subject: s
      claims:
        a: 1.0
        b: 1e3
        c: 0x1F
        d: True
        e: .inf
        ok-int: 1
        ok-float: 1.5
        ok-bool: true
        ok-quoted: "1.0"
        ok-text: v1.0
        ok-long: 12345678901234567890
      claim_patterns: {p: 1.0}
    grants: [g]
  - name: x
    owner: o
    match:
      issuer: i
      subject: s2
      claims: {<<: &m {f: 01}}
    grants: [g]
admins:
  - name: a
    match: {issuer: i, claims: {g: FALSE}}
    roles: [revoke]
grants:
  - name: g
    kind: vault_token
    ttl: 5m
    vault_token: {policies: [p]}
`
	p, got := parseValid(t, policy)
	want := []string{
		`t.yaml: workloads[0].match.claims["a"]: unquoted 1.0 is compared as the text "1.0", never as the number 1: quote it to match that text, or write 1 to match a number claim (line 15)`,
		`t.yaml: workloads[0].match.claims["b"]: unquoted 1e3 is compared as the text "1e3", never as the number 1000: quote it to match that text, or write 1000 to match a number claim (line 16)`,
		`t.yaml: workloads[0].match.claims["c"]: unquoted 0x1F is compared as the text "0x1F", never as the number 31: quote it to match that text, or write 31 to match a number claim (line 17)`,
		`t.yaml: workloads[0].match.claims["d"]: unquoted True is compared as the text "True", never as the boolean true: quote it to match that text, or write true to match a boolean claim (line 18)`,
		`t.yaml: workloads[0].match.claims["e"]: unquoted .inf is compared as the text ".inf" and never equals a number claim: quote it to match that text (line 19)`,
		`t.yaml: workloads[1].match.claims["f"]: unquoted 01 is compared as the text "01", never as the number 1: quote it to match that text, or write 1 to match a number claim (line 33)`,
		`t.yaml: admins[0].match.claims["g"]: unquoted FALSE is compared as the text "FALSE", never as the boolean false: quote it to match that text, or write false to match a boolean claim (line 37)`,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("Warnings() (-want +got):\n%s", diff)
	}
	// What the warnings say: the canonical forms match number and boolean
	// claims, the others only their own text.
	for _, tc := range []struct {
		workload string
		claims   map[string]any
		match    bool
	}{
		{"w", map[string]any{"sub": "s", "a": 1.0, "b": 1000.0, "c": 31.0, "d": true, "e": "x", "ok-int": 1.0, "ok-float": 1.5, "ok-bool": true, "ok-quoted": "1.0", "ok-text": "v1.0", "ok-long": json.Number("12345678901234567890"), "p": "1.0"}, false},
		{"w", map[string]any{"sub": "s", "a": "1.0", "b": "1e3", "c": "0x1F", "d": "True", "e": ".inf", "ok-int": 1.0, "ok-float": 1.5, "ok-bool": true, "ok-quoted": "1.0", "ok-text": "v1.0", "ok-long": json.Number("12345678901234567890"), "p": "1.0"}, true},
		{"w", map[string]any{"sub": "s", "a": "1.0", "b": "1e3", "c": "0x1F", "d": "True", "e": ".inf", "ok-int": "1", "ok-float": "1.5", "ok-bool": "true", "ok-quoted": "1.0", "ok-text": "v1.0", "ok-long": "12345678901234567890", "p": "1.0"}, true},
	} {
		w, err := p.Match("i", tc.claims)
		if got := err == nil && w.Name == tc.workload; got != tc.match {
			t.Errorf("Match(%v) = %v, %v; want a match: %v", tc.claims, w, err, tc.match)
		}
	}
}

// TestLookalikeOwnersWarn: an owner that mixes Latin letters with Cyrillic
// or Greek ones ("team-pаyments" with a Cyrillic а) looks like another
// owner but is a different one, missed by revoke --owner team-payments. A
// team may mean it, so it is a warning naming file, field and line; one
// script, or Latin with scripts that have no Latin look-alikes, draws none.
func TestLookalikeOwnersWarn(t *testing.T) {
	const policy = `version: 1
issuers:
  - {name: i, issuer: "https://x", jwks_url: "https://x/j", audiences: [k], algorithms: [RS256]}
workloads:
  - {name: a, owner: "team-p\u0430yments", match: {issuer: i, subject: a}, grants: [g]}
  - {name: b, owner: команда-платежи, match: {issuer: i, subject: b}, grants: [g]}
  - {name: c, owner: チーム-payments, match: {issuer: i, subject: c}, grants: [g]}
  - {name: d, owner: team-payments, match: {issuer: i, subject: d}, grants: [g]}
grants:
  - {name: g, kind: vault_token, ttl: 5m, vault_token: {policies: [p]}}
exceptions:
  - name: e
    owner: "\u03a4eam-data"
    reason: r
    expires: 2030-01-01
`
	_, got := parseValid(t, policy)
	want := []string{
		`t.yaml: workloads[0].owner: "team-p\u0430yments" mixes Latin and Cyrillic letters (U+0430 а): it looks like an owner it is not, and revoke --owner would tell them apart (line 5)`,
		`t.yaml: exceptions[0].owner: "\u03a4eam-data" mixes Latin and Greek letters (U+03A4 Τ): it looks like an owner it is not, and revoke --owner would tell them apart (line 13)`,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("Warnings() (-want +got):\n%s", diff)
	}
}

// TestSubSecondTokenLifetimeWarns: token lifetimes (exp - iat) are whole
// seconds, so an issuer whose max_token_lifetime is under 1s refuses
// nearly every token (lifetime_too_long) while policy check said nothing.
// It is a warning naming the file, the field and its line (the policy is
// valid: it fails closed); 1s and more, or omitted, draw none.
func TestSubSecondTokenLifetimeWarns(t *testing.T) {
	const policy = `version: 1
issuers:
  - {name: a, issuer: "https://a", jwks_url: "https://a/j", audiences: [k], algorithms: [RS256], max_token_lifetime: 500ms}
  - name: b
    issuer: "https://b"
    jwks_url: "https://b/j"
    audiences: [k]
    algorithms: [RS256]
    max_token_lifetime: 999ms
  - {name: c, issuer: "https://c", jwks_url: "https://c/j", audiences: [k], algorithms: [RS256], max_token_lifetime: 1s}
  - {name: d, issuer: "https://d", jwks_url: "https://d/j", audiences: [k], algorithms: [RS256], max_token_lifetime: 1500ms}
  - {name: e, issuer: "https://e", jwks_url: "https://e/j", audiences: [k], algorithms: [RS256]}
grants:
  - {name: g, kind: vault_token, ttl: 5m, vault_token: {policies: [p]}}
`
	_, got := parseValid(t, policy)
	want := []string{
		`t.yaml: issuers[0].max_token_lifetime: 500ms is under 1s: token lifetimes (exp - iat) are whole seconds, so nearly every token is refused (lifetime_too_long) (line 3)`,
		`t.yaml: issuers[1].max_token_lifetime: 999ms is under 1s: token lifetimes (exp - iat) are whole seconds, so nearly every token is refused (lifetime_too_long) (line 9)`,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("Warnings() (-want +got):\n%s", diff)
	}
}

// TestDuplicateAudiencesWarn: an issuer's audiences entry listed twice is
// harmless to the check (any listed audience admits a token), and policies
// with one loaded before, so it is a warning naming file, entry and line,
// not a problem: another audience may have been meant. Before, nothing
// was said.
func TestDuplicateAudiencesWarn(t *testing.T) {
	const policy = `version: 1
issuers:
  - {name: a, issuer: "https://a", jwks_url: "https://a/j", audiences: [k, l, k], algorithms: [RS256]}
  - name: b
    issuer: "https://b"
    jwks_url: "https://b/j"
    audiences:
      - k
      - K
      - k
      - k
    algorithms: [RS256]
  - {name: c, issuer: "https://c", jwks_url: "https://c/j", audiences: [k], algorithms: [RS256]}
grants:
  - {name: g, kind: vault_token, ttl: 5m, vault_token: {policies: [p]}}
`
	p, got := parseValid(t, policy)
	want := []string{
		`t.yaml: issuers[0].audiences[2]: "k" is already listed at audiences[0]: it changes nothing; if another audience was meant, tokens for it are refused (line 3)`,
		`t.yaml: issuers[1].audiences[2]: "k" is already listed at audiences[0]: it changes nothing; if another audience was meant, tokens for it are refused (line 10)`,
		`t.yaml: issuers[1].audiences[3]: "k" is already listed at audiences[0]: it changes nothing; if another audience was meant, tokens for it are refused (line 11)`,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("Warnings() (-want +got):\n%s", diff)
	}
	is, _ := p.Issuer("a")
	if diff := cmp.Diff([]string{"k", "l", "k"}, is.Audiences); diff != "" {
		t.Errorf("issuer a's audiences (-want +got):\n%s", diff)
	}
}

// TestMergedTypedClaimKeysAsDecoded: a claims key written as a number next
// to a "<<" ({1: a, <<: {1: b}}) and the same key merged are two keys to
// the decoder's merge (the number 1, the string "1"): it sets "1" to a,
// then to b. The checks saw a (a key written next to the merge overrides
// the merged one): a merged value without one was not refused when the
// written value was there, an unquoted 0x1F merged drew no warning, and a
// written key without a value was refused though the decoder reads the
// merged one. They now see what the decoder reads.
func TestMergedTypedClaimKeysAsDecoded(t *testing.T) {
	const policy = `version: 1
issuers:
  - name: i
    issuer: "https://x"
    jwks_url: "https://x/j"
    audiences: [k]
    algorithms: [RS256]
workloads:
  - name: w
    owner: o
    match:
      issuer: i
      subject: s
      claims: {1: a, <<: {1: 0x1F}}
    grants: [g]
  - name: x
    owner: o
    match:
      issuer: i
      subject: s2
      claims: {1: , <<: {1: b}}
    grants: [g]
grants:
  - name: g
    kind: vault_token
    ttl: 5m
    vault_token: {policies: [p]}
`
	p, err := Parse("t.yaml", []byte(policy))
	if err != nil {
		t.Fatalf("Parse() = %v, want a valid policy", err)
	}
	// What the decoder reads.
	for _, tc := range []struct{ workload, want string }{{"w", "0x1F"}, {"x", "b"}} {
		w, ok := p.Workload(tc.workload)
		if got := w.Match.Claims["1"]; !ok || got != tc.want {
			t.Errorf("workload %s: claims[\"1\"] = %q, want %q (what the decoder reads)", tc.workload, got, tc.want)
		}
	}
	got := warningStrings(p)
	want := []string{
		`t.yaml: workloads[0].match.claims["1"]: unquoted 0x1F is compared as the text "0x1F", never as the number 31: quote it to match that text, or write 31 to match a number claim (line 14)`,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Warnings() (-want +got):\n%s", diff)
	}

	// A merged claim without a value leaves the written one: nothing to
	// refuse. The same merged over a string key was, and is, overridden.
	for _, claims := range []string{`{1: a, <<: {1: }}`, `{"1": a, <<: {1: }}`} {
		doc := strings.Replace(policy, `{1: a, <<: {1: 0x1F}}`, claims, 1)
		p, err := Parse("t.yaml", []byte(doc))
		if err != nil {
			t.Fatalf("claims %s: Parse() = %v, want a valid policy", claims, err)
		}
		if w, _ := p.Workload("w"); w.Match.Claims["1"] != "a" {
			t.Errorf("claims %s: claims[\"1\"] = %q, want \"a\"", claims, w.Match.Claims["1"])
		}
	}
}

// TestLongDurationsAndBurstsWarn: a ttl, max_token_lifetime or burst had
// no upper bound and drew no word. Above a bound that still has uses they
// are warnings (docs/SPEC-ADDITIONS.md): a jwt ttl over 24h, a Vault
// credential's over Vault's default max lease TTL (768h), a proxy
// credential's over 768h, a max_token_lifetime over 7 days, a burst over
// 100 and over a minute of requests at the rate. At the bounds, none.
func TestLongDurationsAndBurstsWarn(t *testing.T) {
	const iss = `[{name: i, issuer: "https://issuer.example", jwks_url: "https://issuer.example/jwks", audiences: [k], algorithms: [RS256], max_token_lifetime: %s}]`
	const wl = `[{name: w, owner: team, match: {issuer: i, subject: s}, grants: [g], rate: {per_second: %s, burst: %s}}]`
	tests := []struct {
		name string
		over map[string]string
		want []string
	}{
		{"ok/at-the-bounds", map[string]string{
			"issuers":   fmt.Sprintf(iss, "168h"),
			"workloads": fmt.Sprintf(wl, "1", "100"),
			"grants":    `[{name: g, kind: jwt, ttl: 24h, jwt: {audience: a, transit_key: k}}, {name: h, kind: vault_token, ttl: 768h, vault_token: {policies: [p]}}, {name: d, kind: vault_dynamic, ttl: 768h, vault_dynamic: {path: database/creds/x}}, {name: c, kind: pki, ttl: 768h, pki: {path: pki/issue/r}}, {name: x, kind: proxy, ttl: 768h, proxy: {` + okProxy + `}}]`}, nil},
		{"ok/burst-within-a-minute", map[string]string{"workloads": fmt.Sprintf(wl, "50", "3000")}, nil},
		// One request an hour: Retry-After's cap (an hour) still says when
		// a token is back. Below, it does not: the rate is slower than
		// anything a 429 can tell a client.
		{"ok/one-an-hour", map[string]string{"workloads": fmt.Sprintf(wl, "0.0002777777777777778", "1")}, nil},
		{"warn/slower-than-one-an-hour", map[string]string{"workloads": fmt.Sprintf(wl, "1e-300", "1")}, []string{
			"t.yaml: workloads[0].rate.per_second: 1e-300 is less than one request an hour (1/3600): a 429's Retry-After says at most an hour, and a client that comes back then is refused again until its token is back (line 3)",
		}},
		{"warn/over-the-bounds", map[string]string{
			"issuers":   fmt.Sprintf(iss, "169h"),
			"workloads": fmt.Sprintf(wl, "1", "101"),
			"grants":    `[{name: g, kind: jwt, ttl: 25h, jwt: {audience: a, transit_key: k}}, {name: h, kind: vault_token, ttl: 769h, vault_token: {policies: [p]}}, {name: d, kind: vault_dynamic, ttl: 769h, vault_dynamic: {path: database/creds/x}}, {name: c, kind: pki, ttl: 769h, pki: {path: pki/issue/r}}, {name: x, kind: proxy, ttl: 769h, proxy: {` + okProxy + `}}]`},
			[]string{
				"t.yaml: issuers[0].max_token_lifetime: 169h0m0s is over 7 days: tokens valid that long are accepted, and a stolen one is good for as long (platform tokens live minutes to hours) (line 2)",
				"t.yaml: grants[0].ttl: 25h0m0s is over 24h: a JWT cannot be revoked where it is verified (without introspection), and a transit key the policy stops naming stays in the JWKS this long (with the in-memory store, not across a restart) (line 4)",
				"t.yaml: grants[1].ttl: 769h0m0s is over 768h, Vault's default max lease TTL (32 days): unless the mount's max is raised, Vault cuts the credential short (line 4)",
				"t.yaml: grants[2].ttl: 769h0m0s is over 768h, Vault's default max lease TTL (32 days): unless the mount's max is raised, Vault cuts the credential short (line 4)",
				"t.yaml: grants[3].ttl: 769h0m0s is over 768h, Vault's default max lease TTL (32 days): unless the mount's max is raised, Vault cuts the credential short (line 4)",
				"t.yaml: grants[4].ttl: 769h0m0s is over 768h (32 days): a credential that long-lived ends early only if revoked (line 4)",
				"t.yaml: workloads[0].rate.burst: 101 is more than a minute of requests at per_second 1: a client can spend them all at once (line 3)",
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, got := parseValid(t, doc(tt.over))
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Warnings() (-want +got):\n%s", diff)
			}
		})
	}
}

// TestMergedNullClaimKeySetsNothing: a key without a value (~, null) in a
// merged claims mapping decodes to no string, so the decoder sets nothing
// for it, and a claim "~" written next to the merge keeps its value. The
// checks once read the merged value as the claim's: a valueless one was
// refused ("no value") and an unquoted 0x1F drew a warning, for a claim the
// workload requires as "a". The merged key is a problem for what it is, a
// key the decoder drops (TestMergedNullClaimKeyIsAProblem), and only that:
// its value is not judged as the written claim's.
func TestMergedNullClaimKeySetsNothing(t *testing.T) {
	const policy = `version: 1
issuers:
  - name: i
    issuer: "https://x"
    jwks_url: "https://x/j"
    audiences: [k]
    algorithms: [RS256]
workloads:
  - name: w
    owner: o
    match:
      issuer: i
      subject: s
      claims: CLAIMS
    grants: [g]
grants:
  - name: g
    kind: vault_token
    ttl: 5m
    vault_token: {policies: [p]}
`
	const msg = `key without a value (line 14): the YAML decoder drops the entry, and the claim would not be checked; quote the key ("~", "null") for a claim of that name, or remove the entry`
	checkClaimsCases(t, policy, []claimsCase{
		{claims: `{"~": a, <<: {~: }}`, want: []string{`t.yaml: workloads[0].match.claims["~"]: ` + msg}},
		{claims: `{"~": a, <<: {~: 0x1F}}`, want: []string{`t.yaml: workloads[0].match.claims["~"]: ` + msg}},
		{claims: `{"null": a, <<: [{null: }]}`, want: []string{`t.yaml: workloads[0].match.claims["null"]: ` + msg}},
	})
}

// TestDuplicateAlgorithmsNameTheLine: an algorithms entry listed twice is
// a problem naming the file, the entry and its line, as a token_types
// entry listed twice is; before, it passed unnoticed.
func TestDuplicateAlgorithmsNameTheLine(t *testing.T) {
	const policy = `version: 1
issuers:
  - name: i
    issuer: "https://x"
    jwks_url: "https://x/j"
    audiences: [k]
    algorithms:
      - RS256
      - ES256
      - RS256
  - {name: j, issuer: "https://y", jwks_url: "https://y/j", audiences: [k], algorithms: [EdDSA, Ed25519, EdDSA, HS256, HS256]}
`
	_, err := Parse("t.yaml", []byte(policy))
	want := []string{
		`t.yaml: issuers[0].algorithms[2]: "RS256" is already listed at algorithms[0] (line 10)`,
		`t.yaml: issuers[1].algorithms[2]: "EdDSA" is already listed at algorithms[0] (line 11)`,
		`t.yaml: issuers[1].algorithms[3]: "HS256" is not allowed: HMAC needs a shared secret, so anyone who can verify tokens could forge them (line 11)`,
		`t.yaml: issuers[1].algorithms[4]: "HS256" is already listed at algorithms[3] (line 11)`,
	}
	if diff := cmp.Diff(want, locatedProblemStrings(err)); diff != "" {
		t.Errorf("Parse() problems (-want +got):\n%s", diff)
	}
}

// TestTokenTypesProblemsNameTheLine: a bad token_types entry is named by
// its place in the file and its line, also after an entry without a value
// (which the decoder leaves out of the list, shifting the rest).
func TestTokenTypesProblemsNameTheLine(t *testing.T) {
	const policy = `version: 1
issuers:
  - name: i
    issuer: "https://x"
    jwks_url: "https://x/j"
    audiences: [k]
    algorithms: [RS256]
    token_types:
      - JWT
      - "at+jwt "
      - application/jwt
  - name: j
    issuer: "https://y"
    jwks_url: "https://y/j"
    audiences: [k]
    algorithms: [RS256]
    token_types:
workloads:
  - name: w
    owner: o
    match: {issuer: i, subject: s}
    grants: [g]
grants:
  - {name: g, kind: vault_token, ttl: 5m, vault_token: {policies: [p]}}
`
	_, err := Parse("t.yaml", []byte(policy))
	want := []string{
		`t.yaml: issuers[0].token_types[1]: "at+jwt " starts or ends with a space: typ values are compared without spaces, so it would match none (line 10)`,
		`t.yaml: issuers[0].token_types[2]: "application/jwt" is the same typ as token_types[0] (compared without case, application/ implied) (line 11)`,
		`t.yaml: issuers[1].token_types: no value: list the typ values to accept (e.g. [JWT]; "" for tokens without typ), or remove the field to accept any (line 17)`,
	}
	if diff := cmp.Diff(want, locatedProblemStrings(err)); diff != "" {
		t.Errorf("Parse() problems (-want +got):\n%s", diff)
	}
}

// TestNullListEntriesNameTheLine: an entry written without a value ("- "
// with nothing after it, "~") in a block list is named by its place in the
// file and its line, in every list of the format, and the problems of the
// file are those alone (the decoded lists would be shorter than written,
// so problems about later entries would name the wrong ones).
func TestNullListEntriesNameTheLine(t *testing.T) {
	const policy = `version: 1
issuers:
  - name: i
    issuer: "https://x"
    jwks_url: "https://x/j"
    audiences:
      - k
      -
    algorithms:
      - ~
      - HS256
  -
workloads:
  - name: w
    owner: o
    match: {issuer: i, subject: s}
    grants:
      -
      - nope
grants:
  - name: g
    kind: vault_token
    ttl: 5m
    vault_token:
      policies:
        - p
        -
        - root
`
	_, err := Parse("t.yaml", []byte(policy))
	want := []string{
		`t.yaml: issuers[0].audiences[1]: ` + nullStringEntry + ` (line 8)`,
		`t.yaml: issuers[0].algorithms[0]: ` + nullStringEntry + ` (line 10)`,
		`t.yaml: issuers[1]: ` + nullEntry + ` (line 12)`,
		`t.yaml: workloads[0].grants[0]: ` + nullStringEntry + ` (line 18)`,
		`t.yaml: grants[0].vault_token.policies[1]: ` + nullStringEntry + ` (line 27)`,
	}
	if diff := cmp.Diff(want, locatedProblemStrings(err)); diff != "" {
		t.Errorf("Parse() problems (-want +got):\n%s", diff)
	}
}

// TestTokenTypesDecoded: the field reaches the issuer as written, absent
// stays nil (any typ).
func TestTokenTypesDecoded(t *testing.T) {
	p, err := Parse("t.yaml", []byte(doc(map[string]string{
		"issuers": `[{name: i, issuer: "https://x", jwks_url: "https://x/j", audiences: [k], algorithms: [RS256], token_types: [at+jwt, ""]},
  {name: j, issuer: "https://y", jwks_url: "https://y/j", audiences: [k], algorithms: [RS256]}]`,
	})))
	if err != nil {
		t.Fatal(err)
	}
	got := [][]string{p.Issuers()[0].TokenTypes, p.Issuers()[1].TokenTypes}
	if diff := cmp.Diff([][]string{{"at+jwt", ""}, nil}, got); diff != "" {
		t.Errorf("TokenTypes (-want +got):\n%s", diff)
	}
}

// TestAcceptsTokenType: the offline form of broker/authn's typ check
// (policy explain --unverified uses it).
func TestAcceptsTokenType(t *testing.T) {
	for _, tt := range []struct {
		types   []string
		present bool
		typ     string
		want    bool
	}{
		{nil, false, "", true},
		{nil, true, "anything", true},
		{[]string{"JWT"}, true, "JWT", true},
		{[]string{"JWT"}, true, "jwt", true},
		{[]string{"JWT"}, true, "application/JWT", true},
		{[]string{"application/jwt"}, true, "Jwt", true},
		{[]string{"JWT"}, true, "at+jwt", false},
		{[]string{"JWT"}, true, "text/jwt", false},
		{[]string{"JWT"}, false, "", false},
		{[]string{"JWT"}, true, "", false},
		{[]string{"JWT", ""}, false, "", true},
		{[]string{""}, true, "", false},
		{[]string{""}, true, "application/", false},
		{[]string{"jwk-set+jwt"}, true, "jw\u212a-set+jwt", false},
	} {
		is := &Issuer{TokenTypes: tt.types}
		if got := is.AcceptsTokenType(tt.present, tt.typ); got != tt.want {
			t.Errorf("token_types %q: AcceptsTokenType(%v, %q) = %v, want %v", tt.types, tt.present, tt.typ, got, tt.want)
		}
	}
}

// TestCheckTypHeader: the whole typ rule broker/authn enforces and policy
// explain --unverified applies: absent token_types admit any typ of any
// JSON type; otherwise a typ that is not a string (null included) is
// ErrTypNotString, and one not admitted ErrTypNotAccepted.
func TestCheckTypHeader(t *testing.T) {
	for _, tt := range []struct {
		types   []string
		present bool
		typ     any
		want    error
	}{
		{nil, true, 7.0, nil},
		{nil, true, nil, nil},
		{nil, false, nil, nil},
		{[]string{"JWT", ""}, true, nil, ErrTypNotString},
		{[]string{"JWT"}, true, []any{"JWT"}, ErrTypNotString},
		{[]string{"JWT"}, true, "jwt", nil},
		{[]string{"JWT"}, true, "at+jwt", ErrTypNotAccepted},
		{[]string{"JWT"}, false, nil, ErrTypNotAccepted},
		{[]string{"JWT", ""}, false, nil, nil},
		{[]string{"JWT", ""}, true, "", ErrTypNotAccepted},
	} {
		is := &Issuer{TokenTypes: tt.types}
		if got := is.CheckTypHeader(tt.present, tt.typ); got != tt.want {
			t.Errorf("token_types %q: CheckTypHeader(%v, %#v) = %v, want %v", tt.types, tt.present, tt.typ, got, tt.want)
		}
	}
}

// TestListProblemPaths: CheckAlgorithms and CheckTokenTypes give one type
// of problem, whose Path names the entry (field[i]) or, for the list's own
// problem, the field: policy validation and broker/authn.New both name
// fields by it.
func TestListProblemPaths(t *testing.T) {
	var got []string
	for _, p := range CheckAlgorithms(nil) {
		got = append(got, p.Path("algorithms")+": "+p.Message)
	}
	for _, p := range CheckAlgorithms([]string{"RS256", "HS256", "RS256"}) {
		got = append(got, p.Path("algorithms")+": "+p.Message)
	}
	for _, p := range CheckTokenTypes([]string{}) {
		got = append(got, p.Path("token_types")+": "+p.Message)
	}
	for _, p := range CheckTokenTypes([]string{"JWT", "jwt"}) {
		got = append(got, p.Path("token_types")+": "+p.Message)
	}
	want := []string{
		"algorithms: required: at least one of " + strings.Join(SupportedAlgorithms(), ", "),
		`algorithms[1]: "HS256" is not allowed: HMAC needs a shared secret, so anyone who can verify tokens could forge them`,
		`algorithms[2]: "RS256" is already listed at algorithms[0]`,
		`token_types: empty: every token would be refused; list the typ values to accept (e.g. [JWT]; "" for tokens without typ), or remove the field to accept any`,
		`token_types[1]: "jwt" is the same typ as token_types[0] (compared without case, application/ implied)`,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("problems (-want +got):\n%s", diff)
	}
}

// TestLongValuesAreCutInProblems: a problem names the value it refuses,
// but a long one (a key or a document pasted by mistake) is cut to its
// first yamlcheck.MaxQuoted bytes and its length, not echoed whole: in a
// token_types or algorithms entry, a name, a duration, a value of the
// wrong type (yamlcheck).
func TestLongValuesAreCutInProblems(t *testing.T) {
	long := strings.Repeat("a", 5000)
	for _, tc := range []struct{ name, policy string }{
		{"token_types", doc(map[string]string{"issuers": `[{name: i, issuer: "https://x", jwks_url: "https://x/j", audiences: [k], algorithms: [RS256], token_types: [` + long + `]}]`})},
		{"algorithms", doc(map[string]string{"issuers": `[{name: i, issuer: "https://x", jwks_url: "https://x/j", audiences: [k], algorithms: [` + long + `]}]`})},
		{"name", doc(map[string]string{"issuers": `[{name: ` + long + `, issuer: "https://x", jwks_url: "https://x/j", audiences: [k], algorithms: [RS256]}]`})},
		{"duration", doc(map[string]string{"issuers": `[{name: i, issuer: "https://x", jwks_url: "https://x/j", audiences: [k], algorithms: [RS256], max_token_lifetime: ` + long + `}]`})},
		{"not-a-list", doc(map[string]string{"issuers": `[{name: i, issuer: "https://x", jwks_url: "https://x/j", audiences: ` + long + `, algorithms: [RS256]}]`})},
	} {
		_, err := Parse("t.yaml", []byte(tc.policy))
		if err == nil {
			t.Errorf("%s: Parse() = nil, want a problem", tc.name)
			continue
		}
		msg := err.Error()
		if strings.Contains(msg, strings.Repeat("a", yamlcheck.MaxQuoted+1)) || !strings.Contains(msg, `"... (5000 bytes)`) {
			t.Errorf("%s: Parse() = %.300s..., want the value cut to %d bytes and its length", tc.name, msg, yamlcheck.MaxQuoted)
		}
	}
}

// claimsCase is a policy with its CLAIMS line replaced by claims: the
// problems Parse gives, each as printed (nil: the policy is valid), and
// for a valid one, the claims workload w requires.
type claimsCase struct {
	claims string
	want   []string
	claim  map[string]string
}

// checkClaimsCases checks each case against policy (see claimsCase).
func checkClaimsCases(t *testing.T, policy string, cases []claimsCase) {
	t.Helper()
	for _, tc := range cases {
		p, err := Parse("t.yaml", []byte(strings.Replace(policy, "CLAIMS", tc.claims, 1)))
		if tc.want == nil {
			if err != nil {
				t.Errorf("%s: Parse() = %v, want a valid policy", tc.claims, err)
				continue
			}
			w, _ := p.Workload("w")
			if diff := cmp.Diff(tc.claim, w.Match.Claims); diff != "" {
				t.Errorf("%s: claims (-want +got):\n%s", tc.claims, diff)
			}
			continue
		}
		if diff := cmp.Diff(tc.want, locatedProblemStrings(err)); diff != "" {
			t.Errorf("%s: Parse() problems (-want +got):\n%s", tc.claims, diff)
		}
	}
}

// TestNullClaimKeyIsAProblem: a claims or claim_patterns key written
// without a value (~, null, "? " with nothing after it) decodes to no
// string, so the decoder drops the entry and the match would not check the
// claim at all. It is a problem naming the entry and its line, whatever its
// value; before, "~: b" was dropped without a word (the workload admitted
// tokens without that claim) and "~: " was refused as a claim value to
// write as "". A quoted "~" is a claim of that name.
func TestNullClaimKeyIsAProblem(t *testing.T) {
	const policy = `version: 1
issuers:
  - {name: i, issuer: "https://x", jwks_url: "https://x/j", audiences: [k], algorithms: [RS256]}
workloads:
  - name: w
    owner: o
    match:
      issuer: i
      subject: s
      CLAIMS
    grants: [g]
grants:
  - {name: g, kind: vault_token, ttl: 5m, vault_token: {policies: [p]}}
`
	const msg = `key without a value (line 10): the YAML decoder drops the entry, and the claim would not be checked; quote the key ("~", "null") for a claim of that name, or remove the entry`
	checkClaimsCases(t, policy, []claimsCase{
		{claims: `claims: {ns: a, ~: b}`, want: []string{`t.yaml: workloads[0].match.claims["~"]: ` + msg}},
		{claims: `claims: {ns: a, ~: }`, want: []string{`t.yaml: workloads[0].match.claims["~"]: ` + msg}},
		{claims: `claims: {null: b}`, want: []string{`t.yaml: workloads[0].match.claims["null"]: ` + msg}},
		{claims: `claim_patterns: {ns: a, ? : "b.*"}`, want: []string{`t.yaml: workloads[0].match.claim_patterns[""]: ` + msg}},
		{claims: `claims: {"~": b, "null": c}`, claim: map[string]string{"~": "b", "null": "c"}},
		// A claim "~" (or "null") merged in is another key: it does not
		// hide the null key written beside it, which the decoder drops.
		{claims: `claims: {ns: a, ~: b, <<: {"~": c}}`, want: []string{`t.yaml: workloads[0].match.claims["~"]: ` + msg}},
		{claims: `claims: {ns: a, null: b, <<: [{"null": c}]}`, want: []string{`t.yaml: workloads[0].match.claims["null"]: ` + msg}},
	})
}

// TestMergedNullClaimKeyIsAProblem: a claims or claim_patterns key without a
// value (~, null) in a mapping merged into the match's claims ("<<") is
// dropped by the decoder like one written in place, so the match would not
// check that claim: it is the same problem, at the merged key's line. On
// the old load.go "{ns: a, <<: {~: b}}" loaded as a workload requiring only
// ns.
func TestMergedNullClaimKeyIsAProblem(t *testing.T) {
	const policy = `version: 1
issuers:
  - {name: i, issuer: "https://x", jwks_url: "https://x/j", audiences: [k], algorithms: [RS256]}
workloads:
  - name: w0
    owner: o
    match: {issuer: i, subject: s0, claims: &c {team: a, ns: b}}
    grants: [g]
  - name: w
    owner: o
    match:
      issuer: i
      subject: s
      CLAIMS
    grants: [g]
grants:
  - {name: g, kind: vault_token, ttl: 5m, vault_token: {policies: [p]}}
`
	msg := func(line int) string {
		return fmt.Sprintf(`key without a value (line %d): the YAML decoder drops the entry, and the claim would not be checked; quote the key ("~", "null") for a claim of that name, or remove the entry`, line)
	}
	checkClaimsCases(t, policy, []claimsCase{
		{claims: `claims: {ns: a, <<: {~: b}}`, want: []string{`t.yaml: workloads[1].match.claims["~"]: ` + msg(14)}},
		{claims: `claims: {ns: a, <<: [*c, {null: b}]}`, want: []string{`t.yaml: workloads[1].match.claims["null"]: ` + msg(14)}},
		{claims: `claim_patterns: {<<: {x: "a.*", <<: {~: "b.*"}}}`, want: []string{`t.yaml: workloads[1].match.claim_patterns["~"]: ` + msg(14)}},
		{claims: "claims:\n        <<: {~: }\n        \"~\": a", want: []string{`t.yaml: workloads[1].match.claims["~"]: ` + msg(15)}},
		// A quoted key is a claim of that name, merged or not.
		{claims: `claims: {<<: [*c, {"~": x}]}`, claim: map[string]string{"team": "a", "ns": "b", "~": "x"}},
	})
}

// TestNullFieldKeyIsAProblem: a key written without a value (~, null,
// "? " with nothing after it) in a mapping of fixed fields (the top level,
// an issuer, a workload, its match, a grant and its blocks), written or
// merged, is a problem naming the file, the field and the line: the
// decoder names no field from it and drops the entry, value and all, even
// with unknown fields refused. Before, each of these policies loaded
// without a word.
func TestNullFieldKeyIsAProblem(t *testing.T) {
	const msg = "key without a value: the YAML decoder drops the entry, so it sets no field; write the field's name, or remove the entry"
	issuer := `[{name: i, issuer: "https://issuer.example", jwks_url: "https://issuer.example/jwks", audiences: [keytrail], algorithms: [RS256]%s}]`
	workload := `[{name: w, owner: team, match: {issuer: i, subject: s%s}, grants: [g]%s}]`
	grant := `[{name: g, kind: vault_token, ttl: 5m, vault_token: {policies: [p]%s}%s}]`
	for _, tc := range []struct {
		name string
		over map[string]string
		top  string // appended to the document
		want string
	}{
		{name: "top", top: "~: 1\n", want: "t.yaml: ~: " + msg + " (line 7)"},
		{name: "top-null", top: "null:\n  grants: []\n", want: "t.yaml: null: " + msg + " (line 7)"},
		{name: "top-empty", top: "? \n", want: "t.yaml: " + msg + " (line 7)"},
		{name: "issuer", over: map[string]string{"issuers": fmt.Sprintf(issuer, ", ~: 1h")}, want: "t.yaml: issuers[0].~: " + msg + " (line 2)"},
		{name: "workload", over: map[string]string{"workloads": fmt.Sprintf(workload, "", ", null: [g2]")}, want: "t.yaml: workloads[0].null: " + msg + " (line 3)"},
		{name: "match", over: map[string]string{"workloads": fmt.Sprintf(workload, ", ~: s2", "")}, want: "t.yaml: workloads[0].match.~: " + msg + " (line 3)"},
		{name: "grant", over: map[string]string{"grants": fmt.Sprintf(grant, "", ", ~: 1h")}, want: "t.yaml: grants[0].~: " + msg + " (line 4)"},
		{name: "grant-block", over: map[string]string{"grants": fmt.Sprintf(grant, ", ~: 1", "")}, want: "t.yaml: grants[0].vault_token.~: " + msg + " (line 4)"},
		{name: "merged", over: map[string]string{"grants": fmt.Sprintf(grant, "", ", <<: {~: 10m}")}, want: "t.yaml: grants[0].~: " + msg + " (line 4)"},
	} {
		p, err := Parse("t.yaml", []byte(doc(tc.over)+tc.top))
		if diff := cmp.Diff([]string{tc.want}, locatedProblemStrings(err)); diff != "" || p != nil {
			t.Errorf("%s: Parse() = %v, problems (-want +got):\n%s", tc.name, p, diff)
		}
	}
	// Quoted, "~" is a key like any other: an unknown field.
	_, err := Parse("t.yaml", []byte(doc(nil)+`"~": 1`+"\n"))
	if diff := cmp.Diff([]string{`t.yaml: ~: unknown field (line 7)`}, locatedProblemStrings(err)); diff != "" {
		t.Errorf(`"~": problems (-want +got):\n%s`, diff)
	}
}

// TestAcceptsTokenTypeAllocatesNothing: the typ check runs on every token,
// verified-token cache hits included; it compares as TokenTypeKey does
// without building the keys (it built one per entry per token).
func TestAcceptsTokenTypeAllocatesNothing(t *testing.T) {
	is := &Issuer{TokenTypes: []string{"at+jwt", "application/JOSE", "", "JWT"}}
	for _, typ := range []string{"jwt", "Application/JWT", "jose", "logout+jwt"} {
		if n := testing.AllocsPerRun(100, func() { is.AcceptsTokenType(true, typ) }); n != 0 {
			t.Errorf("AcceptsTokenType(%q) allocates %v times per call, want 0", typ, n)
		}
	}
	// And it decides as TokenTypeKey compares.
	vals := []string{"", "jwt", "JWT", "application/jwt", "Application/JWT", "application/", "text/jwt", "at+jwt", "jw\u212a", "jwk", "application/application/jwt", "a/b/c", "/jwt"}
	for _, a := range vals {
		for _, b := range vals {
			if a == NoTokenType || b == "" {
				continue
			}
			is := &Issuer{TokenTypes: []string{a}}
			if got, want := is.AcceptsTokenType(true, b), TokenTypeKey(a) == TokenTypeKey(b); got != want {
				t.Errorf("token_types [%q]: AcceptsTokenType(%q) = %v, want %v (TokenTypeKey)", a, b, got, want)
			}
		}
	}
}

// TestAliasFieldKeys: a field name written as an alias ("*k : 5m", k
// anchoring "ttl") is the field its anchor names, as the decoder reads it:
// the policy loads (yamlcheck named it "grants[1].k: unknown field"), and
// a match's claims written so are checked as claims written plainly: a
// claim key without a value there is refused, not dropped with the claim.
func TestAliasFieldKeys(t *testing.T) {
	grants := `[{name: g, kind: vault_token, &k ttl: 5m, vault_token: {policies: [p]}}, {name: g2, kind: vault_token, *k : 7m, vault_token: {policies: [p]}}]`
	p, _ := parseValid(t, doc(map[string]string{"grants": grants}))
	if g, ok := p.Grant("g2"); !ok || g.TTLDuration() != 7*time.Minute {
		t.Errorf("grant g2 = %+v, %v; want ttl 7m", g, ok)
	}
	workloads := `[{name: w, owner: &c claims, match: {issuer: i, subject: s, *c : {~: x, ns: a}}, grants: [g]}]`
	_, err := Parse("t.yaml", []byte(doc(map[string]string{"workloads": workloads})))
	want := []string{`t.yaml: workloads[0].match.claims["~"]: key without a value (line 3): the YAML decoder drops the entry, and the claim would not be checked; quote the key ("~", "null") for a claim of that name, or remove the entry`}
	if diff := cmp.Diff(want, locatedProblemStrings(err)); diff != "" {
		t.Errorf("Parse() problems (-want +got):\n%s", diff)
	}
}
