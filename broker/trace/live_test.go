package trace_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/trace"
)

// fakeStore answers the lookups Live makes; any other method panics (nil
// embedded interface), which would show Live calling something it should
// not.
type fakeStore struct {
	broker.Store
	byID   map[string]*broker.Issuance
	active []*broker.Issuance
	err    error
}

func (f *fakeStore) GetIssuance(ctx context.Context, id string) (*broker.Issuance, error) {
	if f.err != nil {
		return nil, f.err
	}
	if is, ok := f.byID[id]; ok {
		c := *is
		return &c, nil
	}
	return nil, broker.ErrNotFound
}

func (f *fakeStore) FindIssuance(ctx context.Context, kind broker.RefKind, v string) (*broker.Issuance, error) {
	if f.err != nil {
		return nil, f.err
	}
	for _, is := range f.byID {
		// Exact values, as the real stores match them.
		if rv, ok := is.RefValue(kind); ok && rv != "" && rv == v {
			c := *is
			return &c, nil
		}
	}
	return nil, broker.ErrNotFound
}

// GetRevocation: the fake store holds no revocations.
func (f *fakeStore) GetRevocation(ctx context.Context, id string) (*broker.Revocation, error) {
	if f.err != nil {
		return nil, f.err
	}
	return nil, broker.ErrNotFound
}

func (f *fakeStore) ListIssuances(ctx context.Context, flt broker.IssuanceFilter) ([]*broker.Issuance, error) {
	return f.active, f.err
}

func TestLiveFollowsAppendsAndRotation(t *testing.T) {
	dir := t.TempDir()
	lines := sealed(t, "chn_live", 0, fixtureEvents())
	path := writeLines(t, dir, "audit.jsonl", lines[:3])
	live, err := trace.NewLive(trace.LiveOptions{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	trace1 := func(q string) (*trace.Result, error) { return live.Trace(ctx, q) }

	if res, err := trace1(idA); err != nil || res.Issuance.Workload != "payments-api" || len(res.Uses) != 0 {
		t.Fatalf("Trace(%s) after 3 lines = %+v, %v, want the issuance without uses", idA, res, err)
	}
	if _, err := trace1("use_U1"); !errors.Is(err, broker.ErrNotFound) {
		t.Fatalf("Trace(use_U1) before it is written = %v, want not found", err)
	}

	// Appended lines, the last one still being written.
	appendLines(t, path, lines[3:6])
	f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	f.Write(lines[6][:30])
	f.Close()
	if res, err := trace1("use_U1"); err != nil || res.Issuance.ID != idB {
		t.Fatalf("Trace(use_U1) after append = %+v, %v, want %s", res, err, idB)
	}
	if _, err := trace1("req_U2"); !errors.Is(err, broker.ErrNotFound) {
		t.Fatalf("Trace(req_U2) while its line is incomplete = %v, want not found", err)
	}

	// The rest of that line and one more reach the file, then it rotates
	// and the chain goes on in a new file.
	f, _ = os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	f.Write(append(lines[6][30:], '\n'))
	f.Write(append(lines[7], '\n'))
	f.Close()
	rotated := path + "." + at(time.Hour).Format(trace.RotatedLayout)
	if err := os.Rename(path, rotated); err != nil {
		t.Fatal(err)
	}
	writeLines(t, dir, "audit.jsonl", lines[8:])

	res, err := trace1(idA)
	if err != nil {
		t.Fatal(err)
	}
	got := summarize(res)
	want := summary{Issuance: idA, Workload: "payments-api", Kind: trace.KindIssuanceID, Value: idA,
		Uses: []string{"introspect:use_I2"}, Revocations: []string{"revoke:rev_R1", "block:rev_R1", "revoke_result:rev_R1"}, From: trace.FromAuditLog}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Trace(%s) across rotation = got, want want (-want +got):\n%s", idA, diff)
	}
	if st := live.Index().Stats(); st.Events != 14 || st.Skipped != 0 {
		t.Errorf("Stats() = %+v, want every kept event once (14) and nothing skipped", st)
	}

	// Offline over the same files gives the same answer.
	files, err := trace.LogFiles([]string{path})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{rotated, path}, files); diff != "" {
		t.Errorf("LogFiles(%s) = got, want want (-want +got):\n%s", path, diff)
	}
	off, _ := trace.NewIndex(trace.Options{})
	if err := trace.LoadFiles(off, files); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{idA, idB, "use_U1", secretA, "rev_R1", "7a3b01ff"} {
		on, err1 := live.Trace(ctx, q)
		of, err2 := off.Lookup(q)
		if err1 != nil || err2 != nil {
			t.Fatalf("Trace(%s): online %v, offline %v", q, err1, err2)
		}
		if diff := cmp.Diff(on, of); diff != "" {
			t.Errorf("Trace(%s): online and offline differ (-online +offline):\n%s", q, diff)
		}
	}
}

