-- Enqueues plain jobs (no flow) in bulk; a job id that exists already is a duplicate and is
-- left untouched.
-- KEYS[1]  P.."seq" (routes the script to the partition's slot)
-- ARGV[1]  P, the partition prefix      ARGV[2]  WAKE, the wake channel prefix
-- ARGV[3]  n, then 8 values per job: id, lane, priority, delay_ms, max_attempts,
--          backoff "initial_ms,multiplier,max_ms,jitter", lease_ms, payload
-- Returns  one integer per job: 1 created, 0 duplicate.
local P, WAKE, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now = now_ms()
local out = {}
for i = 0, n - 1 do
  local o = 4 + i * 8
  local id, lane, prio, delay = ARGV[o], ARGV[o + 1], tonumber(ARGV[o + 2]), tonumber(ARGV[o + 3])
  local jk = P .. 'j:' .. id
  if redis.call('EXISTS', jk) == 1 then
    out[#out + 1] = 0
  else
    local state = 'w'
    if delay > 0 then state = 'd' end
    redis.call('HSET', jk, 'q', lane, 'p', prio, 'a', 0, 'm', ARGV[o + 4], 'b', ARGV[o + 5],
      't', ARGV[o + 6], 'd', ARGV[o + 7], 's', state, 'ts', now)
    if delay > 0 then
      push_delayed(P, WAKE, id, lane, now + delay)
    else
      push_ready(P, WAKE, id, lane, prio, '')
    end
    out[#out + 1] = 1
  end
end
return out
