-- cancel.lua: RESERVED -> CANCELLED. Frees the reservation's seats.
--
-- KEYS[1] claims        hash, seat id -> id of its active reservation
-- KEYS[2] reservations  hash, reservation id -> reservation JSON
-- KEYS[3] holds         zset, RESERVED reservation id -> expiresAt (ms)
-- KEYS[4] meta          hash, event name and seat counters (held, booked)
--
-- ARGV[1] reservation id
-- ARGV[2] customer id of the caller
-- ARGV[3] '1' when the caller is an admin (may act on any reservation), else '0'
--
-- Returns
--   {1, json}   cancelled now
--   {2, json}   was already CANCELLED: unchanged (a client or redis-py retry)
--   {-1}        not found, or not the caller's reservation
--   {-4, json}  invalid transition (the reservation is CONFIRMED)
--   {-5, json}  the hold had expired; a hold found due here is marked EXPIRED first
--
-- The only write before a refusal is that lazy expiry, which is itself a transition.

local claims_key, reservations_key, holds_key, meta_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, customer_id, is_admin = ARGV[1], ARGV[2], ARGV[3]

local r = load_reservation(reservations_key, id)
if not r or not may_access(r, customer_id, is_admin) then
  return {-1}
end
if r.state == 'CANCELLED' then
  return {2, cjson.encode(r)}
end
if r.state == 'EXPIRED' then
  return {-5, cjson.encode(r)}
end
if r.state ~= 'RESERVED' then
  return {-4, cjson.encode(r)}
end
local now = now_ms()
if is_due(r, now) then
  end_hold(claims_key, holds_key, meta_key, reservations_key, r, 'EXPIRED', now)
  return {-5, cjson.encode(r)}
end

end_hold(claims_key, holds_key, meta_key, reservations_key, r, 'CANCELLED', now)
return {1, cjson.encode(r)}
