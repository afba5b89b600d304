package broker_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/broker/trace"
)

// splitBulk is the ids of splitStore's extra issuances: enough that a
// revocation naming them all is split over several audit events.
const splitBulk = 20_000

// splitStore holds splitBulk issuances of payments-api in a plain map in
// front of Store, and lists a workload's issuances as: the oldest one the
// Store holds, the map's in order, then the Store's others. A revocation
// of payments-api then names the first issuance made through Exchange in
// its first revoke event and the others in its last.
type splitStore struct {
	*bulkStore // its map and its PutIssuance and GetIssuance
	order      []string
	// putRevocation, when set, answers PutRevocation after (applied) or
	// instead of (not) the Store.
	putRevocation func() (err error, applied bool)
}

func (b *splitStore) PutRevocation(ctx context.Context, r *broker.Revocation) error {
	if b.putRevocation == nil {
		return b.Store.PutRevocation(ctx, r)
	}
	err, applied := b.putRevocation()
	if applied {
		if perr := b.Store.PutRevocation(ctx, r); perr != nil {
			return perr
		}
	}
	return err
}

func (b *splitStore) ListIssuances(ctx context.Context, f broker.IssuanceFilter) ([]*broker.Issuance, error) {
	list, err := b.Store.ListIssuances(ctx, f)
	if err != nil || f.Workload != "payments-api" || len(list) == 0 {
		return list, err
	}
	slices.SortFunc(list, func(a, c *broker.Issuance) int { return a.IssuedAt.Compare(c.IssuedAt) })
	b.mu.Lock()
	defer b.mu.Unlock()
	out := []*broker.Issuance{list[0]}
	for _, id := range b.order {
		is := b.m[id]
		if is.RevokedAt.IsZero() && (f.ActiveAt.IsZero() || f.ActiveAt.Before(is.ExpiresAt)) {
			out = append(out, &is)
		}
	}
	return append(out, list[1:]...), nil
}

// splitFixture is a revFixture whose audit events are sealed as the audit
// file seals them into log (and path, by write).
type splitFixture struct {
	*revFixture
	bulk *splitStore
	path string
	mu   sync.Mutex
	log  bytes.Buffer
	// refuse, when set, makes the audit log refuse the events it returns
	// true for (a failed write).
	refuse func(ev *audit.Event) bool
}

func newSplitFixture(t *testing.T) *splitFixture {
	t.Helper()
	return newSplitFixtureAudit(t, nil)
}

// oneByOne hides the fake sink's AppendBatch: a sink that writes events one
// at a time.
type oneByOne struct{ broker.AuditSink }

// newSplitFixtureAudit is newSplitFixture whose Service writes its audit
// events to auditWrap(sink) when auditWrap is set.
func newSplitFixtureAudit(t *testing.T, auditWrap func(*brokertest.Sink) broker.AuditSink) *splitFixture {
	t.Helper()
	sf := &splitFixture{path: filepath.Join(t.TempDir(), "audit.jsonl")}
	sf.revFixture = newRevFixtureAudit(t, func(_ *revFixture, s broker.Store) broker.Store {
		sf.bulk = &splitStore{bulkStore: &bulkStore{Store: s, m: map[string]broker.Issuance{}}}
		return sf.bulk
	}, auditWrap)
	chain := audit.NewChain("c1")
	sf.sink.Fail = func(ev *audit.Event) bool {
		if sf.refuse != nil && sf.refuse(ev) {
			return true
		}
		cp := *ev // Seal fills in the chain fields
		if _, err := chain.Clone().Seal(&cp, sf.clock()); err != nil {
			t.Errorf("Seal(%s) = %v", ev.Type, err)
			return true
		}
		return false
	}
	sf.sink.Record = func(ev *audit.Event) {
		cp := *ev
		line, err := chain.Seal(&cp, sf.clock())
		if err != nil {
			t.Errorf("Seal(%s) = %v", ev.Type, err)
			return
		}
		sf.mu.Lock()
		defer sf.mu.Unlock()
		sf.log.Write(append(line, '\n'))
	}
	now := sf.clock()
	for i := range splitBulk {
		id := fmt.Sprintf("iss_01JTEST%019d", i)
		sf.bulk.order = append(sf.bulk.order, id)
		sf.bulk.m[id] = broker.Issuance{
			ID: id, Workload: "payments-api", Owner: "team-payments", SessionID: "ses_1",
			Grant: "payments-vault", Kind: broker.KindVaultToken, IssuedAt: now, ExpiresAt: now.Add(time.Hour),
		}
	}
	return sf
}

