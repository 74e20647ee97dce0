package config

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

// documentedKey is one yaml key reachable from Config, with its default rendered
// the way Reference writes it ("" for sections).
type documentedKey struct {
	key, def string
}

// reachableKeys walks Config's yaml tags from Default(), descending into upstreams,
// routes and webhooks through their element defaults.
func reachableKeys() []documentedKey {
	var keys []documentedKey
	var walk func(prefix string, v reflect.Value)
	walk = func(prefix string, v reflect.Value) {
		t := v.Type()
		for i := range t.NumField() {
			name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
			if name == "" || name == "-" {
				continue
			}
			key, f := joinPath(prefix, name), v.Field(i)
			keys = append(keys, documentedKey{key, renderDefault(f)})
			switch {
			case f.Kind() == reflect.Struct:
				walk(key, f)
			case f.Kind() == reflect.Map && f.Type().Elem().Kind() == reflect.Pointer:
				keys = append(keys, documentedKey{key + ".<name>", ""})
				walk(key+".<name>", elementDefault(f.Type().Elem()).Elem())
			case f.Kind() == reflect.Slice && f.Type().Elem().Kind() == reflect.Struct:
				walk(key+"[]", elementDefault(f.Type().Elem()))
			}
		}
	}
	walk("", reflect.ValueOf(Default()).Elem())
	return keys
}

// renderDefault writes a default value as Reference does.
func renderDefault(v reflect.Value) string {
	switch {
	case v.Type() == durationType:
		return fmtDuration(time.Duration(v.Int()))
	case v.Kind() == reflect.Struct:
		return ""
	case v.Kind() == reflect.String && v.String() == "":
		return `""`
	case v.Kind() == reflect.String:
		return v.String()
	case v.Kind() == reflect.Float64:
		return fmtFloat(v.Float())
	case v.Kind() == reflect.Map:
		if v.Len() != 0 {
			panic("non-empty default map: extend renderDefault")
		}
		return "{}"
	case v.Kind() == reflect.Slice:
		items := make([]string, v.Len())
		for i := range items {
			if e := v.Index(i); e.Kind() == reflect.String {
				items[i] = strconv.Quote(e.String())
			} else {
				items[i] = fmt.Sprint(e.Interface())
			}
		}
		return "[" + strings.Join(items, ", ") + "]"
	}
	return fmt.Sprint(v.Interface())
}

func TestReferenceCoversEveryKey(t *testing.T) {
	documented := make(map[string]FieldDoc)
	for _, f := range Reference {
		if _, dup := documented[f.Key]; dup {
			t.Errorf("%s documented twice", f.Key)
		}
		if f.Doc == "" {
			t.Errorf("%s has no description", f.Key)
		}
		documented[f.Key] = f
	}
	reachable := make(map[string]bool)
	inOrder := true
	for i, k := range reachableKeys() {
		reachable[k.key] = true
		f, ok := documented[k.key]
		switch {
		case !ok:
			t.Errorf("key %s is not documented in Reference", k.key)
		case f.Default != k.def:
			t.Errorf("%s: Reference says default %s, Default() has %s", k.key, f.Default, k.def)
		}
		if inOrder && (i >= len(Reference) || Reference[i].Key != k.key) {
			t.Errorf("Reference[%d] should be %s: keep Reference in struct field order", i, k.key)
			inOrder = false
		}
	}
	for _, f := range Reference {
		if !reachable[f.Key] {
			t.Errorf("Reference documents %s, which is not a key", f.Key)
		}
	}
}

func TestReferenceEnvMatchesApplyEnv(t *testing.T) {
	fromApplyEnv := make(map[string]string) // key -> variable
	for _, o := range envOverrides() {
		fromApplyEnv[o.Key] = o.Name
	}
	for _, f := range Reference {
		if f.Env != fromApplyEnv[f.Key] {
			t.Errorf("%s: Reference says env %q, ApplyEnv uses %q", f.Key, f.Env, fromApplyEnv[f.Key])
		}
		delete(fromApplyEnv, f.Key)
	}
	for key, name := range fromApplyEnv {
		t.Errorf("ApplyEnv sets %s from %s, which Reference does not document", key, name)
	}
}

