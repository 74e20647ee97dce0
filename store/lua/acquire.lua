-- acquire moves an open circuit whose period ended to half-open, then leases up to `want`
-- trial permits, never more than the half-open maximum fleet-wide. A lease expires after
-- lease_ms, so a replica that dies holding one does not block recovery.
-- ARGV: replica, want, lease ms, settings, lease id base, channel, name.
local s = settings(ARGV[4])
local now = now_ms()
local st = load(KEYS[1], s, now)
local granted = 0
if st.md == 0 or st.md == 3 then
  if st.st == 1 and now >= st.ou then
    st.sc = 0
    transition(st, 2, 'open_timeout', now, KEYS[2])
  end
  if st.st == 2 then
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
    -- a lease said to last more than a day was not granted by any replica
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '(' .. fmt(now + 86400000), '+inf')
    local avail = s.hmax - redis.call('ZCARD', KEYS[2])
    granted = math.max(0, math.min(tonumber(ARGV[2]), avail))
    local lease = tonumber(ARGV[3])
    for i = 1, granted do
      redis.call('ZADD', KEYS[2], now + lease, ARGV[5] .. ':' .. fmt(st.gen) .. ':' .. i)
    end
    if granted > 0 then redis.call('PEXPIRE', KEYS[2], lease * 2) end
  end
end
save(KEYS[1], st, s, now, ARGV[6], ARGV[7], '', ARGV[1])
return reply(st, s, now, granted)
