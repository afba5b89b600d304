package trace_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/trace"
)

// A workload revocation with block whose revoke and block events were
// queued behind a write that hung: the log recovered ten minutes later and
// sealed them then, each carrying details.decided_at, the decision's time
// (the store's block and marks use it). The trace gave the decision's time
// as revoked_at, but its timeline still put the block (and revoke) line at
// the write, ten minutes after the workload was blocked. Both lines now
// stand at decided_at (earlier than their time), naming when they were
// written; the online trace (Live, and its answer read back from JSON as
// the CLI reads the API's) shows the same as the offline one.
func TestLateBlockShownAtDecision(t *testing.T) {
	const id = "iss_01JXD0000000000000000000BK"
	decided := at(time.Second)
	written := at(10*time.Minute + time.Second)
	details := func(m map[string]any) map[string]any {
		m["decided_at"] = decided.Format(audit.TimeFormat)
		return m
	}
	lines := sealedAt(t, "chn_a", []timed{
		{&audit.Event{Type: audit.TypeIssue, RequestID: "req_I", IssuanceID: id, Workload: "payments-api", Owner: "team-payments",
			Grant: "payments-vault", Kind: broker.KindVaultToken,
			Credential: &audit.Credential{Accessor: "accBK", ExpiresAt: rfc(at(2 * time.Hour))},
			Outcome:    &audit.Outcome{Status: 200}}, at(0)},
		{&audit.Event{Type: audit.TypeRevoke, RequestID: "req_R", RevocationID: "rev_BK", Admin: "secops:alice", Reason: "leaked",
			Details: details(map[string]any{"selector": map[string]any{"workload": "payments-api"}, "matched": 1,
				"issuance_ids": []any{id}, "block": true, "blocks": []any{"payments-api"}}),
			Outcome: &audit.Outcome{Status: 200}}, written},
		{&audit.Event{Type: audit.TypeBlock, RequestID: "req_R", RevocationID: "rev_BK", Workload: "payments-api", Admin: "secops:alice",
			Reason: "leaked", Details: details(map[string]any{}), Outcome: &audit.Outcome{Status: 200}}, written},
		{&audit.Event{Type: audit.TypeRevokeResult, RevocationID: "rev_BK", Admin: "secops:alice",
			Details: map[string]any{"matched": 1, "revoked": []any{id}, "pending": []any{}, "failed": []any{}},
			Outcome: &audit.Outcome{Status: 200}}, written.Add(time.Millisecond)},
	})

	x := indexed(t, lines)
	off, err := x.Lookup("accBK")
	if err != nil {
		t.Fatal(err)
	}
	var offText bytes.Buffer
	if err := off.WriteText(&offText); err != nil {
		t.Fatal(err)
	}
	text := offText.String()
	wantAt, wantWritten := decided.UTC().Format(time.RFC3339Nano), "written "+written.UTC().Format(time.RFC3339Nano)
	for _, typ := range []string{audit.TypeBlock, audit.TypeRevoke} {
		found := false
		for _, l := range strings.Split(text, "\n") {
			f := strings.Fields(l)
			if len(f) < 2 || f[1] != typ {
				continue
			}
			found = true
			if f[0] != wantAt || !strings.Contains(l, wantWritten) {
				t.Errorf("offline trace: %s line %q, want it at %s (decided_at) saying %q", typ, l, wantAt, wantWritten)
			}
		}
		if !found {
			t.Errorf("offline trace: no %s line in\n%s", typ, text)
		}
	}
	if !off.Issuance.RevokedAt.Equal(decided) {
		t.Errorf("offline trace: revoked_at %v, want %v", off.Issuance.RevokedAt, decided)
	}

	// Online: the broker's Live over the same file, and its answer as the
	// CLI gets it from the API (JSON).
	path := writeLines(t, t.TempDir(), "audit.jsonl", lines)
	live, err := trace.NewLive(trace.LiveOptions{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	on, err := live.Trace(context.Background(), "accBK")
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(on)
	if err != nil {
		t.Fatal(err)
	}
	var api trace.Result
	if err := json.Unmarshal(b, &api); err != nil {
		t.Fatal(err)
	}
	for name, r := range map[string]*trace.Result{"Live": on, "Live through JSON": &api} {
		var buf bytes.Buffer
		if err := r.WriteText(&buf); err != nil {
			t.Fatal(err)
		}
		if buf.String() != text {
			t.Errorf("%s trace differs from the offline one:\n%s\nwant\n%s", name, buf.String(), text)
		}
	}
}
