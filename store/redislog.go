package store

import (
	"context"
	"fmt"
	"sync"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// routeClientLogs sends the Redis client library's own messages (dial failures, pool
// events), which it otherwise prints as plain text on stderr, to log at Debug level: the
// store already reports what matters (degraded, recovered) once per change. The library
// keeps one logger per process, set without synchronisation, so only the first client
// built with a logger sets it, before that client exists; later loggers are ignored.
func routeClientLogs(log *zap.Logger) {
	routeOnce.Do(func() { redis.SetLogger(clientLog{log.Named("redis-client")}) })
}

var routeOnce sync.Once

type clientLog struct{ log *zap.Logger }

func (l clientLog) Printf(_ context.Context, format string, v ...any) {
	if ce := l.log.Check(zap.DebugLevel, "redis client"); ce != nil {
		ce.Write(zap.String("detail", fmt.Sprintf(format, v...)))
	}
}
