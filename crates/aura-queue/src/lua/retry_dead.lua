-- Puts dead letters back in their lane with fresh attempts. A job of a failed flow re-opens
-- the flow: jobs cancelled by the failure go back to blocked (or ready, if their parents
-- are done).
-- KEYS[1]  P.."seq"
-- ARGV[1]  P      ARGV[2]  WAKE      ARGV[3]  lane      ARGV[4..]  job ids
-- Returns  how many were put back.
local P, WAKE, lane = ARGV[1], ARGV[2], ARGV[3]
local dead = lane_key(P, lane, 'dead')
local now = now_ms()
local count = 0
for i = 4, #ARGV do
  local id = ARGV[i]
  if redis.call('ZREM', dead, id) == 1 then
    local jk = P .. 'j:' .. id
    local f = redis.call('HMGET', jk, 'p', 'f', 'k')
    redis.call('HSET', jk, 's', 'w', 'a', 0, 'e', '', 'ft', '', 'rt', int(now))
    stat(P, lane, 'dead', -1)
    push_ready(P, WAKE, id, lane, tonumber(f[1]) or 0, f[3])
    count = count + 1
    local flow = f[2]
    if flow and flow ~= '' then
      local fk = P .. 'f:' .. flow
      if redis.call('HGET', fk, 'state') == 'failed' then
        for _, jid in ipairs(split(redis.call('HGET', fk, 'jobs'))) do
          local jkey = P .. 'j:' .. jid
          local j = redis.call('HMGET', jkey, 's', 'pc', 'q', 'p', 'k')
          if j[1] == 'x' then
            if (tonumber(j[2]) or 0) > 0 then
              redis.call('HSET', jkey, 's', 'b', 'ft', '')
            else
              redis.call('HSET', jkey, 's', 'w', 'a', 0, 'ft', '', 'rt', int(now))
              push_ready(P, WAKE, jid, j[3], tonumber(j[4]) or 0, j[5])
            end
          end
        end
        redis.call('HSET', fk, 'state', 'running', 'err', '', 'ft', '')
        redis.call('ZREM', P .. 'fdone', flow)
        -- A gated flow takes its slot back (possibly above the limit for a while), so that
        -- the slot it frees when it ends again keeps the count balanced.
        local g = redis.call('HMGET', fk, 'gated', 'admitted', 'ix')
        if g[1] == '1' and g[2] == '1' then redis.call('INCR', P .. 'gate:' .. g[3] .. ':n') end
        for _, suffix in ipairs({'', ':epoch', ':n'}) do
          redis.call('PERSIST', P .. 'ev:runs.' .. flow .. suffix)
        end
        -- Its history may have expired meanwhile: then the topic starts a new epoch (emit
        -- falls back to the epoch key, absent, and writes a fresh one).
        if redis.call('EXISTS', P .. 'ev:runs.' .. flow .. ':epoch') == 0 then
          redis.call('HDEL', fk, 'ev')
        end
        emit(P, WAKE, flow, 'run.reopened', {step_id = step_of(id)}, now)
      end
    end
  end
end
return count
