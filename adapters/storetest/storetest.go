// Package storetest is the contract suite every broker.Store passes: the
// in-memory store and the Redis store run the same subtests, so the broker
// behaves the same whichever one is wired in.
//
// Besides what broker.Store's doc comment promises, the suite pins down what
// both implementations agree on:
//
//   - records are stored and returned as their JSON encoding decodes: times in
//     UTC, claim numbers as float64, claim arrays as []any, empty slices and
//     maps with omitempty tags as nil. Stored records are copies: neither the
//     caller's value after Put nor a returned value can change what is stored;
//   - ListIssuances returns issuances ordered by expiry (millisecond
//     resolution), then id; ListRevocations by creation time, then id, narrowed by a RevocationFilter;
//     ListBlocks by workload;
//   - a nil record, an empty id or workload, an unknown RefKind and an empty
//     ref value are ErrInvalidRequest; DeleteBlock of a workload that is not
//     blocked is ErrNotFound, of a workload blocked by another revocation
//     than the one named ErrBlockChanged (and the block stays);
//   - a cancelled context is ErrUnavailable wrapping the context's error.
//
// RunNotifier is the same for broker.Notifier: memstore's in-process
// Notifier and the Redis store's pub/sub.
//
// Stores under test must use Epoch as their clock: stores that expire records
// (Redis) compute retention from it.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
)

