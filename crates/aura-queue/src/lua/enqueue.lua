-- Enqueues plain jobs (no flow) in bulk; a job id that exists already is a duplicate and is
-- left untouched.
-- KEYS[1]  P.."seq" (routes the script to the partition's slot)
-- ARGV[1]  P, the partition prefix      ARGV[2]  WAKE, the wake channel prefix
-- ARGV[3]  n, then 8 values per job: id, lane, priority, delay_ms, max_attempts,
--          backoff "initial_ms,multiplier,max_ms,jitter", lease_ms, payload
-- Returns  one integer per job: 1 created, 0 duplicate.
local P, WAKE, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now = now_ms()
local now_s = int(now)
local out = {}
-- Ready jobs are added to their lane's wait set in one ZADD per lane at the end.
local ready, lanes = {}, {}
for i = 0, n - 1 do
  local o = 4 + i * 8
  local id, lane, delay = ARGV[o], ARGV[o + 1], tonumber(ARGV[o + 3])
  local jk = P .. 'j:' .. id
  if redis.call('EXISTS', jk) == 1 then
    out[#out + 1] = 0
  else
    local state = 'w'
    if delay > 0 then state = 'd' end
    redis.call('HSET', jk, 'q', lane, 'p', ARGV[o + 2], 'a', '0', 'm', ARGV[o + 4], 'b', ARGV[o + 5],
      't', ARGV[o + 6], 'd', ARGV[o + 7], 's', state, 'ts', now_s, 'rt', int(now + delay))
    if delay > 0 then
      push_delayed(P, WAKE, id, lane, now + delay)
    else
      if ready[lane] == nil then
        ready[lane] = {}
        lanes[#lanes + 1] = lane
      end
      local list = ready[lane]
      list[#list + 1] = tonumber(ARGV[o + 2])
      list[#list + 1] = id
    end
    out[#out + 1] = 1
  end
end
for _, lane in ipairs(lanes) do
  local list = ready[lane]
  local count = #list / 2
  local seq = redis.call('INCRBY', P .. 'seq', count) - count
  if lane_is_empty(P, lane) then redis.call('PUBLISH', WAKE .. lane, '1') end
  local args = {}
  for i = 1, #list, 2 do
    seq = seq + 1
    args[#args + 1] = wait_score(list[i], seq)
    args[#args + 1] = list[i + 1]
  end
  zadd_many(lane_key(P, lane, 'wait'), args)
end
return out
