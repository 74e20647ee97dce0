-- flush adds one replica's closed-state counts to the shared window, evaluates the trip
-- rules on Redis's clock, and returns the state: the flush reply is also the poll.
-- A flush that brings the first failure or slow call to a quiet window (see quiet) marks
-- the onset and publishes the circuit's name on the onset channel: replicas holding the
-- circuit's successes send them at once, and the rate rules wait grace ms for them.
-- ARGV: replica, generation of the counts, requests, failures, slow, tail (failures after
-- the batch's last success), had_success (0/1), settings, settings hash, rnd, channel, name,
-- onset channel, grace ms, gateway tail (gateway failures after the batch's last other
-- outcome), gateway_ended (0/1: the batch had another outcome, which ends the fleet's run
-- of gateway failures before the gateway tail is added), pause ms (the longest pause an
-- upstream asked for in the batch, Retry-After: it opens the circuit for that long),
-- half-open (0/1: the replica's breaker moved itself to half-open on a permit granted in
-- advance, see acquire.lua; the open period, if it ended here too, ends for the fleet),
-- refresh (0/1: make sure the key lives 14 hours more, writing the state even unchanged
-- when it would not, which renews its expiry: the replica holds a busy quiet circuit's
-- successes and sends nothing for it for 12 hours or so).
local s = settings(ARGV[8])
local now = now_ms()
local st = load(KEYS[1], s, now)
if ARGV[18] == '1' then timeout(st, now, KEYS[2]) end
local prevcfg, prevcfgr = st.cfg, st.cfgr
local replica, gen, req = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local fail, slow, tail = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
st.grace = tonumber(ARGV[14])
if req > 0 and gen == st.gen and st.st == 0 then
  local wasquiet = quiet(st, s, now)
  local k = math.floor(now / bucket_width(s))
  local c = st.b[k] or { 0, 0, 0 }
  st.b[k] = { c[1] + req, c[2] + fail, c[3] + slow }
  if ARGV[7] == '1' then st.cf = tail else st.cf = st.cf + tail end
  local gtail = tonumber(ARGV[15]) or 0
  if ARGV[16] == '1' then st.gf = gtail else st.gf = st.gf + gtail end
  if fail > 0 then st.r[replica] = now end
  if wasquiet and fail + slow > 0 then
    st.fo = now
    redis.call('PUBLISH', ARGV[13], ARGV[12])
  end
  st.dirty = true
  -- prune stale buckets and failure reports whatever rules and mode are in force:
  -- trip_reason only looks at what its rules need, and the hash must not grow
  window(st, s, now)
  reporters(st, s, now)
end
local pause = tonumber(ARGV[17]) or 0
if pause > 0 and gen == st.gen and st.st == 0 and (st.md == 0 or st.md == 3) then
  pause_trip(st, s, now, pause, tonumber(ARGV[10]), KEYS[2])
end
-- a poll decides too: the rate rules may have been waiting for the grace to end
if st.st == 0 and (st.md == 0 or st.md == 3) then
  local reason = trip_reason(st, s, now, st.grace)
  if reason then trip(st, s, now, reason, tonumber(ARGV[10]), KEYS[2]) end
end
if ARGV[19] == '1' and redis.call('PTTL', KEYS[1]) < 50400000 then st.dirty = true end
save(KEYS[1], st, s, now, ARGV[11], ARGV[12], ARGV[9], replica)
return reply(st, s, now, 0, prevcfg, prevcfgr)
