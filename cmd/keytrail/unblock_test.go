package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/broker/httpapi"
	"github.com/keytrail/keytrail/policies"
)

// unblockBroker is the real broker API (admin routes) over an in-memory
// store, with one admin (token "admin-token", role revoke).
func unblockBroker(t *testing.T) (*broker.Service, *brokertest.Sink, string) {
	t.Helper()
	pol, err := policies.Parse("p.yaml", []byte(cliPolicy+"admins:\n  - name: secops\n    match: {issuer: test, claims: {groups: secops}}\n    roles: [revoke]\n"))
	if err != nil {
		t.Fatal(err)
	}
	admin := &broker.Identity{IssuerName: "test", Iss: "https://issuer.test", Sub: "alice",
		Claims: map[string]any{"sub": "alice", "groups": "secops"}, Expiry: time.Now().Add(time.Hour)}
	sink := &brokertest.Sink{}
	svc, err := broker.NewService(broker.Deps{
		Policy:   func() *policies.Policy { return pol },
		Authn:    func() broker.Authenticator { return brokertest.Authn{"admin-token": admin} },
		Minters:  map[string]broker.Minter{broker.KindVaultToken: &brokertest.Minter{}},
		Revokers: map[string]broker.Revoker{broker.KindVaultToken: &brokertest.Minter{}},
		Store:    memstore.New(time.Now),
		Audit:    sink,
	})
	if err != nil {
		t.Fatal(err)
	}
	api, err := httpapi.New(httpapi.Options{Service: svc, PublicURL: "https://keytrail.example", Extra: httpapi.RegisterAdmin})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(api.Routes())
	t.Cleanup(srv.Close)
	return svc, sink, srv.URL
}

