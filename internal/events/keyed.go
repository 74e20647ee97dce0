package events

import (
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/fuseproxy/fuseproxy/breaker"
)

// KeyEventType is the value of Event.Event for a transition of a key's circuit
// (upstreams.<name>.keyed); Event.Key names the key.
const KeyEventType = "key.transition"

// KeyObserver returns the observer of one upstream's key circuits: each transition goes
// to the Dispatcher (metrics, log line, webhooks) as any, but at most perSecond() of
// them per second of the wall clock; the others are dropped and counted, and the first
// transition let through after a drop is preceded by one line saying how many were
// dropped ("key transitions suppressed"). A storm of keys (a million tenants failing at
// once) writes at most perSecond lines a second, plus one.
func (d *Dispatcher) KeyObserver(upstream string, perSecond func() int) breaker.Observer {
	return &keyLimiter{d: d, upstream: upstream, rate: perSecond}
}

type keyLimiter struct {
	d        *Dispatcher
	upstream string
	rate     func() int

	mu         sync.Mutex
	second     int64 // unix second of the current budget
	used       int
	suppressed int64 // dropped since the last summary
}

func (l *keyLimiter) OnTransition(t breaker.Transition) {
	now := l.d.o.Now()
	sec := now.Unix()
	l.mu.Lock()
	if sec != l.second {
		l.second, l.used = sec, 0
	}
	if l.used >= l.rate() {
		l.suppressed++
		l.mu.Unlock()
		return
	}
	l.used++
	dropped := l.suppressed
	l.suppressed = 0
	l.mu.Unlock()
	if dropped > 0 && l.d.settings.Load().enabled {
		l.d.log.Warn("key transitions suppressed", zap.String("upstream", l.upstream),
			zap.Int64("suppressed", dropped), zap.String("replica", l.d.o.Replica),
			zap.Duration("period", time.Second))
	}
	l.d.OnTransition(t)
}
