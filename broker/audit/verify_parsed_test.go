package audit_test

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/keytrail/keytrail/broker/audit"
)

// VerifyOptions.Parsed is called once for each complete line, in order,
// with what ParseLine makes of it (a line longer than MaxLineBytes is
// malformed), and not for an incomplete last line; its events are the
// lines' events.
func TestVerifyParsed(t *testing.T) {
	lines := sealGolden(t)
	long := bytes.Repeat([]byte("x"), audit.MaxLineBytes+1)
	file := joinLines([][]byte{lines[0], []byte("{not json"), long, lines[1]})
	file = append(file, lines[2][:10]...) // torn
	var got []string
	rep, err := audit.Verify([]audit.Input{{Name: "a.jsonl", R: bytes.NewReader(file)}}, audit.VerifyOptions{
		Parsed: func(ev *audit.Event, err error) {
			switch {
			case err != nil && errors.Is(err, audit.ErrMalformed) && ev == nil:
				got = append(got, "malformed")
			case err == nil && ev != nil:
				got = append(got, fmt.Sprintf("%s/%d", ev.Type, ev.Seq))
			default:
				got = append(got, fmt.Sprintf("ev %v, err %v", ev, err))
			}
		}})
	if !errors.Is(err, audit.ErrTampered) || rep.Lines != 5 {
		t.Fatalf("Verify = %d lines, %v; want 5 lines and problems", rep.Lines, err)
	}
	want := []string{}
	for _, l := range [][]byte{lines[0], nil, nil, lines[1]} {
		if l == nil {
			want = append(want, "malformed")
			continue
		}
		ev, err := audit.ParseLine(l)
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, fmt.Sprintf("%s/%d", ev.Type, ev.Seq))
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("Parsed calls = %v, want %v", got, want)
	}
}
