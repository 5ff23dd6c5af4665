-- Records results of active jobs, in bulk. A result whose lease token is not the job's
-- current one (lease expired and re-claimed, run cancelled) is refused: that is the fencing
-- that makes each result recorded exactly once.
-- KEYS[1]  P.."seq"
-- ARGV[1]  P      ARGV[2]  WAKE      ARGV[3]  n, then per job: id, token, result
-- Returns  one flat list (nested reply tables are costly: see claim.lua), per job:
--          1, flow_state, flow_index, number of ready dependents, the dependents — when
--          recorded (the flow's index name, read anyway for its events: callers need no
--          second read); 0, reason — when refused.
local P, WAKE, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now = now_ms()
local now_s = int(now)
local out = {}
local done_by_lane = {}
-- Set changes of the whole batch, applied once at the end.
local left_active, done = {}, {}
for i = 0, n - 1 do
  local o = 4 + i * 3
  local id, token = ARGV[o], ARGV[o + 1]
  local jk = P .. 'j:' .. id
  local f = redis.call('HMGET', jk, 'l', 's', 'q', 'f', 'k', 'n')
  if f[2] == false or f[2] == nil then
    local w = #out
    out[w + 1] = 0
    out[w + 2] = 'unknown task'
  elseif f[2] ~= 'a' or f[1] ~= token then
    local w = #out
    out[w + 1] = 0
    out[w + 2] = (f[2] == 'x') and 'cancelled' or 'stale lease'
  else
    local lane, flow = f[3], f[4]
    left_active[#left_active + 1] = id
    redis.call('HSET', jk, 's', 'c', 'r', ARGV[o + 2], 'l', '', 'ft', now_s)
    key_done(P, WAKE, lane, f[5])
    done_by_lane[lane] = (done_by_lane[lane] or 0) + 1
    if flow and flow ~= '' then
      local ready = {}
      emit(P, WAKE, flow, 'step.succeeded', nil, now, step_of(id))
      release_dependents(P, WAKE, flow, id, now, false, ready, nil, f[6] or '')
      local state = settle_flow(P, WAKE, flow, now, 1)
      local w = #out
      out[w + 1] = 1
      out[w + 2] = state
      out[w + 3] = emit_cache[flow].workflow
      out[w + 4] = #ready
      for r = 1, #ready do out[w + 4 + r] = ready[r] end
    else
      done[#done + 1] = now_s
      done[#done + 1] = id
      local w = #out
      out[w + 1] = 1
      out[w + 2] = ''
      out[w + 3] = ''
      out[w + 4] = 0
    end
  end
end
if #left_active > 0 then zrem_many(P .. 'active', left_active) end
if #done > 0 then zadd_many(P .. 'done', done) end
-- Counters once per lane, not once per job.
for lane, count in pairs(done_by_lane) do
  stat(P, lane, 'active', -count)
  stat(P, lane, 'completed', count)
end
return out
