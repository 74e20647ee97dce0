package store

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/internal/testutil/pgtest"
)

func newTestPostgres(t *testing.T, dsn, prefix string) *Postgres {
	t.Helper()
	pool, err := NewPostgresPool(PostgresClientOptions{URL: dsn, PoolSize: 2, ConnectTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewPostgres(pool, PostgresOptions{Prefix: prefix, ReplicaID: "r1", FlushInterval: 50 * time.Millisecond,
		DegradeAfter: 3, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// At start a replica migrates the schema (or, told not to, refuses one that is not
// current, naming the command that fixes it) and proves that notifications reach it.
func TestPostgresPrepare(t *testing.T) {
	srv := pgServer(t)
	ctx := t.Context()
	const prefix = "prep_"
	p := newTestPostgres(t, srv.DSN(), prefix)
	_, err := p.Prepare(ctx, false)
	if err == nil || errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "run `fuseproxy migrate`") {
		t.Fatalf("Prepare without migrating a new prefix: %v", err)
	}
	res, err := p.Prepare(ctx, true)
	if err != nil || res.Version != PostgresSchemaVersion() || len(res.Applied) == 0 {
		t.Fatalf("Prepare(migrate) = %+v, %v", res, err)
	}
	if res, err := p.Prepare(ctx, false); err != nil || res.Version != PostgresSchemaVersion() {
		t.Fatalf("Prepare on a current schema = %+v, %v", res, err)
	}
	dead := newTestPostgres(t, "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable", prefix)
	if _, err := dead.Prepare(ctx, true); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("Prepare against nothing: %v, want ErrUnreachable", err)
	}
}

// A transaction-mode pooler (PgBouncer's pool_mode = transaction) accepts LISTEN and then
// delivers no notification. A proxy that drops the server's NotificationResponse messages
// plays it: the start fails, saying why.
func TestPostgresCheckListenRefusesAPoolerThatDropsNotifications(t *testing.T) {
	srv := pgServer(t)
	p := newTestPostgres(t, "postgres://postgres@"+dropNotifications(t, srv)+"/postgres?sslmode=disable", "deaf_")
	p.o.Timeout = time.Second // connecting through the proxy on a busy machine; CheckListen waits 2 s
	err := p.CheckListen(t.Context())
	if err == nil || unreachable(err) || !strings.Contains(err.Error(), "pool_mode = transaction") {
		t.Fatalf("CheckListen through a pooler that drops notifications: %v", err)
	}
	if err := newTestPostgres(t, srv.DSN(), "deaf_").CheckListen(t.Context()); err != nil {
		t.Fatalf("CheckListen on a direct connection: %v", err)
	}
}

// dropNotifications proxies TCP connections to srv, dropping the server's
// NotificationResponse ('A') messages, and returns its address.
func dropNotifications(t *testing.T, srv *pgtest.Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", srv.Addr())
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, s)
			mu.Unlock()
			wg.Go(func() { _, _ = io.Copy(s, c); s.Close() })
			wg.Go(func() { filterMessages(c, s); c.Close() })
		}
	})
	return ln.Addr().String()
}

// filterMessages copies the server's messages (a type byte, a length) from s to c, but
// NotificationResponse.
func filterMessages(c io.Writer, s io.Reader) {
	head := make([]byte, 5)
	for {
		if _, err := io.ReadFull(s, head); err != nil {
			return
		}
		body := make([]byte, int(binary.BigEndian.Uint32(head[1:]))-4)
		if _, err := io.ReadFull(s, body); err != nil {
			return
		}
		if head[0] == 'A' {
			continue
		}
		if _, err := c.Write(append(head[:5:5], body...)); err != nil {
			return
		}
	}
}
