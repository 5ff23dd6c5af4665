-- Creates flows (runs: DAGs of jobs) atomically, each on its own: the flow hash, every job,
-- root jobs ready (or delayed), the others blocked on their parents. With an idempotency
-- key, a repeat (also within the same call) returns the first flow's id and creates nothing.
-- Many flows per call is what makes a batch of runs cheap: the call's fixed costs (the
-- clock, the FIFO sequence block, the lane's empty check) are paid once.
-- KEYS[1]  P.."seq"
-- ARGV[1]  P   ARGV[2]  WAKE   ARGV[3]  number of flows, then per flow 12 values and its jobs:
--   flow id, idempotency key ('' for none), idempotency ttl s, meta, input, delay_ms,
--   priority, index name ('' for none: adds to P.."runs:"..name; also the `workflow` field
--   of the flow's events), concurrency key of every job ('' for none: see push_ready),
--   concurrency limit of the flow's index (0: none; beyond it the flow waits in
--   P.."gate:"..index..":q" and starts when a running one of the same index ends), run
--   timeout ms (0: none; past it the reaper fails the flow), n;
--   then 10 values per job: id, lane, max_attempts, backoff, lease_ms, payload, parents
--   (comma list), dependents (comma list), continue_on_failure (0/1), release delay ms (a
--   job with one waits that long once it becomes ready: durable `delay` steps)
-- Returns  one flat list, 4 values per flow: 1, flow_id, created ms, admitted (0/1) when
--          created (what a caller needs to describe the new flow without reading it back);
--          0, existing_flow_id, 0, 0 for a repeated key. (Flat: see claim.lua.)
-- Flow hash fields: state, pending (jobs not finished), jobs, meta, in, ts created, p, idem,
-- ix index, gated/admitted (0/1), delay, ev epoch of its event topic, to (1: has a deadline
-- in P.."deadlines"); later st started, ft finished, err. p, idem, gated, delay and to are
-- left out when all are at their defaults (0, '', 0, 0, 0).
local P, WAKE, count = ARGV[1], ARGV[2], tonumber(ARGV[3])
-- Nothing in this call claims or retires a job, so the batch's ready jobs can go into
-- their wait sets together at the end (see push_ready).
ready_buffered = true
local now = now_ms()
local now_s = int(now)
local epoch = string.format('%x', now)
local runs, by_index = {}, {}
local out = {}

local function start_one(o)
  local flow, idem = ARGV[o], ARGV[o + 1]
  local delay, prio, index = tonumber(ARGV[o + 5]), tonumber(ARGV[o + 6]), ARGV[o + 7]
  local ckey, limit, timeout, n = ARGV[o + 8], tonumber(ARGV[o + 9]), tonumber(ARGV[o + 10]), tonumber(ARGV[o + 11])
  local J = o + 12
  if idem ~= '' then
    local existing = redis.call('GET', P .. 'idem:' .. idem)
    if existing then return 0, existing, 0, 0 end
  end
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
  local gated, adm, to = (limit > 0) and '1' or '0', admitted and '1' or '0', (timeout > 0) and '1' or '0'
  -- Fields at their defaults (no priority, key, gate, delay or deadline) are left out: a
  -- listpack hash is searched linearly on every HSET/HMGET, so each field costs every later
  -- access to the record. Readers treat a missing field as its default.
  if ARGV[o + 6] == '0' and idem == '' and gated == '0' and ARGV[o + 5] == '0' and to == '0' then
    redis.call('HSET', fk, 'state', 'pending', 'pending', ARGV[o + 11], 'jobs', table.concat(ids, ','),
      'meta', ARGV[o + 3], 'in', ARGV[o + 4], 'ts', now_s, 'ix', index, 'admitted', adm, 'ev', epoch)
  else
    redis.call('HSET', fk, 'state', 'pending', 'pending', ARGV[o + 11], 'jobs', table.concat(ids, ','),
      'meta', ARGV[o + 3], 'in', ARGV[o + 4], 'ts', now_s, 'p', ARGV[o + 6], 'idem', idem, 'ix', index,
      'gated', gated, 'admitted', adm, 'delay', ARGV[o + 5], 'ev', epoch, 'to', to)
  end
  -- A new flow starts a new event history (its topic's epoch and numbers are written with
  -- its first events: see flush_events), so nothing of it is read back here.
  emit_cache[flow] = {epoch = epoch, workflow = index, events = {}, fresh = true, expire = false,
    gated = gated, admitted = adm, to = to, pending = n}
  if admitted then
    emit(P, WAKE, flow, 'run.queued', nil, now)
  else
    emit(P, WAKE, flow, 'run.queued', {waiting_for_concurrency = true}, now)
  end
  runs[#runs + 1] = now_s
  runs[#runs + 1] = flow
  if index ~= '' then
    local list = by_index[index]
    if list == nil then
      list = {}
      by_index[index] = list
    end
    list[#list + 1] = now_s
    list[#list + 1] = flow
  end
  if timeout > 0 then redis.call('ZADD', P .. 'deadlines', int(now + timeout), flow) end
  for i = 0, n - 1 do
    local j = J + i * 10
    local id, lane, parents, dl = ARGV[j], ARGV[j + 1], ARGV[j + 6], tonumber(ARGV[j + 9])
    local pc = #split(parents)
    local state = 'b'
    local wait = delay
    if dl > wait then wait = dl end
    if pc == 0 and admitted then
      if wait > 0 then state = 'd' else state = 'w' end
    end
    if pc == 0 and ARGV[j + 7] == '' and ARGV[j + 8] == '0' and dl == 0 and ckey == '' then
      -- A lone step (no parents, no dependents, defaults): its default fields left out.
      redis.call('HSET', P .. 'j:' .. id, 'q', lane, 'p', ARGV[o + 6], 'a', '0', 'm', ARGV[j + 2], 'b', ARGV[j + 3],
        't', ARGV[j + 4], 'd', ARGV[j + 5], 's', state, 'ts', now_s, 'rt', int(now + wait), 'f', flow)
    else
      redis.call('HSET', P .. 'j:' .. id, 'q', lane, 'p', ARGV[o + 6], 'a', '0', 'm', ARGV[j + 2], 'b', ARGV[j + 3],
        't', ARGV[j + 4], 'd', ARGV[j + 5], 's', state, 'ts', now_s, 'rt', int(now + wait), 'f', flow, 'pa', parents,
        'n', ARGV[j + 7], 'pc', int(pc), 'cf', ARGV[j + 8], 'dl', ARGV[j + 9], 'k', ckey)
    end
    if state == 'd' then
      push_delayed(P, WAKE, id, lane, now + wait)
    elseif state == 'w' then
      push_ready(P, WAKE, id, lane, prio, ckey)
    end
  end
  if idem ~= '' then redis.call('SET', P .. 'idem:' .. idem, flow, 'EX', ARGV[o + 2]) end
  return 1, flow, now, admitted and 1 or 0, J + n * 10
end

local o = 4
for _ = 1, count do
  local created, flow, ts, admitted, next_o = start_one(o)
  if next_o == nil then
    -- A repeated key: skip the flow's values.
    next_o = o + 12 + tonumber(ARGV[o + 11]) * 10
  end
  local w = #out
  out[w + 1] = created
  out[w + 2] = flow
  out[w + 3] = ts
  out[w + 4] = admitted
  o = next_o
end
-- The listings, one ZADD per set for the whole call.
if #runs > 0 then zadd_many(P .. 'runs', runs) end
for index, list in pairs(by_index) do zadd_many(P .. 'runs:' .. index, list) end
return out