// TestUnblockCommand: keytrail unblock lifts the block revoke --block put,
// through the real admin API (DELETE /v1/admin/blocks/{workload} with its
// reason and revocation_id query parameters): the unblock event records
// the reason; a --revocation-id that no longer names the block lifts
// nothing and says which revocation holds it; a retry after success says
// the workload is not blocked, exit 0 (it was exit 1, where a repeated
// revoke exits 0); usage mistakes exit 2, sending
// nothing. Before, there was no command: revoke --help could only point at
// the HTTP route.
func TestUnblockCommand(t *testing.T) {
	svc, sink, addr := unblockBroker(t)
	env := map[string]string{"KEYTRAIL_ADDR": addr, "KEYTRAIL_ADMIN_TOKEN": "admin-token"}
	blocks := func() []string {
		t.Helper()
		bs, err := svc.Blocks(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, b := range bs {
			out = append(out, b.Workload+"/"+b.RevocationID)
		}
		return out
	}
	block := func(workload string) string {
		t.Helper()
		out, stderr, err := runCLI(t, env, "revoke", "--workload", workload, "--block", "--reason", "INC-1", "--json")
		if err != nil {
			t.Fatalf("revoke --block = %v\n%s", err, stderr)
		}
		var rc receipt
		if err := json.Unmarshal([]byte(out), &rc); err != nil || rc.RevocationID == "" {
			t.Fatalf("revoke receipt %q: %v", out, err)
		}
		return rc.RevocationID
	}
	unblockEvents := func() []*audit.Event {
		var evs []*audit.Event
		for _, ev := range sink.Events() {
			if ev.Type == audit.TypeUnblock {
				evs = append(evs, ev)
			}
		}
		return evs
	}

	rev := block("batch")
	for _, tc := range []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"fail/no-reason", []string{"--workload", "batch"}, "--reason is required"},
		{"fail/no-workload", []string{"--reason", "r"}, "--workload is required"},
		{"fail/bad-revocation-id", []string{"--workload", "batch", "--reason", "r", "--revocation-id", "01JD"}, "--revocation-id must be a revocation id (rev_...)"},
		{"fail/dot-dot", []string{"--workload", "..", "--reason", "r"}, "is not a workload name"},
	} {
		t.Run("usage/"+tc.name, func(t *testing.T) {
			_, _, err := runCLI(t, env, append([]string{"unblock"}, tc.args...)...)
			if exitCode(err) != exitUsage || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("unblock %v = %v, want exit 2 saying %q", tc.args, err, tc.wantErr)
			}
		})
	}
	if n := len(unblockEvents()); n != 0 {
		t.Fatalf("usage mistakes reached the broker: %d unblock event(s)", n)
	}

	t.Run("fail/block-changed", func(t *testing.T) {
		_, _, err := runCLI(t, env, "unblock", "--workload", "batch", "--revocation-id", "rev_01JOTHER", "--reason", "r")
		want := "unblock: 404 not_found: the workload is not blocked by rev_01JOTHER any more but by " + rev + ": nothing was unblocked"
		if exitCode(err) != -1 || !strings.Contains(err.Error(), want) {
			t.Fatalf("unblock --revocation-id <another> = %v, want exit 1 with %q", err, want)
		}
		if diff := cmp.Diff([]string{"batch/" + rev}, blocks()); diff != "" {
			t.Errorf("blocks (-want +got):\n%s", diff)
		}
	})
	t.Run("ok/revocation-id", func(t *testing.T) {
		out, stderr, err := runCLI(t, env, "unblock", "--workload", "batch", "--revocation-id", rev, "--reason", "INC-1 closed: key rotated")
		if err != nil {
			t.Fatalf("unblock = %v\n%s", err, stderr)
		}
		if want := "unblocked workload batch (the block of revocation " + rev + "): new credentials can be issued to it again\n"; out != want {
			t.Errorf("stdout = %q, want %q", out, want)
		}
		if got := blocks(); len(got) != 0 {
			t.Errorf("blocks after unblock = %v, want none", got)
		}
		evs := unblockEvents()
		if len(evs) != 1 || evs[0].Reason != "INC-1 closed: key rotated" || evs[0].RevocationID != rev || evs[0].Outcome.Status != 200 {
			t.Errorf("unblock events = %+v, want one, status 200, with the reason and %s", evs, rev)
		}
	})
	t.Run("ok/retry-not-blocked", func(t *testing.T) {
		out, stderr, err := runCLI(t, env, "unblock", "--workload", "batch", "--revocation-id", rev, "--reason", "retry")
		if err != nil {
			t.Fatalf("unblock of an unblocked workload = %v (stderr %q), want exit 0 as a repeated revoke", err, stderr)
		}
		if want := "workload batch is not blocked: nothing to unblock (an earlier unblock went through, or it was not blocked)\n"; out != want {
			t.Errorf("stdout = %q, want %q", out, want)
		}
		out, _, err = runCLI(t, env, "unblock", "--workload", "batch", "--reason", "retry", "--json")
		if err != nil {
			t.Fatalf("unblock --json of an unblocked workload = %v, want exit 0", err)
		}
		var got map[string]any
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			t.Fatalf("stdout %q: %v", out, err)
		}
		if diff := cmp.Diff(map[string]any{"workload": "batch", "unblocked": false, "not_blocked": true}, got); diff != "" {
			t.Errorf("unblock --json (-want +got):\n%s", diff)
		}
		if n := len(unblockEvents()); n != 1 {
			t.Errorf("%d unblock events with status 200 or not, want the first one only (a 404 writes none)", n)
		}
	})
	t.Run("ok/any-block-json", func(t *testing.T) {
		block("payments-api")
		out, stderr, err := runCLI(t, env, "unblock", "--workload", "payments-api", "--reason", "r", "--json")
		if err != nil {
			t.Fatalf("unblock --json = %v\n%s", err, stderr)
		}
		var got map[string]any
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			t.Fatalf("stdout %q: %v", out, err)
		}
		if diff := cmp.Diff(map[string]any{"workload": "payments-api", "unblocked": true}, got); diff != "" {
			t.Errorf("unblock --json (-want +got):\n%s", diff)
		}
		if got := blocks(); len(got) != 0 {
			t.Errorf("blocks after unblock = %v, want none", got)
		}
	})
	t.Run("fail/not-admin", func(t *testing.T) {
		_, _, err := runCLI(t, map[string]string{"KEYTRAIL_ADDR": addr, "KEYTRAIL_ADMIN_TOKEN": "forged"}, "unblock", "--workload", "batch", "--reason", "r")
		if exitCode(err) != -1 || !strings.Contains(err.Error(), "unblock: 401 invalid_token") || strings.Contains(err.Error(), "forged") {
			t.Fatalf("unblock with a refused token = %v, want exit 1 with the 401 and no token", err)
		}
	})
}

