package audit_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/keytrail/keytrail/broker/audit"
)

func del(lines [][]byte, i int) [][]byte {
	out := append([][]byte(nil), lines[:i]...)
	return append(out, lines[i+1:]...)
}

func insert(lines [][]byte, i int, l []byte) [][]byte {
	out := append([][]byte(nil), lines[:i]...)
	out = append(out, l)
	return append(out, lines[i:]...)
}

func swap(lines [][]byte, i, j int) [][]byte {
	out := append([][]byte(nil), lines...)
	out[i], out[j] = out[j], out[i]
	return out
}

// interleaved seals two chains into one file: A1 B1 A2 B2 ... then a
// checkpoint of each.
func interleaved(t *testing.T) [][]byte {
	t.Helper()
	s := testSigner(t, "checkpoint.key")
	a, b := audit.NewChain("chn_A"), audit.NewChain("chn_B")
	now := goldenStart
	var lines [][]byte
	seal := func(c *audit.Chain, ev *audit.Event) {
		l, err := c.Seal(ev, now)
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, l)
		now = now.Add(time.Millisecond)
	}
	for i := 0; i < 3; i++ {
		seal(a, &audit.Event{Type: audit.TypeUse, RequestID: fmt.Sprint("a", i)})
		seal(b, &audit.Event{Type: audit.TypeUse, RequestID: fmt.Sprint("b", i)})
	}
	for _, c := range []*audit.Chain{a, b} {
		cp, err := c.Checkpoint(context.Background(), s, "req_cp", now)
		if err != nil {
			t.Fatal(err)
		}
		seal(c, cp)
	}
	return lines
}

