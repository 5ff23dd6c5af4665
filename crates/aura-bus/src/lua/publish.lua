-- Appends events to their topics' streams and fans them out live, atomically, so the offset
-- a publisher gets back is the one subscribers see.
-- KEYS     one stream key per event ("<prefix>:ev:{<topic>}"); on a cluster, callers send
--          one event per call so each call stays on one slot
-- ARGV[1]  channel prefix ("<prefix>:evc:")   ARGV[2]  max stream length
-- ARGV[3]  max idle ms: a topic nobody publishes to for about this long expires
-- ARGV[4]  a fresh epoch, used for a topic that has none yet
-- ARGV[5..] per event: topic, type, payload (JSON)
-- Returns  per event: {epoch, n, time ms}
--
-- Each topic numbers its events 1, 2, 3... (counter "<stream>:n") and uses "<n>-0" as the
-- stream id, so offsets are contiguous and a trimmed gap is detectable exactly. The epoch
-- ("<stream>:epoch") is new whenever the topic's history is new: a subscriber holding an
-- offset from a history Redis lost (restart without persistence, flush) can tell.
local channel_prefix, maxlen, max_idle, fresh = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
-- A batch often holds many events of one topic: read its epoch once.
local epochs = {}
for i = 1, #KEYS do
  local key = KEYS[i]
  local o = 5 + (i - 1) * 3
  local topic, etype, payload = ARGV[o], ARGV[o + 1], ARGV[o + 2]
  local epoch = epochs[key] or redis.call('GET', key .. ':epoch')
  if not epoch then
    epoch = fresh
    redis.call('SET', key .. ':epoch', epoch)
    redis.call('DEL', key, key .. ':n')
  end
  epochs[key] = epoch
  local n = redis.call('INCR', key .. ':n')
  redis.call('XADD', key, 'MAXLEN', '~', maxlen, n .. '-0', 't', etype, 'p', payload, 'ts', now)
  -- The idle timer is refreshed every 64th event (and at the first): three commands per
  -- event were most of a busy topic's cost, and a topic that stays busy never expires.
  if n % 64 == 1 then
    redis.call('PEXPIRE', key, max_idle)
    redis.call('PEXPIRE', key .. ':epoch', max_idle)
    redis.call('PEXPIRE', key .. ':n', max_idle)
  end
  redis.call('PUBLISH', channel_prefix .. topic, epoch .. '|' .. n .. '|' .. now .. '|' .. etype .. '|' .. payload)
  out[#out + 1] = {epoch, n, now}
end
return out
