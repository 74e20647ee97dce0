package store

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// listen applies transitions published by any replica as they happen. Pub/sub is
// at-most-once, so every (re)subscription asks the loop for a full resync, and the flush
// replies remain the backstop for messages lost in between.
func (b *redisBackend) listen(ctx context.Context, r *Redis) {
	ps := b.client.Subscribe(ctx, r.channel, r.onset)
	defer ps.Close()
	ch := ps.ChannelWithSubscriptions(redis.WithChannelHealthCheckInterval(time.Second))
	subscribed := false
	for {
		select {
		case <-ctx.Done():
			return
		case m, ok := <-ch:
			if !ok {
				return
			}
			switch m := m.(type) {
			case *redis.Subscription:
				if m.Kind == "subscribe" && m.Channel == r.channel {
					// Also the first time: what was published before the subscription
					// took effect (since Resync) was missed too.
					if subscribed {
						r.log.Info("pub/sub resubscribed; resyncing")
					}
					r.requestResync()
					subscribed = true
				}
			case *redis.Message:
				if m.Channel == r.onset {
					r.onOnset(m.Payload)
				} else {
					r.onMessage(m.Payload)
				}
			}
		}
	}
}

func (r *Redis) onMessage(payload string) {
	name, rep, err := decodeMessage(payload)
	if err != nil {
		r.log.Warn("ignored malformed state message", zap.Error(err))
		return
	}
	c, ok := r.get(name)
	if !ok {
		r.rememberKey(name, rep) // a key this replica does not track yet (keyed.go)
	}
	if !ok || r.degraded.Load() || !c.synced.Load() {
		return
	}
	c.quiet.Store(false) // until the next reply says otherwise
	r.apply(c, rep, false, "pubsub")
}

// onOnset handles a failure reaching a quiet circuit's window (payload: its name): the
// successes this replica holds for it must be in the window before the rate rules look
// (a flush interval after the onset), so the loop sends them within half of it (see
// loop: every replica hears the onset at once, and a fleet sending at once is a burst of
// a script per replica in Redis, which delays the transitions it publishes meanwhile).
func (r *Redis) onOnset(name string) {
	if c, ok := r.get(name); ok && c.quiet.Swap(false) {
		select {
		case r.onsets <- struct{}{}:
		default:
		}
	}
}
