-- Appends events to their topics' streams and fans them out live, atomically, so the offset
-- a publisher gets back is the one subscribers see.
-- KEYS     one stream key per event ("<prefix>:ev:{<topic>}"); on a cluster, callers send
--          one event per call so each call stays on one slot
-- ARGV[1]  channel prefix ("<prefix>:evc:")   ARGV[2]  events kept per topic (about)
-- ARGV[3]  max idle ms: a topic nobody publishes to for about this long expires
-- ARGV[4]  a fresh epoch, used for a topic that has none yet
-- ARGV[5..] per event: topic, type, payload (JSON)
-- Returns  one flat list, per event: epoch, n (flat: Redis converts every nested reply
--          table with seven probes for special fields)
--
-- Each topic numbers its events 1, 2, 3... (counter "<stream>:n"), so offsets are
-- contiguous and a trimmed gap is detectable exactly. A call writes each topic's events as
-- one stream entry and one PUBLISH of the same text: records "epoch|n|ms|type|payload"
-- joined by newlines (payloads are compact JSON, types hold no newline or '|'). The entry's
-- id is "<last n>-0", so the entries holding events after n are those after "<n>-0", and
-- trimming by MINID keeps the latest ARGV[2] numbers. Under load a call carries many
-- events, and per topic it pays one INCRBY, one XADD and one PUBLISH for all of them.
-- The epoch ("<stream>:epoch") is new whenever the topic's history is new: a subscriber
-- holding an offset from a history Redis lost (restart without persistence, flush) can tell.
local channel_prefix, keep, fresh = ARGV[1], tonumber(ARGV[2]), ARGV[4]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- Numbers reach Redis and the records as integer strings, formatted once: a Lua number
-- handed to redis.call or concatenated is formatted with '%.17g' / '%.14g' each time.
local now_s = string.format('%d', now)
-- Pass 1: how many events each topic gets in this batch, and its name.
local count, order, topics = {}, {}, {}
for i = 1, #KEYS do
  local key = KEYS[i]
  if not count[key] then
    order[#order + 1] = key
    topics[key] = ARGV[5 + (i - 1) * 3]
    count[key] = 0
  end
  count[key] = count[key] + 1
end
-- Per topic: its epoch (new history when it has none) and its numbers.
local epochs, next_n, last_n = {}, {}, {}
for _, key in ipairs(order) do
  local epoch = redis.call('GET', key .. ':epoch')
  if not epoch then
    epoch = fresh
    redis.call('SET', key .. ':epoch', epoch)
    redis.call('DEL', key, key .. ':n')
  end
  epochs[key] = epoch
  local last = redis.call('INCRBY', key .. ':n', count[key])
  last_n[key] = last
  next_n[key] = last - count[key] + 1
  -- The idle timer is refreshed when the numbers cross a multiple of 64 (and at the
  -- first): a topic that stays busy never expires, and a quiet one expires after ARGV[3] ms.
  if math.floor((last - 1) / 64) ~= math.floor((next_n[key] - 2) / 64) or next_n[key] == 1 then
    redis.call('PEXPIRE', key, ARGV[3])
    redis.call('PEXPIRE', key .. ':epoch', ARGV[3])
    redis.call('PEXPIRE', key .. ':n', ARGV[3])
  end
end
-- Pass 2: each topic's records, in order.
local out, records = {}, {}
for i = 1, #KEYS do
  local key = KEYS[i]
  local o = 5 + (i - 1) * 3
  local n, epoch = next_n[key], epochs[key]
  next_n[key] = n + 1
  local list = records[key]
  if not list then
    list = {}
    records[key] = list
  end
  list[#list + 1] = epoch .. '|' .. string.format('%d', n) .. '|' .. now_s .. '|' .. ARGV[o + 1] .. '|' .. ARGV[o + 2]
  out[#out + 1] = epoch
  out[#out + 1] = n
end
-- Pass 3: one entry and one live message per topic.
for _, key in ipairs(order) do
  local body = table.concat(records[key], '\n')
  local last = last_n[key]
  local id = string.format('%d', last) .. '-0'
  if last > keep then
    redis.call('XADD', key, 'MINID', '~', string.format('%d', last - keep + 1), id, 'r', body)
  else
    redis.call('XADD', key, id, 'r', body)
  end
  redis.call('PUBLISH', channel_prefix .. topics[key], body)
end
return out
