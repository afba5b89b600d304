package trace_test

import (
	"testing"

	"github.com/keytrail/keytrail/broker/trace"
)

// Values as a downstream log shows them: the proxy sets X-Request-Id: <use
// id> and X-Keytrail-Issuance: <issuance id> on every forwarded request (an
// upstream's access log prints the header line), and PostgreSQL's log
// prints the role of a connection as user=<name> (log_line_prefix
// "user=%u,db=%d", "connection authorized: user=... database=..."), other
// tools as user="<name>". Pasted as they are, they name the same issuance
// as the bare value.
func TestLookupPastedLogForms(t *testing.T) {
	x := fixtureIndex(t)
	cases := []struct {
		q, wantID, wantKind string
	}{
		{"X-Request-Id: use_U1", idB, trace.KindUseID},
		{"x-request-id:use_U1", idB, trace.KindUseID},
		{"X-REQUEST-ID:  \"use_U1\" ", idB, trace.KindUseID},
		{"X-Keytrail-Issuance: " + idC, idC, trace.KindIssuanceID},
		{"x-keytrail-issuance:" + idA, idA, trace.KindIssuanceID},
		{"user=v-kt-iss_01JXC-reports", idC, trace.KindUsername},
		{"USER=v-kt-iss_01JXC-reports", idC, trace.KindUsername},
		{`user="v-kt-iss_01JXC-reports"`, idC, trace.KindUsername},
		{`user='v-kt-iss_01JXC-reports'`, idC, trace.KindUsername},
		{"user=v-kt-iss_01JXC-reports,db=reports", idC, trace.KindUsername},
		{"user=v-kt-iss_01JXC-reports database=reports application_name=psql", idC, trace.KindUsername},
		{`user="v-kt-iss_01JXC-reports" database="reports"`, idC, trace.KindUsername},
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
	for q, want := range map[string]string{
		"X-Request-Id: use_U1":                   "use_U1",
		"X-Keytrail-Issuance: " + idB:            idB,
		`user="v-kt-iss_01JXC-reports"`:          "v-kt-iss_01JXC-reports",
		"user=v-kt-iss_01JXC-reports,db=reports": "v-kt-iss_01JXC-reports",
		"user=":                                  "user=",
	} {
		if got := trace.Unwrap(q); got != want {
			t.Errorf("Unwrap(%q) = %q, want %q", q, got, want)
		}
	}
}
