package app

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestUpgradesTrackHijackedConns: an upgraded (hijacked) connection is tracked while its
// handler runs, wait reports it until the deadline, closeAll closes it (the client sees
// EOF) and its handler returns; ordinary requests are not tracked.
func TestUpgradesTrackHijackedConns(t *testing.T) {
	u := newUpgrades()
	returned := make(chan struct{}, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") == "" {
			_, _ = w.Write([]byte("plain\n"))
			return
		}
		defer func() { returned <- struct{}{} }()
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("hijack: %v", err)
			return
		}
		defer c.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: test\r\nConnection: Upgrade\r\n\r\n")
		_ = brw.Flush()
		_, _ = c.Read(make([]byte, 1)) // until the connection is closed
	})
	srv := httptest.NewUnstartedServer(u.wrap(h))
	srv.Config.ConnContext = u.connContext
	srv.Start()
	defer srv.Close()

	// An ordinary request is not tracked.
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if !u.wait(context.Background()) {
		t.Fatal("an ordinary request is tracked")
	}

	c, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: test\r\n\r\n"))
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil || !strings.Contains(line, "101") {
		t.Fatalf("upgrade: %q, %v", line, err)
	}
	for {
		if line, err = br.ReadString('\n'); err != nil || line == "\r\n" {
			break
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if u.wait(ctx) {
		t.Fatal("wait returned true with an upgraded connection open")
	}
	if n := u.closeAll(); n != 1 {
		t.Fatalf("closeAll closed %d connections, want 1", n)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := br.ReadByte(); err == nil {
		t.Fatal("the client's connection is still open after closeAll")
	}
	select {
	case <-returned:
	case <-time.After(5 * time.Second):
		t.Fatal("the handler did not return after closeAll")
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()
	if !u.wait(ctx2) {
		t.Fatal("still tracked after its handler returned")
	}
}
