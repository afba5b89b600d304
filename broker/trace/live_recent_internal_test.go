package trace

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/audit"
)

// recentLines keeps whole lines, the last ones added, ending with the last
// (even one longer than it keeps otherwise), about liveRecentBytes of them
// after a trim, each with its counters.
func TestRecentLinesKeepsLastWholeLines(t *testing.T) {
	var r recentLines
	var all [][]byte
	check := func(step string) {
		t.Helper()
		if len(r.marks) == 0 || r.marks[len(r.marks)-1].end != len(r.buf) {
			t.Fatalf("%s: marks %v do not end at len(buf) %d", step, r.marks, len(r.buf))
		}
		k := len(r.marks)
		if want := bytes.Join(all[len(all)-k:], nil); !bytes.Equal(r.buf, want) {
			t.Fatalf("%s: buf is not the last %d lines", step, k)
		}
		from := 0
		for j, m := range r.marks {
			line := all[len(all)-k+j]
			if m.end-from != len(line) || m.next != int64(len(all)-k+j+1) || m.skipped != int64(len(all)-k+j) {
				t.Fatalf("%s: mark %d = %+v, want the end and counters of its line", step, j, m)
			}
			from = m.end
		}
		if len(r.buf) > 2*liveRecentBytes && k > 1 {
			t.Fatalf("%s: holds %d bytes in %d lines, want at most %d", step, len(r.buf), k, 2*liveRecentBytes)
		}
	}
	add := func(line string) {
		all = append(all, []byte(line+"\n"))
		r.add(all[len(all)-1], int64(len(all)), int64(len(all)-1))
	}
	for i := range 3000 {
		add(fmt.Sprintf(`{"n":%d,"pad":%q}`, i, strings.Repeat("p", i%300)))
		check(fmt.Sprintf("line %d", i))
	}
	if len(r.buf) < liveRecentBytes {
		t.Errorf("holds %d bytes, want at least %d", len(r.buf), liveRecentBytes)
	}
	add(strings.Repeat("L", 3*liveRecentBytes)) // longer than what it keeps
	check("long line")
	if len(r.marks) != 1 {
		t.Errorf("kept %d lines, want only the long one", len(r.marks))
	}
	add("short")
	check("after the long line")
	r, all = recentLines{}, nil
	add(strings.Repeat("F", 3*liveRecentBytes))
	check("a long first line")
	if len(r.marks) != 1 {
		t.Errorf("kept %d lines after a short one following a long one, want 1 (only the last line above the bound)", len(r.marks))
	}
}

// dropAfter refuses when something was added after the last line read, or
// the events to drop were compacted away, and otherwise removes the events
// and their keys, leaving the keys of the events kept.
func TestIndexDropAfter(t *testing.T) {
	x, err := NewIndex(Options{MaxEvents: 8})
	if err != nil {
		t.Fatal(err)
	}
	add := func(ev *audit.Event) lineMark {
		line, err := audit.NewChain("chn_drop").Seal(ev, time.Date(2025, 6, 1, 10, 0, 0, 0, time.UTC))
		if err != nil {
			t.Fatal(err)
		}
		next, skipped := x.addLine(line)
		return lineMark{next: next, skipped: skipped}
	}
	for i := range 5 {
		add(&audit.Event{Type: audit.TypeIssue, IssuanceID: fmt.Sprintf("iss_%d", i), RequestID: "req_shared"})
	}
	kept := add(&audit.Event{Type: audit.TypeIssue, IssuanceID: "iss_kept", RequestID: "req_shared"})
	x.addLine([]byte("not json"))
	last := add(&audit.Event{Type: audit.TypeUse, IssuanceID: "iss_kept", UseID: "use_cut", RequestID: "req_shared"})
	if x.dropAfter(kept.next, kept.skipped, lineMark{next: last.next - 1, skipped: last.skipped}) {
		t.Fatal("dropAfter with other counters than the index's = true, want false")
	}
	if !x.dropAfter(kept.next, kept.skipped, last) {
		t.Fatal("dropAfter = false, want true")
	}
	if st := x.Stats(); st.Events != 6 || st.Skipped != 0 {
		t.Errorf("Stats() = %+v, want 6 events, none skipped", st)
	}
	if res := x.Issuance("iss_kept"); res == nil || len(res.Uses) != 0 {
		t.Errorf("Issuance(iss_kept) = %+v, want it without the use dropped", res)
	}
	if _, err := x.Lookup("use_cut"); err == nil {
		t.Error("Lookup(use_cut) found the dropped event")
	}
	if got := len(x.live(x.keys["req_shared"])); got != 6 {
		t.Errorf("req_shared has %d refs, want the 6 of the events kept", got)
	}
	// Compacted past the mark: refused.
	var m lineMark
	for i := range 20 {
		m = add(&audit.Event{Type: audit.TypeIssue, IssuanceID: fmt.Sprintf("iss_more_%d", i)})
	}
	if x.dropAfter(kept.next, kept.skipped, m) {
		t.Error("dropAfter below the events the bound kept = true, want false")
	}
}