// write puts the sealed log in sf.path, as the audit file holds it.
func (sf *splitFixture) write(t *testing.T) {
	t.Helper()
	sf.mu.Lock()
	defer sf.mu.Unlock()
	if err := os.WriteFile(sf.path, sf.log.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
}

// index reads the sealed log as keytrail trace --audit-log does.
func (sf *splitFixture) index(t *testing.T) *trace.Index {
	t.Helper()
	x, err := trace.NewIndex(trace.Options{})
	if err != nil {
		t.Fatal(err)
	}
	sf.mu.Lock()
	defer sf.mu.Unlock()
	if _, err := x.Consume(bytes.NewReader(sf.log.Bytes())); err != nil {
		t.Fatalf("Consume() = %v", err)
	}
	if st := x.Stats(); st.Skipped > 0 {
		t.Fatalf("index skipped %d line(s)", st.Skipped)
	}
	return x
}

// partsOf returns the part numbers of the events of type typ of
// revocation rid in evs, in order, and the parts each says there are.
func partsOf(evs []*audit.Event, typ, rid string) (parts []int, of []int) {
	for _, ev := range evs {
		if ev.Type != typ || ev.RevocationID != rid {
			continue
		}
		p, _ := ev.Details["part"].(float64)
		n, _ := ev.Details["parts"].(float64)
		parts, of = append(parts, int(p)), append(of, int(n))
	}
	return parts, of
}

// TestTraceSplitRevocation revokes a workload holding more credentials
// than one revoke event can name, so that the revocation is written as
// several revoke and revoke_result events (details.part of details.parts).
// A trace of an issuance named by the first part, a middle one or the
// last, and of the revocation id, must each show the revocation whole:
// every revoke part and every revoke_result part, with the issuance
// revoked by it; and the online trace (Live, over the same file) must
// answer as the offline index does.
func TestTraceSplitRevocation(t *testing.T) {
	sf := newSplitFixture(t)
	first := sf.issue(t, "payments")
	last := sf.issue(t, "payments")
	sf.advance(time.Minute)
	rev, err := sf.svc.Revoke(context.Background(), secops, broker.RevokeSelector{Workload: "payments-api"}, "incident 7", broker.RevokeOptions{}, "req_big")
	if err != nil {
		t.Fatalf("Revoke() = %v", err)
	}
	if rev.Matched != splitBulk+2 || len(rev.Revoked) != splitBulk+2 {
		t.Fatalf("Revoke() matched %d, revoked %d; want %d", rev.Matched, len(rev.Revoked), splitBulk+2)
	}
	sf.write(t)
	x := sf.index(t)
	live, err := trace.NewLive(trace.LiveOptions{Path: sf.path, Store: sf.store, Now: sf.clock, RefreshWait: time.Minute})
	if err != nil {
		t.Fatal(err)
	}

	middle := fmt.Sprintf("iss_01JTEST%019d", splitBulk/2) // no issue event, a middle part
	for _, q := range []string{first.ID, middle, last.ID, rev.ID} {
		res, err := x.Lookup(q)
		if err != nil {
			t.Fatalf("Lookup(%s) = %v", q, err)
		}
		revokeParts, revokeOf := partsOf(res.Revocations, audit.TypeRevoke, rev.ID)
		resultParts, resultOf := partsOf(res.Revocations, audit.TypeRevokeResult, rev.ID)
		if len(revokeParts) < 2 {
			t.Fatalf("Lookup(%s): revoke parts %v, want the revocation split over several events", q, revokeParts)
		}
		n := revokeOf[0]
		want := make([]int, n)
		for i := range want {
			want[i] = i + 1
		}
		if !slices.Equal(revokeParts, want) || slices.ContainsFunc(revokeOf, func(k int) bool { return k != n }) {
			t.Errorf("Lookup(%s): revoke parts %v of %v, want %v of %d (the whole decision)", q, revokeParts, revokeOf, want, n)
		}
		if len(resultParts) != resultOf[0] {
			t.Errorf("Lookup(%s): revoke_result parts %v of %v, want every part", q, resultParts, resultOf)
		}
		if q != rev.ID && (res.Issuance.ID != q || res.Issuance.RevocationID != rev.ID || res.Issuance.RevokedAt.IsZero()) {
			t.Errorf("Lookup(%s): issuance %s revoked at %v by %q, want %s revoked by %s", q, res.Issuance.ID, res.Issuance.RevokedAt, res.Issuance.RevocationID, q, rev.ID)
		}

		got, err := live.Trace(context.Background(), q)
		if err != nil {
			t.Fatalf("Live.Trace(%s) = %v", q, err)
		}
		if got.Issuance.ID != res.Issuance.ID || got.Issuance.RevocationID != res.Issuance.RevocationID ||
			!got.Issuance.RevokedAt.Equal(res.Issuance.RevokedAt) || got.Query != res.Query ||
			!slices.Equal(got.AlsoMatched, res.AlsoMatched) || !slices.Equal(eventSeqs(got.Revocations), eventSeqs(res.Revocations)) {
			t.Errorf("Live.Trace(%s) = issuance %s (revoked %v by %q), query %v, %d also matched, revocation events %v;\noffline: issuance %s (revoked %v by %q), query %v, %d also matched, revocation events %v",
				q, got.Issuance.ID, got.Issuance.RevokedAt, got.Issuance.RevocationID, got.Query, len(got.AlsoMatched), eventSeqs(got.Revocations),
				res.Issuance.ID, res.Issuance.RevokedAt, res.Issuance.RevocationID, res.Query, len(res.AlsoMatched), eventSeqs(res.Revocations))
		}
	}
}

func eventSeqs(evs []*audit.Event) []uint64 {
	out := make([]uint64, len(evs))
	for i, ev := range evs {
		out[i] = ev.Seq
	}
	return out
}

// TestTraceTextSplitRevocation: keytrail trace's text of a revocation
// split over several events says which part each revoke and revoke_result
// line is, and names a bounded number of the issuances a revocation id
// also matches (all of them are in --json).
func TestTraceTextSplitRevocation(t *testing.T) {
	sf := newSplitFixture(t)
	sf.issue(t, "payments")
	sf.advance(time.Minute)
	rev, err := sf.svc.Revoke(context.Background(), secops, broker.RevokeSelector{Workload: "payments-api"}, "incident 7", broker.RevokeOptions{}, "req_big")
	if err != nil {
		t.Fatalf("Revoke() = %v", err)
	}
	res, err := sf.index(t).Lookup(rev.ID)
	if err != nil {
		t.Fatalf("Lookup(%s) = %v", rev.ID, err)
	}
	_, of := partsOf(res.Revocations, audit.TypeRevoke, rev.ID)
	if len(of) == 0 || of[0] < 2 {
		t.Fatalf("revoke parts of %v, want the revocation split", of)
	}
	var b bytes.Buffer
	if err := res.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	text := b.String()
	for _, typ := range []string{audit.TypeRevoke, audit.TypeRevokeResult} {
		for i := 1; i <= of[0]; i++ {
			if !regexp.MustCompile(fmt.Sprintf(`(?m)^  \S+  %s +%s .*part %d/%d$`, typ, rev.ID, i, of[0])).MatchString(text) {
				t.Errorf("trace text has no %s line of part %d/%d:\n%.3000s", typ, i, of[0], text)
			}
		}
	}
	if want := fmt.Sprintf("the value also matches %d other issuance(s): ", splitBulk); !strings.Contains(text, want) {
		t.Errorf("trace text lacks %q:\n%.3000s", want, text)
	}
	if len(text) > 16<<10 {
		t.Errorf("trace text is %d bytes, want the also-matched issuances bounded (--json lists them): %.500s...", len(text), text[len(text)-500:])
	}
}

// TestRevokeSplitAuditAllOrNothing: the revoke events of a split
// revocation and its block events reach the audit log in one batch
// (BatchAuditSink), so that a disk failing after the first part leaves none
// of them. Written one by one, the first part stayed durable and the
// revoke_result with not_made that should have withdrawn it failed on the
// same broken disk: trace and report then read the issuances the part names
// as revoked by a revocation that was refused (503) and never made.
func TestRevokeSplitAuditAllOrNothing(t *testing.T) {
	tests := []struct {
		name  string
		block bool
		// breaks: the first event the disk refuses; it refuses every
		// event after it too.
		breaks func(ev *audit.Event) bool
	}{
		{"ok/one-batch", false, nil},
		{"ok/one-batch-with-block", true, nil},
		{"fail/disk-breaks-at-second-part", false, func(ev *audit.Event) bool {
			return ev.Type == audit.TypeRevoke && ev.Details["part"] == 2
		}},
		{"fail/disk-breaks-at-block-event", true, func(ev *audit.Event) bool { return ev.Type == audit.TypeBlock }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sf := newSplitFixture(t)
			first := sf.issue(t, "payments")
			sf.advance(time.Minute)
			var broken bool
			if tt.breaks != nil {
				sf.refuse = func(ev *audit.Event) bool {
					broken = broken || tt.breaks(ev)
					return broken
				}
			}
			rev, err := sf.svc.Revoke(context.Background(), secops, broker.RevokeSelector{Workload: "payments-api"}, "incident 7", broker.RevokeOptions{Block: tt.block}, "req_big")
			sf.refuse = nil
			if tt.breaks == nil {
				if err != nil {
					t.Fatalf("Revoke() = %v", err)
				}
				// Every revoke and block event of the revocation came in
				// one batch, and nothing else with them.
				var decision []*audit.Event
				for _, ev := range sf.sink.Events() {
					if ev.RevocationID == rev.ID && (ev.Type == audit.TypeRevoke || ev.Type == audit.TypeBlock) {
						decision = append(decision, ev)
					}
				}
				parts, _ := partsOf(decision, audit.TypeRevoke, rev.ID)
				if len(parts) < 2 {
					t.Fatalf("revoke parts %v, want the decision split over several events", parts)
				}
				var together bool
				for _, b := range sf.sink.Batches() {
					together = together || slices.Equal(b, decision)
				}
				if !together {
					t.Errorf("the %d revoke and block events of %s were not made durable in one batch (batches: %d)", len(decision), rev.ID, len(sf.sink.Batches()))
				}
				return
			}
			if !errors.Is(err, broker.ErrUnavailable) {
				t.Fatalf("Revoke() = %v, want ErrUnavailable (audit_unavailable)", err)
			}
			for _, ev := range sf.sink.Events() {
				if ev.Type == audit.TypeRevoke || ev.Type == audit.TypeBlock {
					t.Errorf("durable %s event (part %v of %v) of a revocation that was refused", ev.Type, ev.Details["part"], ev.Details["parts"])
				}
			}
			if is, err := sf.store.GetIssuance(context.Background(), first.ID); err != nil || !is.RevokedAt.IsZero() {
				t.Fatalf("GetIssuance(%s) = revoked at %v, %v; want it not revoked", first.ID, is.RevokedAt, err)
			}
			res, err := sf.index(t).Lookup(first.ID)
			if err != nil {
				t.Fatalf("Lookup(%s) = %v", first.ID, err)
			}
			if !res.Issuance.RevokedAt.IsZero() || res.Issuance.RevocationID != "" {
				t.Errorf("Lookup(%s): revoked at %v by %q, want not revoked (the revocation was not made)", first.ID, res.Issuance.RevokedAt, res.Issuance.RevocationID)
			}
		})
	}
}

