package broker

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/audit"
)

// A kept record decodes to one that encodes to the same JSON as the
// record the Store returned (what a write-back puts), whichever fields it
// holds: the compact form's and those only the JSON form carries.
func TestKeptRevocationRoundTrip(t *testing.T) {
	at := time.Date(2026, 11, 29, 12, 0, 0, 123456789, time.UTC)
	recs := []*Revocation{
		{ID: "rev_1", Selector: RevokeSelector{IssuanceID: "iss_1"}, Reason: "INC-1", Admin: "alice", CreatedAt: at, Matched: 1,
			Revoked: []string{"iss_1"}, Failed: []RevokeFailure{}, CompletedAt: at.Add(time.Second)},
		{ID: "rev_2", Selector: RevokeSelector{Workload: "w", Owner: "o", SessionID: "ses_1"}, Reason: "r é \x00 \"q\"", Block: true,
			CreatedAt: at, Matched: 3, Revoked: []string{"iss_1", "iss_2"}, Pending: []string{"iss_3"},
			Failed: []RevokeFailure{{IssuanceID: "iss_3", Error: "vault: unreachable"}}, Blocks: []string{"w", "w2"},
			SweepAt: at.Add(time.Minute), SweptBy: "swp_1", SweptEarlier: []string{"a", ""}},
		{ID: "rev_3", CreatedAt: at}, // nil lists
		{ID: "rev_4", CreatedAt: at, Revoked: []string{}, Pending: []string{}}, // empty, not nil
		{ID: "rev_5", Selector: RevokeSelector{IssuanceID: "iss_1"}, CreatedAt: at, Revoked: []string{"iss_2"}},
		{ID: "rev_6", Selector: RevokeSelector{IssuanceID: "iss_1"}, CreatedAt: at, Revoked: []string{"iss_1", "iss_1"}},
		{ID: "rev_7", Block: true, Blocks: []string{"w"}, CreatedAt: at, Unblocked: map[string]time.Time{"w": at}},
		{ID: "rev_8", CreatedAt: at, Decision: []*audit.Event{{Type: "revoke"}}},
		{ID: "rev_9", CreatedAt: at.In(time.FixedZone("X", 3600))},
		{ID: "rev_10", CreatedAt: at, CompletedAt: at.In(time.FixedZone("X", 3600))},
		{ID: "rev_11", CreatedAt: at, Matched: -1},
	}
	for _, r := range recs {
		want, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		// As a Store returns it: decoded from its JSON.
		var stored Revocation
		if err := json.Unmarshal(want, &stored); err != nil {
			t.Fatal(err)
		}
		k := keepRevocation(&stored)
		got, err := k.revocation()
		if err != nil {
			t.Fatalf("%s: %v", r.ID, err)
		}
		gotJSON, _ := json.Marshal(got)
		if string(gotJSON) != string(want) {
			t.Errorf("%s:\n got %s\nwant %s", r.ID, gotJSON, want)
		}
		if !k.createdAt().Equal(r.CreatedAt) {
			t.Errorf("%s: createdAt %v, want %v", r.ID, k.createdAt(), r.CreatedAt)
		}
		compact := k[8] == keptCompact
		if wantCompact := r.Unblocked == nil && r.Decision == nil && r.ID != "rev_9" && r.ID != "rev_10"; compact != wantCompact {
			t.Errorf("%s: compact %v, want %v", r.ID, compact, wantCompact)
		}
		// A truncated or damaged encoding is an error, not a record.
		for n := range len(k) {
			if _, err := k[:n].revocation(); err == nil && n < len(k) {
				t.Errorf("%s: cut at %d of %d decodes", r.ID, n, len(k))
			}
		}
	}
}

// BenchmarkKeepRevocation is the cost a full read adds per revocation
// to keep its record encoded (next to decoding it from the Store's JSON,
// BenchmarkDecodeRevocation).
func BenchmarkKeepRevocation(b *testing.B) {
	r := benchRevocation()
	b.ReportAllocs()
	for range b.N {
		_ = keepRevocation(r)
	}
}

func BenchmarkDecodeRevocation(b *testing.B) {
	raw, _ := json.Marshal(benchRevocation())
	b.ReportAllocs()
	for range b.N {
		var r Revocation
		_ = json.Unmarshal(raw, &r)
	}
}

func benchRevocation() *Revocation {
	at := time.Date(2026, 11, 29, 12, 0, 0, 123456789, time.UTC)
	return &Revocation{ID: NewID(PrefixRevocation), Selector: RevokeSelector{IssuanceID: NewID(PrefixIssuance)},
		Reason: "INC-10000 leaked in a build log", Admin: "alice@example.com", CreatedAt: at, Matched: 1,
		Revoked: []string{NewID(PrefixIssuance)}, Failed: []RevokeFailure{}, CompletedAt: at}
}
