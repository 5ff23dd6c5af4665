-- Shared functions, prepended to every queue script at load time (see scripts.rs).
--
-- Key layout (P is the partition prefix, e.g. "aura:{p0.0}:"; every key of a partition
-- shares its hash tag, so each script runs on a single Redis Cluster slot):
--   P.."seq"                    counter for FIFO order within a priority
--   P.."lease"                  counter handing out lease tokens
--   P.."j:"..id                 job hash (fields below)
--   P.."q:"..lane..":wait"      ready jobs without a concurrency key, score = priority
--                               band + sequence
--   P.."q:"..lane..":k:"..key   ready jobs of one concurrency key (same score)
--   P.."q:"..lane..":ring"      keys with ready jobs, rotated by claims (round-robin)
--   P.."q:"..lane..":kact"      active (claimed) jobs per key, for the per-key cap
--   P.."q:"..lane..":delayed"   delayed jobs and retry backoffs, score = ready-at ms
--   P.."q:"..lane..":dead"      dead letters, score = died-at ms
--   P.."q:"..lane..":stats"     counters: active, completed, failed, dead, keyed (ready
--                               jobs in key sets)
--   P.."q:"..lane..":paused"    exists while the lane is paused
--   P.."active"                 claimed jobs, score = lease deadline ms
--   P.."done"                   finished plain jobs (for retention), score = finished ms
--   P.."f:"..flow               flow (run) hash
--   P.."runs"                   flows by creation ms (listing)
--   P.."fdone"                  finished flows by finish ms (retention)
--   P.."deadlines"              running flows with a timeout, by deadline ms
--   P.."idem:"..key             idempotency key -> flow id
--   P.."ev:runs."..flow         the flow's event stream (topic `runs.<flow>`), with
--                               ":epoch" and ":n" beside it, as aura-bus lays out topics
-- Job hash fields: q lane, p priority, a attempts made, m max attempts, b backoff
-- "initial_ms,multiplier,max_ms,jitter", t lease ms, d payload, s state, l lease token,
-- e last error, r result, ts created, st started, ft finished, rt when it last became ready
-- (or is due, while delayed: queue wait is measured from it); flow jobs also: f flow id,
-- pa parent ids, n dependent ids (comma-separated), pc parents still pending, cf
-- continue-on-failure flag, dl delay once ready (ms), k concurrency key ('' for none); a
-- flow job with neither parents nor dependents and default pa..k has none of those six.
-- States: b blocked on parents, w waiting, d delayed, a active, c completed, f failed (dead),
-- x cancelled, k skipped.

local PRIO_MAX = 1000
local SEQ_SPAN = 8796093022208 -- 2^43: (PRIO_MAX + 1) * 2^43 stays below 2^53

-- Lifecycle events of a flow (a run) are written here, inside the script that makes the
-- transition, so their order on `runs.<flow>` is the order of the transitions themselves.
-- The layout and message format are aura-bus's (see crates/aura-bus/src/lua/publish.lua).
local EV_MAXLEN = 10000
-- (A string: a Lua number argument is formatted with '%.17g' on every call.)
local EV_RETENTION_MS = '86400000' -- 24 h

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Numbers handed to redis.call are formatted by Redis with "%.17g" and parsed back, which
-- showed up as ~11% of Redis's CPU in profiles; hot paths pass integer strings instead.
local function int(n)
  return string.format('%d', n)
end

-- The wait-set score: priority band first, then FIFO sequence.
-- ('%d' formats through a 64-bit integer: exact below 2^53, and far cheaper than '%.0f'.)
local function wait_score(prio, seq)
  return string.format('%d', (PRIO_MAX - prio) * SEQ_SPAN + (seq % SEQ_SPAN))
end

-- FIFO sequence numbers, reserved from P.."seq" in blocks for the script call: a call that
-- makes many jobs ready (a batch of new runs) bumps the counter once per block, not once per
-- job. Unused numbers of a block are skipped, which only leaves gaps.
local SEQ_BLOCK = 16
local seq_next, seq_last = 0, -1
local function next_seq(P)
  if seq_next > seq_last then
    seq_last = redis.call('INCRBY', P .. 'seq', SEQ_BLOCK)
    seq_next = seq_last - SEQ_BLOCK + 1
  end
  seq_next = seq_next + 1
  return seq_next - 1
