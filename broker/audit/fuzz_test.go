package audit_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/keytrail/keytrail/broker/audit"
)

// FuzzParseLine: ParseLine never panics, and whatever it accepts survives a
// re-encoding unchanged.
func FuzzParseLine(f *testing.F) {
	for _, l := range splitLines(readTestdata(f, "golden.jsonl")) {
		f.Add(l)
	}
	for _, s := range []string{"", "{}", "{} ", `{"v":1}{}`, `{"hello":1}`, `{"details":{"a":[1,2.5,null,true]}}`, "{\"reason\":\"\xff\"}", `{"seq":-1}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := audit.ParseLine(b)
		if err != nil {
			if ev != nil || !errors.Is(err, audit.ErrMalformed) {
				t.Fatalf("ParseLine(%q) = %v, %v; want nil and ErrMalformed", b, ev, err)
			}
			return
		}
		again, err := json.Marshal(ev)
		if err != nil {
			t.Fatalf("json.Marshal(ParseLine(%q)) = %v", b, err)
		}
		ev2, err := audit.ParseLine(again)
		if err != nil {
			t.Fatalf("ParseLine(re-encoded %q) = %v", again, err)
		}
		// omitempty drops empty maps and slices: nil and empty are equal.
		if d := cmp.Diff(ev, ev2, cmpopts.EquateEmpty()); d != "" {
			t.Fatalf("ParseLine(re-encoded %q) differs (-first +second):\n%s", b, d)
		}
	})
}

// FuzzVerify: Verify never panics on any file, always returns a report, and
// accounts for every line it read.
func FuzzVerify(f *testing.F) {
	golden := readTestdata(f, "golden.jsonl")
	lines := splitLines(golden)
	f.Add(golden)
	f.Add(joinLines(lines[:5]))
	f.Add(joinLines(del(lines, 3)))
	f.Add(append(golden, '{'))
	f.Add([]byte("\n\n"))
	keys := testKeys(f, "checkpoint.key")
	f.Fuzz(func(t *testing.T, b []byte) {
		rep, err := audit.Verify([]audit.Input{{Name: "f", R: bytes.NewReader(b)}}, audit.VerifyOptions{Keys: keys, RequireCheckpoint: true})
		if rep == nil {
			t.Fatalf("Verify() report = nil, err %v", err)
		}
		if (err == nil) != rep.OK() {
			t.Fatalf("Verify() = %v with %d problems", err, len(rep.Problems))
		}
		inChains := 0
		for _, c := range rep.Chains {
			inChains += c.Lines
			if c.UnsignedTail > c.Lines || c.Checkpoints > c.Lines {
				t.Fatalf("Verify() chain report %+v is inconsistent", c)
			}
		}
		if inChains > rep.Lines || inChains+len(rep.Problems)+rep.ProblemsOmitted < rep.Lines {
			t.Fatalf("Verify() read %d lines, %d in chains, %d problems", rep.Lines, inChains, len(rep.Problems))
		}
	})
}

// FuzzVerifyByteFlip: changing any byte of the golden file is always
// detected, but for the time of its last line (a checkpoint: its own time
// is not signed, and it only has to stay between the previous line's and
// now).
func FuzzVerifyByteFlip(f *testing.F) {
	golden := readTestdata(f, "golden.jsonl")
	lastStart := bytes.LastIndexByte(golden[:len(golden)-1], '\n') + 1
	timeStart := lastStart + bytes.Index(golden[lastStart:], []byte(`"time":"`)) + len(`"time":"`)
	timeEnd := timeStart + bytes.IndexByte(golden[timeStart:], '"')
	for _, pos := range []uint{0, 10, 200, uint(lastStart - 1), uint(lastStart - 30), uint(lastStart + 3), uint(timeEnd + 2), uint(len(golden) - 1)} {
		f.Add(pos, byte('x'))
	}
	keys := testKeys(f, "checkpoint.key")
	f.Fuzz(func(t *testing.T, pos uint, val byte) {
		p := int(pos % uint(len(golden)))
		if golden[p] == val || (p >= timeStart && p < timeEnd) {
			return
		}
		b := bytes.Clone(golden)
		b[p] = val
		_, err := audit.Verify([]audit.Input{{Name: "f", R: bytes.NewReader(b)}}, audit.VerifyOptions{Keys: keys, RequireCheckpoint: true})
		if !errors.Is(err, audit.ErrTampered) {
			t.Fatalf("Verify(golden with byte %d set to %q) = %v, want ErrTampered", p, val, err)
		}
	})
}
