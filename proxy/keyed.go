package proxy

import (
	"hash/maphash"
	"math/rand/v2"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/fuseproxy/fuseproxy/breaker"
	"github.com/fuseproxy/fuseproxy/config"
)

// Per-key breakers (upstreams.<name>.keyed, Fuse's for() and boundary()): each key read
// from a request has a circuit of its own, a breaker.Breaker like any (the same state
// machine, shared through the same store protocol), beside the upstream-wide one.
//
// Composition: the key's circuit is asked first, then the upstream's. A key's trip
// rejects that key's requests only; the upstream's trip rejects every request, whatever
// its key. An admitted request's outcome goes to both (and to its target's circuit).
// A rejection by a key's circuit is the upstream's fallback response, marked
// X-Fuse-Scope: key.
//
// Bounds: a table holds at most max_keys keys per upstream. A new key when the table is
// full evicts the least recently used key among a sample that is closed (not forced),
// and has had no request for a window; an open or half-open key, or one with recent
// requests, is never evicted. With no such key the request goes to default_key (or to
// the upstream-wide circuit alone). Keys without requests for idle_ttl are swept (an
// open one not before its open period ends). Keys are compared whole (no hash decides
// identity): a client can reach another tenant's circuit only by sending that tenant's
// key.

// HeaderScope marks a rejection by a key's circuit (value "key"); an upstream-wide
// rejection does not carry it.
const HeaderScope = "X-Fuse-Scope"

var scopeKey = readOnly("key")

// KeyOptions are the collaborators of per-key circuits; nil fields are skipped.
type KeyOptions struct {
	// Clock is the key breakers' clock; nil means breaker.SystemClock().
	Clock breaker.Clock
	// Observer returns the observer of an upstream's key transitions (the app rate-limits
	// them).
	Observer func(upstream string) breaker.Observer
	// Attach is called when a key's circuit is created, Detach when it is evicted or
	// swept: a shared store takes it over and lets it go. They must not block.
	Attach func(upstream, name string, b *breaker.Breaker)
	Detach func(name string, b *breaker.Breaker)
}

// keyShards is the number of independently locked parts of a key table.
const keyShards = 64

// keySample is how many keys an eviction looks at (in up to keySampleShards shards).
const (
	keySample       = 32
	keySampleShards = 4
)

// keyTable is one upstream's keys. It outlives routing tables: a reload keeps it (and
// its circuits) while the upstream keeps per-key breakers.
type keyTable struct {
	upstream string
	seed     maphash.Seed
	opts     *KeyOptions
	clock    breaker.Clock
	obs      breaker.Observer
	cfg      atomic.Pointer[keyConfig]

	count     atomic.Int64
	evictions atomic.Uint64
	overflow  atomic.Uint64 // new keys sent to the default because the table was full
	rejected  atomic.Uint64 // requests a key's circuit rejected

	nextSweep  atomic.Int64 // clock reading (ns) of the next sweep step
	sweepShard atomic.Uint32

	shards [keyShards]keyShard
}

type keyShard struct {
	mu sync.RWMutex
	m  map[string]*keyCircuit
	_  [40]byte // keep shards' locks on separate cache lines
}

// keyConfig is what a reload may change.
type keyConfig struct {
	sources    []config.KeySource
	defaultKey string
	maxKeys    int64
	idle       time.Duration
	active     time.Duration // a key with a request this recently is not evicted (a window)
	settings   breaker.Settings
}

// keyCircuit is one key's circuit.
type keyCircuit struct {
	key, name string
	b         *breaker.Breaker
	// A request marks the key touched, without reading the clock; an eviction or a
	// sweep that finds it touched stamps used with the time it looked (observe). So a
	// key's idleness is known to the resolution of those looks (a sweep passes every
	// key each keyShards × sweepEvery), and is never overestimated.
	touched atomic.Bool
	used    atomic.Int64 // clock reading (ns) at which the key was last seen used
}

// observe turns a touch into a time of use, now.
func (c *keyCircuit) observe(now int64) {
	if c.touched.Load() && c.touched.Swap(false) {
		c.used.Store(now)
	}
}

