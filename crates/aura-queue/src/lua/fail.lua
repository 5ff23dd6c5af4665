-- Records failed attempts of active jobs, in bulk: each is retried after its backoff (or
-- its retry-after, whichever is longer) or, once attempts are exhausted or the error is not
-- retryable, dead-lettered (failing its flow unless the job continues on failure).
-- KEYS[1]  P.."seq"
-- ARGV[1]  P      ARGV[2]  WAKE      ARGV[3]  n, then per job:
--          id, token, error, retryable (0/1), retry_after_ms, rand in [0,1) for jitter
-- Returns  per job: {1, 'retry', at} | {1, 'dead', flow_state, cancelled_or_skipped}
--          | {0, reason} when the token is stale.
local P, WAKE, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now = now_ms()
local out = {}
for i = 0, n - 1 do
  local o = 4 + i * 6
  local id, token = ARGV[o], ARGV[o + 1]
  local f = redis.call('HMGET', P .. 'j:' .. id, 'l', 's')
  if f[2] == false or f[2] == nil then
    out[#out + 1] = {0, 'unknown task'}
  elseif f[2] ~= 'a' or f[1] ~= token then
    if f[2] == 'x' then out[#out + 1] = {0, 'cancelled'} else out[#out + 1] = {0, 'stale lease'} end
  else
    local r = fail_job(P, WAKE, id, ARGV[o + 2], ARGV[o + 3] == '1', tonumber(ARGV[o + 4]),
      tonumber(ARGV[o + 5]), now)
    out[#out + 1] = {1, r[1], r[2], r[3]}
  end
end
return out
