package main

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker/audit"
)

// issueLine is an audit line of the issue event of id (padded to pad
// bytes of reason, so that lines differ in length).
func issueLine(id string, pad int) string {
	reason := make([]byte, pad)
	for i := range reason {
		reason[i] = 'r'
	}
	return `{"v":1,"type":"issue","issuance_id":"` + id + `","reason":"` + string(reason) + `"}` + "\n"
}

func issuedSet(t *testing.T, x *auditIssueIndex, ids ...string) map[string]bool {
	t.Helper()
	snap, err := x.Snapshot(context.Background())
	if err != nil {
		t.Fatalf("Snapshot() = %v", err)
	}
	got := map[string]bool{}
	for _, id := range ids {
		if snap.Issued(id) {
			got[id] = true
		}
	}
	return got
}

// TestAuditIssueIndexCutBelowOffset: the reconciliation's audit index reads
// the live audit file on from where its last run stopped. The broker's
// sink cuts the file back to its last durable line when a write fails, and
// writes on: a run that had read lines of the failed write stopped past the
// cut, and once the file grew back past that point the next run read on
// from the middle of a new line, leaving out the lines before it: their
// issuances looked unaudited, and the reconciliation revokes the Vault
// tokens of unaudited issuances. The index now checks that the file still
// holds the last line it read, and reads the file again from its start
// when it does not. (The issuance of a line cut stays indexed until it
// expires: over-inclusive, as an audited credential is left alone.)
func TestAuditIssueIndexCutBelowOffset(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	durable := issueLine("iss_a", 10)
	if err := os.WriteFile(path, []byte(durable+issueLine("iss_b", 10)), 0o600); err != nil {
		t.Fatal(err)
	}
	x := newAuditIssueIndex(path)
	ids := []string{"iss_a", "iss_b", "iss_c", "iss_d"}
	if diff := cmp.Diff(map[string]bool{"iss_a": true, "iss_b": true}, issuedSet(t, x, ids...)); diff != "" {
		t.Fatalf("first run (-want +got):\n%s", diff)
	}
	// The write of iss_b failed: cut back, then the next batch.
	if err := os.WriteFile(path, []byte(durable+issueLine("iss_c", 200)+issueLine("iss_d", 10)), 0o600); err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"iss_a": true, "iss_b": true, "iss_c": true, "iss_d": true}
	if diff := cmp.Diff(want, issuedSet(t, x, ids...)); diff != "" {
		t.Errorf("the run after the file was cut back and grew past the last run's end (-want +got):\n%s", diff)
	}
}

// hookedIndexRead calls after(n) once the n-th ReadAt of f returns.
type hookedIndexRead struct {
	f     *os.File
	n     int
	after func(n int)
}

func (h *hookedIndexRead) ReadAt(b []byte, off int64) (int, error) {
	n, err := h.f.ReadAt(b, off)
	h.n++
	h.after(h.n)
	return n, err
}

// TestAuditIssueIndexTornTailCutWhileReading: the index reads the file
// through an audit.LineReader: part of a line read (a torn write) is not
// joined to the line the sink writes at its offset after cutting it off,
// and lines read that are cut meanwhile make it read the file again from
// its start.
func TestAuditIssueIndexTornTailCutWhileReading(t *testing.T) {
	for _, tc := range []struct {
		name string
		read string // what the file holds past the durable line when read
	}{
		{"torn-tail", `{"v":1,"type":"issue","issuance_id":"iss_torn`},
		{"below-lines-read", issueLine("iss_b", 10) + `{"v":1,"type":"is`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.jsonl")
			durable := issueLine("iss_a", 10)
			if err := os.WriteFile(path, []byte(durable+tc.read), 0o600); err != nil {
				t.Fatal(err)
			}
			x := newAuditIssueIndex(path)
			cut := false
			x.wrapRead = func(f *os.File) audit.File {
				return &hookedIndexRead{f: f, after: func(n int) {
					if n != 1 || cut {
						return
					}
					cut = true
					if err := os.WriteFile(path, []byte(durable+issueLine("iss_c", 200)+issueLine("iss_d", 10)), 0o600); err != nil {
						t.Error(err)
					}
				}}
			}
			got := issuedSet(t, x, "iss_a", "iss_c", "iss_d", "iss_torn")
			if !cut {
				t.Fatal("fixture: the file was not read through the hook")
			}
			if diff := cmp.Diff(map[string]bool{"iss_a": true, "iss_c": true, "iss_d": true}, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}