// TestUnblockNotFoundWithoutListingExits1: a 404 is taken for "not
// blocked" (exit 0) only when GET /v1/admin/blocks answers without the
// workload; when the listing fails, or lists it (blocked again), the 404 is
// the error, exit 1.
func TestUnblockNotFoundWithoutListingExits1(t *testing.T) {
	for _, tc := range []struct {
		name       string
		listStatus int
		listBody   string
	}{
		{"list-fails", http.StatusServiceUnavailable, `{"error":"temporarily_unavailable"}`},
		{"list-not-json", http.StatusOK, `nope`},
		{"list-without-blocks", http.StatusOK, `{}`},
		{"blocked-again", http.StatusOK, `{"blocks":[{"workload":"batch","revocation_id":"rev_2"}]}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mux := http.NewServeMux()
			mux.HandleFunc("DELETE /v1/admin/blocks/{workload}", func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusNotFound)
				_, _ = w.Write([]byte(`{"error":"not_found","error_description":"the workload is not blocked: nothing to unblock"}`))
			})
			mux.HandleFunc("GET /v1/admin/blocks", func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(tc.listStatus)
				_, _ = w.Write([]byte(tc.listBody))
			})
			srv := httptest.NewServer(mux)
			defer srv.Close()
			out, _, err := runCLI(t, map[string]string{"KEYTRAIL_ADDR": srv.URL, "KEYTRAIL_ADMIN_TOKEN": "t"}, "unblock", "--workload", "batch", "--reason", "r")
			if exitCode(err) != -1 || !strings.Contains(err.Error(), "unblock: 404 not_found: the workload is not blocked") {
				t.Fatalf("unblock = %v, want exit 1 with the 404", err)
			}
			if out != "" {
				t.Errorf("stdout = %q, want nothing", out)
			}
		})
	}
}

// TestUnblockSendsReasonAsQuery: the DELETE has no body; the reason and
// the revocation id go as the query parameters the route takes, and the
// workload (any name revoke --force accepts) as one path segment.
func TestUnblockSendsReasonAsQuery(t *testing.T) {
	var gotWorkload string
	var gotQuery map[string][]string
	mux := http.NewServeMux()
	mux.HandleFunc("DELETE /v1/admin/blocks/{workload}", func(w http.ResponseWriter, r *http.Request) {
		gotWorkload, gotQuery = r.PathValue("workload"), r.URL.Query()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"workload": gotWorkload, "unblocked": true})
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	env := map[string]string{"KEYTRAIL_ADDR": srv.URL, "KEYTRAIL_ADMIN_TOKEN": "t"}
	const workload = "etl job/2?x=1"
	if _, stderr, err := runCLI(t, env, "unblock", "--workload", workload, "--revocation-id", "rev_1", "--reason", "INC-9: done & dusted"); err != nil {
		t.Fatalf("unblock = %v\n%s", err, stderr)
	}
	if gotWorkload != workload {
		t.Errorf("workload sent = %q, want %q", gotWorkload, workload)
	}
	if diff := cmp.Diff(map[string][]string{"reason": {"INC-9: done & dusted"}, "revocation_id": {"rev_1"}}, gotQuery); diff != "" {
		t.Errorf("query (-want +got):\n%s", diff)
	}
}

func TestUnblockHelp(t *testing.T) {
	out, _, err := runCLI(t, nil, "unblock", "--help")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"--workload", "--revocation-id", "--reason", "--json", "DELETE /v1/admin/blocks/{workload}",
		"KEYTRAIL_ADDR", "KEYTRAIL_ADMIN_TOKEN_FILE", "Exit status", "0  the block is lifted, or the workload is not blocked"} {
		if !strings.Contains(out, want) {
			t.Errorf("keytrail unblock --help lacks %q", want)
		}
	}
	out, _, err = runCLI(t, nil, "revoke", "--help")
	if err != nil {
		t.Fatal(err)
	}
	if want := "keytrail unblock\n--workload W --revocation-id <this revocation's id> --reason R"; !strings.Contains(out, want) {
		t.Errorf("keytrail revoke --help does not point to keytrail unblock (%q):\n%s", want, out)
	}
}
