package broker_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
)

// slowRecordStore is a store on which writing a revocation record
// (slowPut), or reading one (slowGet), takes took (a record naming 100,000
// issuances: its JSON encoded or decoded whole, more under load): a call
// whose context leaves it less time fails with the deadline, as go-redis
// does. No call waits: the time left is checked when it starts. With
// lostReply, PutRevocation writes the record, then answers
// store_unavailable (its reply lost).
type slowRecordStore struct {
	broker.Store
	took             time.Duration
	slowPut, slowGet bool
	lostReply        bool
}

// AcksReplicas: no replicas required (the embedded store, or Redis without
// store.min_replicas), so a record read back is made.
func (s *slowRecordStore) AcksReplicas() bool { return false }

func (s *slowRecordStore) inTime(ctx context.Context, slow bool) error {
	if dl, ok := ctx.Deadline(); slow && ok && time.Until(dl) < s.took {
		return fmt.Errorf("redis: i/o timeout: %w", context.DeadlineExceeded)
	}
	return nil
}

func (s *slowRecordStore) PutRevocation(ctx context.Context, r *broker.Revocation) error {
	if err := s.inTime(ctx, s.slowPut); err != nil {
		return broker.Unavailable("store_unavailable", time.Second, err)
	}
	if err := s.Store.PutRevocation(ctx, r); err != nil {
		return err
	}
	if s.lostReply {
		return lostReply()
	}
	return nil
}

func (s *slowRecordStore) GetRevocation(ctx context.Context, id string) (*broker.Revocation, error) {
	if err := s.inTime(ctx, s.slowGet); err != nil {
		return nil, broker.Unavailable("store_unavailable", time.Second, err)
	}
	return s.Store.GetRevocation(ctx, id)
}

// TestLargeRevocationCreatedWithinRecordTimeout: the creation of a
// revocation record (PutRevocation), and its read-back after a write whose
// reply was lost (revocationStored), were given the flat StoreTimeout (2 s)
// however large the record: a record naming 100,000 issuances takes
// 0.2-0.6 s to decode, seconds under load. The write then failed (not
// made, although nothing was wrong but its size), or the read-back timed
// out and the revocation was answered "not made" although its record was
// stored (and the worker carried it out). Both now get the time an update
// of the record gets (recordTimeout: 2 s more per 25,000 issuances). Here
// the record names 30,000 (4 s) and its write (write), or its read after a
// write whose reply was lost (read-back), takes 3 s.
func TestLargeRevocationCreatedWithinRecordTimeout(t *testing.T) {
	for _, tt := range []struct {
		name     string
		readBack bool
	}{{"write", false}, {"read-back", true}} {
		t.Run(tt.name, func(t *testing.T) {
			const n = 30_000
			var slow *slowRecordStore
			var bulk *bulkStore
			f := newRevFixture(t, func(_ *revFixture, st broker.Store) broker.Store {
				bulk = &bulkStore{Store: st, m: map[string]broker.Issuance{}}
				slow = &slowRecordStore{Store: bulk, took: 3 * time.Second, slowPut: !tt.readBack, slowGet: tt.readBack, lostReply: tt.readBack}
				return slow
			})
			now := f.clock()
			for i := range n {
				id := fmt.Sprintf("iss_01JTEST%019d", i)
				bulk.m[id] = broker.Issuance{
					ID: id, Workload: "payments-api", Owner: "team-payments",
					SessionID: "ses_1", Grant: "payments-vault", Kind: broker.KindVaultToken,
					IssuedAt: now, ExpiresAt: now.Add(time.Hour),
				}
			}
			ctx := context.Background()
			rev, err := f.svc.Revoke(ctx, secops, broker.RevokeSelector{Workload: "payments-api"}, "INC-9", broker.RevokeOptions{}, "req_big")
			if err != nil {
				t.Fatalf("Revoke() of %d issuances, the record's write or read taking %v = %v; want it made", n, slow.took, err)
			}
			if rev.Matched != n || len(rev.Revoked) != n {
				t.Errorf("Revoke() matched %d, revoked %d; want %d", rev.Matched, len(rev.Revoked), n)
			}
			if got, err := f.mem.GetRevocation(ctx, rev.ID); err != nil || got.Matched != n {
				t.Errorf("stored revocation: %v; want it stored, naming %d", err, n)
			}
			for _, e := range f.sink.Events() {
				if e.Type == "revoke_result" && (e.Details["not_made"] == true || e.Outcome.Status != 200) {
					t.Errorf("revoke_result %+v not_made=%v; want 200, made", e.Outcome, e.Details["not_made"])
				}
			}
		})
	}
}
