-- Retention of finished plain jobs: keeps at most `keep` and none older than `max_age_ms`.
-- KEYS[1]  P.."seq"
-- ARGV[1]  P      ARGV[2]  keep      ARGV[3]  max_age_ms      ARGV[4]  limit per call
-- Returns  how many jobs were deleted.
local P, keep, max_age, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local done = P .. 'done'
local victims = redis.call('ZRANGEBYSCORE', done, '-inf', now_ms() - max_age, 'LIMIT', 0, limit)
local excess = redis.call('ZCARD', done) - #victims - keep
if excess > 0 then
  if excess > limit then excess = limit end
  local oldest = redis.call('ZRANGE', done, #victims, #victims + excess - 1)
  for _, id in ipairs(oldest) do victims[#victims + 1] = id end
end
for _, id in ipairs(victims) do redis.call('DEL', P .. 'j:' .. id) end
if #victims > 0 then redis.call('ZREM', done, unpack(victims)) end
return #victims
