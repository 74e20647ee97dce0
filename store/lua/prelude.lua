-- prelude.lua is prepended to every fuseproxy script. One circuit's shared state is one
-- hash (KEYS[1], "<prefix>:{<upstream>}:state") plus a sorted set of trial leases
-- (KEYS[2], "<prefix>:{<upstream>}:leases"), both in the upstream's hash slot.
--
-- Hash fields: st state (0 closed, 1 open, 2 half-open), md mode (0 normal, 1 forced_open,
-- 2 forced_closed, 3 metrics_only), gen generation, ou open-until (Redis ms), of open
-- period (ms), tr trips since the last recovery (kept across a close with trip decay),
-- cf fleet-wide consecutive failures, gf fleet-wide consecutive gateway failures,
-- sc successful trials this half-open period, at time of the last transition (Redis ms;
-- while closed, the close time that trip decay measures from),
-- fo failure onset (Redis ms when a failure or slow call first reached a window that had
-- none: the rate rules wait one grace period after it), rs its reason, ep the epoch (Redis ms when this hash was created: a new epoch means the
-- state was lost or replaced, and replicas adopt it whatever its generation), cfg/cfgr settings hash and the replica that wrote it,
-- "b:<k>" window bucket k as "requests failures slow", "r:<replica>" last failure report
-- (Redis ms) of each replica, for the quorum rule.
--
-- Settings travel as one comma-separated ARGV: consecutive, failure rate %, slow rate %,
-- minimum requests, window ms, buckets, open ms, backoff multiplier, max open ms, jitter,
-- half-open max, success threshold, min replicas reporting, initial mode, consecutive
-- gateway failures, linear backoff (0/1), trip decay ms. The last three were appended for
-- per-target ejection: a string without them (an older replica's) reads as 0, which is the
-- older scripts' behaviour, so the encoding needs no version mark. Two more follow for the
-- transition history: retention ms and max entries (0: no history; see record).
--
-- These scripts are the state machine of breaker.Breaker written again for a fleet. Both
-- are held to one table of (state, event) -> (state, reason) rows, breaker/conformance:
-- change a rule here and there together, and add its row.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function settings(arg)
  local v = {}
  for x in string.gmatch(arg, '[^,]+') do v[#v + 1] = tonumber(x) end
  return { cf = v[1], fr = v[2], sr = v[3], minreq = v[4], win = v[5], buckets = v[6],
    open = v[7], mult = v[8], maxopen = v[9], jitter = v[10], hmax = v[11],
    sthresh = v[12], minrep = v[13], mode = v[14], cg = v[15] or 0, linear = v[16] or 0,
    decay = v[17] or 0, hret = v[18] or 0, hlen = v[19] or 0 }
end

-- hist is where transitions are recorded (see record): the stream "<prefix>:{<upstream>}:
-- history", in the circuit's hash slot (keyed.lua points a key's circuit at its
-- upstream's stream, with member = the key).
local hist = { key = string.sub(KEYS[1], 1, -7) .. ':history', member = '' }

local core = { 'st', 'md', 'gen', 'ou', 'of', 'tr', 'cf', 'gf', 'sc', 'at', 'ep', 'fo' }
local known = { rs = true, cfg = true, cfgr = true }
for _, f in ipairs(core) do known[f] = true end

-- count reads a number as save writes it: decimal digits only, at most 15 of them, so
-- below 2^53 and exact. Anything else (a sign, a fraction, an exponent, hex, inf, more
-- digits than a replica can hold) is nil: Redis turns a Lua number beyond 2^63 into
-- garbage in a reply, which no replica could decode.
local function count(v)
  if #v <= 15 and string.match(v, '^%d+$') then return tonumber(v) end
  return nil
end

-- max_ms is the longest time in ms a replica decodes in a reply (store/codec.go's
-- maxMillis): an open period (of) or its rest (ou - now) beyond it is corrupt.
local max_ms = 9223372036854

-- shown quotes a stored value for a corrupt reason, cut short.
local function shown(v)
  if #v > 40 then return string.format('%q', string.sub(v, 1, 40)) .. '...' end
  return string.format('%q', v)
end

-- load reads the hash. A key of another type (the leases key too), or a field that does
-- not parse, is reported (corrupt = reason) and replaced by a fresh closed state: never
-- an error, never a crash. Fields no script writes are dropped.
local function load(key, s, now)
  local st = { st = 0, md = s.mode, gen = 0, ou = 0, of = 0, tr = 0, cf = 0, gf = 0, sc = 0, at = 0, ep = now, fo = 0,
    b = {}, r = {}, del = {}, new = true, dirty = false, corrupt = false, cfg = '', cfgr = '', s = s }
  local lt = redis.call('TYPE', KEYS[2]).ok
  if lt ~= 'none' and lt ~= 'zset' then
    redis.call('DEL', key, KEYS[2])
    st.corrupt, st.dirty, st.changed, st.rs = 'leases key is a ' .. lt, true, true, 'corrupt'
    return st
  end
  local ok, raw = pcall(redis.call, 'HGETALL', key)
  if not ok then
    redis.call('DEL', key)
    st.corrupt, st.dirty, st.changed, st.rs = 'not a hash', true, true, 'corrupt'
    return st
  end
  local h = {}
  for i = 1, #raw, 2 do
    local f, v = raw[i], raw[i + 1]
    local p = string.sub(f, 1, 2)
    if p == 'b:' then
      local k = tonumber(string.sub(f, 3))
      local a, b, c = string.match(v, '^(%d+) (%d+) (%d+)$')
      if k and a and count(a) and count(b) and count(c) then
        st.b[k] = { tonumber(a), tonumber(b), tonumber(c) }
      else
        st.del[#st.del + 1] = f
        st.dirty = true
      end
    elseif p == 'r:' then
      st.r[string.sub(f, 3)] = count(v) or 0
    elseif known[f] then
      h[f] = v
    else
      st.del[#st.del + 1] = f
      st.dirty = true
    end
  end
  st.new = #raw == 0
  for _, f in ipairs(core) do
    if h[f] ~= nil then
      local n = count(h[f])
      if n == nil then
        st.corrupt = 'field ' .. f .. ' is ' .. shown(h[f])
      else
        st[f] = n
      end
    end
  end
  if not st.corrupt and (st.st > 2 or st.md > 3) then
    st.corrupt = 'state or mode out of range'
  end
  if not st.corrupt and h.rs ~= nil and (#h.rs > 64 or not string.match(h.rs, '^[%w_]+$')) then
    st.corrupt = 'field rs is ' .. shown(h.rs)
  end
  -- a time no replica could decode in a reply (store/codec.go's maxMillis, a
  -- time.Duration in ms) fails every exchange that reads it: corrupt too
  if not st.corrupt and st.of > max_ms then
    st.corrupt = 'field of is ' .. shown(h.of)
  end
  if not st.corrupt and st.ou - now > max_ms then
    st.corrupt = 'field ou is ' .. shown(h.ou)
  end
  st.cfg, st.cfgr, st.rs = h.cfg or '', h.cfgr or '', h.rs
  if st.corrupt then
    redis.call('DEL', key)
    -- a fresh closed state in a newer generation, published so every replica adopts it
    return { st = 0, md = s.mode, gen = st.gen + 1, ou = 0, of = 0, tr = 0, cf = 0, gf = 0, sc = 0,
      at = 0, ep = now, fo = 0, b = {}, r = {}, del = {}, new = true, dirty = true, changed = true,
      rs = 'corrupt', corrupt = st.corrupt, cfg = '', cfgr = '', s = s }
  end
  -- times ahead of the clock (a failover to a clock behind, a foreign value) suspend
  -- nothing by as much as they are ahead: a failure onset or a change is at most now,
  -- and an open period has at most its whole length left
  if st.fo > now then st.fo, st.dirty = now, true end
  if st.at > now then st.at, st.dirty = now, true end
  if st.st == 1 and st.ou - now > st.of then st.ou, st.dirty = now + st.of, true end
  return st
end

local function bucket_width(s) return math.max(1, math.floor(s.win / s.buckets)) end

-- window sums the live buckets and marks stale ones for deletion.
local function window(st, s, now)
  local k = math.floor(now / bucket_width(s))
  local r, f, sl = 0, 0, 0
  for idx, c in pairs(st.b) do
    if idx > k - s.buckets and idx <= k then
      r, f, sl = r + c[1], f + c[2], sl + c[3]
    else
      st.b[idx] = nil
      st.del[#st.del + 1] = 'b:' .. idx
      st.dirty = true
    end
  end
  return r, f, sl
end

local function reporters(st, s, now)
  local n = 0
  for id, t in pairs(st.r) do
    -- a report more than a window ahead of the clock (a foreign value, or one stamped
    -- before a failover to a clock behind) is no live reporter: it would count until the
    -- clock caught up with it
    if t > now - s.win and t <= now + s.win then
      n = n + 1
    else
      st.r[id] = nil
      st.del[#st.del + 1] = 'r:' .. id
      st.dirty = true
    end
  end
  return n
end

local function clear_counts(st)
  for idx in pairs(st.b) do st.del[#st.del + 1] = 'b:' .. idx end
  for id in pairs(st.r) do st.del[#st.del + 1] = 'r:' .. id end
  st.b, st.r, st.cf, st.gf, st.sc, st.fo = {}, {}, 0, 0, 0, 0
end

-- quiet reports a closed circuit with nothing bad in its window: no failure or slow call,
-- no run of consecutive failures. Replicas hold the successes of a quiet circuit (they
-- change no decision) and report them once per window, or at once when it stops being
-- quiet. It prunes stale buckets, as window does.
local function quiet(st, s, now)
  local _, f, sl = window(st, s, now)
  return st.st == 0 and st.cf == 0 and st.gf == 0 and f + sl == 0
end

-- transition moves to state `to` in a new generation. The leases go with the old one,
-- except when an open period ends: the leases held then were granted in advance for the
-- half-open period that follows (see acquire.lua), which they count against.
local function transition(st, to, reason, now, leasekey)
  local keep = st.st == 1 and to == 2
  if st.s and st.s.hret > 0 and st.s.hlen > 0 then
    -- the record of the transition, appended by save (the window before it is cleared)
    local r, f, sl = window(st, st.s, now)
    st.hist = st.hist or {}
    st.hist[#st.hist + 1] = { st.st, to, reason, r, f, sl, st.cf, st.gen + 1 }
  end
  st.st, st.gen, st.at, st.rs = to, st.gen + 1, now, reason
  st.changed, st.dirty = true, true
  clear_counts(st)
  if not keep then redis.call('DEL', leasekey) end
end

-- timeout moves an open circuit whose period ended to half-open (normal and metrics-only
-- modes). Every script that takes trial permits or outcomes calls it first: a replica
-- holding a permit granted in advance starts the half-open period itself, and its
-- trial's outcome may be the first the store hears of it.
local function timeout(st, now, leasekey)
  if (st.md == 0 or st.md == 3) and st.st == 1 and now >= st.ou then
    st.sc = 0
    transition(st, 2, 'open_timeout', now, leasekey)
  end
end

-- trip opens the circuit for one more trip's period: breaker.Settings.OpenPeriod plus
-- jitter (rnd in [0,1) from the caller). With trip decay, a trip from closed first takes
-- back one trip for each full decay period since the close (at), as breaker.openLocked.
local function trip(st, s, now, reason, rnd, leasekey)
  if st.st == 0 and s.decay > 0 then
    st.tr = math.max(st.tr - math.floor(math.max(now - st.at, 0) / s.decay), 0)
  end
  st.tr = st.tr + 1
  local d
  if s.linear == 1 then
    d = s.open * st.tr
  else
    d = s.open * (s.mult ^ (st.tr - 1))
  end
  if s.maxopen > 0 and d > s.maxopen then d = s.maxopen end
  if d > 4611686018427 then d = 4611686018427 end -- breaker.Settings.OpenPeriod's cap, in ms
  if s.jitter > 0 then d = d + d * s.jitter * (2 * rnd - 1) end
  d = math.floor(d)
  st.ou, st.of = now + d, d
  transition(st, 1, reason, now, leasekey)
end

-- pause_trip opens the circuit for a pause an upstream asked for (Retry-After), as
-- breaker.pauseLocked: capped at the max open duration, jittered, the trip count
-- unchanged.
local function pause_trip(st, s, now, pause, rnd, leasekey)
  local d = pause
  if s.maxopen > 0 and d > s.maxopen then d = s.maxopen end
  if s.jitter > 0 then d = d + d * s.jitter * (2 * rnd - 1) end
  d = math.floor(d)
  st.ou, st.of = now + d, d
  transition(st, 1, 'retry_after', now, leasekey)
end

-- close closes the circuit; the trip count starts over unless trip decay keeps it (an
-- operator's reset clears it before calling close).
local function close(st, s, reason, now, leasekey)
  if s.decay == 0 then st.tr = 0 end
  st.ou, st.of = 0, 0
  transition(st, 0, reason, now, leasekey)
end

-- trip_reason evaluates the rules in the same order as breaker.tripReasonLocked, then the
-- quorum: a trip needs failures reported by at least minrep distinct replicas. The rate
-- rules wait grace ms after the failure onset, so that the successes other replicas held
-- while the circuit was quiet (they are told of the onset) are in the window first.
local function trip_reason(st, s, now, grace)
  local reason = nil
  if s.cg > 0 and st.gf >= s.cg then reason = 'consecutive_gateway_failures' end
  if not reason and s.cf > 0 and st.cf >= s.cf then reason = 'consecutive_failures' end
  if not reason and (s.fr > 0 or s.sr > 0) and now >= st.fo + grace then
    local r, f, sl = window(st, s, now)
    if r > 0 and r >= s.minreq then
      if s.fr > 0 and f * 100 >= s.fr * r then
        reason = 'failure_rate'
      elseif s.sr > 0 and sl * 100 >= s.sr * r then
        reason = 'slow_call_rate'
      end
    end
  end
  if reason and s.minrep > 1 and reporters(st, s, now) < s.minrep then return nil end
  return reason
end

local function fmt(n) return string.format('%d', n) end

-- timing is the time field of replies and messages: while open, how long the open period
-- still runs; while closed, how long ago the circuit closed (at), which trip decay
-- measures; 0 while half-open. (Replicas before trip decay read it only while open.)
local function timing(st, now)
  if st.st == 1 then return math.max(st.ou - now, 0) end
  if st.st == 0 then return math.max(now - st.at, 0) end
  return 0
end

local names = { [0] = 'closed', [1] = 'open', [2] = 'half_open' }

-- record appends the transitions this script made (transition) to the circuit's history
-- stream, in the script that makes them: each fleet transition is recorded once. Fields:
-- k the key (per-key circuits), f/t from/to, rs reason, rq/fl/sl the window's requests,
-- failures and slow calls at the transition, cf consecutive failures, g the generation
-- after it, rp the replica whose call made it ("" for open_timeout: Redis's clock ended
-- the period), at Redis ms. Capped exactly (transitions are rare): at most hlen entries,
-- none older than hret ms, and the stream expires hret ms after its last entry.
local function record(st, now, replica)
  if not st.hist then return end
  for _, h in ipairs(st.hist) do
    local rp = replica
    if h[3] == 'open_timeout' then rp = '' end
    redis.call('XADD', hist.key, 'MAXLEN', fmt(st.s.hlen), '*', 'k', hist.member,
      'f', names[h[1]], 't', names[h[2]], 'rs', h[3], 'rq', fmt(h[4]), 'fl', fmt(h[5]),
      'sl', fmt(h[6]), 'cf', fmt(h[7]), 'g', fmt(h[8]), 'rp', rp or '', 'at', fmt(now))
  end
  redis.call('XTRIM', hist.key, 'MINID', fmt(math.max(now - st.s.hret, 0)))
  redis.call('PEXPIRE', hist.key, st.s.hret)
end

-- save writes what changed, refreshes the expiry and publishes a transition. The hash
-- lives as long as its open period plus a day: an idle closed circuit needs no key (with
-- trip decay, a trip count kept by an idle closed circuit has decayed to 0 by then
-- unless trips x decay exceeds a day: the expiry then clears it early).
local function save(key, st, s, now, channel, name, cfg, replica)
  if cfg ~= '' and st.cfg ~= cfg then
    st.dirty = true
  end
  if not st.dirty and not st.new then return end
  for i = 1, #st.del, 1000 do -- unpack has a limit: a hash of foreign fields can be large
    redis.call('HDEL', key, unpack(st.del, i, math.min(i + 999, #st.del)))
  end
  local args = { 'st', fmt(st.st), 'md', fmt(st.md), 'gen', fmt(st.gen), 'ou', fmt(st.ou),
    'of', fmt(st.of), 'tr', fmt(st.tr), 'cf', fmt(st.cf), 'gf', fmt(st.gf), 'sc', fmt(st.sc), 'at', fmt(st.at), 'ep', fmt(st.ep),
    'fo', fmt(st.fo) }
  if st.rs then args[#args + 1] = 'rs'; args[#args + 1] = st.rs end
  if cfg ~= '' then
    args[#args + 1] = 'cfg'; args[#args + 1] = cfg
    args[#args + 1] = 'cfgr'; args[#args + 1] = replica
  end
  for idx, c in pairs(st.b) do
    args[#args + 1] = 'b:' .. idx
    args[#args + 1] = fmt(c[1]) .. ' ' .. fmt(c[2]) .. ' ' .. fmt(c[3])
  end
  for id, t in pairs(st.r) do
    args[#args + 1] = 'r:' .. id; args[#args + 1] = fmt(t)
  end
  redis.call('HSET', key, unpack(args))
  redis.call('PEXPIRE', key, math.max(st.ou - now, 0) + 86400000)
  record(st, now, replica)
  if st.changed then
    redis.call('PUBLISH', channel, table.concat({ name, fmt(st.st), fmt(st.md), fmt(st.gen),
      fmt(timing(st, now)), fmt(st.of), fmt(st.tr), fmt(now), fmt(st.ep), st.rs or '' }, ' '))
  end
end

-- reply is what every script returns: the state as the caller must apply it, and how
-- busy the circuit is: 1 quiet, 0 not, 2 not and the rate rules wait for the grace after
-- the failure onset (st.grace, set by flush) to end (the caller polls again soon). It
-- runs after save: what quiet prunes is not written.
local function reply(st, s, now, granted, prevcfg, prevcfgr)
  local q = 0
  if quiet(st, s, now) then
    q = 1
  elseif st.st == 0 and st.grace and now < st.fo + st.grace then
    q = 2
  end
  return { st.st, st.md, st.gen, timing(st, now), st.of, st.tr, now, granted or 0,
    prevcfg or '', prevcfgr or '', st.corrupt or '', st.ep, st.rs or '', q }
end
