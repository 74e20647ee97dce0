package pgtest

import (
	"context"
	"net"
	"os"
	"testing"
	"time"
)

func TestStartKillRestartStop(t *testing.T) {
	srv := Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	srv.Exec("CREATE TABLE t (v int)")
	srv.Exec("INSERT INTO t VALUES (42)")
	var v int
	if err := srv.Pool().QueryRow(ctx, "SELECT v FROM t").Scan(&v); err != nil || v != 42 {
		t.Fatalf("SELECT v = %d, %v; want 42", v, err)
	}
	// the socket works too
	c := srv.Conn(srv.SocketDSN())
	if err := c.QueryRow(ctx, "SELECT v FROM t").Scan(&v); err != nil || v != 42 {
		t.Fatalf("over the socket: SELECT v = %d, %v; want 42", v, err)
	}

	srv.Kill()
	if conn, err := net.DialTimeout("tcp", srv.Addr(), time.Second); err == nil {
		conn.Close()
		t.Fatalf("dial %s after Kill succeeded", srv.Addr())
	}
	port := srv.Port()
	srv.Restart()
	if srv.Port() != port {
		t.Fatalf("port %d after Restart, want %d", srv.Port(), port)
	}
	// committed data survives the crash
	err := srv.Pool().QueryRow(ctx, "SELECT v FROM t").Scan(&v)
	if err != nil {
		// the pool's old connections died with the server; the next one is fresh
		err = srv.Pool().QueryRow(ctx, "SELECT v FROM t").Scan(&v)
	}
	if err != nil || v != 42 {
		t.Fatalf("after Restart: SELECT v = %d, %v; want 42", v, err)
	}

	srv.Stop()
	if conn, err := net.DialTimeout("tcp", srv.Addr(), time.Second); err == nil {
		conn.Close()
		t.Fatalf("dial %s after Stop succeeded", srv.Addr())
	}
	srv.Restart()
	srv.Kill()
	srv.Kill() // twice: nothing
}

func TestRolesAndDatabases(t *testing.T) {
	srv := Start(t, "max_connections=20")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dsn := srv.CreateDatabase("other")
	srv.Exec("CREATE ROLE runtime LOGIN")
	c := srv.Conn(dsn)
	var db string
	if err := c.QueryRow(ctx, "SELECT current_database()").Scan(&db); err != nil || db != "other" {
		t.Fatalf("current_database = %q, %v", db, err)
	}
	var n string
	if err := srv.Pool().QueryRow(ctx, "SHOW max_connections").Scan(&n); err != nil || n != "20" {
		t.Fatalf("max_connections = %q, %v; want 20", n, err)
	}
	rc := srv.Conn(srv.DSNFor("runtime", "other"))
	var who string
	if err := rc.QueryRow(ctx, "SELECT current_user").Scan(&who); err != nil || who != "runtime" {
		t.Fatalf("current_user = %q, %v", who, err)
	}
	if _, err := rc.Exec(ctx, "CREATE ROLE nope"); err == nil {
		t.Fatal("a plain role created a role")
	}
}

func TestCleanupRemovesEverything(t *testing.T) {
	var root string
	var pid int
	t.Run("server", func(t *testing.T) {
		srv := Start(t)
		root = srv.root
		pid = srv.cmd.Process.Pid
	})
	if _, err := os.Stat(root); !os.IsNotExist(err) {
		t.Fatalf("%s still there after the test: %v", root, err)
	}
	if groupAlive(pid) {
		t.Fatalf("process group %d still alive after the test", pid)
	}
}

func TestNewClose(t *testing.T) {
	srv, err := New()
	if err != nil {
		t.Fatal(err)
	}
	root := srv.root
	srv.Exec("CREATE TABLE t (v int)")
	srv.Close()
	if _, err := os.Stat(root); !os.IsNotExist(err) {
		t.Fatalf("%s still there after Close: %v", root, err)
	}
}
