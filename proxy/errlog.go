package proxy

import (
	"sync"
	"time"

	"go.uber.org/zap"
)

// upstreamErrEvery is how often, at most, a failed exchange with one upstream (a
// connection error or a timeout) is logged at warn level.
const upstreamErrEvery = 10 * time.Second

// upstreamErrLog logs failed exchanges with upstreams where a newcomer sees them (warn)
// without flooding the log when an upstream is down: at most one line per upstream per
// upstreamErrEvery, carrying how many failures were not logged since the previous line
// ("suppressed"). The others go to debug level. Its zero value is ready to use; it is
// only reached on the error path.
type upstreamErrLog struct {
	mu   sync.Mutex
	last map[string]upstreamErrState // by upstream name
}

type upstreamErrState struct {
	at         time.Time // when the last warn line was written
	suppressed int       // failures not logged at warn since then
}

// log reports one failed exchange with upstream at now.
func (l *upstreamErrLog) log(log *zap.Logger, now time.Time, upstream string, status int, err error) {
	l.mu.Lock()
	if l.last == nil {
		l.last = make(map[string]upstreamErrState)
	}
	s, seen := l.last[upstream]
	warn := !seen || now.Sub(s.at) >= upstreamErrEvery
	suppressed := s.suppressed
	if warn {
		l.last[upstream] = upstreamErrState{at: now}
	} else {
		s.suppressed++
		l.last[upstream] = s
	}
	l.mu.Unlock()
	if warn {
		log.Warn("upstream request failed", zap.String("upstream", upstream), zap.Int("status", status),
			zap.Error(err), zap.Int("suppressed", suppressed), zap.Duration("log_every", upstreamErrEvery))
		return
	}
	if ce := log.Check(zap.DebugLevel, "upstream request failed"); ce != nil {
		ce.Write(zap.String("upstream", upstream), zap.Int("status", status), zap.Error(err))
	}
}

// forget drops the state of the upstreams not in keep (Update calls it with the new
// table's), so that its memory stays one entry per configured upstream.
func (l *upstreamErrLog) forget(keep map[string]*upstream) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for name := range l.last {
		if keep[name] == nil {
			delete(l.last, name)
		}
	}
}