func TestVerify(t *testing.T) {
	golden := sealGolden(t)
	keys := testKeys(t, "checkpoint.key")
	real, other := testSigner(t, "checkpoint.key"), testSigner(t, "other.key")
	withKeys := audit.VerifyOptions{Keys: keys}
	requireCP := audit.VerifyOptions{Keys: keys, RequireCheckpoint: true}

	// An attacker who cannot sign appends a line after line 2, correctly
	// linked to it.
	attacker, err := audit.ResumeChain(golden[1])
	if err != nil {
		t.Fatal(err)
	}
	forgedLine, err := attacker.Seal(&audit.Event{Type: audit.TypeIssue, Workload: "evil"}, goldenStart.Add(2*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	// Checkpoint 5 re-signed with the other key over the right head.
	resign := func(s *audit.Ed25519Signer, keyID string) func(*audit.Event) {
		return func(ev *audit.Event) {
			msg, err := audit.CheckpointMessage(ev)
			if err != nil {
				t.Fatal(err)
			}
			sig, _ := s.Sign(context.Background(), msg)
			ev.Checkpoint.Signature = base64.StdEncoding.EncodeToString(sig)
			ev.Checkpoint.KeyID = keyID
		}
	}
	file := func(lines [][]byte) [][]byte { return [][]byte{joinLines(lines)} }
	ilv := interleaved(t)
	// The sink writes its checkpoints with a request_id.
	withRequestID := func() [][]byte {
		c, err := audit.ResumeChain(golden[9])
		if err != nil {
			t.Fatal(err)
		}
		cp, err := c.Checkpoint(context.Background(), real, "req_01JCHECKPOINT", goldenStart.Add(time.Second))
		if err != nil {
			t.Fatal(err)
		}
		line, err := c.Seal(cp, goldenStart.Add(time.Second))
		if err != nil {
			t.Fatal(err)
		}
		return append(append([][]byte(nil), golden[:10]...), line)
	}()
	// The last line of a chain is a checkpoint: no later prev covers it.
	finalCheckpointRespaced := append([][]byte(nil), golden...)
	finalCheckpointRespaced[10] = bytes.Replace(golden[10], []byte(`"type":"checkpoint"`), []byte(`"type": "checkpoint"`), 1)

	// Another broker's chain, signed with the same key: its files and
	// checkpoints must not pass for this chain's.
	otherChain := func() [][]byte {
		c := audit.NewChain("chn_OTHERBROKER")
		var lines [][]byte
		now := goldenStart.Add(24 * time.Hour) // another day
		for _, ev := range goldenEvents() {
			if ev == nil {
				var err error
				if ev, err = c.Checkpoint(context.Background(), real, "", now); err != nil {
					t.Fatal(err)
				}
			}
			l, err := c.Seal(ev, now)
			if err != nil {
				t.Fatal(err)
			}
			lines = append(lines, l)
			now = now.Add(time.Millisecond)
		}
		return lines
	}()
	// Its checkpoint at seq 5, relabelled to stand for this chain's.
	replayedCheckpoint := mutateLine(t, otherChain, 4, func(ev *audit.Event) {
		g, err := audit.ParseLine(golden[4])
		if err != nil {
			t.Fatal(err)
		}
		ev.Chain, ev.Prev, ev.Time = g.Chain, g.Prev, g.Time
		ev.Checkpoint.HeadHash = g.Checkpoint.HeadHash
	})[4]

	tests := []struct {
		name    string
		files   [][]byte // contents of files f1, f2, ...
		opts    audit.VerifyOptions
		want    *audit.Problem // first problem without Why; nil = none
		wantWhy string
		// stats of the first chain
		wantTail, wantCheckpoints int
	}{
		{name: "ok/golden", files: file(golden), opts: withKeys, wantCheckpoints: 3},
		{name: "ok/golden-require-checkpoint", files: file(golden), opts: requireCP, wantCheckpoints: 3},
		{name: "ok/no-keys-checks-chain-only", files: file(golden), opts: audit.VerifyOptions{}, wantTail: 11},
		{
			name: "ok/verify-func-knows-key", files: file(golden), wantCheckpoints: 3,
			opts: audit.VerifyOptions{VerifyFunc: func(keyID, alg string, msg, sig []byte) error {
				if keyID != real.KeyID() {
					return audit.ErrUnknownKey
				}
				if !ed25519.Verify(real.PublicKey(), msg, sig) {
					return errors.New("bad signature")
				}
				return nil
			}},
		},
		{
			name: "fail/verify-func-unknown-key", files: file(golden), wantTail: 11,
			opts: audit.VerifyOptions{VerifyFunc: func(string, string, []byte, []byte) error { return fmt.Errorf("vault: %w", audit.ErrUnknownKey) }},
			want: &audit.Problem{File: "f1", Line: 5, Chain: goldenChain, Seq: 5}, wantWhy: "checkpoint from unknown key",
		},
		{
			name: "fail/verify-func-rejects", files: file(golden), wantTail: 11,
			opts: audit.VerifyOptions{VerifyFunc: func(string, string, []byte, []byte) error { return errors.New("bad signature") }},
			want: &audit.Problem{File: "f1", Line: 5, Chain: goldenChain, Seq: 5}, wantWhy: "does not verify",
		},
		{
			name: "fail/modified-byte", opts: withKeys, wantCheckpoints: 3,
			files: file(func() [][]byte {
				l := append([][]byte(nil), golden...)
				l[1] = bytes.Replace(l[1], []byte("payments-api"), []byte("payments-apj"), 1)
				return l
			}()),
			want: &audit.Problem{File: "f1", Line: 3, Chain: goldenChain, Seq: 3}, wantWhy: "prev hash mismatch: the previous line of this chain (f1:2) was changed",
		},
		{
			name: "fail/modified-line-before-checkpoint", opts: withKeys, wantCheckpoints: 2, wantTail: 3,
			files: file(mutateLine(t, golden, 9, func(ev *audit.Event) { ev.Details["sha256"] = "abd" })),
			want:  &audit.Problem{File: "f1", Line: 11, Chain: goldenChain, Seq: 11}, wantWhy: "prev hash mismatch",
		},
		{
			name: "fail/inserted-forged-line", opts: withKeys, wantCheckpoints: 3,
			files: file(insert(golden, 2, forgedLine)),
			want:  &audit.Problem{File: "f1", Line: 4, Chain: goldenChain, Seq: 3}, wantWhy: "seq 3 after seq 3 (f1:3): a line was duplicated, inserted or reordered",
		},
		{
			name: "fail/inserted-junk-line", opts: withKeys, wantCheckpoints: 3,
			files: file(insert(golden, 2, []byte(`{"hello":"world"}`))),
			want:  &audit.Problem{File: "f1", Line: 3}, wantWhy: `unknown field "hello"`,
		},
		{
			name: "fail/deleted-line", opts: withKeys, wantCheckpoints: 3,
			files: file(del(golden, 2)),
			want:  &audit.Problem{File: "f1", Line: 3, Chain: goldenChain, Seq: 4}, wantWhy: "seq gap: expected 3, got 4",
		},
		{
			name: "fail/reordered-lines", opts: withKeys, wantCheckpoints: 2,
			files: file(swap(golden, 2, 3)),
			want:  &audit.Problem{File: "f1", Line: 3, Chain: goldenChain, Seq: 4}, wantWhy: "seq gap: expected 3, got 4",
		},
		{
			name: "fail/deleted-first-line", opts: withKeys, wantCheckpoints: 3,
			files: file(del(golden, 0)),
			want:  &audit.Problem{File: "f1", Line: 1, Chain: goldenChain, Seq: 2}, wantWhy: "chain starts at seq 2, not 1: earlier lines or files are missing",
		},
		{
			// The last line is a checkpoint: without it the lines it
			// covered are an unsigned tail, counted.
			name: "ok/deleted-last-line-reported-as-unsigned-tail", opts: withKeys,
			files: file(del(golden, 10)), wantTail: 2, wantCheckpoints: 2,
		},
		{
			name: "fail/deleted-last-line-require-checkpoint", opts: requireCP,
			files: file(del(golden, 10)), wantTail: 2, wantCheckpoints: 2,
			want: &audit.Problem{File: "f1", Line: 9, Chain: goldenChain, Seq: 9}, wantWhy: "2 line(s) from here to the end of the chain are not covered by a verified checkpoint",
		},
		{
			name: "fail/duplicated-line", opts: withKeys, wantCheckpoints: 3,
			files: file(insert(golden, 6, golden[5])),
			want:  &audit.Problem{File: "f1", Line: 7, Chain: goldenChain, Seq: 6}, wantWhy: "seq 6 after seq 6",
		},
		{
			name: "fail/dropped-checkpoint", opts: withKeys, wantCheckpoints: 2,
			files: file(del(golden, 4)),
			want:  &audit.Problem{File: "f1", Line: 5, Chain: goldenChain, Seq: 6}, wantWhy: "seq gap: expected 5, got 6",
		},
		{
			name: "ok/truncated-after-checkpoint-reported-as-unsigned-tail", opts: withKeys,
			files: file(golden[:10]), wantTail: 2, wantCheckpoints: 2,
		},
		{
			name: "fail/truncated-after-checkpoint-require-checkpoint", opts: requireCP,
			files: file(golden[:10]), wantTail: 2, wantCheckpoints: 2,
			want: &audit.Problem{File: "f1", Line: 9, Chain: goldenChain, Seq: 9}, wantWhy: "2 line(s) from here to the end of the chain are not covered",
		},
		{
			name: "fail/truncated-into-signed-part-require-checkpoint", opts: requireCP,
			files: file(golden[:7]), wantTail: 2, wantCheckpoints: 1,
			want: &audit.Problem{File: "f1", Line: 6, Chain: goldenChain, Seq: 6}, wantWhy: "not covered by a verified checkpoint",
		},
		{
			name: "fail/require-checkpoint-without-keys", opts: audit.VerifyOptions{RequireCheckpoint: true},
			files: file(golden), wantTail: 11,
			want: &audit.Problem{File: "f1", Line: 1, Chain: goldenChain, Seq: 1}, wantWhy: "11 line(s)",
		},
		{
			name: "fail/torn-last-line", opts: withKeys, wantCheckpoints: 3,
			files: [][]byte{append(joinLines(golden), golden[0][:10]...)},
			want:  &audit.Problem{File: "f1", Line: 12}, wantWhy: "incomplete last line",
		},
		{
			name: "fail/empty-line", opts: withKeys, wantCheckpoints: 3,
			files: file(insert(golden, 11, nil)),
			want:  &audit.Problem{File: "f1", Line: 12}, wantWhy: "empty line",
		},
		{
			name: "fail/crlf", opts: withKeys,
			files: [][]byte{bytes.ReplaceAll(joinLines(golden), []byte("\n"), []byte("\r\n"))},
			want:  &audit.Problem{File: "f1", Line: 1}, wantWhy: "malformed",
		},
		{
			name: "fail/forged-signature", opts: withKeys, wantCheckpoints: 2,
			files: file(mutateLine(t, golden, 4, func(ev *audit.Event) {
				ev.Checkpoint.Signature = base64.StdEncoding.EncodeToString(make([]byte, ed25519.SignatureSize))
			})),
			want: &audit.Problem{File: "f1", Line: 5, Chain: goldenChain, Seq: 5}, wantWhy: "checkpoint signature does not verify with key " + real.KeyID(),
		},
		{
			name: "fail/signature-not-base64", opts: withKeys, wantCheckpoints: 2,
			files: file(mutateLine(t, golden, 4, func(ev *audit.Event) { ev.Checkpoint.Signature = "!!" })),
			want:  &audit.Problem{File: "f1", Line: 5, Chain: goldenChain, Seq: 5}, wantWhy: "not base64",
		},
		{
			name: "fail/checkpoint-signed-by-another-key", opts: withKeys, wantCheckpoints: 2,
			files: file(mutateLine(t, golden, 4, resign(other, other.KeyID()))),
			want:  &audit.Problem{File: "f1", Line: 5, Chain: goldenChain, Seq: 5}, wantWhy: fmt.Sprintf("checkpoint from unknown key %q", other.KeyID()),
		},
		{
			name: "fail/checkpoint-signed-by-another-key-claiming-ours", opts: withKeys, wantCheckpoints: 2,
			files: file(mutateLine(t, golden, 4, resign(other, real.KeyID()))),
			want:  &audit.Problem{File: "f1", Line: 5, Chain: goldenChain, Seq: 5}, wantWhy: "does not verify",
		},
		{
			name: "ok/checkpoint-by-second-known-key", opts: audit.VerifyOptions{Keys: testKeys(t, "checkpoint.key", "other.key")}, wantCheckpoints: 3,
			// Only the last checkpoint: re-signing changes the line's bytes.
			files: file(mutateLine(t, golden, 10, resign(other, other.KeyID()))),
		},
		{name: "ok/checkpoint-with-request-id", files: file(withRequestID), opts: requireCP, wantCheckpoints: 3},
		{
			name: "fail/final-checkpoint-line-given-other-fields", opts: requireCP, wantCheckpoints: 3,
			files: file(mutateLine(t, golden, 10, func(ev *audit.Event) {
				ev.IssuanceID = "iss_FORGED"
				ev.Workload = "evil"
				ev.Credential = &audit.Credential{Accessor: "acc_forged"}
				ev.Reason = "rewritten after the fact"
			})),
			want: &audit.Problem{File: "f1", Line: 11, Chain: goldenChain, Seq: 11}, wantWhy: "checkpoint line carries fields a checkpoint is not written with",
		},
		{
			// A version 2 checkpoint signs its own time and request_id.
			name: "fail/final-checkpoint-time-moved", opts: withKeys, wantCheckpoints: 2, wantTail: 3,
			files: file(mutateLine(t, golden, 10, func(ev *audit.Event) { ev.Time = "2025-01-02T04:00:00.000000000Z" })),
			want:  &audit.Problem{File: "f1", Line: 11, Chain: goldenChain, Seq: 11}, wantWhy: "checkpoint signature does not verify with key " + real.KeyID(),
		},
		{
			name: "fail/final-checkpoint-request-id-changed", opts: withKeys, wantCheckpoints: 2, wantTail: 3,
			files: file(mutateLine(t, golden, 10, func(ev *audit.Event) { ev.RequestID = "req_forged" })),
			want:  &audit.Problem{File: "f1", Line: 11, Chain: goldenChain, Seq: 11}, wantWhy: "checkpoint signature does not verify with key " + real.KeyID(),
		},
		{
			name: "fail/final-checkpoint-request-id-removed", opts: withKeys, wantCheckpoints: 2, wantTail: 3,
			files: file(mutateLine(t, golden, 10, func(ev *audit.Event) { ev.RequestID = "" })),
			want:  &audit.Problem{File: "f1", Line: 11, Chain: goldenChain, Seq: 11}, wantWhy: "checkpoint signature does not verify with key " + real.KeyID(),
		},
		{
			// Taken back to version 1, its signature is no version 1
			// signature of the head.
			name: "fail/final-checkpoint-version-removed", opts: withKeys, wantCheckpoints: 2, wantTail: 3,
			files: file(mutateLine(t, golden, 10, func(ev *audit.Event) { ev.Checkpoint.Version = 0 })),
			want:  &audit.Problem{File: "f1", Line: 11, Chain: goldenChain, Seq: 11}, wantWhy: "checkpoint signature does not verify with key " + real.KeyID(),
		},
		{
			name: "fail/checkpoint-version-unknown", opts: withKeys, wantCheckpoints: 2, wantTail: 3,
			files: file(mutateLine(t, golden, 10, func(ev *audit.Event) { ev.Checkpoint.Version = 3 })),
			want:  &audit.Problem{File: "f1", Line: 11, Chain: goldenChain, Seq: 11}, wantWhy: "checkpoint version 3 is not one this verifier knows",
		},
		{
			name: "fail/final-checkpoint-line-given-details", opts: withKeys, wantCheckpoints: 3,
			files: file(mutateLine(t, golden, 10, func(ev *audit.Event) { ev.Details = map[string]any{"note": "x"} })),
			want:  &audit.Problem{File: "f1", Line: 11, Chain: goldenChain, Seq: 11}, wantWhy: "carries fields",
		},
		{
			name: "fail/final-checkpoint-line-re-encoded", opts: withKeys, wantCheckpoints: 3,
			files: file(finalCheckpointRespaced),
			want:  &audit.Problem{File: "f1", Line: 11, Chain: goldenChain, Seq: 11}, wantWhy: "checkpoint line is not encoded as it is written",
		},
		{
			name: "fail/checkpoint-head-not-previous-line", opts: withKeys, wantCheckpoints: 2,
			files: file(mutateLine(t, golden, 4, func(ev *audit.Event) { ev.Checkpoint.HeadSeq = 3 })),
			want:  &audit.Problem{File: "f1", Line: 5, Chain: goldenChain, Seq: 5}, wantWhy: "checkpoint head (seq 3",
		},
		{
			name: "ok/rotated-files-in-order", opts: requireCP, wantCheckpoints: 3,
			files: [][]byte{joinLines(golden[:6]), joinLines(golden[6:])},
		},
		{
			// Verify resynchronises on seq 1 of f1 (its one problem) and
			// checks seq 2..6 from there: the checkpoint at seq 5 verifies.
			name: "fail/rotated-files-swapped", opts: withKeys, wantCheckpoints: 3, wantTail: 1,
			files: [][]byte{joinLines(golden[6:]), joinLines(golden[:6])},
			want:  &audit.Problem{File: "f1", Line: 1, Chain: goldenChain, Seq: 7}, wantWhy: "chain starts at seq 7, not 1",
		},
		{
			name: "fail/rotated-file-missing", opts: withKeys, wantCheckpoints: 1,
			files: [][]byte{joinLines(golden[:4]), joinLines(golden[8:])},
			want:  &audit.Problem{File: "f2", Line: 1, Chain: goldenChain, Seq: 9}, wantWhy: "seq gap: expected 5, got 9",
		},
		{
			// A rotated file of another broker (another day) in place of
			// one of this chain's: it is not this chain's continuation.
			name: "fail/rotated-file-swapped-with-another-brokers", opts: withKeys, wantCheckpoints: 1,
			files: [][]byte{joinLines(golden[:4]), joinLines(otherChain[4:8]), joinLines(golden[8:])},
			want:  &audit.Problem{File: "f2", Line: 1, Chain: "chn_OTHERBROKER", Seq: 5}, wantWhy: "chain starts at seq 5, not 1",
		},
		{
			name: "fail/rotated-file-swapped-with-another-brokers-first", opts: withKeys, wantCheckpoints: 1,
			files: [][]byte{joinLines(golden[:4]), joinLines(otherChain[:4]), joinLines(golden[8:])},
			want:  &audit.Problem{File: "f3", Line: 1, Chain: goldenChain, Seq: 9}, wantWhy: "seq gap: expected 5, got 9",
		},
		{
			name: "fail/checkpoint-replayed-from-another-chain", opts: withKeys, wantCheckpoints: 2,
			files: file(append(append(append([][]byte(nil), golden[:4]...), replayedCheckpoint), golden[5:]...)),
			want:  &audit.Problem{File: "f1", Line: 5, Chain: goldenChain, Seq: 5}, wantWhy: "checkpoint signature does not verify with key " + real.KeyID(),
		},
		{
			name: "fail/checkpoint-of-another-chain-inserted-as-is", opts: withKeys, wantCheckpoints: 3,
			files: file(insert(golden, 4, otherChain[4])),
			want:  &audit.Problem{File: "f1", Line: 5, Chain: "chn_OTHERBROKER", Seq: 5}, wantWhy: "chain starts at seq 5, not 1",
		},
		{
			name: "fail/own-checkpoint-replayed-later", opts: withKeys, wantCheckpoints: 3,
			files: file(insert(golden, 8, golden[4])),
			want:  &audit.Problem{File: "f1", Line: 9, Chain: goldenChain, Seq: 5}, wantWhy: "seq 5 after seq 8 (f1:8): a line was duplicated, inserted or reordered",
		},
		{
			name: "ok/interleaved-chains", opts: requireCP, wantCheckpoints: 1,
			files: file(ilv),
		},
		{
			name: "fail/interleaved-line-of-other-chain-deleted", opts: withKeys, wantCheckpoints: 1,
			files: file(del(ilv, 3)), // B2
			want:  &audit.Problem{File: "f1", Line: 5, Chain: "chn_B", Seq: 3}, wantWhy: "seq gap: expected 2, got 3",
		},
		{
			name: "fail/time-goes-backwards", opts: audit.VerifyOptions{}, wantTail: 2,
			files: file(forge(t, []audit.Event{
				{V: 1, Seq: 1, Time: "2025-01-02T03:04:05.000000001Z", Chain: "c", Type: "use"},
				{V: 1, Seq: 2, Time: "2025-01-02T03:04:05.000000000Z", Chain: "c", Type: "use"},
			})),
			want: &audit.Problem{File: "f1", Line: 2, Chain: "c", Seq: 2}, wantWhy: "time goes backwards",
		},
		{
			name: "fail/time-not-fixed-width", opts: audit.VerifyOptions{}, wantTail: 1,
			files: file(forge(t, []audit.Event{{V: 1, Seq: 1, Time: "2025-01-02T03:04:05Z", Chain: "c", Type: "use"}})),
			want:  &audit.Problem{File: "f1", Line: 1, Chain: "c", Seq: 1}, wantWhy: "bad time",
		},
		{
			name: "fail/version-2", opts: audit.VerifyOptions{}, wantTail: 1,
			files: file(forge(t, []audit.Event{{V: 2, Seq: 1, Time: "2025-01-02T03:04:05.000000000Z", Chain: "c", Type: "use"}})),
			want:  &audit.Problem{File: "f1", Line: 1, Chain: "c", Seq: 1}, wantWhy: "unsupported version v=2",
		},
		{
			name: "fail/first-line-with-prev", opts: audit.VerifyOptions{}, wantTail: 1,
			files: file(forge(t, []audit.Event{
				{V: 1, Seq: 1, Time: "2025-01-02T03:04:05.000000000Z", Chain: "c", Type: "use"},
				{V: 1, Seq: 1, Time: "2025-01-02T03:04:05.000000000Z", Chain: "d", Type: "use"},
			})),
			want: &audit.Problem{File: "f1", Line: 2, Chain: "d", Seq: 1}, wantWhy: "first line of the chain has a non-empty prev",
		},
		{
			name: "fail/bad-chain-id", opts: audit.VerifyOptions{},
			files: file(forge(t, []audit.Event{{V: 1, Seq: 1, Time: "2025-01-02T03:04:05.000000000Z", Chain: "a b", Type: "use"}})),
			want:  &audit.Problem{File: "f1", Line: 1, Seq: 1}, wantWhy: "bad chain id",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var inputs []audit.Input
			for i, f := range tt.files {
				inputs = append(inputs, audit.Input{Name: fmt.Sprintf("f%d", i+1), R: bytes.NewReader(f)})
			}
			rep, err := audit.Verify(inputs, tt.opts)
			if rep == nil {
				t.Fatalf("Verify() report = nil, err %v", err)
			}
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Verify() = %v, want nil", err)
				}
			} else {
				if !errors.Is(err, audit.ErrTampered) {
					t.Fatalf("Verify() = %v, want ErrTampered", err)
				}
				first := rep.Problems[0]
				if d := cmp.Diff(*tt.want, first, cmpopts.IgnoreFields(audit.Problem{}, "Why")); d != "" {
					t.Errorf("Verify() first problem = %v, want %v (-want +got):\n%s", first, *tt.want, d)
				}
				if !strings.Contains(first.Why, tt.wantWhy) {
					t.Errorf("Verify() first problem why = %q, want it to contain %q", first.Why, tt.wantWhy)
				}
				if !strings.Contains(err.Error(), first.String()) {
					t.Errorf("Verify() error %q does not name the first problem %q", err, first)
				}
			}
			if len(rep.Chains) == 0 {
				if tt.wantTail != 0 || tt.wantCheckpoints != 0 {
					t.Fatalf("Verify() found no chain")
				}
				return
			}
			c := rep.Chains[0]
			if c.UnsignedTail != tt.wantTail || c.Checkpoints != tt.wantCheckpoints {
				t.Errorf("Verify() chain %s: unsigned tail %d, checkpoints %d; want %d, %d", c.Chain, c.UnsignedTail, c.Checkpoints, tt.wantTail, tt.wantCheckpoints)
			}
		})
	}
}

