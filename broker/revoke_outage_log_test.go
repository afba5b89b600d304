package broker_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/broker"
)

// downStore fails the revocation cache's reads while down, and moves the
// test's clock on by a second at each refresh (each ListBlocks), as the
// real one-second interval would.
type downStore struct {
	broker.Store
	down      atomic.Bool
	now       atomic.Int64 // unix nanoseconds
	failed    atomic.Int64 // refreshes that failed
	refreshes chan struct{}
}

var errRedisDown = errors.New("dial tcp 127.0.0.1:6379: connect: connection refused")

func (d *downStore) clock() time.Time { return time.Unix(0, d.now.Load()).UTC() }

func (d *downStore) ListBlocks(ctx context.Context) ([]broker.Block, error) {
	d.now.Add(int64(time.Second))
	defer func() {
		select {
		case d.refreshes <- struct{}{}:
		default:
		}
	}()
	if d.down.Load() {
		d.failed.Add(1)
		return nil, errRedisDown
	}
	return d.Store.ListBlocks(ctx)
}

func (d *downStore) RevocationVersion(ctx context.Context) (uint64, error) {
	if d.down.Load() {
		return 0, errRedisDown
	}
	return d.Store.RevocationVersion(ctx)
}

func (d *downStore) ListRevocations(ctx context.Context, f broker.RevocationFilter) ([]*broker.Revocation, error) {
	if d.down.Load() {
		return nil, errRedisDown
	}
	return d.Store.ListRevocations(ctx, f)
}

// Subscribe makes downStore the cache's Notifier too: it fails while down.
func (d *downStore) Subscribe(ctx context.Context) (<-chan broker.Notice, error) {
	if d.down.Load() {
		return nil, errRedisDown
	}
	return make(chan broker.Notice), nil
}

func (d *downStore) Publish(context.Context, broker.Notice) error { return nil }

// recordedLog is one log record: level, message and attributes.
type recordedLog struct {
	level slog.Level
	msg   string
	attrs map[string]slog.Value
}

// recordingHandler keeps every record; safe for concurrent use.
type recordingHandler struct {
	mu   *sync.Mutex
	recs *[]recordedLog
}

func newRecordingHandler() recordingHandler {
	return recordingHandler{mu: &sync.Mutex{}, recs: &[]recordedLog{}}
}

func (h recordingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h recordingHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h recordingHandler) WithGroup(string) slog.Handler            { return h }

func (h recordingHandler) Handle(_ context.Context, r slog.Record) error {
	rec := recordedLog{level: r.Level, msg: r.Message, attrs: map[string]slog.Value{}}
	r.Attrs(func(a slog.Attr) bool {
		rec.attrs[a.Key] = a.Value
		return true
	})
	h.mu.Lock()
	defer h.mu.Unlock()
	*h.recs = append(*h.recs, rec)
	return nil
}

func (h recordingHandler) records() []recordedLog {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]recordedLog(nil), *h.recs...)
}

// TestRevocationCacheOutageLogsOncePerMinute: while the Store (Redis) is
// down, the cache's refresh, full read and notice subscription fail at
// every one-second refresh. Each kind of failure is logged at WARN the
// first time, then at most once a minute with how long it has lasted and
// how many failures there were, and its end at INFO, instead of a warning
// a second for as long as Redis is down.
func TestRevocationCacheOutageLogsOncePerMinute(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := &downStore{Store: memstore.New(time.Now), refreshes: make(chan struct{}, 1)}
	st.now.Store(time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC).UnixNano())
	st.down.Store(true)
	logs := newRecordingHandler()
	c, err := broker.NewRevocationCache(st, broker.CacheOptions{Notifier: st, Interval: time.Millisecond,
		Now: st.clock, Logger: slog.New(logs)})
	if err != nil {
		t.Fatal(err)
	}
	start := st.clock()
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()

	const failing = 300 // refreshes, five minutes of the test's clock
	waitFor(t, "the failing refreshes", st.refreshes, func() bool { return st.failed.Load() >= failing })
	kinds := []string{"revocation cache refresh", "revocation cache full read", "revocation notices: subscribe"}
	byKind := func(recs []recordedLog, kind string, level slog.Level) []recordedLog {
		var out []recordedLog
		for _, r := range recs {
			if r.level == level && strings.HasPrefix(r.msg, kind) {
				out = append(out, r)
			}
		}
		return out
	}
	recs := logs.records()
	outage := st.clock().Sub(start) // read after the records: an upper bound
	for _, kind := range kinds {
		warns := byKind(recs, kind, slog.LevelWarn)
		// The first, then one a minute at most.
		if limit := 1 + int(outage/time.Minute); len(warns) < 2 || len(warns) > limit {
			t.Errorf("%s: %d WARN lines over %d failing refreshes (%s); want from 2 to %d", kind, len(warns), failing, outage, limit)
			continue
		}
		if _, ok := warns[0].attrs["error"]; !ok {
			t.Errorf("%s: first WARN %q has no error", kind, warns[0].msg)
		}
		for _, w := range warns[1:] {
			if w.attrs["failures"].Int64() < 2 || w.attrs["failing_for"].Duration() < time.Minute {
				t.Errorf("%s: repeated WARN %q attrs %v; want failures >= 2 and failing_for >= 1m", kind, w.msg, w.attrs)
			}
		}
	}

	st.down.Store(false)
	waitFor(t, "the recoveries", st.refreshes, func() bool {
		recs := logs.records()
		for _, kind := range kinds {
			if len(byKind(recs, kind, slog.LevelInfo)) == 0 {
				return false
			}
		}
		return true
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run() = %v", err)
	}
	recs = logs.records()
	for _, kind := range kinds {
		infos := byKind(recs, kind, slog.LevelInfo)
		if len(infos) != 1 {
			t.Errorf("%s: %d INFO lines, want 1 (the recovery)", kind, len(infos))
			continue
		}
		if infos[0].attrs["failures"].Int64() < 2 || infos[0].attrs["failing_for"].Duration() < time.Minute {
			t.Errorf("%s: recovery %q attrs %v; want the failures and how long they lasted", kind, infos[0].msg, infos[0].attrs)
		}
	}
}
