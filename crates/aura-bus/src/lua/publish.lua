-- Appends events to their topics' streams and fans them out live, atomically, so the offset
-- a publisher gets back is the one subscribers see.
-- KEYS     one stream key per event ("<prefix>:ev:{<topic>}"); on a cluster, callers send
--          one event per call so each call stays on one slot
-- ARGV[1]  channel prefix ("<prefix>:evc:")   ARGV[2]  max stream length
-- ARGV[3]  max idle ms: a topic nobody publishes to for about this long expires
-- ARGV[4]  a fresh epoch, used for a topic that has none yet
-- ARGV[5..] per event: topic, type, payload (JSON)
-- Returns  one flat list, per event: epoch, n (flat: Redis converts every nested reply
--          table with seven probes for special fields)
--
-- Each topic numbers its events 1, 2, 3... (counter "<stream>:n") and uses "<n>-0" as the
-- stream id, so offsets are contiguous and a trimmed gap is detectable exactly. A batch
-- reserves each topic's numbers with one INCRBY and sends each topic's events in one
-- PUBLISH (records "epoch|n|ms|type|payload" joined by newlines; payloads are compact JSON,
-- types hold no newline or '|'): per event only the XADD remains. The epoch
-- ("<stream>:epoch") is new whenever the topic's history is new: a subscriber holding an
-- offset from a history Redis lost (restart without persistence, flush) can tell.
local channel_prefix, maxlen, fresh = ARGV[1], ARGV[2], ARGV[4]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- Numbers reach Redis and the records as integer strings, formatted once: a Lua number
-- handed to redis.call or concatenated is formatted with '%.17g' / '%.14g' each time.
local now_s = string.format('%d', now)
-- Pass 1: how many events each topic gets in this batch.
local count, order = {}, {}
for i = 1, #KEYS do
  local key = KEYS[i]
  if not count[key] then order[#order + 1] = key end
  count[key] = (count[key] or 0) + 1
end
-- Per topic: its epoch (new history when it has none) and its first number.
local epochs, next_n = {}, {}
for _, key in ipairs(order) do
  local epoch = redis.call('GET', key .. ':epoch')
  if not epoch then
    epoch = fresh
    redis.call('SET', key .. ':epoch', epoch)
    redis.call('DEL', key, key .. ':n')
  end
  epochs[key] = epoch
  local last = redis.call('INCRBY', key .. ':n', count[key])
  next_n[key] = last - count[key] + 1
  -- The idle timer is refreshed when the numbers cross a multiple of 64 (and at the
  -- first): a topic that stays busy never expires, and a quiet one expires after ARGV[3] ms.
  if math.floor((last - 1) / 64) ~= math.floor((next_n[key] - 2) / 64) or next_n[key] == 1 then
    redis.call('PEXPIRE', key, ARGV[3])
    redis.call('PEXPIRE', key .. ':epoch', ARGV[3])
    redis.call('PEXPIRE', key .. ':n', ARGV[3])
  end
end
-- Pass 2: append in order; gather each topic's live records.
local out, records, channels = {}, {}, {}
for i = 1, #KEYS do
  local key = KEYS[i]
  local o = 5 + (i - 1) * 3
  local topic, etype, payload = ARGV[o], ARGV[o + 1], ARGV[o + 2]
  local n, epoch = next_n[key], epochs[key]
  next_n[key] = n + 1
  local n_s = string.format('%d', n)
  redis.call('XADD', key, 'MAXLEN', '~', maxlen, n_s .. '-0', 't', etype, 'p', payload, 'ts', now_s)
  local list = records[key]
  if not list then
    list = {}
    records[key] = list
    channels[key] = channel_prefix .. topic
  end
  list[#list + 1] = epoch .. '|' .. n_s .. '|' .. now_s .. '|' .. etype .. '|' .. payload
  out[#out + 1] = epoch
  out[#out + 1] = n
end
for _, key in ipairs(order) do
  redis.call('PUBLISH', channels[key], table.concat(records[key], '\n'))
end
return out