func TestLiveStore(t *testing.T) {
	dir := t.TempDir()
	path := writeLines(t, dir, "audit.jsonl", sealed(t, "chn_store", 0, fixtureEvents()))
	other := &broker.Issuance{ID: "iss_01JXOTHER000000000000000000", Workload: "orders", Owner: "team-orders", Grant: "orders-vault", Kind: broker.KindVaultToken,
		IssuedAt: at(time.Minute), ExpiresAt: at(time.Hour), Refs: broker.CredentialRefs{Accessor: "accOtherInstance", Fingerprint: broker.Fingerprint("hvs.other-instance-token-0123")}}
	storedA := &broker.Issuance{ID: idA, Workload: "payments-api", Claims: map[string]any{"namespace": "payments"}}
	st := &fakeStore{byID: map[string]*broker.Issuance{other.ID: other, idA: storedA}, active: []*broker.Issuance{other}}
	live, err := trace.NewLive(trace.LiveOptions{Path: path, Store: st, Now: func() time.Time { return at(2 * time.Minute) }})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	cases := []struct {
		name     string
		q        string
		wantID   string
		wantFrom string
		wantKind string
		claims   map[string]any
	}{
		{"ok/audit-plus-store-claims", idA, idA, trace.FromBoth, trace.KindIssuanceID, map[string]any{"namespace": "payments"}},
		{"ok/other-instance-by-accessor", "accOtherInstance", other.ID, trace.FromStore, trace.KindAccessor, nil},
		{"ok/other-instance-by-id", other.ID, other.ID, trace.FromStore, trace.KindIssuanceID, nil},
		{"ok/other-instance-raw-token", "hvs.other-instance-token-0123", other.ID, trace.FromStore, trace.KindCredential, nil},
		// The canonical "sha256:<hex>" is also the value as given: both
		// readings have one key, and the store must still be asked for it
		// as a fingerprint.
		{"ok/other-instance-by-sha256-fingerprint", broker.Fingerprint("hvs.other-instance-token-0123"), other.ID, trace.FromStore, trace.KindFingerprint, nil},
		{"ok/other-instance-by-bare-hex-fingerprint", strings.TrimPrefix(broker.Fingerprint("hvs.other-instance-token-0123"), "sha256:"), other.ID, trace.FromStore, trace.KindFingerprint, nil},
		// What `keytrail trace` sends online for a pasted raw credential:
		// its fingerprint (SafeQuery), never the credential.
		{"ok/other-instance-pasted-credential-sent-as-fingerprint", trace.SafeQuery("Authorization: Bearer hvs.other-instance-token-0123"), other.ID, trace.FromStore, trace.KindFingerprint, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res, err := live.Trace(ctx, tc.q)
			if err != nil {
				t.Fatalf("Trace(%s) = %v", tc.name, err)
			}
			got := []any{res.Issuance.ID, res.From, res.Query.Kind, res.Issuance.Claims}
			want := []any{tc.wantID, tc.wantFrom, tc.wantKind, tc.claims}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("Trace(%s) = got, want want (-want +got):\n%s", tc.name, diff)
			}
		})
	}
	if _, err := live.Trace(ctx, "unknown-everywhere"); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("Trace(unknown) = %v, want not found", err)
	}

	rep, err := live.Report(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.ActiveFrom != trace.FromStore || len(rep.Workloads) != 3 {
		t.Fatalf("Report() active from %q with %d workloads, want store and 3", rep.ActiveFrom, len(rep.Workloads))
	}
	for _, w := range rep.Workloads {
		want := 0
		if w.Name == "orders" {
			want = 1
		}
		if w.Active != want {
			t.Errorf("Report() %s active = %d, want %d (from the store)", w.Name, w.Active, want)
		}
	}

	st.err = broker.Unavailable("down", time.Second, errors.New("redis down"))
	if _, err := live.Trace(ctx, "unknown-everywhere"); !errors.Is(err, broker.ErrUnavailable) {
		t.Errorf("Trace with the store down = %v, want unavailable", err)
	}
	if _, err := live.Report(ctx); !errors.Is(err, broker.ErrUnavailable) {
		t.Errorf("Report with the store down = %v, want unavailable", err)
	}
	if _, err := trace.NewLive(trace.LiveOptions{}); err == nil {
		t.Errorf("NewLive(no path) = nil error, want an error")
	}
}

