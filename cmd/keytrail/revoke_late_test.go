package main

import (
	"bytes"
	"context"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestRevokeMadeButAuditLate: a revocation that was made, but whose revoke
// event was not durable in time, is answered 503 audit_unavailable naming
// it (revocation_id); keytrail revoke exited 1, "not made, or not
// confirmed", the status of a revocation that was not made, so an operator
// could retry or think nothing was revoked. It now exits 4, naming the
// revocation and GET /v1/admin/revocations/<id>, told apart from a 503
// of a revocation not made by the answer's revocation_id field, not its
// prose.
func TestRevokeMadeButAuditLate(t *testing.T) {
	for _, tt := range []struct {
		name     string
		body     string
		wantCode int // exitError code; 0: a plain error (exit 1)
		wantErr  []string
	}{
		{name: "made-audit-late-exits-4",
			body:     `{"error":"temporarily_unavailable","error_description":"the revocation rev_5 was made, but its revoke event was not durable in time","request_id":"req_7","revocation_id":"rev_5"}`,
			wantCode: exitRevokeAuditLate,
			wantErr:  []string{"rev_5 was made", "not confirmed in the audit log", "GET /v1/admin/revocations/rev_5", "request_id req_7"}},
		{name: "not-made-exits-1",
			body:    `{"error":"temporarily_unavailable","error_description":"a backend is temporarily unavailable; retry later","request_id":"req_8"}`,
			wantErr: []string{"revoke: 503 temporarily_unavailable"}},
		{name: "not-made-prose-naming-a-revocation-exits-1", // the prose is not read
			body:    `{"error":"temporarily_unavailable","error_description":"the revocation rev_6 was not made (the store is unavailable): nothing was revoked; retry","request_id":"req_9"}`,
			wantErr: []string{"rev_6 was not made"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(&fakeAdmin{status: 503, body: tt.body})
			defer srv.Close()
			env := map[string]string{"KEYTRAIL_ADDR": srv.URL, "KEYTRAIL_ADMIN_TOKEN": "t"}
			var stdout, stderr bytes.Buffer
			err := run(context.Background(), []string{"revoke", "--workload", "w", "--reason", "r"}, func(k string) string { return env[k] }, &stdout, &stderr)
			var ee exitError
			switch {
			case err == nil:
				t.Fatalf("revoke = nil, want an error")
			case tt.wantCode != 0 && (!errors.As(err, &ee) || ee.code != tt.wantCode):
				t.Fatalf("revoke = %v, want exit %d", err, tt.wantCode)
			case tt.wantCode == 0 && errors.As(err, &ee):
				t.Fatalf("revoke = %v, want a plain error (exit 1)", err)
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("revoke = %v, want it to contain %q", err, want)
				}
			}
		})
	}
	var help bytes.Buffer
	if err := run(context.Background(), []string{"revoke", "--help"}, func(string) string { return "" }, &help, &help); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(help.String(), "  4  the revocation was made, but not confirmed in the audit log") {
		t.Errorf("keytrail revoke --help does not document exit 4:\n%s", help.String())
	}
}
