-- Livery admission: checks and charges a tenant's and its reseller's limits,
-- all or nothing, in one round trip. Mirrors src/limits/local.rs exactly.
--
-- KEYS: 1 tenant buckets (hash), 2 tenant slots (zset), 3 tenant month (counter),
--       4 reseller buckets,      5 reseller slots,      6 reseller month,
--       7 reservation (the estimate, for the idempotent settle)
-- ARGV: 1 window_ms, 2 estimate, 3 admission id, 4 lease_ms,
--       5 reservation_ttl_ms (0: no token limit, nothing to settle), 6 month_ttl_s,
--       7..11  tenant:   requests cap, tokens cap, max concurrent, month quota, month seed
--       12..16 reseller: the same (0: no such limit)
-- Returns one string of space-separated fields: admitted (1/0), failed check (0 none, 1 month, 2 requests,
-- 3 tokens, 4 concurrency), failed level (1 tenant, 2 reseller), wait ms,
-- then per level: requests level, requests reset ms, tokens level,
-- tokens reset ms, month used.
--
-- Cost: Redis spends about 10k instructions on each redis.call and glibc's
-- exact "%.17g" formatting and parsing of a fractional number costs several
-- thousand, so the script makes as few calls as the limits need and formats
-- integral values as integers (benches/README.md, "Redis admission").
-- Needs Redis 6.2 or later (scripts replicate their effects by default).
local call, fmt, floor, ceil, max, min, insert, tonumber, tostring, unpack =
  redis.call, string.format, math.floor, math.ceil, math.max, math.min, table.insert, tonumber, tostring, unpack
local t = call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local window = tonumber(ARGV[1])
local est = tonumber(ARGV[2])
local id = ARGV[3]
local lease = tonumber(ARGV[4])
local month_ttl = tonumber(ARGV[6])

local function refill(level, at, cap)
  level = tonumber(level)
  at = tonumber(at)
  if level == nil or at == nil then return cap end
  if now > at then level = level + (now - at) * cap / window end
  return min(level, cap)
end

local function wait(need, level, cap)
  return ceil(max(need - level, 0) * window / cap)
end

-- Integral values print as integers ('%d' is a fraction of the cost of '%.17g').
local function num(x)
  if x == floor(x) and x > -2^53 and x < 2^53 then return fmt('%d', x) end
  return fmt('%.17g', x)
end
local now_s = num(now)

local levels = {}
for i = 1, 2 do
  local k, a = (i - 1) * 3, 7 + (i - 1) * 5
  local L = {
    hash = KEYS[k + 1], slots = KEYS[k + 2], month = KEYS[k + 3],
    rpm = tonumber(ARGV[a]), tpm = tonumber(ARGV[a + 1]), conc = tonumber(ARGV[a + 2]),
    quota = tonumber(ARGV[a + 3]), seed = tonumber(ARGV[a + 4]),
    rq = 0, tq = 0, inflight = 0, used = 0,
  }
  if L.rpm > 0 or L.tpm > 0 then
    local f = call('HMGET', L.hash, 'rq', 'rt', 'tq', 'tt')
    if L.rpm > 0 then L.rq = refill(f[1], f[2], L.rpm) end
    if L.tpm > 0 then L.tq = refill(f[3], f[4], L.tpm) end
  end
  if L.conc > 0 then
    -- Live slots only (leases not yet expired); renew.lua trims the expired.
    L.inflight = call('ZCOUNT', L.slots, '(' .. now_s, '+inf')
  end
  if L.quota > 0 then
    local stored = call('GET', L.month)
    L.used = tonumber(stored or '0')
    if L.seed > L.used then
      call('SET', L.month, L.seed, 'EX', month_ttl)
      L.used = L.seed
    elseif not stored then
      -- INCRBY below creates the counter: it needs its expiry then.
      L.fresh_month = true
    end
  end
  levels[i] = L
end

local failed, failed_level, wait_ms = 0, 0, 0
for check = 1, 4 do
  for i = 1, 2 do
    local L = levels[i]
    if failed == 0 then
      if check == 1 and L.quota > 0 and L.used >= L.quota then
        failed, failed_level = 1, i
      elseif check == 2 and L.rpm > 0 and L.rq < 1 then
        failed, failed_level, wait_ms = 2, i, wait(1, L.rq, L.rpm)
      elseif check == 3 and L.tpm > 0 and L.tq < min(est, L.tpm) then
        failed, failed_level, wait_ms = 3, i, wait(min(est, L.tpm), L.tq, L.tpm)
      elseif check == 4 and L.conc > 0 and L.inflight >= L.conc then
        failed, failed_level, wait_ms = 4, i, 1000
      end
    end
  end
end

if failed == 0 then
  for i = 1, 2 do
    local L = levels[i]
    local fields, ttl = {}, 0
    if L.rpm > 0 then
      L.rq = L.rq - 1
      ttl = max(ttl, wait(L.rpm, L.rq, L.rpm))
      insert(fields, 'rq'); insert(fields, num(L.rq))
      insert(fields, 'rt'); insert(fields, now_s)
    end
    if L.tpm > 0 then
      L.tq = L.tq - est
      ttl = max(ttl, wait(L.tpm, L.tq, L.tpm))
      insert(fields, 'tq'); insert(fields, num(L.tq))
      insert(fields, 'tt'); insert(fields, now_s)
    end
    if #fields > 0 then
      call('HSET', L.hash, unpack(fields))
      call('PEXPIRE', L.hash, ttl + 1000)
    end
    if L.conc > 0 then
      call('ZADD', L.slots, now + lease, id)
      call('PEXPIRE', L.slots, lease * 2)
    end
    if L.quota > 0 then
      L.used = call('INCRBY', L.month, est)
      if L.fresh_month then call('EXPIRE', L.month, month_ttl) end
    end
  end
  if est > 0 and tonumber(ARGV[5]) > 0 then
    call('SET', KEYS[7], est, 'PX', tonumber(ARGV[5]))
  end
end

local out = { failed == 0 and '1' or '0', tostring(failed), tostring(failed_level), num(wait_ms) }
for i = 1, 2 do
  local L = levels[i]
  insert(out, num(L.rq))
  insert(out, num(L.rpm > 0 and wait(L.rpm, L.rq, L.rpm) or 0))
  insert(out, num(L.tq))
  insert(out, num(L.tpm > 0 and wait(L.tpm, L.tq, L.tpm) or 0))
  insert(out, tostring(L.used))
end
return table.concat(out, ' ')
