-- Hands claimed jobs back unfinished (a worker draining): each is ready again at once and
-- the attempt is not counted. A stale token is refused.
-- KEYS[1]  P.."seq"
-- ARGV[1]  P      ARGV[2]  WAKE      ARGV[3..]  id, token pairs
-- Returns  per job: 1 released, 0 refused.
local P, WAKE = ARGV[1], ARGV[2]
local now = now_ms()
local out = {}
for i = 3, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local jk = P .. 'j:' .. id
  local f = redis.call('HMGET', jk, 'l', 's', 'q', 'p', 'a', 'k')
  if f[2] == 'a' and f[1] == token then
    redis.call('ZREM', P .. 'active', id)
    stat(P, f[3], 'active', -1)
    key_done(P, WAKE, f[3], f[6])
    local attempts = (tonumber(f[5]) or 1) - 1
    if attempts < 0 then attempts = 0 end
    redis.call('HSET', jk, 's', 'w', 'l', '', 'a', attempts, 'rt', int(now))
    push_ready(P, WAKE, id, f[3], tonumber(f[4]) or 0, f[6])
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
