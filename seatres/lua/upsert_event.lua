-- upsert_event.lua: create an event or replace its name and seat list.
--
-- KEYS[1] meta          hash, eventId, name, createdAt and seat counters (held, booked)
-- KEYS[2] seats         zset, every seat id of the event (score 0)
-- KEYS[3] claims        hash, seat id -> id of its active reservation
-- KEYS[4] reservations  hash, reservation id -> reservation JSON
-- KEYS[5] holds         zset, RESERVED reservation id -> expiresAt (ms)
--
-- ARGV[1] event id
-- ARGV[2] event name
-- ARGV[3..] the complete seat list, no duplicates. Seats missing from it are removed.
--
-- Returns
--   {1, added, removed}   the event was created
--   {2, added, removed}   the event existed and now has exactly these seats
--   {-3, seat, ...}       seats to remove that have an active reservation (nothing changed)
--
-- Runs in one call for up to 100,000 seats: the caller makes one round trip, and Lua's
-- unpack is fed in chunks because its stack holds a few thousand values at most.

local meta_key, seats_key, claims_key, reservations_key, holds_key =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local event_id, name = ARGV[1], ARGV[2]
local CHUNK = 4000

local wanted = {}
for i = 3, #ARGV do
  wanted[ARGV[i]] = true
end

local now = now_ms()
local removed = {}
local taken = {}
local stale = {}
for _, seat in ipairs(redis.call('ZRANGE', seats_key, 0, -1)) do
  if wanted[seat] then
    wanted[seat] = nil
  else
    removed[#removed + 1] = seat
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
if #taken > 0 then
  return {-3, unpack(taken, 1, math.min(#taken, CHUNK))}
end

local created = redis.call('EXISTS', meta_key) == 0 and 1 or 2
for _, holder in pairs(stale) do
  end_hold(claims_key, holds_key, meta_key, reservations_key, holder, 'EXPIRED', now)
end
if created == 1 then
  redis.call('HSET', meta_key, 'eventId', event_id, 'createdAt', now, 'held', 0, 'booked', 0)
end
redis.call('HSET', meta_key, 'name', name, 'updatedAt', now)

local batch = {}
local added = 0
local function flush_add()
  if #batch > 0 then
    added = added + redis.call('ZADD', seats_key, unpack(batch))
    batch = {}
  end
end
for i = 3, #ARGV do
  if wanted[ARGV[i]] then
    batch[#batch + 1] = 0
    batch[#batch + 1] = ARGV[i]
    if #batch >= CHUNK then
      flush_add()
    end
  end
end
flush_add()

for i = 1, #removed, CHUNK do
  redis.call('ZREM', seats_key, unpack(removed, i, math.min(i + CHUNK - 1, #removed)))
end
return {created, added, #removed}
