-- Claims up to `max` ready jobs from the given lanes (in order), after promoting delayed
-- jobs that are due. Each claimed job gets a fresh lease token and a deadline.
-- KEYS[1]  P.."seq"
-- ARGV[1]  P      ARGV[2]  WAKE      ARGV[3]  max      ARGV[4]  per-key cap (0: none)
-- ARGV[5..]  lanes
-- Returns  one flat list: next_at, then per job 12 values and its parents:
--          id, lane, attempt, token, deadline, payload, flow, flow_meta, flow_input,
--          flow_started (0/1), queue wait ms (since the job last became ready: field `rt`),
--          number of parents, then per parent its id and result.
--          next_at is the earliest delayed ready time (ms) over the lanes when nothing was
--          claimed, else 0. (Flat because Redis converts every nested Lua table of a reply
--          with seven probes for special fields: nesting cost ~20% of a claim.)
local P, WAKE, max, cap = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])

-- Up to `want` ready ids of a lane, fairly: jobs without a key count as one more key; each
-- key in turn gives its share (at least one job), rotating the ring so the next claim
-- starts with the next key.
local function pick_ready(P, lane, want)
  local out = {}
  local wait = lane_key(P, lane, 'wait')
  local ring = lane_key(P, lane, 'ring')
  local keys = redis.call('LLEN', ring)
  local function take(set, n)
    local popped = redis.call('ZPOPMIN', set, n)
    for i = 1, #popped, 2 do out[#out + 1] = popped[i] end
    return #popped / 2
  end
  if keys == 0 then
    take(wait, want)
    return out
  end
  local share = math.max(1, math.floor(want / (keys + 1)))
  take(wait, math.min(share, want))
  local kact = lane_key(P, lane, 'kact')
  -- Each visit takes from one key; a full pass over the ring without taking anything means
  -- every key is empty or at its cap.
  local idle = 0
  while #out < want and idle < keys do
    local key = redis.call('LMOVE', ring, ring, 'LEFT', 'RIGHT')
    if not key then break end
    local n = math.min(share, want - #out)
    if cap > 0 then n = math.min(n, cap - (tonumber(redis.call('HGET', kact, key)) or 0)) end
    local got = 0
    local kset = lane_key(P, lane, 'k:' .. key)
    if n > 0 then
      got = take(kset, n)
      redis.call('HINCRBY', lane_key(P, lane, 'stats'), 'keyed', -got)
      redis.call('HINCRBY', kact, key, got)
    end
    if got > 0 then idle = 0 else idle = idle + 1 end
    if redis.call('ZCARD', kset) == 0 then
      redis.call('LREM', ring, -1, key)
      keys = redis.call('LLEN', ring)
      if keys == 0 then break end
    end
  end
  if #out < want then take(wait, want - #out) end
  return out
end
local now = now_ms()
local now_s = int(now)
-- out[1] is next_at; the jobs follow.
local out = {0}
local claimed_total = 0
local next_at = 0
local flows = {}
-- Lease deadlines of everything claimed, added to the active set in one ZADD at the end.
local active = {}
for li = 5, #ARGV do
  local lane = ARGV[li]
  if claimed_total >= max then break end
  if redis.call('EXISTS', lane_key(P, lane, 'paused')) == 0 then
    local dkey = lane_key(P, lane, 'delayed')
    local due = redis.call('ZRANGEBYSCORE', dkey, '-inf', int(now), 'LIMIT', '0', '1000')
    for _, id in ipairs(due) do
      local jk = P .. 'j:' .. id
      redis.call('HSET', jk, 's', 'w')
      local d = redis.call('HMGET', jk, 'p', 'k')
      push_ready(P, WAKE, id, lane, tonumber(d[1]) or 0, d[2])
    end
    if #due > 0 then redis.call('ZREM', dkey, unpack(due)) end
    local ids = pick_ready(P, lane, max - claimed_total)
    local claimed = 0
    -- One lease counter bump for the batch; each job gets its own token from the range.
    local token_base = #ids > 0 and (redis.call('INCRBY', P .. 'lease', #ids) - #ids) or 0
    for _, id in ipairs(ids) do
      local jk = P .. 'j:' .. id
      local f = redis.call('HMGET', jk, 'a', 't', 'd', 'f', 'pa', 'rt')
      local attempt = (tonumber(f[1]) or 0) + 1
      local deadline = now + (tonumber(f[2]) or 30000)
      claimed = claimed + 1
      local token = int(token_base + claimed)
      redis.call('HSET', jk, 'a', int(attempt), 's', 'a', 'l', token, 'st', now_s)
      active[#active + 1] = int(deadline)
      active[#active + 1] = id
      local flow = f[4]
      local meta, input, started = '', '', 0
      local parents = {}
      if flow and flow ~= '' then
        local fk = P .. 'f:' .. flow
        local fl = flows[flow]
        if fl == nil then
          local ff = read_flow(P, flow, 'meta', 'in', 'state')
          if ff[3] == 'pending' then
            redis.call('HSET', fk, 'state', 'running', 'st', now_s)
            emit(P, WAKE, flow, 'run.started', nil, now)
            started = 1
          end
          fl = {ff[1] or '', ff[2] or ''}
          flows[flow] = fl
        end
        meta, input = fl[1], fl[2]
        emit(P, WAKE, flow, 'step.started', nil, now, step_of(id), attempt)
        for _, pid in ipairs(split(f[5])) do
          parents[#parents + 1] = pid
          parents[#parents + 1] = redis.call('HGET', P .. 'j:' .. pid, 'r') or ''
        end
      else
        flow = ''
      end
      local o = #out
      out[o + 1] = id
      out[o + 2] = lane
      out[o + 3] = attempt
      out[o + 4] = token
      out[o + 5] = deadline
      out[o + 6] = f[3] or ''
      out[o + 7] = flow
      out[o + 8] = meta
      out[o + 9] = input
      out[o + 10] = started
      out[o + 11] = math.max(0, now - (tonumber(f[6]) or now))
      out[o + 12] = #parents / 2
      for i = 1, #parents do out[o + 12 + i] = parents[i] end
    end
    if claimed > 0 then stat(P, lane, 'active', claimed) end
    claimed_total = claimed_total + claimed
    if claimed_total == 0 then
      local head = redis.call('ZRANGE', dkey, '0', '0', 'WITHSCORES')
      if head[2] ~= nil then
        local at = tonumber(head[2])
        if next_at == 0 or at < next_at then next_at = at end
      end
    end
  end
end
if #active > 0 then zadd_many(P .. 'active', active) end
if claimed_total == 0 then out[1] = next_at end
return out
