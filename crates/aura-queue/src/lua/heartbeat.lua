-- Extends leases of active jobs whose token matches.
-- KEYS[1]  P.."seq"
-- ARGV[1]  P      ARGV[2]  extend_ms      ARGV[3..]  id, token pairs
-- Returns  per job: deadline ms (> 0) when extended, -1 when cancelled, -2 when lost.
local P, extend = ARGV[1], tonumber(ARGV[2])
local now = now_ms()
local out = {}
for i = 3, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local jk = P .. 'j:' .. id
  local f = redis.call('HMGET', jk, 'l', 's')
  if f[2] == 'a' and f[1] == token then
    redis.call('ZADD', P .. 'active', 'XX', now + extend, id)
    out[#out + 1] = now + extend
  elseif f[2] == 'x' then
    out[#out + 1] = -1
  else
    out[#out + 1] = -2
  end
end
return out
