package redisstore

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keytrail/keytrail/adapters/storetest"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/e2e/harness"
)

// deadlineHook records the deadline of every command naming key.
type deadlineHook struct {
	key string
	mu  sync.Mutex
	dls []time.Time // zero: none
}

func (h *deadlineHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *deadlineHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		for _, a := range cmd.Args() {
			if s, ok := a.(string); ok && s == h.key {
				dl, _ := ctx.Deadline()
				h.mu.Lock()
				h.dls = append(h.dls, dl)
				h.mu.Unlock()
				break
			}
		}
		return next(ctx, cmd)
	}
}

func (h *deadlineHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func (h *deadlineHook) take() []time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	dls := h.dls
	h.dls = nil
	return dls
}

// sizedRevTimeout is the store's Timeout in the sized-timeout tests.
const sizedRevTimeout = 10 * time.Second

// sizedRevIssuances is the number of issuances a big record names.
const sizedRevIssuances = 100_000

// newSizedRevFixture starts Redis and a store on it with prefix and
// Timeout sizedRevTimeout, and returns it, record (the revocation id with
// one pending issuance, or sizedRevIssuances pending and failed if big: some
// 8 MB), the big record's encoded size and the bound its size gives.
func newSizedRevFixture(t *testing.T, prefix string) (s *Store, record func(id string, big bool) *broker.Revocation, rawLen int, bigBound time.Duration) {
	t.Helper()
	r := harness.StartRedis(t)
	const timeout = sizedRevTimeout
	s, err := New(t.Context(), Options{URL: r.URL(), Prefix: prefix, Timeout: timeout, Now: storetest.Epoch})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })

	now := storetest.Epoch()
	const n = sizedRevIssuances
	pending := make([]string, n)
	failed := make([]broker.RevokeFailure, n)
	for i := range pending {
		pending[i] = broker.NewID(broker.PrefixIssuance)
		failed[i] = broker.RevokeFailure{IssuanceID: pending[i], Error: "the backend revocation failed (vault: 503 Service Unavailable); retrying"}
	}
	record = func(id string, big bool) *broker.Revocation {
		rev := &broker.Revocation{ID: id, CreatedAt: now, Admin: "secops:alice", Reason: "incident",
			Selector: broker.RevokeSelector{Workload: "payments"}, Matched: 1, Revoked: []string{}, Pending: []string{"iss_1"}, Failed: []broker.RevokeFailure{}}
		if big {
			rev.Matched, rev.Pending, rev.Failed = n, pending, failed
		}
		return rev
	}
	raw, _, err := encodeRevocation(record("rev_size", true))
	if err != nil {
		t.Fatal(err)
	}
	// One more Timeout per 4 MiB (recordBytesPerTimeout).
	bigBound = timeout + time.Duration(len(raw)/(4<<20))*timeout
	if bigBound < 3*timeout {
		t.Fatalf("the big record is %d bytes, want over 8 MiB", len(raw))
	}
	return s, record, len(raw), bigBound
}

// TestPutRevocationSizedTimeout: a revocation record names every issuance
// matched (100,000 of them: some 8 MB), and the Service gives its
// PutRevocation a deadline sized by the record; the store cut every call
// to its own Timeout all the same, so that deadline never reached Redis.
// The store now bounds PutRevocation by the encoded record's size (one
// more Timeout per recordBytesPerTimeout bytes), kept by a nearer caller
// deadline and never stretched to a later one (the revocation cache's
// write-back calls it with minutes). Checked on the real Redis by the
// deadline each command of the call was sent with: dl = call + bound,
// the call between start and end, so dl-end <= bound <= dl-start however
// slow the machine is. The putrev:<id> key that makes a resent call
// write nothing more is kept at least as long as the call's bound.
func TestPutRevocationSizedTimeout(t *testing.T) {
	const timeout = sizedRevTimeout
	s, record, rawLen, bigBound := newSizedRevFixture(t, "{putrev-size}:")
	t.Logf("record of %d issuances: %d bytes, bound %v", sizedRevIssuances, rawLen, bigBound)

	for _, c := range []struct {
		name   string
		big    bool
		caller time.Duration // the caller's deadline; 0: none
		want   time.Duration // the call's bound; 0: the caller's deadline as it is
	}{
		{"ok/big-record-later-caller-deadline-sized", true, 5 * time.Minute, bigBound},
		{"ok/big-record-no-caller-deadline-sized", true, 0, bigBound},
		{"ok/big-record-nearer-caller-deadline-kept", true, 2 * timeout, 0},
		{"ok/small-record-later-caller-deadline-timeout", false, 5 * time.Minute, timeout},
	} {
		t.Run(c.name, func(t *testing.T) {
			id := "rev_" + strings.NewReplacer("/", "_", "-", "_").Replace(c.name)
			h := &deadlineHook{key: s.revKey(id)}
			s.client.AddHook(h)
			defer h.take()
			ctx := context.Background()
			var callerDL time.Time
			if c.caller > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, c.caller)
				defer cancel()
				callerDL, _ = ctx.Deadline()
			}
			start := time.Now()
			if err := s.PutRevocation(ctx, record(id, c.big)); err != nil {
				t.Fatalf("PutRevocation = %v", err)
			}
			end := time.Now()
			dls := h.take()
			if len(dls) == 0 {
				t.Fatal("no command of PutRevocation seen")
			}
			for _, dl := range dls {
				switch {
				case dl.IsZero():
					t.Errorf("a command sent without a deadline, want one")
				case c.want == 0 && !dl.Equal(callerDL):
					t.Errorf("deadline %v, want the caller's %v as it is", dl, callerDL)
				case c.want != 0 && (dl.Sub(end) > c.want || dl.Sub(start) < c.want):
					t.Errorf("bound between %v and %v, want %v", dl.Sub(end), dl.Sub(start), c.want)
				}
			}
			// putrev:<id> keeps the call's id past any resend of the
			// call, which go-redis makes only within its deadline.
			resend := c.want
			if resend == 0 {
				resend = time.Until(callerDL)
			}
			if ttl, err := s.client.PTTL(context.Background(), s.prefix+"putrev:"+id).Result(); err != nil || ttl < resend {
				t.Errorf("PTTL(putrev:%s) = %v, %v; want at least the call's bound %v", id, ttl, err, resend)
			}
			got, err := s.GetRevocation(context.Background(), id)
			if err != nil || len(got.Pending) != len(record(id, c.big).Pending) {
				t.Fatalf("GetRevocation = %v pending, %v; want the record stored", len(got.Pending), err)
			}
		})
	}
}
