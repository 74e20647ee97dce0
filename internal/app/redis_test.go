package app

import (
	"net"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/config"
	"github.com/fuseproxy/fuseproxy/store"
)

// The Redis store takes config.Default()'s values as they are: it has no defaults of its
// own to fall back on (store.TestNewRedisRefusesMissingOptions), so the config's must
// satisfy it, and the exchange timeout is the config's dial + read + write timeouts.
func TestRedisStoreDefaultsAreTheConfigs(t *testing.T) {
	d := config.Default()
	o := redisOptions(d.Store)
	want := store.RedisOptions{Prefix: d.Store.Redis.Prefix, FlushInterval: d.Store.FlushInterval,
		DegradeAfter: d.Store.Redis.DegradeAfter,
		Timeout:      d.Store.Redis.DialTimeout + d.Store.Redis.ReadTimeout + d.Store.Redis.WriteTimeout,
		History:      store.HistoryOptions{Retention: d.Store.History.Retention, MaxEntries: d.Store.History.MaxEntries}}
	if !reflect.DeepEqual(o, want) {
		t.Errorf("store options from config.Default(): %+v, want %+v", o, want)
	}
	client, err := store.NewRedisClient(redisClientOptions(d.Store.Redis, nil)) // never dialled
	if err != nil {
		t.Fatal(err)
	}
	o.ReplicaID = "r"
	st, err := store.NewRedis(client, o)
	if err != nil {
		t.Fatalf("the Redis store refuses config.Default(): %v", err)
	}
	st.Close()
}

// Every store.redis key reaches the Redis client or the store, under the same name: a
// key added to config.Redis (or config.TLS) and not carried over fails here.
func TestRedisOptionsCarryEveryKey(t *testing.T) {
	var c config.Redis
	n := 0
	fill(t, reflect.ValueOf(&c).Elem(), "", &n)
	co := reflect.ValueOf(redisClientOptions(c, nil))
	so := reflect.ValueOf(redisOptions(config.Store{Redis: c}))
	tlsOpts := co.FieldByName("TLS")
	for _, f := range reflect.VisibleFields(reflect.TypeFor[config.Redis]()) {
		v := reflect.ValueOf(c).FieldByIndex(f.Index)
		switch f.Name {
		case "Host", "Port":
			if addr := net.JoinHostPort(c.Host, strconv.Itoa(c.Port)); co.FieldByName("Addr").String() != addr {
				t.Errorf("Addr %q, want %q", co.FieldByName("Addr"), addr)
			}
		case "TLS":
			for _, tf := range reflect.VisibleFields(f.Type) {
				if out := tlsOpts.FieldByName(tf.Name); !out.IsValid() || !reflect.DeepEqual(out.Interface(), v.FieldByIndex(tf.Index).Interface()) {
					t.Errorf("store.redis.tls %s does not reach the client", tf.Name)
				}
			}
		case "Prefix", "DegradeAfter":
			if out := so.FieldByName(f.Name); !reflect.DeepEqual(out.Interface(), v.Interface()) {
				t.Errorf("store.redis %s: %v in the store, want %v", f.Name, out, v)
			}
		default:
			if out := co.FieldByName(f.Name); !out.IsValid() || !reflect.DeepEqual(out.Interface(), v.Interface()) {
				t.Errorf("store.redis %s does not reach the client", f.Name)
			}
		}
	}
	if to := so.FieldByName("Timeout").Interface(); to != c.DialTimeout+c.ReadTimeout+c.WriteTimeout {
		t.Errorf("Timeout %v, want dial + read + write", to)
	}
}

