-- Livery admission: checks and charges a tenant's and its reseller's limits,
-- all or nothing, in one round trip. Mirrors src/limits/local.rs exactly.
--
-- KEYS: 1 tenant buckets (hash), 2 tenant slots (zset), 3 tenant month (hash),
--       4 reseller buckets,      5 reseller slots,      6 reseller month,
--       7 reservation (the estimate and its generation, for the idempotent settle)
-- ARGV: 1 admission id, 2 reservation_ttl_ms (decimal; 0: no token limit,
--       nothing to settle), 3 month_ttl_s (decimal), 4 lease_ms * 2
--       (decimal), 5 the numbers below packed as little-endian
--       doubles ('<' .. 15 'd'): window_ms, lease_ms, the estimate, then per
--       level (tenant, reseller): requests cap, tokens cap, max concurrent,
--       month quota, month seed (0: no such limit); then the reservations'
--       generation length (hold_ms) and the wait told when the month is held.
-- A level's buckets are one hash field `b`: four packed doubles (requests level,
-- its time, tokens level, its time; a time of 0 reads as a full bucket).
-- A level's month is one hash field `q`: four packed doubles (tokens settled,
-- tokens reserved by requests in flight admitted in generation g, those of
-- generation g - 1, g), a generation being floor(now / hold_ms). A reservation
-- holds the month for one to two generations: one older is dropped, so the
-- requests of a gateway that died (whose settles never come) stop holding it.
-- The month key is the month counter's name before 2026-12-07 plus ':q': a
-- month hash created here starts from that counter, if any.
-- Returns 14 packed doubles: admitted (1/0), failed check (0 none, 1 month,
-- 2 requests, 3 tokens, 4 concurrency, 5 month held by reservations), failed
-- level (1 tenant, 2 reseller), wait ms, then per level: requests level,
-- requests reset ms, tokens level, tokens reset ms, month settled.
--
-- Cost: Redis spends about 10k instructions on each redis.call. Lua 5.1 reads
-- a number from a string with glibc's strtod (twice per tonumber) and writes
-- one with sprintf, a thousand or more instructions each, so numbers travel
-- packed (the bundled `struct` library) and decimal arguments are passed
-- through as the client formatted them (benches/README.md, "Redis admission").
-- Needs Redis 6.2 or later (scripts replicate their effects by default).
local call, ceil, floor, max, min, spack, sunpack, tonumber =
  redis.call, math.ceil, math.floor, math.max, math.min, struct.pack, struct.unpack, tonumber
local t = call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local id, reservation_ttl, month_ttl, slots_ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local n = { sunpack('<ddddddddddddddd', ARGV[5]) }
local window, lease, est, held_wait = n[1], n[2], n[3], n[15]
local gen = floor(now / n[14])

local function refill(level, at, cap)
  if at == 0 then return cap end
  if now > at then level = level + (now - at) * cap / window end
  return min(level, cap)
end

local function wait(need, level, cap)
  return ceil(max(need - level, 0) * window / cap)
end

local levels = {}
for i = 1, 2 do
  local k, a = (i - 1) * 3, 4 + (i - 1) * 5
  local L = {
    hash = KEYS[k + 1], slots = KEYS[k + 2], month = KEYS[k + 3],
    rpm = n[a], tpm = n[a + 1], conc = n[a + 2], quota = n[a + 3], seed = n[a + 4],
    rq = 0, tq = 0, inflight = 0, used = 0, held = 0, hp = 0,
  }
  if L.rpm > 0 or L.tpm > 0 then
    local b = call('HGET', L.hash, 'b')
    local rq, rt, tq, tt = 0, 0, 0, 0
    if b and #b == 32 then rq, rt, tq, tt = sunpack('<dddd', b) end
    if L.rpm > 0 then L.rq = refill(rq, rt, L.rpm) end
    if L.tpm > 0 then L.tq = refill(tq, tt, L.tpm) end
  end
  if L.conc > 0 then
    -- Live slots only (leases not yet expired); renew.lua trims the expired.
    L.inflight = call('ZCOUNT', L.slots, '(' .. now, '+inf')
  end
  if L.quota > 0 then
    local q = call('HGET', L.month, 'q')
    local used, held, hp, g = 0, 0, 0, gen
    if q and #q == 32 then
      used, held, hp, g = sunpack('<dddd', q)
      if g ~= gen then
        if g == gen - 1 then hp, held = held, 0 else hp, held = 0, 0 end
        g = gen
      end
    else
      -- The HSET below creates the hash: it needs its expiry then.
      L.fresh_month = true
      used = tonumber(call('GET', string.sub(L.month, 1, -3)) or '0')
    end
    -- Seeds are settled tokens (the ledger's, this instance's view): they
    -- raise what is settled, never what is held.
    L.used, L.held, L.hp, L.g = max(used, L.seed), held, hp, g
  end
  levels[i] = L
