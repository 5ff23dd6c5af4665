-- Puts back jobs whose lease expired (worker died or stalled): each counts as a failed,
-- retryable attempt. Safe to run from every scheduler replica at once: a job leaves the
-- active set atomically, so only one reaper handles it.
-- KEYS[1]  P.."seq"
-- ARGV[1]  P      ARGV[2]  WAKE      ARGV[3]  limit      ARGV[4]  rand in [0,1)
-- Also fails flows whose run timeout passed.
-- Returns  {list of {id, kind, at_or_flow_state, cancelled}, list of timed-out flow ids}.
local P, WAKE, limit, rand = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
local out = {}
local expired = redis.call('ZRANGEBYSCORE', P .. 'active', '-inf', int(now), 'LIMIT', 0, limit)
for _, id in ipairs(expired) do
  local r = fail_job(P, WAKE, id, 'lease expired (worker lost or step timed out)', true, 0, rand, now)
  out[#out + 1] = {id, r[1], r[2], r[3]}
end
local timed_out = redis.call('ZRANGEBYSCORE', P .. 'deadlines', '-inf', int(now), 'LIMIT', 0, limit)
for _, flow in ipairs(timed_out) do
  local started = tonumber(redis.call('HGET', P .. 'f:' .. flow, 'ts')) or now
  end_flow(P, WAKE, flow, 'failed', 'run timed out after ' .. (now - started) .. ' ms', now)
end
return {out, timed_out}
