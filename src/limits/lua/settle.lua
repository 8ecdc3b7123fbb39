-- Livery settle: corrects an admission's estimate with the real usage, once.
-- The reservation written by admit.lua holds the estimate and its generation;
-- the first settle takes it (GETDEL), so a repeated settle changes nothing.
-- Needs Redis 6.2.
--
-- KEYS: 1 tenant buckets, 2 tenant month, 3 reseller buckets, 4 reseller month,
--       5 reservation, 6.. the admission's slot sets to release (optional)
-- ARGV: 1 month_ttl_s (decimal), 2 packed little-endian doubles ('<' .. 7 'd'):
--       real tokens, window_ms, tenant tokens cap, reseller tokens cap, tenant
--       has a month quota (1/0), reseller has a month quota (1/0), hold_ms;
--       3 the admission id (with KEYS 6..)
-- Buckets are admit.lua's packed hash field `b`, months its field `q`; numbers
-- travel packed for the reason given there.
local call, ceil, floor, max, min, spack, sunpack, tonumber =
  redis.call, math.ceil, math.floor, math.max, math.min, struct.pack, struct.unpack, tonumber
-- The release first: it does not depend on the reservation.
for k = 6, #KEYS do call('ZREM', KEYS[k], ARGV[3]) end
local r = call('GETDEL', KEYS[5])
if not r or #r ~= 16 then return 0 end
local est, rgen = sunpack('<dd', r)
local real, window, tpm_t, tpm_r, quota_t, quota_r, hold = sunpack('<ddddddd', ARGV[2])
local diff = real - est
if diff == 0 and quota_t == 0 and quota_r == 0 then return 1 end
local t = call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local gen = floor(now / hold)
local caps, quotas = { tpm_t, tpm_r }, { quota_t, quota_r }
for i = 1, 2 do
  local hash, month = KEYS[(i - 1) * 2 + 1], KEYS[(i - 1) * 2 + 2]
  local cap = caps[i]
  if cap > 0 and diff ~= 0 then
    local b = call('HGET', hash, 'b')
    local rq, rt, level, at = 0, 0, 0, 0
    if b and #b == 32 then rq, rt, level, at = sunpack('<dddd', b) end
    -- `cap` is the admission's limit: if a reload has raised it since, the
    -- bucket may hold more, which neither the refill nor the refund cuts down
    -- (the next admission clamps to the limit of its time).
    local ceiling = cap
    if at == 0 then
      level = cap
    else
      ceiling = max(cap, level)
      if now > at then level = min(ceiling, level + (now - at) * cap / window) end
    end
    level = min(ceiling, level - diff)
    call('HSET', hash, 'b', spack('<dddd', rq, rt, level, now))
    local need = ceil(max(cap - level, 0) * window / cap) + 1000
    if call('PTTL', hash) < need then call('PEXPIRE', hash, need) end
  end
  if quotas[i] == 1 then
    -- The real tokens are settled, and the estimate no longer held, in the
    -- generation it was reserved in if that is still counted (one dropped
    -- since held nothing any more). Admission created the hash, so it exists
    -- unless it expired or Redis lost it meanwhile: only then is it created
    -- here, with an expiry.
    local q = call('HGET', month, 'q')
    local used, held, hp, g = 0, 0, 0, gen
    local fresh = not (q and #q == 32)
    if not fresh then
      used, held, hp, g = sunpack('<dddd', q)
      if g ~= gen then
        if g == gen - 1 then hp, held = held, 0 else hp, held = 0, 0 end
        g = gen
      end
    end
    if rgen == g then
      held = max(held - est, 0)
    elseif rgen == g - 1 then
      hp = max(hp - est, 0)
    end
    call('HSET', month, 'q', spack('<dddd', used + real, held, hp, g))
    if fresh then call('EXPIRE', month, ARGV[1]) end
  end
end
return 1
