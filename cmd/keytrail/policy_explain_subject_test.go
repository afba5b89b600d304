package main

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/keytrail/keytrail/broker/authn/authntest"
	"github.com/keytrail/keytrail/policies"
)

// TestPolicyExplainUnverifiedBadSubject: the server refuses a token whose
// sub holds a control, format or separator character (bad_subject, broker/authn), and
// --unverified, which skips only what needs the key or the clock, must
// decide as it does. It explained such a token as "grant g: ALLOWED",
// exit 0, for a workload whose subject_pattern matched it.
func TestPolicyExplainUnverifiedBadSubject(t *testing.T) {
	iss, dir, pol := explainMatchPolicy(t, `subject_pattern: "s.*"`)
	now := time.Now()
	for _, tt := range []struct {
		name, sub string
		ok        bool
	}{
		{name: "ok-plain", sub: "s:payments:api", ok: true},
		{name: "ok-non-ascii", sub: "s:Zoë Ångström", ok: true},
		{name: "escape", sub: "s\x1b[2J"},
		{name: "bidi-override", sub: "s:\u202eipa"},
		{name: "zero-width", sub: "s:a\u200bpi"},
		// ZWNJ and ZWJ are allowed (Persian and Indic words, emoji
		// sequences), shown quoted; every other format character is not.
		{name: "ok-zwnj", sub: "s:می\u200cخواهم", ok: true},
		{name: "ok-zwj", sub: "s:👩\u200d💻", ok: true},
		{name: "word-joiner", sub: "s:a\u2060pi"},
		{name: "zwj-with-bidi", sub: "s:\u200d\u202eipa"},
	} {
		tok, err := iss.Sign(jwt.MapClaims{"iss": iss.URL, "aud": "keytrail", "sub": tt.sub, "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()})
		if err != nil {
			t.Fatal(err)
		}
		tf := writeFile(t, dir, tt.name, tok)
		explainBothWays(t, pol, tf, func(mode []string, out string, err error) {
			want := "grant g: ALLOWED"
			if !tt.ok {
				want = "bad_subject"
			}
			if (err == nil) != tt.ok || !strings.Contains(out, want) {
				t.Errorf("%s: explain %v = %v, want ok %v and output with %q:\n%s", tt.name, mode, err, tt.ok, want, out)
			}
			if tt.ok && !strings.Contains(out, "subject: "+policies.Printable(tt.sub)+"\n") {
				t.Errorf("%s: explain %v does not show the subject as %s:\n%s", tt.name, mode, policies.Printable(tt.sub), out)
			}
			if !tt.ok && (strings.Contains(out, "ALLOWED") || strings.Contains(out, tt.sub)) {
				t.Errorf("%s: explain %v says ALLOWED or prints the sub as it is for a token the server refuses:\n%s", tt.name, mode, out)
			}
		})
	}
}

// TestPolicyExplainUnverifiedSubjectShape: the server refuses a token with
// no sub, or an empty one (missing_subject), and one whose sub or jti is
// not a string (malformed), whatever matches it; --unverified skipped both
// checks and explained such a token as "grant g: ALLOWED", exit 0, for a
// workload whose subject_pattern is ".*".
func TestPolicyExplainUnverifiedSubjectShape(t *testing.T) {
	iss, dir, pol := explainMatchPolicy(t, `subject_pattern: ".*", claims: {repo: r}`)
	now := time.Now()
	for _, tt := range []struct {
		name   string
		claims jwt.MapClaims
		want   string
	}{
		{name: "ok", claims: jwt.MapClaims{"sub": "s"}, want: "grant g: ALLOWED"},
		{name: "no-sub", claims: jwt.MapClaims{}, want: "missing_subject"},
		{name: "empty-sub", claims: jwt.MapClaims{"sub": ""}, want: "missing_subject"},
		{name: "number-sub", claims: jwt.MapClaims{"sub": 42}, want: "malformed"},
		{name: "null-sub", claims: jwt.MapClaims{"sub": nil}, want: "malformed"},
		{name: "array-sub", claims: jwt.MapClaims{"sub": []string{"s"}}, want: "malformed"},
		{name: "number-jti", claims: jwt.MapClaims{"sub": "s", "jti": 7}, want: "malformed"},
		{name: "number-jti-no-sub", claims: jwt.MapClaims{"jti": 7}, want: "malformed"},
	} {
		claims := jwt.MapClaims{"iss": iss.URL, "aud": "keytrail", "repo": "r", "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}
		for k, v := range tt.claims {
			claims[k] = v
		}
		explainShapeCase(t, iss, dir, pol, tt.name, claims, tt.name == "ok", tt.want)
	}
}

// TestPolicyExplainUnverifiedTimeAndAudShape: the server refuses a token
// whose exp, iat or nbf is not a number in [0, 9999-12-31] or whose aud is
// neither a string nor an array of strings (malformed), and one with no exp
// (missing_exp), before it looks at the sub (authn's checkClaimShapes);
// --unverified skipped these checks and explained such a token as "grant g:
// ALLOWED", exit 0.
func TestPolicyExplainUnverifiedTimeAndAudShape(t *testing.T) {
	iss, dir, pol := explainMatchPolicy(t, `subject_pattern: ".*", claims: {repo: r}`)
	now := time.Now()
	type absent struct{}
	for _, tt := range []struct {
		name   string
		claims jwt.MapClaims
		want   string
	}{
		{name: "ok", claims: jwt.MapClaims{}, want: "grant g: ALLOWED"},
		{name: "ok-aud-array", claims: jwt.MapClaims{"aud": []string{"x", "keytrail"}}, want: "grant g: ALLOWED"},
		{name: "no-exp", claims: jwt.MapClaims{"exp": absent{}}, want: "missing_exp"},
		{name: "no-exp-no-sub", claims: jwt.MapClaims{"exp": absent{}, "sub": absent{}}, want: "missing_exp"},
		{name: "string-exp", claims: jwt.MapClaims{"exp": strconv.FormatInt(now.Add(time.Hour).Unix(), 10)}, want: "malformed"},
		{name: "null-exp", claims: jwt.MapClaims{"exp": nil}, want: "malformed"},
		{name: "negative-exp", claims: jwt.MapClaims{"exp": -1}, want: "malformed"},
		{name: "huge-exp", claims: jwt.MapClaims{"exp": int64(253402300800)}, want: "malformed"},
		{name: "string-iat", claims: jwt.MapClaims{"iat": "now"}, want: "malformed"},
		{name: "bool-nbf", claims: jwt.MapClaims{"nbf": true}, want: "malformed"},
		{name: "number-aud", claims: jwt.MapClaims{"aud": 1}, want: "malformed"},
		{name: "aud-array-number", claims: jwt.MapClaims{"aud": []any{"keytrail", 2}}, want: "malformed"},
		{name: "string-iat-no-sub", claims: jwt.MapClaims{"iat": "now", "sub": absent{}}, want: "malformed"},
		{name: "no-exp-number-sub", claims: jwt.MapClaims{"exp": absent{}, "sub": 42}, want: "malformed"},
	} {
		claims := jwt.MapClaims{"iss": iss.URL, "aud": "keytrail", "sub": "s", "repo": "r", "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}
		for k, v := range tt.claims {
			if _, del := v.(absent); del {
				delete(claims, k)
			} else {
				claims[k] = v
			}
		}
		explainShapeCase(t, iss, dir, pol, tt.name, claims, strings.HasPrefix(tt.name, "ok"), tt.want)
	}
}

// explainMatchPolicy starts an ES256 issuer i and writes, in a new temp dir,
// a policy whose workload w matches {issuer: i, <match>} and holds grant g;
// it returns the issuer, the dir and the policy's path.
func explainMatchPolicy(t *testing.T, match string) (*authntest.Issuer, string, string) {
	t.Helper()
	iss := explainIssuer(t, "ES256")
	dir := t.TempDir()
	pol := writeFile(t, dir, "p.yaml", `version: 1
issuers:
  - {name: i, issuer: "`+iss.URL+`", jwks_url: "`+iss.URL+authntest.JWKSPath+`", audiences: [keytrail], algorithms: [ES256]}
workloads:
  - {name: w, owner: team, match: {issuer: i, `+match+`}, grants: [g]}
grants:
  - {name: g, kind: vault_token, ttl: 5m, vault_token: {policies: [p]}}
`)
	return iss, dir, pol
}

// explainShapeCase signs claims, writes the token as name in dir and
// explains it both ways: ok wants exit 0, otherwise an error and no
// ALLOWED; either way the output must contain want.
func explainShapeCase(t *testing.T, iss *authntest.Issuer, dir, pol, name string, claims jwt.MapClaims, ok bool, want string) {
	t.Helper()
	tok, err := iss.Sign(claims)
	if err != nil {
		t.Fatal(err)
	}
	tf := writeFile(t, dir, name, tok)
	explainBothWays(t, pol, tf, func(mode []string, out string, err error) {
		if (err == nil) != ok || !strings.Contains(out, want) {
			t.Errorf("%s: explain %v = %v, want ok %v and output with %q:\n%s", name, mode, err, ok, want, out)
		}
		if !ok && strings.Contains(out, "ALLOWED") {
			t.Errorf("%s: explain %v says ALLOWED for a token the server refuses:\n%s", name, mode, out)
		}
	})
}
