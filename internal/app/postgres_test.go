package app

import (
	"reflect"
	"testing"

	"github.com/fuseproxy/fuseproxy/config"
	"github.com/fuseproxy/fuseproxy/store"
)

// The PostgreSQL store takes config.Default()'s values as they are (it has no defaults
// of its own), and an exchange is bounded by connect_timeout + statement_timeout.
func TestPostgresStoreDefaultsAreTheConfigs(t *testing.T) {
	d := config.Default()
	o := postgresOptions(d.Store)
	want := store.PostgresOptions{Prefix: d.Store.Postgres.Prefix, FlushInterval: d.Store.FlushInterval,
		DegradeAfter: d.Store.Postgres.DegradeAfter,
		Timeout:      d.Store.Postgres.ConnectTimeout + d.Store.Postgres.StatementTimeout,
		History:      store.HistoryOptions{Retention: d.Store.History.Retention, MaxEntries: d.Store.History.MaxEntries}}
	if !reflect.DeepEqual(o, want) {
		t.Errorf("store options from config.Default(): %+v, want %+v", o, want)
	}
	pool, err := store.NewPostgresPool(postgresClientOptions(d.Store.Postgres)) // never dialled
	if err != nil {
		t.Fatal(err)
	}
	o.ReplicaID = "r"
	st, err := store.NewPostgres(pool, o)
	if err != nil {
		t.Fatalf("the PostgreSQL store refuses config.Default(): %v", err)
	}
	st.Close()
}

// Every store.postgres key reaches the pool or the store: a key added to config.Postgres
// and not carried over fails here.
func TestPostgresOptionsCarryEveryKey(t *testing.T) {
	var c config.Postgres
	n := 0
	fill(t, reflect.ValueOf(&c).Elem(), "", &n)
	co := reflect.ValueOf(postgresClientOptions(c))
	so := postgresOptions(config.Store{Postgres: c})
	for _, f := range reflect.VisibleFields(reflect.TypeFor[config.Postgres]()) {
		v := reflect.ValueOf(c).FieldByIndex(f.Index).Interface()
		switch f.Name {
		case "Prefix":
			if so.Prefix != c.Prefix {
				t.Errorf("prefix does not reach the store")
			}
		case "DegradeAfter":
			if so.DegradeAfter != c.DegradeAfter {
				t.Errorf("degrade_after does not reach the store")
			}
		case "Migrate": // prepareStore reads it
		default:
			if out := co.FieldByName(f.Name); !out.IsValid() || !reflect.DeepEqual(out.Interface(), v) {
				t.Errorf("store.postgres %s does not reach the pool", f.Name)
			}
		}
	}
	if so.Timeout != c.ConnectTimeout+c.StatementTimeout {
		t.Errorf("timeout %v", so.Timeout)
	}
}