func TestVerifyReport(t *testing.T) {
	golden := sealGolden(t)
	rep, err := audit.Verify([]audit.Input{{Name: "a", R: bytes.NewReader(joinLines(golden[:10]))}}, audit.VerifyOptions{Keys: testKeys(t, "checkpoint.key")})
	if err != nil {
		t.Fatal(err)
	}
	want := &audit.Report{
		Files: 1, Lines: 10, SignaturesChecked: true,
		Chains: []audit.ChainReport{{
			Chain: goldenChain, Lines: 10, FirstSeq: 1, LastSeq: 10, LastHash: audit.HashLine(golden[9]),
			LastTime:    goldenStart.Add(9 * 1500 * time.Microsecond).Format(audit.TimeFormat),
			Checkpoints: 2, LastCheckpointSeq: 8, UnsignedTail: 2,
			// seq 8, a version 2 checkpoint: its own time is signed
			SignedSeq: 8, SignedTime: goldenStart.Add(7 * 1500 * time.Microsecond).Format(audit.TimeFormat),
		}},
	}
	if d := cmp.Diff(want, rep); d != "" {
		t.Errorf("Verify() report (-want +got):\n%s", d)
	}

	// Every tampered line is listed, capped by MaxProblems.
	bad := joinLines(del(del(golden, 8), 2))
	rep, err = audit.Verify([]audit.Input{{Name: "a", R: bytes.NewReader(bad)}}, audit.VerifyOptions{MaxProblems: 1})
	if !errors.Is(err, audit.ErrTampered) || len(rep.Problems) != 1 || rep.ProblemsOmitted != 1 {
		t.Errorf("Verify(two deletions, MaxProblems 1) = %v, %d problems, %d omitted; want 1 and 1", err, len(rep.Problems), rep.ProblemsOmitted)
	}
}

