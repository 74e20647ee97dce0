-- trial reports finished half-open trials at once, fenced by generation: a pause an
-- upstream asked for (Retry-After) opens the circuit for it, a failure opens it again
-- (with the next backoff), enough successes close it.
-- ARGV: replica, generation, successes, failures, settings, rnd, channel, name, pause ms,
-- lease ids... (an id ending in '*' stands for every lease whose id starts with the rest)
local s = settings(ARGV[5])
local now = now_ms()
local st = load(KEYS[1], s, now)
-- a trial on a permit granted in advance may be the first the store hears of the
-- half-open period
timeout(st, now, KEYS[2])
for i = 10, #ARGV do
  local id = ARGV[i]
  if string.sub(id, -1) == '*' then
    -- every lease whose id starts with the rest: those an acquire may have granted when
    -- its reply was lost (the set holds at most the half-open maximum)
    local prefix = string.sub(id, 1, -2)
    for _, m in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
      if string.sub(m, 1, #prefix) == prefix then redis.call('ZREM', KEYS[2], m) end
    end
  else
    redis.call('ZREM', KEYS[2], id)
  end
end
local pause = tonumber(ARGV[9]) or 0
if tonumber(ARGV[2]) == st.gen and st.st == 2 then
  if pause > 0 and (st.md == 0 or st.md == 3) then
    pause_trip(st, s, now, pause, tonumber(ARGV[6]), KEYS[2])
  elseif tonumber(ARGV[4]) > 0 then
    trip(st, s, now, 'trial_failed', tonumber(ARGV[6]), KEYS[2])
  elseif tonumber(ARGV[3]) > 0 then
    st.sc = st.sc + tonumber(ARGV[3])
    st.dirty = true
    if st.sc >= s.sthresh then close(st, s, 'trials_succeeded', now, KEYS[2]) end
  end
end
save(KEYS[1], st, s, now, ARGV[7], ARGV[8], '', ARGV[1])
return reply(st, s, now, 0)
