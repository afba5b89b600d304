package trace_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker/trace"
)

// vaultEntry writes one line as Vault's file audit device does (request or
// response), with a clear or HMAC'd accessor.
func vaultEntry(typ, reqID, op, path, display, accessor string, meta map[string]string, policies []string, when time.Time) string {
	auth := map[string]any{
		"client_token": "hmac-sha256:0f0f", "accessor": accessor, "display_name": display,
		"policies": policies, "token_policies": policies, "metadata": meta, "token_type": "service", "token_ttl": 900,
	}
	if display == "" && accessor == "" {
		auth = map[string]any{"token_type": "default"}
	}
	e := map[string]any{
		"time": when.Format(time.RFC3339Nano), "type": typ, "auth": auth,
		"request": map[string]any{"id": reqID, "operation": op, "path": path, "remote_address": "127.0.0.1", "client_token_accessor": accessor,
			"namespace": map[string]any{"id": "root"}, "mount_type": "token"},
		"error": "",
	}
	if typ == "response" {
		e["response"] = map[string]any{"mount_type": "token", "data": map[string]any{"id": "hmac-sha256:abcd"}}
	}
	b, _ := json.Marshal(e)
	return string(b)
}

func TestResolveVaultLog(t *testing.T) {
	x := fixtureIndex(t)
	metaA := map[string]string{"issuance_id": idA, "workload": "payments-api", "owner": "team-payments", "session_id": "ses_a", "grant": "payments-vault"}
	metaGhost := map[string]string{"issuance_id": "iss_01JXGHOST00000000000000000", "workload": "payments-api"}
	when := at(time.Minute)
	lines := []string{
		vaultEntry("request", "r1", "read", "auth/token/lookup-self", "token-keytrail-payments-api", "accA0000", metaA, []string{"default", "payments-read"}, when),
		vaultEntry("response", "r1", "read", "auth/token/lookup-self", "token-keytrail-payments-api", "accA0000", metaA, []string{"default", "payments-read"}, when),
		vaultEntry("request", "r2", "read", "secret/data/payments/db", "token-keytrail-payments-api", "accA0000", metaA, []string{"default", "payments-read"}, when.Add(time.Second)),
		// Metadata stripped (e.g. a device that hides it): the clear accessor still names it.
		vaultEntry("request", "r3", "read", "secret/data/payments/api", "token-keytrail-payments-api", "accA0000", nil, []string{"default"}, when.Add(2*time.Second)),
		// HMAC'd accessor and no metadata: a gap.
		vaultEntry("request", "r4", "read", "secret/data/payments/api", "token-keytrail-payments-api", "hmac-sha256:9999", nil, []string{"default"}, when.Add(3*time.Second)),
		// A keytrail-looking token whose issuance no audit record shows.
		vaultEntry("request", "r5", "update", "transit/sign/x", "token-keytrail-payments-api", "accGhost", metaGhost, []string{"default"}, when.Add(4*time.Second)),
		// Metadata naming A, but another token's accessor.
		vaultEntry("request", "r6", "read", "secret/data/payments/db", "token-keytrail-payments-api", "accOther", metaA, []string{"default"}, when.Add(5*time.Second)),
		// Tokens keytrail did not mint.
		vaultEntry("request", "r7", "read", "secret/data/shared", "token-legacy-batch", "accLegacy", nil, []string{"default", "shared"}, when.Add(6*time.Second)),
		vaultEntry("request", "r8", "list", "secret/metadata", "token-legacy-batch", "accLegacy", nil, []string{"default", "shared"}, when.Add(7*time.Second)),
		vaultEntry("response", "r8", "list", "secret/metadata", "token-legacy-batch", "accLegacy", nil, []string{"default", "shared"}, when.Add(7*time.Second)),
		// Root and unauthenticated requests: counted, not gaps.
		vaultEntry("request", "r9", "update", "auth/token/create-orphan", "root", "accRoot", nil, []string{"root"}, when.Add(8*time.Second)),
		vaultEntry("request", "r10", "read", "sys/health", "", "", nil, nil, when.Add(9*time.Second)),
		"this is not json",
		"",
	}
	rep, err := trace.ResolveVaultLog(strings.NewReader(strings.Join(lines, "\n")+"\n"), x)
	if err != nil {
		t.Fatal(err)
	}
	want := &trace.VaultReport{
		Lines: 14, Malformed: 1, Requests: 10, Attributed: 3, Root: 1, NoToken: 1,
		Attributions: []trace.Attribution{{
			IssuanceID: idA, Workload: "payments-api", Owner: "team-payments", SessionID: "ses_a", Grant: "payments-vault",
			By: "metadata+accessor", Requests: 3, First: when, Last: when.Add(2 * time.Second),
			Paths: []string{"read auth/token/lookup-self", "read secret/data/payments/db", "read secret/data/payments/api"},
		}},
		Gaps: []trace.Gap{
			{DisplayName: "token-legacy-batch", Accessor: "accLegacy", Reason: trace.GapNotKeytrail, Requests: 2, First: when.Add(6 * time.Second), Last: when.Add(7 * time.Second), Paths: []string{"read secret/data/shared", "list secret/metadata"}},
			{DisplayName: "token-keytrail-payments-api", Reason: trace.GapUnknownIssuance, Requests: 1, First: when.Add(3 * time.Second), Last: when.Add(3 * time.Second), Paths: []string{"read secret/data/payments/api"}},
			{DisplayName: "token-keytrail-payments-api", Accessor: "accGhost", Reason: trace.GapUnknownIssuance, IssuanceID: "iss_01JXGHOST00000000000000000", Requests: 1, First: when.Add(4 * time.Second), Last: when.Add(4 * time.Second), Paths: []string{"update transit/sign/x"}},
			{DisplayName: "token-keytrail-payments-api", Accessor: "accOther", Reason: trace.GapAccessorMismatch, IssuanceID: idA, Requests: 1, First: when.Add(5 * time.Second), Last: when.Add(5 * time.Second), Paths: []string{"read secret/data/payments/db"}},
		},
	}
	if diff := cmp.Diff(want, rep); diff != "" {
		t.Errorf("ResolveVaultLog() = got, want want (-want +got):\n%s", diff)
	}
	if got := rep.GapRequests(); got != 5 {
		t.Errorf("GapRequests() = %d, want 5", got)
	}
	var txt bytes.Buffer
	if err := rep.WriteText(&txt); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"3 attributed to keytrail issuances", "5 in attribution gaps", "ATTRIBUTION GAPS", "token-legacy-batch", idA} {
		if !strings.Contains(txt.String(), s) {
			t.Errorf("WriteText does not show %q:\n%s", s, txt.String())
		}
	}

	entries, _, err := trace.VaultEntriesFor(strings.NewReader(strings.Join(lines, "\n")), x.ByIssuanceID(idA))
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, e := range entries {
		ids = append(ids, e.RequestID)
	}
	if diff := cmp.Diff([]string{"r1", "r2", "r3", "r6"}, ids); diff != "" {
		t.Errorf("VaultEntriesFor(%s) = got, want want (-want +got):\n%s", idA, diff)
	}
}

