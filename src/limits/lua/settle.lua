-- Livery settle: corrects an admission's estimate with the real usage, once.
-- The reservation written by admit.lua holds the estimate; the first settle
-- takes it (GETDEL), so a repeated settle changes nothing. Needs Redis 6.2.
--
-- KEYS: 1 tenant buckets, 2 tenant month, 3 reseller buckets, 4 reseller month,
--       5 reservation, 6.. the admission's slot sets to release (optional)
-- ARGV: 1 real tokens, 2 window_ms, 3 tenant tokens cap, 4 reseller tokens cap,
--       5 tenant has a month quota (1/0), 6 reseller has a month quota (1/0),
--       7 month_ttl_s, 8 the admission id (with KEYS 6..)
local call, fmt, tonumber = redis.call, string.format, tonumber
-- The release first: it does not depend on the reservation.
for k = 6, #KEYS do call('ZREM', KEYS[k], ARGV[8]) end
local est = call('GETDEL', KEYS[5])
if not est then return 0 end
local diff = tonumber(ARGV[1]) - tonumber(est)
if diff == 0 then return 1 end
local t = call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local window = tonumber(ARGV[2])
for i = 1, 2 do
  local hash, month = KEYS[(i - 1) * 2 + 1], KEYS[(i - 1) * 2 + 2]
  local cap = tonumber(ARGV[2 + i])
  if cap > 0 then
    local f = call('HMGET', hash, 'tq', 'tt')
    local level, at = tonumber(f[1]), tonumber(f[2])
    if level == nil or at == nil then
      level = cap
    elseif now > at then
      level = math.min(cap, level + (now - at) * cap / window)
    end
    level = math.min(cap, level - diff)
    call('HSET', hash, 'tq', fmt('%.17g', level), 'tt', fmt('%.17g', now))
    local need = math.ceil(math.max(cap - level, 0) * window / cap) + 1000
    if call('PTTL', hash) < need then call('PEXPIRE', hash, need) end
  end
  if ARGV[4 + i] == '1' then
    -- Admission charged the estimate to this counter, so it exists unless it
    -- expired or Redis lost it meanwhile: only then (the result is `diff`
    -- itself) is the expiry checked, and a counter created here gets one.
    local used = call('INCRBY', month, diff)
    if used < 0 then call('SET', month, 0, 'KEEPTTL') end
    if used == diff and call('TTL', month) == -1 then call('EXPIRE', month, tonumber(ARGV[7])) end
  end
end
return 1
