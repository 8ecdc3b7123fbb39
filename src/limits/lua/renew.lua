-- Livery slot lease renewal: keeps an admission's concurrency slots alive
-- while its request runs. A slot whose gateway died is not renewed and
-- expires after one lease. Expired slots are not counted by admit.lua
-- (ZCOUNT of live leases); they are trimmed here, off the admission path.
-- KEYS: the slot sets holding the admission; ARGV: 1 lease_ms, 2 admission id
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local lease = tonumber(ARGV[1])
for _, k in ipairs(KEYS) do
  -- Whole milliseconds, as admit.lua scores slots.
  redis.call('ZADD', k, 'XX', math.floor(now) + lease, ARGV[2])
  redis.call('ZREMRANGEBYSCORE', k, '-inf', now)
  redis.call('PEXPIRE', k, lease * 2)
end
return 1