end

-- Every refusing bucket is looked at: the answer names the one with the
-- longest wait (the first on a tie) and tells that wait, after which the
-- request can pass. A month used up is final and answered as such.
local failed, failed_level, wait_ms = 0, 0, 0
local function refuse(check, i, w)
  if failed == 0 or (failed ~= 1 and w > wait_ms) then
    failed, failed_level, wait_ms = check, i, w
  end
end
-- The month used up at either level comes first, then a month held by
-- reservations (as src/limits/local.rs orders them).
for _, check in ipairs({ 1, 5, 2, 3, 4 }) do
  for i = 1, 2 do
    local L = levels[i]
    if check == 1 and L.quota > 0 and L.used >= L.quota then
      refuse(1, i, 0)
    elseif check == 5 and L.quota > 0 then
      -- A request reserving more than the month has left needs all of it
      -- (local.rs's `month_need`), so it passes once nothing else holds any;
      -- one reserving nothing (a token count) is never held out.
      local free = L.quota - L.used
      if est > 0 and L.held + L.hp + min(est, free) > free then refuse(5, i, held_wait) end
    elseif check == 2 and L.rpm > 0 and L.rq < 1 then
      refuse(2, i, wait(1, L.rq, L.rpm))
    -- A request that reserves nothing (a token count) needs nothing of a
    -- bucket, even one in debt.
    elseif check == 3 and L.tpm > 0 and est > 0 and L.tq < min(est, L.tpm) then
      refuse(3, i, wait(min(est, L.tpm), L.tq, L.tpm))
    elseif check == 4 and L.conc > 0 and L.inflight >= L.conc then
      refuse(4, i, 1000)
    end
  end
end

if failed == 0 then
  for i = 1, 2 do
    local L = levels[i]
    if L.rpm > 0 or L.tpm > 0 then
      local ttl, rt, tt = 0, 0, 0
      if L.rpm > 0 then
        L.rq, rt = L.rq - 1, now
        ttl = max(ttl, wait(L.rpm, L.rq, L.rpm))
      end
      if L.tpm > 0 then
        L.tq, tt = L.tq - est, now
        ttl = max(ttl, wait(L.tpm, L.tq, L.tpm))
      end
      call('HSET', L.hash, 'b', spack('<dddd', L.rq, rt, L.tq, tt))
      call('PEXPIRE', L.hash, ttl + 1000)
    end
    if L.conc > 0 then
      -- Whole milliseconds: Redis stores an integral score in its compact
      -- encoding as an integer, which ZCOUNT then reads without strtod.
      call('ZADD', L.slots, floor(now) + lease, id)
      call('PEXPIRE', L.slots, slots_ttl)
    end
    if L.quota > 0 then
      call('HSET', L.month, 'q', spack('<dddd', L.used, L.held + est, L.hp, L.g))
      if L.fresh_month then call('EXPIRE', L.month, month_ttl) end
    end
  end
  if est > 0 and reservation_ttl ~= '0' then
    call('SET', KEYS[7], spack('<dd', est, gen), 'PX', reservation_ttl)
  end
end

local T, R = levels[1], levels[2]
local function resets(L)
  return L.rpm > 0 and wait(L.rpm, L.rq, L.rpm) or 0, L.tpm > 0 and wait(L.tpm, L.tq, L.tpm) or 0
end
local t_rr, t_tr = resets(T)
local r_rr, r_tr = resets(R)
return spack('<dddddddddddddd', failed == 0 and 1 or 0, failed, failed_level, wait_ms,
  T.rq, t_rr, T.tq, t_tr, T.used, R.rq, r_rr, R.tq, r_tr, R.used)