// TestRevokeSplitAuditFailureNotMade: with a sink that writes events one by
// one (no BatchAuditSink), when the audit log takes the first revoke event
// of a split revocation and refuses a later one (or a block event after
// them), the revocation is refused (503) and nothing is revoked; trace and
// report must not read the issuances the written part names as revoked by
// it. A revoke_result with not_made says so.
func TestRevokeSplitAuditFailureNotMade(t *testing.T) {
	tests := []struct {
		name   string
		block  bool
		refuse func(ev *audit.Event) bool
	}{
		{"fail/second-revoke-part", false, func(ev *audit.Event) bool {
			return ev.Type == audit.TypeRevoke && ev.Details["part"] == 2
		}},
		{"fail/block-event", true, func(ev *audit.Event) bool { return ev.Type == audit.TypeBlock }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sf := newSplitFixtureAudit(t, func(s *brokertest.Sink) broker.AuditSink { return oneByOne{s} })
			first := sf.issue(t, "payments")
			sf.advance(time.Minute)
			sf.refuse = tt.refuse
			_, err := sf.svc.Revoke(context.Background(), secops, broker.RevokeSelector{Workload: "payments-api"}, "incident 7", broker.RevokeOptions{Block: tt.block}, "req_big")
			if !errors.Is(err, broker.ErrUnavailable) {
				t.Fatalf("Revoke() = %v, want ErrUnavailable (audit_unavailable)", err)
			}
			sf.refuse = nil
			if is, err := sf.store.GetIssuance(context.Background(), first.ID); err != nil || !is.RevokedAt.IsZero() {
				t.Fatalf("GetIssuance(%s) = revoked at %v, %v; want it not revoked", first.ID, is.RevokedAt, err)
			}
			x := sf.index(t)
			res, err := x.Lookup(first.ID)
			if err != nil {
				t.Fatalf("Lookup(%s) = %v", first.ID, err)
			}
			if !res.Issuance.RevokedAt.IsZero() || res.Issuance.RevocationID != "" {
				t.Errorf("Lookup(%s): revoked at %v by %q, want not revoked (the revocation was not made)", first.ID, res.Issuance.RevokedAt, res.Issuance.RevocationID)
			}
			rep, err := trace.BuildReport(trace.ReportInput{Now: sf.clock(), Events: x.Events()})
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range rep.Workloads {
				if w.Revoked != 0 || w.Active != 1 {
					t.Errorf("report: workload %s revoked %d, active %d; want 0 and 1", w.Name, w.Revoked, w.Active)
				}
			}
			for _, r := range rep.Timeline.Rows {
				for i, n := range r.Revocations {
					if n != 0 {
						t.Errorf("report timeline: %s has %d revocation(s) in bucket %d, want none", r.Workload, n, i)
					}
				}
			}
		})
	}
}

