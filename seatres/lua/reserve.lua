-- reserve.lua: RESERVE one or more seats of an event for a customer (all or none).
--
-- KEYS[1] seats         zset, every seat id of the event (score 0)
-- KEYS[2] claims        hash, seat id -> id of its active reservation
-- KEYS[3] reservations  hash, reservation id -> reservation JSON
-- KEYS[4] holds         zset, RESERVED reservation id -> expiresAt (ms)
-- KEYS[5] meta          hash, event name and seat counters (held, booked)
--
-- ARGV[1] reservation id, chosen by the caller. A retried call with the same id
--         (redis-py retries after timeouts) finds its own reservation and answers
--         with it instead of creating a second one.
-- ARGV[2] customer id
-- ARGV[3] hold length in ms
-- ARGV[4..] seat ids, no duplicates
--
-- Returns
--   {1, json}          created
--   {2, json}          this id was already created by an earlier call (a retry)
--   {-1}               event not found
--   {-2, seat, ...}    seats that are not part of the event
--   {-3, seat, ...}    seats held or booked by another active reservation
--   {-6}               the id exists but belongs to another customer
--
-- Holds whose time has passed are expired here (lazy expiry) before their seats are
-- claimed, but only once every guard has passed: a refused call writes nothing.

local seats_key, claims_key, reservations_key, holds_key, meta_key =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local id, customer_id, hold_ms = ARGV[1], ARGV[2], tonumber(ARGV[3])

local existing = load_reservation(reservations_key, id)
if existing then
  if existing.customerId ~= customer_id then
    return {-6}
  end
  return {2, cjson.encode(existing)}
end

if redis.call('EXISTS', meta_key) == 0 then
  return {-1}
end

local now = now_ms()
local seat_ids = {}
local unknown = {}
local taken = {}
local stale = {}
for i = 4, #ARGV do
  local seat = ARGV[i]
  seat_ids[#seat_ids + 1] = seat
  if not redis.call('ZSCORE', seats_key, seat) then
    unknown[#unknown + 1] = seat
  else
    local holder_id = redis.call('HGET', claims_key, seat)
    if holder_id then
      local holder = load_reservation(reservations_key, holder_id)
      if holder and is_due(holder, now) then
        stale[holder_id] = holder
      elseif holder then
        taken[#taken + 1] = seat
      end
    end
  end
end
if #unknown > 0 then
  return {-2, unpack(unknown)}
end
if #taken > 0 then
  return {-3, unpack(taken)}
end

for _, holder in pairs(stale) do
  end_hold(claims_key, holds_key, meta_key, reservations_key, holder, 'EXPIRED', now)
end

local r = {
  id = id,
  eventId = redis.call('HGET', meta_key, 'eventId'),
  seatIds = seat_ids,
  customerId = customer_id,
  state = 'RESERVED',
  createdAt = now,
  expiresAt = now + hold_ms,
  updatedAt = now,
}
for _, seat in ipairs(seat_ids) do
  redis.call('HSET', claims_key, seat, id)
end
save_reservation(reservations_key, r)
redis.call('ZADD', holds_key, r.expiresAt, id)
redis.call('HINCRBY', meta_key, 'held', #seat_ids)
return {1, cjson.encode(r)}