// filler yields n bytes of 'x' without holding them.
type filler struct{ n int64 }

var fillBlock = bytes.Repeat([]byte("x"), 64<<10)

func (f *filler) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > f.n {
		p = p[:f.n]
	}
	k := 0
	for k < len(p) {
		k += copy(p[k:], fillBlock)
	}
	f.n -= int64(k)
	return k, nil
}

func TestResolveVaultLogSkipsOversizedLine(t *testing.T) {
	x := fixtureIndex(t)
	metaA := map[string]string{"issuance_id": idA, "workload": "payments-api"}
	when := at(time.Minute)
	req := func(id string) string {
		return vaultEntry("request", id, "list", "auth/token/accessors", "token-keytrail-payments-api", "accA0000", metaA, []string{"default"}, when)
	}
	huge := func(n int64, end string) io.Reader { // a response entry of n bytes and more
		return io.MultiReader(strings.NewReader(`{"type":"response","response":{"data":{"keys":["`), &filler{n: n}, strings.NewReader(`"]}}}`+end))
	}
	// A request line of exactly the bound is used, one a byte longer is
	// not. (Padded with leading spaces: decoding 16 MiB of JSON would cost
	// seconds under -race.)
	padded := func(line string, size int) string { return strings.Repeat(" ", size-len(line)) + line }
	atMax, overMax := padded(req("r3"), trace.MaxVaultLineBytes), padded(req("r4"), trace.MaxVaultLineBytes+1)
	first, middle := req("r1")+"\n", req("r2")+"\n"+atMax+"\n"+overMax+"\n"+req("r5")+"\n"
	log := func() io.Reader {
		return io.MultiReader(
			strings.NewReader(first),
			huge(8*trace.MaxVaultLineBytes, "\n"), // line 2
			strings.NewReader(middle),             // lines 3-6
			huge(2*trace.MaxVaultLineBytes, ""),   // line 7, the last one, without its newline
		)
	}

	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	rep, err := trace.ResolveVaultLog(log(), x)
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatalf("ResolveVaultLog = %v, want the oversized lines skipped", err)
	}
	got := []int{rep.Lines, rep.Malformed, rep.Requests, rep.Attributed}
	if diff := cmp.Diff([]int{7, 3, 4, 4}, got); diff != "" {
		t.Errorf("ResolveVaultLog() lines, malformed, requests, attributed = got, want want (-want +got):\n%s", diff)
	}
	// Holding the 128 MiB line would allocate at least that much; buffering
	// lines up to the bound costs about twice the bound.
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 4*trace.MaxVaultLineBytes {
		t.Errorf("ResolveVaultLog allocated %d MiB reading a %d MiB line, want at most %d MiB", alloc>>20, 8*trace.MaxVaultLineBytes>>20, 4*trace.MaxVaultLineBytes>>20)
	}

	entries, _, err := trace.VaultEntriesFor(log(), x.ByIssuanceID(idA))
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, e := range entries {
		lines = append(lines, fmt.Sprintf("%s@%d", e.RequestID, e.Line))
	}
	if diff := cmp.Diff([]string{"r1@1", "r2@3", "r3@4", "r5@6"}, lines); diff != "" {
		t.Errorf("VaultEntriesFor(%s) request@line = got, want want (-want +got):\n%s", idA, diff)
	}
}

