package redisstore

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keytrail/keytrail/broker"
)

// getDeadlineHook records the deadline of every GET naming key.
type getDeadlineHook struct {
	key string
	mu  sync.Mutex
	dls []time.Time // zero: none
}

func (h *getDeadlineHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *getDeadlineHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if args := cmd.Args(); cmd.Name() == "get" && len(args) == 2 && args[1] == h.key {
			dl, _ := ctx.Deadline()
			h.mu.Lock()
			h.dls = append(h.dls, dl)
			h.mu.Unlock()
		}
		return next(ctx, cmd)
	}
}

func (h *getDeadlineHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func (h *getDeadlineHook) take() []time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	dls := h.dls
	h.dls = nil
	return dls
}

// TestGetRevocationSizedTimeout: the Service gives the worker's reads of a
// large revocation record (100,000 issuances: some 8 MB) a deadline sized
// by it, as its updates; the store cut the read to its own Timeout all the
// same. It now bounds the GET as PutRevocation bounds its write: by the
// record's size, kept by a nearer caller deadline, never stretched to a
// later one. Checked on the real Redis by the deadline the GET was sent
// with (dl-end <= bound <= dl-start however slow the machine is).
func TestGetRevocationSizedTimeout(t *testing.T) {
	const timeout = sizedRevTimeout
	s, record, _, bigBound := newSizedRevFixture(t, "{getrev-size}:")

	for _, c := range []struct {
		name   string
		big    bool
		caller time.Duration // the caller's deadline; 0: none
		want   time.Duration // the GET's bound; 0: the caller's deadline as it is
	}{
		{"ok/big-record-later-caller-deadline-sized", true, 5 * time.Minute, bigBound},
		{"ok/big-record-no-caller-deadline-sized", true, 0, bigBound},
		{"ok/big-record-nearer-caller-deadline-kept", true, 2 * timeout, 0},
		{"ok/small-record-later-caller-deadline-timeout", false, 5 * time.Minute, timeout},
	} {
		t.Run(c.name, func(t *testing.T) {
			id := "rev_" + strings.NewReplacer("/", "_", "-", "_").Replace(c.name)
			if err := s.PutRevocation(context.Background(), record(id, c.big)); err != nil {
				t.Fatalf("PutRevocation = %v", err)
			}
			h := &getDeadlineHook{key: s.revKey(id)}
			s.client.AddHook(h)
			ctx := context.Background()
			var callerDL time.Time
			if c.caller > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, c.caller)
				defer cancel()
				callerDL, _ = ctx.Deadline()
			}
			start := time.Now()
			got, err := s.GetRevocation(ctx, id)
			end := time.Now()
			if err != nil || len(got.Pending) != len(record(id, c.big).Pending) {
				t.Fatalf("GetRevocation = %v, want the record stored", err)
			}
			dls := h.take()
			if len(dls) != 1 {
				t.Fatalf("%d GETs of the record seen, want 1", len(dls))
			}
			switch dl := dls[0]; {
			case dl.IsZero():
				t.Errorf("the GET was sent without a deadline, want one")
			case c.want == 0 && !dl.Equal(callerDL):
				t.Errorf("deadline %v, want the caller's %v as it is", dl, callerDL)
			case c.want != 0 && (dl.Sub(end) > c.want || dl.Sub(start) < c.want):
				t.Errorf("bound between %v and %v, want %v", dl.Sub(end), dl.Sub(start), c.want)
			}
		})
	}
	if _, err := s.GetRevocation(context.Background(), "rev_missing"); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("GetRevocation(missing) = %v, want not found", err)
	}
}
