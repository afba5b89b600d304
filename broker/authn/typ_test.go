package authn_test

import (
	"context"
	"testing"

	"github.com/golang-jwt/jwt/v5"

	"github.com/keytrail/keytrail/broker/authn"
	"github.com/keytrail/keytrail/broker/authn/authntest"
	"github.com/keytrail/keytrail/policies"
)

// TestTokenTypes: an issuer's token_types admits only tokens whose typ
// header is listed (RFC 8725 §3.11), compared without case and with
// "application/" implied (RFC 7515 §4.1.9); "" admits a token without typ.
// The check runs before any key is fetched, and without token_types any
// typ is accepted, as before.
func TestTokenTypes(t *testing.T) {
	absent := struct{}{} // typ header left out
	cases := []struct {
		name   string
		types  []string // the es issuer's token_types; nil = any
		typ    any      // the token's typ header; absent for none
		reason string   // "" for ok
	}{
		{name: "ok/any-typ-when-unset", typ: "at+jwt"},
		{name: "ok/no-typ-when-unset", typ: absent},
		{name: "ok/number-typ-when-unset", typ: 7},
		{name: "ok/exact", types: []string{"JWT"}, typ: "JWT"},
		{name: "ok/case", types: []string{"JWT"}, typ: "jwt"},
		{name: "ok/prefix-in-token", types: []string{"JWT"}, typ: "application/jwt"},
		{name: "ok/prefix-in-policy", types: []string{"application/at+jwt"}, typ: "AT+JWT"},
		{name: "ok/prefix-both-case", types: []string{"Application/JWT"}, typ: "APPLICATION/jwt"},
		{name: "ok/second-entry", types: []string{"JWT", "JOSE"}, typ: "JOSE"},
		{name: "ok/absent-allowed", types: []string{"JWT", ""}, typ: absent},
		{name: "ok/only-absent-allowed", types: []string{""}, typ: absent},
		{name: "fail/access-token-for-id-token-issuer", types: []string{"JWT"}, typ: "at+jwt", reason: "bad_token_type"},
		{name: "fail/id-token-for-access-token-issuer", types: []string{"at+jwt"}, typ: "JWT", reason: "bad_token_type"},
		{name: "fail/logout-token", types: []string{"JWT", ""}, typ: "logout+jwt", reason: "bad_token_type"},
		{name: "fail/absent-not-allowed", types: []string{"JWT"}, typ: absent, reason: "bad_token_type"},
		{name: "fail/empty-typ-is-not-absent", types: []string{"JWT", ""}, typ: "", reason: "bad_token_type"},
		{name: "fail/prefix-only", types: []string{"JWT"}, typ: "application/", reason: "bad_token_type"},
		{name: "fail/other-top-level-type", types: []string{"JWT"}, typ: "text/jwt", reason: "bad_token_type"},
		{name: "fail/suffix-is-not-the-type", types: []string{"JWT"}, typ: "at+jwt", reason: "bad_token_type"},
		{name: "fail/spaces", types: []string{"JWT"}, typ: " JWT", reason: "bad_token_type"},
		{name: "fail/parameters", types: []string{"JWT"}, typ: "JWT; charset=utf-8", reason: "bad_token_type"},
		{name: "fail/no-absent-keyword-match-for-empty-policy-string", types: []string{""}, typ: "JWT", reason: "bad_token_type"},
		{name: "fail/unicode-case-folding", types: []string{"jwk-set+jwt"}, typ: "jw\u212a-set+jwt", reason: "bad_token_type"}, // Kelvin sign
		{name: "ok/jwk-set", types: []string{"jwk-set+jwt"}, typ: "JWK-SET+JWT"},
		{name: "fail/number", types: []string{"JWT"}, typ: 7, reason: "malformed"},
		{name: "fail/null", types: []string{"JWT", ""}, typ: nil, reason: "malformed"},
		{name: "fail/array", types: []string{"JWT"}, typ: []any{"JWT"}, reason: "malformed"},
	}
	f := newFixture(t, nil)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// A verifier of its own (no keys, an empty cache) whose es
			// issuer has the case's token_types.
			opts := f.opts
			opts.Issuers = append(opts.Issuers[:0:0], opts.Issuers...)
			opts.Issuers[0].TokenTypes = tc.types
			v, err := authn.New(context.Background(), opts)
			if err != nil {
				t.Fatal(err)
			}
			fetches := f.es.JWKSFetches()
			var tok string
			switch tc.typ.(type) {
			case struct{}:
				tok = sign(t, f.es.Key(), map[string]any{"typ": nil}, claims(f.es)) // nil removes it
			case nil:
				tok = signNullTyp(t, f.es.Key(), claims(f.es))
			default:
				tok = sign(t, f.es.Key(), map[string]any{"typ": tc.typ}, claims(f.es))
			}
			for _, pass := range []string{"first", "again (cache)"} {
				id, err := v.Authenticate(context.Background(), tok)
				if tc.reason == "" {
					if err != nil {
						t.Fatalf("%s: Authenticate() = %v, want ok", pass, err)
					}
					if id.IssuerName != "es" {
						t.Errorf("%s: IssuerName = %q, want es", pass, id.IssuerName)
					}
					continue
				}
				if id != nil {
					t.Errorf("%s: Authenticate() = %+v, want nil", pass, id)
				}
				checkRejection(t, err, tok, tc.reason)
			}
			if n := f.es.JWKSFetches() - fetches; tc.reason != "" && n != 0 {
				t.Errorf("JWKS fetches = %d, want 0: the typ is refused before any key is looked up", n)
			}
		})
	}
}

