-- Cancels a flow: jobs not finished are removed from their queues, running ones lose their
-- lease (their results will be refused and heartbeats answer "cancelled").
-- KEYS[1]  P.."seq"
-- ARGV[1]  P      ARGV[2]  WAKE      ARGV[3]  flow id      ARGV[4]  reason
-- Returns  {state, cancelled_ids}: state is 'cancelled', or the flow's final state when it
--          had already ended, or '' when the flow does not exist.
local P, WAKE, flow, reason = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local state = redis.call('HGET', P .. 'f:' .. flow, 'state')
if not state then return {'', {}} end
if state == 'succeeded' or state == 'failed' or state == 'cancelled' then return {state, {}} end
local cancelled = end_flow(P, WAKE, flow, 'cancelled', reason, now_ms())
return {'cancelled', cancelled}