func TestVerifyFiles(t *testing.T) {
	golden := sealGolden(t)
	dir := t.TempDir()
	a, b := filepath.Join(dir, "audit.jsonl.1"), filepath.Join(dir, "audit.jsonl")
	if err := os.WriteFile(a, joinLines(golden[:5]), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(b, joinLines(golden[5:]), 0o600); err != nil {
		t.Fatal(err)
	}
	opts := audit.VerifyOptions{Keys: testKeys(t, "checkpoint.key"), RequireCheckpoint: true}
	if _, err := audit.VerifyFiles([]string{a, b}, opts); err != nil {
		t.Errorf("VerifyFiles(in order) = %v, want nil", err)
	}
	rep, err := audit.VerifyFiles([]string{b, a}, opts)
	if !errors.Is(err, audit.ErrTampered) || rep.Problems[0].File != b || rep.Problems[0].Line != 1 {
		t.Errorf("VerifyFiles(swapped) = %v, want ErrTampered at %s:1", err, b)
	}
	if _, err := audit.VerifyFiles([]string{a, filepath.Join(dir, "missing")}, opts); err == nil || errors.Is(err, audit.ErrTampered) {
		t.Errorf("VerifyFiles(missing file) = %v, want an I/O error", err)
	}
}

func TestVerifyLongLine(t *testing.T) {
	long := append([]byte(`{"v":1,"x":"`), bytes.Repeat([]byte("a"), audit.MaxLineBytes)...)
	long = append(long, "\"}\n"...)
	golden := joinLines(sealGolden(t))
	rep, err := audit.Verify([]audit.Input{{Name: "f", R: bytes.NewReader(append(long, golden...))}}, audit.VerifyOptions{})
	if !errors.Is(err, audit.ErrTampered) || len(rep.Problems) != 1 || rep.Problems[0].Line != 1 || !strings.Contains(rep.Problems[0].Why, "longer than") {
		t.Fatalf("Verify(long line) = %v, %+v; want one problem at line 1", err, rep.Problems)
	}
	if rep.Lines != 12 || rep.Chains[0].Lines != 11 {
		t.Errorf("Verify(long line) read %d lines (%d in chain), want 12 (11)", rep.Lines, rep.Chains[0].Lines)
	}
}

// TestVerifyLiveInput: the incomplete last line of a live input (a running
// writer holds it) is a batch being written: listed in BeingWritten, not
// counted, not a problem. A changed line before it still is; so is the
// incomplete last line of an input that is not live.
func TestVerifyLiveInput(t *testing.T) {
	golden := sealGolden(t)
	keys := audit.VerifyOptions{Keys: testKeys(t, "checkpoint.key")}
	torn := append(joinLines(golden[:10]), golden[10][:10]...)
	rep, err := audit.Verify([]audit.Input{{Name: "a", R: bytes.NewReader(torn), Live: true}}, keys)
	if err != nil || rep.Lines != 10 || !cmp.Equal(rep.BeingWritten, []audit.Pending{{File: "a", Line: 11, Bytes: 10}}) {
		t.Errorf("Verify(live, torn last line) = %v, %d lines, being written %+v; want no problem, 10 lines, line 11 (10 bytes) being written", err, rep.Lines, rep.BeingWritten)
	}
	changed := append(joinLines(mutateLine(t, golden[:10], 3, func(e *audit.Event) { e.RequestID = "req_changed" })), golden[10][:10]...)
	rep, err = audit.Verify([]audit.Input{{Name: "a", R: bytes.NewReader(changed), Live: true}}, keys)
	if !errors.Is(err, audit.ErrTampered) || len(rep.Problems) != 1 || rep.Problems[0].Line != 5 {
		t.Errorf("Verify(live, line 4 changed) = %v, %+v; want one problem at line 5", err, rep.Problems)
	}
	rep, err = audit.Verify([]audit.Input{{Name: "a", R: bytes.NewReader(torn)}}, keys)
	if !errors.Is(err, audit.ErrTampered) || len(rep.BeingWritten) != 0 || len(rep.Problems) != 1 || !strings.Contains(rep.Problems[0].Why, "incomplete last line") {
		t.Errorf("Verify(not live, torn last line) = %v, %+v; want the incomplete last line as a problem", err, rep.Problems)
	}
}

// TestVerifyExpectSeq: a log cut right after a checkpoint verifies (nothing
// in the files shows the cut); with the seq the chain was seen to reach
// elsewhere (ExpectSeq, e.g. keytrail_audit_last_seq as monitoring kept it)
// the cut is a problem naming the chain's end and the lines missing.
func TestVerifyExpectSeq(t *testing.T) {
	golden := sealGolden(t) // 11 lines, checkpoints at seq 5, 8 and 11
	other, err := audit.NewChain("chn_other").Seal(&audit.Event{Type: audit.TypeStart}, goldenStart)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		lines  [][]byte
		expect map[string]uint64
		want   string // the problem, "" for none
		line   int
	}{
		{name: "ok/reaches", lines: golden, expect: map[string]uint64{"": 11}},
		{name: "ok/beyond", lines: golden, expect: map[string]uint64{goldenChain: 8}},
		{name: "ok/cut-unseen-without-expect", lines: golden[:8]},
		{name: "fail/cut-after-checkpoint", lines: golden[:8], expect: map[string]uint64{"": 11},
			want: "the chain ends at seq 8, before seq 11, which it was seen to reach: lines 9..11 were removed from its end", line: 8},
		{name: "fail/cut-by-chain", lines: golden[:8], expect: map[string]uint64{goldenChain: 9},
			want: "the chain ends at seq 8, before seq 9", line: 8},
		{name: "fail/chain-not-in-files", lines: golden, expect: map[string]uint64{"chn_gone": 3},
			want: "chain chn_gone is expected to reach seq 3 but is not in the files"},
		{name: "fail/which-chain", lines: append(append([][]byte(nil), golden...), other), expect: map[string]uint64{"": 3},
			want: "the files hold 2 chain(s) (" + goldenChain + ", chn_other): name the chain"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rep, err := audit.Verify([]audit.Input{{Name: "a", R: bytes.NewReader(joinLines(tt.lines))}},
				audit.VerifyOptions{Keys: testKeys(t, "checkpoint.key"), RequireCheckpoint: true, ExpectSeq: tt.expect})
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Verify() = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, audit.ErrTampered) {
				t.Fatalf("Verify() = %v, want ErrTampered", err)
			}
			// The last problem (an unsigned line of chn_other comes first).
			if p := rep.Problems[len(rep.Problems)-1]; !strings.Contains(p.Why, tt.want) || p.Line != tt.line || p.File != "a" {
				t.Errorf("Verify() problems = %v, want the last a:%d: ...%s...", rep.Problems, tt.line, tt.want)
			}
		})
	}
}

