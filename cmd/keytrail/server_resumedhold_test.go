package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/e2e/harness"
)

// TestFailedStartupLeavesAdoptedLinesToTheNextStart: a broker that opens
// an audit file with lines no checkpoint covers (added while no broker held
// it, here) records them in its start event. A start-up that fails after
// the sink opened the file (here: a pki role with no_store=true) writes no
// start event: its closing sink must not sign those lines with a final
// checkpoint either, or no start event would ever record them. The next
// start that succeeds records them.
func TestFailedStartupLeavesAdoptedLinesToTheNextStart(t *testing.T) {
	vp := pkiRolesVault(t)
	dir := t.TempDir()
	pol := filepath.Join(dir, "policy.yaml")
	auditPath := filepath.Join(dir, "audit.jsonl")
	run := func(role, wantErr string) {
		t.Helper()
		if err := os.WriteFile(pol, []byte(pkiRolePolicy(role)), 0o600); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		readyc, errc := goServer(t, ctx, dir, pol, vp.Addr, harness.VaultRootToken)
		select {
		case <-readyc:
			cancel()
			if err := <-errc; err != nil {
				t.Fatalf("runServer() = %v", err)
			}
			if wantErr != "" {
				t.Fatalf("server started; want a start-up error containing %q", wantErr)
			}
		case err := <-errc:
			if wantErr == "" || err == nil || !strings.Contains(err.Error(), wantErr) {
				t.Fatalf("runServer() = %v, want %s", err, map[bool]string{true: "a start", false: "an error containing " + wantErr}[wantErr == ""])
			}
		case <-time.After(60 * time.Second):
			t.Fatal("server neither started nor failed")
		}
	}
	run("stored", "") // a clean stop: the file ends with a checkpoint

	data, c := resumeAuditFile(t, auditPath)
	cpSeq, _ := c.Head()
	added, err := c.Seal(&audit.Event{Type: audit.TypeIssue, RequestID: "req_added", IssuanceID: "iss_ADDED", Workload: "orders"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(auditPath, append(append(data, added...), '\n'), 0o600); err != nil {
		t.Fatal(err)
	}

	run("unstored", "no_store=true") // fails after the sink opened the file
	run("stored", "")

	var starts []*audit.Event
	var last *audit.Event
	for _, l := range bytes.Split(bytes.TrimSpace(mustRead(t, auditPath)), []byte("\n")) {
		ev, err := audit.ParseLine(l)
		if err != nil {
			t.Fatal(err)
		}
		last = ev
		if ev.Seq > cpSeq && ev.Type == audit.TypeCheckpoint && len(starts) == 0 {
			t.Errorf("checkpoint at seq %d signs the added line (seq %d) before any start event recorded it", ev.Seq, cpSeq+1)
		}
		if ev.Seq > cpSeq && ev.Type == audit.TypePolicyLoad && ev.Details["trigger"] == "start" {
			starts = append(starts, ev)
		}
	}
	if len(starts) != 1 {
		t.Fatalf("%d start events after the added line, want 1 (the failed start-up writes none)", len(starts))
	}
	// The start that succeeded released the hold: its clean stop signed
	// everything, the adopted lines and its start event included (a hold
	// left on would leave the file unsigned for the broker's whole run).
	if last.Type != audit.TypeCheckpoint || last.Seq <= starts[0].Seq {
		t.Errorf("last line: %s at seq %d, want the clean stop's checkpoint after the start event (seq %d)", last.Type, last.Seq, starts[0].Seq)
	}
	r, ok := starts[0].Details[audit.DetailUnsignedResumed].(map[string]any)
	if !ok || fmt.Sprint(r["first_seq"]) != fmt.Sprint(cpSeq+1) || fmt.Sprint(r["last_checkpoint_seq"]) != fmt.Sprint(cpSeq) {
		t.Errorf("start event (seq %d) details.%s = %v, want a range from seq %d after the checkpoint at seq %d",
			starts[0].Seq, audit.DetailUnsignedResumed, starts[0].Details[audit.DetailUnsignedResumed], cpSeq+1, cpSeq)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
