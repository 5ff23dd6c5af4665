-- Rate-limit decisions, GCRA form of a token bucket: one key per bucket holding the
-- "theoretical arrival time" (TAT), no drip process, and Redis's clock, so gateway clocks
-- do not matter. Several requests of one bucket may be decided in one call, in order, each
-- as if it came alone (the limiter batches concurrent requests: one round trip and one
-- script for all of them).
--
-- A busy caller may also lease tokens ahead: they are taken from the bucket now, like a
-- request's, and the caller spends them on its next requests without asking (see
-- limiter.rs). A lease is granted only while at least twice as many tokens remain, so near
-- an empty bucket every request is decided here, one by one.
-- KEYS[1]  the bucket ("<prefix>:{rl}:b:<tenant>:<group>" or "<prefix>:{rl}:d:<descriptor>")
-- ARGV[1]  emission interval, µs (unit / rate)   ARGV[2]  burst (capacity)
-- ARGV[3]  tokens to lease after the requests (0: none)
-- ARGV[4..] the cost of each request
-- Returns  per request, flat: allowed (0/1), remaining, retry_after µs, reset_after µs
--          (until the bucket is full); then tokens leased, remaining after the lease,
--          reset_after µs after the lease
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local tolerance = interval * burst
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local out = {}
local spent = false
for i = 4, #ARGV do
  local new_tat = tat + interval * tonumber(ARGV[i])
  local allow_at = new_tat - tolerance
  local o = #out
  if allow_at > now then
    out[o + 1] = 0
    out[o + 2] = 0
    out[o + 3] = math.ceil(allow_at - now)
    out[o + 4] = math.ceil(tat - now)
  else
    tat = new_tat
    spent = true
    out[o + 1] = 1
    out[o + 2] = math.floor((tolerance - (new_tat - now)) / interval)
    out[o + 3] = 0
    out[o + 4] = math.ceil(new_tat - now)
  end
end
local lease = tonumber(ARGV[3]) or 0
local leased = 0
if lease > 0 and math.floor((tolerance - (tat - now)) / interval) >= 2 * lease then
  tat = tat + interval * lease
  leased = lease
  spent = true
end
local o = #out
out[o + 1] = leased
out[o + 2] = math.max(0, math.floor((tolerance - (tat - now)) / interval))
out[o + 3] = math.ceil(tat - now)
if spent then
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', string.format('%d', math.ceil((tat - now) / 1000) + 1))
end
return out
