-- Creates a flow (a run: a DAG of jobs) atomically: the flow hash, every job, root jobs
-- ready (or delayed), the others blocked on their parents. With an idempotency key, a
-- repeat returns the first flow's id and creates nothing.
-- KEYS[1]  P.."seq"
-- ARGV[1]  P   ARGV[2]  WAKE   ARGV[3]  flow id   ARGV[4]  idempotency key ('' for none)
-- ARGV[5]  idempotency ttl s   ARGV[6]  meta      ARGV[7]  input     ARGV[8]  delay_ms
-- ARGV[9]  priority            ARGV[10] index name ('' for none: adds to P.."runs:"..name;
--          also the `workflow` field of the flow's events)
-- ARGV[11] concurrency key of every job ('' for none: see push_ready)
-- ARGV[12] concurrency limit of the flow's index (0: none). Beyond it the flow waits in
--          P.."gate:"..index..":q" and starts when a running one of the same index ends.
-- ARGV[13] run timeout ms (0: none): past it the reaper fails the flow
-- ARGV[14] n, then 10 values per job: id, lane, max_attempts, backoff, lease_ms, payload,
--          parents (comma list), dependents (comma list), continue_on_failure (0/1),
--          release delay ms (a job with one waits that long once it becomes ready: durable
--          `delay` steps)
-- Returns  {1, flow_id, created ms, admitted (0/1)} when created (what a caller needs to
--          describe the new flow without reading it back), {0, existing_flow_id} for a
--          repeated key.
local P, WAKE, flow, idem = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local delay, prio, index = tonumber(ARGV[8]), tonumber(ARGV[9]), ARGV[10]
local ckey, limit, timeout, n = ARGV[11], tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14])
local J = 15
if idem ~= '' then
  local existing = redis.call('GET', P .. 'idem:' .. idem)
  if existing then return {0, existing} end
end
local now = now_ms()
local fk = P .. 'f:' .. flow
local ids = {}
for i = 0, n - 1 do ids[#ids + 1] = ARGV[J + i * 10] end
-- Admission: without a limit, or under it, the flow's roots are ready now; otherwise
-- they wait (blocked) until `admit_next` lets the flow in.
local admitted = true
if limit > 0 then
  if redis.call('INCR', P .. 'gate:' .. index .. ':n') > limit then
    redis.call('DECR', P .. 'gate:' .. index .. ':n')
    redis.call('RPUSH', P .. 'gate:' .. index .. ':q', flow)
    admitted = false
  end
end
-- A new flow starts a new event history: its epoch is written once here (the key aura-bus
-- reads, and the flow hash for emit), so emit reads nothing for this flow in this call.
local epoch = string.format('%x', now)
redis.call('SET', P .. 'ev:runs.' .. flow .. ':epoch', epoch)
emit_cache[flow] = {epoch, index}
redis.call('HSET', fk, 'state', 'pending', 'pending', n, 'jobs', table.concat(ids, ','),
  'meta', ARGV[6], 'in', ARGV[7], 'ts', now, 'p', prio, 'idem', idem, 'ix', index,
  'gated', (limit > 0) and '1' or '0', 'admitted', admitted and '1' or '0', 'delay', delay,
  'ev', epoch)
if admitted then
  emit(P, WAKE, flow, 'run.queued', {}, now)
else
  emit(P, WAKE, flow, 'run.queued', {waiting_for_concurrency = true}, now)
end
redis.call('ZADD', P .. 'runs', now, flow)
if timeout > 0 then redis.call('ZADD', P .. 'deadlines', now + timeout, flow) end
if index ~= '' then redis.call('ZADD', P .. 'runs:' .. index, now, flow) end
for i = 0, n - 1 do
  local o = J + i * 10
  local id, lane, parents, dl = ARGV[o], ARGV[o + 1], ARGV[o + 6], tonumber(ARGV[o + 9])
  local pc = #split(parents)
  local state = 'b'
  local wait = delay
  if dl > wait then wait = dl end
  if pc == 0 and admitted then
    if wait > 0 then state = 'd' else state = 'w' end
  end
  redis.call('HSET', P .. 'j:' .. id, 'q', lane, 'p', prio, 'a', 0, 'm', ARGV[o + 2], 'b', ARGV[o + 3],
    't', ARGV[o + 4], 'd', ARGV[o + 5], 's', state, 'ts', now, 'rt', int(now + wait), 'f', flow, 'pa', parents,
    'n', ARGV[o + 7], 'pc', pc, 'cf', ARGV[o + 8], 'dl', dl, 'k', ckey)
  if state == 'd' then
    push_delayed(P, WAKE, id, lane, now + wait)
  elseif state == 'w' then
    push_ready(P, WAKE, id, lane, prio, ckey)
  end
end
if idem ~= '' then redis.call('SET', P .. 'idem:' .. idem, flow, 'EX', ARGV[5]) end
return {1, flow, now, admitted and 1 or 0}
