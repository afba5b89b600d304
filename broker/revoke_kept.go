package broker

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"math"
	"reflect"
	"time"
)

// keptRev is a revocation record the RevocationCache keeps to write back
// should the Store lose it (see restoreLost), in a compact encoding: a
// record decoded from the Store takes about 590 B of heap (the Revocation
// struct alone is some 400 B, mostly fields a revocation leaves empty),
// while the Window can hold hundreds of thousands of revocations. One
// string: the creation time (8 bytes, little endian UnixNano), a form
// byte, then either the record's fields (keptCompact: each string a
// uvarint length and its bytes, each list a uvarint count+1, 0 for nil)
// or its JSON (keptJSON: a record with a field keptCompact does not
// carry, such as Unblocked, Decision, or one added to Revocation later,
// or a time that is not UTC). Decoding gives a record that encodes to the
// same JSON as the one kept, which is what the Store writes.
type keptRev string

const (
	keptCompact byte = 1
	keptJSON    byte = 2
)

// keptRev flag bits (keptCompact).
const (
	keptBlock = 1 << iota
	keptCompleted
	keptSweep
	keptRevokedIsSelector // Revoked is exactly [Selector.IssuanceID]
)

// keepRevocation encodes r (see keptRev).
func keepRevocation(r *Revocation) keptRev {
	b := make([]byte, 8, 128)
	binary.LittleEndian.PutUint64(b, uint64(keptCreatedAt(r.CreatedAt)))
	if c, ok := compactRevocation(b, r); ok {
		return keptRev(c)
	}
	raw, err := json.Marshal(r)
	if err != nil {
		// A Revocation always encodes (the Store wrote it so); kept
		// empty, restoreLost reports it instead of writing it.
		return keptRev(b[:8])
	}
	return keptRev(append(append(b, keptJSON), raw...))
}

// keptCreatedAt is t's UnixNano, or, for a time out of its range (before
// 1678, after 2261; kept in the JSON form), the nearest it holds: on the
// same side of any Window's cutoff (keepRecords drops a record created
// before it), as UnixNano's own wrapped value is not.
func keptCreatedAt(t time.Time) int64 {
	switch {
	case t.Before(time.Unix(0, math.MinInt64)):
		return math.MinInt64
	case t.After(time.Unix(0, math.MaxInt64)):
		return math.MaxInt64
	}
	return t.UnixNano()
}

// keptTime reports whether t is kept exactly as the UnixNano of a UTC
// time: UTC (what the Stores write) and within UnixNano's range.
func keptTime(t time.Time) bool {
	return t.Location() == time.UTC && t.Year() > 1678 && t.Year() < 2262
}

func compactRevocation(b []byte, r *Revocation) ([]byte, bool) {
	// What the compact form does not carry, down to the selector's and
	// each failure's fields (one added later takes the JSON form).
	rest := *r
	rest.ID, rest.Reason, rest.Block, rest.Admin, rest.Matched = "", "", false, "", 0
	rest.Selector.IssuanceID, rest.Selector.SessionID, rest.Selector.Workload, rest.Selector.Owner = "", "", "", ""
	rest.CreatedAt, rest.SweepAt, rest.CompletedAt = time.Time{}, time.Time{}, time.Time{}
	rest.Revoked, rest.Pending, rest.Failed, rest.Blocks, rest.SweptBy, rest.SweptEarlier = nil, nil, nil, nil, "", nil
	for _, f := range r.Failed {
		if f.IssuanceID, f.Error = "", ""; !reflect.ValueOf(f).IsZero() {
			return nil, false
		}
	}
	if !reflect.ValueOf(rest).IsZero() || !keptTime(r.CreatedAt) ||
		(!r.SweepAt.IsZero() && !keptTime(r.SweepAt)) || (!r.CompletedAt.IsZero() && !keptTime(r.CompletedAt)) {
		return nil, false
	}
	var flags byte
	if r.Block {
		flags |= keptBlock
	}
	if !r.CompletedAt.IsZero() {
		flags |= keptCompleted
	}
	if !r.SweepAt.IsZero() {
		flags |= keptSweep
	}
	revoked := r.Revoked
	if len(revoked) == 1 && revoked[0] == r.Selector.IssuanceID {
		flags |= keptRevokedIsSelector
		revoked = nil
	}
	b = append(b, keptCompact, flags)
	if !r.CompletedAt.IsZero() {
		b = binary.AppendVarint(b, r.CompletedAt.UnixNano())
	}
	if !r.SweepAt.IsZero() {
		b = binary.AppendVarint(b, r.SweepAt.UnixNano())
	}
	b = binary.AppendVarint(b, int64(r.Matched))
	for _, s := range []string{r.ID, r.Selector.IssuanceID, r.Selector.SessionID, r.Selector.Workload, r.Selector.Owner,
		r.Reason, r.Admin, r.SweptBy} {
		b = keptString(b, s)
	}
	if flags&keptRevokedIsSelector == 0 {
		b = keptList(b, revoked)
	}
	b = keptList(b, r.Pending)
	b = keptList(b, r.Blocks)
	b = keptList(b, r.SweptEarlier)
	if r.Failed == nil {
		b = binary.AppendUvarint(b, 0)
	} else {
		b = binary.AppendUvarint(b, uint64(len(r.Failed))+1)
		for _, f := range r.Failed {
			b = keptString(keptString(b, f.IssuanceID), f.Error)
		}
	}
	return b, true
}