// keyAdmission is a request's key circuit and its ticket; the zero value is no key.
type keyAdmission struct {
	kc     *keyCircuit
	ticket breaker.Ticket
}

func newKeyTable(upstream string, opts *KeyOptions) *keyTable {
	t := &keyTable{upstream: upstream, seed: maphash.MakeSeed(), opts: opts}
	t.clock = opts.Clock
	if t.clock == nil {
		t.clock = breaker.SystemClock()
	}
	if opts.Observer != nil {
		t.obs = opts.Observer(upstream)
	}
	for i := range t.shards {
		t.shards[i].m = map[string]*keyCircuit{}
	}
	return t
}

// configure applies an upstream's keyed settings (at build and on reload) to the table
// and to every key's circuit.
func (t *keyTable) configure(cu *config.Upstream) {
	s := cu.Keyed.Settings(cu.Breaker)
	kc := &keyConfig{sources: cu.Keyed.Sources, defaultKey: cu.Keyed.DefaultKey, maxKeys: int64(cu.Keyed.MaxKeys),
		idle: cu.Keyed.IdleTTL, active: cu.Breaker.Window, settings: s}
	if kc.active <= 0 {
		kc.active = 10 * time.Second
	}
	old := t.cfg.Swap(kc)
	if old != nil && old.settings != s {
		// Each key takes the new settings, and is handed to the store again, which
		// shares it under them from now on.
		t.each(func(c *keyCircuit) {
			c.b.SetSettings(s)
			if t.opts.Attach != nil {
				t.opts.Attach(t.upstream, c.name, c.b)
			}
		})
	}
}

// each calls f for every key (under its shard's read lock: f must not touch the table).
func (t *keyTable) each(f func(*keyCircuit)) {
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.RLock()
		for _, c := range sh.m {
			f(c)
		}
		sh.mu.RUnlock()
	}
}

// drop forgets every key (the upstream lost per-key breakers, or is gone).
func (t *keyTable) drop() {
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		m := sh.m
		sh.m = map[string]*keyCircuit{}
		sh.mu.Unlock()
		for _, c := range m {
			t.count.Add(-1)
			t.detach(c)
		}
	}
}

func (t *keyTable) detach(c *keyCircuit) {
	if t.opts.Detach != nil {
		t.opts.Detach(c.name, c.b)
	}
}

// readKey reads the request's key into buf (a combined key) or returns it as a
// substring of the request (a single part); ok is false when a part is missing or the
// key is longer than config.MaxKeyLength. It does not allocate, except to unescape a
// query value holding '%' or '+'.
func readKey(srcs []config.KeySource, r *http.Request, cleaned string, buf *[config.MaxKeyLength]byte) (string, bool) {
	if len(srcs) == 1 {
		s, ok := keyPart(srcs[0], r, cleaned)
		if !ok || len(s) > config.MaxKeyLength {
			return "", false
		}
		return s, true
	}
	n := 0
	for i, src := range srcs {
		s, ok := keyPart(src, r, cleaned)
		if !ok || n+len(s)+1 > config.MaxKeyLength+1 {
			return "", false
		}
		if i > 0 {
			buf[n] = config.KeySeparator
			n++
		}
		n += copy(buf[n:], s)
	}
	if n > config.MaxKeyLength {
		return "", false
	}
	// The string shares buf: it is only looked up, and cloned before it is kept.
	return unsafe.String(&buf[0], n), true
}

// keyPart reads one part of a key; an empty part is a missing one.
func keyPart(src config.KeySource, r *http.Request, cleaned string) (string, bool) {
	var s string
	switch src.Kind {
	case config.KeyHeader:
		if v := r.Header[src.Name]; len(v) > 0 {
			s = v[0]
		}
	case config.KeyPath:
		s = pathSegment(cleaned, src.Segment)
	case config.KeyQuery:
		s = queryValue(r.URL.RawQuery, src.Name)
	case config.KeyHost:
		s = normalizeHost(r.Host)
	}
	return s, s != ""
}

