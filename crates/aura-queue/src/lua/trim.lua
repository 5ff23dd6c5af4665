-- Retention: finished plain jobs and finished flows (runs with their jobs and events),
-- each kept at most `keep` and none older than `max_age_ms`.
-- KEYS[1]  P.."seq"
-- ARGV[1]  P      ARGV[2]  keep      ARGV[3]  max_age_ms      ARGV[4]  limit per call
-- ARGV[5]  keep flows      ARGV[6]  flow max_age_ms
-- Returns  {jobs deleted, flows deleted}.
local P, keep, max_age, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local keep_flows, flow_age = tonumber(ARGV[5]), tonumber(ARGV[6])
local now = now_ms()

-- The members of `zset` past retention: older than `age`, then the oldest beyond `keep`.
local function expired(zset, keep_n, age)
  local victims = redis.call('ZRANGEBYSCORE', zset, '-inf', now - age, 'LIMIT', 0, limit)
  local excess = redis.call('ZCARD', zset) - #victims - keep_n
  if excess > 0 then
    if excess > limit then excess = limit end
    local oldest = redis.call('ZRANGE', zset, #victims, #victims + excess - 1)
    for _, id in ipairs(oldest) do victims[#victims + 1] = id end
  end
  return victims
end

local jobs = expired(P .. 'done', keep, max_age)
for _, id in ipairs(jobs) do redis.call('DEL', P .. 'j:' .. id) end
if #jobs > 0 then redis.call('ZREM', P .. 'done', unpack(jobs)) end

local flows = expired(P .. 'fdone', keep_flows, flow_age)
for _, flow in ipairs(flows) do
  local fk = P .. 'f:' .. flow
  local f = redis.call('HMGET', fk, 'jobs', 'ix', 'idem')
  for _, id in ipairs(split(f[1])) do redis.call('DEL', P .. 'j:' .. id) end
  if f[2] and f[2] ~= '' then redis.call('ZREM', P .. 'runs:' .. f[2], flow) end
  if f[3] and f[3] ~= '' and redis.call('GET', P .. 'idem:' .. f[3]) == flow then
    redis.call('DEL', P .. 'idem:' .. f[3])
  end
  redis.call('ZREM', P .. 'runs', flow)
  local ev = P .. 'ev:runs.' .. flow
  redis.call('DEL', fk, ev, ev .. ':epoch', ev .. ':n')
end
if #flows > 0 then redis.call('ZREM', P .. 'fdone', unpack(flows)) end
return {#jobs, #flows}
