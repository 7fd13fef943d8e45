-- event_summary.lua: read-only. An event's name and seat counts.
--
-- KEYS[1..7] the event's keys in the order of common.lua's event_keys: meta, seats,
--            claims, reservations, holds, customers, log
--
-- Returns
--   {name, total, held, booked}   held leaves out holds already due but not yet swept,
--                                 which count as free (they expire when touched)
--   {}                            event not found
--
-- Cost: O(1) plus the due holds the expiry job has not reached yet.

local K = event_keys()
local meta = redis.call('HMGET', K.meta, 'name', 'held', 'booked')
if not meta[1] then
  return {}
end
local held = tonumber(meta[2])
for _, id in ipairs(redis.call('ZRANGEBYSCORE', K.holds, '-inf', now_ms())) do
  local r = load_reservation(K, id)
  if r and r.state == 'RESERVED' then
    held = held - #r.seatIds
  end
end
return {meta[1], redis.call('ZCARD', K.seats), held, tonumber(meta[3])}
