package redisstore_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/adapters/redisstore"
	"github.com/keytrail/keytrail/adapters/storetest"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/e2e/harness"
)

// receive waits for one notice or fails after d.
func receive(t *testing.T, ch <-chan broker.Notice, d time.Duration) (broker.Notice, bool) {
	t.Helper()
	select {
	case n, ok := <-ch:
		return n, ok
	case <-time.After(d):
		t.Fatalf("no notice within %s", d)
		return broker.Notice{}, false
	}
}

// Notices published through one store reach every subscriber on the same
// prefix (other instances, the publisher itself), and none on another.
func TestNotices(t *testing.T) {
	r := harness.StartRedis(t)
	a := newStore(t, r, redisstore.Options{Prefix: "{notify}:"})
	b := newStore(t, r, redisstore.Options{Prefix: "{notify}:"})
	other := newStore(t, r, redisstore.Options{Prefix: "{elsewhere}:"})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	subA, err := a.Subscribe(ctx)
	if err != nil {
		t.Fatalf("Subscribe() = %v", err)
	}
	subB, err := b.Subscribe(ctx)
	if err != nil {
		t.Fatalf("Subscribe() = %v", err)
	}
	subOther, err := other.Subscribe(ctx)
	if err != nil {
		t.Fatalf("Subscribe() = %v", err)
	}

	tests := []struct {
		name string
		n    broker.Notice
	}{
		{"ok/revoke-and-block", broker.Notice{RevocationID: "rev_1", Revoked: []string{"iss_1", "iss_2"}, Blocked: []string{"payments-api"}}},
		{"ok/unblock", broker.Notice{Unblocked: []string{"payments-api"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := b.Publish(ctx, tt.n); err != nil {
				t.Fatalf("Publish() = %v", err)
			}
			for name, ch := range map[string]<-chan broker.Notice{"a": subA, "b": subB} {
				got, _ := receive(t, ch, 5*time.Second)
				if diff := cmp.Diff(tt.n, got); diff != "" {
					t.Errorf("subscriber %s got (-want +got):\n%s", name, diff)
				}
			}
		})
	}
	// A garbage message on the channel is dropped, the next one arrives.
	if err := a.Client().Publish(ctx, a.NoticeChannel(), "{not json").Err(); err != nil {
		t.Fatal(err)
	}
	want := broker.Notice{RevocationID: "rev_2"}
	if err := a.Publish(ctx, want); err != nil {
		t.Fatal(err)
	}
	if got, _ := receive(t, subB, 5*time.Second); !cmp.Equal(want, got) {
		t.Errorf("after garbage: got %+v, want %+v", got, want)
	}
	select {
	case n := <-subOther:
		t.Errorf("subscriber on another prefix got %+v", n)
	default:
	}
	cancel()
	for range 2 { // at most one buffered notice (rev_2), then the close
		if _, ok := receive(t, subA, 5*time.Second); !ok {
			return
		}
	}
	t.Errorf("channel still open after ctx ended")
}

// A subscriber whose Redis connection breaks resubscribes by itself; a
// Redis that is down makes Publish and Subscribe fail as unavailable.
func TestNoticesSurviveRedisRestart(t *testing.T) {
	r := harness.StartRedis(t)
	s := newStore(t, r, redisstore.Options{Prefix: "{notify}:", Timeout: 500 * time.Millisecond})
	sub, err := s.Subscribe(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	r.Restart()
	want := broker.Notice{RevocationID: "rev_after_restart"}
	// Until the subscriber has reconnected, notices are lost: publish again
	// until one arrives.
	got, ok := func() (broker.Notice, bool) {
		deadline := time.Now().Add(20 * time.Second)
		for time.Now().Before(deadline) {
			_ = s.Publish(t.Context(), want)
			select {
			case n := <-sub:
				return n, true
			case <-time.After(200 * time.Millisecond):
			}
		}
		return broker.Notice{}, false
	}()
	if !ok || !cmp.Equal(want, got) {
		t.Fatalf("after a Redis restart: got %+v (%v), want %+v within 20s", got, ok, want)
	}
	r.Kill()
	if err := s.Publish(t.Context(), want); !errors.Is(err, broker.ErrUnavailable) {
		t.Errorf("Publish() with Redis down = %v, want ErrUnavailable", err)
	}
	if _, err := s.Subscribe(t.Context()); !errors.Is(err, broker.ErrUnavailable) {
		t.Errorf("Subscribe() with Redis down = %v, want ErrUnavailable", err)
	}
}

func TestNotifierContract(t *testing.T) {
	r := harness.StartRedis(t)
	n := 0
	storetest.RunNotifier(t, func(t *testing.T) broker.Notifier {
		n++ // every subtest on its own channel
		return newStore(t, r, redisstore.Options{Prefix: fmt.Sprintf("{notifier-%d}:", n)})
	})
}
