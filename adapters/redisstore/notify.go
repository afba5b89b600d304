package redisstore

import (
	"context"
	"crypto/rand"
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

// wireNotice is a notice as published: the Notice's JSON fields, and the
// id of the Publish call that sent it (older receivers ignore the field).
type wireNotice struct {
	broker.Notice
	Call string `json:"call,omitempty"`
}

// recentCalls is how many Publish call ids a subscription remembers to drop
// a notice go-redis sent again: a resend comes within the publishing call's
// deadline (one Options.Timeout), and far fewer notices than this come in
// that time.
const recentCalls = 4 * noticeBuffer

// Publish announces n on NoticeChannel (PUBLISH, JSON). Delivery is at most
// once: subscribers that are disconnected at that moment miss it.
//
// go-redis sends a command again after a network error lost its reply
// (MaxRetries), and a resent PUBLISH delivers the notice again, after
// whatever was published in between: an unblock notice of the workload a
// resent block notice names would be followed by the block again, and a
// RevocationCache would deny the unblocked workload (and cut its requests)
// until its next refresh. So each call's notice carries an id of its own,
// and Subscribe passes a notice of a given id on once.
func (s *Store) Publish(ctx context.Context, n broker.Notice) error {
	raw, err := json.Marshal(wireNotice{Notice: n, Call: rand.Text()})
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
// Undecodable messages are dropped and logged; a notice whose Publish call
// id came in the last recentCalls notices (go-redis sent the PUBLISH
// again) is dropped without a log line.
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
		var seen calls
		for {
			select {
			case <-ctx.Done():
				return
			case m, ok := <-msgs:
				if !ok {
					return
				}
				var n wireNotice
				if err := json.Unmarshal([]byte(m.Payload), &n); err != nil {
					s.log.Warn("redisstore: dropping undecodable revocation notice", "channel", m.Channel, "bytes", len(m.Payload))
					continue
				}
				if n.Call != "" && seen.again(n.Call) {
					continue // the same Publish call's PUBLISH, sent again
				}
				select {
				case out <- n.Notice:
				default: // slow receiver: it learns from its next refresh
				}
			}
		}
	}()
	return out, nil
}

// calls remembers the last recentCalls Publish call ids a subscription saw.
type calls struct {
	ids  map[string]struct{}
	ring []string
	next int
}

// again reports whether id is one of the remembered ids; if not, it
// remembers it, forgetting the oldest one past recentCalls.
func (c *calls) again(id string) bool {
	if _, ok := c.ids[id]; ok {
		return true
	}
	if c.ids == nil {
		c.ids = make(map[string]struct{}, recentCalls)
		c.ring = make([]string, recentCalls)
	}
	delete(c.ids, c.ring[c.next])
	c.ring[c.next] = id
	c.ids[id] = struct{}{}
	c.next = (c.next + 1) % recentCalls
	return false
}