func TestParseVaultLine(t *testing.T) {
	when := at(0)
	cases := []struct {
		name    string
		line    string
		want    *trace.VaultEntry
		wantErr bool
	}{
		{"ok/keytrail-token", vaultEntry("request", "r1", "read", "auth/token/lookup-self", "token-keytrail-w", "acc1", map[string]string{"issuance_id": "iss_1", "workload": "w"}, []string{"default"}, when),
			&trace.VaultEntry{Time: when, Type: "request", RequestID: "r1", Operation: "read", Path: "auth/token/lookup-self", RemoteAddress: "127.0.0.1", DisplayName: "token-keytrail-w", Accessor: "acc1", IssuanceID: "iss_1", Workload: "w"}, false},
		{"ok/hmac-accessor-dropped", vaultEntry("request", "r2", "read", "p", "token-x", "hmac-sha256:ab", nil, []string{"default"}, when),
			&trace.VaultEntry{Time: when, Type: "request", RequestID: "r2", Operation: "read", Path: "p", RemoteAddress: "127.0.0.1", DisplayName: "token-x"}, false},
		{"ok/root", vaultEntry("request", "r3", "update", "sys/audit/file", "root", "accR", nil, []string{"root"}, when),
			&trace.VaultEntry{Time: when, Type: "request", RequestID: "r3", Operation: "update", Path: "sys/audit/file", RemoteAddress: "127.0.0.1", DisplayName: "root", Accessor: "accR", Root: true}, false},
		{"ok/unknown-fields-ignored", `{"type":"request","time":"bad","new_field":{"x":1}}`, &trace.VaultEntry{Type: "request", NoToken: true}, false},
		{"fail/not-object", `["request"]`, nil, true},
		{"fail/no-type", `{"time":"2025-01-01T00:00:00Z"}`, nil, true},
		{"fail/truncated", `{"type":"request","auth":{`, nil, true},
		{"fail/empty", ``, nil, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := trace.ParseVaultLine([]byte(tc.line))
			if (err != nil) != tc.wantErr {
				t.Fatalf("ParseVaultLine(%s) error = %v, want error %v", tc.name, err, tc.wantErr)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("ParseVaultLine(%s) = got, want want (-want +got):\n%s", tc.name, diff)
			}
		})
	}
}
