package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/policies"
)

func TestAuditIssueIndex(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.jsonl")
	write := func(name, data string, appendTo bool) {
		t.Helper()
		flag := os.O_CREATE | os.O_WRONLY | os.O_TRUNC
		if appendTo {
			flag = os.O_CREATE | os.O_WRONLY | os.O_APPEND
		}
		f, err := os.OpenFile(filepath.Join(dir, name), flag, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteString(data); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	x := newAuditIssueIndex(path)
	ids := []string{"iss_new_file", "iss_live", "iss_partial", "iss_rotated", "iss_denied", "iss_expired", "iss_other_file"}
	check := func(step string, want map[string]bool, wantSince string) {
		t.Helper()
		snap, err := x.Snapshot(context.Background())
		if err != nil {
			t.Fatalf("%s: Snapshot() error = %v", step, err)
		}
		got := map[string]bool{}
		for _, id := range ids {
			if snap.Issued(id) {
				got[id] = true
			}
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s: Snapshot() = %v, want %v (-want +got):\n%s", step, got, want, diff)
		}
		since := ""
		if !snap.Since.IsZero() {
			since = snap.Since.UTC().Format(time.RFC3339)
		}
		if since != wantSince {
			t.Errorf("%s: Snapshot().Since = %q, want %q (the oldest file's first event)", step, since, wantSince)
		}
	}

	check("ok/missing-file", map[string]bool{}, "")
	write("audit.jsonl", `{"v":1,"time":"2026-03-01T10:00:00.5Z","type":"issue","issuance_id":"iss_live","credential":{"expires_at":"2999-01-01T00:00:00Z"}}`+"\n"+
		`{"v":1,"type":"deny","issuance_id":"iss_denied"}`+"\n"+
		`{"v":1,"type":"issue","issuance_id":"iss_expired","credential":{"expires_at":"2001-01-01T00:00:00Z"}}`+"\n"+
		`{"v":1,"type":"issue","issuance_id":"iss_par`, false)
	write("other.jsonl", `{"v":1,"type":"issue","issuance_id":"iss_other_file"}`+"\n", false)
	check("ok/complete-lines-only", map[string]bool{"iss_live": true}, "2026-03-01T10:00:00Z")
	write("audit.jsonl", `tial"}`+"\n", true)
	check("ok/partial-line-completed", map[string]bool{"iss_live": true, "iss_partial": true}, "2026-03-01T10:00:00Z")
	write("audit.jsonl.20260101T000000.000000000Z", `{"v":1,"time":"2026-02-01T00:00:00Z","type":"issue","issuance_id":"iss_rotated"}`+"\n", false)
	// A new live file after rotation, already longer than what was read
	// of the old one.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	write("audit.jsonl", `{"v":1,"time":"2026-03-02T00:00:00Z","type":"deny","reason":"padding padding padding padding padding padding padding padding padding padding padding padding padding padding padding padding padding padding padding padding padding padding padding padding padding padding padding padding padding padding padding padding padding padding"}`+"\n"+
		`{"v":1,"type":"issue","issuance_id":"iss_new_file"}`+"\n", false)
	check("ok/rotated-sibling-and-new-file", map[string]bool{"iss_live": true, "iss_partial": true, "iss_rotated": true, "iss_new_file": true}, "2026-02-01T00:00:00Z")
}

// TestAuditIssueIndexStreams: the index reads the log line by line through
// a fixed buffer: lines longer than the buffer are read whole (and a long
// last line still being written is left for the next run), and reading
// tens of MB allocates a small fraction of that (a run used to hold all
// that was appended since the last one in memory at once).
func TestAuditIssueIndexStreams(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	pad := strings.Repeat("x", 2*indexReadBuffer+17)
	use := `{"v":1,"type":"use","issuance_id":"iss_u","reason":"` + strings.Repeat("y", 600) + `"}` + "\n"
	var b strings.Builder
	b.WriteString(`{"v":1,"type":"issue","issuance_id":"iss_long","reason":"` + pad + `"}` + "\n")
	for b.Len() < 40<<20 {
		b.WriteString(use)
	}
	b.WriteString(`{"v":1,"type":"issue","issuance_id":"iss_last"}` + "\n")
	b.WriteString(`{"v":1,"type":"issue","issuance_id":"iss_partial","reason":"` + pad)
	if _, err := f.WriteString(b.String()); err != nil {
		t.Fatal(err)
	}
	size := b.Len()
	b.Reset()

	x := newAuditIssueIndex(path)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	issued, err := x.Snapshot(context.Background())
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > uint64(size/8) {
		t.Errorf("reading %d MB of log allocated %d MB, want under an eighth of it", size>>20, alloc>>20)
	}
	got := map[string]bool{}
	for _, id := range []string{"iss_long", "iss_last", "iss_partial"} {
		got[id] = issued.Issued(id)
	}
	if diff := cmp.Diff(map[string]bool{"iss_long": true, "iss_last": true, "iss_partial": false}, got); diff != "" {
		t.Errorf("issued (-want +got):\n%s", diff)
	}
	// The rest of the partial line arrives: it is read from where it began.
	if _, err := f.WriteString(`"}` + "\n"); err != nil {
		t.Fatal(err)
	}
	if issued, err = x.Snapshot(context.Background()); err != nil || !issued.Issued("iss_partial") {
		t.Errorf("after the line was completed: issued(iss_partial) = false, %v; want true", err)
	}
}

// TestAuditIssueIndexCompact: keytrail's own issuance ids ("iss_" and a
// ULID) are indexed as 16 bytes, under 64 bytes of live heap an entry for
// 100,000 of them (a map of id strings took ~100), and answered exactly:
// the same id in lower case is a different id. Expired ones are dropped.
func TestAuditIssueIndexCompact(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	const n = 100_000
	ids := make([]string, n)
	var b strings.Builder
	live := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	for i := range ids {
		ids[i] = broker.NewID(broker.PrefixIssuance)
		fmt.Fprintf(&b, `{"v":1,"type":"issue","issuance_id":%q,"credential":{"expires_at":%q}}`+"\n", ids[i], live)
	}
	expired := broker.NewID(broker.PrefixIssuance)
	fmt.Fprintf(&b, `{"v":1,"type":"issue","issuance_id":%q,"credential":{"expires_at":"2001-01-01T00:00:00Z"}}`+"\n", expired)
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	b.Reset()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	x := newAuditIssueIndex(path)
	issued, err := x.Snapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := (int64(after.HeapAlloc) - int64(before.HeapAlloc)) / n
	t.Logf("%d bytes of live heap per indexed issuance", per)
	if per > 64 {
		t.Errorf("%d bytes of live heap per indexed issuance, want at most 64", per)
	}
	for _, c := range []struct {
		id   string
		want bool
	}{
		{ids[0], true},
		{ids[n-1], true},
		{strings.ToLower(ids[0]), false},
		{"iss_" + strings.ToLower(strings.TrimPrefix(ids[1], "iss_")), false},
		{expired, false},
		{broker.NewID(broker.PrefixIssuance), false},
	} {
		if got := issued.Issued(c.id); got != c.want {
			t.Errorf("issued(%s) = %v, want %v", c.id, got, c.want)
		}
	}
	runtime.KeepAlive(x)
}

// TestAuditIssueIndexRotationDuringSnapshot: a rotation between the
// index's directory listing and its reads renames the live file to a name
// the listing did not have. The events appended to it since the last
// Snapshot must still be in this one: the reconciliation would otherwise
// revoke their credentials as not_audited.
func TestAuditIssueIndexRotationDuringSnapshot(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.jsonl")
	appendLine := func(name, line string) {
		t.Helper()
		f, err := os.OpenFile(filepath.Join(dir, name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteString(line + "\n"); err != nil {
			t.Fatal(err)
		}
	}
	appendLine("audit.jsonl", `{"v":1,"time":"2026-03-01T10:00:00Z","type":"issue","issuance_id":"iss_before"}`)
	x := newAuditIssueIndex(path)
	if _, err := x.Snapshot(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Issued after that Snapshot, before the next one.
	appendLine("audit.jsonl", `{"v":1,"time":"2026-03-01T10:01:00Z","type":"issue","issuance_id":"iss_tail"}`)
	rotations := 0
	x.listed = func() {
		if rotations > 0 {
			return
		}
		rotations++
		if err := os.Rename(path, path+".20260301T100200.000000000Z"); err != nil {
			t.Fatal(err)
		}
		appendLine("audit.jsonl", `{"v":1,"time":"2026-03-01T10:02:00Z","type":"issue","issuance_id":"iss_after"}`)
	}
	snap, err := x.Snapshot(context.Background())
	if err != nil {
		t.Fatalf("Snapshot() error = %v", err)
	}
	if rotations != 1 {
		t.Fatalf("rotations = %d, want 1", rotations)
	}
	got := map[string]bool{}
	for _, id := range []string{"iss_before", "iss_tail", "iss_after"} {
		got[id] = snap.Issued(id)
	}
	if diff := cmp.Diff(map[string]bool{"iss_before": true, "iss_tail": true, "iss_after": true}, got); diff != "" {
		t.Errorf("Snapshot() after a rotation during it (-want +got):\n%s", diff)
	}
	if want := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC); !snap.Since.Equal(want) {
		t.Errorf("Snapshot().Since = %v, want %v", snap.Since, want)
	}
}

// TestDeploymentID: the deployment a broker tags its Vault tokens with is
// the configured one; else, with the in-memory store, its audit chain's
// (which a restart on the same audit file keeps, unlike the in-memory
// store's own id); with Redis, the id the store holds (see
// TestDeploymentSharedAcrossRedisAddresses for two instances).
func TestDeploymentID(t *testing.T) {
	const chain = "chn_01JCHAIN0000000000000000000"
	ctx := t.Context()
	st := memstore.New(time.Now)
	held, err := st.DeploymentID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"ok/configured", Config{Deployment: "prod-eu", Store: StoreConfig{RedisURL: "redis://r:6379"}}, "prod-eu"},
		{"ok/in-memory-store-chain", Config{}, chain},
		{"ok/redis-store-held", Config{Store: StoreConfig{RedisURL: "redis://r:6379"}}, held},
		{"ok/sentinel-store-held", Config{Store: StoreConfig{Addrs: []string{"a:1"}, MasterName: "m"}}, held},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := deploymentID(ctx, &c.cfg, st, chain)
			if err != nil || got != c.want || !validDeployment(got) {
				t.Errorf("deploymentID() = %q, %v; want %q, a valid deployment", got, err, c.want)
			}
		})
	}
	t.Run("fail/store-unavailable", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		_, err := deploymentID(cctx, &Config{Store: StoreConfig{RedisURL: "redis://r:6379"}}, st, chain)
		if !errors.Is(err, broker.ErrUnavailable) || !strings.Contains(err.Error(), "deployment id") {
			t.Errorf("deploymentID() with the store unreachable = %v, want ErrUnavailable naming the deployment id", err)
		}
	})
}

