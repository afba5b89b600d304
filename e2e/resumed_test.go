package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/e2e/harness"
)

// TestAuditVerifyNoticesLinesAddedWhileStopped: a line added to a stopped
// broker's audit file, linked to its last checkpoint, is signed by the
// next checkpoint of the broker that resumes the chain; the files alone
// then verify. The restarted broker's start event (policy_load, trigger
// start) records the range it adopted, and `keytrail audit verify`, run
// as an auditor runs it, names it in a notice (exit 0: a crash leaves
// such lines too).
func TestAuditVerifyNoticesLinesAddedWhileStopped(t *testing.T) {
	env := startStack(t, stackOptions{checkpointKey: true})
	bin := harness.KeytrailBinary(t)
	tok := env.issuer.token(t, "system:serviceaccount:payments:api", map[string]any{"namespace": "payments", "session": "pod-resumed"})
	env.issue(t, tok, "payments-vault", nil)
	if err := env.broker.Stop(); err != nil {
		t.Fatalf("keytrail exit after SIGTERM = %v", err)
	}

	data, err := os.ReadFile(env.auditPath)
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n"))
	c, err := audit.ResumeChain(lines[len(lines)-1])
	if err != nil {
		t.Fatal(err)
	}
	cpSeq, _ := c.Head()
	added, err := c.Seal(&audit.Event{Type: audit.TypeIssue, RequestID: "req_added", IssuanceID: "iss_ADDED", Workload: "payments-api"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(env.auditPath, append(append(data, added...), '\n'), 0o600); err != nil {
		t.Fatal(err)
	}

	env.broker.Restart()
	if err := env.broker.Stop(); err != nil {
		t.Fatalf("keytrail exit after SIGTERM = %v", err)
	}
	var start *audit.Event
	for _, ev := range auditEvents(t, env.auditPath) {
		if ev.Type == audit.TypePolicyLoad && ev.Seq > cpSeq+1 && ev.Details["trigger"] == "start" {
			start = ev
			break
		}
	}
	if start == nil {
		t.Fatal("no start event after the restart")
	}
	r, ok := start.Details[audit.DetailUnsignedResumed].(map[string]any)
	want := map[string]any{"first_seq": float64(cpSeq + 1), "last_seq": float64(cpSeq + 1), "lines": float64(1), "last_checkpoint_seq": float64(cpSeq)}
	if !ok || fmt.Sprint(r) != fmt.Sprint(want) {
		t.Errorf("start event details.%s = %v, want %v", audit.DetailUnsignedResumed, start.Details[audit.DetailUnsignedResumed], want)
	}

	out, err := exec.Command(bin, "audit", "verify", "--require-checkpoint", "--key", env.checkpointPub, env.auditPath).CombinedOutput()
	notice := fmt.Sprintf("notice: chain %s: seq %d (1 line(s)), after the checkpoint at seq %d, were signed only after the broker restarted (its start event, seq %d, records them)", c.ID(), cpSeq+1, cpSeq, start.Seq)
	if err != nil || !strings.Contains(string(out), notice) || !strings.Contains(string(out), "OK: the chain is intact") {
		t.Errorf("keytrail audit verify = %v, want exit 0 with %q\n%s", err, notice, out)
	}
}