// TestVerifyTrimmedStart: once retention removed a chain's oldest files,
// the first file left starts mid-chain. Verify refused such a log outright
// (the chain does not start at seq 1), so it could never be verified again.
// With AllowTrimmedStart it verifies the chain from its first line present,
// which the first checkpoint after it still covers through the prev links:
// a change there, or a rewrite of the whole remaining prefix, is still
// found, and so is a reordering of the files left.
func TestVerifyTrimmedStart(t *testing.T) {
	golden := sealGolden(t) // 11 lines, checkpoints at seq 5, 8 and 11
	// Files as the sink rotates them: each ends with a checkpoint.
	b, c := golden[5:8], golden[8:]
	// seq 6 and 7 rewritten and relinked from the prev of seq 6, and the
	// checkpoint at seq 8 relinked and its head set to the new seq 7.
	var relinked [][]byte
	prev := ""
	for i, l := range golden[5:8] {
		ev, err := audit.ParseLine(l)
		if err != nil {
			t.Fatal(err)
		}
		if i > 0 {
			ev.Prev = prev
		}
		if ev.Checkpoint != nil {
			ev.Checkpoint.HeadHash = prev
		} else {
			ev.Reason = "rewritten"
		}
		line, err := json.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		relinked = append(relinked, line)
		prev = audit.HashLine(line)
	}
	// Another chain's lines, checkpointed, with which a file can start:
	// the golden chain's first line after them is in the middle of the
	// file.
	other := audit.NewChain("chn_01JOTHER00000000000000000")
	var others [][]byte
	for i, ev := range []*audit.Event{{Type: audit.TypeStart}, nil} {
		now := goldenStart.Add(time.Duration(i) * time.Microsecond)
		if ev == nil {
			var err error
			if ev, err = other.Checkpoint(context.Background(), testSigner(t, "checkpoint.key"), "req_ocp", now); err != nil {
				t.Fatal(err)
			}
		}
		line, err := other.Seal(ev, now)
		if err != nil {
			t.Fatal(err)
		}
		others = append(others, line)
	}
	tests := []struct {
		name  string
		files [][][]byte
		allow bool
		want  string // the first problem, "" for none
	}{
		{name: "fail/trimmed-not-allowed", files: [][][]byte{b, c}, want: "chain starts at seq 6, not 1"},
		// Retention removes whole files: a chain that starts after seq 1
		// in the middle of a file lost lines from that file.
		{name: "fail/trimmed-mid-file", files: [][][]byte{append(slices.Clone(others), b...), c}, allow: true,
			want: "chain starts at seq 6 on line 3 of its file, not on a file's first line"},
		{name: "ok/trimmed-allowed", files: [][][]byte{b, c}, allow: true},
		{name: "fail/first-line-changed", allow: true, want: "prev hash mismatch",
			files: [][][]byte{mutateLine(t, b, 0, func(ev *audit.Event) { ev.Workload = "someone-else" }), c}},
		{name: "fail/prefix-rewritten-and-relinked", allow: true, want: "checkpoint signature does not verify",
			files: [][][]byte{relinked, c}},
		{name: "fail/files-reordered", files: [][][]byte{c, b}, allow: true, want: "seq 6 after seq 11"},
		{name: "fail/first-line-without-prev", allow: true, want: "not a SHA-256 hash",
			files: [][][]byte{mutateLine(t, b, 0, func(ev *audit.Event) { ev.Prev = "" }), c}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var inputs []audit.Input
			for i, f := range tt.files {
				inputs = append(inputs, audit.Input{Name: fmt.Sprint("f", i), R: bytes.NewReader(joinLines(f))})
			}
			rep, err := audit.Verify(inputs, audit.VerifyOptions{Keys: testKeys(t, "checkpoint.key"), RequireCheckpoint: true, AllowTrimmedStart: tt.allow})
			if tt.want != "" {
				if !errors.Is(err, audit.ErrTampered) || !strings.Contains(rep.Problems[0].Why, tt.want) {
					t.Fatalf("Verify() = %v, want ErrTampered, first problem ...%s...", err, tt.want)
				}
				return
			}
			if err != nil {
				t.Fatalf("Verify() = %v, want nil", err)
			}
			want := audit.ChainReport{Chain: goldenChain, Lines: 6, FirstSeq: 6, TrimmedStart: true, LastSeq: 11,
				LastHash: audit.HashLine(golden[10]), LastTime: goldenStart.Add(10 * 1500 * time.Microsecond).Format(audit.TimeFormat),
				Checkpoints: 2, LastCheckpointSeq: 11, SignedSeq: 11, SignedTime: goldenStart.Add(10 * 1500 * time.Microsecond).Format(audit.TimeFormat)}
			if d := cmp.Diff([]audit.ChainReport{want}, rep.Chains); d != "" {
				t.Errorf("Verify() chains (-want +got):\n%s", d)
			}
		})
	}
}