func keptString(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

func keptList(b []byte, l []string) []byte {
	if l == nil {
		return binary.AppendUvarint(b, 0)
	}
	b = binary.AppendUvarint(b, uint64(len(l))+1)
	for _, s := range l {
		b = keptString(b, s)
	}
	return b
}

// createdAt is the kept record's creation time.
func (k keptRev) createdAt() time.Time {
	if len(k) < 8 {
		return time.Time{}
	}
	return time.Unix(0, int64(binary.LittleEndian.Uint64([]byte(k[:8])))).UTC()
}

var errKeptRev = errors.New("broker: revocation cache: a kept revocation record does not decode")

// revocation decodes the kept record.
func (k keptRev) revocation() (*Revocation, error) {
	if len(k) < 9 {
		return nil, errKeptRev
	}
	d := keptDecoder{s: string(k[9:])}
	switch k[8] {
	case keptJSON:
		var r Revocation
		if err := json.Unmarshal([]byte(d.s), &r); err != nil {
			return nil, errKeptRev
		}
		return &r, nil
	case keptCompact:
	default:
		return nil, errKeptRev
	}
	r := &Revocation{CreatedAt: k.createdAt()}
	flags := d.byte()
	if flags&keptCompleted != 0 {
		r.CompletedAt = time.Unix(0, d.varint()).UTC()
	}
	if flags&keptSweep != 0 {
		r.SweepAt = time.Unix(0, d.varint()).UTC()
	}
	r.Block = flags&keptBlock != 0
	r.Matched = int(d.varint())
	for _, p := range []*string{&r.ID, &r.Selector.IssuanceID, &r.Selector.SessionID, &r.Selector.Workload, &r.Selector.Owner,
		&r.Reason, &r.Admin, &r.SweptBy} {
		*p = d.string()
	}
	if flags&keptRevokedIsSelector != 0 {
		r.Revoked = []string{r.Selector.IssuanceID}
	} else {
		r.Revoked = d.list()
	}
	r.Pending, r.Blocks, r.SweptEarlier = d.list(), d.list(), d.list()
	if n := d.uvarint(); n > 0 && d.err == nil {
		r.Failed = make([]RevokeFailure, 0, min(n-1, uint64(len(d.s))))
		for range n - 1 {
			r.Failed = append(r.Failed, RevokeFailure{IssuanceID: d.string(), Error: d.string()})
			if d.err != nil {
				break
			}
		}
	}
	if d.err != nil || d.s != "" {
		return nil, errKeptRev
	}
	return r, nil
}

type keptDecoder struct {
	s   string
	err error
}

func (d *keptDecoder) byte() byte {
	if d.s == "" {
		d.err = errKeptRev
		return 0
	}
	c := d.s[0]
	d.s = d.s[1:]
	return c
}

func (d *keptDecoder) uvarint() uint64 {
	v, n := binary.Uvarint([]byte(d.s[:min(len(d.s), binary.MaxVarintLen64)]))
	if n <= 0 {
		d.err = errKeptRev
		return 0
	}
	d.s = d.s[n:]
	return v
}

func (d *keptDecoder) varint() int64 {
	v, n := binary.Varint([]byte(d.s[:min(len(d.s), binary.MaxVarintLen64)]))
	if n <= 0 {
		d.err = errKeptRev
		return 0
	}
	d.s = d.s[n:]
	return v
}

func (d *keptDecoder) string() string {
	n := d.uvarint()
	if d.err != nil || n > uint64(len(d.s)) {
		d.err = errKeptRev
		return ""
	}
	s := d.s[:n]
	d.s = d.s[n:]
	return s
}

func (d *keptDecoder) list() []string {
	n := d.uvarint()
	if n == 0 || d.err != nil {
		return nil
	}
	l := make([]string, 0, min(n-1, uint64(len(d.s))))
	for range n - 1 {
		l = append(l, d.string())
		if d.err != nil {
			return nil
		}
	}
	return l
}
