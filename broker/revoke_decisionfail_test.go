package broker_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
)

// failLateSink holds the first revoke event until release is closed, then
// refuses it (a disk whose write hangs, then fails: the file sink truncates
// the batch back); every other event is recorded in the fixture's sink, and
// its type sent on added.
type failLateSink struct {
	rec     *brokertest.Sink
	release chan struct{}
	added   chan string
	mu      sync.Mutex
	failed  bool
	always  bool // every revoke event refused, not the first only
}

func (s *failLateSink) Append(ctx context.Context, ev *audit.Event) error {
	if ev.Type == audit.TypeRevoke {
		s.mu.Lock()
		first := !s.failed
		s.failed = true
		s.mu.Unlock()
		if first {
			<-s.release
		}
		if first || s.always {
			return errors.New("write /var/log/keytrail/audit.jsonl: input/output error")
		}
	}
	err := s.rec.Append(ctx, ev)
	s.added <- ev.Type
	return err
}

// TestRevokeDecisionPendingThenFailedKeepsOrder: a revoke event not durable
// within AuditTimeout, whose write then fails, leaves a revocation made
// (it went ahead) whose revoke_result is written after it. The log must not
// hold that revoke_result without the revoke event before it: the revoke
// event is written again, then the result.
func TestRevokeDecisionPendingThenFailedKeepsOrder(t *testing.T) {
	sink := &failLateSink{release: make(chan struct{}), added: make(chan string, 64)}
	var once sync.Once
	release := func() { once.Do(func() { close(sink.release) }) }
	t.Cleanup(release)
	f := newRevFixtureDeps(t, nil, func(rec *brokertest.Sink) broker.AuditSink {
		sink.rec = rec
		return sink
	}, func(d *broker.Deps) { d.AuditTimeout = stallAuditTimeout })
	is := f.issue(t, "payments")
	if typ := <-sink.added; typ != audit.TypeIssue {
		t.Fatalf("first event %s, want issue", typ)
	}
	err := within(t, "Revoke()", func() error {
		_, err := f.svc.Revoke(context.Background(), secops, broker.RevokeSelector{IssuanceID: is.ID}, "leaked", broker.RevokeOptions{}, "req_late")
		return err
	})
	if e := broker.AsError(err); !errors.Is(err, broker.ErrUnavailable) || e.Reason != "audit_unavailable" {
		t.Fatalf("Revoke() = %v, want 503 audit_unavailable", err)
	}
	if got, err := f.store.GetIssuance(context.Background(), is.ID); err != nil || got.RevokedAt.IsZero() {
		t.Fatalf("issuance = %+v, %v; want it revoked (the revocation went ahead)", got, err)
	}
	release() // the held revoke event's write fails
	for typ := ""; typ != audit.TypeRevokeResult; {
		select {
		case typ = <-sink.added:
		case <-time.After(10 * time.Second):
			t.Fatalf("no revoke_result after 10s; events %v", f.types(1))
		}
	}
	evs := f.sink.Events()[1:]
	if len(evs) != 2 || evs[0].Type != audit.TypeRevoke || evs[1].Type != audit.TypeRevokeResult ||
		evs[0].RevocationID == "" || evs[1].RevocationID != evs[0].RevocationID {
		var got []string
		for _, ev := range evs {
			got = append(got, ev.Type+" "+ev.RevocationID)
		}
		t.Fatalf("events after the issue: %v; want the revocation's revoke event, then its revoke_result", got)
	}
	if d := evs[0].Details; d == nil || d["issuance_ids"] == nil {
		t.Errorf("revoke event details %v, want its issuance_ids", d)
	}
}

// msgHandler sends the message of every ERROR record containing want.
type msgHandler struct {
	want string
	got  chan string
}

func (h msgHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h msgHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h msgHandler) WithGroup(string) slog.Handler            { return h }
func (h msgHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Level == slog.LevelError && strings.Contains(r.Message, h.want) {
		h.got <- r.Message
	}
	return nil
}

// TestRevokeDecisionFailedTwiceWritesNoResult: when the late revoke event's
// write fails and so does its second try, the revoke_result is not written
// (it would name a revocation the log has no revoke event for); an ERROR
// names the revocation instead.
func TestRevokeDecisionFailedTwiceWritesNoResult(t *testing.T) {
	sink := &failLateSink{release: make(chan struct{}), added: make(chan string, 64), always: true}
	var once sync.Once
	release := func() { once.Do(func() { close(sink.release) }) }
	t.Cleanup(release)
	logs := msgHandler{want: "revoke event failed again", got: make(chan string, 4)}
	f := newRevFixtureDeps(t, nil, func(rec *brokertest.Sink) broker.AuditSink {
		sink.rec = rec
		return sink
	}, func(d *broker.Deps) { d.AuditTimeout = stallAuditTimeout; d.Logger = slog.New(logs) })
	is := f.issue(t, "payments")
	<-sink.added
	err := within(t, "Revoke()", func() error {
		_, err := f.svc.Revoke(context.Background(), secops, broker.RevokeSelector{IssuanceID: is.ID}, "leaked", broker.RevokeOptions{}, "req_late")
		return err
	})
	if e := broker.AsError(err); !errors.Is(err, broker.ErrUnavailable) || e.Reason != "audit_unavailable" {
		t.Fatalf("Revoke() = %v, want 503 audit_unavailable", err)
	}
	release()
	select {
	case <-logs.got: // logged just before the write ends, with nothing more appended
	case <-time.After(10 * time.Second):
		t.Fatalf("no ERROR saying the revoke event failed again after 10s; events %v", f.types(1))
	}
	if types := f.types(1); len(types) != 0 {
		t.Errorf("events after the issue %v, want none (no revoke_result without its revoke event)", types)
	}
}
