-- Claims one tick of a schedule: only the caller that still sees the schedule due at `tick`
-- moves it to `next` and gets 1, so with any number of scheduler replicas each tick fires
-- once.
-- KEYS[1]  "<prefix>:{sch}:due"   sorted set: schedule id -> next fire time (ms)
-- ARGV[1]  schedule id   ARGV[2]  tick (ms)   ARGV[3]  next tick (ms)
-- Returns  1 when this caller owns the tick, else 0.
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