func TestReferenceMarkdown(t *testing.T) {
	md := ReferenceMarkdown()
	lines := strings.Split(strings.TrimSuffix(md, "\n"), "\n")
	if len(lines) != len(Reference)+2 {
		t.Fatalf("%d lines for %d keys", len(lines), len(Reference))
	}
	if lines[0] != "| Key | Default | Env | Description |" {
		t.Errorf("header = %q", lines[0])
	}
	want := "| `upstreams.<name>.breaker.failure_rate` | `50` |  | Open when this percentage (0-100) of the calls in the window failed; 0 disables the rule. |"
	if !strings.Contains(md, want+"\n") {
		t.Errorf("missing row %q", want)
	}
	if !strings.Contains(md, "| `store.redis.port` | `6379` | `REDIS_PORT` |") {
		t.Error("env column missing")
	}
	for i, line := range lines {
		if n := strings.Count(strings.ReplaceAll(line, `\|`, ""), "|"); n != 5 {
			t.Errorf("line %d has %d cell separators: %s", i, n, line)
		}
	}
}

// referenceAsYAML writes a config file setting every key in Reference to its
// documented default, with the given overrides (keys as in Reference).
func referenceAsYAML(overrides map[string]string) string {
	var b strings.Builder
	itemStarted := make(map[string]bool)
	skip := "" // the children of an overridden key are left out
	for i, f := range Reference {
		if skip != "" && (strings.HasPrefix(f.Key, skip+".") || strings.HasPrefix(f.Key, skip+"[].")) {
			continue
		}
		parts := strings.Split(f.Key, ".")
		var indent strings.Builder
		for j, parent := range parts[:len(parts)-1] {
			indent.WriteString("  ")
			if strings.HasSuffix(parent, "[]") {
				parent = strings.Join(parts[:j+1], ".") // items are started per list
				if itemStarted[parent] {
					indent.WriteString("  ")
				} else {
					indent.WriteString("- ")
					itemStarted[parent] = true
				}
			}
		}
		name := strings.TrimSuffix(strings.ReplaceAll(parts[len(parts)-1], "<name>", "payments"), "[]")
		hasChildren := i+1 < len(Reference) && (strings.HasPrefix(Reference[i+1].Key, f.Key+".") || strings.HasPrefix(Reference[i+1].Key, f.Key+"[]."))
		switch value, ok := overrides[f.Key]; {
		case ok:
			fmt.Fprintf(&b, "%s%s: %s\n", indent.String(), name, value)
			skip = f.Key
		case hasChildren || f.Default == "":
			fmt.Fprintf(&b, "%s%s:\n", indent.String(), name)
		default:
			fmt.Fprintf(&b, "%s%s: %s\n", indent.String(), name, f.Default)
		}
	}
	return b.String()
}

// TestReferenceDefaultsRoundTrip writes every documented default into a file and
// checks that it decodes to exactly the built-in defaults: every key decodes, and
// every documented default is valid YAML for its key.
func TestReferenceDefaultsRoundTrip(t *testing.T) {
	src := referenceAsYAML(map[string]string{
		"upstreams.<name>.targets": "[http://10.0.0.5:8080]",
		"events.webhooks[].url":    "https://hooks.example.com/x",
		"routes[].upstream":        "payments",
		"server.tls.certificates":  "[]",
		"admin.tls.certificates":   "[]",
	})
	got := mustParse(t, src, nil)

	want := Default()
	up := DefaultUpstream()
	up.Targets = []string{"http://10.0.0.5:8080"}
	want.Upstreams["payments"] = up
	hook := DefaultWebhook()
	hook.URL, hook.Headers = "https://hooks.example.com/x", map[string]string{}
	want.Events.Webhooks = []Webhook{hook}
	route := DefaultRoute()
	route.Upstream = "payments"
	want.Routes = []Route{route}
	if err := want.Validate(); err != nil {
		t.Fatal(err)
	}
	// "5xx" written in the file includes 501 (see Validate).
	up.Failure.FailureStatus.Set(501, true)
	// Empty lists in the file decode as empty, not nil.
	want.Store.Redis.SentinelAddrs, want.Store.Redis.ClusterAddrs = []string{}, []string{}
	want.Routes[0].Methods = []string{}
	want.Admin.AllowedHosts = []string{}
	want.Server.TrustedProxies = []string{}
	want.Server.TLS.Certificates, want.Admin.TLS.Certificates = []Certificate{}, []Certificate{}

	got.origin, got.Path = nil, ""
	if !reflect.DeepEqual(got, want) {
		t.Errorf("file of documented defaults decodes to\n%+v\nwant\n%+v\nfile:\n%s", got, want, src)
	}
}
