-- acquire moves an open circuit whose period ended to half-open, then leases up to `want`
-- trial permits, never more than the half-open maximum fleet-wide. A lease expires after
-- lease_ms, so a replica that dies holding one does not block recovery.
-- With `advance` set, a circuit still open grants its permits in advance, for the
-- half-open period that follows (generation + 1): each lease then lasts until lease_ms
-- after the open period ends, and counts against the half-open maximum of that period
-- (transition keeps the leases when the open period ends). The replica admits its first
-- trial on it the moment the period ends, without a round trip.
-- ARGV: replica, want, lease ms, settings, lease id base, channel, name, advance (0/1).
local s = settings(ARGV[4])
local now = now_ms()
local st = load(KEYS[1], s, now)
local granted = 0
if st.md == 0 or st.md == 3 then
  timeout(st, now, KEYS[2])
  local lease = tonumber(ARGV[3])
  local gen, expires = st.gen, now + lease
  if st.st == 1 and ARGV[8] == '1' then
    gen, expires = st.gen + 1, st.ou + lease
  end
  if st.st == 2 or (st.st == 1 and ARGV[8] == '1' and expires <= now + 86400000) then
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
    -- a lease said to last more than a day was not granted by any replica
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '(' .. fmt(now + 86400000), '+inf')
    local avail = s.hmax - redis.call('ZCARD', KEYS[2])
    granted = math.max(0, math.min(tonumber(ARGV[2]), avail))
    for i = 1, granted do
      redis.call('ZADD', KEYS[2], expires, ARGV[5] .. ':' .. fmt(gen) .. ':' .. i)
    end
    if granted > 0 then redis.call('PEXPIRE', KEYS[2], expires - now + lease) end
  end
end
save(KEYS[1], st, s, now, ARGV[6], ARGV[7], '', ARGV[1])
return reply(st, s, now, granted)
