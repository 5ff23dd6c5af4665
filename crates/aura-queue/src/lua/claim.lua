-- Claims up to `max` ready jobs from the given lanes (in order), after promoting delayed
-- jobs that are due. Each claimed job gets a fresh lease token and a deadline.
-- KEYS[1]  P.."seq"
-- ARGV[1]  P      ARGV[2]  WAKE      ARGV[3]  max      ARGV[4..]  lanes
-- Returns  {jobs, next_at}: jobs is a list of
--          {id, lane, attempt, token, deadline, payload, flow, flow_meta, flow_input,
--           parents_and_results (flat list), flow_started (0/1)};
--          next_at is the earliest delayed ready time (ms) over the lanes when nothing was
--          claimed, else 0.
local P, WAKE, max = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now = now_ms()
local jobs = {}
local next_at = 0
local flows = {}
for li = 4, #ARGV do
  local lane = ARGV[li]
  if #jobs >= max then break end
  if redis.call('EXISTS', lane_key(P, lane, 'paused')) == 0 then
    local dkey = lane_key(P, lane, 'delayed')
    local due = redis.call('ZRANGEBYSCORE', dkey, '-inf', now, 'LIMIT', 0, 1000)
    for _, id in ipairs(due) do
      local jk = P .. 'j:' .. id
      redis.call('HSET', jk, 's', 'w')
      push_ready(P, WAKE, id, lane, tonumber(redis.call('HGET', jk, 'p')) or 0)
    end
    if #due > 0 then redis.call('ZREM', dkey, unpack(due)) end
    local popped = redis.call('ZPOPMIN', lane_key(P, lane, 'wait'), max - #jobs)
    local claimed = 0
    for i = 1, #popped, 2 do
      local id = popped[i]
      local jk = P .. 'j:' .. id
      local f = redis.call('HMGET', jk, 'a', 't', 'd', 'f', 'pa')
      local attempt = (tonumber(f[1]) or 0) + 1
      local deadline = now + (tonumber(f[2]) or 30000)
      local token = tostring(redis.call('INCR', P .. 'lease'))
      redis.call('HSET', jk, 'a', attempt, 's', 'a', 'l', token, 'st', now)
      redis.call('ZADD', P .. 'active', deadline, id)
      claimed = claimed + 1
      local flow = f[4]
      local meta, input, parents, started = '', '', {}, 0
      if flow and flow ~= '' then
        local fk = P .. 'f:' .. flow
        local fl = flows[flow]
        if fl == nil then
          local ff = redis.call('HMGET', fk, 'meta', 'in', 'state')
          if ff[3] == 'pending' then
            redis.call('HSET', fk, 'state', 'running', 'st', now)
            emit(P, WAKE, flow, 'run.started', {}, now)
            started = 1
          end
          fl = {ff[1] or '', ff[2] or ''}
          flows[flow] = fl
        end
        meta, input = fl[1], fl[2]
        emit(P, WAKE, flow, 'step.started', {step_id = step_of(id), attempt = attempt}, now)
        for _, pid in ipairs(split(f[5])) do
          parents[#parents + 1] = pid
          parents[#parents + 1] = redis.call('HGET', P .. 'j:' .. pid, 'r') or ''
        end
      else
        flow = ''
      end
      jobs[#jobs + 1] = {id, lane, attempt, token, deadline, f[3] or '', flow, meta, input, parents, started}
    end
    if claimed > 0 then stat(P, lane, 'active', claimed) end
    if #jobs == 0 then
      local head = redis.call('ZRANGE', dkey, 0, 0, 'WITHSCORES')
      if head[2] ~= nil then
        local at = tonumber(head[2])
        if next_at == 0 or at < next_at then next_at = at end
      end
    end
  end
end
if #jobs > 0 then next_at = 0 end
return {jobs, next_at}
