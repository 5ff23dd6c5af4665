-- One rate-limit decision, GCRA form of a token bucket: one key per bucket holding the
-- "theoretical arrival time" (TAT), no drip process, and Redis's clock, so gateway clocks
-- do not matter.
-- KEYS[1]  the bucket ("<prefix>:{rl}:b:<tenant>:<group>" or "<prefix>:{rl}:d:<descriptor>")
-- ARGV[1]  emission interval, µs (unit / rate)   ARGV[2]  burst (capacity)   ARGV[3]  cost
-- Returns  {allowed (0/1), remaining, retry_after µs, reset_after µs (until the bucket is full)}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tolerance = interval * burst
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + interval * cost
local allow_at = new_tat - tolerance
if allow_at > now then
  return {0, 0, math.ceil(allow_at - now), math.ceil(tat - now)}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, math.floor((tolerance - (new_tat - now)) / interval), 0, math.ceil(new_tat - now)}