end

-- ZADD/ZREM with many members in one call (chunked below Lua's unpack limit).
local function zadd_many(key, pairs_list)
  for i = 1, #pairs_list, 2000 do
    redis.call('ZADD', key, unpack(pairs_list, i, math.min(i + 1999, #pairs_list)))
  end
end

local function zrem_many(key, ids)
  for i = 1, #ids, 4000 do
    redis.call('ZREM', key, unpack(ids, i, math.min(i + 3999, #ids)))
  end
end

local function split(s)
  local out = {}
  if s == nil or s == false or s == '' then return out end
  for part in string.gmatch(s, '[^,]+') do out[#out + 1] = part end
  return out
end

-- The pub/sub channel prefix of events, derived from the wake prefix "<prefix>:wake:".
local function event_channel_prefix(WAKE)
  return string.sub(WAKE, 1, -6) .. 'evc:'
end

-- A flow's lifecycle events are buffered for the length of the script call and written by
-- `flush_events`, which the script wrapper (scripts.rs) calls after every script body. A
-- flow that gets several events in one call (run.started + step.started when claimed,
-- step.succeeded + run.succeeded when its last step completes) then reserves their numbers
-- with one INCRBY and is written as one stream entry and one PUBLISH of one body, as
-- aura-bus does, instead of an INCR, an XADD and a PUBLISH per event. Per flow: epoch and
-- workflow (its index name), events (buffered body lines "type|payload"), ms (their clock
-- reading), fresh (its topic starts here: numbers from 1, no counter to read), expire (the
-- flow ended: its history expires after the retention period), and the hash fields read
-- once: gated, admitted, to, pending.
local emit_cache = {}
local emit_order = {}
local emit_ctx = nil

-- Reads the flow hash fields named in `...` and, in the same HMGET, what the flow's events
-- and end need (cached for the call), so a script that reads a flow anyway reads it once.
local function read_flow(P, flow, ...)
  local names = {...}
  local f = redis.call('HMGET', P .. 'f:' .. flow, 'ix', 'ev', 'gated', 'admitted', 'to', 'pending', ...)
  if emit_cache[flow] == nil then
    emit_cache[flow] = {epoch = f[2], workflow = f[1] or '', events = {}, fresh = false, expire = false,
      gated = f[3], admitted = f[4], to = f[5], pending = tonumber(f[6]) or 0}
  end
  return {unpack(f, 7, 6 + #names)}
end

local function flow_info(P, flow)
  if emit_cache[flow] == nil then read_flow(P, flow) end
  return emit_cache[flow]
end

-- Ids and names that need no JSON escaping. AURA's run ids, workflow names and step ids
-- are of these characters, so the common events' payloads are concatenated rather than
-- built as a table for cjson (a table write, a resize and an encode per event).
local function plain(s)
  return string.find(s, '^[%w_.:%-]*$') ~= nil
end

local now_cached, now_string = nil, nil

-- Appends an event. Its JSON payload is run_id, workflow, then either `fields` (a table:
-- any values) or, with `fields` nil, the optional `step` (step_id) and `attempt`.
local function emit(P, WAKE, flow, etype, fields, now, step, attempt)
  local cached = flow_info(P, flow)
  if emit_ctx == nil then emit_ctx = {P, WAKE} end
  local workflow = cached.workflow
  if cached.head == nil then
    -- The payload's start, once per flow and call ('' when it needs escaping).
    cached.head = (plain(flow) and plain(workflow)) and ('{"run_id":"' .. flow .. '","workflow":"' .. workflow .. '"') or ''
  end
  local payload
  if fields == nil and cached.head ~= '' and step == nil then
    payload = cached.head .. '}'
  elseif fields == nil and cached.head ~= '' and plain(step) then
    if attempt then
      payload = cached.head .. ',"step_id":"' .. step .. '","attempt":' .. int(attempt) .. '}'
    else
      payload = cached.head .. ',"step_id":"' .. step .. '"}'
    end
  else
    fields = fields or {}
    if step then fields['step_id'] = step end
    if attempt then fields['attempt'] = attempt end
    fields['run_id'] = flow
    fields['workflow'] = workflow
    payload = cjson.encode(fields)
  end
  if now ~= now_cached then now_cached, now_string = now, int(now) end
  local events = cached.events
  if #events == 0 then
    emit_order[#emit_order + 1] = flow
    cached.ms = now_string
  end
  -- A body line (see flush_events).
  events[#events + 1] = etype .. '|' .. payload
end

-- A finished flow's events are kept for the retention period, then expire.
local function expire_events(P, flow)
  flow_info(P, flow).expire = true
end

-- Flows that ended in this call, added to P.."fdone" (read only by retention: trim.lua)
-- with one ZADD when the call ends, not one per flow.
local fdone_P, fdone_pending = nil, {}
local function flow_finished(P, flow, now)
  fdone_P = P
  fdone_pending[#fdone_pending + 1] = int(now)
  fdone_pending[#fdone_pending + 1] = flow
end

-- Writes the buffered events: per flow, its numbers, one XADD and one PUBLISH of one body,
-- as aura-bus writes them (crates/aura-bus/src/lua/publish.lua): the line
-- "epoch|first n|ms", then a line "type|payload" per event; the entry's id is its last
-- number. (A script call has one clock reading, so its events share their ms.)
-- The epoch is the flow hash's `ev` field (written with the flow), else the topic's epoch
-- key; a topic with neither starts a new history.
local function flush_events()
  if emit_ctx == nil then return end
  local P, WAKE = emit_ctx[1], emit_ctx[2]
  for _, flow in ipairs(emit_order) do
    local c = emit_cache[flow]
    local key = P .. 'ev:runs.' .. flow
    local events = c.events
    local count = #events
    local last
    if c.fresh then
      last = count
      redis.call('MSET', key .. ':epoch', c.epoch, key .. ':n', int(count))
    else
      if not c.epoch then c.epoch = redis.call('GET', key .. ':epoch') end
      if not c.epoch then
        c.epoch = string.format('%x', tonumber(c.ms))
        redis.call('DEL', key, key .. ':n')
        redis.call('SET', key .. ':epoch', c.epoch)
      end
      last = redis.call('INCRBY', key .. ':n', int(count))
    end
    local body = c.epoch .. '|' .. int(last - count + 1) .. '|' .. c.ms .. '\n' .. table.concat(events, '\n')
    -- A topic that never had EV_MAXLEN events cannot need trimming.
    if last <= EV_MAXLEN then
      redis.call('XADD', key, int(last) .. '-0', 'r', body)
    else
      redis.call('XADD', key, 'MINID', '~', int(last - EV_MAXLEN + 1), int(last) .. '-0', 'r', body)
    end
    redis.call('PUBLISH', event_channel_prefix(WAKE) .. 'runs.' .. flow, body)
    if c.expire then
      redis.call('PEXPIRE', key, EV_RETENTION_MS)
      redis.call('PEXPIRE', key .. ':epoch', EV_RETENTION_MS)
      redis.call('PEXPIRE', key .. ':n', EV_RETENTION_MS)
    end
    c.events, c.fresh, c.expire = {}, false, false
  end
  emit_order = {}
end

local function step_of(id)
  local dot = string.find(id, '.', 1, true)
  if dot then return string.sub(id, dot + 1) end
  return id
end

local function lane_key(P, lane, what)
  return P .. 'q:' .. lane .. ':' .. what
end

-- Wakes blocked claimers of a lane, but only on the empty -> non-empty transition: under
-- load the lane is never empty, so this costs nothing on the hot path.
-- A lane this script call already pushed to is not empty (no claim in the same call runs
-- after its pushes: see claim.lua), so a batch asks once per lane.
local lane_filled = {}
local function lane_is_empty(P, lane)
  if lane_filled[lane] then return false end
  lane_filled[lane] = true
  return redis.call('ZCARD', lane_key(P, lane, 'wait')) == 0 and redis.call('LLEN', lane_key(P, lane, 'ring')) == 0
end

-- Ready jobs wait in the lane's `wait` set, or, when they carry a concurrency key, in the
-- key's own set `k:<key>`; keys with ready jobs sit in the lane's `ring`, which claims
-- rotate through, so one key's backlog cannot starve another key's jobs.
--
-- A script that only adds ready jobs (start_flows: no claim or retire follows in the call)
-- sets `ready_buffered`: its unkeyed jobs then go into each lane's wait set with one ZADD
-- when the call ends (see `flush`), not one per job.
local ready_buffered, ready_P = false, nil
local ready_pending, ready_lanes = {}, {}
local function push_ready(P, WAKE, id, lane, prio, key)
  local score = wait_score(prio, next_seq(P))
  if key == nil or key == false or key == '' then
    if lane_is_empty(P, lane) then redis.call('PUBLISH', WAKE .. lane, '1') end
    if ready_buffered then
      ready_P = P
      local list = ready_pending[lane]
      if list == nil then
        list = {}
        ready_pending[lane] = list
        ready_lanes[#ready_lanes + 1] = lane
      end
      list[#list + 1] = score
      list[#list + 1] = id
    else
      redis.call('ZADD', lane_key(P, lane, 'wait'), score, id)
    end
    return
  end
  local kset = lane_key(P, lane, 'k:' .. key)
  if redis.call('ZCARD', kset) == 0 then
    if lane_is_empty(P, lane) then redis.call('PUBLISH', WAKE .. lane, '1') end
    redis.call('RPUSH', lane_key(P, lane, 'ring'), key)
  end
  redis.call('ZADD', kset, score, id)
  redis.call('HINCRBY', lane_key(P, lane, 'stats'), 'keyed', 1)
end

-- A keyed job left the active state: frees its key's slot (per-key concurrency cap) and,
-- if the key has ready jobs a capped claim may have skipped, wakes claimers.
local function key_done(P, WAKE, lane, key)
  if key == nil or key == false or key == '' then return end
  redis.call('HINCRBY', lane_key(P, lane, 'kact'), key, -1)
  if redis.call('ZCARD', lane_key(P, lane, 'k:' .. key)) > 0 then
    redis.call('PUBLISH', WAKE .. lane, '1')
  end
end

-- A delayed job that becomes the lane's earliest wakes claimers so they re-arm their timer.
local function push_delayed(P, WAKE, id, lane, at)
  local dkey = lane_key(P, lane, 'delayed')
  local head = redis.call('ZRANGE', dkey, '0', '0', 'WITHSCORES')
  redis.call('ZADD', dkey, int(at), id)
  if head[2] == nil or tonumber(head[2]) > at then
    redis.call('PUBLISH', WAKE .. lane, '1')
  end
end

local function backoff_ms(spec, attempt, rand)
  local parts = split(spec)
  local initial = tonumber(parts[1]) or 2000
  local mult = tonumber(parts[2]) or 2
  local max = tonumber(parts[3]) or 300000
  local jitter = tonumber(parts[4]) or 0
  local delay = initial * (mult ^ (attempt - 1))
  if delay > max then delay = max end
  delay = delay * (1 + jitter * (2 * rand - 1))
  if delay < 0 then delay = 0 end
  return math.floor(delay)
end

-- A blocked job can run: it becomes ready, or delayed when it must wait `wait` ms first.
local function unblock(P, WAKE, id, lane, prio, key, wait, now)
  local jk = P .. 'j:' .. id
  if wait > 0 then
    redis.call('HSET', jk, 's', 'd', 'rt', int(now + wait))
    push_delayed(P, WAKE, id, lane, now + wait)
  else
    redis.call('HSET', jk, 's', 'w', 'rt', int(now))
    push_ready(P, WAKE, id, lane, prio, key)
  end
end

local function stat(P, lane, field, by)
  redis.call('HINCRBY', lane_key(P, lane, 'stats'), field, by)
end

-- Removes a job from whatever set holds it (by state) and marks it with `state`.
local function retire(P, id, state, now)
  local jk = P .. 'j:' .. id
  local f = redis.call('HMGET', jk, 's', 'q', 'k')
  local s, lane, key = f[1], f[2], f[3]
  if s == 'w' and key and key ~= '' then
    local kset = lane_key(P, lane, 'k:' .. key)
    if redis.call('ZREM', kset, id) == 1 then
      redis.call('HINCRBY', lane_key(P, lane, 'stats'), 'keyed', -1)
      if redis.call('ZCARD', kset) == 0 then redis.call('LREM', lane_key(P, lane, 'ring'), 0, key) end
    end
  elseif s == 'w' then
    redis.call('ZREM', lane_key(P, lane, 'wait'), id)
  elseif s == 'd' then
    redis.call('ZREM', lane_key(P, lane, 'delayed'), id)
  elseif s == 'a' then
    redis.call('ZREM', P .. 'active', id)
    stat(P, lane, 'active', -1)
    if key and key ~= '' then redis.call('HINCRBY', lane_key(P, lane, 'kact'), key, -1) end
  elseif s ~= 'b' then
    return false
  end
  redis.call('HSET', jk, 's', state, 'l', '', 'ft', int(now))
  return true
end

-- A gated flow ended: frees its slot and lets the oldest waiting flow of the same index in
-- (its roots become ready). Waiting flows cancelled meanwhile are skipped.
local function release_gate(P, WAKE, flow, now)
  local info = flow_info(P, flow)
  if info.gated ~= '1' or info.admitted ~= '1' then return end
  local gate = P .. 'gate:' .. info.workflow
  redis.call('DECR', gate .. ':n')
  while true do
    local next_flow = redis.call('LPOP', gate .. ':q')
    if not next_flow then return end
    local nk = P .. 'f:' .. next_flow
    local nf = redis.call('HMGET', nk, 'state', 'jobs', 'delay')
    if nf[1] == 'pending' then
      redis.call('INCR', gate .. ':n')
      redis.call('HSET', nk, 'admitted', '1')
      if emit_cache[next_flow] then emit_cache[next_flow].admitted = '1' end
      local delay = tonumber(nf[3]) or 0
      for _, id in ipairs(split(nf[2])) do
        local jk = P .. 'j:' .. id
        local j = redis.call('HMGET', jk, 's', 'pc', 'q', 'p', 'dl', 'k')
        if j[1] == 'b' and (tonumber(j[2]) or 0) == 0 then
          unblock(P, WAKE, id, j[3], tonumber(j[4]) or 0, j[6], math.max(delay, tonumber(j[5]) or 0), now)
        end
      end
      emit(P, WAKE, next_flow, 'run.admitted', nil, now)
      return
    end
  end
end

-- Ends a flow: every job not finished yet is cancelled (running ones lose their lease, so
-- their results are refused).
local function end_flow(P, WAKE, flow, state, err, now)
  local fk = P .. 'f:' .. flow
  local cancelled = {}
  for _, id in ipairs(split(redis.call('HGET', fk, 'jobs'))) do
    if retire(P, id, 'x', now) then cancelled[#cancelled + 1] = id end
  end
  redis.call('HSET', fk, 'state', state, 'err', err, 'ft', int(now))
  flow_finished(P, flow, now)
  if flow_info(P, flow).to == '1' then redis.call('ZREM', P .. 'deadlines', flow) end
  release_gate(P, WAKE, flow, now)
  local fields = {error = err}
  if state == 'cancelled' then fields = {reason = err} end
  emit(P, WAKE, flow, 'run.' .. state, fields, now)
  expire_events(P, flow)
  return cancelled
end

-- A flow job finished (completed, or failed with continue-on-failure): releases dependents
-- whose parents are now all done (appending them to `ready`), or with `skip` marks every
-- blocked dependent, transitively, as skipped (appending them to `skipped`).
-- `deps` is the job's `n` field when the caller has read it already.
local function release_dependents(P, WAKE, flow, id, now, skip, ready, skipped, deps)
  if deps == nil then deps = redis.call('HGET', P .. 'j:' .. id, 'n') end
  for _, dep in ipairs(split(deps)) do
    local dk = P .. 'j:' .. dep
    if skip then
      if redis.call('HGET', dk, 's') == 'b' then
        redis.call('HSET', dk, 's', 'k', 'ft', int(now))
        skipped[#skipped + 1] = dep
        emit(P, WAKE, flow, 'step.skipped', nil, now, step_of(dep))
        release_dependents(P, WAKE, flow, dep, now, true, ready, skipped)
      end
    elseif redis.call('HINCRBY', dk, 'pc', -1) == 0 then
      local d = redis.call('HMGET', dk, 's', 'q', 'p', 'dl', 'k')
      if d[1] == 'b' then
        unblock(P, WAKE, dep, d[2], tonumber(d[3]) or 0, d[5], tonumber(d[4]) or 0, now)
        ready[#ready + 1] = dep
        emit(P, WAKE, flow, 'step.queued', nil, now, step_of(dep))
      end
    end
  end
end

-- Counts `finished` jobs of a flow as done; the last one ends the flow as succeeded.
-- Returns the flow's new final state, or '' while jobs remain.
-- The count comes from the flow's cached fields (scripts are atomic, so read-then-write is
-- safe), which lets the last one write the count and the final state in one HSET.
local function settle_flow(P, WAKE, flow, now, finished)
  local fk = P .. 'f:' .. flow
  local info = flow_info(P, flow)
  info.pending = info.pending - finished
  if info.pending > 0 then
    redis.call('HSET', fk, 'pending', int(info.pending))
  else
    redis.call('HSET', fk, 'pending', int(info.pending), 'state', 'succeeded', 'ft', int(now))
    flow_finished(P, flow, now)
    if info.to == '1' then redis.call('ZREM', P .. 'deadlines', flow) end
    release_gate(P, WAKE, flow, now)
    emit(P, WAKE, flow, 'run.succeeded', nil, now)
    expire_events(P, flow)
    return 'succeeded'
  end
  return ''
end

-- Records a failed attempt of an active job: retry with backoff, or dead-letter it (and,
-- for a flow job, fail the flow unless the job continues on failure).
-- Returns {kind, at_or_flow_state, list}: {'retry', at}, {'dead', flow_state, cancelled}.
local function fail_job(P, WAKE, id, err, retryable, retry_after, rand, now)
  local jk = P .. 'j:' .. id
  local f = redis.call('HMGET', jk, 'q', 'p', 'a', 'm', 'b', 'f', 'cf', 'k')
  local lane, prio, attempts, max = f[1], tonumber(f[2]) or 0, tonumber(f[3]) or 1, tonumber(f[4]) or 1
  local flow = f[6]
  redis.call('ZREM', P .. 'active', id)
  stat(P, lane, 'active', -1)
  stat(P, lane, 'failed', 1)
  key_done(P, WAKE, lane, f[8])
  if retryable and attempts < max then
    local delay = backoff_ms(f[5], attempts, rand)
    if retry_after > delay then delay = retry_after end
    redis.call('HSET', jk, 'e', err, 'l', '')
    if flow and flow ~= '' then
      emit(P, WAKE, flow, 'step.retrying', {step_id = step_of(id), attempt = attempts, error = err, retry_at_ms = now + delay}, now)
    end
    if delay > 0 then
      redis.call('HSET', jk, 's', 'd', 'rt', int(now + delay))
      push_delayed(P, WAKE, id, lane, now + delay)
      return {'retry', now + delay, {}}
    end
    redis.call('HSET', jk, 's', 'w', 'rt', int(now))
    push_ready(P, WAKE, id, lane, prio, f[8])
    return {'retry', now, {}}
  end
  redis.call('HSET', jk, 's', 'f', 'e', err, 'l', '', 'ft', int(now))
  redis.call('ZADD', lane_key(P, lane, 'dead'), int(now), id)
  stat(P, lane, 'dead', 1)
  if not flow or flow == '' then return {'dead', '', {}} end
  emit(P, WAKE, flow, 'step.failed', {step_id = step_of(id), attempt = attempts, error = err}, now)
  if f[7] == '1' then
    local ready, skipped = {}, {}
    release_dependents(P, WAKE, flow, id, now, true, ready, skipped)
    local state = settle_flow(P, WAKE, flow, now, 1 + #skipped)
    return {'dead', state, skipped}
  end
  local cancelled = end_flow(P, WAKE, flow, 'failed', 'step ' .. step_of(id) .. ' failed: ' .. err, now)
  return {'dead', 'failed', cancelled}
end

-- Writes what the call buffered, once its body has ended (the wrapper in scripts.rs calls
-- it after every script body): ready jobs, finished flows, then the run events.
local function flush()
  for _, lane in ipairs(ready_lanes) do
    zadd_many(lane_key(ready_P, lane, 'wait'), ready_pending[lane])
  end
  ready_pending, ready_lanes = {}, {}
  if #fdone_pending > 0 then
    zadd_many(fdone_P .. 'fdone', fdone_pending)
    fdone_pending = {}
  end
  flush_events()
end
