-- control applies an operator's command fleet-wide: open, close, reset or mode.
-- ARGV: op, mode, settings, rnd, channel, name, replica.
local s = settings(ARGV[3])
local now = now_ms()
local st = load(KEYS[1], s, now)
local op = ARGV[1]
if op == 'open' then
  trip(st, s, now, 'mode', tonumber(ARGV[4]), KEYS[2])
elseif op == 'close' then
  -- on a closed circuit it does nothing, as breaker.Close: the counts stay
  if st.st ~= 0 then close(st, s, 'mode', now, KEYS[2]) end
elseif op == 'reset' then
  st.md, st.tr = 0, 0
  close(st, s, 'reset', now, KEYS[2])
elseif op == 'mode' then
  st.md = tonumber(ARGV[2])
  st.gen, st.changed, st.dirty, st.rs = st.gen + 1, true, true, 'mode'
  -- a new generation starts with empty counts, as breaker.SetMode does: what was
  -- counted while forced closed (or under the old mode) must not trip the new one
  clear_counts(st)
  redis.call('DEL', KEYS[2])
end
save(KEYS[1], st, s, now, ARGV[5], ARGV[6], '', ARGV[7])
return reply(st, s, now, 0)
