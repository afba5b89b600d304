package audit_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/audit"
)

const goldenChain = "chn_01JGOLDEN0000000000000000"

// goldenStart is the fixed clock the golden file is sealed with.
var goldenStart = time.Date(2025, 1, 2, 3, 4, 5, 123456789, time.UTC)

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func testSigner(t testing.TB, name string) *audit.Ed25519Signer {
	t.Helper()
	s, err := audit.NewEd25519Signer(readTestdata(t, name))
	if err != nil {
		t.Fatalf("NewEd25519Signer(%s) = %v", name, err)
	}
	return s
}

func testKeys(t testing.TB, names ...string) map[string]ed25519.PublicKey {
	t.Helper()
	keys := map[string]ed25519.PublicKey{}
	for _, n := range names {
		s := testSigner(t, n)
		keys[s.KeyID()] = s.PublicKey()
	}
	return keys
}

// goldenEvents is the fixed event sequence behind testdata/golden.jsonl; nil
// entries are checkpoints.
func goldenEvents() []*audit.Event {
	return []*audit.Event{
		{Type: audit.TypeStart, Details: map[string]any{"version": "test", "instance": "a"}},
		{
			Type: audit.TypeIssue, RequestID: "req_01", IssuanceID: "iss_01JAAAAAAAAAAAAAAAAAAAAAAA",
			Workload: "payments-api", Owner: "team-payments", SessionID: "ses_pod-1", Grant: "payments-vault", Kind: "vault_token",
			Identity:   &audit.Identity{Iss: "https://kubernetes.default.svc", Sub: "system:serviceaccount:payments:api", JTI: "j1"},
			Source:     &audit.Source{IP: "10.0.0.7", UserAgent: "curl/8.5 <script>&'\""},
			Credential: &audit.Credential{Fingerprint: "sha256:00ff", Accessor: "acc1", ExpiresAt: "2025-01-02T03:19:05Z"},
			Outcome:    &audit.Outcome{Status: 200},
		},
		{Type: audit.TypeDeny, RequestID: "req_02", Outcome: &audit.Outcome{Status: 403, Error: "access_denied", Reason: "grant_not_allowed"}},
		{
			Type: audit.TypeUse, RequestID: "req_03", UseID: "use_01", IssuanceID: "iss_01JAAAAAAAAAAAAAAAAAAAAAAA",
			Upstream: &audit.Upstream{Method: "POST", Host: "api.stripe.com", Path: "/v1/charges", Status: 201, Bytes: new(int64(512)), DurationMS: 12.5},
		},
		nil,
		{
			Type: audit.TypeRevoke, RevocationID: "rev_01", Admin: "secops/alice", Reason: "leaked in CI log: é ✓ \u2028",
			Details: map[string]any{"selector": map[string]any{"workload": "payments-api"}, "matched": 2, "block": true},
		},
		{Type: audit.TypeIntrospect, RequestID: "req_04", Act: []audit.Identity{{Iss: "https://idp", Sub: "agent-7"}, {Iss: "https://idp", Sub: "bob"}}},
		nil,
		{Type: audit.TypeAdmin, Admin: "secops/alice", RequestID: "req_05", Outcome: &audit.Outcome{Status: 200}},
		{Type: audit.TypePolicyLoad, Details: map[string]any{"sha256": "abc", "files": []any{"a.yaml", "b.yaml"}}},
		nil,
	}
}

// sealGolden seals goldenEvents with the fixed clock (1.5 ms a line) and the
// checkpoint key and returns the lines, each without newline.
func sealGolden(t testing.TB) [][]byte {
	t.Helper()
	s := testSigner(t, "checkpoint.key")
	c := audit.NewChain(goldenChain)
	now := goldenStart
	var lines [][]byte
	for i, ev := range goldenEvents() {
		if ev == nil {
			var err error
			if ev, err = c.Checkpoint(context.Background(), s, fmt.Sprint("req_cp", i), now); err != nil {
				t.Fatalf("Checkpoint #%d = %v", i, err)
			}
		}
		line, err := c.Seal(ev, now)
		if err != nil {
			t.Fatalf("Seal #%d = %v", i, err)
		}
		lines = append(lines, line)
		now = now.Add(1500 * time.Microsecond)
	}
	return lines
}

// joinLines writes lines each followed by '\n'.
func joinLines(lines [][]byte) []byte {
	var b bytes.Buffer
	for _, l := range lines {
		b.Write(l)
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// splitLines splits a file into lines without newlines.
func splitLines(b []byte) [][]byte {
	b = bytes.TrimSuffix(b, []byte{'\n'})
	if len(b) == 0 {
		return nil
	}
	return bytes.Split(b, []byte{'\n'})
}

// forge encodes events as given (seq, time, v... untouched) but links each to
// the previous one, as an attacker rewriting a whole chain would.
func forge(t testing.TB, evs []audit.Event) [][]byte {
	t.Helper()
	var lines [][]byte
	prev := ""
	for i := range evs {
		ev := evs[i]
		ev.Prev = prev
		b, err := json.Marshal(&ev)
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, b)
		prev = audit.HashLine(b)
	}
	return lines
}

// mutateLine decodes line i, lets f change it and re-encodes it.
func mutateLine(t testing.TB, lines [][]byte, i int, f func(*audit.Event)) [][]byte {
	t.Helper()
	ev, err := audit.ParseLine(lines[i])
	if err != nil {
		t.Fatal(err)
	}
	f(ev)
	b, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	out := append([][]byte(nil), lines...)
	out[i] = b
	return out
}