func TestLogFiles(t *testing.T) {
	dir := t.TempDir()
	touch := func(name string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	r1 := touch("audit.jsonl.20250601T100000.000000000Z")
	r2 := touch("audit.jsonl.20250602T090000.500000000Z")
	cur := touch("audit.jsonl")
	o1 := touch("other.jsonl.20250601T000000.000000000Z")
	other := touch("other.jsonl")
	g1 := touch("gone.jsonl.20250101T000000.000000000Z") // its base was deleted
	touch("audit.jsonl.bak")
	touch("notes.txt")
	cases := []struct {
		name    string
		args    []string
		want    []string
		wantErr bool
	}{
		{"ok/file-with-siblings", []string{cur}, []string{r1, r2, cur}, false},
		{"ok/rotated-file-alone", []string{r2}, []string{r2}, false},
		{"ok/explicit-then-base-no-duplicates", []string{r1, cur}, []string{r1, r2, cur}, false},
		{"ok/directory", []string{dir}, []string{r1, r2, cur, g1, o1, other}, false},
		{"ok/missing-file-with-siblings", []string{filepath.Join(dir, "gone.jsonl")}, []string{g1}, false},
		{"fail/missing", []string{filepath.Join(dir, "nope.jsonl")}, nil, true},
		{"fail/missing-rotated", []string{filepath.Join(dir, "audit.jsonl.20990101T000000.000000000Z")}, nil, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := trace.LogFiles(tc.args)
			if (err != nil) != tc.wantErr {
				t.Fatalf("LogFiles(%s) error = %v, want error %v", tc.name, err, tc.wantErr)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("LogFiles(%s) = got, want want (-want +got):\n%s", tc.name, diff)
			}
		})
	}
}

func TestIsRotated(t *testing.T) {
	cases := []struct {
		name, in, base string
		ok             bool
	}{
		{"ok/rotated", "audit.jsonl.20250601T100000.000000000Z", "audit.jsonl", true},
		{"fail/plain", "audit.jsonl", "", false},
		{"fail/bad-timestamp", "audit.jsonl.20251301T100000.000000000Z", "", false},
		{"fail/short-timestamp", "audit.jsonl.20250601T100000Z", "", false},
		{"fail/only-timestamp", ".20250601T100000.000000000Z", "", false},
	}
	for _, tc := range cases {
		base, ok := trace.IsRotated(tc.in)
		if base != tc.base || ok != tc.ok {
			t.Errorf("IsRotated(%s) = %q, %v, want %q, %v", tc.name, base, ok, tc.base, tc.ok)
		}
	}
}

