package config

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
)

// Keyed is an upstream's per-key breakers (Fuse's for() and boundary()): each distinct
// key read from a request (a tenant, an account, a region) gets a circuit of its own,
// with the upstream's thresholds unless overridden here, beside the upstream-wide one.
// A key's trip rejects that key's requests only; the upstream's trip rejects every
// request. From empty turns the feature off.
type Keyed struct {
	// From lists where the key's parts are read: "header:NAME", "path:N" (the N-th
	// segment of the cleaned path, from 1), "query:NAME", "host". Parts are joined by
	// "|"; a request missing any part has no key.
	From []string `yaml:"from"`
	// DefaultKey is the key of a request whose key cannot be read (or is longer than
	// MaxKeyLength, or arrives while the table is full): "" means no key, the request is
	// judged by the upstream-wide breaker alone.
	DefaultKey string `yaml:"default_key"`
	// MaxKeys bounds the keys tracked at once, on each replica and in the shared store.
	MaxKeys int `yaml:"max_keys"`
	// IdleTTL is how long a key without requests is kept (an open key at least until its
	// open period ends).
	IdleTTL time.Duration `yaml:"idle_ttl"`
	// EventsPerSecond bounds the key transitions logged and sent to webhooks per
	// upstream and replica; the rest are counted and summarised.
	EventsPerSecond int `yaml:"events_per_second"`
	// Overrides of the upstream's breaker settings for the keys' circuits: -1 (or 0s for
	// OpenDuration) takes the upstream's.
	ConsecutiveFailures int           `yaml:"consecutive_failures"`
	FailureRate         float64       `yaml:"failure_rate"`
	MinimumRequests     int           `yaml:"minimum_requests"`
	OpenDuration        time.Duration `yaml:"open_duration"`

	// Sources are From parsed (not a YAML key; filled by Validate).
	Sources []KeySource `yaml:"-"`
}

// MaxKeyLength is the longest key, in bytes, parts and separators included: a longer one
// is treated as a key that cannot be read (DefaultKey).
const MaxKeyLength = 256

// KeySeparator joins the parts of a combined key.
const KeySeparator = '|'

// KeySource is one part of a key.
type KeySource struct {
	Kind    KeyKind
	Name    string // header (canonical form) or query parameter name
	Segment int    // path segment, from 1
}

// KeyKind is where a key part comes from.
type KeyKind uint8

// The kinds of key parts.
const (
	KeyHeader KeyKind = iota + 1
	KeyPath
	KeyQuery
	KeyHost
)

// Enabled reports whether the upstream has per-key breakers.
func (k Keyed) Enabled() bool { return len(k.From) > 0 }

// Settings returns the keys' breaker settings: the upstream's, with the overrides.
func (k Keyed) Settings(b Breaker) breaker.Settings {
	if k.ConsecutiveFailures >= 0 {
		b.ConsecutiveFailures = k.ConsecutiveFailures
	}
	if k.FailureRate >= 0 {
		b.FailureRate = k.FailureRate
	}
	if k.MinimumRequests >= 0 {
		b.MinimumRequests = k.MinimumRequests
	}
	if k.OpenDuration > 0 {
		b.OpenDuration = k.OpenDuration
		b.MaxOpenDuration = max(b.MaxOpenDuration, k.OpenDuration)
	}
	if b.Mode != "metrics_only" { // a dry run stays one; a forced upstream does not force its keys
		b.Mode = "normal"
	}
	return b.Settings()
}

