package main

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
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

// readsFrom records the lowest offset f is read at (ReadAt).
type readsFrom struct {
	f   *os.File
	min int64
}

func (r *readsFrom) ReadAt(b []byte, off int64) (int, error) {
	r.min = min(r.min, off)
	return r.f.ReadAt(b, off)
}

// TestAuditIssueIndexCutRereadsFromLastHeldLine: after the sink cut the
// live file back (a failed batch) and wrote on, the index read the whole
// file again from its start, however large (rotation is off by default:
// the live file can grow for weeks). It now reads on from the last line
// it read that the file still holds, and indexes what follows as before.
func TestAuditIssueIndexCutRereadsFromLastHeldLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	var durable []byte
	var ids []string
	for i := range 3000 { // ~250 KB, well past what the index keeps of it
		id := fmt.Sprintf("iss_%04d", i)
		ids = append(ids, id)
		durable = append(durable, issueLine(id, 10+i%7)...)
	}
	failed := issueLine("iss_failed1", 10) + issueLine("iss_failed2", 10)
	if err := os.WriteFile(path, append(slices.Clone(durable), failed...), 0o600); err != nil {
		t.Fatal(err)
	}
	x := newAuditIssueIndex(path)
	if got := issuedSet(t, x, ids...); len(got) != len(ids) {
		t.Fatalf("first run: %d issuances indexed, want %d", len(got), len(ids))
	}
	// The batch of iss_failed1 and 2 failed: cut back, then the next one.
	next := issueLine("iss_next1", 40) + issueLine("iss_next2", 40)
	if err := os.WriteFile(path, append(slices.Clone(durable), next...), 0o600); err != nil {
		t.Fatal(err)
	}
	var r *readsFrom
	x.wrapRead = func(f *os.File) audit.File {
		r = &readsFrom{f: f, min: math.MaxInt64}
		return r
	}
	got := issuedSet(t, x, "iss_0000", "iss_2999", "iss_next1", "iss_next2")
	if diff := cmp.Diff(map[string]bool{"iss_0000": true, "iss_2999": true, "iss_next1": true, "iss_next2": true}, got); diff != "" {
		t.Errorf("the run after the cut (-want +got):\n%s", diff)
	}
	if r == nil || r.min != int64(len(durable)) {
		from := int64(-1)
		if r != nil {
			from = r.min
		}
		t.Errorf("the run after the cut read the file from offset %d, want %d (the end of the last line still there; not the whole %d bytes again)", from, len(durable), len(durable)+len(next))
	}
	// A cut below all the lines it keeps (a file replaced by hand, say):
	// read again from the start.
	head := durable[:bytes.Index(durable, []byte(`"iss_0100"`))]
	head = head[:bytes.LastIndexByte(head, '\n')+1]
	if err := os.WriteFile(path, append(slices.Clone(head), issueLine("iss_far", 300000)...), 0o600); err != nil {
		t.Fatal(err)
	}
	r = nil
	if got := issuedSet(t, x, "iss_far"); !got["iss_far"] || r == nil || r.min != 0 {
		t.Errorf("after a cut below what the index keeps: iss_far indexed %v, read from offset %v, want true from 0", got["iss_far"], r)
	}
}