// TestReconcileGraceFloor: a reconciliation grace shorter than an exchange
// may take from its Vault create call to its durable record would let a
// run revoke a token still being recorded (no_record, or not_audited while
// its issue event is pending), and the workload be handed a revoked
// token. Such a grace, set or the default, is raised, with a warning
// naming KEYTRAIL_RECONCILE_GRACE.
func TestReconcileGraceFloor(t *testing.T) {
	svc, err := broker.NewService(broker.Deps{Policy: func() *policies.Policy { return nil }, Authn: func() broker.Authenticator { return nil },
		Store: memstore.New(time.Now), Audit: brokertest.DiscardSink{}})
	if err != nil {
		t.Fatal(err)
	}
	// The broker's defaults: 5s mint, 2s store, 10s audit.
	floor := graceFloor(5*time.Second, svc.Timeouts())
	if floor != 19*time.Second {
		t.Errorf("graceFloor(vault.timeout 5s, defaults) = %v, want 19s", floor)
	}
	if got := graceFloor(time.Second, svc.Timeouts()); got != floor {
		t.Errorf("graceFloor(vault.timeout 1s) = %v, want %v (the mint timeout bounds the create call)", got, floor)
	}
	if got := graceFloor(time.Minute, svc.Timeouts()); got != 74*time.Second {
		t.Errorf("graceFloor(vault.timeout 1m) = %v, want 74s", got)
	}

	tests := []struct {
		name         string
		env          map[string]string
		floor        time.Duration
		wantInterval time.Duration
		wantGrace    time.Duration
		wantWarn     []string // substrings; none: no warning
		wantErr      string
	}{
		{name: "ok/defaults", floor: floor, wantGrace: time.Minute},
		{name: "ok/set-above-floor", env: map[string]string{envReconcileGrace: "30s", envReconcileInterval: "10s"}, floor: floor,
			wantInterval: 10 * time.Second, wantGrace: 30 * time.Second},
		{name: "ok/set-below-floor-raised", env: map[string]string{envReconcileGrace: "2s"}, floor: floor, wantGrace: floor,
			wantWarn: []string{"KEYTRAIL_RECONCILE_GRACE=2s is shorter than 19s", "vault.timeout", "using 19s"}},
		{name: "ok/default-below-floor-raised", floor: 74 * time.Second, wantGrace: 74 * time.Second,
			wantWarn: []string{"the default KEYTRAIL_RECONCILE_GRACE (1m0s) is shorter than 1m14s", "vault.timeout"}},
		{name: "fail/not-a-duration", env: map[string]string{envReconcileGrace: "soon"}, floor: floor, wantErr: "KEYTRAIL_RECONCILE_GRACE"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			interval, grace, warn, err := reconcileTuning(func(k string) string { return tc.env[k] }, tc.floor)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("reconcileTuning() error = %v, want one naming %s", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if interval != tc.wantInterval || grace != tc.wantGrace {
				t.Errorf("reconcileTuning() = interval %v, grace %v; want %v, %v", interval, grace, tc.wantInterval, tc.wantGrace)
			}
			if (warn != "") != (len(tc.wantWarn) > 0) {
				t.Errorf("reconcileTuning() warning = %q, want one: %v", warn, len(tc.wantWarn) > 0)
			}
			for _, w := range tc.wantWarn {
				if !strings.Contains(warn, w) {
					t.Errorf("reconcileTuning() warning = %q, want it to say %q", warn, w)
				}
			}
		})
	}
}

