-- Puts back jobs whose lease expired (worker died or stalled): each counts as a failed,
-- retryable attempt. Safe to run from every scheduler replica at once: a job leaves the
-- active set atomically, so only one reaper handles it.
-- KEYS[1]  P.."seq"
-- ARGV[1]  P      ARGV[2]  WAKE      ARGV[3]  limit      ARGV[4]  rand in [0,1)
-- Returns  a list of {id, kind, at_or_flow_state, cancelled}.
local P, WAKE, limit, rand = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
local out = {}
local expired = redis.call('ZRANGEBYSCORE', P .. 'active', '-inf', now, 'LIMIT', 0, limit)
for _, id in ipairs(expired) do
  local r = fail_job(P, WAKE, id, 'lease expired (worker lost or step timed out)', true, 0, rand, now)
  out[#out + 1] = {id, r[1], r[2], r[3]}
end
return out
