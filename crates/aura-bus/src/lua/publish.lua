-- Appends events to their topics' streams and fans them out live, atomically, so the offset
-- a publisher gets back is the one subscribers see.
-- KEYS     one stream key per topic ("<prefix>:ev:{<topic>}"); on a cluster, callers send
--          one topic per call so each call stays on one slot
-- ARGV[1]  channel prefix ("<prefix>:evc:")   ARGV[2]  events kept per topic (about)
-- ARGV[3]  max idle ms: a topic nobody publishes to for about this long expires
-- ARGV[4]  a fresh epoch, used for a topic that has none yet
-- ARGV[5..] per topic (KEYS order): topic, number of events, the events as lines
--          "type|payload" joined by newlines (payloads are compact JSON, types hold no
--          newline or '|')
-- Returns  one flat list, per topic: epoch, number of its first event (flat: Redis
--          converts every nested reply table with seven probes for special fields)
--
-- Each topic numbers its events 1, 2, 3... (counter "<stream>:n"), so offsets are
-- contiguous and a trimmed gap is detectable exactly. A call writes each topic's events as
-- one stream entry and one PUBLISH of the same text, a body: the line "epoch|first n|ms",
-- then the caller's lines, numbered from the first. The entry's id is "<last n>-0", so the
-- entries holding events after n are those after "<n>-0", and trimming by MINID keeps the
-- latest ARGV[2] numbers. Per topic a call costs one INCRBY, one XADD, one PUBLISH and one
-- string concatenation, however many events it carries: the events themselves are never
-- split into Lua strings.
-- The epoch ("<stream>:epoch") is new whenever the topic's history is new: a subscriber
-- holding an offset from a history Redis lost (restart without persistence, flush) can tell.
local channel_prefix, keep, fresh = ARGV[1], tonumber(ARGV[2]), ARGV[4]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- Numbers reach Redis and the bodies as integer strings: a Lua number handed to redis.call
-- or concatenated is formatted with '%.17g' / '%.14g'.
local now_s = string.format('%d', now)
local out = {}
for i = 1, #KEYS do
  local key = KEYS[i]
  local o = 5 + (i - 1) * 3
  local topic, count, lines = ARGV[o], tonumber(ARGV[o + 1]), ARGV[o + 2]
  local epoch = redis.call('GET', key .. ':epoch')
  if not epoch then
    epoch = fresh
    redis.call('SET', key .. ':epoch', epoch)
    redis.call('DEL', key, key .. ':n')
  end
  local last = redis.call('INCRBY', key .. ':n', ARGV[o + 1])
  local first = last - count + 1
  -- The idle timer is refreshed when the numbers cross a multiple of 64 (and at the
  -- first): a topic that stays busy never expires, and a quiet one expires after ARGV[3] ms.
  if math.floor((last - 1) / 64) ~= math.floor((first - 2) / 64) or first == 1 then
    redis.call('PEXPIRE', key, ARGV[3])
    redis.call('PEXPIRE', key .. ':epoch', ARGV[3])
    redis.call('PEXPIRE', key .. ':n', ARGV[3])
  end
  local first_s = string.format('%d', first)
  local body = epoch .. '|' .. first_s .. '|' .. now_s .. '\n' .. lines
  local id = string.format('%d', last) .. '-0'
  if last > keep then
    redis.call('XADD', key, 'MINID', '~', string.format('%d', last - keep + 1), id, 'r', body)
  else
    redis.call('XADD', key, id, 'r', body)
  end
  redis.call('PUBLISH', channel_prefix .. topic, body)
  out[#out + 1] = epoch
  out[#out + 1] = first_s
end
return out
