package auditfile

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
)

// revokeParts returns n revoke events of about 300 KiB each, as the parts of
// one large revocation are (details.part of details.parts).
func revokeParts(n int) []*audit.Event {
	evs := make([]*audit.Event, n)
	for i := range evs {
		evs[i] = &audit.Event{Type: audit.TypeRevoke, RequestID: "req_big", RevocationID: "rev_big",
			Reason: strings.Repeat("x", 300<<10), Details: map[string]any{"part": i + 1, "parts": n}}
	}
	return evs
}

// TestAppendBatch: the events of one AppendBatch (the parts of a large
// revocation) are durable together: sealed as consecutive lines, written
// with one write() and one fsync (or one journal write), and when the write
// fails part way, or one of them cannot be sealed, none of them is left in
// the file, also after a crash and a journal replay.
func TestAppendBatch(t *testing.T) {
	tests := []struct {
		name    string
		journal bool
		fault   func(*faults)
		// unsealable: the last event cannot be sealed (no type).
		unsealable bool
	}{
		{name: "ok/fsync"},
		{name: "ok/journal", journal: true},
		{name: "fail/partial-write", fault: func(f *faults) { f.writeHalf = true }},
		{name: "fail/fsync", fault: func(f *faults) { f.sync = true }},
		{name: "fail/partial-write-journal", journal: true, fault: func(f *faults) { f.writeHalf = true }},
		{name: "fail/unsealable-last-event", unsealable: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			signer, keys := newSigner(t)
			fl := &faults{}
			path := filepath.Join(t.TempDir(), "audit.jsonl")
			o := Options{Path: path, Now: newClock().Now, Signer: signer, Journal: tt.journal}
			s := openCrashable(t, o, faultSeams(fl))
			appendIDs(t, s, "req_1", "req_2")
			before, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			st0 := s.Stats()
			fl.mu.Lock()
			writes0, syncs0 := fl.writes, fl.syncs
			fl.mu.Unlock()

			parts := revokeParts(3)
			if tt.unsealable {
				parts[2].Type = ""
			}
			if tt.fault != nil {
				fl.set(tt.fault)
			}
			err = s.AppendBatch(context.Background(), parts)
			fl.set(func(f *faults) { f.writeHalf, f.sync = false, false })
			ok := tt.fault == nil && !tt.unsealable
			switch {
			case ok && err != nil:
				t.Fatalf("AppendBatch() = %v", err)
			case tt.fault != nil && !errors.Is(err, broker.ErrUnavailable):
				t.Fatalf("AppendBatch(failing disk) = %v, want ErrUnavailable", err)
			case tt.unsealable && err == nil:
				t.Fatal("AppendBatch(an event without type) = nil, want an error")
			}
			if ok {
				st := s.Stats()
				fl.mu.Lock()
				writes, syncs := fl.writes-writes0, fl.syncs-syncs0
				fl.mu.Unlock()
				wantSyncs := 1
				if tt.journal {
					wantSyncs = 0 // the journal write makes it durable
				}
				if st.Batches-st0.Batches != 1 || st.Events-st0.Events != 3 || writes != 1 || syncs != wantSyncs {
					t.Errorf("AppendBatch(3 parts): %d batches, %d events, %d write(), %d fsync; want 1, 3, 1, %d",
						st.Batches-st0.Batches, st.Events-st0.Events, writes, syncs, wantSyncs)
				}
				for i, ev := range parts {
					if ev.Seq != st0.Seq+uint64(i)+1 {
						t.Errorf("part %d sealed with seq %d, want %d (consecutive after %d)", i+1, ev.Seq, st0.Seq+uint64(i)+1, st0.Seq)
					}
				}
			} else if after, _ := os.ReadFile(path); !bytes.Equal(after, before) {
				t.Errorf("file after a failed AppendBatch = %d bytes, want the %d durable bytes only", len(after), len(before))
			}

			// The disk works again: the next event links to the last
			// durable line.
			if err := s.Ping(context.Background()); err != nil {
				t.Fatalf("Ping() after the disk recovered = %v", err)
			}
			appendIDs(t, s, "req_3")
			// A crash: the file keeps what was synced, the journal the rest.
			if tt.journal {
				if err := os.Truncate(path, journalOf(t, path).base); err != nil {
					t.Fatal(err)
				}
			}
			s2 := openT(t, o, seams{})
			if err := s2.Close(); err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, ev := range readEvents(t, path) {
				if ev.Type != audit.TypeCheckpoint {
					got = append(got, fmt.Sprintf("%s:%v", ev.RequestID, ev.Details["part"]))
				}
			}
			want := []string{"req_1:<nil>", "req_2:<nil>", "req_3:<nil>"}
			if ok {
				want = slices.Insert(want, 2, "req_big:1", "req_big:2", "req_big:3")
			}
			if !slices.Equal(got, want) {
				t.Errorf("events in the file = %v, want %v", got, want)
			}
			if _, err := verify(t, keys, true, path); err != nil {
				t.Errorf("Verify() = %v", err)
			}
		})
	}
}
