package store

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// RouteClientLogs sends the Redis client library's own messages (dial failures, pool
// events), which it otherwise prints as plain text on stderr, to log at Debug level: the
// store already reports what matters (degraded, recovered) once per change. The client
// library keeps one logger per process, so call this once, before any client exists.
func RouteClientLogs(log *zap.Logger) {
	redis.SetLogger(clientLog{log.Named("redis-client")})
}

type clientLog struct{ log *zap.Logger }

func (l clientLog) Printf(_ context.Context, format string, v ...any) {
	if ce := l.log.Check(zap.DebugLevel, "redis client"); ce != nil {
		ce.Write(zap.String("detail", fmt.Sprintf(format, v...)))
	}
}