// TestReportSplitRevocation: keytrail report over a revocation split over
// several revoke and revoke_result events (and, when its record was not
// confirmed, the worker's and the sweep's results, each split again)
// counts every revoked issuance once, and none of a revocation not made;
// trace agrees, offline and online.
func TestReportSplitRevocation(t *testing.T) {
	tests := []struct {
		name          string
		putRevocation func() (error, bool)
		made          bool
	}{
		{"ok/made", nil, true},
		{"ok/unconfirmed-then-worker-and-sweep", func() (error, bool) { return errUnreplicated(), true }, true},
		{"ok/not-made", func() (error, bool) {
			return broker.Unavailable("store_unavailable", time.Second, errors.New("connection refused")), false
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sf := newSplitFixture(t)
			first := sf.issue(t, "payments")
			last := sf.issue(t, "payments")
			sf.advance(time.Minute)
			sf.bulk.putRevocation = tt.putRevocation
			ctx := context.Background()
			_, err := sf.svc.Revoke(ctx, secops, broker.RevokeSelector{Workload: "payments-api"}, "incident 7", broker.RevokeOptions{}, "req_big")
			if (err == nil) != (tt.putRevocation == nil) {
				t.Fatalf("Revoke() = %v", err)
			}
			sf.bulk.putRevocation = nil
			if tt.putRevocation != nil && tt.made {
				w, err := broker.NewRevocationWorker(sf.svc, broker.WorkerOptions{Interval: time.Second})
				if err != nil {
					t.Fatal(err)
				}
				if err := w.Tick(ctx); err != nil {
					t.Fatalf("Tick() = %v", err)
				}
				sf.advance(sf.svc.SweepDelay() + time.Second)
				if err := w.Tick(ctx); err != nil {
					t.Fatalf("Tick() after the sweep delay = %v", err)
				}
			}
			sf.write(t)
			x := sf.index(t)
			var revRevoke, revResult int
			for _, ev := range x.Events() {
				if _, _, ok := partOf(ev); ok && ev.Type == audit.TypeRevoke {
					revRevoke++
				} else if ok {
					revResult++
				}
			}
			if revRevoke < 2 || (tt.made && revResult < 2) {
				t.Fatalf("%d revoke and %d revoke_result part events, want the revocation split", revRevoke, revResult)
			}

			wantRevoked, wantActive, wantTimeline := 0, 2, 0
			if tt.made {
				wantRevoked, wantActive, wantTimeline = 2, 0, splitBulk+2
			}
			rep, err := trace.BuildReport(trace.ReportInput{Now: sf.clock(), Events: x.Events()})
			if err != nil {
				t.Fatal(err)
			}
			live, err := trace.NewLive(trace.LiveOptions{Path: sf.path, Store: sf.store, Now: sf.clock, RefreshWait: time.Minute}) // the first load of splitBulk events can take over the default 2 s on a loaded machine (busy: 503)
			if err != nil {
				t.Fatal(err)
			}
			online, err := live.Report(ctx)
			if err != nil {
				t.Fatalf("Live.Report() = %v", err)
			}
			for name, r := range map[string]*trace.Report{"offline": rep, "online": online} {
				revoked, active, timeline := 0, 0, 0
				for _, w := range r.Workloads {
					revoked += w.Revoked
					active += w.Active
				}
				for _, row := range r.Timeline.Rows {
					for _, n := range row.Revocations {
						timeline += n
					}
				}
				if revoked != wantRevoked || active != wantActive || timeline != wantTimeline {
					t.Errorf("%s report: revoked %d, active %d, timeline revocations %d; want %d, %d, %d", name, revoked, active, timeline, wantRevoked, wantActive, wantTimeline)
				}
			}
			for _, id := range []string{first.ID, last.ID, fmt.Sprintf("iss_01JTEST%019d", splitBulk-1)} {
				res, err := x.Lookup(id)
				if err != nil {
					t.Fatalf("Lookup(%s) = %v", id, err)
				}
				got, err := live.Trace(ctx, id)
				if err != nil {
					t.Fatalf("Live.Trace(%s) = %v", id, err)
				}
				for name, r := range map[string]*trace.Result{"offline": res, "online": got} {
					if revoked := !r.Issuance.RevokedAt.IsZero(); revoked != tt.made {
						t.Errorf("%s trace of %s: revoked at %v by %q, want revoked %v", name, id, r.Issuance.RevokedAt, r.Issuance.RevocationID, tt.made)
					}
				}
			}
		})
	}
}

// partOf reads details.part and details.parts of an event as written.
func partOf(ev *audit.Event) (part, parts int, ok bool) {
	p, _ := ev.Details["part"].(float64)
	n, _ := ev.Details["parts"].(float64)
	return int(p), int(n), p > 0
}
