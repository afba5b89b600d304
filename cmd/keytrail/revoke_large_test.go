package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

// TestRevokeLargePendingReceipt: a revocation of an owner's 40,000
// credentials while Vault is down is made (202, everything pending), and
// its receipt lists each one as pending and failed: over 5 MB. The CLI read
// at most 4 MiB of it and reported "the server's answer is not a receipt",
// so the operator was told it failed and would retry (a second revocation)
// while the first was in force. It must read it and exit 3 (pending).
func TestRevokeLargePendingReceipt(t *testing.T) {
	const n = 40_000
	rc := map[string]any{"revocation_id": "rev_big", "status": "pending", "matched": n, "revoked": []string{},
		"selector": map[string]string{"owner": "team-payments"}, "reason": "r"}
	pending := make([]string, n)
	failed := make([]map[string]string, n)
	for i := range pending {
		pending[i] = fmt.Sprintf("iss_01JTEST%019d", i)
		failed[i] = map[string]string{"issuance_id": pending[i], "error": "backend revocation failed (vault_unavailable); retrying"}
	}
	rc["pending"], rc["failed"] = pending, failed
	body, err := json.Marshal(rc)
	if err != nil {
		t.Fatal(err)
	}
	if len(body) <= 4<<20 {
		t.Fatalf("receipt is %d bytes, want over 4 MiB for this test", len(body))
	}
	srv := httptest.NewServer(&fakeAdmin{status: 202, body: string(body)})
	defer srv.Close()
	env := map[string]string{"KEYTRAIL_ADDR": srv.URL, "KEYTRAIL_ADMIN_TOKEN": "t"}
	var stdout, stderr bytes.Buffer
	err = run(context.Background(), []string{"revoke", "--owner", "team-payments", "--reason", "r"}, func(k string) string { return env[k] }, &stdout, &stderr)
	var ee exitError
	if !errors.As(err, &ee) || ee.code != exitPending {
		t.Fatalf("revoke = %v, want exit %d (pending)", err, exitPending)
	}
	if want := fmt.Sprintf("pending %d", n); !strings.Contains(stdout.String(), want) {
		t.Errorf("output lacks %q: %.300s", want, stdout.String())
	}
}

// TestAdminGetAnswerTooLarge: a trace or report answer over the 64 MiB the
// CLI reads said "the server's answer is not valid JSON" (it was cut); it
// names the cause and the way out, as revoke does for its receipt.
func TestAdminGetAnswerTooLarge(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		mib := []byte(strings.Repeat("x", 1<<20))
		io.WriteString(w, `{"events":["`)
		for range 64 { // 64 MiB and a few bytes: one string too long
			if _, err := w.Write(mib); err != nil {
				return // the client stopped reading
			}
		}
		io.WriteString(w, `"]}`)
	}))
	t.Cleanup(srv.Close)
	u, err := url.Parse(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	c := &adminClient{base: u, token: "t", http: srv.Client()}
	var out map[string]any
	_, err = adminGet(t.Context(), c, "/v1/admin/report", nil, &out)
	if err == nil || !strings.Contains(err.Error(), "larger than 64 MiB") || !strings.Contains(err.Error(), "--audit-log") {
		t.Errorf("adminGet(a 65 MiB answer) = %v, want an error naming the 64 MiB bound and --audit-log", err)
	}
}
