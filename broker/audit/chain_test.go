package audit_test

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker/audit"
)

var update = flag.Bool("update", false, "rewrite testdata/golden.jsonl")

func TestGolden(t *testing.T) {
	got := joinLines(sealGolden(t))
	path := filepath.Join("testdata", "golden.jsonl")
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want := readTestdata(t, "golden.jsonl")
	if !bytes.Equal(got, want) {
		t.Fatalf("sealed golden events differ from %s (run with -update if the change is intended):\n%s", path, cmp.Diff(string(want), string(got)))
	}
	// The golden file pins the encoding choices too.
	for _, s := range []string{`"prev":""`, `<script>&`, `é ✓`, `"time":"2025-01-02T03:04:05.123456789Z"`} {
		if !bytes.Contains(got, []byte(s)) {
			t.Errorf("golden.jsonl does not contain %q", s)
		}
	}
}

func TestSeal(t *testing.T) {
	t0 := time.Date(2025, 6, 1, 12, 0, 0, 0, time.FixedZone("CEST", 2*3600))
	tests := []struct {
		name    string
		chain   string
		evs     []*audit.Event
		nows    []time.Time
		want    []audit.Event // chain fields of each sealed event
		wantErr string        // error of the last Seal
	}{
		{
			name:  "ok/first-line-links-to-empty-prev",
			chain: "chn_a",
			evs:   []*audit.Event{{Type: audit.TypeStart}},
			nows:  []time.Time{t0},
			want:  []audit.Event{{V: 1, Seq: 1, Time: "2025-06-01T10:00:00.000000000Z", Chain: "chn_a", Type: audit.TypeStart}},
		},
		{
			name:  "ok/clock-step-back-keeps-last-time",
			chain: "chn_a",
			evs:   []*audit.Event{{Type: audit.TypeStart}, {Type: audit.TypeUse}},
			nows:  []time.Time{t0, t0.Add(-time.Hour)},
			want: []audit.Event{
				{V: 1, Seq: 1, Time: "2025-06-01T10:00:00.000000000Z", Chain: "chn_a", Type: audit.TypeStart},
				{V: 1, Seq: 2, Time: "2025-06-01T10:00:00.000000000Z", Chain: "chn_a", Type: audit.TypeUse},
			},
		},
		{name: "fail/no-type", chain: "chn_a", evs: []*audit.Event{{}}, nows: []time.Time{t0}, wantErr: "no type"},
		{name: "fail/nil-event", chain: "chn_a", evs: []*audit.Event{nil}, nows: []time.Time{t0}, wantErr: "nil event"},
		{name: "fail/empty-chain-id", chain: "", evs: []*audit.Event{{Type: "x"}}, nows: []time.Time{t0}, wantErr: "chain id is empty"},
		{name: "fail/chain-id-with-newline", chain: "a\nb", evs: []*audit.Event{{Type: "x"}}, nows: []time.Time{t0}, wantErr: "printable ASCII"},
		{name: "fail/checkpoint-without-field", chain: "c", evs: []*audit.Event{{Type: audit.TypeCheckpoint}}, nows: []time.Time{t0}, wantErr: "checkpoint field"},
		{name: "fail/field-on-non-checkpoint", chain: "c", evs: []*audit.Event{{Type: "use", Checkpoint: &audit.Checkpoint{}}}, nows: []time.Time{t0}, wantErr: "checkpoint field"},
		{name: "fail/unencodable-details", chain: "c", evs: []*audit.Event{{Type: "use", Details: map[string]any{"f": func() {}}}}, nows: []time.Time{t0}, wantErr: "encode use event"},
		{name: "fail/too-long", chain: "c", evs: []*audit.Event{{Type: "use", Reason: strings.Repeat("a", audit.MaxLineBytes)}}, nows: []time.Time{t0}, wantErr: "more than"},
		{name: "fail/year-10000", chain: "c", evs: []*audit.Event{{Type: "use"}}, nows: []time.Time{time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}, wantErr: "year"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := audit.NewChain(tt.chain)
			var prevLine []byte
			for i, ev := range tt.evs {
				line, err := c.Seal(ev, tt.nows[i])
				if i == len(tt.evs)-1 && tt.wantErr != "" {
					if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
						t.Fatalf("Seal() = %v, want error containing %q", err, tt.wantErr)
					}
					if seq, _ := c.Head(); seq != uint64(i) {
						t.Errorf("Head() after failed Seal = seq %d, want %d (chain must not advance)", seq, i)
					}
					return
				}
				if err != nil {
					t.Fatalf("Seal(#%d) = %v", i, err)
				}
				want := tt.want[i]
				if prevLine != nil {
					want.Prev = audit.HashLine(prevLine)
				}
				got := audit.Event{V: ev.V, Seq: ev.Seq, Time: ev.Time, Chain: ev.Chain, Prev: ev.Prev, Type: ev.Type}
				if d := cmp.Diff(want, got); d != "" {
					t.Errorf("Seal(#%d) chain fields (-want +got):\n%s", i, d)
				}
				parsed, err := audit.ParseLine(line)
				if err != nil {
					t.Fatalf("ParseLine(Seal(#%d)) = %v", i, err)
				}
				if d := cmp.Diff(ev, parsed); d != "" {
					t.Errorf("ParseLine(Seal(#%d)) differs from the sealed event (-want +got):\n%s", i, d)
				}
				if seq, hash := c.Head(); seq != ev.Seq || hash != audit.HashLine(line) {
					t.Errorf("Head() = %d, %s, want %d, %s", seq, hash, ev.Seq, audit.HashLine(line))
				}
				prevLine = line
			}
		})
	}
}