// TestTokenTypesNarrowedByReload: a token accepted (and remembered by the
// verified-token cache) while its issuer accepted any typ is refused once a
// policy reload narrows token_types, the reloaded verifier starting from the
// old one's keys; and the old verifier is unchanged.
func TestTokenTypesNarrowedByReload(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	tok := sign(t, f.es.Key(), map[string]any{"typ": "at+jwt"}, claims(f.es))
	for range 2 { // verified, then a cache hit
		if _, err := f.v.Authenticate(ctx, tok); err != nil {
			t.Fatalf("Authenticate() before the reload = %v, want ok", err)
		}
	}
	opts := f.opts
	opts.Issuers = append(opts.Issuers[:0:0], opts.Issuers...)
	opts.Issuers[0].TokenTypes = []string{"JWT"}
	opts.Previous = f.v
	v2, err := authn.New(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	_, err = v2.Authenticate(ctx, tok)
	checkRejection(t, err, tok, "bad_token_type")
	// An identity token of the same issuer still passes, on the keys kept
	// from before the reload.
	if _, err := v2.Authenticate(ctx, sign(t, f.es.Key(), nil, claims(f.es))); err != nil {
		t.Errorf("Authenticate(typ JWT) after the reload = %v, want ok", err)
	}
	if n := f.es.JWKSFetches(); n != 1 {
		t.Errorf("JWKS fetches = %d, want 1 (the reload keeps the keys)", n)
	}
	if _, err := f.v.Authenticate(ctx, tok); err != nil {
		t.Errorf("old verifier: Authenticate() = %v, want ok (its policy allowed any typ)", err)
	}
}

// signNullTyp signs c with k, its header's typ a JSON null.
func signNullTyp(tb testing.TB, k *authntest.Key, c jwt.MapClaims) string {
	tb.Helper()
	tok := jwt.NewWithClaims(jwt.GetSigningMethod(k.Alg), c)
	tok.Header["kid"] = k.KID
	tok.Header["typ"] = nil
	s, err := tok.SignedString(k.Signer)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// TestTokenTypesValidatedByNew: New, for direct Options users, refuses the
// token_types lists a policy file may not hold, by the same rule
// (policies.CheckTokenTypes), and accepts those it may: each list below is
// tried both ways. Before, New had a rule of its own and accepted a/b/c,
// "jwt\x00", a non-ASCII entry and duplicates, which policy validation
// refuses.
func TestTokenTypesValidatedByNew(t *testing.T) {
	for _, tt := range []struct {
		types []string
		ok    bool
		want  string // in New's error
	}{
		{types: []string{"JWT", "at+jwt", "application/jwk-set+jwt", ""}, ok: true},
		{types: []string{""}, ok: true},
		{types: []string{}, want: "token_types: empty"},
		{types: []string{"JWT", " at+jwt"}, want: "token_types[1]:"},
		{types: []string{"application/"}, want: "token_types[0]:"},
		{types: []string{"JWT; a=b"}, want: "token_types[0]:"},
		{types: []string{"/jwt"}, want: "token_types[0]:"},
		{types: []string{"a/b/c"}, want: `token_types[0]: "a/b/c" is not a media type`},
		{types: []string{"jwt\x00"}, want: "token_types[0]:"},
		{types: []string{"jw\u212a"}, want: "token_types[0]:"},
		{types: []string{"JWT", "application/jwt"}, want: "token_types[1]: \"application/jwt\" is the same typ as token_types[0]"},
	} {
		is := policies.Issuer{Algorithms: []string{"ES256"}, TokenTypes: tt.types}
		newAgreesWithParse(t, "token_types", tt.types, is, "algorithms: [ES256], ", tt.ok, tt.want)
	}
}

// TestOptionsListsAreCopied: the algorithms and token_types a verifier
// checks are its own; a caller changing its Options after New changes
// nothing. Before, the verifier read the caller's Algorithms slice, so a
// write to it after New refused (or admitted) tokens.
func TestOptionsListsAreCopied(t *testing.T) {
	f := newFixture(t, func(o *authn.Options) {
		o.Issuers[0].TokenTypes = []string{"JWT"}
	})
	tok := sign(t, f.es.Key(), map[string]any{"typ": "JWT"}, claims(f.es))
	f.opts.Issuers[0].Algorithms[0] = "PS512"
	f.opts.Issuers[0].TokenTypes[0] = "at+jwt"
	if _, err := f.v.Authenticate(context.Background(), tok); err != nil {
		t.Errorf("Authenticate(ES256, typ JWT) after the Options changed = %v, want ok", err)
	}
}