// TestVerifyOneChangedTimeIsOneProblem: a line whose time was moved far
// forward is one tampered line. Verify resynchronises on every line, so
// that one change yields one problem (the next line's prev) and does not
// flag every later line as going back in time, which buried a second,
// independent change (a deleted line) under the MaxProblems cap.
func TestVerifyOneChangedTimeIsOneProblem(t *testing.T) {
	golden := sealGolden(t)
	lines := mutateLine(t, golden, 2, func(ev *audit.Event) { ev.Time = "2099-01-01T00:00:00.000000000Z" })
	lines = del(lines, 8) // seq 9
	rep, err := audit.Verify([]audit.Input{{Name: "a", R: bytes.NewReader(joinLines(lines))}}, audit.VerifyOptions{Keys: testKeys(t, "checkpoint.key"), MaxProblems: 2})
	if !errors.Is(err, audit.ErrTampered) {
		t.Fatalf("Verify(time moved, line deleted) = %v, want ErrTampered", err)
	}
	var got []string
	for _, p := range rep.Problems {
		got = append(got, fmt.Sprintf("line %d (seq %d): %.20s", p.Line, p.Seq, p.Why))
	}
	want := []string{"line 4 (seq 4): prev hash mismatch: ", "line 9 (seq 10): seq gap: expected 9,"}
	if d := cmp.Diff(want, got); d != "" || rep.ProblemsOmitted != 0 {
		t.Errorf("Verify(time moved, line deleted) problems (-want +got):\n%s%d omitted", d, rep.ProblemsOmitted)
	}
}