// pathSegment returns the n-th segment (from 1) of a cleaned path, "" if it has fewer.
func pathSegment(p string, n int) string {
	for i := 1; len(p) > 0; i++ {
		p = p[1:] // the '/'
		j := strings.IndexByte(p, '/')
		if j < 0 {
			j = len(p)
		}
		if i == n {
			return p[:j]
		}
		p = p[j:]
	}
	return ""
}

// queryValue returns the first value of the named parameter in a raw query, unescaped.
func queryValue(q, name string) string {
	for q != "" {
		var kv string
		kv, q, _ = strings.Cut(q, "&")
		k, v, _ := strings.Cut(kv, "=")
		if k != name {
			continue
		}
		if strings.ContainsAny(v, "%+") {
			u, err := url.QueryUnescape(v)
			if err != nil {
				return ""
			}
			return u
		}
		return v
	}
	return ""
}

// lookup returns key's circuit, creating it if need be (nil when the table is full of
// keys that may not be evicted). key may share a buffer: it is cloned before it is kept.
// Finding an existing key reads no clock and writes no shared memory but its flag.
func (t *keyTable) lookup(key string) *keyCircuit {
	sh := &t.shards[maphash.String(t.seed, key)&(keyShards-1)]
	sh.mu.RLock()
	c := sh.m[key]
	sh.mu.RUnlock()
	if c != nil {
		if !c.touched.Load() {
			c.touched.Store(true)
		}
		return c
	}
	return t.create(sh, key)
}

func (t *keyTable) create(sh *keyShard, key string) *keyCircuit {
	now := int64(t.clock.Now())
	if now >= t.nextSweep.Load() {
		t.sweepStep(now)
	}
	cfg := t.cfg.Load()
	if t.count.Load() >= cfg.maxKeys && !t.evict(now, cfg) {
		t.overflow.Add(1)
		return nil
	}
	owned := strings.Clone(key) // key may share the request's buffer
	name := config.KeyName(t.upstream, owned)
	sh.mu.Lock()
	if c := sh.m[owned]; c != nil { // created meanwhile
		sh.mu.Unlock()
		return c
	}
	if t.count.Add(1) > cfg.maxKeys { // another request took the slot
		t.count.Add(-1)
		sh.mu.Unlock()
		t.overflow.Add(1)
		return nil
	}
	c := &keyCircuit{key: owned, name: name,
		b: breaker.New(name, cfg.settings, breaker.Options{Clock: t.clock, Observer: t.obs})}
	c.used.Store(now)
	sh.m[owned] = c
	sh.mu.Unlock()
	if t.opts.Attach != nil {
		t.opts.Attach(t.upstream, name, c.b)
	}
	return c
}

// evictable reports whether c may make room for a new key: closed, in normal mode, and
// without a request for a window (the default key never).
func (c *keyCircuit) evictable(now int64, cfg *keyConfig) bool {
	c.observe(now)
	return c.key != cfg.defaultKey && c.b.State() == breaker.Closed && c.b.Mode() == breaker.Normal &&
		now-c.used.Load() >= int64(cfg.active)
}

// evict removes the least recently used evictable key of a sample; it reports whether
// it removed one.
func (t *keyTable) evict(now int64, cfg *keyConfig) bool {
	start := rand.Uint32()
	var victim *keyCircuit
	var vsh *keyShard
	seen := 0
	for i := uint32(0); i < keySampleShards && seen < keySample; i++ {
		sh := &t.shards[(start+i)&(keyShards-1)]
		sh.mu.RLock()
		for _, c := range sh.m { // map order is random: a random sample
			if seen++; seen > keySample {
				break
			}
			if c.evictable(now, cfg) && (victim == nil || c.used.Load() < victim.used.Load()) {
				victim, vsh = c, sh
			}
		}
		sh.mu.RUnlock()
	}
	if victim == nil {
		return false
	}
	vsh.mu.Lock()
	if vsh.m[victim.key] != victim || !victim.evictable(now, cfg) {
		vsh.mu.Unlock()
		return false
	}
	delete(vsh.m, victim.key)
	vsh.mu.Unlock()
	t.count.Add(-1)
	t.evictions.Add(1)
	t.detach(victim)
	return true
}

