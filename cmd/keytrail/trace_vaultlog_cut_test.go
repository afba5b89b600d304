package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/keytrail/keytrail/broker/trace"
)

// TestTraceVaultLogSaysTheListIsCut: trace VALUE --vault-audit-log lists
// at most trace.MaxVaultEntries requests, and said "vault audit log: 1000
// request(s) made with this credential" of a credential that made more,
// with nothing in the JSON either: an auditor undercounted without
// knowing. Every request is now counted; the text says how many were
// listed and the JSON has vault_total and vault_dropped.
func TestTraceVaultLogSaysTheListIsCut(t *testing.T) {
	dir := t.TempDir()
	live := cliAuditLog(t, dir)
	n := trace.MaxVaultEntries + 7
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, `{"time":"2025-06-01T10:00:00Z","type":"request","auth":{"client_token":"hmac-sha256:%d","accessor":"accCLI","display_name":"token-keytrail-payments-api","policies":["default"],"metadata":{"issuance_id":"%s"}},"request":{"id":"r%d","operation":"read","path":"auth/token/lookup-self"}}`+"\n", i, cliIssID, i)
	}
	vaultLog := writeFile(t, dir, "vault-audit.log", b.String())

	stdout, stderr, err := runCLI(t, nil, "trace", cliIssID, "--vault-audit-log", vaultLog, "--audit-log", live)
	if err != nil {
		t.Fatalf("trace = %v\n%s", err, stderr)
	}
	want := fmt.Sprintf("vault audit log: %d request(s) made with this credential (the first %d listed)", n, trace.MaxVaultEntries)
	if !strings.Contains(stdout, want) {
		t.Errorf("stdout lacks %q:\n%s", want, stdout[:min(len(stdout), 2000)])
	}

	stdout, stderr, err = runCLI(t, nil, "trace", cliIssID, "--vault-audit-log", vaultLog, "--audit-log", live, "--json")
	if err != nil {
		t.Fatalf("trace --json = %v\n%s", err, stderr)
	}
	var got struct {
		Vault   []json.RawMessage `json:"vault"`
		Total   *int              `json:"vault_total"`
		Dropped *int              `json:"vault_dropped"`
	}
	if err := json.Unmarshal([]byte(stdout), &got); err != nil {
		t.Fatal(err)
	}
	if len(got.Vault) != trace.MaxVaultEntries || got.Total == nil || *got.Total != n || got.Dropped == nil || *got.Dropped != n-trace.MaxVaultEntries {
		t.Errorf("trace --json: %d vault entries, vault_total %v, vault_dropped %v; want %d, %d, %d",
			len(got.Vault), deref(got.Total), deref(got.Dropped), trace.MaxVaultEntries, n, n-trace.MaxVaultEntries)
	}
}

func deref(p *int) any {
	if p == nil {
		return "absent"
	}
	return *p
}