// TestVerifyUnreadableLineIsOneProblem: a line that cannot be read as an
// event (malformed, torn, a bad chain id) is one problem. The next line of
// its chain, whose seq skips it and whose prev links to bytes no longer in
// the file, is not a second one; but a gap larger than the unreadable lines
// that could fill it, or one with none nearby, still is.
func TestVerifyUnreadableLineIsOneProblem(t *testing.T) {
	golden := sealGolden(t)
	keys := audit.VerifyOptions{Keys: testKeys(t, "checkpoint.key")}
	garbage := []byte(`{"v":1,"seq":3,"chain":`) // a line cut short and continued
	badChain := mutateLine(t, golden, 2, func(ev *audit.Event) { ev.Chain = "has space" })[2]
	replace := func(lines [][]byte, i int, l []byte) [][]byte {
		out := append([][]byte(nil), lines...)
		out[i] = l
		return out
	}
	inter := interleaved(t) // A1 B1 A2 B2 A3 B3 cpA cpB
	// unchecked is what an unreadable line's problem adds when the chain
	// that skips it had a line before it: that line's successor was the
	// unreadable one, so no later prev checks it.
	unchecked := func(chain string, seq int, at string) string {
		return fmt.Sprintf("; the line before it in chain %s (seq %d, %s) is not checked by a later prev", chain, seq, at)
	}
	for _, tc := range []struct {
		name  string
		files [][]byte
		want  []string
		// notes[i]: how want[i]'s problem ends ("": it names no
		// unchecked line).
		notes []string
	}{
		{"malformed-middle-line", [][]byte{joinLines(replace(golden, 2, garbage))},
			[]string{"f1:3: malformed"}, []string{unchecked(goldenChain, 2, "f1:2")}},
		{"bad-chain-id", [][]byte{joinLines(replace(golden, 2, badChain))},
			[]string{"f1:3: bad chain id"}, []string{unchecked(goldenChain, 2, "f1:2")}},
		{"two-malformed-lines-in-a-row", [][]byte{joinLines(replace(replace(golden, 2, garbage), 3, []byte("x")))},
			[]string{"f1:3: malformed", "f1:4: malformed"}, []string{unchecked(goldenChain, 2, "f1:2"), ""}},
		{"malformed-first-line", [][]byte{joinLines(replace(golden, 0, garbage))},
			[]string{"f1:1: malformed"}, []string{""}},
		{"torn-last-line-of-a-rotated-file", [][]byte{append(joinLines(golden[:5]), golden[5][:20]...), joinLines(golden[6:])},
			[]string{"f1:6: incomplete last line"}, []string{unchecked(goldenChain, 5, "f1:5")}},
		{"malformed-line-of-the-other-chain", [][]byte{joinLines(replace(inter, 3, garbage))},
			[]string{"f1:4: malformed"}, []string{unchecked("chn_B", 1, "f1:2")}},
		// Independent causes stay apart.
		{"malformed-line-and-the-next-deleted", [][]byte{joinLines(del(replace(golden, 2, garbage), 3))},
			[]string{"f1:3: malformed", "f1:4: seq gap: expected 3, got 5"}, []string{"", ""}},
		{"malformed-line-and-a-later-deletion", [][]byte{joinLines(del(replace(golden, 2, garbage), 7))},
			[]string{"f1:3: malformed", "f1:8: seq gap: expected 8, got 9"}, []string{unchecked(goldenChain, 2, "f1:2"), ""}},
		{"malformed-line-and-a-deletion-in-the-other-chain", [][]byte{joinLines(del(replace(inter, 0, garbage), 3))},
			[]string{"f1:1: malformed", "f1:5: seq gap: expected 2, got 3"}, []string{"", ""}},
		// One unreadable line stands for one line: it does not also hide
		// a deletion in the other chain, whose gap spans it too.
		{"malformed-line-and-a-deletion-across-it-in-the-other-chain", [][]byte{joinLines(del(replace(inter, 2, garbage), 3))},
			[]string{"f1:3: malformed", "f1:5: seq gap: expected 2, got 3"}, []string{unchecked("chn_A", 1, "f1:1"), ""}},
		{"torn-line-and-a-deletion-across-it-in-the-other-chain", [][]byte{append(joinLines(inter[:2]), inter[2][:20]...), joinLines(del(inter, 3)[3:])},
			[]string{"f1:3: incomplete last line", "f2:2: seq gap: expected 2, got 3"}, []string{unchecked("chn_A", 1, "f1:1"), ""}},
		// An unreadable line no chain took (here an inserted one), read
		// before the last line of chain B, does not excuse B's gap across
		// another unreadable line, which A took.
		{"unclaimed-line-before-the-window-and-a-deletion-across-a-claimed-one", [][]byte{joinLines(insert(replace(del(inter, 5), 4, garbage), 2, garbage))},
			[]string{"f1:3: malformed", "f1:6: malformed", "f1:8: seq gap: expected 3, got 4"}, []string{"", unchecked("chn_A", 2, "f1:4"), ""}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var in []audit.Input
			for i, f := range tc.files {
				in = append(in, audit.Input{Name: fmt.Sprint("f", i+1), R: bytes.NewReader(f)})
			}
			rep, err := audit.Verify(in, keys)
			if !errors.Is(err, audit.ErrTampered) {
				t.Fatalf("Verify() = %v, want ErrTampered", err)
			}
			var got []string
			for _, p := range rep.Problems {
				s := fmt.Sprintf("%s:%d: %s", p.File, p.Line, p.Why)
				got = append(got, s)
			}
			ok := len(got) == len(tc.want)
			for i := 0; ok && i < len(got); i++ {
				ok = strings.HasPrefix(got[i], tc.want[i])
				if tc.notes[i] == "" {
					ok = ok && !strings.Contains(got[i], "not checked by a later prev")
				} else {
					ok = ok && strings.HasSuffix(got[i], tc.notes[i])
				}
			}
			if !ok {
				t.Errorf("Verify() problems =\n%s\nwant one a cause:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

// TestVerifyVersion1Checkpoints: testdata/golden-v1.jsonl is the golden
// log as brokers before checkpoint version 2 sealed it (never regenerated):
// its checkpoints sign the head only, and it must keep verifying, alone and
// continued by a broker that writes version 2 checkpoints. Its last
// checkpoint line's time is not signed: moved, the log still verifies, and
// the report's signed seq and time stay those of the head.
func TestVerifyVersion1Checkpoints(t *testing.T) {
	v1 := splitLines(readTestdata(t, "golden-v1.jsonl"))
	if len(v1) != 11 || bytes.Contains(joinLines(v1), []byte(`"checkpoint":{"version"`)) {
		t.Fatalf("testdata/golden-v1.jsonl is not the version 1 golden log (11 lines, no checkpoint version)")
	}
	opts := audit.VerifyOptions{Keys: testKeys(t, "checkpoint.key"), RequireCheckpoint: true}
	lineTime := func(i int) string {
		return goldenStart.Add(time.Duration(i) * 1500 * time.Microsecond).Format(audit.TimeFormat)
	}
	verify := func(lines [][]byte) (*audit.Report, error) {
		return audit.Verify([]audit.Input{{Name: "v1", R: bytes.NewReader(joinLines(lines))}}, opts)
	}

	rep, err := verify(v1)
	if err != nil {
		t.Fatalf("Verify(version 1 log) = %v, want nil", err)
	}
	want := audit.ChainReport{Chain: goldenChain, Lines: 11, FirstSeq: 1, LastSeq: 11, LastHash: audit.HashLine(v1[10]),
		LastTime: lineTime(10), Checkpoints: 3, LastCheckpointSeq: 11, SignedSeq: 10, SignedTime: lineTime(9)}
	if d := cmp.Diff([]audit.ChainReport{want}, rep.Chains); d != "" {
		t.Errorf("Verify(version 1 log) chains (-want +got):\n%s", d)
	}

	moved := mutateLine(t, v1, 10, func(ev *audit.Event) { ev.Time = "2025-01-02T04:00:00.000000000Z" })
	if rep, err = verify(moved); err != nil {
		t.Fatalf("Verify(version 1 log, last checkpoint's time moved) = %v, want nil: a version 1 checkpoint does not sign it", err)
	}
	if c := rep.Chains[0]; c.LastTime != "2025-01-02T04:00:00.000000000Z" || c.SignedSeq != 10 || c.SignedTime != lineTime(9) {
		t.Errorf("Verify(version 1 log, time moved) chain = %+v; want last time moved, signed seq 10 at %s", c, lineTime(9))
	}

	changed := mutateLine(t, v1, 6, func(ev *audit.Event) { ev.Workload = "evil" })
	if _, err := verify(changed); !errors.Is(err, audit.ErrTampered) {
		t.Errorf("Verify(version 1 log, a line changed) = %v, want ErrTampered", err)
	}
	forged := mutateLine(t, v1, 10, func(ev *audit.Event) { ev.Checkpoint.HeadSeq, ev.Checkpoint.HeadHash = 9, audit.HashLine(v1[8]) })
	if _, err := verify(forged); !errors.Is(err, audit.ErrTampered) {
		t.Errorf("Verify(version 1 log, checkpoint head changed) = %v, want ErrTampered", err)
	}

	// A broker upgraded in the middle of the chain continues it with
	// version 2 checkpoints.
	c, err := audit.ResumeChain(v1[10])
	if err != nil {
		t.Fatal(err)
	}
	now := goldenStart.Add(time.Minute)
	l1, err := c.Seal(&audit.Event{Type: audit.TypeStart}, now)
	if err != nil {
		t.Fatal(err)
	}
	cp, err := c.Checkpoint(context.Background(), testSigner(t, "checkpoint.key"), "req_cpv2", now)
	if err != nil {
		t.Fatal(err)
	}
	l2, err := c.Seal(cp, now)
	if err != nil {
		t.Fatal(err)
	}
	mixed := append(append([][]byte(nil), v1...), l1, l2)
	if rep, err = verify(mixed); err != nil {
		t.Fatalf("Verify(version 1 log continued with version 2) = %v, want nil", err)
	}
	if c := rep.Chains[0]; c.Checkpoints != 4 || c.SignedSeq != 13 || c.SignedTime != now.Format(audit.TimeFormat) {
		t.Errorf("Verify(mixed) chain = %+v; want 4 checkpoints, signed seq 13 at %s", c, now.Format(audit.TimeFormat))
	}
}

// TestVerifyUnreadableLinesBeyondMaxProblems: unreadable lines whose
// problem is not in the report (beyond MaxProblems) still count for the
// seqs their chain skips, and completing their problem's text is skipped.
func TestVerifyUnreadableLinesBeyondMaxProblems(t *testing.T) {
	golden := sealGolden(t)
	garbage := []byte("x")
	lines := append([][]byte(nil), golden...)
	lines[2], lines[5] = garbage, garbage
	rep, err := audit.Verify([]audit.Input{{Name: "f1", R: bytes.NewReader(joinLines(lines))}},
		audit.VerifyOptions{Keys: testKeys(t, "checkpoint.key"), MaxProblems: 1})
	if !errors.Is(err, audit.ErrTampered) {
		t.Fatalf("Verify() = %v, want ErrTampered", err)
	}
	want := fmt.Sprintf("malformed audit line: not a single JSON object with nothing around it; the line before it in chain %s (seq 2, f1:2) is not checked by a later prev", goldenChain)
	if len(rep.Problems) != 1 || rep.ProblemsOmitted != 1 || rep.Problems[0].Line != 3 || rep.Problems[0].Why != want {
		t.Errorf("Verify() problems = %+v, omitted %d; want f1:3 %q and 1 omitted (the second unreadable line, no seq gap)", rep.Problems, rep.ProblemsOmitted, want)
	}
}
