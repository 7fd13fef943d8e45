-- upsert_event.lua: create an event or replace its name and seat list.
--
-- KEYS[1..7] the event's keys in the order of common.lua's event_keys: meta, seats,
--            claims, reservations, holds, customers, log
--
-- ARGV[1] event id
-- ARGV[2] event name
-- ARGV[3] log stream MAXLEN (approximate)
-- ARGV[4..] the complete seat list, no duplicates. Seats missing from it are removed.
--
-- Returns
--   {1, added, removed}   the event was created
--   {2, added, removed}   the event existed and now has exactly these seats
--   {-3, seat, ...}       seats to remove that have an active reservation (nothing changed)
--   error TRYAGAIN        a Redis Cluster is moving the event's slot and a claim key of a
--                         due hold to end is out of reach (common.lua TRY_AGAIN): nothing
--                         changed
--
-- Runs in one call for up to 100,000 seats: the caller makes one round trip, and Lua's
-- unpack is fed in chunks because its stack holds a few thousand values at most.

local K = event_keys()
local event_id, name, log_max = ARGV[1], ARGV[2], ARGV[3]
local FIRST_SEAT = 4
local CHUNK = 4000

local wanted = {}
for i = FIRST_SEAT, #ARGV do
  wanted[ARGV[i]] = true
end

local now = now_ms()
local removed = {}
local taken = {}
local stale = {}
for _, seat in ipairs(redis.call('ZRANGE', K.seats, 0, -1)) do
  if wanted[seat] then
    wanted[seat] = nil
  else
    removed[#removed + 1] = seat
    sort_claim(K, seat, now, taken, stale)
  end
end
if #taken > 0 then
  return {-3, unpack(taken, 1, math.min(#taken, CHUNK))}
end

local created = redis.call('EXISTS', K.meta) == 0 and 1 or 2
if claim_keys_moved(K, seats_of(stale)) then
  return TRY_AGAIN
end
for _, holder in pairs(stale) do
  end_hold(K, holder, 'EXPIRED', 'expire', 'system', now, log_max)
end
if created == 1 then
  redis.call('HSET', K.meta, 'eventId', event_id, 'createdAt', now, 'held', 0, 'booked', 0)
end
redis.call('HSET', K.meta, 'name', name, 'updatedAt', now)

local batch = {}
local added = 0
local function flush_add()
  if #batch > 0 then
    added = added + redis.call('ZADD', K.seats, unpack(batch))
    batch = {}
  end
end
for i = FIRST_SEAT, #ARGV do
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
  redis.call('ZREM', K.seats, unpack(removed, i, math.min(i + CHUNK - 1, #removed)))
end
return {created, added, #removed}
