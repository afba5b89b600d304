package redisstore

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/keytrail/keytrail/broker"
)

var _ broker.Notifier = (*Store)(nil)

// noticeBuffer is how many notices a slow subscriber may lag behind before
// it misses some (its revocation cache still refreshes from the store).
const noticeBuffer = 256

// NoticeChannel is the pub/sub channel revocation notices travel on:
// Options.Prefix + "revocations". In a Cluster, PUBLISH reaches subscribers
// on every node.
func (s *Store) NoticeChannel() string { return s.prefix + "revocations" }

// Publish announces n on NoticeChannel (PUBLISH, JSON). Delivery is at most
// once: subscribers that are disconnected at that moment miss it.
func (s *Store) Publish(ctx context.Context, n broker.Notice) error {
	raw, err := json.Marshal(n)
	if err != nil {
		return invalid(fmt.Sprintf("notice cannot be encoded: %v", err))
	}
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	if err := s.client.Publish(ctx, s.NoticeChannel(), raw).Err(); err != nil {
		return s.fail("publish notice", err)
	}
	return nil
}

// Subscribe SUBSCRIBEs to NoticeChannel and returns once Redis has
// confirmed the subscription, within one Options.Timeout as every store
// call. go-redis reconnects and resubscribes a broken connection by itself
// (notices sent meanwhile are lost); the channel is closed when ctx ends.
// Undecodable messages are dropped and logged.
func (s *Store) Subscribe(ctx context.Context) (<-chan broker.Notice, error) {
	// The connection, SUBSCRIBE and its confirmation share one deadline:
	// go-redis uses ctx only for the calls it is given to (its channel
	// reads later with a context of its own), and under ctx alone, which
	// has no deadline in RevocationCache.Run, setting up the connection
	// to a hung Redis took about 5 s whatever the timeout.
	sctx, cancel := s.ctx(ctx)
	ps := s.client.Subscribe(sctx, s.NoticeChannel())
	_, err := ps.Receive(sctx) // the subscription confirmation
	cancel()
	if err != nil {
		_ = ps.Close()
		return nil, s.fail("subscribe notices", err)
	}
	msgs := ps.Channel(redis.WithChannelSize(noticeBuffer))
	out := make(chan broker.Notice, noticeBuffer)
	go func() {
		defer close(out)
		defer ps.Close()
		for {
			select {
			case <-ctx.Done():
				return
			case m, ok := <-msgs:
				if !ok {
					return
				}
				var n broker.Notice
				if err := json.Unmarshal([]byte(m.Payload), &n); err != nil {
					s.log.Warn("redisstore: dropping undecodable revocation notice", "channel", m.Channel, "bytes", len(m.Payload))
					continue
				}
				select {
				case out <- n:
				default: // slow receiver: it learns from its next refresh
				}
			}
		}
	}()
	return out, nil
}