// KeyName returns the circuit name of key under upstream: "UPSTREAM#KEY", the key
// percent-encoded except for letters, digits and "-._~" (so it holds no space, brace,
// "#" or control character, and names the same key on every replica).
func KeyName(upstream, key string) string {
	var b strings.Builder
	b.Grow(len(upstream) + 1 + len(key))
	b.WriteString(upstream)
	b.WriteByte('#')
	for i := 0; i < len(key); i++ {
		c := key[i]
		if keyUnreserved(c) {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte("0123456789ABCDEF"[c>>4])
		b.WriteByte("0123456789ABCDEF"[c&15])
	}
	return b.String()
}

// SplitKeyName splits a circuit name made by KeyName into the upstream and the key
// (decoded); ok is false for a name that is not a key's.
func SplitKeyName(name string) (upstream, key string, ok bool) {
	upstream, enc, ok := strings.Cut(name, "#")
	if !ok || upstream == "" {
		return "", "", false
	}
	var b strings.Builder
	for i := 0; i < len(enc); i++ {
		c := enc[i]
		if c != '%' {
			b.WriteByte(c)
			continue
		}
		if i+2 >= len(enc) {
			return "", "", false
		}
		n, err := strconv.ParseUint(enc[i+1:i+3], 16, 8)
		if err != nil {
			return "", "", false
		}
		b.WriteByte(byte(n))
		i += 2
	}
	return upstream, b.String(), true
}

func keyUnreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '-' || c == '.' || c == '_' || c == '~'
}

// ParseKeySource parses one entry of keyed.from.
func ParseKeySource(s string) (KeySource, error) {
	kind, arg, _ := strings.Cut(s, ":")
	switch kind {
	case "header":
		if !isToken(arg) {
			return KeySource{}, fmt.Errorf("header:NAME needs a header name, got %s", quote(s))
		}
		return KeySource{Kind: KeyHeader, Name: http.CanonicalHeaderKey(arg)}, nil
	case "path":
		n, err := strconv.Atoi(arg)
		if err != nil || n < 1 || n > 64 {
			return KeySource{}, fmt.Errorf("path:N needs a segment number 1-64, got %s", quote(s))
		}
		return KeySource{Kind: KeyPath, Segment: n}, nil
	case "query":
		if arg == "" || strings.ContainsAny(arg, "&=#% ") {
			return KeySource{}, fmt.Errorf("query:NAME needs a parameter name, got %s", quote(s))
		}
		return KeySource{Kind: KeyQuery, Name: arg}, nil
	case "host":
		if arg != "" {
			return KeySource{}, fmt.Errorf("host takes no argument, got %s", quote(s))
		}
		return KeySource{Kind: KeyHost}, nil
	}
	return KeySource{}, fmt.Errorf(`must be "header:NAME", "path:N", "query:NAME" or "host", got %s`, quote(s))
}

// keyed checks an upstream's keyed section and fills Sources.
func (v *validator) keyed(p string, u *Upstream) {
	k := &u.Keyed
	k.Sources = k.Sources[:0]
	for i, s := range k.From {
		src, err := ParseKeySource(s)
		if err != nil {
			v.errorf(fmt.Sprintf("%s.from[%d]", p, i), "%v", err)
			continue
		}
		k.Sources = append(k.Sources, src)
	}
	if len(k.From) > 8 {
		v.errorf(p+".from", "at most 8 parts, got %d", len(k.From))
	}
	if len(k.DefaultKey) > MaxKeyLength {
		v.errorf(p+".default_key", "at most %d bytes, got %d", MaxKeyLength, len(k.DefaultKey))
	}
	v.intBetween(p+".max_keys", k.MaxKeys, 1, 1000000)
	if k.IdleTTL < time.Second {
		v.errorf(p+".idle_ttl", "must be at least 1s, got %s", fmtDuration(k.IdleTTL))
	}
	v.atLeast(p+".events_per_second", k.EventsPerSecond, 0)
	v.atLeast(p+".consecutive_failures", k.ConsecutiveFailures, -1)
	if k.FailureRate != -1 {
		v.between(p+".failure_rate", k.FailureRate, 0, 100)
	}
	v.atLeast(p+".minimum_requests", k.MinimumRequests, -1)
	v.nonNegative(p+".open_duration", k.OpenDuration)
	if k.Enabled() && !u.Breaker.Enabled {
		v.errorf(p+".from", "per-key breakers use the upstream's breaker settings: set breaker.enabled: true")
	}
}
