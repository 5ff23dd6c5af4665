-- Registers a workflow spec: an identical spec returns its existing version, a changed one
-- becomes the next version.
-- KEYS[1]  "<prefix>:{wf}:def:<name>"   hash: "<v>" -> spec JSON, "<v>:ts" -> created ms,
--                                      "latest" -> newest version
-- KEYS[2]  "<prefix>:{wf}:hash:<name>"  hash: spec digest -> version
-- KEYS[3]  "<prefix>:{wf}:names"        sorted set of names (score 0, listed by name)
-- ARGV[1]  name   ARGV[2]  spec JSON   ARGV[3]  spec digest
-- Returns  {created (0/1), version, created ms}
local existing = redis.call('HGET', KEYS[2], ARGV[3])
if existing then
  return {0, tonumber(existing), tonumber(redis.call('HGET', KEYS[1], existing .. ':ts'))}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local version = redis.call('HINCRBY', KEYS[1], 'latest', 1)
redis.call('HSET', KEYS[1], tostring(version), ARGV[2], version .. ':ts', now)
redis.call('HSET', KEYS[2], ARGV[3], version)
redis.call('ZADD', KEYS[3], 0, ARGV[1])
return {1, version, now}
