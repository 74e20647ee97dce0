package store

import (
	"strings"
	"testing"
	"time"
)

func TestPostgresPoolSettings(t *testing.T) {
	t.Setenv("PGHOST", "from-env")
	t.Setenv("PGDATABASE", "envdb")
	t.Setenv("PGSSLMODE", "disable")
	// empty keys: libpq's variables
	p, err := NewPostgresPool(PostgresClientOptions{User: "fuse", Password: `it's \ odd`, PoolSize: 3,
		ConnectTimeout: 250 * time.Millisecond, StatementTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	c := p.Config()
	p.Close()
	cc := c.ConnConfig
	if cc.Host != "from-env" || cc.Database != "envdb" || cc.User != "fuse" || cc.Password != `it's \ odd` ||
		cc.Port != 5432 || cc.TLSConfig != nil || c.MaxConns != 3 || cc.ConnectTimeout != 250*time.Millisecond ||
		cc.RuntimeParams["statement_timeout"] != "300" || cc.RuntimeParams["application_name"] != "fuseproxy" {
		t.Fatalf("config from keys and PG*: host %q db %q user %q pw %q port %d tls %v pool %d params %v",
			cc.Host, cc.Database, cc.User, cc.Password, cc.Port, cc.TLSConfig != nil, c.MaxConns, cc.RuntimeParams)
	}
	// a URL replaces host, port and database; user, password and sslmode override it
	p, err = NewPostgresPool(PostgresClientOptions{URL: "postgres://u:p@db.internal:5433/app?sslmode=require",
		Host: "ignored", User: "fuse", SSLMode: "disable"})
	if err != nil {
		t.Fatal(err)
	}
	cc = p.Config().ConnConfig
	p.Close()
	if cc.Host != "db.internal" || cc.Port != 5433 || cc.Database != "app" || cc.User != "fuse" || cc.Password != "p" || cc.TLSConfig != nil {
		t.Fatalf("config from the URL: host %q port %d db %q user %q pw %q tls %v", cc.Host, cc.Port, cc.Database, cc.User, cc.Password, cc.TLSConfig != nil)
	}
	p, err = NewPostgresPool(PostgresClientOptions{Host: "h", SSLMode: "verify-full"})
	if err != nil {
		t.Fatal(err)
	}
	cc = p.Config().ConnConfig
	p.Close()
	if cc.TLSConfig == nil || cc.TLSConfig.ServerName != "h" || cc.TLSConfig.InsecureSkipVerify {
		t.Fatalf("verify-full: %+v", cc.TLSConfig)
	}
	_, err = NewPostgresPool(PostgresClientOptions{URL: "mysql://u:secret@h/db"})
	if err == nil || strings.Contains(err.Error(), "secret") || !strings.HasPrefix(err.Error(), "url: ") {
		t.Fatalf("a bad URL: %v", err)
	}
}
