package broker

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

// FuzzKeptRevocationRoundTrip: whatever a revocation record holds (times
// in any zone or out of UnixNano's range, nanoseconds, nil or empty
// lists, any bytes in its strings, huge or negative counts), the kept
// record decodes to one that encodes to the JSON the Store returned and
// gives its creation time; and no damaged encoding panics.
func FuzzKeptRevocationRoundTrip(f *testing.F) {
	f.Add("rev_1", "iss_1", "", "w", "o", "INC-1 é", "alice", "swp_1", int64(1764417600123456789), int64(0), int64(1), 0, 1, byte(0), 1, "iss_1", "err")
	f.Add("", "", "", "", "", "", "", "", int64(-1), int64(-62135596800), int64(0), -1, 0, byte(0xff), 3600, "\x00", "\xff")
	f.Add("rev_\xff", "iss_1", "s", "", "", "", "", "", int64(9223372036854775807), int64(1), int64(-5), 1<<40, 7, byte(0x55), -3600, "", "")
	f.Fuzz(func(t *testing.T, id, iss, ses, wl, owner, reason, admin, sweptBy string, created, sweep, completed int64,
		matched, lists int, flags byte, zone int, s1, s2 string) {
		// A time in UTC, a fixed zone, or far outside UnixNano's range.
		tm := func(n int64, bit byte) time.Time {
			t := time.Unix(0, n).UTC()
			if flags&bit != 0 {
				t = time.Unix(n, n%1e9).UTC() // seconds: years far off
			}
			if flags&(bit<<1) != 0 {
				t = t.In(time.FixedZone("Z", zone%86400))
			}
			return t
		}
		// A list nil, empty, or holding some of s1, s2, iss.
		list := func(k int) []string {
			switch (lists >> (2 * k)) & 3 {
			case 0:
				return nil
			case 1:
				return []string{}
			case 2:
				return []string{s1}
			}
			return []string{s1, s2, iss}
		}
		r := &Revocation{ID: id, Selector: RevokeSelector{IssuanceID: iss, SessionID: ses, Workload: wl, Owner: owner},
			Reason: reason, Block: flags&0x80 != 0, Admin: admin, CreatedAt: tm(created, 1), Matched: matched,
			Revoked: list(0), Pending: list(1), Blocks: list(2), SweptEarlier: list(3), SweptBy: sweptBy}
		if flags&0x40 != 0 {
			r.Revoked = []string{iss}
		}
		if sweep != 0 {
			r.SweepAt = tm(sweep, 4)
		}
		if completed != 0 {
			r.CompletedAt = tm(completed, 16)
		}
		switch (lists >> 8) & 3 {
		case 1:
			r.Failed = []RevokeFailure{}
		case 2, 3:
			r.Failed = []RevokeFailure{{IssuanceID: s1, Error: s2}, {IssuanceID: iss}}
		}
		if (lists>>10)&1 != 0 {
			r.Act = []IdentityRef{{Iss: s1, Sub: s2}}
		}
		if (lists>>11)&1 != 0 {
			r.Unblocked = map[string]time.Time{wl: tm(completed, 1)}
		}
		want, err := json.Marshal(r)
		if err != nil {
			return // a time JSON cannot carry: no Store holds it
		}
		// Held as the caller gave it (a memory store) and as a Store
		// returns it (decoded from its JSON).
		var stored Revocation
		if err := json.Unmarshal(want, &stored); err != nil {
			t.Fatal(err)
		}
		for _, in := range []*Revocation{r, &stored} {
			want, _ := json.Marshal(in)
			k := keepRevocation(in)
			got, err := k.revocation()
			if err != nil {
				t.Fatalf("kept %q does not decode: %v", want, err)
			}
			gotJSON, err := json.Marshal(got)
			if in == r {
				// Invalid UTF-8 (none in a record read from a Store)
				// becomes U+FFFD, escaped or not: compared decoded.
				gotJSON, want = canonJSON(t, gotJSON), canonJSON(t, want)
			}
			if err != nil || string(gotJSON) != string(want) {
				t.Fatalf("round trip changed the record:\n got %s (%v)\nwant %s", gotJSON, err, want)
			}
			// The creation time as it is, or, out of UnixNano's range
			// (years before 1678, after 2261), on the same side of
			// any Window's cutoff.
			if keptTime(in.CreatedAt.UTC()) && !k.createdAt().Equal(in.CreatedAt) {
				t.Fatalf("createdAt %v, want %v", k.createdAt(), in.CreatedAt)
			}
			cutoff := time.Now().Add(-24 * time.Hour)
			if k.createdAt().Before(cutoff) != in.CreatedAt.Before(cutoff) {
				t.Fatalf("createdAt %v, want %v: on the other side of the Window's cutoff", k.createdAt(), in.CreatedAt)
			}
			// Damaged: an error or some record, never a panic.
			for i := 8; i < len(k); i++ {
				b := []byte(k)
				b[i] ^= byte(created) | 1
				_, _ = keptRev(b).revocation()
				_, _ = keptRev(b[:i]).revocation()
			}
		}
	})
}

// FuzzKeptRevocationDecode: any bytes decode to a record or an error,
// without panicking or allocating without bound.
func FuzzKeptRevocationDecode(f *testing.F) {
	f.Add([]byte("\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x02"))
	f.Add([]byte("\x00\x00\x00\x00\x00\x00\x00\x00\x02{}"))
	f.Fuzz(func(t *testing.T, b []byte) {
		k := keptRev(b)
		_ = k.createdAt()
		_, _ = k.revocation()
	})
}

func canonJSON(t *testing.T, b []byte) []byte {
	var r Revocation
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	out, err := json.Marshal(&r)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Every field of a selector and of a failure, set alone, survives the
// kept form: one the compact form does not carry (added later) must take
// the JSON form, not be dropped, as a top-level field of Revocation does.
func TestKeptRevocationKeepsEveryNestedField(t *testing.T) {
	at := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	for _, typ := range []reflect.Type{reflect.TypeFor[RevokeSelector](), reflect.TypeFor[RevokeFailure]()} {
		for i := range typ.NumField() {
			v := reflect.New(typ).Elem()
			if !setNonZero(v.Field(i)) {
				t.Fatalf("%s.%s: a %s this test cannot set: extend setNonZero", typ.Name(), typ.Field(i).Name, typ.Field(i).Type)
			}
			r := &Revocation{ID: "rev_1", CreatedAt: at, Failed: []RevokeFailure{}}
			if typ == reflect.TypeFor[RevokeSelector]() {
				r.Selector = v.Interface().(RevokeSelector)
			} else {
				r.Failed = []RevokeFailure{v.Interface().(RevokeFailure)}
			}
			want, _ := json.Marshal(r)
			got, err := keepRevocation(r).revocation()
			if err != nil {
				t.Fatal(err)
			}
			if gotJSON, _ := json.Marshal(got); string(gotJSON) != string(want) {
				t.Errorf("%s.%s set:\n got %s\nwant %s", typ.Name(), typ.Field(i).Name, gotJSON, want)
			}
		}
	}
}

func setNonZero(v reflect.Value) bool {
	switch v.Kind() {
	case reflect.String:
		v.SetString("x")
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int64, reflect.Int32:
		v.SetInt(7)
	case reflect.Slice:
		v.Set(reflect.MakeSlice(v.Type(), 1, 1))
		return setNonZero(v.Index(0)) || true
	case reflect.Struct:
		if v.NumField() == 0 || !v.Field(0).CanSet() {
			return false
		}
		return setNonZero(v.Field(0))
	default:
		return false
	}
	return true
}
