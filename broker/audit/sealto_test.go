package audit_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker/audit"
)

// TestSealToIsSeal: SealTo appends exactly the golden lines Seal returns,
// each with its '\n', checkpoints included, and leaves the chain where
// Seal leaves it.
func TestSealToIsSeal(t *testing.T) {
	s := testSigner(t, "checkpoint.key")
	c := audit.NewChain(goldenChain)
	now := goldenStart
	var w bytes.Buffer
	for i, ev := range goldenEvents() {
		if ev == nil {
			var err error
			if ev, err = c.Checkpoint(context.Background(), s, fmt.Sprint("req_cp", i), now); err != nil {
				t.Fatalf("Checkpoint #%d = %v", i, err)
			}
		}
		if err := c.SealTo(&w, ev, now); err != nil {
			t.Fatalf("SealTo #%d = %v", i, err)
		}
		now = now.Add(1500 * time.Microsecond)
	}
	want := readTestdata(t, "golden.jsonl")
	if !bytes.Equal(w.Bytes(), want) {
		t.Fatalf("SealTo's lines differ from golden.jsonl:\n%s", cmp.Diff(string(want), w.String()))
	}
	lines := sealGolden(t)
	seq, head := c.Head()
	if wantSeq := uint64(len(lines)); seq != wantSeq || head != audit.HashLine(lines[len(lines)-1]) {
		t.Errorf("Head() after SealTo = %d, %s; want %d, %s", seq, head, wantSeq, audit.HashLine(lines[len(lines)-1]))
	}
	if want := now.Add(-1500 * time.Microsecond).UTC(); !c.LastTime().Equal(want) {
		t.Errorf("LastTime() = %v, want %v", c.LastTime(), want)
	}
}

// TestSealToRefusesAsSeal: what Seal refuses SealTo refuses with the same
// error, leaving the buffer and the chain as they were; a clock stepped
// back gives both the same line and time.
func TestSealToRefusesAsSeal(t *testing.T) {
	t0 := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	bad := []*audit.Event{
		nil,
		{},
		{Type: audit.TypeCheckpoint},
		{Type: "use", Checkpoint: &audit.Checkpoint{}},
		{Type: "use", Details: map[string]any{"f": func() {}}},
		{Type: "use", Reason: strings.Repeat("a", audit.MaxLineBytes)},
	}
	for i, ev := range bad {
		sealed, to := audit.NewChain("chn_a"), audit.NewChain("chn_a")
		first := &audit.Event{Type: audit.TypeStart}
		line, err := sealed.Seal(first, t0)
		if err != nil {
			t.Fatal(err)
		}
		var w bytes.Buffer
		w.WriteString("earlier lines\n")
		if err := to.SealTo(&w, &audit.Event{Type: audit.TypeStart}, t0); err != nil {
			t.Fatal(err)
		}
		before := w.String()
		if before != "earlier lines\n"+string(line)+"\n" {
			t.Fatalf("SealTo wrote %q, want %q", before, "earlier lines\n"+string(line)+"\n")
		}
		var evCopy *audit.Event
		if ev != nil {
			cp := *ev
			evCopy = &cp
		}
		_, errSeal := sealed.Seal(ev, t0.Add(time.Second))
		errTo := to.SealTo(&w, evCopy, t0.Add(time.Second))
		if errSeal == nil || errTo == nil || errSeal.Error() != errTo.Error() {
			t.Errorf("#%d: Seal() = %v, SealTo() = %v; want the same error", i, errSeal, errTo)
		}
		if w.String() != before {
			t.Errorf("#%d: a refused SealTo changed the buffer", i)
		}
		s1, h1 := sealed.Head()
		if s2, h2 := to.Head(); s1 != s2 || h1 != h2 || s2 != 1 {
			t.Errorf("#%d: Head() after refusal: Seal %d %s, SealTo %d %s; want seq 1 for both", i, s1, h1, s2, h2)
		}
	}

	// The clock steps back: both keep the last time.
	sealed, to := audit.NewChain("chn_a"), audit.NewChain("chn_a")
	var w bytes.Buffer
	var want []byte
	for _, now := range []time.Time{t0, t0.Add(-time.Hour), t0.Add(time.Minute)} {
		line, err := sealed.Seal(&audit.Event{Type: audit.TypeUse}, now)
		if err != nil {
			t.Fatal(err)
		}
		want = append(append(want, line...), '\n')
		if err := to.SealTo(&w, &audit.Event{Type: audit.TypeUse}, now); err != nil {
			t.Fatal(err)
		}
		if !sealed.LastTime().Equal(to.LastTime()) {
			t.Errorf("LastTime(): Seal %v, SealTo %v", sealed.LastTime(), to.LastTime())
		}
	}
	if !bytes.Equal(w.Bytes(), want) {
		t.Errorf("SealTo lines differ from Seal's:\n%s", cmp.Diff(string(want), w.String()))
	}
}