// namedLikeTheMark are claims whose keys and values spell an issuance's
// revoked mark: nested, escaped and quoted.
func namedLikeTheMark() map[string]any {
	return map[string]any{
		"revoked_at": "2020-01-01T00:00:00Z", "revocation_id": "rev_claim",
		"nested":               map[string]any{"revoked_at": "2020-01-01T00:00:00Z"},
		`quote"revoked_at":"x`: `{"revoked_at":"y",\`,
	}
}

// nested is depth arrays nested in one another around a string.
func nested(depth int) any {
	var v any = "x"
	for range depth {
		v = []any{v}
	}
	return v
}

// Epoch is the fixed "now" of the suite; stores under test use it as their
// clock.
func Epoch() time.Time {
	return time.Date(2030, time.January, 2, 3, 4, 5, 123456789, time.UTC)
}

// AllRefKinds lists every RefKind a Store indexes.
func AllRefKinds() []broker.RefKind {
	return []broker.RefKind{
		broker.RefFingerprint, broker.RefAccessor, broker.RefJTI, broker.RefLeaseID,
		broker.RefUsername, broker.RefSerial, broker.RefRequestID,
	}
}

// SampleIssuance returns a fully populated issuance whose references are all
// derived from id, issued at `at` and expiring 15 minutes later.
func SampleIssuance(id string, at time.Time) *broker.Issuance {
	exp := at.Add(15 * time.Minute)
	return &broker.Issuance{
		ID:        id,
		Workload:  "payments-api",
		Owner:     "team-payments",
		SessionID: "ses_" + id,
		Grant:     "payments-vault",
		Kind:      broker.KindVaultToken,
		Identity:  broker.IdentityRef{Iss: "https://k8s.example", Sub: "system:serviceaccount:payments:api", JTI: "idjti-" + id},
		Act:       []broker.IdentityRef{{Iss: "https://agents.example", Sub: "agent-7"}},
		Audience:  "orders-api", // a broker JWT's; every field populated
		Claims: map[string]any{
			"kubernetes.io": map[string]any{"namespace": "payments", "pod": map[string]any{"uid": "pod-" + id}},
			"groups":        []any{"a", "b"},
			"n":             float64(3),
			"ok":            true,
		},
		Source:    broker.Source{IP: "10.0.0.7", UserAgent: "keytrail-fetch/1"},
		IssuedAt:  at,
		ExpiresAt: exp,
		Refs: broker.CredentialRefs{
			Fingerprint: "sha256:fp-" + id,
			Accessor:    "acc-" + id,
			LeaseID:     "database/creds/payments/lease-" + id,
			Username:    "v-keytrail-" + id,
			JTI:         "jti-" + id,
			Serial:      "serial-" + id,
			Mount:       "pki/" + id, // not an index: kept for revocation
			ExpiresAt:   exp,
		},
		RequestID:  "req-" + id,
		AuditChain: "chn_01J00000000000000000000000",
	}
}

// mountOf is is's recorded mount, "" for nil.
func mountOf(is *broker.Issuance) string {
	if is == nil {
		return ""
	}
	return is.Refs.Mount
}

// refValue is the value of is under kind.
func refValue(is *broker.Issuance, kind broker.RefKind) string {
	switch kind {
	case broker.RefFingerprint:
		return is.Refs.Fingerprint
	case broker.RefAccessor:
		return is.Refs.Accessor
	case broker.RefJTI:
		return is.Refs.JTI
	case broker.RefLeaseID:
		return is.Refs.LeaseID
	case broker.RefUsername:
		return is.Refs.Username
	case broker.RefSerial:
		return is.Refs.Serial
	case broker.RefRequestID:
		return is.RequestID
	}
	return ""
}

// Run runs the contract suite. newStore is called once per subtest and must
// return an empty store whose clock is Epoch.
func Run(t *testing.T, newStore func(t *testing.T) broker.Store) {
	t.Run("issuance", func(t *testing.T) { testIssuance(t, newStore) })
	t.Run("find", func(t *testing.T) { testFind(t, newStore) })
	t.Run("find-many", func(t *testing.T) { testFindMany(t, newStore) })
	t.Run("overwrite", func(t *testing.T) { testOverwrite(t, newStore) })
	t.Run("overwrite-expiry", func(t *testing.T) { testOverwriteExpiry(t, newStore) })
	t.Run("list", func(t *testing.T) { testList(t, newStore) })
	t.Run("revocation", func(t *testing.T) { testRevocation(t, newStore) })
	t.Run("revocation-version", func(t *testing.T) { testRevocationVersion(t, newStore) })
	t.Run("revocation-update", func(t *testing.T) { testRevocationUpdate(t, newStore) })
	t.Run("revocation-many", func(t *testing.T) { testRevocationMany(t, newStore) })
	t.Run("block", func(t *testing.T) { testBlock(t, newStore) })
	t.Run("mark-revoked", func(t *testing.T) { testMarkRevoked(t, newStore) })
	t.Run("deployment", func(t *testing.T) { testDeployment(t, newStore) })
	t.Run("retiring-keys", func(t *testing.T) { testRetiringKeys(t, newStore) })
	t.Run("ping", func(t *testing.T) { testPing(t, newStore) })
	t.Run("context", func(t *testing.T) { testContext(t, newStore) })
	t.Run("concurrency", func(t *testing.T) { testConcurrency(t, newStore) })
	t.Run("copies", func(t *testing.T) { testCopies(t, newStore) })
}

func ctx(t *testing.T) context.Context { return t.Context() }

func mustPut(t *testing.T, s broker.Store, is *broker.Issuance) {
	t.Helper()
	if err := s.PutIssuance(ctx(t), is); err != nil {
		t.Fatalf("PutIssuance(%s) = %v, want nil", is.ID, err)
	}
}

// mustGet reads issuance id or fails the test.
func mustGet(t *testing.T, s broker.Store, id string) *broker.Issuance {
	t.Helper()
	is, err := s.GetIssuance(ctx(t), id)
	if err != nil {
		t.Fatalf("GetIssuance(%s) = %v, want nil", id, err)
	}
	return is
}

func wantErr(t *testing.T, call string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Errorf("%s = %v, want %v", call, err, want)
	}
}

func testIssuance(t *testing.T, newStore func(t *testing.T) broker.Store) {
	t.Run("ok/roundtrip", func(t *testing.T) {
		s := newStore(t)
		in := SampleIssuance("iss_roundtrip", Epoch())
		in.RevokedAt = Epoch().Add(time.Minute)
		in.RevocationID = "rev_1"
		mustPut(t, s, in)
		got, err := s.GetIssuance(ctx(t), in.ID)
		if err != nil {
			t.Fatalf("GetIssuance(%s) = %v, want nil", in.ID, err)
		}
		if d := cmp.Diff(in, got); d != "" {
			t.Errorf("GetIssuance(%s) mismatch (-want +got):\n%s", in.ID, d)
		}
	})

	t.Run("ok/times-in-utc", func(t *testing.T) {
		s := newStore(t)
		zone := time.FixedZone("CEST", 2*60*60)
		in := SampleIssuance("iss_zone", Epoch().In(zone))
		mustPut(t, s, in)
		got, err := s.GetIssuance(ctx(t), in.ID)
		if err != nil {
			t.Fatalf("GetIssuance(%s) = %v, want nil", in.ID, err)
		}
		for name, tm := range map[string]time.Time{"issued_at": got.IssuedAt, "expires_at": got.ExpiresAt, "credential.expires_at": got.Refs.ExpiresAt} {
			if tm.Location() != time.UTC {
				t.Errorf("GetIssuance(%s).%s location = %v, want UTC", in.ID, name, tm.Location())
			}
		}
		if !got.IssuedAt.Equal(Epoch()) {
			t.Errorf("GetIssuance(%s).IssuedAt = %v, want %v", in.ID, got.IssuedAt, Epoch())
		}
	})

	t.Run("ok/claims-json-normalised", func(t *testing.T) {
		s := newStore(t)
		in := SampleIssuance("iss_claims", Epoch())
		in.Claims = map[string]any{"n": 3, "groups": []string{"x"}, "m": map[string]string{"k": "v"}}
		in.Act = []broker.IdentityRef{}
		mustPut(t, s, in)
		got, err := s.GetIssuance(ctx(t), in.ID)
		if err != nil {
			t.Fatalf("GetIssuance(%s) = %v, want nil", in.ID, err)
		}
		want := map[string]any{"n": float64(3), "groups": []any{"x"}, "m": map[string]any{"k": "v"}}
		if d := cmp.Diff(want, got.Claims); d != "" {
			t.Errorf("GetIssuance(%s).Claims mismatch (-want +got):\n%s", in.ID, d)
		}
		if got.Act != nil {
			t.Errorf("GetIssuance(%s).Act = %#v, want nil", in.ID, got.Act)
		}
	})

	t.Run("ok/credential-mount-kept", func(t *testing.T) {
		// Revoking a pki certificate needs the mount recorded at issuance
		// (its grant may be gone from the policy by then); a record
		// written before the mount was kept reads back without one.
		s := newStore(t)
		cert := SampleIssuance("iss_cert", Epoch())
		cert.Kind, cert.Grant = broker.KindPKI, "payments-cert"
		cert.Refs = broker.CredentialRefs{Fingerprint: "sha256:cert", Serial: "3d:0a:7f", Mount: "pki_int", ExpiresAt: cert.ExpiresAt}
		old := SampleIssuance("iss_cert_old", Epoch())
		old.Kind, old.Grant = broker.KindPKI, "payments-cert"
		old.Refs = broker.CredentialRefs{Fingerprint: "sha256:cert-old", Serial: "3d:0a:80", ExpiresAt: old.ExpiresAt}
		mustPut(t, s, cert)
		mustPut(t, s, old)
		for _, want := range []*broker.Issuance{cert, old} {
			got, err := s.GetIssuance(ctx(t), want.ID)
			if err != nil || got.Refs.Mount != want.Refs.Mount {
				t.Errorf("GetIssuance(%s) = mount %q, %v, want %q", want.ID, mountOf(got), err, want.Refs.Mount)
			}
			got, err = s.FindIssuance(ctx(t), broker.RefSerial, want.Refs.Serial)
			if err != nil || got.Refs.Mount != want.Refs.Mount {
				t.Errorf("FindIssuance(serial, %s) = mount %q, %v, want %q", want.Refs.Serial, mountOf(got), err, want.Refs.Mount)
			}
		}
		list, err := s.ListIssuances(ctx(t), broker.IssuanceFilter{SessionID: cert.SessionID, ActiveAt: Epoch()})
		if err != nil || len(list) != 1 || list[0].Refs.Mount != "pki_int" {
			t.Errorf("ListIssuances(session %s) = %v, %v, want %s with mount pki_int", cert.SessionID, list, err, cert.ID)
		}
	})

	t.Run("fail/missing", func(t *testing.T) {
		s := newStore(t)
		_, err := s.GetIssuance(ctx(t), "iss_missing")
		wantErr(t, "GetIssuance(iss_missing)", err, broker.ErrNotFound)
	})

	t.Run("fail/invalid", func(t *testing.T) {
		s := newStore(t)
		wantErr(t, "PutIssuance(nil)", s.PutIssuance(ctx(t), nil), broker.ErrInvalidRequest)
		wantErr(t, "PutIssuance(id=\"\")", s.PutIssuance(ctx(t), SampleIssuance("", Epoch())), broker.ErrInvalidRequest)
		_, err := s.GetIssuance(ctx(t), "")
		wantErr(t, "GetIssuance(\"\")", err, broker.ErrInvalidRequest)
	})
}

func testFind(t *testing.T, newStore func(t *testing.T) broker.Store) {
	s := newStore(t)
	a := SampleIssuance("iss_find_a", Epoch())
	b := SampleIssuance("iss_find_b", Epoch().Add(time.Second))
	mustPut(t, s, a)
	mustPut(t, s, b)

	for _, kind := range AllRefKinds() {
		for _, is := range []*broker.Issuance{a, b} {
			t.Run(fmt.Sprintf("ok/%s/%s", kind, is.ID), func(t *testing.T) {
				v := refValue(is, kind)
				got, err := s.FindIssuance(ctx(t), kind, v)
				if err != nil {
					t.Fatalf("FindIssuance(%s, %q) = %v, want nil", kind, v, err)
				}
				if got.ID != is.ID {
					t.Errorf("FindIssuance(%s, %q).ID = %s, want %s", kind, v, got.ID, is.ID)
				}
				if d := cmp.Diff(is, got); d != "" {
					t.Errorf("FindIssuance(%s, %q) mismatch (-want +got):\n%s", kind, v, d)
				}
			})
		}
		t.Run(fmt.Sprintf("fail/%s/unknown-value", kind), func(t *testing.T) {
			_, err := s.FindIssuance(ctx(t), kind, "nope")
			wantErr(t, fmt.Sprintf("FindIssuance(%s, nope)", kind), err, broker.ErrNotFound)
		})
		t.Run(fmt.Sprintf("fail/%s/empty-value", kind), func(t *testing.T) {
			_, err := s.FindIssuance(ctx(t), kind, "")
			wantErr(t, fmt.Sprintf("FindIssuance(%s, \"\")", kind), err, broker.ErrInvalidRequest)
		})
	}
	t.Run("fail/other-kinds-value", func(t *testing.T) {
		// An accessor is not found under the lease id index.
		_, err := s.FindIssuance(ctx(t), broker.RefLeaseID, a.Refs.Accessor)
		wantErr(t, "FindIssuance(lease_id, <accessor>)", err, broker.ErrNotFound)
	})
	t.Run("fail/unknown-kind", func(t *testing.T) {
		_, err := s.FindIssuance(ctx(t), broker.RefKind("colour"), "red")
		wantErr(t, "FindIssuance(colour, red)", err, broker.ErrInvalidRequest)
	})
	t.Run("ok/same-value-under-several-kinds", func(t *testing.T) {
		// One string under several kinds of one issuance: each kind has
		// its own index, and each finds the issuance.
		is := SampleIssuance("iss_samevalue", Epoch())
		is.Refs.JTI, is.Refs.Serial, is.RequestID = "shared-value", "shared-value", "shared-value"
		mustPut(t, s, is)
		for _, kind := range []broker.RefKind{broker.RefJTI, broker.RefSerial, broker.RefRequestID} {
			got, err := s.FindIssuance(ctx(t), kind, "shared-value")
			if err != nil || got.ID != is.ID {
				t.Errorf("FindIssuance(%s, shared-value) = %v, %v, want %s", kind, got, err, is.ID)
			}
		}
		_, err := s.FindIssuance(ctx(t), broker.RefAccessor, "shared-value")
		wantErr(t, "FindIssuance(accessor, shared-value)", err, broker.ErrNotFound)
	})
	t.Run("ok/ref-taken-over", func(t *testing.T) {
		// c reuses b's accessor (the last put wins); b's overwrite to
		// another accessor leaves c found by it, and b by its new one.
		b := SampleIssuance("iss_take_b", Epoch())
		c := SampleIssuance("iss_take_c", Epoch())
		c.Refs.Accessor = b.Refs.Accessor
		mustPut(t, s, b)
		mustPut(t, s, c)
		got, err := s.FindIssuance(ctx(t), broker.RefAccessor, b.Refs.Accessor)
		if err != nil || got.ID != c.ID {
			t.Errorf("FindIssuance(accessor, %s) = %v, %v, want %s (stored last)", b.Refs.Accessor, got, err, c.ID)
		}
		moved := SampleIssuance("iss_take_b", Epoch())
		moved.Refs.Accessor = "acc-take-b-new"
		mustPut(t, s, moved)
		got, err = s.FindIssuance(ctx(t), broker.RefAccessor, c.Refs.Accessor)
		if err != nil || got.ID != c.ID {
			t.Errorf("FindIssuance(accessor, %s) after %s moved = %v, %v, want %s", c.Refs.Accessor, b.ID, got, err, c.ID)
		}
		got, err = s.FindIssuance(ctx(t), broker.RefAccessor, "acc-take-b-new")
		if err != nil || got.ID != b.ID {
			t.Errorf("FindIssuance(accessor, acc-take-b-new) = %v, %v, want %s", got, err, b.ID)
		}
	})
	t.Run("ok/missing-refs-not-indexed", func(t *testing.T) {
		is := SampleIssuance("iss_sparse", Epoch())
		is.Refs = broker.CredentialRefs{Fingerprint: "sha256:sparse", ExpiresAt: is.ExpiresAt}
		is.RequestID = ""
		mustPut(t, s, is)
		if _, err := s.FindIssuance(ctx(t), broker.RefFingerprint, "sha256:sparse"); err != nil {
			t.Errorf("FindIssuance(fingerprint, sha256:sparse) = %v, want nil", err)
		}
		// The earlier issuances are still found by their accessors.
		got, err := s.FindIssuance(ctx(t), broker.RefAccessor, a.Refs.Accessor)
		if err != nil || got.ID != a.ID {
			t.Errorf("FindIssuance(accessor, %s) = %v, %v, want %s", a.Refs.Accessor, got, err, a.ID)
		}
	})
}

// testFindMany: FindIssuances answers for every value, in order, across
// more values than one Redis round trip carries; nil for a value nothing
// is indexed under and for one an overwrite moved away.
func testFindMany(t *testing.T, newStore func(t *testing.T) broker.Store) {
	s := newStore(t)
	const n = 600
	var values []string
	var want []string // issuance id per value, "" for none
	for i := range n {
		is := SampleIssuance(fmt.Sprintf("iss_many_%04d", i), Epoch().Add(time.Duration(i)*time.Millisecond))
		mustPut(t, s, is)
		values = append(values, is.Refs.Accessor)
		want = append(want, is.ID)
		if i%100 == 7 {
			values = append(values, fmt.Sprintf("acc-unknown-%d", i))
			want = append(want, "")
		}
	}
	moved := SampleIssuance("iss_many_moved", Epoch())
	mustPut(t, s, moved)
	upd := SampleIssuance("iss_many_moved", Epoch())
	upd.Refs.Accessor = "acc-many-moved-new"
	mustPut(t, s, upd)
	values = append(values, moved.Refs.Accessor, upd.Refs.Accessor)
	want = append(want, "", upd.ID)

	got, err := s.FindIssuances(ctx(t), broker.RefAccessor, values)
	if err != nil {
		t.Fatalf("FindIssuances(accessor, %d values) = %v, want nil", len(values), err)
	}
	ids := make([]string, len(got))
	for i, is := range got {
		if is != nil {
			ids[i] = is.ID
			if is.Refs.Accessor != values[i] {
				t.Errorf("FindIssuances()[%d] has accessor %q, asked for %q", i, is.Refs.Accessor, values[i])
			}
		}
	}
	if d := cmp.Diff(want, ids); d != "" {
		t.Errorf("FindIssuances() ids mismatch (-want +got):\n%s", d)
	}
	if d := cmp.Diff(SampleIssuance("iss_many_0000", Epoch()), got[0]); d != "" {
		t.Errorf("FindIssuances()[0] mismatch (-want +got):\n%s", d)
	}
	// A value asked twice is answered twice.
	twice := []string{values[1], "acc-unknown-7", values[1]}
	got, err = s.FindIssuances(ctx(t), broker.RefAccessor, twice)
	if err != nil || len(got) != 3 || got[0] == nil || got[1] != nil || got[2] == nil || got[0].ID != got[2].ID {
		t.Errorf("FindIssuances(accessor, %q) = %v, %v; want the same issuance first and last, nil between", twice, got, err)
	}
	if got, err := s.FindIssuances(ctx(t), broker.RefAccessor, nil); err != nil || len(got) != 0 {
		t.Errorf("FindIssuances(no values) = %v, %v; want none, nil", got, err)
	}
	_, err = s.FindIssuances(ctx(t), broker.RefAccessor, []string{values[0], ""})
	wantErr(t, "FindIssuances(accessor, [..., \"\"])", err, broker.ErrInvalidRequest)
	_, err = s.FindIssuances(ctx(t), broker.RefKind("colour"), []string{"red"})
	wantErr(t, "FindIssuances(colour, [red])", err, broker.ErrInvalidRequest)
	_, err = s.FindIssuances(ctx(t), broker.RefKind("colour"), nil)
	wantErr(t, "FindIssuances(colour, no values)", err, broker.ErrInvalidRequest)
}

func testOverwrite(t *testing.T, newStore func(t *testing.T) broker.Store) {
	s := newStore(t)
	old := SampleIssuance("iss_over", Epoch())
	mustPut(t, s, old)

	upd := SampleIssuance("iss_over", Epoch())
	upd.Workload, upd.Owner, upd.SessionID = "orders-api", "team-orders", "ses_new"
	upd.Refs.Accessor = "acc-new"
	upd.Refs.Fingerprint = "sha256:new"
	upd.RequestID = "req-new"
	upd.RevokedAt = Epoch().Add(time.Minute)
	upd.RevocationID = "rev_over"
	mustPut(t, s, upd)

	t.Run("ok/get-returns-new", func(t *testing.T) {
		got, err := s.GetIssuance(ctx(t), upd.ID)
		if err != nil {
			t.Fatalf("GetIssuance(%s) = %v, want nil", upd.ID, err)
		}
		if d := cmp.Diff(upd, got); d != "" {
			t.Errorf("GetIssuance(%s) mismatch (-want +got):\n%s", upd.ID, d)
		}
	})
	for _, c := range []struct {
		name  string
		kind  broker.RefKind
		value string
		want  error
	}{
		{"ok/new-accessor", broker.RefAccessor, "acc-new", nil},
		{"ok/new-fingerprint", broker.RefFingerprint, "sha256:new", nil},
		{"ok/new-request-id", broker.RefRequestID, "req-new", nil},
		{"ok/unchanged-lease-id", broker.RefLeaseID, old.Refs.LeaseID, nil},
		{"fail/old-accessor", broker.RefAccessor, old.Refs.Accessor, broker.ErrNotFound},
		{"fail/old-fingerprint", broker.RefFingerprint, old.Refs.Fingerprint, broker.ErrNotFound},
		{"fail/old-request-id", broker.RefRequestID, old.RequestID, broker.ErrNotFound},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := s.FindIssuance(ctx(t), c.kind, c.value)
			if c.want != nil {
				wantErr(t, fmt.Sprintf("FindIssuance(%s, %s)", c.kind, c.value), err, c.want)
				return
			}
			if err != nil || got.ID != upd.ID {
				t.Fatalf("FindIssuance(%s, %s) = %v, %v, want %s", c.kind, c.value, got, err, upd.ID)
			}
		})
	}
	for _, c := range []struct {
		name string
		f    broker.IssuanceFilter
		want []string
	}{
		{"ok/new-workload", broker.IssuanceFilter{Workload: "orders-api"}, []string{upd.ID}},
		{"ok/new-owner", broker.IssuanceFilter{Owner: "team-orders"}, []string{upd.ID}},
		{"ok/new-session", broker.IssuanceFilter{SessionID: "ses_new"}, []string{upd.ID}},
		{"ok/old-workload-empty", broker.IssuanceFilter{Workload: old.Workload}, nil},
		{"ok/old-owner-empty", broker.IssuanceFilter{Owner: old.Owner}, nil},
		{"ok/old-session-empty", broker.IssuanceFilter{SessionID: old.SessionID}, nil},
		{"ok/revoked-not-active", broker.IssuanceFilter{ActiveAt: Epoch().Add(2 * time.Minute)}, nil},
		{"ok/all-no-duplicate", broker.IssuanceFilter{}, []string{upd.ID}},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := s.ListIssuances(ctx(t), c.f)
			if err != nil {
				t.Fatalf("ListIssuances(%+v) = %v, want nil", c.f, err)
			}
			if d := cmp.Diff(c.want, ids(got)); d != "" {
				t.Errorf("ListIssuances(%+v) ids mismatch (-want +got):\n%s", c.f, d)
			}
		})
	}
}

// testOverwriteExpiry: an overwrite that moves an issuance's expiry moves
// it in the listing order and in what an ActiveAt or UnexpiredAt listing
// finds, in every index, without listing it twice.
func testOverwriteExpiry(t *testing.T, newStore func(t *testing.T) broker.Store) {
	s := newStore(t)
	mk := func(id string, expiresIn time.Duration) *broker.Issuance {
		is := SampleIssuance(id, Epoch())
		is.SessionID = "ses_moved"
		is.ExpiresAt = Epoch().Add(expiresIn)
		is.Refs.ExpiresAt = is.ExpiresAt
		return is
	}
	mustPut(t, s, mk("iss_x", 10*time.Minute))
	mustPut(t, s, mk("iss_y", 20*time.Minute))
	mustPut(t, s, mk("iss_z", 40*time.Minute))
	mustPut(t, s, mk("iss_x", 30*time.Minute)) // later
	mustPut(t, s, mk("iss_z", 5*time.Minute))  // earlier
	for _, c := range []struct {
		name string
		f    broker.IssuanceFilter
		want []string
	}{
		{"ok/all-reordered", broker.IssuanceFilter{}, []string{"iss_z", "iss_y", "iss_x"}},
		{"ok/session-reordered", broker.IssuanceFilter{SessionID: "ses_moved"}, []string{"iss_z", "iss_y", "iss_x"}},
		{"ok/workload-limit", broker.IssuanceFilter{Workload: "payments-api", Limit: 2}, []string{"iss_z", "iss_y"}},
		{"ok/active-after-old-expiry", broker.IssuanceFilter{ActiveAt: Epoch().Add(25 * time.Minute)}, []string{"iss_x"}},
		{"ok/unexpired-after-new-expiry", broker.IssuanceFilter{Owner: "team-payments", UnexpiredAt: Epoch().Add(6 * time.Minute)}, []string{"iss_y", "iss_x"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := s.ListIssuances(ctx(t), c.f)
			if err != nil {
				t.Fatalf("ListIssuances(%+v) = %v, want nil", c.f, err)
			}
			if d := cmp.Diff(c.want, ids(got)); d != "" {
				t.Errorf("ListIssuances(%+v) ids mismatch (-want +got):\n%s", c.f, d)
			}
		})
	}
}

func ids(list []*broker.Issuance) []string {
	var out []string
	for _, is := range list {
		out = append(out, is.ID)
	}
	return out
}

func testList(t *testing.T, newStore func(t *testing.T) broker.Store) {
	s := newStore(t)
	now := Epoch()
	mk := func(id, workload, owner, session string, expiresIn time.Duration, revoked bool) *broker.Issuance {
		is := SampleIssuance(id, now.Add(-time.Hour))
		is.Workload, is.Owner, is.SessionID = workload, owner, session
		is.ExpiresAt = now.Add(expiresIn)
		is.Refs.ExpiresAt = is.ExpiresAt
		if revoked {
			is.RevokedAt = now.Add(-time.Minute)
			is.RevocationID = "rev_x"
		}
		return is
	}
	// Expiry order: e1 (expired) < a1 < a2 < b1 = r1 (revoked) < c1 < a3.
	for _, is := range []*broker.Issuance{
		mk("iss_a2", "wa", "o1", "s1", 20*time.Minute, false),
		mk("iss_e1", "wa", "o1", "s1", -time.Minute, false),
		mk("iss_a1", "wa", "o1", "s2", 10*time.Minute, false),
		mk("iss_b1", "wb", "o1", "s3", 30*time.Minute, false),
		mk("iss_r1", "wb", "o2", "s3", 30*time.Minute, true), // same expiry as b1: id breaks the tie
		mk("iss_c1", "wc", "o2", "s4", 40*time.Minute, false),
		mk("iss_a3", "wa", "o2", "s5", 50*time.Minute, false),
	} {
		mustPut(t, s, is)
	}
	for _, c := range []struct {
		name string
		f    broker.IssuanceFilter
		want []string
	}{
		{"ok/all", broker.IssuanceFilter{}, []string{"iss_e1", "iss_a1", "iss_a2", "iss_b1", "iss_r1", "iss_c1", "iss_a3"}},
		{"ok/workload", broker.IssuanceFilter{Workload: "wa"}, []string{"iss_e1", "iss_a1", "iss_a2", "iss_a3"}},
		{"ok/owner", broker.IssuanceFilter{Owner: "o2"}, []string{"iss_r1", "iss_c1", "iss_a3"}},
		{"ok/session", broker.IssuanceFilter{SessionID: "s1"}, []string{"iss_e1", "iss_a2"}},
		{"ok/workload-and-owner", broker.IssuanceFilter{Workload: "wa", Owner: "o2"}, []string{"iss_a3"}},
		{"ok/workload-and-session", broker.IssuanceFilter{Workload: "wb", SessionID: "s3"}, []string{"iss_b1", "iss_r1"}},
		{"ok/active-excludes-expired-and-revoked", broker.IssuanceFilter{ActiveAt: now}, []string{"iss_a1", "iss_a2", "iss_b1", "iss_c1", "iss_a3"}},
		{"ok/active-later", broker.IssuanceFilter{ActiveAt: now.Add(35 * time.Minute)}, []string{"iss_c1", "iss_a3"}},
		{"ok/active-at-exact-expiry-excluded", broker.IssuanceFilter{ActiveAt: now.Add(40 * time.Minute)}, []string{"iss_a3"}},
		{"ok/active-workload", broker.IssuanceFilter{Workload: "wa", ActiveAt: now}, []string{"iss_a1", "iss_a2", "iss_a3"}},
		{"ok/active-session", broker.IssuanceFilter{SessionID: "s3", ActiveAt: now}, []string{"iss_b1"}},
		{"ok/unexpired-keeps-revoked", broker.IssuanceFilter{UnexpiredAt: now}, []string{"iss_a1", "iss_a2", "iss_b1", "iss_r1", "iss_c1", "iss_a3"}},
		{"ok/unexpired-session", broker.IssuanceFilter{SessionID: "s3", UnexpiredAt: now}, []string{"iss_b1", "iss_r1"}},
		{"ok/unexpired-at-exact-expiry-excluded", broker.IssuanceFilter{Owner: "o2", UnexpiredAt: now.Add(40 * time.Minute)}, []string{"iss_a3"}},
		{"ok/unexpired-and-active", broker.IssuanceFilter{Workload: "wb", UnexpiredAt: now, ActiveAt: now}, []string{"iss_b1"}},
		{"ok/limit", broker.IssuanceFilter{Limit: 2}, []string{"iss_e1", "iss_a1"}},
		{"ok/limit-active-owner", broker.IssuanceFilter{Owner: "o1", ActiveAt: now, Limit: 2}, []string{"iss_a1", "iss_a2"}},
		{"ok/limit-above-count", broker.IssuanceFilter{Workload: "wc", Limit: 10}, []string{"iss_c1"}},
		{"ok/limit-inside-equal-expiries", broker.IssuanceFilter{Limit: 4}, []string{"iss_e1", "iss_a1", "iss_a2", "iss_b1"}},
		{"ok/limit-unexpired-owner", broker.IssuanceFilter{Owner: "o2", UnexpiredAt: now, Limit: 1}, []string{"iss_r1"}},
		{"ok/no-match", broker.IssuanceFilter{Workload: "nobody"}, nil},
		{"ok/no-match-combination", broker.IssuanceFilter{Workload: "wc", Owner: "o1"}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := s.ListIssuances(ctx(t), c.f)
			if err != nil {
				t.Fatalf("ListIssuances(%+v) = %v, want nil", c.f, err)
			}
			if d := cmp.Diff(c.want, ids(got)); d != "" {
				t.Errorf("ListIssuances(%+v) ids mismatch (-want +got):\n%s", c.f, d)
			}
		})
	}
	t.Run("ok/full-records", func(t *testing.T) {
		got, err := s.ListIssuances(ctx(t), broker.IssuanceFilter{Workload: "wc"})
		if err != nil || len(got) != 1 {
			t.Fatalf("ListIssuances(wc) = %v, %v, want one issuance", got, err)
		}
		if d := cmp.Diff(mk("iss_c1", "wc", "o2", "s4", 40*time.Minute, false), got[0]); d != "" {
			t.Errorf("ListIssuances(wc)[0] mismatch (-want +got):\n%s", d)
		}
	})
	t.Run("fail/negative-limit", func(t *testing.T) {
		_, err := s.ListIssuances(ctx(t), broker.IssuanceFilter{Limit: -1})
		wantErr(t, "ListIssuances(limit=-1)", err, broker.ErrInvalidRequest)
	})
}

func sampleRevocation(id string, at time.Time) *broker.Revocation {
	return &broker.Revocation{
		ID:        id,
		Selector:  broker.RevokeSelector{Workload: "payments-api"},
		Reason:    "key leaked",
		Block:     true,
		Admin:     "secops:alice",
		CreatedAt: at,
		Matched:   3,
		Revoked:   []string{"iss_1", "iss_2"},
		Pending:   []string{"iss_3"},
		Failed:    []broker.RevokeFailure{{IssuanceID: "iss_3", Error: "vault unavailable"}},
		Blocks:    []string{"payments-api"},
		SweepAt:   at.Add(12 * time.Second),
		Unblocked: map[string]time.Time{"payments-api": at.Add(5 * time.Second).UTC()},
	}
}

func testRevocation(t *testing.T, newStore func(t *testing.T) broker.Store) {
	s := newStore(t)
	r2 := sampleRevocation("rev_2", Epoch().Add(time.Minute))
	r1 := sampleRevocation("rev_1", Epoch())
	r3 := sampleRevocation("rev_0", Epoch().Add(time.Minute)) // same time as rev_2: id breaks the tie
	for _, r := range []*broker.Revocation{r2, r1, r3} {
		if err := s.PutRevocation(ctx(t), r); err != nil {
			t.Fatalf("PutRevocation(%s) = %v, want nil", r.ID, err)
		}
	}
	t.Run("ok/get", func(t *testing.T) {
		got, err := s.GetRevocation(ctx(t), "rev_1")
		if err != nil {
			t.Fatalf("GetRevocation(rev_1) = %v, want nil", err)
		}
		if d := cmp.Diff(r1, got); d != "" {
			t.Errorf("GetRevocation(rev_1) mismatch (-want +got):\n%s", d)
		}
	})
	t.Run("ok/list-ordered", func(t *testing.T) {
		got, err := s.ListRevocations(ctx(t), broker.RevocationFilter{})
		if err != nil {
			t.Fatalf("ListRevocations() = %v, want nil", err)
		}
		if d := cmp.Diff([]*broker.Revocation{r1, r3, r2}, got); d != "" {
			t.Errorf("ListRevocations() mismatch (-want +got):\n%s", d)
		}
	})
	t.Run("ok/overwrite-progress", func(t *testing.T) {
		upd := sampleRevocation("rev_1", Epoch())
		upd.Revoked = append(upd.Revoked, "iss_3")
		upd.Pending, upd.Failed = nil, []broker.RevokeFailure{}
		upd.CompletedAt = Epoch().Add(time.Hour)
		if err := s.PutRevocation(ctx(t), upd); err != nil {
			t.Fatalf("PutRevocation(rev_1) = %v, want nil", err)
		}
		got, err := s.GetRevocation(ctx(t), "rev_1")
		if err != nil {
			t.Fatalf("GetRevocation(rev_1) = %v, want nil", err)
		}
		if d := cmp.Diff(upd, got); d != "" {
			t.Errorf("GetRevocation(rev_1) mismatch (-want +got):\n%s", d)
		}
		list, err := s.ListRevocations(ctx(t), broker.RevocationFilter{})
		if err != nil {
			t.Fatalf("ListRevocations() = %v, want nil", err)
		}
		var gotIDs []string
		for _, r := range list {
			gotIDs = append(gotIDs, r.ID)
		}
		if d := cmp.Diff([]string{"rev_1", "rev_0", "rev_2"}, gotIDs); d != "" {
			t.Errorf("ListRevocations() ids mismatch (-want +got):\n%s", d)
		}
	})
	t.Run("ok/list-filtered", func(t *testing.T) {
		// After ok/overwrite-progress: rev_1 (Epoch) is completed, rev_0 and
		// rev_2 (Epoch+1m) are pending.
		ids := func(f broker.RevocationFilter) []string { return revocationIDs(t, s, f) }
		for _, tc := range []struct {
			name string
			f    broker.RevocationFilter
			want []string
		}{
			{"since-epoch", broker.RevocationFilter{Since: Epoch()}, []string{"rev_1", "rev_0", "rev_2"}},
			{"since-just-after-epoch", broker.RevocationFilter{Since: Epoch().Add(time.Nanosecond)}, []string{"rev_0", "rev_2"}},
			{"since-1m", broker.RevocationFilter{Since: Epoch().Add(time.Minute)}, []string{"rev_0", "rev_2"}},
			{"since-later", broker.RevocationFilter{Since: Epoch().Add(time.Hour)}, []string{}},
			{"pending", broker.RevocationFilter{Pending: true}, []string{"rev_0", "rev_2"}},
			{"pending-since-later", broker.RevocationFilter{Pending: true, Since: Epoch().Add(2 * time.Minute)}, []string{}},
		} {
			if d := cmp.Diff(tc.want, ids(tc.f)); d != "" {
				t.Errorf("%s: ListRevocations() ids mismatch (-want +got):\n%s", tc.name, d)
			}
		}
		// Completing one takes it out of the pending list.
		done := sampleRevocation("rev_2", Epoch().Add(time.Minute))
		done.Pending, done.CompletedAt = nil, Epoch().Add(2*time.Hour)
		if err := s.PutRevocation(ctx(t), done); err != nil {
			t.Fatal(err)
		}
		if d := cmp.Diff([]string{"rev_0"}, ids(broker.RevocationFilter{Pending: true})); d != "" {
			t.Errorf("pending after completing rev_2 (-want +got):\n%s", d)
		}
	})
	t.Run("fail/missing", func(t *testing.T) {
		_, err := s.GetRevocation(ctx(t), "rev_missing")
		wantErr(t, "GetRevocation(rev_missing)", err, broker.ErrNotFound)
	})
	t.Run("fail/invalid", func(t *testing.T) {
		wantErr(t, "PutRevocation(nil)", s.PutRevocation(ctx(t), nil), broker.ErrInvalidRequest)
		wantErr(t, "PutRevocation(id=\"\")", s.PutRevocation(ctx(t), sampleRevocation("", Epoch())), broker.ErrInvalidRequest)
		_, err := s.GetRevocation(ctx(t), "")
		wantErr(t, "GetRevocation(\"\")", err, broker.ErrInvalidRequest)
	})
	t.Run("ok/empty-list", func(t *testing.T) {
		got, err := newStore(t).ListRevocations(ctx(t), broker.RevocationFilter{})
		if err != nil || len(got) != 0 {
			t.Errorf("ListRevocations() on an empty store = %v, %v, want none", got, err)
		}
	})
}

// revocationIDs lists the ids of the revocations f keeps, in order.
func revocationIDs(t *testing.T, s broker.Store, f broker.RevocationFilter) []string {
	t.Helper()
	list, err := s.ListRevocations(ctx(t), f)
	if err != nil {
		t.Fatalf("ListRevocations(%+v) = %v, want nil", f, err)
	}
	out := []string{}
	for _, r := range list {
		out = append(out, r.ID)
	}
	return out
}

// testRevocationMany lists more revocations than a store reads per round
// trip (2,500; Redis pages its indexes 1,024 at a time), many sharing a
// creation millisecond, through each index: every one exactly once, in
// order.
func testRevocationMany(t *testing.T, newStore func(t *testing.T) broker.Store) {
	s := newStore(t)
	const n = 2500
	var all []string
	var mid uint64 // the version after 1,400 puts
	for i := range n {
		if i == 1400 {
			v, err := s.RevocationVersion(ctx(t))
			if err != nil {
				t.Fatalf("RevocationVersion() = %v, want nil", err)
			}
			mid = v
		}
		id := fmt.Sprintf("rev_%04d", i)
		r := sampleRevocation(id, Epoch().Add(time.Duration(i/10)*time.Millisecond)) // ten per millisecond
		if err := s.PutRevocation(ctx(t), r); err != nil {
			t.Fatalf("PutRevocation(%s) = %v, want nil", id, err)
		}
		all = append(all, id)
	}
	for _, tc := range []struct {
		name string
		f    broker.RevocationFilter
		want []string
	}{
		{"since-epoch", broker.RevocationFilter{Since: Epoch()}, all},
		{"since-mid-millisecond-group", broker.RevocationFilter{Since: Epoch().Add(105 * time.Millisecond)}, all[1050:]},
		{"pending", broker.RevocationFilter{Pending: true}, all},
		{"all", broker.RevocationFilter{}, all},
		{"changed-after-mid", broker.RevocationFilter{ChangedAfter: mid}, all[1400:]},
		{"changed-after-mid-since", broker.RevocationFilter{ChangedAfter: mid, Since: Epoch().Add(200 * time.Millisecond)}, all[2000:]},
	} {
		if d := cmp.Diff(tc.want, revocationIDs(t, s, tc.f)); d != "" {
			t.Errorf("%s: ListRevocations() ids mismatch (-want +got):\n%s", tc.name, d)
		}
	}
}

// testRevocationVersion checks the change numbers the revocation cache
// reads incrementally with: ChangedAfter v lists what was written after
// RevocationVersion returned v (new and updated revocations), combined with
// the other conditions.
func testRevocationVersion(t *testing.T, newStore func(t *testing.T) broker.Store) {
	s := newStore(t)
	version := func() uint64 {
		t.Helper()
		v, err := s.RevocationVersion(ctx(t))
		if err != nil {
			t.Fatalf("RevocationVersion() = %v, want nil", err)
		}
		return v
	}
	changed := func(f broker.RevocationFilter) []string { return revocationIDs(t, s, f) }
	put := func(r *broker.Revocation) {
		t.Helper()
		if err := s.PutRevocation(ctx(t), r); err != nil {
			t.Fatalf("PutRevocation(%s) = %v, want nil", r.ID, err)
		}
	}
	if v := version(); v != 0 {
		t.Errorf("RevocationVersion() of an empty store = %d, want 0", v)
	}
	put(sampleRevocation("rev_a", Epoch()))
	put(sampleRevocation("rev_b", Epoch().Add(time.Minute)))
	v1 := version()
	if v1 == 0 {
		t.Fatalf("RevocationVersion() after two puts = 0, want more")
	}
	if d := cmp.Diff([]string{}, changed(broker.RevocationFilter{ChangedAfter: v1})); d != "" {
		t.Errorf("nothing written after v1 (-want +got):\n%s", d)
	}
	if v := version(); v != v1 {
		t.Errorf("RevocationVersion() without writes = %d, want %d", v, v1)
	}

	// A new revocation and an update of an old one (completion) are both
	// changes; ordering stays by creation time.
	put(sampleRevocation("rev_c", Epoch().Add(2*time.Minute)))
	done := sampleRevocation("rev_a", Epoch())
	done.Pending, done.CompletedAt = nil, Epoch().Add(time.Hour)
	put(done)
	v2 := version()
	if v2 <= v1 {
		t.Errorf("RevocationVersion() after two more puts = %d, want more than %d", v2, v1)
	}
	for _, tc := range []struct {
		name string
		f    broker.RevocationFilter
		want []string
	}{
		{"changed-after-v1", broker.RevocationFilter{ChangedAfter: v1}, []string{"rev_a", "rev_c"}},
		{"changed-after-v1-since-1m", broker.RevocationFilter{ChangedAfter: v1, Since: Epoch().Add(time.Minute)}, []string{"rev_c"}},
		{"changed-after-v1-pending", broker.RevocationFilter{ChangedAfter: v1, Pending: true}, []string{"rev_c"}},
		{"changed-after-v2", broker.RevocationFilter{ChangedAfter: v2}, []string{}},
		{"changed-after-0", broker.RevocationFilter{}, []string{"rev_a", "rev_b", "rev_c"}},
	} {
		if d := cmp.Diff(tc.want, changed(tc.f)); d != "" {
			t.Errorf("%s: ListRevocations() ids mismatch (-want +got):\n%s", tc.name, d)
		}
	}
	// The updated record is what a changed-after read returns.
	list, err := s.ListRevocations(ctx(t), broker.RevocationFilter{ChangedAfter: v1, Since: Epoch(), Pending: false})
	if err != nil || len(list) == 0 || list[0].ID != "rev_a" || list[0].CompletedAt.IsZero() {
		t.Errorf("ListRevocations(changed after v1)[0] = %+v, %v; want rev_a completed", list, err)
	}
	t.Run("fail/cancelled", func(t *testing.T) {
		c, cancel := context.WithCancel(ctx(t))
		cancel()
		if _, err := s.RevocationVersion(c); err == nil {
			t.Errorf("RevocationVersion(cancelled) = nil error, want one")
		}
	})
}

// putSampleRevocation stores sampleRevocation(id) and returns the version
// after it.
func putSampleRevocation(t *testing.T, s broker.Store, id string) uint64 {
	t.Helper()
	if err := s.PutRevocation(ctx(t), sampleRevocation(id, Epoch())); err != nil {
		t.Fatalf("PutRevocation(%s) = %v, want nil", id, err)
	}
	v, err := s.RevocationVersion(ctx(t))
	if err != nil {
		t.Fatalf("RevocationVersion() = %v, want nil", err)
	}
	return v
}

// testRevocationUpdate checks UpdateRevocation: fn sees the stored record,
// its result is stored (with a new change number and the pending index kept
// in step) and returned; fn's error writes nothing; and concurrent updates
// of one record all land, none writing back a copy older than another's.
func testRevocationUpdate(t *testing.T, newStore func(t *testing.T) broker.Store) {
	t.Run("ok/applies-and-returns", func(t *testing.T) {
		s := newStore(t)
		v := putSampleRevocation(t, s, "rev_u")
		got, err := s.UpdateRevocation(ctx(t), "rev_u", func(r *broker.Revocation) error {
			if d := cmp.Diff(sampleRevocation("rev_u", Epoch()), r); d != "" {
				return fmt.Errorf("fn got (-want +got):\n%s", d)
			}
			r.Revoked, r.Pending, r.Failed = append(r.Revoked, r.Pending...), nil, []broker.RevokeFailure{}
			r.CompletedAt = Epoch().Add(time.Hour)
			return nil
		})
		if err != nil {
			t.Fatalf("UpdateRevocation(rev_u) = %v, want nil", err)
		}
		want := sampleRevocation("rev_u", Epoch())
		want.Revoked, want.Pending, want.Failed = []string{"iss_1", "iss_2", "iss_3"}, nil, []broker.RevokeFailure{}
		want.CompletedAt = Epoch().Add(time.Hour)
		if d := cmp.Diff(want, got); d != "" {
			t.Errorf("UpdateRevocation(rev_u) returned (-want +got):\n%s", d)
		}
		stored, err := s.GetRevocation(ctx(t), "rev_u")
		if err != nil {
			t.Fatalf("GetRevocation(rev_u) = %v, want nil", err)
		}
		if d := cmp.Diff(want, stored); d != "" {
			t.Errorf("GetRevocation(rev_u) after the update (-want +got):\n%s", d)
		}
		if d := cmp.Diff([]string{"rev_u"}, revocationIDs(t, s, broker.RevocationFilter{ChangedAfter: v})); d != "" {
			t.Errorf("changed after the update (-want +got):\n%s", d)
		}
		if d := cmp.Diff([]string{}, revocationIDs(t, s, broker.RevocationFilter{Pending: true})); d != "" {
			t.Errorf("pending after completing it (-want +got):\n%s", d)
		}
	})
	t.Run("ok/decision-kept-until-cleared", func(t *testing.T) {
		// A revocation whose decision events are not known durable keeps
		// them in the record (JSON values, as decoded), whatever else is
		// written to it, until an update clears them; it is pending until
		// complete, with or without them.
		s := newStore(t)
		r := sampleRevocation("rev_d", Epoch())
		// As Revoke makes them: each revoke and block event carries
		// details.decided_at, the revocation's creation.
		decidedAt := r.CreatedAt.UTC().Format(audit.TimeFormat)
		r.Decision = []*audit.Event{
			{Type: audit.TypeRevoke, RequestID: "req_1", RevocationID: "rev_d", Workload: "payments-api",
				Admin: "secops:alice", Identity: &audit.Identity{Iss: "https://idp", Sub: "alice"}, Reason: "key leaked",
				Details: map[string]any{
					"selector": map[string]any{"workload": "payments-api"}, "matched": float64(3), "block": true,
					"issuance_ids": []any{"iss_1", "iss_2", "iss_3"}, "sweep_at": "2026-01-01T00:00:12Z",
					"decided_at": decidedAt,
				},
				Outcome: &audit.Outcome{Status: 200}},
			{Type: audit.TypeBlock, RequestID: "req_1", RevocationID: "rev_d", Workload: "payments-api",
				Admin: "secops:alice", Reason: "key leaked", Details: map[string]any{"decided_at": decidedAt},
				Outcome: &audit.Outcome{Status: 200}},
		}
		if err := s.PutRevocation(ctx(t), r); err != nil {
			t.Fatalf("PutRevocation(rev_d) = %v, want nil", err)
		}
		got, err := s.GetRevocation(ctx(t), "rev_d")
		if err != nil {
			t.Fatalf("GetRevocation(rev_d) = %v, want nil", err)
		}
		if d := cmp.Diff(r, got); d != "" {
			t.Errorf("GetRevocation(rev_d) mismatch (-want +got):\n%s", d)
		}
		// Progress written by another writer keeps them.
		got, err = s.UpdateRevocation(ctx(t), "rev_d", func(c *broker.Revocation) error {
			c.Revoked, c.Pending, c.Failed = append(c.Revoked, c.Pending...), []string{}, []broker.RevokeFailure{}
			c.SweepAt = time.Time{}
			return nil
		})
		if err != nil || len(got.Decision) != 2 || got.Decision[0].Details["issuance_ids"] == nil {
			t.Fatalf("UpdateRevocation(progress) = %+v, %v; want the decision events kept", got, err)
		}
		if d := cmp.Diff([]string{"rev_d"}, revocationIDs(t, s, broker.RevocationFilter{Pending: true})); d != "" {
			t.Errorf("pending with its decision kept (-want +got):\n%s", d)
		}
		listed, err := s.ListRevocations(ctx(t), broker.RevocationFilter{Pending: true})
		if err != nil || len(listed) != 1 || cmp.Diff(r.Decision, listed[0].Decision) != "" {
			t.Errorf("ListRevocations(pending) = %+v, %v; want rev_d with its decision events", listed, err)
		}
		// Cleared, and complete.
		if _, err := s.UpdateRevocation(ctx(t), "rev_d", func(c *broker.Revocation) error {
			c.Decision, c.CompletedAt = nil, Epoch().Add(time.Hour)
			return nil
		}); err != nil {
			t.Fatalf("UpdateRevocation(clear) = %v, want nil", err)
		}
		got, err = s.GetRevocation(ctx(t), "rev_d")
		if err != nil || got.Decision != nil || got.CompletedAt.IsZero() {
			t.Fatalf("GetRevocation(rev_d) after the clear = %+v, %v; want no decision events, complete", got, err)
		}
		if d := cmp.Diff([]string{}, revocationIDs(t, s, broker.RevocationFilter{Pending: true})); d != "" {
			t.Errorf("pending after the clear (-want +got):\n%s", d)
		}
	})
	t.Run("ok/result-owed-listed-pending", func(t *testing.T) {
		// A complete record whose revoke_result is owed (ResultOwed) is
		// listed with Pending, so the worker of any instance writes it
		// after a restart; once cleared it is not.
		s := newStore(t)
		putSampleRevocation(t, s, "rev_o")
		owed := Epoch().Add(2 * time.Hour)
		if _, err := s.UpdateRevocation(ctx(t), "rev_o", func(c *broker.Revocation) error {
			c.Revoked, c.Pending, c.Failed = append(c.Revoked, c.Pending...), []string{}, []broker.RevokeFailure{}
			c.SweepAt, c.CompletedAt = time.Time{}, Epoch().Add(time.Hour)
			return nil
		}); err != nil {
			t.Fatalf("UpdateRevocation(complete) = %v, want nil", err)
		}
		if d := cmp.Diff([]string{}, revocationIDs(t, s, broker.RevocationFilter{Pending: true})); d != "" {
			t.Errorf("pending once complete (-want +got):\n%s", d)
		}
		got, err := s.UpdateRevocation(ctx(t), "rev_o", func(c *broker.Revocation) error {
			c.ResultOwed = owed
			return nil
		})
		if err != nil || !got.ResultOwed.Equal(owed) || got.CompletedAt.IsZero() {
			t.Fatalf("UpdateRevocation(owed) = %+v, %v; want it complete with its result owed", got, err)
		}
		if d := cmp.Diff([]string{"rev_o"}, revocationIDs(t, s, broker.RevocationFilter{Pending: true})); d != "" {
			t.Errorf("pending with its result owed (-want +got):\n%s", d)
		}
		if _, err := s.UpdateRevocation(ctx(t), "rev_o", func(c *broker.Revocation) error {
			c.ResultOwed = time.Time{}
			return nil
		}); err != nil {
			t.Fatalf("UpdateRevocation(clear) = %v, want nil", err)
		}
		if d := cmp.Diff([]string{}, revocationIDs(t, s, broker.RevocationFilter{Pending: true})); d != "" {
			t.Errorf("pending after the clear (-want +got):\n%s", d)
		}
	})
	t.Run("fail/fn-error-writes-nothing", func(t *testing.T) {
		s := newStore(t)
		v := putSampleRevocation(t, s, "rev_u")
		errNo := errors.New("nothing to change")
		_, err := s.UpdateRevocation(ctx(t), "rev_u", func(r *broker.Revocation) error {
			r.Pending = nil
			return errNo
		})
		if !errors.Is(err, errNo) {
			t.Errorf("UpdateRevocation(fn fails) = %v, want fn's error", err)
		}
		got, err := s.GetRevocation(ctx(t), "rev_u")
		if err != nil {
			t.Fatalf("GetRevocation(rev_u) = %v, want nil", err)
		}
		if d := cmp.Diff(sampleRevocation("rev_u", Epoch()), got); d != "" {
			t.Errorf("record after a failed update (-want +got):\n%s", d)
		}
		if d := cmp.Diff([]string{}, revocationIDs(t, s, broker.RevocationFilter{ChangedAfter: v})); d != "" {
			t.Errorf("changed after a failed update (-want +got):\n%s", d)
		}
	})
	t.Run("fail/missing", func(t *testing.T) {
		s := newStore(t)
		_, err := s.UpdateRevocation(ctx(t), "rev_none", func(r *broker.Revocation) error {
			t.Errorf("fn called for a missing revocation")
			return nil
		})
		wantErr(t, "UpdateRevocation(rev_none)", err, broker.ErrNotFound)
	})
	t.Run("fail/invalid", func(t *testing.T) {
		s := newStore(t)
		_, err := s.UpdateRevocation(ctx(t), "", func(*broker.Revocation) error { return nil })
		wantErr(t, `UpdateRevocation(id="")`, err, broker.ErrInvalidRequest)
	})
	t.Run("ok/concurrent-updates-all-land", func(t *testing.T) {
		s := newStore(t)
		r := sampleRevocation("rev_c", Epoch())
		r.Pending, r.Failed = nil, nil
		if err := s.PutRevocation(ctx(t), r); err != nil {
			t.Fatalf("PutRevocation(rev_c) = %v, want nil", err)
		}
		const n = 8
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for i := range n {
			wg.Go(func() {
				id := fmt.Sprintf("iss_c%d", i)
				_, err := s.UpdateRevocation(context.Background(), "rev_c", func(r *broker.Revocation) error {
					r.Pending = append(r.Pending, id)
					r.Matched++
					return nil
				})
				if err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("concurrent UpdateRevocation = %v, want nil", err)
		}
		got, err := s.GetRevocation(ctx(t), "rev_c")
		if err != nil {
			t.Fatalf("GetRevocation(rev_c) = %v, want nil", err)
		}
		want := []string{}
		for i := range n {
			want = append(want, fmt.Sprintf("iss_c%d", i))
		}
		if d := cmp.Diff(want, got.Pending, cmpopts.SortSlices(func(a, b string) bool { return a < b })); d != "" || got.Matched != 3+n {
			t.Errorf("after %d concurrent updates: matched %d (want %d), pending (-want +got):\n%s", n, got.Matched, 3+n, d)
		}
	})
}

func testBlock(t *testing.T, newStore func(t *testing.T) broker.Store) {
	s := newStore(t)
	mk := func(w string) broker.Block {
		return broker.Block{Workload: w, Reason: "leak", RevocationID: "rev_" + w, Admin: "secops:bob", CreatedAt: Epoch()}
	}
	for _, w := range []string{"wz", "wa", "wm"} {
		if err := s.PutBlock(ctx(t), mk(w)); err != nil {
			t.Fatalf("PutBlock(%s) = %v, want nil", w, err)
		}
	}
	t.Run("ok/get", func(t *testing.T) {
		got, err := s.GetBlock(ctx(t), "wa")
		if err != nil {
			t.Fatalf("GetBlock(wa) = %v, want nil", err)
		}
		want := mk("wa")
		if d := cmp.Diff(&want, got); d != "" {
			t.Errorf("GetBlock(wa) mismatch (-want +got):\n%s", d)
		}
	})
	t.Run("ok/list-by-workload", func(t *testing.T) {
		got, err := s.ListBlocks(ctx(t))
		if err != nil {
			t.Fatalf("ListBlocks() = %v, want nil", err)
		}
		if d := cmp.Diff([]broker.Block{mk("wa"), mk("wm"), mk("wz")}, got); d != "" {
			t.Errorf("ListBlocks() mismatch (-want +got):\n%s", d)
		}
	})
	t.Run("ok/overwrite", func(t *testing.T) {
		b := mk("wm")
		b.Reason = "still leaking"
		if err := s.PutBlock(ctx(t), b); err != nil {
			t.Fatalf("PutBlock(wm) = %v, want nil", err)
		}
		got, err := s.GetBlock(ctx(t), "wm")
		if err != nil || got.Reason != "still leaking" {
			t.Errorf("GetBlock(wm) = %+v, %v, want reason %q", got, err, "still leaking")
		}
		list, err := s.ListBlocks(ctx(t))
		if err != nil || len(list) != 3 {
			t.Errorf("ListBlocks() = %d blocks, %v, want 3", len(list), err)
		}
	})
	t.Run("ok/delete", func(t *testing.T) {
		if err := s.DeleteBlock(ctx(t), "wz", "rev_wz"); err != nil {
			t.Fatalf("DeleteBlock(wz) = %v, want nil", err)
		}
		_, err := s.GetBlock(ctx(t), "wz")
		wantErr(t, "GetBlock(wz) after delete", err, broker.ErrNotFound)
		list, err := s.ListBlocks(ctx(t))
		if err != nil {
			t.Fatalf("ListBlocks() = %v, want nil", err)
		}
		var ws []string
		for _, b := range list {
			ws = append(ws, b.Workload)
		}
		if d := cmp.Diff([]string{"wa", "wm"}, ws); d != "" {
			t.Errorf("ListBlocks() workloads mismatch (-want +got):\n%s", d)
		}
	})
	t.Run("fail/delete-block-changed", func(t *testing.T) {
		// wa was blocked again by another revocation after the caller
		// read rev_wa's block: deleting rev_wa's block lifts nothing.
		again := mk("wa")
		again.RevocationID, again.Reason = "rev_again", "leaking again"
		if err := s.PutBlock(ctx(t), again); err != nil {
			t.Fatalf("PutBlock(wa, rev_again) = %v, want nil", err)
		}
		err := s.DeleteBlock(ctx(t), "wa", "rev_wa")
		wantErr(t, "DeleteBlock(wa, rev_wa) under rev_again's block", err, broker.ErrBlockChanged)
		if errors.Is(err, broker.ErrNotFound) {
			t.Errorf("DeleteBlock(wa, rev_wa) = %v: ErrBlockChanged must not read as ErrNotFound (wa is blocked)", err)
		}
		got, err := s.GetBlock(ctx(t), "wa")
		if err != nil {
			t.Fatalf("GetBlock(wa) after the refused delete = %v, want rev_again's block", err)
		}
		if d := cmp.Diff(&again, got); d != "" {
			t.Errorf("GetBlock(wa) after the refused delete mismatch (-want +got):\n%s", d)
		}
		list, err := s.ListBlocks(ctx(t))
		if err != nil || !slices.ContainsFunc(list, func(b broker.Block) bool { return b.Workload == "wa" }) {
			t.Errorf("ListBlocks() = %v, %v, want wa still listed", list, err)
		}
		if err := s.DeleteBlock(ctx(t), "wa", "rev_again"); err != nil {
			t.Fatalf("DeleteBlock(wa, rev_again) = %v, want nil", err)
		}
		_, err = s.GetBlock(ctx(t), "wa")
		wantErr(t, "GetBlock(wa) after deleting rev_again's block", err, broker.ErrNotFound)
	})
	t.Run("ok/delete-block-without-revocation", func(t *testing.T) {
		bare := broker.Block{Workload: "w-bare", Reason: "by hand", CreatedAt: Epoch()}
		if err := s.PutBlock(ctx(t), bare); err != nil {
			t.Fatalf("PutBlock(w-bare) = %v, want nil", err)
		}
		wantErr(t, "DeleteBlock(w-bare, rev_x)", s.DeleteBlock(ctx(t), "w-bare", "rev_x"), broker.ErrBlockChanged)
		if err := s.DeleteBlock(ctx(t), "w-bare", ""); err != nil {
			t.Fatalf("DeleteBlock(w-bare, \"\") = %v, want nil", err)
		}
		_, err := s.GetBlock(ctx(t), "w-bare")
		wantErr(t, "GetBlock(w-bare) after delete", err, broker.ErrNotFound)
	})
	t.Run("fail/delete-not-blocked", func(t *testing.T) {
		wantErr(t, "DeleteBlock(wz) twice", s.DeleteBlock(ctx(t), "wz", "rev_wz"), broker.ErrNotFound)
	})
	t.Run("fail/get-not-blocked", func(t *testing.T) {
		_, err := s.GetBlock(ctx(t), "never")
		wantErr(t, "GetBlock(never)", err, broker.ErrNotFound)
	})
	t.Run("fail/invalid", func(t *testing.T) {
		wantErr(t, "PutBlock(workload=\"\")", s.PutBlock(ctx(t), broker.Block{Reason: "x"}), broker.ErrInvalidRequest)
		wantErr(t, "DeleteBlock(\"\")", s.DeleteBlock(ctx(t), "", "rev_x"), broker.ErrInvalidRequest)
		_, err := s.GetBlock(ctx(t), "")
		wantErr(t, "GetBlock(\"\")", err, broker.ErrInvalidRequest)
	})
	t.Run("ok/empty-list", func(t *testing.T) {
		got, err := newStore(t).ListBlocks(ctx(t))
		if err != nil || len(got) != 0 {
			t.Errorf("ListBlocks() on an empty store = %v, %v, want none", got, err)
		}
	})
}

func testPing(t *testing.T, newStore func(t *testing.T) broker.Store) {
	t.Run("ok", func(t *testing.T) {
		if err := newStore(t).Ping(ctx(t)); err != nil {
			t.Errorf("Ping() = %v, want nil", err)
		}
	})
}

// revokedBy is a copy of is marked revoked by revID at at.
func revokedBy(is *broker.Issuance, revID string, at time.Time) *broker.Issuance {
	c := *is
	c.RevokedAt, c.RevocationID = at, revID
	return &c
}

func testMarkRevoked(t *testing.T, newStore func(t *testing.T) broker.Store) {
	t.Run("ok/first-mark-wins", func(t *testing.T) {
		s := newStore(t)
		is := SampleIssuance("iss_mark", Epoch())
		mustPut(t, s, is)
		first, err := s.MarkRevoked(ctx(t), revokedBy(is, "rev_first", Epoch().Add(time.Second)))
		if err != nil || first.RevocationID != "rev_first" || !first.RevokedAt.Equal(Epoch().Add(time.Second)) {
			t.Fatalf("MarkRevoked(rev_first) = %+v, %v; want the record revoked by rev_first", first, err)
		}
		// Read before the first mark, marked after it: nothing written.
		got, err := s.MarkRevoked(ctx(t), revokedBy(is, "rev_second", Epoch().Add(2*time.Second)))
		if err != nil || got.RevocationID != "rev_first" || !got.RevokedAt.Equal(first.RevokedAt) {
			t.Errorf("MarkRevoked(rev_second) after rev_first's = %+v, %v; want rev_first's mark standing", got, err)
		}
		for _, kind := range AllRefKinds() {
			found, err := s.FindIssuance(ctx(t), kind, refValue(is, kind))
			if err != nil || found.RevocationID != "rev_first" {
				t.Errorf("FindIssuance(%s) after both marks = %+v, %v; want rev_first's mark", kind, found, err)
			}
		}
		if diff := cmp.Diff(first, mustGet(t, s, is.ID)); diff != "" {
			t.Errorf("GetIssuance() after both marks (-MarkRevoked's answer +stored):\n%s", diff)
		}
		if active, err := s.ListIssuances(ctx(t), broker.IssuanceFilter{Workload: is.Workload, ActiveAt: Epoch()}); err != nil || len(active) != 0 {
			t.Errorf("ListIssuances(active) after the mark = %d records, %v; want none", len(active), err)
		}
	})
	t.Run("ok/racing-marks-one-wins", func(t *testing.T) {
		s := newStore(t)
		is := SampleIssuance("iss_race", Epoch())
		mustPut(t, s, is)
		const n = 16
		got := make([]*broker.Issuance, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range n {
			wg.Go(func() {
				<-start
				got[i], errs[i] = s.MarkRevoked(ctx(t), revokedBy(is, fmt.Sprintf("rev_%02d", i), Epoch().Add(time.Duration(i+1)*time.Second)))
			})
		}
		close(start)
		wg.Wait()
		stored := mustGet(t, s, is.ID)
		for i := range n {
			if errs[i] != nil || got[i].RevocationID != stored.RevocationID || !got[i].RevokedAt.Equal(stored.RevokedAt) {
				t.Errorf("MarkRevoked(rev_%02d) racing %d marks = %+v, %v; want the stored mark of %s", i, n, got[i], errs[i], stored.RevocationID)
			}
		}
	})
	// The claims a workload's match used come from its identity token:
	// any JSON at all. Whether the stored record is marked depends on
	// its own revoked_at only, however deep its claims nest (Go decodes
	// 10,000 levels; Redis's Lua cjson refused past 1,000) and whatever
	// their keys are called.
	for _, c := range []struct {
		name   string
		claims map[string]any
	}{
		{"ok/deeply-nested-claims", map[string]any{"groups": []any{"secops", nested(1200)}}},
		{"ok/claims-named-like-the-mark", namedLikeTheMark()},
		{"ok/deep-claims-named-like-the-mark", func() map[string]any {
			m := namedLikeTheMark()
			m["deep"] = nested(1200)
			return m
		}()},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := newStore(t)
			is := SampleIssuance("iss_claims", Epoch())
			is.Claims = c.claims
			mustPut(t, s, is)
			first, err := s.MarkRevoked(ctx(t), revokedBy(is, "rev_first", Epoch().Add(time.Second)))
			if err != nil || first.RevocationID != "rev_first" || !first.RevokedAt.Equal(Epoch().Add(time.Second)) {
				t.Fatalf("MarkRevoked(rev_first) = %+v, %v; want the record revoked by rev_first", first, err)
			}
			got, err := s.MarkRevoked(ctx(t), revokedBy(is, "rev_second", Epoch().Add(2*time.Second)))
			if err != nil || got.RevocationID != "rev_first" || !got.RevokedAt.Equal(first.RevokedAt) {
				t.Errorf("MarkRevoked(rev_second) after rev_first's = %+v, %v; want rev_first's mark standing", got, err)
			}
			// reflect, not cmp: cmp takes minutes over 1,200 levels.
			if got := mustGet(t, s, is.ID).Claims; !reflect.DeepEqual(c.claims, got) {
				t.Errorf("claims after the marks = %.200v..., want those put", got)
			}
		})
	}
	// A put of a record already marked revoked keeps the mark: the put sent
	// again (a Redis client resends a command whose reply a network error
	// lost, after it ran) must not undo a revocation that marked the record
	// in between; nor does a revoked put replace the first mark.
	t.Run("ok/put-after-mark-keeps-mark", func(t *testing.T) {
		s := newStore(t)
		is := SampleIssuance("iss_put_again", Epoch())
		mustPut(t, s, is)
		first, err := s.MarkRevoked(ctx(t), revokedBy(is, "rev_first", Epoch().Add(time.Second)))
		if err != nil || first.RevocationID != "rev_first" {
			t.Fatalf("MarkRevoked(rev_first) = %+v, %v; want the record revoked by rev_first", first, err)
		}
		for _, again := range []struct {
			name string
			is   *broker.Issuance
		}{
			{"the same put again", is},
			{"a put revoked by rev_second", revokedBy(is, "rev_second", Epoch().Add(2*time.Second))},
			{"a withdrawn put", revokedBy(is, "", Epoch().Add(3*time.Second))},
		} {
			if err := s.PutIssuance(ctx(t), again.is); err != nil {
				t.Fatalf("PutIssuance(%s) after rev_first's mark = %v, want nil", again.name, err)
			}
			if diff := cmp.Diff(first, mustGet(t, s, is.ID)); diff != "" {
				t.Errorf("GetIssuance() after %s (-rev_first's mark +stored):\n%s", again.name, diff)
			}
			for _, kind := range AllRefKinds() {
				found, err := s.FindIssuance(ctx(t), kind, refValue(is, kind))
				if err != nil || found.RevocationID != "rev_first" {
					t.Errorf("FindIssuance(%s) after %s = %+v, %v; want rev_first's mark", kind, again.name, found, err)
				}
			}
			if active, err := s.ListIssuances(ctx(t), broker.IssuanceFilter{Workload: is.Workload, ActiveAt: Epoch()}); err != nil || len(active) != 0 {
				t.Errorf("ListIssuances(active) after %s = %d records, %v; want none", again.name, len(active), err)
			}
		}
	})
	t.Run("ok/missing-record-written", func(t *testing.T) {
		s := newStore(t)
		is := revokedBy(SampleIssuance("iss_lost", Epoch()), "rev_1", Epoch())
		got, err := s.MarkRevoked(ctx(t), is)
		if err != nil || got.RevocationID != "rev_1" {
			t.Fatalf("MarkRevoked(not stored) = %+v, %v; want it written", got, err)
		}
		if found, err := s.FindIssuance(ctx(t), broker.RefAccessor, is.Refs.Accessor); err != nil || found.RevocationID != "rev_1" {
			t.Errorf("FindIssuance(accessor) = %+v, %v; want the marked record", found, err)
		}
	})
	// A withdrawal (RevokedAt without RevocationID: the exchange's mark of
	// a credential it did not hand out) is a mark like a revocation's, and
	// the first of either kind stands.
	t.Run("ok/withdrawal-written", func(t *testing.T) {
		s := newStore(t)
		is := SampleIssuance("iss_withdrawn", Epoch())
		mustPut(t, s, is)
		got, err := s.MarkRevoked(ctx(t), revokedBy(is, "", Epoch().Add(time.Second)))
		if err != nil || got.RevocationID != "" || !got.RevokedAt.Equal(Epoch().Add(time.Second)) {
			t.Fatalf("MarkRevoked(withdrawal) = %+v, %v; want the record withdrawn", got, err)
		}
		if diff := cmp.Diff(got, mustGet(t, s, is.ID)); diff != "" {
			t.Errorf("GetIssuance() after the withdrawal (-MarkRevoked's answer +stored):\n%s", diff)
		}
	})
	// Whichever of a revocation's mark and a withdrawal comes first stands:
	// the later one changes neither the record nor what finds it.
	for _, c := range []struct {
		name, id      string
		first, second string // the marks' revocation ids ("": a withdrawal)
		firstIs       string // the first mark, as the messages name it
		secondIs      string // the second, as MarkRevoked's message names it
	}{
		{"ok/withdrawal-after-mark-keeps-mark", "iss_marked_first", "rev_admin", "", "rev_admin's mark", "withdrawal"},
		{"ok/mark-after-withdrawal-keeps-withdrawal", "iss_withdrawn_first", "", "rev_admin", "the withdrawal", "rev_admin"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := newStore(t)
			is := SampleIssuance(c.id, Epoch())
			mustPut(t, s, is)
			first, err := s.MarkRevoked(ctx(t), revokedBy(is, c.first, Epoch().Add(time.Second)))
			if err != nil {
				t.Fatal(err)
			}
			got, err := s.MarkRevoked(ctx(t), revokedBy(is, c.second, Epoch().Add(2*time.Second)))
			if err != nil || got.RevocationID != c.first || !got.RevokedAt.Equal(first.RevokedAt) {
				t.Errorf("MarkRevoked(%s) after %s = %+v, %v; want %s standing", c.secondIs, c.firstIs, got, err, c.firstIs)
			}
			if stored := mustGet(t, s, is.ID); stored.RevocationID != c.first || !stored.RevokedAt.Equal(first.RevokedAt) {
				t.Errorf("GetIssuance() after the second mark = revoked by %q at %v; want %s at %v", stored.RevocationID, stored.RevokedAt, c.firstIs, first.RevokedAt)
			}
			found, err := s.FindIssuance(ctx(t), broker.RefAccessor, is.Refs.Accessor)
			if err != nil || found.RevocationID != c.first {
				t.Errorf("FindIssuance(accessor) after the second mark = %+v, %v; want %s", found, err, c.firstIs)
			}
		})
	}
	t.Run("fail/not-a-mark", func(t *testing.T) {
		s := newStore(t)
		is := SampleIssuance("iss_nomark", Epoch())
		mustPut(t, s, is)
		for _, c := range []struct {
			name string
			is   *broker.Issuance
		}{
			{"nil", nil},
			{"no-revocation", is},
			{"no-time", revokedBy(is, "rev_1", time.Time{})},
			{"no-id", revokedBy(SampleIssuance("", Epoch()), "rev_1", Epoch())},
		} {
			_, err := s.MarkRevoked(ctx(t), c.is)
			wantErr(t, "MarkRevoked("+c.name+")", err, broker.ErrInvalidRequest)
		}
		if got := mustGet(t, s, is.ID); !got.RevokedAt.IsZero() {
			t.Errorf("GetIssuance() after refused marks = %+v, want unrevoked", got)
		}
	})
}

// validDeploymentID reports whether id is a deployment id as
// Store.DeploymentID promises: PrefixDeployment, then 1 to 64 letters,
// digits, '.', '_' or '-' in all.
func validDeploymentID(id string) bool {
	if len(id) > 64 || len(id) <= len(broker.PrefixDeployment) || id[:len(broker.PrefixDeployment)] != broker.PrefixDeployment {
		return false
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

func testDeployment(t *testing.T, newStore func(t *testing.T) broker.Store) {
	t.Run("ok/created-once-then-kept", func(t *testing.T) {
		s := newStore(t)
		first, err := s.DeploymentID(ctx(t))
		if err != nil || !validDeploymentID(first) {
			t.Fatalf("DeploymentID() = %q, %v; want a new %s… id of 1-64 [A-Za-z0-9._-]", first, err, broker.PrefixDeployment)
		}
		// Other data changes nothing.
		mustPut(t, s, SampleIssuance("iss_dep", Epoch()))
		if err := s.PutBlock(ctx(t), broker.Block{Workload: "w-dep"}); err != nil {
			t.Fatalf("PutBlock(w-dep) = %v, want nil", err)
		}
		for range 3 {
			if again, err := s.DeploymentID(ctx(t)); err != nil || again != first {
				t.Fatalf("DeploymentID() again = %q, %v; want %q, the id created first", again, err, first)
			}
		}
	})
	t.Run("ok/racing-first-calls-agree", func(t *testing.T) {
		s := newStore(t)
		const n = 16
		ids := make([]string, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range n {
			wg.Go(func() { <-start; ids[i], errs[i] = s.DeploymentID(ctx(t)) })
		}
		close(start)
		wg.Wait()
		for i := range n {
			if errs[i] != nil || ids[i] != ids[0] {
				t.Fatalf("DeploymentID() of %d racing callers: %q, %v (caller %d) vs %q (caller 0); want one id for all", n, ids[i], errs[i], i, ids[0])
			}
		}
	})
	t.Run("ok/another-store-another-id", func(t *testing.T) {
		a, err := newStore(t).DeploymentID(ctx(t))
		if err != nil {
			t.Fatalf("DeploymentID() = %v, want nil", err)
		}
		b, err := newStore(t).DeploymentID(ctx(t))
		if err != nil || b == a {
			t.Errorf("DeploymentID() of two stores = %q, %q (%v); want two ids", a, b, err)
		}
	})
}

// retiring reads the retiring keys at now.
func retiring(t *testing.T, s broker.Store, now time.Time) map[string]time.Time {
	t.Helper()
	got, err := s.RetiringKeys(ctx(t), now)
	if err != nil {
		t.Fatalf("RetiringKeys(%v) = %v, want nil", now, err)
	}
	return got
}

func mustRetire(t *testing.T, s broker.Store, name string, until time.Time) {
	t.Helper()
	if err := s.PutRetiringKey(ctx(t), name, until); err != nil {
		t.Fatalf("PutRetiringKey(%s, %v) = %v, want nil", name, until, err)
	}
}

func testRetiringKeys(t *testing.T, newStore func(t *testing.T) broker.Store) {
	// Epoch has sub-millisecond digits: kept to the millisecond, rounded up.
	ms := func(d time.Duration) time.Time { return time.UnixMilli(broker.RetireMillis(Epoch().Add(d))).UTC() }
	t.Run("ok/empty", func(t *testing.T) {
		if got := retiring(t, newStore(t), Epoch()); len(got) != 0 {
			t.Errorf("RetiringKeys() of an empty store = %v, want none", got)
		}
	})
	t.Run("ok/put-then-list", func(t *testing.T) {
		s := newStore(t)
		mustRetire(t, s, "key-a", Epoch().Add(5*time.Minute))
		mustRetire(t, s, "key-b", Epoch().Add(time.Minute).In(time.FixedZone("x", 3600)))
		want := map[string]time.Time{"key-a": ms(5 * time.Minute), "key-b": ms(time.Minute)}
		if diff := cmp.Diff(want, retiring(t, s, Epoch())); diff != "" {
			t.Errorf("RetiringKeys() (-want +got):\n%s", diff)
		}
		if got := ms(time.Minute); got.Before(Epoch().Add(time.Minute)) || got.Location() != time.UTC {
			t.Errorf("rounding: %v is before %v or not UTC", got, Epoch().Add(time.Minute))
		}
	})
	t.Run("ok/later-until-wins", func(t *testing.T) {
		s := newStore(t)
		mustRetire(t, s, "key-a", Epoch().Add(5*time.Minute))
		mustRetire(t, s, "key-a", Epoch().Add(2*time.Minute)) // earlier: nothing changes
		mustRetire(t, s, "key-a", Epoch().Add(5*time.Minute)) // again: nothing changes
		if diff := cmp.Diff(map[string]time.Time{"key-a": ms(5 * time.Minute)}, retiring(t, s, Epoch())); diff != "" {
			t.Errorf("RetiringKeys() after an earlier put (-want +got):\n%s", diff)
		}
		mustRetire(t, s, "key-a", Epoch().Add(10*time.Minute))
		if diff := cmp.Diff(map[string]time.Time{"key-a": ms(10 * time.Minute)}, retiring(t, s, Epoch())); diff != "" {
			t.Errorf("RetiringKeys() after a later put (-want +got):\n%s", diff)
		}
	})
	t.Run("ok/expired-removed", func(t *testing.T) {
		s := newStore(t)
		mustRetire(t, s, "key-short", Epoch().Add(time.Minute))
		mustRetire(t, s, "key-long", Epoch().Add(time.Hour))
		// At until the key is past it.
		if diff := cmp.Diff(map[string]time.Time{"key-long": ms(time.Hour)}, retiring(t, s, ms(time.Minute))); diff != "" {
			t.Errorf("RetiringKeys() at key-short's until (-want +got):\n%s", diff)
		}
		// Removed, not just filtered: an earlier now does not bring it back.
		if diff := cmp.Diff(map[string]time.Time{"key-long": ms(time.Hour)}, retiring(t, s, Epoch())); diff != "" {
			t.Errorf("RetiringKeys() at Epoch after key-short expired (-want +got):\n%s", diff)
		}
		// A put after the removal records it again.
		mustRetire(t, s, "key-short", Epoch().Add(2*time.Minute))
		if got := retiring(t, s, Epoch()); !got["key-short"].Equal(ms(2 * time.Minute)) {
			t.Errorf("RetiringKeys() after putting key-short again = %v, want it until %v", got, ms(2*time.Minute))
		}
	})
	t.Run("ok/racing-puts-latest-wins", func(t *testing.T) {
		s := newStore(t)
		const n = 16
		errs := make([]error, n)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range n {
			wg.Go(func() {
				<-start
				errs[i] = s.PutRetiringKey(ctx(t), "key-race", Epoch().Add(time.Duration(i+1)*time.Minute))
			})
		}
		close(start)
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Errorf("PutRetiringKey(%d) = %v, want nil", i, err)
			}
		}
		if diff := cmp.Diff(map[string]time.Time{"key-race": ms(n * time.Minute)}, retiring(t, s, Epoch())); diff != "" {
			t.Errorf("RetiringKeys() after %d racing puts (-want +got):\n%s", n, diff)
		}
	})
	t.Run("fail/invalid", func(t *testing.T) {
		s := newStore(t)
		wantErr(t, "PutRetiringKey(no name)", s.PutRetiringKey(ctx(t), "", Epoch()), broker.ErrInvalidRequest)
		wantErr(t, "PutRetiringKey(no until)", s.PutRetiringKey(ctx(t), "key-a", time.Time{}), broker.ErrInvalidRequest)
		if got := retiring(t, s, Epoch().Add(-time.Hour)); len(got) != 0 {
			t.Errorf("RetiringKeys() after refused puts = %v, want none", got)
		}
	})
}

func testContext(t *testing.T, newStore func(t *testing.T) broker.Store) {
	s := newStore(t)
	mustPut(t, s, SampleIssuance("iss_ctx", Epoch()))
	if err := s.PutRevocation(ctx(t), sampleRevocation("rev_ctx", Epoch())); err != nil {
		t.Fatalf("PutRevocation(rev_ctx) = %v, want nil", err)
	}
	if err := s.PutBlock(ctx(t), broker.Block{Workload: "w-ctx"}); err != nil {
		t.Fatalf("PutBlock(w-ctx) = %v, want nil", err)
	}
	cctx, cancel := context.WithCancel(ctx(t))
	cancel()
	for _, c := range []struct {
		name string
		call func() error
	}{
		{"fail/cancelled-put", func() error { return s.PutIssuance(cctx, SampleIssuance("iss_ctx2", Epoch())) }},
		{"fail/cancelled-get", func() error { _, err := s.GetIssuance(cctx, "iss_ctx"); return err }},
		{"fail/cancelled-find", func() error { _, err := s.FindIssuance(cctx, broker.RefAccessor, "acc-iss_ctx"); return err }},
		{"fail/cancelled-list", func() error { _, err := s.ListIssuances(cctx, broker.IssuanceFilter{}); return err }},
		{"fail/cancelled-find-many", func() error {
			_, err := s.FindIssuances(cctx, broker.RefAccessor, []string{"acc-iss_ctx"})
			return err
		}},
		{"fail/cancelled-put-revocation", func() error { return s.PutRevocation(cctx, sampleRevocation("rev_ctx2", Epoch())) }},
		{"fail/cancelled-update-revocation", func() error {
			_, err := s.UpdateRevocation(cctx, "rev_ctx", func(*broker.Revocation) error { return nil })
			return err
		}},
		{"fail/cancelled-get-revocation", func() error { _, err := s.GetRevocation(cctx, "rev_ctx"); return err }},
		{"fail/cancelled-list-revocations", func() error { _, err := s.ListRevocations(cctx, broker.RevocationFilter{}); return err }},
		{"fail/cancelled-list-pending", func() error {
			_, err := s.ListRevocations(cctx, broker.RevocationFilter{Pending: true})
			return err
		}},
		{"fail/cancelled-list-since", func() error {
			_, err := s.ListRevocations(cctx, broker.RevocationFilter{Since: Epoch()})
			return err
		}},
		{"fail/cancelled-put-block", func() error { return s.PutBlock(cctx, broker.Block{Workload: "w-ctx2"}) }},
		{"fail/cancelled-delete-block", func() error { return s.DeleteBlock(cctx, "w-ctx", "") }},
		{"fail/cancelled-get-block", func() error { _, err := s.GetBlock(cctx, "w-ctx"); return err }},
		{"fail/cancelled-list-blocks", func() error { _, err := s.ListBlocks(cctx); return err }},
		{"fail/cancelled-mark-revoked", func() error {
			_, err := s.MarkRevoked(cctx, revokedBy(SampleIssuance("iss_ctx", Epoch()), "rev_ctx", Epoch()))
			return err
		}},
		{"fail/cancelled-deployment-id", func() error { _, err := s.DeploymentID(cctx); return err }},
		{"fail/cancelled-put-retiring-key", func() error { return s.PutRetiringKey(cctx, "k-ctx", Epoch().Add(time.Hour)) }},
		{"fail/cancelled-retiring-keys", func() error { _, err := s.RetiringKeys(cctx, Epoch()); return err }},
		{"fail/cancelled-ping", func() error { return s.Ping(cctx) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := c.call()
			wantErr(t, c.name, err, broker.ErrUnavailable)
			wantErr(t, c.name, err, context.Canceled)
		})
	}
	t.Run("ok/cancelled-writes-not-stored", func(t *testing.T) {
		_, err := s.GetIssuance(ctx(t), "iss_ctx2")
		wantErr(t, "GetIssuance(iss_ctx2)", err, broker.ErrNotFound)
		if got := mustGet(t, s, "iss_ctx"); !got.RevokedAt.IsZero() {
			t.Errorf("GetIssuance(iss_ctx) after a cancelled MarkRevoked = %+v, want unrevoked", got)
		}
		_, err = s.GetRevocation(ctx(t), "rev_ctx2")
		wantErr(t, "GetRevocation(rev_ctx2)", err, broker.ErrNotFound)
		_, err = s.GetBlock(ctx(t), "w-ctx2")
		wantErr(t, "GetBlock(w-ctx2)", err, broker.ErrNotFound)
		if _, err := s.GetBlock(ctx(t), "w-ctx"); err != nil {
			t.Errorf("GetBlock(w-ctx) after a cancelled DeleteBlock = %v, want nil", err)
		}
	})
}

func testConcurrency(t *testing.T, newStore func(t *testing.T) broker.Store) {
	t.Run("ok/parallel-puts-then-list", func(t *testing.T) {
		s := newStore(t)
		const n = 64
		var wg sync.WaitGroup
		errs := make(chan error, 2*n)
		for i := range n {
			wg.Go(func() {
				is := SampleIssuance(fmt.Sprintf("iss_par_%03d", i), Epoch())
				is.SessionID = "ses_shared"
				if err := s.PutIssuance(context.Background(), is); err != nil {
					errs <- err
					return
				}
				if _, err := s.GetIssuance(context.Background(), is.ID); err != nil {
					errs <- err
				}
				if _, err := s.ListIssuances(context.Background(), broker.IssuanceFilter{SessionID: "ses_shared", Limit: 5}); err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("parallel call = %v, want nil", err)
		}
		for _, f := range []broker.IssuanceFilter{{}, {SessionID: "ses_shared"}, {Workload: "payments-api", ActiveAt: Epoch()}} {
			got, err := s.ListIssuances(ctx(t), f)
			if err != nil || len(got) != n {
				t.Errorf("ListIssuances(%+v) = %d issuances, %v, want %d", f, len(got), err, n)
			}
		}
	})
}

func testCopies(t *testing.T, newStore func(t *testing.T) broker.Store) {
	opts := cmpopts.EquateEmpty()
	t.Run("ok/issuance", func(t *testing.T) {
		s := newStore(t)
		in := SampleIssuance("iss_copy", Epoch())
		want := SampleIssuance("iss_copy", Epoch())
		mustPut(t, s, in)
		// The caller keeps mutating its value after Put.
		in.Workload = "mutated"
		in.Claims["groups"].([]any)[0] = "mutated"
		in.Claims["kubernetes.io"].(map[string]any)["namespace"] = "mutated"
		in.Act[0].Sub = "mutated"
		got, err := s.GetIssuance(ctx(t), want.ID)
		if err != nil {
			t.Fatalf("GetIssuance(%s) = %v, want nil", want.ID, err)
		}
		if d := cmp.Diff(want, got, opts); d != "" {
			t.Errorf("GetIssuance(%s) after mutating the put value (-want +got):\n%s", want.ID, d)
		}
		// And mutates what it got back.
		got.Owner = "mutated"
		got.Claims["groups"].([]any)[1] = "mutated"
		got.Claims["kubernetes.io"].(map[string]any)["pod"].(map[string]any)["uid"] = "mutated"
		got.Act[0].Iss = "mutated"
		for _, read := range []func() (*broker.Issuance, error){
			func() (*broker.Issuance, error) { return s.GetIssuance(ctx(t), want.ID) },
			func() (*broker.Issuance, error) {
				return s.FindIssuance(ctx(t), broker.RefAccessor, want.Refs.Accessor)
			},
			func() (*broker.Issuance, error) {
				l, err := s.ListIssuances(ctx(t), broker.IssuanceFilter{})
				if err != nil || len(l) != 1 {
					return nil, fmt.Errorf("list = %d, %w", len(l), err)
				}
				l[0].Claims["n"] = "mutated"
				l, err = s.ListIssuances(ctx(t), broker.IssuanceFilter{})
				if err != nil || len(l) != 1 {
					return nil, fmt.Errorf("list = %d, %w", len(l), err)
				}
				return l[0], nil
			},
		} {
			again, err := read()
			if err != nil {
				t.Fatalf("read back = %v, want nil", err)
			}
			if d := cmp.Diff(want, again, opts); d != "" {
				t.Errorf("read back after mutating a returned value (-want +got):\n%s", d)
			}
		}
	})
	t.Run("ok/revocation", func(t *testing.T) {
		s := newStore(t)
		in := sampleRevocation("rev_copy", Epoch())
		want := sampleRevocation("rev_copy", Epoch())
		if err := s.PutRevocation(ctx(t), in); err != nil {
			t.Fatalf("PutRevocation(rev_copy) = %v, want nil", err)
		}
		in.Revoked[0] = "mutated"
		in.Failed[0].Error = "mutated"
		got, err := s.GetRevocation(ctx(t), "rev_copy")
		if err != nil {
			t.Fatalf("GetRevocation(rev_copy) = %v, want nil", err)
		}
		if d := cmp.Diff(want, got, opts); d != "" {
			t.Errorf("GetRevocation(rev_copy) after mutating the put value (-want +got):\n%s", d)
		}
		got.Revoked[1] = "mutated"
		got.Pending[0] = "mutated"
		list, err := s.ListRevocations(ctx(t), broker.RevocationFilter{})
		if err != nil || len(list) != 1 {
			t.Fatalf("ListRevocations() = %v, %v, want one", list, err)
		}
		if d := cmp.Diff(want, list[0], opts); d != "" {
			t.Errorf("ListRevocations()[0] after mutating a returned value (-want +got):\n%s", d)
		}
	})
}

// BenchPutIssuance measures PutIssuance of distinct issuances.
func BenchPutIssuance(b *testing.B, s broker.Store) {
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if err := s.PutIssuance(ctx, SampleIssuance(fmt.Sprintf("iss_bench_put_%d", i), Epoch())); err != nil {
			b.Fatalf("PutIssuance = %v, want nil", err)
		}
		i++
	}
}

// BenchGetIssuance measures GetIssuance of one of 1,000 stored issuances.
func BenchGetIssuance(b *testing.B, s broker.Store) {
	ctx := context.Background()
	const n = 1000
	for i := range n {
		if err := s.PutIssuance(ctx, SampleIssuance(fmt.Sprintf("iss_bench_get_%d", i), Epoch())); err != nil {
			b.Fatalf("PutIssuance = %v, want nil", err)
		}
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := s.GetIssuance(ctx, fmt.Sprintf("iss_bench_get_%d", i%n)); err != nil {
			b.Fatalf("GetIssuance = %v, want nil", err)
		}
		i++
	}
}

// BenchFindAccessors measures finding the issuances of 1,000 accessors (a
// reconciliation's Store lookups) one FindIssuance at a time, the baseline,
// and with one FindIssuances call; ns/op is per 1,000 accessors.
func BenchFindAccessors(b *testing.B, s broker.Store) {
	ctx := context.Background()
	const n = 1000
	accessors := make([]string, n)
	for i := range n {
		is := SampleIssuance(fmt.Sprintf("iss_bench_find_%d", i), Epoch())
		if err := s.PutIssuance(ctx, is); err != nil {
			b.Fatalf("PutIssuance = %v, want nil", err)
		}
		accessors[i] = is.Refs.Accessor
	}
	b.Run("one-by-one", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			for _, a := range accessors {
				if _, err := s.FindIssuance(ctx, broker.RefAccessor, a); err != nil {
					b.Fatalf("FindIssuance = %v, want nil", err)
				}
			}
		}
	})
	b.Run("batched", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			list, err := s.FindIssuances(ctx, broker.RefAccessor, accessors)
			if err != nil || len(list) != n || list[n-1] == nil {
				b.Fatalf("FindIssuances = %d, %v; want %d found", len(list), err, n)
			}
		}
	})
}