func TestLiveRollback(t *testing.T) {
	dir := t.TempDir()
	lines := sealed(t, "chn_rollback", 0, fixtureEvents())
	path := writeLines(t, dir, "audit.jsonl", lines[:4]) // policy_load, A, B, C
	live, err := trace.NewLive(trace.LiveOptions{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := live.Trace(ctx, idC); err != nil {
		t.Fatalf("Trace(%s) = %v", idC, err)
	}
	// The sink rolls back C's line (a failed fsync) and writes another.
	writeLines(t, dir, "audit.jsonl", lines[:3])
	if _, err := live.Trace(ctx, idC); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("Trace(%s) after the rollback = %v, want not found", idC, err)
	}
	if res, err := live.Trace(ctx, idB); err != nil || res.Issuance.ID != idB {
		t.Errorf("Trace(%s) after the rollback = %v, %v", idB, res, err)
	}
	if st := live.Index().Stats(); st.Events != 2 {
		t.Errorf("Stats() after the rollback = %+v, want the 2 events the file holds", st)
	}
}

// The sink rolls back a failed batch by truncating the file to its last
// durable line, then goes on writing once the disk works again. When later
// batches have grown the file past what Live had read by the next call (and
// perhaps rotated it), Live must drop the rolled-back events (never
// recorded; their credentials were revoked again) and read the lines that
// replaced them from their start.
func TestLiveRollbackThenRegrowth(t *testing.T) {
	for _, rotate := range []bool{false, true} {
		t.Run(map[bool]string{false: "same-file", true: "then-rotated"}[rotate], func(t *testing.T) {
			dir := t.TempDir()
			c := audit.NewChain("chn_rollback")
			seal := func(c *audit.Chain, ev *audit.Event, d time.Duration) []byte {
				l, err := c.Seal(ev, at(d))
				if err != nil {
					t.Fatal(err)
				}
				return l
			}
			first := seal(c, &audit.Event{Type: audit.TypeIssue, RequestID: "req_1", IssuanceID: "iss_FIRST", Workload: "w"}, 0)
			path := writeLines(t, dir, "audit.jsonl", [][]byte{first})
			live, err := trace.NewLive(trace.LiveOptions{Path: path})
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()

			// A batch reaches the file; its fsync fails. A trace runs meanwhile.
			failed := seal(c.Clone(), &audit.Event{Type: audit.TypeIssue, RequestID: "req_2", IssuanceID: "iss_PHANTOM", Workload: "w"}, time.Second)
			appendLines(t, path, [][]byte{failed})
			if _, err := live.Trace(ctx, "iss_PHANTOM"); err != nil {
				t.Fatal(err)
			}
			// The sink truncates the failed batch away, recovers and writes
			// more: past the offset Live had read up to.
			if err := os.Truncate(path, int64(len(first)+1)); err != nil {
				t.Fatal(err)
			}
			appendLines(t, path, [][]byte{
				seal(c, &audit.Event{Type: audit.TypeIssue, RequestID: "req_3", IssuanceID: "iss_REAL", Workload: strings.Repeat("x", 40)}, 2*time.Second),
				seal(c, &audit.Event{Type: audit.TypeUse, RequestID: "req_4", UseID: "use_REAL", IssuanceID: "iss_REAL"}, 3*time.Second),
			})
			if rotate {
				if err := os.Rename(path, path+"."+at(4*time.Second).Format(trace.RotatedLayout)); err != nil {
					t.Fatal(err)
				}
			}

			if res, err := live.Trace(ctx, "iss_PHANTOM"); !errors.Is(err, broker.ErrNotFound) {
				t.Errorf("Trace(iss_PHANTOM) = %+v, %v; want not found: the audit file holds no such issuance", res, err)
			}
			res, err := live.Trace(ctx, "iss_REAL")
			if err != nil || res.From != trace.FromAuditLog || res.Issuance.Workload != strings.Repeat("x", 40) || len(res.Uses) != 1 {
				t.Errorf("Trace(iss_REAL) = %+v, %v; want the issue and use events the audit file holds", res, err)
			}
			if st := live.Index().Stats(); st.Events != 3 {
				t.Errorf("Stats() = %+v, want the 3 events the files hold", st)
			}
		})
	}
}

// TestLiveStoreSerialAnySpelling: an issuance only the store holds (made by
// another instance, or older than the index) is found by its serial in any
// spelling the index accepts, although the store matches only the exact
// string Vault wrote (lowercase hex byte pairs joined by ':'). Found in
// review: the store was asked only for the value as given.
func TestLiveStoreSerialAnySpelling(t *testing.T) {
	dir := t.TempDir()
	path := writeLines(t, dir, "audit.jsonl", nil)
	other := &broker.Issuance{ID: "iss_01JXOTHERPKI000000000000000", Workload: "orders", Owner: "team-orders", Grant: "orders-cert", Kind: broker.KindPKI,
		IssuedAt: at(time.Minute), ExpiresAt: at(time.Hour), Refs: broker.CredentialRefs{Serial: "0f:3d:0a:5c:7d"}}
	st := &fakeStore{byID: map[string]*broker.Issuance{other.ID: other}}
	live, err := trace.NewLive(trace.LiveOptions{Path: path, Store: st, Now: func() time.Time { return at(2 * time.Minute) }})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	cases := []struct{ name, q string }{
		{"ok/as-vault-wrote-it", "0f:3d:0a:5c:7d"},
		{"ok/upper-case-colons", "0F:3D:0A:5C:7D"},
		{"ok/openssl-x509-serial", "0F3D0A5C7D"},
		{"ok/lower-case-bare", "0f3d0a5c7d"},
		{"ok/dashes", "0f-3d-0a-5c-7d"},
		{"ok/number-in-hex-without-leading-zero", "f3d0a5c7d"},
		{"ok/decimal", "65448598653"}, // 0x0f3d0a5c7d
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res, err := live.Trace(ctx, tc.q)
			if err != nil {
				t.Fatalf("Trace(%s) = %v, want %s (stored serial %s)", tc.q, err, other.ID, other.Refs.Serial)
			}
			got := []any{res.Issuance.ID, res.From, res.Query.Kind, res.Query.Value}
			want := []any{other.ID, trace.FromStore, trace.KindSerial, tc.q}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("Trace(%s) = got, want want (-want +got):\n%s", tc.q, diff)
			}
		})
	}
	for _, q := range []string{"0f:3d:0a:5c:7e", "3d0a5c7d", "0f:3d:0a:5c:7d:00", "65448598654"} {
		if res, err := live.Trace(ctx, q); !errors.Is(err, broker.ErrNotFound) {
			t.Errorf("Trace(%s) = %v, %v, want not found", q, res, err)
		}
	}

	// An all-digit value reads as hex and as decimal: when both readings
	// name an issuance, both are answers, oldest first.
	hexIs := &broker.Issuance{ID: "iss_01JXHEX0000000000000000000", Workload: "orders", Kind: broker.KindPKI, IssuedAt: at(3 * time.Minute),
		Refs: broker.CredentialRefs{Serial: "12:34"}}
	decIs := &broker.Issuance{ID: "iss_01JXDEC0000000000000000000", Workload: "orders", Kind: broker.KindPKI, IssuedAt: at(2 * time.Minute),
		Refs: broker.CredentialRefs{Serial: "04:d2"}} // 1234
	st.byID[hexIs.ID], st.byID[decIs.ID] = hexIs, decIs
	res, err := live.Trace(ctx, "1234")
	if err != nil {
		t.Fatalf("Trace(1234) = %v, want %s and %s", err, decIs.ID, hexIs.ID)
	}
	if diff := cmp.Diff([]any{decIs.ID, []string{hexIs.ID}}, []any{res.Issuance.ID, res.AlsoMatched}); diff != "" {
		t.Errorf("Trace(1234) = got, want want (-want +got):\n%s", diff)
	}
}

