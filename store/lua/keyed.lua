-- keyed.lua runs between the prelude and a per-key circuit's script (flush, acquire,
-- trial, control) when the circuit is one key's of an upstream with per-key breakers
-- (upstreams.<name>.keyed). The key's hash and leases are "<prefix>:{<upstream>}:key:
-- <key>:state" and ":leases" (KEYS[1], KEYS[2]), in the upstream's hash slot, as is
-- KEYS[3], the upstream's registry of keys: a sorted set of key -> expiry (Redis ms).
--
-- ARGV[1..3] are this chunk's (max keys, idle ttl ms, key) and are taken off, so the
-- script that follows reads its own ARGV as always.
--
-- Bounds: a key not yet registered is refused (the reply is -1, nothing is written)
-- while max keys unexpired keys are registered; the caller's key then decides on its
-- replica alone. Every save sets the key's expiry to the rest of its open period plus
-- the idle ttl, in the key's hash and in the registry: an idle key vanishes, an open
-- key never before its open period ends, and the registry never holds more than max
-- keys (expired members are pruned first).
local kmax, kttl, kmember = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
table.remove(ARGV, 1)
table.remove(ARGV, 1)
table.remove(ARGV, 1)
-- the key's transitions go to its upstream's history stream (prelude.lua, record)
hist.key, hist.member = string.sub(KEYS[3], 1, -6) .. ':history', kmember
do
  local know = now_ms()
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', know)
  if not redis.call('ZSCORE', KEYS[3], kmember) and redis.call('ZCARD', KEYS[3]) >= kmax then
    return -1
  end
end
local base_save = save
save = function(key, st, s, now, channel, name, cfg, replica)
  base_save(key, st, s, now, channel, name, cfg, replica)
  if redis.call('EXISTS', key) == 1 then
    local ttl = math.max(st.ou - now, 0) + kttl
    redis.call('PEXPIRE', key, ttl)
    redis.call('ZADD', KEYS[3], now + ttl, kmember)
    if redis.call('PTTL', KEYS[3]) < ttl then redis.call('PEXPIRE', KEYS[3], ttl) end
  end
end
