package memstore

import (
	"context"
	"slices"
	"sync"

	"github.com/keytrail/keytrail/broker"
)

var _ broker.Notifier = (*Notifier)(nil)

// subscriberBuffer is how many notices a slow subscriber may lag behind
// before it misses some (its revocation cache still refreshes from the
// store).
const subscriberBuffer = 64

// Notifier is the in-process broker.Notifier the embedded store is paired
// with (broker.WithNotifier): Publish hands a copy of each notice to every
// current subscriber. One process is one instance, so announcements only
// reach that process's own revocation cache.
type Notifier struct {
	mu   sync.Mutex
	subs map[chan broker.Notice]struct{}
}

// NewNotifier returns a Notifier without subscribers.
func NewNotifier() *Notifier {
	return &Notifier{subs: map[chan broker.Notice]struct{}{}}
}

// Publish delivers n to every subscriber that has room for it.
func (n *Notifier) Publish(ctx context.Context, notice broker.Notice) error {
	if err := checkCtx(ctx); err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	for ch := range n.subs {
		c := broker.Notice{
			RevocationID: notice.RevocationID,
			Revoked:      slices.Clone(notice.Revoked),
			Blocked:      slices.Clone(notice.Blocked),
			Unblocked:    slices.Clone(notice.Unblocked),
		}
		select {
		case ch <- c:
		default: // slow subscriber: it learns from its next refresh
		}
	}
	return nil
}

// Subscribe returns a channel of the notices published from now on; it is
// closed when ctx ends.
func (n *Notifier) Subscribe(ctx context.Context) (<-chan broker.Notice, error) {
	if err := checkCtx(ctx); err != nil {
		return nil, err
	}
	ch := make(chan broker.Notice, subscriberBuffer)
	n.mu.Lock()
	n.subs[ch] = struct{}{}
	n.mu.Unlock()
	go func() {
		<-ctx.Done()
		n.mu.Lock()
		delete(n.subs, ch)
		close(ch)
		n.mu.Unlock()
	}()
	return ch, nil
}
