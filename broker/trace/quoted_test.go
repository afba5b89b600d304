package trace_test

import (
	"strings"
	"testing"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/trace"
)

// Values as other logs write them: PostgreSQL quotes a role name in its
// error messages (`FATAL: role "kt-iss-..." does not exist` when a revoked
// credential is tried again), HTTP logs and curl commands carry tokens as
// "Authorization: Bearer <token>", shells and JSON quote. They name the
// same issuance as the bare value, and a credential in such a wrapping is
// still a credential: never sent or shown as it is.
func TestLookupQuotedAndBearerValues(t *testing.T) {
	x := fixtureIndex(t)
	cases := []struct {
		q, wantID, wantKind string
	}{
		{`"v-kt-iss_01JXC-reports"`, idC, trace.KindUsername},
		{`'v-kt-iss_01JXC-reports'`, idC, trace.KindUsername},
		{`"use_U1"`, idB, trace.KindUseID},
		{"Bearer " + secretB, idB, trace.KindCredential},
		{"bearer " + secretA, idA, trace.KindCredential},
		{`"` + secretC + `"`, idC, trace.KindCredential},
	}
	for _, tc := range cases {
		res, err := x.Lookup(tc.q)
		if err != nil {
			t.Errorf("Lookup(%q) = %v, want %s", tc.q, err, tc.wantID)
			continue
		}
		if res.Issuance.ID != tc.wantID || res.Query.Kind != tc.wantKind {
			t.Errorf("Lookup(%q) = %s matched %s, want %s matched %s", tc.q, res.Issuance.ID, res.Query.Kind, tc.wantID, tc.wantKind)
		}
	}
	for _, q := range []string{"Bearer " + secretB, "Authorization: Bearer " + secretB, `"` + secretB + `"`, `"` + secretA + `"`} {
		if !trace.LooksSecret(q) {
			t.Errorf("LooksSecret(%q) = false, want true", q)
		}
	}
	if got, want := trace.SafeQuery("Bearer "+secretB), broker.Fingerprint(secretB); got != want {
		t.Errorf("SafeQuery(Bearer <proxy credential>) = %q, want the credential's fingerprint %q", got, want)
	}
	if got, want := trace.SafeQuery(`"`+secretA+`"`), broker.Fingerprint(secretA); got != want {
		t.Errorf("SafeQuery(quoted Vault token) = %q, want the token's fingerprint %q", got, want)
	}
}

// Only a value that is one quoted string loses its quotes: `"x" foo "y"`
// (two quoted words and what is between them, as a log line pasted whole)
// lost its first and last quote and was looked up as `x" foo "y`, a value
// no log wrote. It is now read as it is.
func TestUnwrapStripsOnlyOneWholeQuotedString(t *testing.T) {
	for q, want := range map[string]string{
		`"x" foo "y"`:              `"x" foo "y"`,
		`'x' foo 'y'`:              `'x' foo 'y'`,
		`"use_U1" "use_U2"`:        `"use_U1" "use_U2"`,
		`"a"b"`:                    `"a"b"`,
		`"x"`:                      "x",
		`'x'`:                      "x",
		` "x" `:                    "x",
		`"'x'"`:                    "x",
		`"it's"`:                   "it's",
		`'say "hi"'`:               `say "hi"`,
		`"v-kt-iss_01JXC-reports"`: "v-kt-iss_01JXC-reports",
		`Bearer "use_U1"`:          "use_U1",
		`X-Request-Id: "use_U1"`:   "use_U1",
		`""`:                       "",
	} {
		if got := trace.Unwrap(q); got != want {
			t.Errorf("Unwrap(%q) = %q, want %q", q, got, want)
		}
	}
	x := fixtureIndex(t)
	if res, err := x.Lookup(`"use_U1" "use_U2"`); err == nil {
		t.Errorf("Lookup of two quoted ids = %s matched %s %q, want no match", res.Issuance.ID, res.Query.Kind, res.Query.Value)
	}
}

// A value that starts with a quoted credential but is not one quoted
// string (`"hvs..." "x"`, as a shell command line or a JSON list pasted
// whole; an unbalanced `"hvs...`) still carries the credential: it is
// never sent or shown as it is. Before quotes were stripped only from one
// whole quoted string, the first and last quote went and LooksSecret saw
// the credential; since then such a value was sent to the server in clear.
func TestLooksSecretWithQuotedCredentialAmongOtherWords(t *testing.T) {
	jwt := "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
	for _, q := range []string{
		`"` + secretA + `" "x"`,
		`'` + secretA + `' 'x'`,
		`"` + secretB + `" foo "y"`,
		`"` + secretA + `"x"`,
		`"Bearer ` + secretB + `" "y"`,
		`"` + jwt + `" "y"`,
		`"` + secretA,
	} {
		if !trace.LooksSecret(q) {
			t.Errorf("LooksSecret(%q) = false, want true", q)
		}
		if got := trace.SafeQuery(q); got != broker.Fingerprint(q) && got != broker.Fingerprint(trace.Unwrap(q)) {
			t.Errorf("SafeQuery(%q) = %q, want a fingerprint", q, got)
		}
	}
	x := fixtureIndex(t)
	q := `"` + secretA + `" "x"`
	if res, err := x.Lookup(q); err == nil {
		t.Errorf("Lookup(%q) = %s, want no match", q, res.Issuance.ID)
	} else if strings.Contains(err.Error(), secretA) {
		t.Errorf("Lookup(%q) error shows the credential: %v", q, err)
	}
	for _, q := range []string{`"x" foo "y"`, `"use_U1" "use_U2"`, `"`, `""`, `"'"`} {
		if trace.LooksSecret(q) {
			t.Errorf("LooksSecret(%q) = true, want false", q)
		}
	}
}