// TestReconcileMetrics: the reconciliation's totals are exported as the
// keytrail_reconcile_* metrics, every revocation reason from the start.
func TestReconcileMetrics(t *testing.T) {
	src := &listedTokens{live: []broker.TaggedCredential{
		{Kind: broker.KindVaultToken, Ref: "acc-1", IssuanceID: broker.NewID(broker.PrefixIssuance), Workload: "app"},
		{Kind: broker.KindVaultToken, Ref: "acc-2", IssuanceID: broker.NewID(broker.PrefixIssuance), Workload: "app"},
	}}
	ended := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	rec, err := broker.NewReconciler(broker.ReconcilerOptions{Source: src, Store: memstore.New(time.Now), Audit: brokertest.DiscardSink{},
		Now: func() time.Time { return ended }})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	if err := registerReconcileMetrics(reg, rec); err != nil {
		t.Fatal(err)
	}
	gather := func() map[string]float64 {
		t.Helper()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]float64{}
		for _, mf := range mfs {
			for _, m := range mf.GetMetric() {
				key := mf.GetName()
				for _, l := range m.GetLabel() {
					key += "{" + l.GetName() + "=" + l.GetValue() + "}"
				}
				switch {
				case m.GetCounter() != nil:
					out[key] = m.GetCounter().GetValue()
				case m.GetGauge() != nil:
					out[key] = m.GetGauge().GetValue()
				}
			}
		}
		return out
	}
	want := map[string]float64{
		"keytrail_reconcile_runs_total{outcome=ok}": 0, "keytrail_reconcile_runs_total{outcome=error}": 0,
		"keytrail_reconcile_tokens_total": 0, "keytrail_reconcile_gone_total": 0, "keytrail_reconcile_failures_total": 0,
		"keytrail_reconcile_last_success_timestamp_seconds":          0,
		"keytrail_reconcile_revoked_total{reason=no_record}":         0,
		"keytrail_reconcile_revoked_total{reason=not_audited}":       0,
		"keytrail_reconcile_revoked_total{reason=issuance_revoked}":  0,
		"keytrail_reconcile_revoked_total{reason=reference_differs}": 0,
	}
	if diff := cmp.Diff(want, gather()); diff != "" {
		t.Errorf("metrics before a run (-want +got):\n%s", diff)
	}
	if _, err := rec.RunOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	want["keytrail_reconcile_runs_total{outcome=ok}"] = 1
	want["keytrail_reconcile_tokens_total"] = 2
	want["keytrail_reconcile_revoked_total{reason=no_record}"] = 2
	want["keytrail_reconcile_last_success_timestamp_seconds"] = float64(ended.Unix())
	if diff := cmp.Diff(want, gather()); diff != "" {
		t.Errorf("metrics after a run that revoked 2 (-want +got):\n%s", diff)
	}
}

// TestReconcileSwitchValues: KEYTRAIL_RECONCILE=off turns the Vault token
// reconciliation off; any other value (false, 0, no, a typo such as of)
// was taken as "on" without a word, so an operator who meant to turn it
// off had it revoking tokens. Such a value now stops the start-up naming
// the variable; unset and "on" (any case) keep it on.
func TestReconcileSwitchValues(t *testing.T) {
	for v, wantErr := range map[string]bool{"": false, "on": false, "ON": false, "false": true, "0": true, "no": true, "of": true, "disabled": true} {
		_, _, _, err := reconcileTuning(func(k string) string {
			if k == envReconcile {
				return v
			}
			return ""
		}, time.Second)
		if !wantErr {
			if err != nil {
				t.Errorf("%s=%q: %v, want on", envReconcile, v, err)
			}
			continue
		}
		want := envReconcile + "=" + strconv.Quote(v) + `: only "off" turns the reconciliation off`
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s=%q: %v, want an error containing %q", envReconcile, v, err, want)
		}
	}
}
