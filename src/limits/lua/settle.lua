-- Livery settle: corrects an admission's estimate with the real usage, once.
-- The reservation written by admit.lua holds the estimate; the first settle
-- deletes it, so a repeated settle changes nothing.
--
-- KEYS: 1 tenant buckets, 2 tenant month, 3 reseller buckets, 4 reseller month,
--       5 reservation
-- ARGV: 1 real tokens, 2 window_ms, 3 tenant tokens cap, 4 reseller tokens cap,
--       5 tenant has a month quota (1/0), 6 reseller has a month quota (1/0)
local est = redis.call('GET', KEYS[5])
if not est then return 0 end
redis.call('DEL', KEYS[5])
local diff = tonumber(ARGV[1]) - tonumber(est)
if diff == 0 then return 1 end
pcall(redis.replicate_commands)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local window = tonumber(ARGV[2])
for i = 1, 2 do
  local hash, month = KEYS[(i - 1) * 2 + 1], KEYS[(i - 1) * 2 + 2]
  local cap = tonumber(ARGV[2 + i])
  if cap > 0 then
    local f = redis.call('HMGET', hash, 'tq', 'tt')
    local level, at = tonumber(f[1]), tonumber(f[2])
    if level == nil or at == nil then
      level = cap
    elseif now > at then
      level = math.min(cap, level + (now - at) * cap / window)
    end
    level = math.min(cap, level - diff)
    redis.call('HSET', hash, 'tq', string.format('%.17g', level), 'tt', string.format('%.17g', now))
    local need = math.ceil(math.max(cap - level, 0) * window / cap) + 1000
    if redis.call('PTTL', hash) < need then redis.call('PEXPIRE', hash, need) end
  end
  if ARGV[4 + i] == '1' and redis.call('EXISTS', month) == 1 then
    if redis.call('INCRBY', month, diff) < 0 then redis.call('SET', month, 0, 'KEEPTTL') end
  end
end
return 1
