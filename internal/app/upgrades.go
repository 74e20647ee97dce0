package app

import (
	"context"
	"net"
	"net/http"
	"sync"
)

// upgrades tracks the connections of upgrade requests (WebSocket and the like). The
// proxy hijacks such a connection from the http.Server once the upstream agrees to
// switch protocols, and from then on http.Server.Shutdown neither waits for it nor
// closes it, and neither does Close: without this, a SIGTERM cut every WebSocket at once
// (the process exited as soon as the ordinary requests had drained) instead of giving it
// server.shutdown_timeout like any other stream. Run waits for them until the shutdown
// deadline and then closes them.
//
// Only requests with an Upgrade header are tracked (ReverseProxy hijacks no others), so
// ordinary requests pay one header lookup.
type upgrades struct {
	mu    sync.Mutex
	conns map[net.Conn]int // upgrade requests in flight on each connection
	empty chan struct{}    // closed when conns becomes empty, if someone waits
}

type connKey struct{}

func newUpgrades() *upgrades { return &upgrades{conns: map[net.Conn]int{}} }

// connContext is the http.Server's ConnContext: it keeps each connection in its
// requests' context, for wrap.
func (u *upgrades) connContext(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

// wrap returns h, tracking the connection of each upgrade request while h serves it.
func (u *upgrades) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, up := r.Header["Upgrade"]; !up {
			h.ServeHTTP(w, r)
			return
		}
		c, ok := r.Context().Value(connKey{}).(net.Conn)
		if !ok {
			h.ServeHTTP(w, r)
			return
		}
		u.add(c, 1)
		defer u.add(c, -1)
		h.ServeHTTP(w, r)
	})
}

func (u *upgrades) add(c net.Conn, d int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if n := u.conns[c] + d; n > 0 {
		u.conns[c] = n
	} else {
		delete(u.conns, c)
	}
	if len(u.conns) == 0 && u.empty != nil {
		close(u.empty)
		u.empty = nil
	}
}

// wait waits until no upgrade request is in flight, or ctx ends; it reports whether none
// is.
func (u *upgrades) wait(ctx context.Context) bool {
	u.mu.Lock()
	if len(u.conns) == 0 {
		u.mu.Unlock()
		return true
	}
	if u.empty == nil {
		u.empty = make(chan struct{})
	}
	ch := u.empty
	u.mu.Unlock()
	select {
	case <-ch:
		return true
	case <-ctx.Done():
		return false
	}
}

// closeAll closes the connections of the upgrade requests in flight and returns how
// many there were; their handlers then return.
func (u *upgrades) closeAll() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	for c := range u.conns {
		_ = c.Close()
	}
	return len(u.conns)
}