// sweepStep forgets the idle keys of one shard, at most once per sweepEvery: the whole
// table every keyShards × sweepEvery while new keys come (a scrape of the key metrics
// sweeps it all). Keys in their open period stay.
func (t *keyTable) sweepStep(now int64) {
	next := t.nextSweep.Load()
	if now < next || !t.nextSweep.CompareAndSwap(next, now+int64(sweepEvery)) {
		return
	}
	t.sweep(&t.shards[t.sweepShard.Add(1)&(keyShards-1)], now)
}

// sweepAll sweeps every shard.
func (t *keyTable) sweepAll() {
	now := int64(t.clock.Now())
	for i := range t.shards {
		t.sweep(&t.shards[i], now)
	}
}

func (t *keyTable) sweep(sh *keyShard, now int64) {
	cfg := t.cfg.Load()
	var gone []*keyCircuit
	sh.mu.Lock()
	for k, c := range sh.m {
		c.observe(now)
		if now-c.used.Load() < int64(cfg.idle) || c.b.Mode() != breaker.Normal && c.b.Mode() != breaker.MetricsOnly {
			continue
		}
		if c.b.State() == breaker.Open && c.b.Snapshot().OpenRemaining > 0 {
			continue // it stays until its open period ends
		}
		delete(sh.m, k)
		gone = append(gone, c)
	}
	sh.mu.Unlock()
	for _, c := range gone {
		t.count.Add(-1)
		t.detach(c)
	}
}

// sweepEvery is the pause between two sweep steps (one shard each).
const sweepEvery = 250 * time.Millisecond

// admitKey asks the request's key circuit, if it has one, for admission. ok is false
// when the key's circuit rejected the request (tk and err are Allow's).
func (up *upstream) admitKey(r *http.Request, cleaned string) (ka keyAdmission, err error) {
	t := up.keys
	cfg := t.cfg.Load()
	var c *keyCircuit
	if len(cfg.sources) == 1 { // no buffer to clear
		if key, ok := keyPart(cfg.sources[0], r, cleaned); ok && len(key) <= config.MaxKeyLength {
			c = t.lookup(key)
		}
	} else {
		var buf [config.MaxKeyLength]byte
		if key, ok := readKey(cfg.sources, r, cleaned, &buf); ok {
			c = t.lookup(key)
		}
	}
	if c == nil && cfg.defaultKey != "" {
		c = t.lookup(cfg.defaultKey)
	}
	if c == nil {
		return keyAdmission{}, nil
	}
	tk, err := c.b.Allow()
	if err != nil {
		t.rejected.Add(1)
		return keyAdmission{ticket: tk}, err
	}
	return keyAdmission{kc: c, ticket: tk}, nil
}

// release hands back an admission whose request went no further (the upstream's
// circuit rejected it): a trial's slot is freed.
func (ka keyAdmission) release() {
	if ka.kc != nil {
		ka.kc.b.Done(ka.ticket, breaker.Ignored, 0)
	}
}

// reportKey hands the outcome to the request's key circuit, if any.
func (e *exchange) reportKey(o breaker.Outcome, elapsed time.Duration) {
	if e.key.kc != nil {
		e.kreceipt = e.key.kc.b.DonePause(e.key.ticket, o, elapsed, e.pause)
	}
}

// lateKey takes back the key circuit's success (see bodyBroken).
func (e *exchange) lateKey() {
	if e.key.kc != nil {
		e.key.kc.b.LateFailure(e.kreceipt)
	}
}