// fill sets every field of v to a distinct non-zero value; n counts the fields set.
func fill(t *testing.T, v reflect.Value, path string, n *int) {
	t.Helper()
	*n++
	switch v.Kind() {
	case reflect.Struct:
		for i := range v.NumField() {
			fill(t, v.Field(i), path+"."+v.Type().Field(i).Name, n)
		}
	case reflect.String:
		v.SetString("v" + path)
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int64:
		if v.Type() == reflect.TypeFor[time.Duration]() {
			v.SetInt(int64(*n) * int64(time.Millisecond))
		} else {
			v.SetInt(int64(*n))
		}
	case reflect.Slice:
		if v.Type().Elem().Kind() != reflect.String {
			t.Fatalf("%s: fill does not know %s", path, v.Type())
		}
		v.Set(reflect.ValueOf([]string{"v" + path}))
	default:
		t.Fatalf("%s: fill does not know %s", path, v.Type())
	}
}

// A client option the store cannot use is reported under its key in the config.
func TestRedisClientErrorNamesTheKey(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "ca.pem")
	for key, yaml := range map[string]string{
		"store.redis.tls.ca_file: ":            "tls: {ca_file: " + missing + "}",
		"store.redis.tls.cert_file/key_file: ": "tls: {cert_file: " + missing + ", key_file: " + missing + "}",
	} {
		cfg, err := config.ParseWithEnv("config.yaml", []byte(`
store:
  driver: redis
  redis:
    `+yaml+`
upstreams:
  api: {targets: ["http://127.0.0.1:1"]}
routes:
  - upstream: api
`), nil)
		if err != nil {
			t.Fatal(err)
		}
		a, err := New(cfg, Options{})
		if err == nil {
			a.store.Close()
			t.Fatalf("%s: New accepted a missing file", key)
		}
		if !strings.HasPrefix(err.Error(), key) {
			t.Errorf("error %q, want it to start with %q", err, key)
		}
	}
}

// What `validate` accepts in store.redis.url, the store accepts too, and the client
// runs with the URL's options (they reach it through the config's keys); what the store
// would refuse, `validate` refuses first.
func TestRedisURLValidateAgreesWithTheClient(t *testing.T) {
	load := func(url string) (*config.Config, error) {
		return config.ParseWithEnv("config.yaml", []byte("store:\n  driver: redis\n  redis:\n    url: "+url+
			"\nupstreams:\n  api: {targets: [\"http://127.0.0.1:1\"]}\nroutes:\n  - upstream: api\n"), nil)
	}
	for _, url := range []string{
		"redis://127.0.0.1:1/0?dial_timeout=1s&read_timeout=2&write_timeout=30ms&pool_size=3&db=4",
		"rediss://u:p@127.0.0.1:1/?dial_timeout=750ms",
	} {
		cfg, err := load(url)
		if err != nil {
			t.Fatalf("%s: %v", url, err)
		}
		c, err := store.NewRedisClient(redisClientOptions(cfg.Store.Redis, nil))
		if err != nil {
			t.Fatalf("%s: validate accepted it, the client refused it: %v", url, err)
		}
		_ = c.Close()
	}
	cfg, _ := load("redis://127.0.0.1:1/0?dial_timeout=1s&read_timeout=2&write_timeout=30ms&pool_size=3")
	o := redisClientOptions(cfg.Store.Redis, nil)
	if o.DialTimeout != time.Second || o.ReadTimeout != 2*time.Second || o.WriteTimeout != 30*time.Millisecond || o.PoolSize != 3 {
		t.Errorf("client options %+v: want the URL's dial 1s, read 2s, write 30ms, pool 3", o)
	}
	if got, want := exchangeTimeout(cfg.Store.Redis), 3030*time.Millisecond; got != want {
		t.Errorf("exchange timeout %v, want %v (the URL's timeouts)", got, want)
	}
	for _, url := range []string{"redis://127.0.0.1:1/0?bogus=1", "redis://127.0.0.1:1/0?dial_timeout=x"} {
		if _, err := load(url); err == nil {
			t.Errorf("%s: validate accepted it", url)
		} else if _, cerr := store.NewRedisClient(store.RedisClientOptions{URL: url}); cerr == nil {
			t.Errorf("%s: the client accepts what validate refuses: %v", url, err)
		}
	}
}