func TestResumeChain(t *testing.T) {
	lines := sealGolden(t)
	last := lines[len(lines)-1]
	tests := []struct {
		name     string
		last     []byte
		wantSeq  uint64
		wantHash string
		wantErr  string
	}{
		{name: "ok/golden-last-line", last: last, wantSeq: uint64(len(lines)), wantHash: audit.HashLine(last)},
		{name: "fail/empty", last: nil, wantErr: "empty line"},
		{name: "fail/torn", last: last[:len(last)/2], wantErr: "malformed"},
		{name: "fail/seq-zero", last: []byte(`{"v":1,"seq":0,"time":"2025-01-02T03:04:05.123456789Z","chain":"c","prev":"","type":"x"}`), wantErr: "seq 0"},
		{name: "fail/bad-time", last: []byte(`{"v":1,"seq":3,"time":"2025-01-02T03:04:05Z","chain":"c","prev":"","type":"x"}`), wantErr: "TimeFormat"},
		{name: "fail/version-2", last: []byte(`{"v":2,"seq":3,"time":"2025-01-02T03:04:05.123456789Z","chain":"c","prev":"","type":"x"}`), wantErr: "version"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := audit.ResumeChain(tt.last)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ResumeChain() = %v, want error containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ResumeChain() = %v", err)
			}
			seq, hash := c.Head()
			if seq != tt.wantSeq || hash != tt.wantHash || c.ID() != goldenChain {
				t.Fatalf("ResumeChain() head = %s %d %s, want %s %d %s", c.ID(), seq, hash, goldenChain, tt.wantSeq, tt.wantHash)
			}
			// The resumed chain continues the file: Verify accepts the
			// golden lines plus one more, and the clock may not go back.
			ev := &audit.Event{Type: audit.TypeStop}
			line, err := c.Seal(ev, goldenStart)
			if err != nil {
				t.Fatal(err)
			}
			if want := "2025-01-02T03:04:05.138456789Z"; ev.Time != want {
				t.Errorf("resumed Seal time = %s, want %s (not before the last line)", ev.Time, want)
			}
			all := joinLines(append(append([][]byte(nil), lines...), line))
			if _, err := audit.Verify([]audit.Input{{Name: "f", R: bytes.NewReader(all)}}, audit.VerifyOptions{}); err != nil {
				t.Fatalf("Verify(golden + resumed line) = %v, want nil", err)
			}
		})
	}
}