// keyTables carries the key tables from the old routing table into a new one, creating
// and configuring them; it returns the tables no longer used.
func (p *Proxy) keyTables(t, old *table, cfg *config.Config) (gone []*keyTable) {
	for name, up := range t.upstreams {
		cu := cfg.Upstreams[name]
		if !cu.Keyed.Enabled() || up.breaker == nil {
			continue
		}
		var kt *keyTable
		if old != nil {
			if ou := old.upstreams[name]; ou != nil {
				kt = ou.keys
			}
		}
		if kt == nil {
			kt = newKeyTable(name, &p.keyOpts)
		}
		kt.configure(cu)
		up.keys = kt
	}
	if old != nil {
		for name, ou := range old.upstreams {
			if ou.keys != nil && (t.upstreams[name] == nil || t.upstreams[name].keys != ou.keys) {
				gone = append(gone, ou.keys)
			}
		}
	}
	return gone
}

// KeyStats is one upstream's keys, for metrics and the admin API.
type KeyStats struct {
	Upstream  string `json:"upstream"`
	Tracked   int    `json:"tracked"`
	Open      int    `json:"open"` // open, half-open or forced open
	MaxKeys   int    `json:"max_keys"`
	Evictions uint64 `json:"evictions"` // keys evicted to make room for new ones
	Overflow  uint64 `json:"overflow"`  // new keys sent to the default: the table was full
	Rejected  uint64 `json:"rejected"`  // requests the keys' circuits rejected
}

// KeyInfo is one key's circuit, for the admin API.
type KeyInfo struct {
	Key      string            `json:"key"`
	Name     string            `json:"name"` // the circuit's name, UPSTREAM#KEY
	Snapshot breaker.Snapshot  `json:"-"`
	Breaker  *breaker.Breaker  `json:"-"`
	Extra    map[string]string `json:"-"`
}

// KeyStats returns every keyed upstream's aggregates, by upstream name.
func (p *Proxy) KeyStats() []KeyStats {
	var out []KeyStats
	for _, up := range p.table.Load().upstreams {
		t := up.keys
		if t == nil {
			continue
		}
		t.sweepAll()
		st := KeyStats{Upstream: up.name, MaxKeys: int(t.cfg.Load().maxKeys), Evictions: t.evictions.Load(),
			Overflow: t.overflow.Load(), Rejected: t.rejected.Load()}
		t.each(func(c *keyCircuit) {
			st.Tracked++
			if !c.b.Passing() {
				st.Open++
			}
		})
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Upstream < out[j].Upstream })
	return out
}

// Keys returns up to limit of an upstream's keys whose circuit is not passing (open,
// half-open, forced open), the longest open first, and whether the upstream has keys.
func (p *Proxy) Keys(upstream string, limit int) ([]KeyInfo, bool) {
	up := p.table.Load().upstreams[upstream]
	if up == nil || up.keys == nil {
		return nil, false
	}
	var out []KeyInfo
	up.keys.each(func(c *keyCircuit) {
		if !c.b.Passing() {
			out = append(out, KeyInfo{Key: c.key, Name: c.name, Breaker: c.b})
		}
	})
	for i := range out {
		out[i].Snapshot = out[i].Breaker.Snapshot()
	}
	sort.Slice(out, func(i, j int) bool {
		if a, b := out[i].Snapshot.OpenedAgo, out[j].Snapshot.OpenedAgo; a != b {
			return a > b
		}
		return out[i].Key < out[j].Key
	})
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out, true
}

// Key returns one key's circuit (creating none); ok is false when the upstream has no
// such key on this replica.
func (p *Proxy) Key(upstream, key string) (*breaker.Breaker, bool) {
	up := p.table.Load().upstreams[upstream]
	if up == nil || up.keys == nil {
		return nil, false
	}
	t := up.keys
	sh := &t.shards[maphash.String(t.seed, key)&(keyShards-1)]
	sh.mu.RLock()
	c := sh.m[key]
	sh.mu.RUnlock()
	if c == nil {
		return nil, false
	}
	return c.b, true
}

// Keyed reports whether the upstream has per-key breakers in the routing table in
// effect.
func (p *Proxy) Keyed(upstream string) bool {
	up := p.table.Load().upstreams[upstream]
	return up != nil && up.keys != nil
}