// A value the store finds under two ref kinds, for two issuances (here an
// accessor of one and the user name of the other): like the offline trace,
// the answer is the older and also_matched lists the other, whichever
// kind the store is asked first.
func TestLiveStoreValueUnderSeveralKinds(t *testing.T) {
	dir := t.TempDir()
	path := writeLines(t, dir, "audit.jsonl", nil)
	const v = "shared-value-0123"
	byAccessor := &broker.Issuance{ID: "iss_01JXACC0000000000000000000", Workload: "orders", Kind: broker.KindVaultToken,
		IssuedAt: at(3 * time.Minute), Refs: broker.CredentialRefs{Accessor: v}}
	byUsername := &broker.Issuance{ID: "iss_01JXUSR0000000000000000000", Workload: "reports", Kind: broker.KindVaultDynamic,
		IssuedAt: at(2 * time.Minute), Refs: broker.CredentialRefs{Username: v}}
	st := &fakeStore{byID: map[string]*broker.Issuance{byAccessor.ID: byAccessor, byUsername.ID: byUsername}}
	live, err := trace.NewLive(trace.LiveOptions{Path: path, Store: st})
	if err != nil {
		t.Fatal(err)
	}
	res, err := live.Trace(context.Background(), v)
	if err != nil {
		t.Fatalf("Trace(%s) = %v", v, err)
	}
	got := []any{res.Issuance.ID, res.Query.Kind, res.AlsoMatched, res.From}
	want := []any{byUsername.ID, trace.KindUsername, []string{byAccessor.ID}, trace.FromStore}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Trace(%s) = got, want want (-want +got):\n%s", v, diff)
	}
}
