-- event_summary.lua: read-only. An event's name and seat counts.
--
-- KEYS[1] meta          hash, eventId, name, createdAt and seat counters (held, booked)
-- KEYS[2] seats         zset, every seat id of the event
-- KEYS[3] reservations  hash, reservation id -> reservation JSON
-- KEYS[4] holds         zset, RESERVED reservation id -> expiresAt (ms)
--
-- Returns
--   {name, total, held, booked}   held leaves out holds already due but not yet swept,
--                                 which count as free (they expire when touched)
--   {}                            event not found
--
-- Cost: O(1) plus the due holds the expiry job has not reached yet.

local meta_key, seats_key, reservations_key, holds_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local meta = redis.call('HMGET', meta_key, 'name', 'held', 'booked')
if not meta[1] then
  return {}
end
local held = tonumber(meta[2])
for _, id in ipairs(redis.call('ZRANGEBYSCORE', holds_key, '-inf', now_ms())) do
  local r = load_reservation(reservations_key, id)
  if r and r.state == 'RESERVED' then
    held = held - #r.seatIds
  end
end
return {meta[1], redis.call('ZCARD', seats_key), held, tonumber(meta[3])}
