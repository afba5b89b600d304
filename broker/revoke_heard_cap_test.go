package broker_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
)

// TestRevocationCacheForgedNoticesBounded: anyone who can PUBLISH on the
// notice channel can send notices without limit, and the cache keeps the
// revoked ids they name, and the blocks they name that a loss then finds
// missing (kept here only), and the blocks they lift, for the Window.
// Past the cap (here 5) a
// notice's new entries are refused, counted and WARNed about, while
// nothing known is dropped: the Store's revoked ids and blocks stand, and
// so does an id a notice named before the cap was reached. (Every forged
// id, lost block and lifted block was kept: 40 of each.)
func TestRevocationCacheForgedNoticesBounded(t *testing.T) {
	const limit, n = 5, 40
	f := newLossFixture(t)
	broker.SetHeardCap(f.c, limit)
	for i := range n {
		f.c.Apply(broker.Notice{RevocationID: fmt.Sprintf("rev_f%d", i), Revoked: []string{fmt.Sprintf("iss_f%d", i), "iss_w1"}})
	}
	kept := 0
	for i := range n {
		if f.c.Revoked(fmt.Sprintf("iss_f%d", i)) {
			kept++
		}
	}
	if kept > limit || !f.c.Revoked("iss_f0") {
		t.Errorf("forged revoked ids kept = %d (iss_f0: %v); want at most %d, the first kept", kept, f.c.Revoked("iss_f0"), limit)
	}
	if !f.c.Revoked("iss_w1") || !f.c.Revoked("iss_w2") {
		t.Errorf("Revoked(iss_w1, iss_w2) = %v, %v past the cap; want true, true", f.c.Revoked("iss_w1"), f.c.Revoked("iss_w2"))
	}
	if got := f.c.NoticesRefused(); got != n-limit {
		t.Errorf("NoticesRefused() = %d after %d forged ids, cap %d; want %d", got, n, limit, n-limit)
	}

	// Forged block notices, each naming a revocation that never was: a
	// listing takes them for blocks lost with their revocation.
	for i := range n {
		f.c.Apply(broker.Notice{RevocationID: fmt.Sprintf("rev_b%d", i), Blocked: []string{fmt.Sprintf("wf%d", i)}})
	}
	for range 2 {
		f.advance(time.Second)
		if err := f.c.Refresh(f.ctx); err != nil {
			t.Fatal(err)
		}
	}
	blocked := 0
	for i := range n {
		if f.c.Blocked(fmt.Sprintf("wf%d", i)) {
			blocked++
		}
	}
	if blocked > limit {
		t.Errorf("forged blocks kept after the listing = %d; want at most %d", blocked, limit)
	}
	for _, w := range f.blocked {
		if !f.c.Blocked(w) {
			t.Errorf("Blocked(%s) = false past the cap; want the Store's block kept", w)
		}
	}
	if got := f.c.NoticesRefused(); got < n-limit+n-limit {
		t.Errorf("NoticesRefused() = %d after %d forged blocks too; want at least %d", got, n, 2*(n-limit))
	}
	if l := f.logged(); strings.Count(l, "notices past the cap refused") != 1 {
		t.Errorf("logs = %q; want one WARN of the refusals (at most one a minute)", l)
	}
	// Unblocks of forged blocks, each remembered as lifted for the
	// Window; past the cap not remembered (the block, should it come
	// back, stands), and still lifted here.
	for i := range n {
		w := fmt.Sprintf("wu%d", i)
		f.c.Apply(broker.Notice{RevocationID: "rev_u" + w, Blocked: []string{w}})
		f.c.Apply(broker.Notice{RevocationID: "rev_u" + w, Unblocked: []string{w}})
		if f.c.Blocked(w) {
			t.Errorf("Blocked(%s) = true after its unblock notice; want lifted", w)
		}
	}
	if got := broker.LiftedUnblocks(f.c); got > limit {
		t.Errorf("LiftedUnblocks = %d after %d forged block/unblock pairs; want at most %d", got, n, limit)
	}
	f.advance(time.Minute)
	f.c.Apply(broker.Notice{RevocationID: "rev_late", Revoked: []string{"iss_late"}})
	if l := f.logged(); strings.Count(l, "notices past the cap refused") != 2 {
		t.Errorf("a minute later, logs = %q; want a second WARN", l)
	}
}

// TestRevocationCacheHeardIDsLeaveWhenRead: an id a notice named, once a
// refresh reads it from the Store, no longer counts against the cap on
// what notices alone keep.
func TestRevocationCacheHeardIDsLeaveWhenRead(t *testing.T) {
	f := newLossFixture(t)
	r := &broker.Revocation{ID: "rev_3", Selector: broker.RevokeSelector{Workload: "w3"}, Reason: "INC-3", CreatedAt: f.clock(),
		Matched: 1, Revoked: []string{"iss_w3"}, Failed: []broker.RevokeFailure{}, CompletedAt: f.clock()}
	if err := f.st.PutRevocation(f.ctx, r); err != nil {
		t.Fatal(err)
	}
	f.c.Apply(broker.Notice{RevocationID: "rev_3", Revoked: []string{"iss_w3"}})
	f.c.Apply(broker.Notice{RevocationID: "rev_x", Revoked: []string{"iss_x"}})
	if got := broker.HeardIDs(f.c); got != 2 {
		t.Fatalf("HeardIDs = %d after two notices; want 2", got)
	}
	f.advance(time.Second)
	if err := f.c.Refresh(f.ctx); err != nil {
		t.Fatal(err)
	}
	if got := broker.HeardIDs(f.c); got != 1 || !f.c.Revoked("iss_w3") || !f.c.Revoked("iss_x") {
		t.Errorf("after a refresh read rev_3: HeardIDs = %d, Revoked(iss_w3, iss_x) = %v, %v; want 1, true, true",
			got, f.c.Revoked("iss_w3"), f.c.Revoked("iss_x"))
	}
	f.advance(25 * time.Hour)
	if err := f.c.Refresh(f.ctx); err != nil {
		t.Fatal(err)
	}
	if got := broker.HeardIDs(f.c); got != 0 || f.c.Revoked("iss_x") {
		t.Errorf("past the Window: HeardIDs = %d, Revoked(iss_x) = %v; want 0, false", got, f.c.Revoked("iss_x"))
	}
}
